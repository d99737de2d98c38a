"""The digits network of train_digits.py, trained data-parallel on MPI with fastopt.distributed.

Every rank builds the same network from the same seed and draws the same global mini-batches
of 128; each computes the gradient of its slice of every batch, and the sharded optimizer
(ZeRO stage 1) averages the grads, updates each rank's share of the params and gathers them,
so all ranks hold the same params after every step. The script prints the time per step and
the optimizer-state bytes each rank keeps, and with --check compares the final params with one
process training on the same global batches.

    mpiexec -n 2 python examples/train_digits_mpi.py
    mpiexec -n 2 python examples/train_digits_mpi.py --quick --check
    mpiexec -n 3 python examples/train_digits_mpi.py --averager   # full state on every rank

Each rank first takes its share of the CPUs of its machine for its threads: the CPUs divided
by the number of ranks there, for NumPy's BLAS (through threadpoolctl, which scikit-learn
installs) and for fastopt's loops. Without it, every rank's BLAS starts a thread per CPU,
and threads that keep spinning after a matrix product take the CPUs the other ranks need to
step: with 2 ranks on 2 CPUs the time per step ranged from 0.4 to 24 ms between runs.

If one rank fails (an uncaught exception) or its program ends early, fastopt.distributed
ends the whole job with a message and a nonzero status instead of leaving the others waiting.

Needs the mpi and examples extras: pip install ".[mpi,examples]".
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from mpi4py import MPI
from train_digits import BATCH_SIZE, HIDDEN, Network, load_data

import fastopt
from fastopt import distributed


def local_gradient(network: Network, x: np.ndarray, t: np.ndarray, index: np.ndarray,
                   rank: int, size: int) -> tuple[float, dict]:
    """This rank's grads of its slice of the global batch ``index``, scaled by the slice's
    share of the batch so that their mean over the ranks is the gradient of the whole batch
    (the slices differ by one example when the batch does not split evenly)."""
    part = np.array_split(index, size)[rank]
    loss, grads = network.loss_and_gradient(x[part], t[part])
    weight = len(part) * size / len(index)
    if weight != 1.0:
        for grad in grads.values():
            grad *= weight
    return loss, grads


def share_the_cpus(comm: MPI.Comm) -> str:
    """Limit this rank's BLAS and fastopt threads to its share of its machine's CPUs (the
    CPUs // the ranks there); return what they are now, for the report."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    ranks_here = node.Get_size()
    node.Free()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = max(1, (cpus or 1) // ranks_here)
    if fastopt.get_num_threads() > share:
        fastopt.set_num_threads(share)
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:   # then set OPENBLAS_NUM_THREADS (or your BLAS's variable) yourself
        blas = "unknown (no threadpoolctl)"
    else:
        if any(pool["num_threads"] > share for pool in threadpool_info()
               if pool["user_api"] == "blas"):
            threadpool_limits(limits=share, user_api="blas")
        blas = str(max((pool["num_threads"] for pool in threadpool_info()
                        if pool["user_api"] == "blas"), default=0))
    return (f"BLAS {blas}, fastopt {fastopt.get_num_threads()} ({ranks_here} ranks on {cpus} "
            f"CPUs)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs instead of 30")
    parser.add_argument("--epochs", type=int, help="epochs (overrides --quick)")
    parser.add_argument("--optimizer", default="Adam", help="a fastopt optimizer class name")
    parser.add_argument("--averager", action="store_true",
                        help="average the grads (GradientAverager) and keep the whole "
                             "optimizer state on every rank, instead of sharding it")
    parser.add_argument("--check", action="store_true",
                        help="also train in one process on the same global batches and "
                             "report how far the final params are from the data-parallel ones")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs = args.epochs or (3 if args.quick else 30)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    threads = share_the_cpus(comm)

    x_train, t_train, x_test, t_test = load_data(args.seed)
    network = Network([x_train.shape[1], *HIDDEN, 10], np.random.default_rng(args.seed))
    initial = {key: value.copy() for key, value in network.params.items()}
    optimizer = getattr(fastopt, args.optimizer)()
    if args.averager:
        averager = distributed.GradientAverager(comm)
    else:
        optimizer = distributed.ShardedOptimizer(optimizer, network.params, comm)
    batches = np.random.default_rng(args.seed + 1)
    per_epoch = len(x_train) // BATCH_SIZE
    plan = [batches.permutation(len(x_train)) for _ in range(epochs)]
    step_seconds = []
    for epoch, order in enumerate(plan):
        losses = []
        for b in range(per_epoch):
            index = order[b * BATCH_SIZE:(b + 1) * BATCH_SIZE]
            loss, grads = local_gradient(network, x_train, t_train, index, rank, size)
            comm.Barrier()   # time the step, not the ranks' different backward passes
            tick = time.perf_counter()
            if args.averager:
                averager.average(grads)
            optimizer.update(network.params, grads)
            step_seconds.append(time.perf_counter() - tick)
            losses.append(loss)
        mean_loss = comm.allreduce(float(np.mean(losses))) / size   # reporting only
        if rank == 0:
            print(f"epoch {epoch + 1:2d}: loss {mean_loss:.4f}, test accuracy "
                  f"{network.accuracy(x_test, t_test):.3f}", flush=True)

    state = (optimizer.state_nbytes() if isinstance(optimizer, distributed.ShardedOptimizer)
             else distributed._state_nbytes(optimizer))
    states = comm.gather(state, root=0)
    median = comm.gather(float(np.median(step_seconds)), root=0)
    if rank == 0:
        how = "GradientAverager + full optimizer" if args.averager else "ShardedOptimizer"
        print(f"{size} ranks, {how} ({args.optimizer}), {len(step_seconds)} steps of "
              f"{BATCH_SIZE} (global batch)")
        print(f"threads of rank 0: {threads}")
        print(f"time per step (median, averaging + update + gather): "
              f"{max(median) * 1e6:.0f} us (slowest rank)")
        print("optimizer state per rank: " + ", ".join(
            f"rank {r} {nbytes / 1024:.1f} KiB" for r, nbytes in enumerate(states)))

    if args.check and rank == 0:
        single = Network([x_train.shape[1], *HIDDEN, 10], np.random.default_rng(args.seed))
        single.params.update({key: value.copy() for key, value in initial.items()})
        reference = getattr(fastopt, args.optimizer)()
        for order in plan:
            for b in range(per_epoch):
                index = order[b * BATCH_SIZE:(b + 1) * BATCH_SIZE]
                per_rank = [local_gradient(single, x_train, t_train, index, r, size)[1]
                            for r in range(size)]
                average = {}
                for key in single.params:   # rank order, left to right, then / W
                    total = per_rank[0][key]
                    for grads in per_rank[1:]:
                        total = total + grads[key]
                    average[key] = total / size
                reference.update(single.params, average)
        worst = max(float(np.max(np.abs(network.params[key] - single.params[key])
                                 / np.maximum(np.abs(single.params[key]), 1e-300)))
                    for key in single.params if single.params[key].size)
        same = all(np.array_equal(network.params[key], single.params[key])
                   for key in single.params)
        print(f"against one process on the same global batches: "
              f"{'bit-identical' if same else f'largest relative difference {worst:.2e}'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
