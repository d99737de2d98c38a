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
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import _kernels

__all__ = ["simd_level", "simd_levels"]

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


def simd_level() -> str:
    """The instruction-set level of the compiled loops this process runs: 'baseline'
    (x86-64's SSE2, or the only build on other platforms), 'avx2' (AVX2 and FMA) or 'avx512'
    (AVX-512). Chosen at import: the widest this CPU runs, or ``FASTOPT_SIMD``."""
    return _level


def simd_levels() -> tuple[str, ...]:
    """The levels that were built and that this CPU runs: the values FASTOPT_SIMD may take."""
    return _available
