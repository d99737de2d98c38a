"""What the benchmark (bench/run.py), its investigations (bench/investigations/) and its tools
share: the optimizers and workloads timed, their arrays, the timing, the machine, and the
loader of timm's optimizer modules (the tests' too: tests/_helpers.py imports it from here).

Imports no fastopt: bench/investigations/callpath.py imports this before it puts the build it
times on ``sys.path``. Scripts in bench/ import it as ``_common`` (their folder is on
``sys.path`` when they run); those in bench/investigations/ put bench/ on ``sys.path`` first.
"""
from __future__ import annotations

import gc
import importlib
import importlib.util
import itertools
import math
import os
import platform
import subprocess
import sys
import sysconfig
import time
import types
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------------------------
# What is timed.

DTYPES = ["float32", "float64"]


def __getattr__(name: str) -> list[str]:
    """``ALL_OPTIMIZERS``: every optimizer fastopt declares (fastopt/_rules.py), in its order;
    ``OPTIMIZERS``: those that take any param shape (not Muon, which takes matrices only:
    ``workload_for`` gives it a workload's matrices);
    ``BOOK_OPTIMIZERS``: those of the book. Read from fastopt when first asked for, so that
    importing this module imports no fastopt (investigations/callpath.py puts the build it
    times on the path after)."""
    if name not in ("ALL_OPTIMIZERS", "OPTIMIZERS", "BOOK_OPTIMIZERS"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import fastopt.book
    from fastopt._rules import RULES
    if name == "ALL_OPTIMIZERS":
        return [rule.__name__ for rule in RULES]
    names = [rule.__name__ for rule in RULES if rule._param_ndim is None]
    return names if name == "OPTIMIZERS" else [n for n in names if n in fastopt.book.__all__]


TWO_LAYER_NET = [(784, 50), (50,), (50, 10), (10,)]
FIVE_LAYER_NET = [(784, 100), (100,), (100, 100), (100,), (100, 100), (100,), (100, 100),
                  (100,), (100, 10), (10,)]


@dataclass(frozen=True)
class Workload:
    name: str
    shapes: tuple
    description: str

    @property
    def elements(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)

    @property
    def single_array(self) -> bool:
        return len(self.shapes) == 1


def all_workloads() -> list[Workload]:
    # one element: what a call costs apart from the arithmetic
    workloads = [Workload("1", ((1,),), "one array of 1 element")]
    workloads += [Workload(f"1e{exponent}", ((10**exponent,),), f"one array of 1e{exponent}")
                  for exponent in (2, 4, 6, 7)]
    workloads += [
        Workload("two_layer_net", tuple(TWO_LAYER_NET), "the book's TwoLayerNet 784-50-10"),
        Workload("five_layer_net", tuple(FIVE_LAYER_NET),
                 "the book's comparison net 784-100x4-10"),
        Workload("many_small", ((1000,),) * 200, "200 arrays of 1000"),
    ]
    return workloads


def workload_for(optimizer: str, workload: Workload) -> Workload | None:
    """``workload`` as ``optimizer`` takes it: the whole of it, or, for a rule whose params
    must have a number of dims (``_param_ndim``; Muon: matrices), the params of that many dims
    under the same name (a network's weight matrices: in training its biases go to another
    rule, through ``fastopt.Partition``); None when it has none (Muon and the single
    arrays)."""
    import fastopt
    ndim = getattr(fastopt, optimizer)._param_ndim
    if ndim is None:
        return workload
    shapes = tuple(shape for shape in workload.shapes if len(shape) == ndim)
    if not shapes:
        return None
    return Workload(workload.name, shapes, f"{workload.description}, its {ndim}-D params")


def make_arrays(shapes, dtype):
    """The benchmark's params and grads: dicts keyed p0, p1, ..., the same for every run."""
    rng = np.random.default_rng(0)
    params = {f"p{i}": rng.standard_normal(shape).astype(dtype) for i, shape in enumerate(shapes)}
    grads = {key: (rng.standard_normal(value.shape) * 1e-3).astype(dtype)
             for key, value in params.items()}
    return params, grads


def workload_named(name: str) -> Workload:
    return next(workload for workload in all_workloads() if workload.name == name)


def make_numpy_like(module, optimizer, params, grads):
    instance = getattr(module, optimizer)()
    own = {key: value.copy() for key, value in params.items()}

    def step():
        instance.update(own, grads)
    return step


# --------------------------------------------------------------------------------------------
# Timing.

def warm_allocator() -> None:
    """Put glibc's malloc in the state a training process is in, before anything is timed.

    glibc serves blocks over its mmap threshold (128 KiB at start) with fresh mmapped pages,
    each page faulted in on first touch, until the first such block is freed: then the
    threshold rises to that block's size and later temporaries reuse heap pages. A training
    loop frees batches and activations far larger than an optimizer's temporaries long before
    its first update, and importing torch frees large blocks too. Without this, the book's
    NumPy code runs about 1.8x slower in a fresh process than in a warmed one or one that
    imported torch (bench/investigations/malloc.py: TwoLayerNet float64 Adam), so the NumPy
    column would depend on whether torch is installed. This makes the NumPy baseline its
    fastest.
    """
    block = np.empty(4_000_000)   # 32 MB, just under glibc's 32 MiB cap for the threshold
    del block


def calls_for(fastest: float, target_seconds=2e-5) -> int:
    """One batch size for every contender of a cell, so that all samples are alike: the
    fewest calls with which the fastest contender's sample spans ``target_seconds`` (where
    the timer's ~0.05 us is under 0.4%). Above that every sample is a single call."""
    return max(1, min(10_000, math.ceil(target_seconds / max(fastest, 1e-9))))


def fastest_call(step) -> float:
    """The fastest of three single calls (after the caller's warm-up), in seconds."""
    fastest = math.inf
    for _ in range(3):
        start = time.perf_counter()
        step()
        fastest = min(fastest, time.perf_counter() - start)
    return fastest


def time_block(steps: dict, calls: int, count: int, warm: bool = True, first: int = 0,
               consecutive: bool = False) -> dict:
    """One timing block: ``count`` samples per step; returns the seconds per update of every
    sample, per step. Only the update calls are timed.

    Interleaved (the default): every step called twice to warm its threads (unless not
    ``warm``), then ``count`` rounds, each one sample per step in an order that rotates from
    round to round (from round number ``first``). ``consecutive``: step after step (in the
    dict's order rotated by ``first``), each warmed by two calls right before its ``count``
    samples in a row, so that every sample finds the caches and threads as the step's own
    previous call left them, as a contender timed alone in a process of its own does."""
    names = list(steps)
    samples: dict[str, list[float]] = {name: [] for name in names}
    shift = first % len(names)
    order = names[shift:] + names[:shift]
    if consecutive:
        for name in order:
            samples.update(time_block({name: steps[name]}, calls, count, warm))
        return samples
    if warm:
        for step in steps.values():
            step()
            step()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_index in range(first, first + count):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                step = steps[name]
                start = time.perf_counter()
                for _ in itertools.repeat(None, calls):
                    step()
                samples[name].append((time.perf_counter() - start) / calls)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def measure(steps: dict, budget: float, min_rounds: int) -> dict:
    """Interleaved round-robin timing in this process, until ``budget`` seconds are spent and
    at least ``min_rounds`` rounds are done; returns per-contender lists of seconds per update
    and the calls per sample. For contenders that share one thread pool (or none): the
    investigations (levels of SIMD, alignment, call overhead, clipping)."""
    for step in steps.values():          # the first call allocates state; then warm up
        step()
        step()
    calls = calls_for(min(fastest_call(step) for step in steps.values()))
    samples: dict[str, list[float]] = {name: [] for name in steps}
    deadline = time.perf_counter() + budget
    for round_index in itertools.count():
        for name, seconds in time_block(steps, calls, 1, warm=False, first=round_index).items():
            samples[name].extend(seconds)
        if round_index + 1 >= min_rounds and time.perf_counter() >= deadline:
            break
    return {"samples": samples, "calls_per_sample": calls}


def one_and_two_threads(optimizer, params, grads, updates: int, budget: float,
                        min_rounds: int) -> tuple[int, float, float]:
    """Chunks the pool's worker ran over ``updates`` updates at 2 threads (after a first one),
    then the median ms of an update on 1 and on 2 threads, alternated update by update (each
    switch followed by one untimed update): (chunks, one, two). Leaves fastopt at 2 threads.
    """
    import fastopt
    from fastopt._simd import kernels
    fastopt.set_num_threads(2)
    optimizer.update(params, grads)
    before = kernels.pool_worker_chunks()
    for _ in range(updates):
        optimizer.update(params, grads)
    chunks = kernels.pool_worker_chunks() - before

    def step() -> None:
        optimizer.update(params, grads)

    def switch(threads) -> None:
        fastopt.set_num_threads(threads)
        step()
    median = alternating({1: step, 2: step}, budget, min_rounds=min_rounds, before=switch)
    return chunks, median[1] * 1e3, median[2] * 1e3


def alternating(steps: dict[Hashable, Callable[[], object]], budget: float, min_rounds: int = 5,
                before: Callable[[Hashable], object] | None = None) -> dict[Hashable, float]:
    """Median seconds per call of each of ``steps``, timed one call each per round, in the
    dict's order, until ``budget`` seconds are spent and at least ``min_rounds`` rounds are
    done. ``before(key)`` runs untimed before each step's call: it switches what the steps
    compare (a thread count, the square root) when they share one optimizer."""
    samples: dict[Hashable, list[float]] = {key: [] for key in steps}
    deadline = time.perf_counter() + budget
    rounds = 0
    while rounds < min_rounds or time.perf_counter() < deadline:
        for key, step in steps.items():
            if before is not None:
                before(key)
            start = time.perf_counter()
            step()
            samples[key].append(time.perf_counter() - start)
        rounds += 1
    return {key: float(np.median(values)) for key, values in samples.items()}


# --------------------------------------------------------------------------------------------
# The machine.

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_simd() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo
                          if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    for flag, label in (("avx512f", "AVX-512F"), ("avx2", "AVX2"), ("avx", "AVX"),
                        ("sse2", "SSE2")):
        if flag in flags:
            return label
    return "unknown"


def compiler_version() -> str:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    try:
        output = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                timeout=10).stdout
        return output.splitlines()[0] if output else compiler
    except (OSError, subprocess.SubprocessError):
        return f"{compiler} (version unknown)"


def header() -> str:
    """One line for a script's output: fastopt's version, SIMD level and threads, the CPU,
    Python's and NumPy's versions."""
    import fastopt
    return (f"fastopt {fastopt.__version__} ({fastopt.simd_level()}, "
            f"{fastopt.get_num_threads()} thread(s)), {cpu_model()}, Python "
            f"{platform.python_version()}, NumPy {np.__version__}")


# --------------------------------------------------------------------------------------------
# Peers loaded without their package's init.

_TIMM_OPTIM = "_timm_optim"   # a private name: never the real timm.optim


def timm_optim(name: str) -> types.ModuleType | None:
    """timm's optimizer module ``timm/optim/<name>.py`` (``"lars"``, ``"lamb"``, ...), or None
    when timm or torch is not installed.

    timm's package init imports torchvision and its models, which may not match the torch
    installed here, but its optimizer files need only torch and each other: the installed
    timm's directory is found without importing it, an empty package of a private name is
    registered over its ``optim`` folder, and the module is imported from there (its relative
    imports, ``._helpers``, resolve inside that package). The benchmark's peers
    (bench/run.py) and the tests' oracles (tests/test_timm.py, tests/test_lookahead.py) load
    timm through this."""
    if importlib.util.find_spec("torch") is None:
        return None
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    if _TIMM_OPTIM not in sys.modules:
        package = types.ModuleType(_TIMM_OPTIM)
        package.__path__ = [os.path.join(location, "optim")
                            for location in spec.submodule_search_locations]
        sys.modules[_TIMM_OPTIM] = package
    return importlib.import_module(f"{_TIMM_OPTIM}.{name}")
