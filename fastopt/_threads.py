"""How many threads the compiled loops use for large params.

A param of at least 65536 elements is split into one contiguous chunk per thread; smaller
params, and every param in builds without OpenMP (macOS), run on one thread. The loops are
elementwise, so results are bit-identical for any number of threads.

The number comes from ``FASTOPT_NUM_THREADS``, else ``OMP_NUM_THREADS``, else it is 1: threads
are opt-in. In a training loop NumPy's BLAS (OpenBLAS) keeps its own threads spinning on the
cores between matrix products, and OpenMP threads that wait for those cores instead of working
make an update many times slower. Measured on 2 cores, the digits example's Adam update took
3.25 ms with 2 fastopt threads next to OpenBLAS's, 83 us on one thread, and 63 us on 2 threads
with OPENBLAS_NUM_THREADS=1. Use threads when the rest of the process leaves cores free.

A process forked after its parent ran threads runs on one thread: GNU OpenMP's threads do not
survive ``fork``, and using them again in the child hangs it.
"""
from __future__ import annotations

import os

from . import _kernels

__all__ = ["get_num_threads", "set_num_threads"]


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


set_num_threads(_from_environment())
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_kernels.after_fork_in_child)
