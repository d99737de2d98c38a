"""fastopt.distributed: step time at 1, 2 and 3 ranks, fused allreduce against one per key.

    python bench/investigations/mpi.py [--ranks 1 2 3] [--out FILE]   # launches mpiexec
    mpiexec -n 2 python bench/investigations/mpi.py --worker         # one rank count

Two workloads: the digits network of examples/train_digits.py (64-100-100-100-100-10,
float64, 10 arrays, 37,410 params) and 1e7 float32 params in 10 arrays of 1e6. Per workload
and rank count, the median over repeats (after a Barrier, so each repeat starts together) of
the slowest rank's time for:

- ``fused allreduce``: ``GradientAverager.average(grads)``: pack, one ``Allreduce`` per
  dtype, divide, unpack (plus the agreement: one Allreduce of nine int64);
- ``allreduce per key``: ``comm.Allreduce(MPI.IN_PLACE, g)`` then ``g /= W`` for each grad;
- ``averaged + Adam``: the fused allreduce, then a full ``fastopt.Adam`` update on every rank;
- ``sharded Adam``: ``ShardedOptimizer(fastopt.Adam()).update``: reduce-scatter, the update
  of this rank's share, allgather of the params (ZeRO stage 1);

and each rank's Adam state in bytes, full and sharded. Each rank first limits its threads
(fastopt's, which split a param of 1e6 elements, and BLAS's) to its share of the machine's
CPUs, so that ranks x threads <= CPUs where there are at least as many CPUs as ranks. On a
machine with fewer CPUs than ranks (3 ranks on this 2-core one), ranks share CPUs even with
one thread each: times then measure oversubscription.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: _common.py
from _common import cpu_model

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]


def workloads():
    rng = np.random.default_rng(0)
    sizes = [64, 100, 100, 100, 100, 10]
    digits = {}
    for i in range(1, len(sizes)):
        digits[f"W{i}"] = rng.standard_normal((sizes[i - 1], sizes[i]))
        digits[f"b{i}"] = np.zeros(sizes[i])
    large = {f"p{i}": rng.standard_normal(1_000_000).astype(np.float32) for i in range(10)}
    return {"digits net": (digits, 300), "1e7 params": (large, 7)}


def share_the_cpus(comm) -> int:
    """Limit this rank's fastopt and BLAS threads to its share of its machine's CPUs."""
    from mpi4py import MPI

    import fastopt

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    ranks_here = node.Get_size()
    node.Free()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = max(1, (cpus or 1) // ranks_here)
    if fastopt.get_num_threads() > share:
        fastopt.set_num_threads(share)
    try:
        from threadpoolctl import threadpool_info, threadpool_limits  # type: ignore[import-untyped]
    except ImportError:
        return share
    if any(pool["num_threads"] > share for pool in threadpool_info()
           if pool["user_api"] == "blas"):
        threadpool_limits(limits=share, user_api="blas")
    return share


def worker() -> None:
    from mpi4py import MPI

    import fastopt
    from fastopt import distributed

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    share_the_cpus(comm)

    def timed(repeats, step):
        seconds = []
        for _ in range(repeats + 2):   # two warm-up rounds
            comm.Barrier()
            tick = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - tick)
        return comm.allreduce(float(np.median(seconds[2:])), op=MPI.MAX)

    rows = []
    for name, (params, repeats) in workloads().items():
        grads = {key: np.random.default_rng([rank, 1]).standard_normal(value.shape).astype(
            value.dtype) * 1e-3 for key, value in params.items()}
        averager = distributed.GradientAverager(comm)

        def per_key(grads=grads):
            for grad in grads.values():
                comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
                grad /= size

        full = fastopt.Adam()
        full_params = {key: value.copy() for key, value in params.items()}

        def averaged_adam(grads=grads, full=full, full_params=full_params, averager=averager):
            averager.average(grads)
            full.update(full_params, grads)

        sharded = distributed.ShardedOptimizer(fastopt.Adam(), params, comm)
        cells = {
            "fused allreduce": timed(repeats, lambda grads=grads, averager=averager:
                                     averager.average(grads)),
            "allreduce per key": timed(repeats, per_key),
            "averaged + Adam": timed(repeats, averaged_adam),
            "sharded Adam": timed(repeats, lambda sharded=sharded, params=params, grads=grads:
                                  sharded.update(params, grads)),
        }
        state_full = distributed._state_nbytes(full)
        state_sharded = comm.allreduce(sharded.state_nbytes(), op=MPI.MAX)
        count = sum(value.size for value in params.values())
        rows.append((name, count, len(params), cells, state_full, state_sharded))
    if rank == 0:
        for name, count, arrays, cells, state_full, state_sharded in rows:
            print(f"{size} {name!r} {count} {arrays} " + " ".join(
                f"{value * 1e6:.1f}" for value in cells.values())
                + f" {state_full} {state_sharded}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.worker:
        worker()
        return 0
    import fastopt

    mpiexec = shutil.which("mpiexec", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if mpiexec is None:
        raise SystemExit("mpiexec not found: pip install '.[mpi]'")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    lines = [f"python bench/investigations/mpi.py --ranks {' '.join(map(str, args.ranks))}",
             f"fastopt {fastopt.__version__} ({fastopt.simd_level()}), {cpu_model()}, "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}, NumPy {np.__version__}",
             "median µs per step, slowest rank; state = Adam's state bytes per rank; each "
             "rank's fastopt and BLAS threads at most its machine's CPUs // its ranks there",
             f"{'workload':11} {'ranks':>5} {'fused allreduce':>16} {'allreduce per key':>18} "
             f"{'averaged + Adam':>16} {'sharded Adam':>13} {'state full':>11} "
             f"{'state sharded':>14}"]
    for ranks in args.ranks:
        completed = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, str(HERE),
                                    "--worker"], capture_output=True, text=True, env=env,
                                   check=True)
        for line in completed.stdout.strip().split("\n"):
            head, name, rest = line.split("'")
            _count, _arrays, *cells, full, sharded = rest.split()
            lines.append(f"{name:11} {int(head):5d} " + " ".join(
                f"{float(value):{width}.1f}" for value, width in zip(cells, (16, 18, 16, 13),
                                                                     strict=True))
                + f" {int(full):11d} {int(sharded):14d}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
