"""Verify fastopt's software square root against the hardware instruction, bit for bit.

    python bench/verify_sqrt.py [--count 1e9] [--seed 0]

The AVX-512 build of fastopt takes float64 square roots in its update loops by an exactly
rounded software sequence where that is faster than the hardware instruction
(fastopt/_soft_sqrt.h, ``fastopt_sqrt8``). IEEE 754 square root is correctly rounded, so the
two must agree on every input: this program compares them on ``--count`` inputs (at least
1e9 by default) split evenly over the classes below, and prints the mismatches per class
(there must be none). The hardware's result is NumPy's ``np.sqrt``, which is the CPU's
``sqrtpd``/``vsqrtpd``.

Classes of inputs (each drawn fresh per chunk from ``--seed``):

- ``bits``: uniformly random 64-bit patterns: every sign, exponent and payload, so negative
  numbers, NaNs, infinities, subnormals and the software sequence's hardware fall-back lanes.
- ``normal``: positive normal numbers with a uniformly random exponent over the whole range.
- ``midpoint``: the hardest cases for rounding, x = RN(y * next(y)) and its neighbours up to
  3 units in the last place apart: sqrt(x) lies within a hair of the midpoint between y and
  next(y), where a result off by one unit is most likely.
- ``square``: x = RN(y * y) and its neighbours: sqrt(x) within a hair of a float.
- ``edges``: powers of two and their neighbours, the software sequence's range limits 2**-900
  and 2**900 and their neighbours, zeros of both signs, subnormals, the largest float.

Inputs are processed by the software sequence in place on whole arrays, so lanes of every
class sit next to each other in one vector: vectors that fall back to the hardware
instruction and vectors that do not are both exercised, and so are zeros inside otherwise
ordinary vectors. Exit status 1 if any input differs. tests/test_sqrt.py runs a small
subset of the same classes on every test run.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable

import numpy as np

CHUNK = 1 << 22   # inputs per array handed to the software sequence


def _exponent_bits(rng: np.random.Generator, size: int, low: int, high: int) -> np.ndarray:
    """Random positive floats with biased exponents in [low, high] and random mantissas."""
    mantissa = rng.integers(0, 1 << 52, size, dtype=np.uint64)
    exponent = rng.integers(low, high + 1, size, dtype=np.uint64)
    return ((exponent << np.uint64(52)) | mantissa).view(np.float64)


def _neighbours(x: np.ndarray, rng: np.random.Generator, reach: int) -> np.ndarray:
    """Each of ``x`` moved by a random number of units in the last place in [-reach, reach]
    (positive finite inputs stay positive and finite for the ranges used here)."""
    steps = rng.integers(-reach, reach + 1, x.size).astype(np.int64)
    return (x.view(np.int64) + steps).view(np.float64)


def bits(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.integers(0, 1 << 64, size, dtype=np.uint64, endpoint=False).view(np.float64)


def normal(rng: np.random.Generator, size: int) -> np.ndarray:
    return _exponent_bits(rng, size, 1, 2046)


def midpoint(rng: np.random.Generator, size: int) -> np.ndarray:
    # y with sqrt-range exponents, so y * next(y) is a normal float
    y = _exponent_bits(rng, size, 1023 - 510, 1023 + 510)
    above = np.nextafter(y, np.inf)
    with np.errstate(over="ignore"):
        return _neighbours(y * above, rng, 3)


def square(rng: np.random.Generator, size: int) -> np.ndarray:
    y = _exponent_bits(rng, size, 1023 - 510, 1023 + 510)
    with np.errstate(over="ignore"):
        return _neighbours(y * y, rng, 3)


def edges(rng: np.random.Generator, size: int) -> np.ndarray:
    info = np.finfo(np.float64)
    powers = np.ldexp(1.0, rng.integers(-1074, 1024, size))
    limits = rng.choice(np.array([2.0**-900, 2.0**900, info.smallest_normal, info.max,
                                  info.smallest_subnormal, 1.0]), size)
    picked = np.where(rng.random(size) < 0.5, powers, limits)
    x = _neighbours(picked, rng, 3)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, info.smallest_subnormal])
    where = rng.random(size) < 0.05
    x[where] = rng.choice(specials, int(where.sum()))
    return x


CLASSES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "bits": bits, "normal": normal, "midpoint": midpoint, "square": square, "edges": edges}


def mismatches(kernels, x: np.ndarray) -> np.ndarray:
    """Indices where the software square root of ``x`` differs from the hardware's (two
    NaNs agree whatever their payloads: the loops never look at a NaN's payload)."""
    software = np.ascontiguousarray(x, dtype=np.float64).copy()
    kernels.soft_sqrt(software)
    with np.errstate(invalid="ignore"):
        hardware = np.sqrt(x)
    differ = software.view(np.uint64) != hardware.view(np.uint64)
    differ &= ~(np.isnan(software) & np.isnan(hardware))
    return np.flatnonzero(differ)


def software_kernels():
    """The AVX-512 module, which holds the software square root; None where it cannot run."""
    import fastopt
    if "avx512" not in fastopt.simd_levels():
        return None
    kernels = importlib.import_module("fastopt._kernels_avx512")
    return kernels if kernels.can_soft_sqrt() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=float, default=1e9, help="inputs in all (>= 1e9)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from _common import cpu_model  # bench/_common.py, beside this script
    kernels = software_kernels()
    if kernels is None:
        print("this machine or build has no AVX-512 module: nothing to verify")
        return 0
    per_class = int(args.count) // len(CLASSES)
    print(f"software vs hardware float64 square root on {cpu_model()}: {per_class:,} inputs "
          f"per class, {per_class * len(CLASSES):,} in all, seed {args.seed}")
    rng = np.random.default_rng(args.seed)
    failed = 0
    started = time.perf_counter()
    for name, draw in CLASSES.items():
        done = differ = 0
        first = ""
        while done < per_class:
            size = min(CHUNK, per_class - done)
            x = draw(rng, size)
            wrong = mismatches(kernels, x)
            if wrong.size and not first:
                value = x[wrong[0]]
                first = f" (first: sqrt({value.hex()}))"
            differ += wrong.size
            done += size
        failed += differ
        print(f"  {name:9} {done:>13,} inputs  {differ} mismatches{first}")
    print(f"{failed} mismatches in all ({time.perf_counter() - started:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
