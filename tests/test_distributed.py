"""fastopt.distributed under mpiexec with 1, 2 and 3 ranks (3 oversubscribes a 2-core machine).

The MPI side is this file run as a script (``mpiexec -n W python test_distributed.py run
OUT``): it trains small models with the sharded optimizer and the averager and writes, from
rank 0, every rank's params after every step, the averaged grads each rank's share received
(gathered), the global norms, state sizes and checkpoint round trips. The tests then check,
in this process, with NumPy and single-process fastopt:

- every rank holds the same bytes after every step; two runs with the same rank count give
  the same bytes;
- the averaged grads are within ``2*u*sum_i |g_i|`` of NumPy's ``(g_0 + ... + g_{W-1}) / W``
  (u the unit roundoff; the derivation is in fastopt/distributed.py), and equal to it with
  1 and 2 ranks; and the sharded step is, bit for bit, a single-process optimizer's step on
  exactly those averaged grads (clipped by the factor of the recorded global norm, which is
  within 1e-12 of the exact norm);
- state bytes per rank sum to the single-process optimizer's and none exceeds its
  ceil(N/W) share; gathered checkpoints resume single-process optimizers exactly, and back;
- only buffer collectives are called; a rank with a bad grad makes every rank raise, quickly.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
# Processes start from a neutral directory with the repository root NOT on their path: there
# `fastopt/` is the uncompiled source folder. Whatever PYTHONPATH the caller set (an in-place
# build) is passed on.
NEUTRAL = tempfile.gettempdir()


def environment(*extra):
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [*map(str, extra), *filter(None, [os.environ.get("PYTHONPATH")])])}

# Every config: (name, class, constructor kwargs, params, steps). Shapes split params between
# ranks at odd places; a 0-d and an empty param and mixed dtypes are in.
SHAPES = {"W1": (13, 7), "b1": (7,), "s": (), "W2": (7, 5), "e": (0, 3), "b2": (5,)}
STEPS = 5


def _lr_schedule(step):
    return 1e-2 / (1 + step)


def _not_bias(key, param):
    return bool(param.ndim > 1)


def configs():
    """(name, class name, kwargs, dtype per key, by key) for the trajectory tests."""
    f64 = dict.fromkeys(SHAPES, "float64")
    mixed = {key: ("float32" if key.startswith("W") else "float64") for key in SHAPES}
    f32 = dict.fromkeys(SHAPES, "float32")
    return [
        ("adam-f64-dict", "Adam", {}, f64, True),
        ("adamw-f32-list-clip-schedule-filter", "AdamW",
         {"lr": _lr_schedule, "weight_decay_filter": _not_bias, "max_grad_norm": 1.0}, f32,
         False),
        ("momentum-mixed-dict-decay-clip", "Momentum",
         {"weight_decay": 1e-2, "weight_decay_filter": _not_bias, "max_grad_norm": 2.0}, mixed,
         True),
        ("nadam-mixed-dict", "NAdam", {}, mixed, True),
    ]


def initial_params(dtypes, by_key):
    rng = np.random.default_rng(1234)
    params = {key: rng.standard_normal(shape).astype(dtypes[key])
              for key, shape in SHAPES.items()}
    return params if by_key else list(params.values())


def rank_grads(params, step, rank, seed=0):
    """Rank ``rank``'s grads at ``step``: the same in every process; W1's is Fortran-ordered."""
    items = params.items() if isinstance(params, dict) else enumerate(params)
    rng = np.random.default_rng([seed, step, rank])
    grads = {key: rng.standard_normal(p.shape).astype(p.dtype) for key, p in items}
    first = next(iter(grads))
    grads[first] = np.asfortranarray(grads[first])
    return grads if isinstance(params, dict) else [grads[i] for i in range(len(params))]


def keys_of(params):
    return list(params) if isinstance(params, dict) else list(range(len(params)))


# ----------------------------------------------------------------------------------------------
# The MPI side.

def _worker_run(out):
    from mpi4py import MPI

    import fastopt
    from fastopt import distributed

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    record = {}

    def gather_averaged(sharded, tag):
        """Rank 0 assembles the averaged grads of every rank's share, per key."""
        mine = [(sharded._keys[position], start, stop, view.copy()) for (position, start, stop),
                view in zip(sharded._pieces, sharded._grad_views, strict=True)]
        everyone = comm.gather(mine, root=0)   # the harness may pickle; the library does not
        if rank == 0:
            full = {key: np.full(np.shape(array), np.nan, array.dtype).reshape(-1)
                    for key, array in zip(sharded._keys, sharded._arrays, strict=True)}
            for pieces in everyone:
                for key, start, stop, values in pieces:
                    full[key][start:stop] = values
            for key, values in full.items():
                record[f"{tag}/avg/{key}"] = values

    def record_params(params, tag):
        everyone = comm.gather([np.array(params[key]) for key in keys_of(params)], root=0)
        if rank == 0:
            for r, arrays in enumerate(everyone):
                for key, array in zip(keys_of(params), arrays, strict=True):
                    record[f"{tag}/params/r{r}/{key}"] = array

    for name, cls, kwargs, dtypes, by_key in configs():
        params = initial_params(dtypes, by_key)
        sharded = distributed.ShardedOptimizer(getattr(fastopt, cls)(**kwargs), params)
        if kwargs.get("max_grad_norm") is not None:
            clip = sharded._clip

            def recorded_clip(limit, clip=clip, sharded=sharded, name=name):
                gather_averaged(sharded, f"{name}/s{sharded.optimizer.iter}")
                clip(limit)
            sharded._clip = recorded_clip
        for step in range(STEPS):
            sharded.update(params, rank_grads(params, step, rank))
            if kwargs.get("max_grad_norm") is None:
                gather_averaged(sharded, f"{name}/s{step}")
            else:
                record[f"{name}/s{step}/norm"] = np.array(sharded.grad_norm)
            record_params(params, f"{name}/s{step}")
        nbytes = comm.gather(sharded.state_nbytes(), root=0)
        if rank == 0:
            record[f"{name}/nbytes"] = np.array(nbytes)

    # Checkpoints: N sharded steps; gather into a single-process optimizer; scatter that into
    # a new sharded optimizer; M more steps of all three on the same averaged grads.
    name, cls, kwargs, dtypes, by_key = configs()[3]   # NAdam: mu_product is state too
    n, m = 3, 3
    params = initial_params(dtypes, by_key)
    sharded = distributed.ShardedOptimizer(getattr(fastopt, cls)(**kwargs), params)
    for step in range(n):
        sharded.update(params, rank_grads(params, step, rank, seed=7))
    single = getattr(fastopt, cls)()
    single.load_state_dict(sharded.state_dict())   # an ordinary checkpoint
    single_params = {key: value.copy() for key, value in params.items()}
    params2 = {key: value.copy() for key, value in params.items()}
    sharded2 = distributed.ShardedOptimizer(getattr(fastopt, cls)(), params2)
    sharded2.load_state_dict(single.state_dict())
    for step in range(n, n + m):
        grads = rank_grads(params, step, rank, seed=7)
        sharded.update(params, grads)
        sharded2.update(params2, grads)
        gather_averaged(sharded, "ckpt")
        if rank == 0:
            single.update(single_params, {key: record[f"ckpt/avg/{key}"].reshape(
                np.shape(params[key])) for key in params})
    gathered = distributed.gather_state(sharded)
    if rank == 0:
        for key in params:
            record[f"ckpt/sharded/{key}"] = params[key]
            record[f"ckpt/scattered/{key}"] = params2[key]
            record[f"ckpt/single/{key}"] = single_params[key]
            for state in ("m", "v"):
                record[f"ckpt/state/{state}/gathered/{key}"] = gathered["state"][state][key]
                record[f"ckpt/state/{state}/single/{key}"] = getattr(single, state)[key]
        record["ckpt/mu_product"] = np.array([gathered["step"]["mu_product"],
                                              single.mu_product])
        record["ckpt/iter"] = np.array([gathered["step"]["iter"], single.iter])

    # The averager: twice on the same buffers, mixed dtypes, a Fortran-ordered grad; grads of
    # 256 bytes or more are reduced on their own (W1, Fortran-ordered, through a copy).
    averager = distributed.GradientAverager(direct_bytes=256)
    params = initial_params({key: ("float32" if key.startswith("b") else "float64")
                             for key in SHAPES}, True)
    addresses = []
    for step in range(2):
        grads = rank_grads(params, step, rank, seed=11)
        averager.average(grads)
        addresses.append(sorted(buffer.ctypes.data for buffer in averager._buffers.values()))
        everyone = comm.gather(grads, root=0)
        if rank == 0:
            for r, rank_result in enumerate(everyone):
                for key, value in rank_result.items():
                    record[f"avg/s{step}/r{r}/{key}"] = value
    if rank == 0:
        record["avg/same_buffers"] = np.array(addresses[0] == addresses[1])

    if rank == 0:
        np.savez(out, **record)


class _Spy:
    """A communicator that records which of its methods are called."""

    def __init__(self, comm):
        self._comm = comm
        self.called = []

    def __getattr__(self, name):
        attribute = getattr(self._comm, name)
        if callable(attribute):
            def recorded(*args, **kwargs):
                self.called.append(name)
                return attribute(*args, **kwargs)
            return recorded
        return attribute


def _worker_spy(out):
    from mpi4py import MPI

    import fastopt
    from fastopt import distributed

    spy = _Spy(MPI.COMM_WORLD)
    rank = MPI.COMM_WORLD.Get_rank()
    params = initial_params({key: ("float32" if key.startswith("b") else "float64")
                             for key in SHAPES}, True)
    sharded = distributed.ShardedOptimizer(fastopt.AdamW(max_grad_norm=1.0), params, comm=spy)
    averager = distributed.GradientAverager(comm=spy)
    construction = list(spy.called)
    spy.called.clear()
    for step in range(2):
        grads = rank_grads(params, step, rank)
        sharded.update(params, grads)
        averager.average(grads)
    if rank == 0:
        Path(out).write_text(json.dumps({"construction": construction, "steps": spy.called}))


def _worker_errors(out):
    from mpi4py import MPI

    import fastopt
    from fastopt import distributed

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    report = {}
    params = initial_params(dict.fromkeys(SHAPES, "float64"), True)
    before = {key: value.copy() for key, value in params.items()}
    sharded = distributed.ShardedOptimizer(fastopt.Adam(), params)
    grads = rank_grads(params, 0, rank)
    if rank == 1:
        grads["b1"] = np.zeros(8)   # a wrong shape on one rank only
    try:
        sharded.update(params, grads)
        report["sharded"] = "no error"
    except Exception as error:
        report["sharded"] = f"{type(error).__name__}: {error}"
    report["unchanged"] = (all(np.array_equal(params[key], before[key]) for key in params)
                           and sharded.optimizer.iter == 0 and sharded.optimizer.m is None)
    sharded.update(params, rank_grads(params, 0, rank))   # the ranks are still in step
    report["after"] = sharded.optimizer.iter

    averager = distributed.GradientAverager()
    grads = rank_grads(params, 1, rank)
    kept = {key: value.copy() for key, value in grads.items()}
    if rank == 1:
        grads["W2"] = np.zeros((5, 7))   # a layout the other ranks do not have
    try:
        averager.average(grads)
        report["layout"] = "no error"
    except Exception as error:
        report["layout"] = f"{type(error).__name__}: {error}"
    if rank == 1:
        grads["W2"] = kept["W2"]
    report["grads_unchanged"] = all(np.array_equal(grads[key], kept[key]) for key in grads)
    if rank == 0:
        grads["b2"] = np.zeros(5, dtype=np.int64)
    try:
        averager.average(grads)
        report["dtype"] = "no error"
    except Exception as error:
        report["dtype"] = f"{type(error).__name__}: {error}"
    everyone = comm.gather(report, root=0)
    if rank == 0:
        Path(out).write_text(json.dumps(everyone))


# ----------------------------------------------------------------------------------------------
# The pytest side.

MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason="fastopt.distributed's tests need mpi4py and mpiexec (pip install '.[mpi]')")


def launch(ranks, scenario, out, timeout=60):
    completed = subprocess.run(
        [MPIEXEC, "-n", str(ranks), sys.executable, str(HERE), scenario, str(out)],
        capture_output=True, text=True, timeout=timeout, env=environment(HERE.parent),
        cwd=NEUTRAL)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed


_RUNS = {}


def run(ranks, tmp_path_factory, repeat=0):
    if (ranks, repeat) not in _RUNS:
        out = tmp_path_factory.mktemp(f"mpi{ranks}-{repeat}") / "run.npz"
        launch(ranks, "run", out)
        with np.load(out) as data:
            _RUNS[ranks, repeat] = dict(data)
    return _RUNS[ranks, repeat]


def numpy_average(params, step, ranks, seed=0):
    """NumPy's mean of the ranks' grads: summed left to right in rank order, then / W."""
    per_rank = [rank_grads(params, step, rank, seed) for rank in range(ranks)]
    average = {}
    for key in keys_of(params):
        total = per_rank[0][key].copy()
        for grads in per_rank[1:]:
            total = total + grads[key]
        average[key] = np.asarray(total / ranks)
    magnitude = {key: sum(np.abs(grads[key]).astype(np.float64) for grads in per_rank)
                 for key in keys_of(params)}
    return average, magnitude


@needs_mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_every_rank_holds_the_same_bytes_after_every_step(ranks, tmp_path_factory):
    data = run(ranks, tmp_path_factory)
    for name, _, _, dtypes, by_key in configs():
        for step in range(STEPS):
            for key in keys_of(initial_params(dtypes, by_key)):
                first = data[f"{name}/s{step}/params/r0/{key}"]
                for rank in range(1, ranks):
                    other = data[f"{name}/s{step}/params/r{rank}/{key}"]
                    assert other.dtype == first.dtype
                    assert other.tobytes() == first.tobytes(), (name, step, key, rank)


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_two_runs_with_the_same_ranks_repeat_bit_for_bit(ranks, tmp_path_factory):
    first, second = run(ranks, tmp_path_factory), run(ranks, tmp_path_factory, repeat=1)
    assert sorted(first) == sorted(second)
    for name, value in first.items():
        assert value.tobytes() == second[name].tobytes(), name


@needs_mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_the_step_is_a_single_process_step_on_grads_within_the_sum_order_bound(
        ranks, tmp_path_factory):
    """The bound of fastopt/distributed.py: averaged grads within 2*u*sum|g_i| of NumPy's
    (equal with 1 and 2 ranks), then exactly the single-process optimizer's bits."""
    import fastopt
    from fastopt import clipping

    data = run(ranks, tmp_path_factory)
    for name, cls, kwargs, dtypes, by_key in configs():
        params = initial_params(dtypes, by_key)
        keys = keys_of(params)
        single = getattr(fastopt, cls)(**{**kwargs, "max_grad_norm": None})
        limit = kwargs.get("max_grad_norm")
        for step in range(STEPS):
            expected, magnitude = numpy_average(params, step, ranks)
            got = {key: data[f"{name}/s{step}/avg/{key}"].reshape(np.shape(params[key]))
                   for key in keys}
            for key in keys:
                u = np.finfo(got[key].dtype).eps / 2
                bound = 2 * u * magnitude[key] * (1 + 4 * ranks * u)
                difference = np.abs(got[key].astype(np.float64) - expected[key])
                assert np.all(difference <= bound), (name, step, key)
                if ranks <= 2:
                    assert got[key].tobytes() == expected[key].tobytes(), (name, step, key)
            if limit is not None:
                norm = float(data[f"{name}/s{step}/norm"])
                exact = math.fsum(float(x) ** 2 for key in keys
                                  for x in got[key].astype(np.float64).reshape(-1))
                assert abs(norm * norm - exact) <= 1e-12 * exact, (name, step)
                if ranks == 1:
                    assert norm == clipping.global_norm([got[key] for key in keys])
                factor = clipping.clip_coefficient(norm, limit)
                if factor is not None:
                    got = {key: np.asarray(got[key] * factor) for key in keys}
            single.update(params, got if by_key else [got[key] for key in keys])
            for key in keys:
                sharded = data[f"{name}/s{step}/params/r0/{key}"]
                assert sharded.tobytes() == np.asarray(params[key]).tobytes(), (name, step, key)


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_state_per_rank_is_its_share_of_the_single_process_state(ranks, tmp_path_factory):
    import fastopt

    data = run(ranks, tmp_path_factory)
    for name, cls, kwargs, dtypes, by_key in configs():
        params = initial_params(dtypes, by_key)
        single = getattr(fastopt, cls)(**kwargs)
        single.update(params, rank_grads(params, 0, 0))
        full = sum(np.asarray(array).nbytes for state_name in single.state_names
                   for array in (getattr(single, state_name).values() if by_key
                                 else getattr(single, state_name)))
        per_rank = data[f"{name}/nbytes"]
        assert full > 0 and per_rank.sum() == full, name   # the shares partition the state
        # No rank holds more than its ceil(N/W) block of each dtype, for each state array.
        slots = len(single.state_names)
        arrays = list(params.values()) if by_key else params
        largest = 0
        for dtype in ("float32", "float64"):
            count = sum(array.size for array in arrays if array.dtype == dtype)
            largest += -(-count // ranks) * np.dtype(dtype).itemsize * slots
        assert per_rank.max() <= largest, name
        assert per_rank.max() <= full / ranks * 1.2, name   # about 1/W on these sizes


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_gathered_checkpoints_resume_single_process_optimizers_exactly_and_back(
        ranks, tmp_path_factory):
    data = run(ranks, tmp_path_factory)
    for key in SHAPES:
        sharded = data[f"ckpt/sharded/{key}"].tobytes()
        assert data[f"ckpt/scattered/{key}"].tobytes() == sharded, key
        assert data[f"ckpt/single/{key}"].tobytes() == sharded, key
        for state in ("m", "v"):
            assert (data[f"ckpt/state/{state}/gathered/{key}"].tobytes()
                    == data[f"ckpt/state/{state}/single/{key}"].tobytes()), (state, key)
    assert data["ckpt/mu_product"][0] == data["ckpt/mu_product"][1]
    assert list(data["ckpt/iter"]) == [6, 6]


@needs_mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_the_averager_gives_numpys_mean_within_the_bound_on_every_rank(ranks,
                                                                       tmp_path_factory):
    data = run(ranks, tmp_path_factory)
    params = initial_params({key: ("float32" if key.startswith("b") else "float64")
                             for key in SHAPES}, True)
    for step in range(2):
        expected, magnitude = numpy_average(params, step, ranks, seed=11)
        for key in SHAPES:
            got = data[f"avg/s{step}/r0/{key}"]
            assert got.dtype == params[key].dtype and got.shape == params[key].shape
            u = np.finfo(got.dtype).eps / 2
            assert np.all(np.abs(got.astype(np.float64) - expected[key])
                          <= 2 * u * magnitude[key] * (1 + 4 * ranks * u)), (step, key)
            if ranks <= 2:
                assert got.tobytes() == expected[key].tobytes(), (step, key)
            for rank in range(1, ranks):
                assert data[f"avg/s{step}/r{rank}/{key}"].tobytes() == got.tobytes()
    assert data["avg/same_buffers"]


@needs_mpi
def test_only_buffer_collectives_are_called(tmp_path):
    out = tmp_path / "spy.json"
    launch(2, "spy", out)
    called = json.loads(out.read_text())
    allowed = {"Get_rank", "Get_size", "Allreduce", "Reduce_scatter_block", "Allgather"}
    assert set(called["steps"]) <= allowed, called["steps"]
    assert set(called["construction"]) <= allowed, called["construction"]
    # Per step: the error agreement and the data, not one call per key.
    sharded_and_averager = [name for name in called["steps"]
                            if name not in ("Get_rank", "Get_size")]
    assert sharded_and_averager.count("Reduce_scatter_block") == 2 * 2   # 2 steps x 2 dtypes
    assert sharded_and_averager.count("Allgather") == 2 * (2 + 1)        # + the norm's
    assert sharded_and_averager.count("Allreduce") == 2 * (1 + 1 + 2)    # flags; 2 dtypes


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_a_bad_grad_on_one_rank_makes_every_rank_raise_not_hang(ranks, tmp_path):
    out = tmp_path / "errors.json"
    launch(ranks, "errors", out, timeout=30)
    reports = json.loads(out.read_text())
    assert len(reports) == ranks
    for rank, report in enumerate(reports):
        if rank == 1:
            assert report["sharded"].startswith("ValueError: grad 'b1' has shape (8,) but its "
                                                "param has shape (7,)"), report
        else:
            assert report["sharded"].startswith("RuntimeError: rank 1 rejected its grads"), report
        assert report["unchanged"] is True and report["after"] == 1, report
        assert report["layout"].startswith("ValueError: the ranks passed different grads"), report
        assert report["grads_unchanged"] is True
        if rank == 0:
            assert report["dtype"].startswith("TypeError: grad 'b2' has dtype int64"), report
        else:
            assert report["dtype"].startswith("RuntimeError: rank 0 rejected its grads"), report


@needs_mpi
def test_the_example_trains_on_two_ranks_with_half_the_state_and_one_process_bits():
    pytest.importorskip("sklearn")
    completed = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, str(ROOT / "examples" / "train_digits_mpi.py"),
         "--quick", "--check"], capture_output=True, text=True, timeout=60,
        env=environment(), cwd=NEUTRAL)
    assert completed.returncode == 0, completed.stderr
    # Two ranks sum in the one order there is: the same bits as one process.
    assert "against one process on the same global batches: bit-identical" in completed.stdout
    assert "optimizer state per rank: rank 0 295.4 KiB, rank 1 295.4 KiB" in completed.stdout


def test_import_fastopt_does_not_import_mpi4py():
    code = "import sys, fastopt; assert 'mpi4py' not in sys.modules, 'mpi4py was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=NEUTRAL, env=environment())


def test_without_mpi4py_the_import_error_says_what_to_install():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "try:\n    import fastopt.distributed\n"
            "except ImportError as error:\n    print(error)\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True, cwd=NEUTRAL, env=environment())
    assert 'pip install "fastopt[mpi]"' in completed.stdout, completed.stdout


if __name__ == "__main__":
    {"run": _worker_run, "spy": _worker_spy, "errors": _worker_errors}[sys.argv[1]](sys.argv[2])
