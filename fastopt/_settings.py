"""Run-time settings of the compiled loops: threads for large params, flushing subnormals.

Threads
-------

With threads, a param is split into one contiguous chunk per thread from 2**17 elements for
SGD, Momentum and Nesterov and from 2**13 for AdaGrad, RMSprop and Adam (bench/threads.py);
smaller params, and every param in builds without OpenMP (macOS), run on one thread. The loops
are elementwise, so results are bit-identical for any number of threads.

The number comes from ``FASTOPT_NUM_THREADS``, else ``OMP_NUM_THREADS``, else it is 1: threads
are opt-in. In a training loop NumPy's BLAS (OpenBLAS) keeps its own threads spinning on the
cores between matrix products, and OpenMP threads that wait for those cores instead of working
make an update many times slower. Measured on 2 cores, the digits example's Adam update took
3.3-6.5 ms with 2 fastopt threads next to OpenBLAS's, 83-98 us on one thread, and 58-63 us on
2 threads with OPENBLAS_NUM_THREADS=1 (README, Cost). Use threads when the rest of the
process leaves cores free.

A process forked after its parent ran threads runs on one thread: GNU OpenMP's threads do not
survive ``fork``, and using them again in the child hangs it.

Subnormals
----------

Off by default; ``set_flush_denormals(True)`` makes the compiled loops flush subnormal
numbers to zero, scoped to each loop's run (see its docstring).
"""
from __future__ import annotations

import os

import numpy as np

from ._simd import kernels as _kernels

__all__ = ["get_flush_denormals", "get_num_threads", "set_flush_denormals", "set_num_threads"]


def _from_environment() -> int:
    for name in ("FASTOPT_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        first = value.split(",")[0].strip()   # OMP_NUM_THREADS may list nested levels
        if not first.isdigit() or int(first) < 1:
            raise ValueError(f"{name}={value!r}: expected a whole number of threads >= 1")
        return int(first)
    return 1


def set_num_threads(count: int) -> None:
    """Use up to ``count`` threads for each large param (>= 65536 elements).

    Results do not depend on it, bit for bit. Without OpenMP (macOS builds), or in a child
    forked after its parent ran threads, fastopt stays on one thread whatever ``count`` is.
    """
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int; got {count!r}")
    _kernels.set_threads(count)


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


set_num_threads(_from_environment())
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_kernels.after_fork_in_child)
