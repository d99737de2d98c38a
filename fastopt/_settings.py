"""Run-time settings of the compiled loops: threads for large params, flushing subnormals.

Threads
-------

A large param is cut into chunks of whole cache lines, which the calling thread and a small
pool of worker threads claim one at a time: from 2**18 elements for SGD, Momentum, Nesterov
and Lion, which only stream memory, and from 2**15 for the rules bound by ``sqrt`` and
division (bench/threads.py). The caller starts at once and never waits for a worker that has
not started; smaller params run on the caller alone. The loops are elementwise, so results
are bit-identical for any number of threads.

The number comes from ``FASTOPT_NUM_THREADS``, else ``OMP_NUM_THREADS``, else it is the
number of CPUs this process may run on, at most DEFAULT_MAX_THREADS. On an otherwise idle
machine, a second thread next to NumPy's BLAS threads (which keep spinning between matrix
products) never made the digits example's update slower (0.88-1.01x with 1e6-element
params); when other processes already keep every CPU busy, a worker that loses its CPU
mid-chunk can (0.60-1.75x), and ``FASTOPT_NUM_THREADS=1`` is the better setting there
(docs/threads-and-subnormals.md). Builds without POSIX threads (MSVC) run on one thread.

At most 256 threads: ``set_num_threads`` and ``FASTOPT_NUM_THREADS`` refuse more with a
ValueError; ``OMP_NUM_THREADS``, which other libraries read too, is capped at 256.

A forked process (``os.fork``, multiprocessing's "fork" start method) starts with no worker
threads (its parent's do not exist in it) and starts its own on its first large update.

Subnormals
----------

Off by default; ``set_flush_denormals(True)`` makes the compiled loops flush subnormal
numbers to zero, scoped to each loop's run (see its docstring).
"""
from __future__ import annotations

import os

import numpy as np

from ._simd import kernels as _kernels

__all__ = ["get_flush_denormals", "get_num_threads", "get_slow_path_warning",
           "set_flush_denormals", "set_num_threads", "set_slow_path_warning"]

MAX_THREADS: int = _kernels.max_threads()


# The default is capped: measured on 2 CPUs only, and a param gains little from more threads
# than the memory bus can feed.
DEFAULT_MAX_THREADS = 8


def available_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return os.cpu_count() or 1


def _from_environment() -> int:
    for name in ("FASTOPT_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        first = value.split(",")[0].strip()   # OMP_NUM_THREADS may list nested levels
        if not first.isdigit() or int(first) < 1:
            raise ValueError(f"{name}={value!r}: expected a whole number of threads >= 1")
        if int(first) > MAX_THREADS:
            if name == "FASTOPT_NUM_THREADS":
                raise ValueError(f"{name}={value!r}: fastopt uses at most {MAX_THREADS} threads")
            return MAX_THREADS   # OMP_NUM_THREADS is shared with other libraries: capped
        return int(first)
    return min(available_cpus(), DEFAULT_MAX_THREADS)


def set_num_threads(count: int) -> None:
    """Use up to ``count`` threads (1 to 256) for each large param.

    Results do not depend on it, bit for bit. In builds without POSIX threads (MSVC) fastopt
    stays on one thread whatever ``count`` is.

    Raises
    ------
    TypeError
        If ``count`` is not an int.
    ValueError
        If ``count`` is below 1 or above 256; nothing changes.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise TypeError(f"count must be an int; got {count!r}")
    if not 1 <= count <= MAX_THREADS:
        raise ValueError(f"count must be >= 1 and <= {MAX_THREADS} (the most threads fastopt "
                         f"uses); got {count}")
    _kernels.set_threads(int(count))


def get_num_threads() -> int:
    """The number of threads a large param's update is split into."""
    return _kernels.get_threads()


def set_flush_denormals(enabled: bool) -> None:
    """Flush subnormal numbers to zero inside fastopt's compiled loops (opt-in; x86-64).

    Arithmetic on subnormal values is very slow on x86: once an optimizer's state decays into
    the subnormal range (zero gradients for many steps) every update can be 10-60x slower
    (``python bench/denormals.py``). With this enabled, each compiled loop sets the CPU's
    flush-to-zero and denormals-are-zero modes for its own run and restores the thread's
    previous mode afterwards, so nothing else in the process is affected. Results then differ
    from NumPy's wherever a value is subnormal: off by default, and the NumPy path (views,
    float16, scalars) is never affected.
    """
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"enabled must be a bool; got {enabled!r}")
    _kernels.set_flush_denormals(bool(enabled))


def get_flush_denormals() -> bool:
    """Whether the compiled loops flush subnormals to zero (see set_flush_denormals)."""
    return _kernels.get_flush_denormals()


_warn_slow_path = os.environ.get("FASTOPT_WARN_SLOW_PATH", "").strip() not in ("", "0")


def set_slow_path_warning(enabled: bool) -> None:
    """Warn (``fastopt.SlowPathWarning``) whenever a param is updated by NumPy's path.

    fastopt updates any float array correctly, but only C-contiguous, aligned float32 and
    float64 arrays (with a grad of the same dtype) take the compiled loops; a transposed view,
    a slice, float16 or a scalar takes NumPy's statements, several times slower. Off by
    default; ``FASTOPT_WARN_SLOW_PATH=1`` turns it on at import. The warning names the param
    and the reason.
    """
    global _warn_slow_path
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"enabled must be a bool; got {enabled!r}")
    _warn_slow_path = bool(enabled)


def get_slow_path_warning() -> bool:
    """Whether a param updated by NumPy's path raises a SlowPathWarning."""
    return _warn_slow_path


def slow_path_warning() -> bool:
    return _warn_slow_path


set_num_threads(_from_environment())
