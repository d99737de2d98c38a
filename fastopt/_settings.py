"""Run-time settings of the compiled loops: threads for large params, flushing subnormals.

Threads
-------

A large param is cut into chunks of whole cache lines, which the calling thread and a small
pool of worker threads claim one at a time: from 2**18 elements for SGD, Momentum, Nesterov
and Lion, which only stream memory, and from 2**15 for the rules bound by ``sqrt`` and
division (bench/investigations/threads.py). The caller starts at once and never waits for a
worker that has not started; smaller params run on the caller alone. The loops are
elementwise, and the sums (norms, Adafactor's row and column sums) are split where the split
does not change them, so results are bit-identical for any number of threads.

The number comes from ``FASTOPT_NUM_THREADS``, else ``OMP_NUM_THREADS``, else it is the
number of CPUs this process may run on, at most DEFAULT_MAX_THREADS. On an otherwise idle
machine, a second thread next to NumPy's BLAS threads (which keep spinning between matrix
products) never made the digits example's update slower (0.88-1.01x with 1e6-element
params); when other processes already keep every CPU busy, a worker that loses its CPU
mid-chunk can (0.60-1.75x), and ``FASTOPT_NUM_THREADS=1`` is the better setting there
(docs/threads-and-subnormals.md). Builds without POSIX threads (MSVC) run on one thread.

At most 256 threads: ``set_num_threads`` and ``FASTOPT_NUM_THREADS`` refuse more with a
ValueError, as they refuse anything but a whole number >= 1. ``OMP_NUM_THREADS``, which other
libraries read too, is capped at 256, and a value fastopt cannot use (``auto``, ``0``, ``1.5``)
is ignored, as GNU's OpenMP runtime ignores it (threads_from_environment).

With threadpoolctl installed, the pool is one of the libraries ``threadpool_info()`` lists
(user_api "fastopt") and ``threadpool_limits`` sets (fastopt/_config.py).

A forked process (``os.fork``, multiprocessing's "fork" start method) starts with no worker
threads (its parent's do not exist in it) and starts its own on its first large update.

Subnormals
----------

Off by default; ``set_flush_denormals(True)`` makes the compiled loops flush subnormal
numbers to zero, scoped to each loop's run (see its docstring).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

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


def threads_from_environment(environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """The thread count the environment asks for at import, and where it came from.

    ``FASTOPT_NUM_THREADS`` is fastopt's own: a whole number from 1 to 256, anything else is a
    ValueError naming it. ``OMP_NUM_THREADS`` belongs to every OpenMP library and BLAS in the
    process, which accept values fastopt has no use for (OpenMP's nested lists such as
    ``4,2``, or values they ignore such as ``auto``): its first entry is used when it is a whole
    number >= 1 (capped at 256), and any other value is ignored, as GNU's OpenMP runtime
    ignores it (OpenBLAS reads leading digits), never an error. Neither set: the CPUs this
    process may run on, at most DEFAULT_MAX_THREADS. An empty variable counts as unset.

    Parameters
    ----------
    environ : mapping, optional
        The variables to read; ``os.environ`` by default.

    Returns
    -------
    count : int
    origin : str
        What decided ``count``, in words: ``"FASTOPT_NUM_THREADS='2'"``,
        ``"OMP_NUM_THREADS='4,2'"`` or ``"the default (...)"``, which names an
        ``OMP_NUM_THREADS`` it ignored.

    Raises
    ------
    ValueError
        If ``FASTOPT_NUM_THREADS`` is set to anything but a whole number from 1 to 256.
    """
    environ = os.environ if environ is None else environ
    ignored = ""
    own = environ.get("FASTOPT_NUM_THREADS", "").strip()
    if own:
        count = _whole_number(own)
        if count is None or count < 1:
            raise ValueError(f"FASTOPT_NUM_THREADS={own!r}: expected a whole number of threads "
                             f">= 1 and <= {MAX_THREADS}")
        if count > MAX_THREADS:
            raise ValueError(f"FASTOPT_NUM_THREADS={own!r}: fastopt uses at most "
                             f"{MAX_THREADS} threads")
        return count, f"FASTOPT_NUM_THREADS={own!r}"
    shared = environ.get("OMP_NUM_THREADS", "").strip()
    if shared:
        count = _whole_number(shared.split(",")[0])   # a list gives the nested levels
        if count is not None and count >= 1:
            # Shared with other libraries, so capped rather than refused.
            return min(count, MAX_THREADS), f"OMP_NUM_THREADS={shared!r}"
        ignored = f"; OMP_NUM_THREADS={shared!r} ignored: not a whole number >= 1"
    return (min(available_cpus(), DEFAULT_MAX_THREADS),
            f"the default (the CPUs this process may run on, at most {DEFAULT_MAX_THREADS})"
            f"{ignored}")


def _whole_number(text: str) -> int | None:
    text = text.strip()
    if not text or not text.isascii() or not text.isdigit():
        return None
    return int(text)


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
    (``python bench/investigations/denormals.py``). With this enabled, each compiled loop sets
    the CPU's flush-to-zero and denormals-are-zero modes for its own run and restores the
    thread's previous mode afterwards, so nothing else in the process is affected. Results then
    differ from NumPy's wherever a value is subnormal: off by default, and the NumPy path
    (views, float16, scalars) is never affected.
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


_threads, threads_origin = threads_from_environment()
set_num_threads(_threads)
