"""Run-time SIMD dispatch: which build of the compiled loops this process runs.

setup.py builds fastopt/_kernels.pyx at up to three instruction-set levels, as separate
modules: ``fastopt._kernels`` (x86-64 baseline, SSE2; the only build on other CPUs and with
MSVC), ``fastopt._kernels_avx2`` (AVX2 and FMA) and ``fastopt._kernels_avx512`` (AVX-512).
At import, the baseline module asks the CPU which levels it (and the OS) can run, and the
widest of those that was built is imported and used for every update. The levels differ
only in vector width: each statement is the same IEEE operation in the same order, without
fused multiply-add, so every level gives the same bits (tests/test_simd.py).

``FASTOPT_SIMD=baseline|avx2|avx512`` forces a level, for comparison or to rule the wider
builds out; a level this CPU cannot run, or that was not built, is refused with an error
rather than run.

The AVX-512 build also has an exactly rounded software square root for the float64 loops
(fastopt/_kernels.pyx): faster than the hardware instruction on cores where that instruction
is slow, slower elsewhere, the same bits everywhere. At import the book's Adam loop is timed
both ways on 4096 cached elements (about 0.2 ms) and the software root is used only if it
is at least ``SOFT_SQRT_GAIN`` times as fast. ``FASTOPT_SQRT=hardware|software`` decides
instead (``software`` only where the AVX-512 build runs).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import _kernels

__all__ = ["simd_level", "simd_levels", "sqrt_method"]

# Narrowest first; each needs all that comes before it.
LEVELS = ("baseline", "avx2", "avx512")


def _module_name(level: str) -> str:
    return "fastopt._kernels" if level == "baseline" else f"fastopt._kernels_{level}"


def _built() -> tuple[str, ...]:
    return tuple(level for level in LEVELS
                 if importlib.util.find_spec(_module_name(level)) is not None)


def _runnable(built: Sequence[str], cpu: str) -> tuple[str, ...]:
    return tuple(level for level in LEVELS
                 if level in built and LEVELS.index(level) <= LEVELS.index(cpu))


def choose(built: Sequence[str], cpu: str, forced: str | None) -> str:
    """The level to run: ``forced`` if given and usable, else the widest built level that
    the CPU's widest level ``cpu`` covers. Raises ValueError for an unusable ``forced``."""
    runnable = _runnable(built, cpu)
    if forced is None:
        return runnable[-1]
    level = forced.strip().lower()
    if level not in LEVELS:
        raise ValueError(f"FASTOPT_SIMD={forced!r}: expected one of {', '.join(LEVELS)}")
    if level not in runnable:
        why = ("was not built (this platform or compiler builds only "
               f"{', '.join(built)})" if level not in built
               else f"needs instructions this CPU lacks (it runs up to {cpu})")
        raise ValueError(f"FASTOPT_SIMD={forced!r}: that level {why}")
    return level


_built_levels = _built()
_cpu_level = _kernels.cpu_simd_level()
_available = _runnable(_built_levels, _cpu_level)
_level = choose(_built_levels, _cpu_level, os.environ.get("FASTOPT_SIMD") or None)

# The module every update runs; the others are never imported (an unsupported one could
# execute instructions this CPU lacks already while loading). All levels have the interface
# of fastopt/_kernels.pyi, which is what type checkers see.
if TYPE_CHECKING:
    kernels = _kernels
else:
    kernels = _kernels if _level == "baseline" else importlib.import_module(_module_name(_level))


SOFT_SQRT_GAIN = 1.1   # least speed-up of the loop that makes the software root worth it
SQRT_METHODS = ("hardware", "software")


def choose_sqrt(can_soft: bool, forced: str | None,
                timings: Callable[[], tuple[float, float]]) -> str:
    """'software' or 'hardware': ``forced`` if given and usable, else 'software' where the
    build has it and ``timings()`` (seconds with the hardware root, with the software one)
    shows it at least SOFT_SQRT_GAIN times as fast. Raises ValueError for an unusable
    ``forced``."""
    if forced is not None:
        method = forced.strip().lower()
        if method not in SQRT_METHODS:
            raise ValueError(f"FASTOPT_SQRT={forced!r}: expected one of "
                             f"{', '.join(SQRT_METHODS)}")
        if method == "software" and not can_soft:
            raise ValueError(f"FASTOPT_SQRT={forced!r}: the software square root is only in "
                             f"the AVX-512 build, and this process runs {_level}")
        return method
    if not can_soft:
        return "hardware"
    hardware, software = timings()
    return "software" if hardware >= SOFT_SQRT_GAIN * software else "hardware"


_sqrt = choose_sqrt(kernels.can_soft_sqrt(), os.environ.get("FASTOPT_SQRT") or None,
                    kernels.time_soft_sqrt)
kernels.set_soft_sqrt(_sqrt == "software")


def simd_level() -> str:
    """The instruction-set level of the compiled loops this process runs: 'baseline'
    (x86-64's SSE2, or the only build on other platforms), 'avx2' (AVX2 and FMA) or 'avx512'
    (AVX-512). Chosen at import: the widest this CPU runs, or ``FASTOPT_SIMD``."""
    return _level


def sqrt_method() -> str:
    """How the float64 loops take square roots: 'hardware' (the CPU's instruction) or
    'software' (fastopt's exactly rounded sequence, AVX-512 builds only). The same bits
    either way; chosen at import by timing both, or by ``FASTOPT_SQRT``."""
    return _sqrt


def simd_levels() -> tuple[str, ...]:
    """The levels that were built and that this CPU runs: the values FASTOPT_SIMD may take."""
    return _available
