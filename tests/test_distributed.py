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
import re
import shutil
import subprocess
import sys
import tempfile
import time
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
    # Imported here, not at import (see NEUTRAL); registry from tests/, on the path of pytest
    # and of this file run as a script.
    import fastopt

    import registry
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
        # every other rule ShardedOptimizer takes (the elementwise ones), with its defaults
        # and the test's learning rate
        *[(f"{entry.name.lower()}-f64-dict", entry.name, {"lr": entry.lr}, f64, True)
          for entry in registry.REGISTRY
          if entry.name not in ("Adam", "AdamW", "Momentum", "NAdam")
          and getattr(fastopt, entry.name)._elementwise()],
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


def _worker_leave(out, mode):
    """Rank 1 leaves at step 2 of 6 (``mode``: raise, exit0, exit3, return, or ``averager``:
    exit0 while rank 0 averages); or, with ``end``, every rank trains to the end and rank 0
    works on alone for 3 s before it writes ``out``."""
    from mpi4py import MPI

    import fastopt
    from fastopt import distributed

    rank = MPI.COMM_WORLD.Get_rank()
    params = initial_params(dict.fromkeys(SHAPES, "float64"), True)
    if mode == "averager":
        averager = distributed.GradientAverager()
    else:
        sharded = distributed.ShardedOptimizer(fastopt.Adam(), params)
    for step in range(6):
        if rank == 1 and step == 2:
            if mode == "raise":
                raise ValueError("a bug on rank 1")
            if mode in ("exit0", "averager"):
                sys.exit(0)
            if mode == "exit3":
                sys.exit(3)
            if mode == "return":
                return
        grads = rank_grads(params, step, rank)
        if mode == "averager":
            averager.average(grads)
        else:
            sharded.update(params, grads)
    if mode == "end" and rank == 0:
        time.sleep(3)   # not in a collective: rank 1, already at its end, waits for it
        Path(out).write_text("finished")


def _own_schedule(step):
    return 1e-2 / (1 + step)


def _worker_mismatch(out):
    """Each kind of configuration mismatch between rank 0 and rank 1: what every rank raised,
    and whether anything changed. The ranks stay in step throughout."""
    from mpi4py import MPI

    import fastopt
    from fastopt import distributed
    from fastopt.schedules import CosineDecay

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()

    def snapshot(params, sharded):
        inner = sharded.optimizer
        return ({key: value.copy() for key, value in params.items()}, inner.iter,
                None if inner.m is None else [share.copy() for share in inner.m])

    def same(params, sharded, before):
        inner = sharded.optimizer
        arrays, step, m = before
        return (all(np.array_equal(params[key], arrays[key]) for key in params)
                and inner.iter == step
                and (m is None) == (inner.m is None)
                and (m is None or all(np.array_equal(a, b) for a, b in zip(m, inner.m,
                                                                           strict=True))))

    def attempt(call):
        try:
            call()
            return "no error"
        except Exception as error:
            return f"{type(error).__name__}: {error}"

    # Mismatches at construction: (rank 0's optimizer, rank 1's).
    at_construction = {
        "lr": (lambda: fastopt.Adam(lr=0.1), lambda: fastopt.Adam(lr=0.001)),
        "class": (lambda: fastopt.Adam(), lambda: fastopt.SGD()),
        "max_grad_norm": (lambda: fastopt.Adam(max_grad_norm=1.0), lambda: fastopt.Adam()),
        "schedule": (lambda: fastopt.Adam(lr=CosineDecay(0.1, 100)),
                     lambda: fastopt.Adam(lr=CosineDecay(0.1, 200))),
        "own schedule": (lambda: fastopt.Adam(lr=_own_schedule),
                         lambda: fastopt.Adam(lr=0.01)),
        "option": (lambda: fastopt.Adam(amsgrad=True), lambda: fastopt.Adam()),
        "filter": (lambda: fastopt.Adam(weight_decay=0.1, weight_decay_filter=_not_bias),
                   lambda: fastopt.Adam(weight_decay=0.1,
                                        weight_decay_filter=lambda key, param: True)),
    }
    report = {}
    for kind, makers in at_construction.items():
        params = initial_params(dict.fromkeys(SHAPES, "float64"), True)
        kept = {key: value.copy() for key, value in params.items()}
        optimizer = makers[rank]()
        report[kind] = attempt(lambda optimizer=optimizer, params=params:
                               distributed.ShardedOptimizer(optimizer, params))
        report[kind + "/unchanged"] = (optimizer.iter == 0 and all(
            np.array_equal(params[key], kept[key]) for key in params))

    # Mismatches that appear after two steps: rank 1 changes something, then every rank calls
    # update (or state_dict); rank 1 puts it back and the ranks step on together.
    def set_attribute(name, value):
        def change(sharded):
            old = getattr(sharded.optimizer, name)
            setattr(sharded.optimizer, name, value)
            return lambda: setattr(sharded.optimizer, name, old)
        return change

    def flush(sharded):
        fastopt.set_flush_denormals(True)
        return lambda: fastopt.set_flush_denormals(False)

    def restart(sharded):
        inner = sharded.optimizer
        saved = (inner.iter, inner.m, inner.v)
        sharded.load_state_dict(fastopt.Adam().state_dict())

        def back():
            inner.iter, inner.m, inner.v = saved
        return back

    later = {
        "changed lr": ("update", set_attribute("lr", 0.5)),
        "changed max_grad_norm": ("update", set_attribute("max_grad_norm", 1.0)),
        "changed beta1 before state_dict": ("state_dict", set_attribute("beta1", 0.5)),
        "flush denormals": ("update", flush),
        "step count": ("update", restart),
    }
    for kind, (call, change) in later.items():
        params = initial_params(dict.fromkeys(SHAPES, "float64"), True)
        sharded = distributed.ShardedOptimizer(fastopt.Adam(), params)
        for step in range(2):
            sharded.update(params, rank_grads(params, step, rank))
        undo = change(sharded) if rank == 1 else None
        before = snapshot(params, sharded)
        grads = rank_grads(params, 2, rank)
        report[kind] = attempt(sharded.state_dict if call == "state_dict" else
                               lambda params=params, grads=grads, sharded=sharded:
                               sharded.update(params, grads))
        report[kind + "/unchanged"] = same(params, sharded, before)
        if undo is not None:
            undo()
        sharded.update(params, grads)   # the ranks are in step again
        report[kind + "/after"] = sharded.optimizer.iter
    everyone = comm.gather(report, root=0)
    if rank == 0:
        Path(out).write_text(json.dumps(everyone))


# The rules that are sharded by whole params (not elementwise): each with weight decay, a
# weight_decay_filter that spares the small params, a schedule, both dtypes, and two with
# global clipping and mixed dtypes. Muon takes matrices only (tests/test_muon.py's shapes).
MATRIX_SHAPES = {"W1": (13, 7), "W2": (7, 5), "W3": (3, 11), "W4": (2, 2)}
WHOLE_STEPS, WHOLE_MORE = 4, 2   # steps before the checkpoint, and after it


def _large(key, param):
    return bool(param.size > 20)


def whole_configs():
    """(name, class name, kwargs, dtype per key, by key, shapes) of the whole-param tests."""
    import fastopt
    from fastopt.schedules import CosineDecay

    import registry
    lrs = {entry.name: entry.lr for entry in registry.REGISTRY}
    extra = {"LARS": {"momentum": 0.9}}
    found = []
    for cls in ("LAMB", "LARS", "Adafactor", "Muon"):
        assert not getattr(fastopt, cls)._elementwise()
        shapes = MATRIX_SHAPES if cls == "Muon" else SHAPES
        for dtype in ("float32", "float64"):
            kwargs = {"lr": CosineDecay(lrs[cls], 20), "weight_decay": 0.05,
                      "weight_decay_filter": _large, **extra.get(cls, {})}
            found.append((f"{cls.lower()}-{dtype}", cls, kwargs, dict.fromkeys(shapes, dtype),
                          dtype == "float64", shapes))
    mixed = {key: ("float32" if key.startswith("W") else "float64") for key in SHAPES}
    found.append(("lamb-mixed-list-clip", "LAMB", {"lr": 0.01, "max_grad_norm": 1.0}, mixed,
                  False, SHAPES))
    found.append(("adafactor-mixed-dict-clip", "Adafactor",
                  {"lr": 0.1, "weight_decay": 0.05, "max_grad_norm": 0.5}, mixed, True, SHAPES))
    return found


def whole_params(dtypes, by_key, shapes):
    rng = np.random.default_rng(4321)
    params = {key: rng.standard_normal(shape).astype(dtypes[key])
              for key, shape in shapes.items()}
    return params if by_key else list(params.values())


def _worker_whole(out):
    """Train every whole-param config for WHOLE_STEPS steps; checkpoint (gather_state,
    state_dict, fastopt.save from rank 0, load_state_dict into a second sharded optimizer);
    WHOLE_MORE more steps of both. Records what the pytest side compares."""
    from mpi4py import MPI

    import fastopt
    from fastopt import distributed

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    record = {}
    directory = Path(out).parent

    def gather(values):
        everyone = comm.gather(values, root=0)
        return everyone if rank == 0 else None

    for name, cls, kwargs, dtypes, by_key, shapes in whole_configs():
        params = whole_params(dtypes, by_key, shapes)
        keys = keys_of(params)
        spy = _Spy(comm)
        sharded = distributed.ShardedOptimizer(getattr(fastopt, cls)(**kwargs), params,
                                               comm=spy)
        before_clip = {}
        if kwargs.get("max_grad_norm") is not None:
            clip = sharded._clip

            def recorded_clip(limit, clip=clip, sharded=sharded, before_clip=before_clip):
                before_clip["views"] = [view.copy() for view in sharded._grad_views]
                clip(limit)
            sharded._clip = recorded_clip
        owned = gather([sharded._keys[position] for position, _, _ in sharded._pieces])
        if rank == 0:
            for r, mine in enumerate(owned):
                record[f"{name}/owned/r{r}"] = np.array([keys.index(key) for key in mine],
                                                        dtype=np.int64)
        second = None
        for step in range(WHOLE_STEPS + WHOLE_MORE):
            if step == WHOLE_STEPS:
                gathered = distributed.gather_state(sharded)
                state = sharded.state_dict()
                nbytes = gather(sharded.state_nbytes())
                copies = [np.array(param) for param in (params.values() if by_key else params)]
                second_params = dict(zip(keys, copies, strict=True)) if by_key else copies
                second = distributed.ShardedOptimizer(getattr(fastopt, cls)(**kwargs),
                                                      second_params)
                second.load_state_dict(state)
                if rank == 0:
                    record[f"{name}/nbytes"] = np.array(nbytes)
                    for state_name, arrays in gathered["state"].items():
                        for key in keys:
                            record[f"{name}/gathered/{state_name}/{key}"] = arrays[key]
                    single = getattr(fastopt, cls)(**kwargs)
                    single.load_state_dict(state)
                    fastopt.save(directory / f"{name}.npz", single)
            spy.called.clear()
            grads = rank_grads(params, step, rank, seed=3)
            sharded.update(params, grads)
            if step == 1:
                record[f"{name}/calls"] = np.array(
                    [spy.called.count(call) for call in ("Reduce_scatter", "Allgatherv",
                                                         "Allgather", "Allreduce")])
            if second is not None:
                second.update(second_params, grads)
                everyone = gather([np.array(second_params[key]) for key in keys])
                if rank == 0:
                    for r, arrays in enumerate(everyone):
                        for key, array in zip(keys, arrays, strict=True):
                            record[f"{name}/s{step}/second/r{r}/{key}"] = array
            views = before_clip.get("views", sharded._grad_views)   # as averaged, unclipped
            averaged = gather([(sharded._keys[position], view.copy()) for (position, _, _), view
                               in zip(sharded._pieces, views, strict=True)])
            everyone = gather([np.array(params[key]) for key in keys])
            if rank == 0:
                for pieces in averaged:
                    for key, view in pieces:
                        record[f"{name}/s{step}/avg/{key}"] = view
                for r, arrays in enumerate(everyone):
                    for key, array in zip(keys, arrays, strict=True):
                        record[f"{name}/s{step}/params/r{r}/{key}"] = array
                if kwargs.get("max_grad_norm") is not None:
                    record[f"{name}/s{step}/norm"] = np.array(sharded.grad_norm)

    # Muon takes matrices only: a 1-D param is refused at construction, on every rank alike,
    # although only one rank would own it.
    params = {"W1": np.ones((4, 3)), "b1": np.ones(3), "W2": np.ones((3, 2))}
    try:
        distributed.ShardedOptimizer(fastopt.Muon(), params)
        refused = "no error"
    except Exception as error:
        refused = f"{type(error).__name__}: {error}"
    refusals = gather(refused)
    # Muon's settings (not floats: ns_steps) are part of the configuration the ranks check.
    params = {"W1": np.ones((4, 3)), "W2": np.ones((3, 2))}
    try:
        distributed.ShardedOptimizer(fastopt.Muon(ns_steps=5 if rank == 0 else 4), params)
        refused = "no error"
    except Exception as error:
        refused = f"{type(error).__name__}: {error}"
    settings = gather(refused)
    if rank == 0:
        Path(directory / "refused.json").write_text(json.dumps(refusals))
        Path(directory / "settings.json").write_text(json.dumps(settings))
        np.savez(out, **record)


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
        # the shares partition the state (none for a rule without state arrays: SGD)
        assert (full > 0) == bool(single.state_names) and per_rank.sum() == full, name
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
    # Each rank's BLAS and fastopt threads are limited to its share of the CPUs.
    threads = re.search(r"threads of rank 0: BLAS (\d+), fastopt (\d+) \(2 ranks on (\d+) "
                        r"CPUs\)", completed.stdout)
    assert threads, completed.stdout
    blas, own, cpus = map(int, threads.groups())
    assert 1 <= own <= max(1, cpus // 2) and blas <= max(1, cpus // 2), completed.stdout


def launch_until_it_ends(ranks, scenario, *args, timeout=30):
    """Run a job that may fail; if it has not ended after ``timeout`` seconds, kill every
    process of it (the launcher and its ranks) and fail the test."""
    process = subprocess.Popen(
        [MPIEXEC, "-n", str(ranks), sys.executable, str(HERE), scenario, *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=NEUTRAL,
        env=environment(HERE.parent), start_new_session=True)
    start = time.monotonic()
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        output, _ = process.communicate()
        pytest.fail(f"the job was still running after {timeout} s:\n{output}")
    return process.returncode, output, time.monotonic() - start


# What the ranks print when rank 1 leaves mid-training: its own uncaught exception, or (from
# rank 1 at exit, or rank 0 in its next update, whichever aborts first) that it ended.
ENDED = ("fastopt.distributed: rank 1 of 2 ended (its program returned or called sys.exit) "
         "while")


@needs_mpi
@pytest.mark.parametrize("mode, message", [
    ("raise", "fastopt.distributed: rank 1 of 2 ended with an uncaught ValueError; aborting "
              "the MPI job"),
    ("exit0", ENDED), ("exit3", ENDED), ("return", ENDED), ("averager", ENDED)])
def test_a_rank_that_leaves_mid_training_ends_the_job_with_an_error(mode, message, tmp_path):
    status, output, _ = launch_until_it_ends(2, "leave", tmp_path / "unused", mode)
    assert status != 0, output
    assert message in output, output
    if mode == "raise":
        assert "ValueError: a bug on rank 1" in output, output


@needs_mpi
def test_ranks_that_end_at_different_times_end_normally(tmp_path):
    """The end of a job is not a departure: rank 1 waits at its exit for rank 0, which works
    on for 3 s outside any collective, and nothing is aborted."""
    out = tmp_path / "finished.txt"
    status, output, seconds = launch_until_it_ends(2, "leave", out, "end")
    assert status == 0, output
    assert out.read_text() == "finished"
    assert "fastopt.distributed" not in output, output
    assert seconds >= 3


@needs_mpi
def test_a_single_process_is_left_alone():
    """One process (no mpiexec): an uncaught exception ends it as usual, without an abort, and
    a normal end takes its exit agreement alone."""
    code = ("import numpy as np, fastopt\n"
            "from fastopt import distributed\n"
            "params = {'w': np.ones(3)}\n"
            "sharded = distributed.ShardedOptimizer(fastopt.Adam(), params)\n"
            "sharded.update(params, {'w': np.ones(3)})\n"
            "print('stepped', flush=True)\n"
            "import sys\n"
            "if sys.argv[1] == 'raise':\n"
            "    raise ValueError('on purpose')\n")
    for how, status in (("raise", 1), ("end", 0)):
        completed = subprocess.run([sys.executable, "-c", code, how], capture_output=True,
                                   text=True, timeout=60, cwd=NEUTRAL, env=environment())
        assert completed.returncode == status, completed.stderr
        assert completed.stdout == "stepped\n"
        assert "aborting" not in completed.stderr and "Abort" not in completed.stderr
        assert ("ValueError: on purpose" in completed.stderr) == (how == "raise")


_MISMATCH = {}


def mismatch_reports(tmp_path_factory):
    if not _MISMATCH:
        out = tmp_path_factory.mktemp("mismatch") / "reports.json"
        launch(2, "mismatch", out)
        _MISMATCH["reports"] = json.loads(out.read_text())
    return _MISMATCH["reports"]


@needs_mpi
@pytest.mark.parametrize("kind, difference", [
    ("lr", "lr: 0.1 on rank 0, 0.001 on rank 1"),
    ("class", "class: Adam on rank 0, SGD on rank 1; lr: 0.001 on rank 0, 0.01 on rank 1"),
    ("max_grad_norm", "max_grad_norm: 1.0 on rank 0, None on rank 1"),
    ("schedule", "lr: CosineDecay(start=0.1, n=100, end=0.0) on rank 0, "
                 "CosineDecay(start=0.1, n=200, end=0.0) on rank 1"),
    ("own schedule", "lr: __main__._own_schedule (line "),
    ("option", "amsgrad: True on rank 0, False on rank 1"),
    ("filter", "weight_decay_filter('b1', param): False on rank 0, True on rank 1"),
    ("changed lr", "lr: 0.001 on rank 0, 0.5 on rank 1"),
    ("changed max_grad_norm", "max_grad_norm: None on rank 0, 1.0 on rank 1"),
    ("changed beta1 before state_dict", "beta1: 0.9 on rank 0, 0.5 on rank 1"),
    ("flush denormals", "set_flush_denormals: False on rank 0, True on rank 1"),
    ("step count", "iter: 2 on rank 0, 0 on rank 1"),
])
def test_ranks_configured_differently_all_raise_naming_the_difference(kind, difference,
                                                                      tmp_path_factory):
    reports = mismatch_reports(tmp_path_factory)
    assert len(reports) == 2
    for report in reports:
        error = report[kind]
        assert error.startswith("ValueError: the ranks' sharded optimizers are configured "
                                "differently"), (kind, error)
        assert difference in error, (kind, error)
        assert "nothing was changed on any rank" in error, (kind, error)
        assert report[kind + "/unchanged"] is True, kind
        if kind + "/after" in report:
            assert report[kind + "/after"] == 3, kind   # and then they stepped on together
    assert reports[0][kind] == reports[1][kind]


_WHOLE = {}


def whole_run(ranks, tmp_path_factory):
    """The whole-param scenario's records, its directory (checkpoints) and refusals."""
    if ranks not in _WHOLE:
        out = tmp_path_factory.mktemp(f"whole{ranks}") / "whole.npz"
        launch(ranks, "whole", out)
        with np.load(out) as data:
            _WHOLE[ranks] = (dict(data), out.parent)
    return _WHOLE[ranks]


def expected_owners(params, ranks):
    """The documented assignment, restated: within each dtype, in key order, a param goes to
    the rank whose equal block of the dtype's elements holds its middle element (float32's
    params first, as the sharded optimizer lists them)."""
    arrays = list(params.values()) if isinstance(params, dict) else list(params)
    owners = {}
    for dtype in ("float32", "float64"):
        positions = [i for i, array in enumerate(arrays) if array.dtype == dtype]
        total = sum(arrays[i].size for i in positions)
        offset = 0
        for i in positions:
            middle = offset + arrays[i].size / 2
            owners[i] = min(ranks - 1, int(middle * ranks // total)) if total else 0
            offset += arrays[i].size
    return owners


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_rules_that_need_whole_params_are_sharded_by_whole_params(ranks, tmp_path_factory):
    """LAMB, LARS, Adafactor and Muon: each param on one rank (the documented assignment, in
    contiguous runs; with 3 ranks some rank owns no param of a dtype, or none at all), every
    rank with the same bytes after every step, and each param's step, bit for bit, a
    single-process optimizer's on the same averaged grads; one Reduce_scatter and one
    Allgatherv per dtype and step."""
    import fastopt
    from fastopt import clipping

    data, _ = whole_run(ranks, tmp_path_factory)
    nobody = set()
    for name, cls, kwargs, dtypes, by_key, shapes in whole_configs():
        params = whole_params(dtypes, by_key, shapes)
        keys = keys_of(params)
        owners = expected_owners(params, ranks)
        for rank in range(ranks):
            owned = list(data[f"{name}/owned/r{rank}"])
            # the wrapped optimizer's list: float32's params, then float64's, in key order
            assert owned == [i for i, r in owners.items() if r == rank], (name, rank)
            if not owned:
                nobody.add(name)
        groups = len({params[key].dtype for key in keys})
        clip = kwargs.get("max_grad_norm") is not None
        assert list(data[f"{name}/calls"]) == [groups, groups, int(clip), 1], name
        single = getattr(fastopt, cls)(**{**kwargs, "max_grad_norm": None})
        for step in range(WHOLE_STEPS + WHOLE_MORE):
            expected, magnitude = numpy_average(params, step, ranks, seed=3)
            got = {}
            for key in keys:
                got[key] = data[f"{name}/s{step}/avg/{key}"]
                assert got[key].shape == np.shape(params[key]), (name, key)   # whole, shaped
                u = np.finfo(got[key].dtype).eps / 2
                assert np.all(np.abs(got[key].astype(np.float64) - expected[key])
                              <= 2 * u * magnitude[key] * (1 + 4 * ranks * u)), (name, key)
                if ranks == 2:
                    assert got[key].tobytes() == expected[key].tobytes(), (name, step, key)
            if clip:
                norm = float(data[f"{name}/s{step}/norm"])
                exact = math.fsum(float(x) ** 2 for key in keys
                                  for x in got[key].astype(np.float64).reshape(-1))
                assert abs(norm * norm - exact) <= 1e-12 * exact, (name, step)
                factor = clipping.clip_coefficient(norm, kwargs["max_grad_norm"])
                assert factor is not None, (name, step)   # the test clips at every step
                got = {key: np.asarray(got[key] * factor) for key in keys}
            single.update(params, got if by_key else [got[key] for key in keys])
            for key in keys:
                mine = np.asarray(params[key]).tobytes()
                for rank in range(ranks):
                    assert data[f"{name}/s{step}/params/r{rank}/{key}"].tobytes() == mine, (
                        name, step, key, rank)
    # With 3 ranks, W1 (91 of 139 elements) outweighs a block: some rank owns no param.
    assert bool(nobody) == (ranks == 3), nobody


def clipped_average(data, name, step, keys, limit):
    """The grads a single process steps with at ``step`` of the whole-param run ``name``: the
    recorded averages by key, scaled by the clip factor of the recorded global norm when the
    run clips at ``limit``."""
    from fastopt import clipping
    got = {key: data[f"{name}/s{step}/avg/{key}"] for key in keys}
    if limit is not None:
        factor = clipping.clip_coefficient(float(data[f"{name}/s{step}/norm"]), limit)
        got = {key: np.asarray(got[key] * factor) for key in keys}
    return got


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_whole_param_checkpoints_resume_exactly(ranks, tmp_path_factory):
    """At step WHOLE_STEPS: the gathered state (Adafactor's rows and columns in their own
    shapes) is a single-process optimizer's bit for bit; the state_dict, saved and loaded by a
    single process, and loaded by a second sharded optimizer, continues with the sharded
    run's bits; each rank holds the state of its own params only."""
    import fastopt

    data, directory = whole_run(ranks, tmp_path_factory)
    for name, cls, kwargs, dtypes, by_key, shapes in whole_configs():
        params = whole_params(dtypes, by_key, shapes)
        keys = keys_of(params)
        single = getattr(fastopt, cls)(**{**kwargs, "max_grad_norm": None})
        for step in range(WHOLE_STEPS):
            got = clipped_average(data, name, step, keys, kwargs.get("max_grad_norm"))
            single.update(params, got if by_key else [got[key] for key in keys])
        owners = expected_owners(params, ranks)
        nbytes = [0] * ranks
        for state_name in single.state_names:
            for position, key in enumerate(keys):
                mine = getattr(single, state_name)[key]
                gathered = data[f"{name}/gathered/{state_name}/{key}"]
                assert gathered.shape == mine.shape and gathered.dtype == mine.dtype
                assert gathered.tobytes() == mine.tobytes(), (name, state_name, key)
                nbytes[owners[position]] += mine.nbytes
        assert list(data[f"{name}/nbytes"]) == nbytes, name
        resumed = getattr(fastopt, cls)(weight_decay_filter=kwargs.get("weight_decay_filter"))
        resumed.load_state_dict(fastopt.load(directory / f"{name}.npz"))
        resumed.max_grad_norm = None
        for step in range(WHOLE_STEPS, WHOLE_STEPS + WHOLE_MORE):
            got = clipped_average(data, name, step, keys, kwargs.get("max_grad_norm"))
            resumed.update(params, got if by_key else [got[key] for key in keys])
            for key in keys:
                sharded = data[f"{name}/s{step}/params/r0/{key}"].tobytes()
                assert np.asarray(params[key]).tobytes() == sharded, (name, step, key)
                for rank in range(ranks):
                    assert data[f"{name}/s{step}/second/r{rank}/{key}"].tobytes() == sharded, (
                        name, step, key, rank)


@needs_mpi
def test_a_param_the_rule_does_not_take_is_refused_at_construction_on_every_rank(
        tmp_path_factory):
    _, directory = whole_run(2, tmp_path_factory)
    refusals = json.loads((directory / "refused.json").read_text())
    assert len(refusals) == 2 and refusals[0] == refusals[1], refusals
    assert refusals[0].startswith("ValueError: ") and "'b1'" in refusals[0], refusals
    assert "(3,)" in refusals[0] and "Partition" in refusals[0], refusals


@needs_mpi
def test_ranks_whose_muon_settings_differ_all_raise_naming_the_setting(tmp_path_factory):
    _, directory = whole_run(2, tmp_path_factory)
    reports = json.loads((directory / "settings.json").read_text())
    assert len(reports) == 2 and reports[0] == reports[1], reports
    assert reports[0].startswith("ValueError: the ranks' sharded optimizers are configured "
                                 "differently"), reports
    # numbers are shown as floats (_text), ints too
    assert "ns_steps: 5.0 on rank 0, 4.0 on rank 1" in reports[0], reports


@needs_mpi
def test_a_state_not_of_the_rules_shape_is_refused_by_scatter_state():
    """Adafactor's row_var of a (4, 3) param is (4, 1): one of the param's own shape is refused
    naming the state, the key and both shapes, and the sharded optimizer is unchanged."""
    code = ("import numpy as np, fastopt\n"
            "from fastopt import distributed\n"
            "params = {'W': np.ones((4, 3)), 'b': np.ones(3)}\n"
            "sharded = distributed.ShardedOptimizer(fastopt.Adafactor(), params)\n"
            "single = fastopt.Adafactor()\n"
            "single.update({k: v.copy() for k, v in params.items()},\n"
            "              {k: np.ones_like(v) for k, v in params.items()})\n"
            "single.row_var['W'] = np.zeros((4, 3))\n"
            "try:\n"
            "    distributed.scatter_state(sharded, single)\n"
            "except ValueError as error:\n"
            "    print(error)\n"
            "print(sharded.optimizer.iter, sharded.optimizer.row_var)\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=60, cwd=NEUTRAL, env=environment())
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ("state row_var['W'] is not an array of shape (4, 1) (its "
                                "param's (4, 3)) and dtype float64\n0 None\n"), completed.stdout


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
    {"run": _worker_run, "spy": _worker_spy, "errors": _worker_errors, "leave": _worker_leave,
     "mismatch": _worker_mismatch, "whole": _worker_whole}[sys.argv[1]](*sys.argv[2:])
