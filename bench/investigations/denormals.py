"""Do tiny (subnormal) state values slow the updates? Adam after many zero-gradient steps.

    python bench/investigations/denormals.py [--elements 100000]

With a zero gradient, Adam's m and v shrink geometrically every step (by beta1 and beta2)
until they are subnormal, then reach zero. This script steps an Adam state there, timing
fastopt's update (as it is, and with fastopt.set_flush_denormals(True)) and the book's NumPy
code at checkpoints, and prints the fraction of subnormal state values beside each time.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import fastopt
from fastopt import reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: _common.py
from _common import header


def median_update(optimizer, params, grads, calls=15) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        optimizer.update(params, grads)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e6


def subnormal_fraction(array: np.ndarray) -> float:
    tiny = np.finfo(array.dtype).tiny
    return float(np.mean((array != 0) & (np.abs(array) < tiny)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", type=int, default=100_000)
    args = parser.parse_args()
    print(header())
    print(f"Adam on {args.elements} elements, zero gradients after one step of ones; median us "
          f"per update at each checkpoint (subnormal share of v)")
    for dtype in (np.float32, np.float64):
        limit = 2000 if dtype == np.float32 else 16000
        checkpoints = sorted({0, 200, 600, 900, 1000, limit // 4, limit // 2, limit})
        columns = []
        for module, flush in ((fastopt, False), (fastopt, True), (reference, False)):
            rows = []
            fastopt.set_flush_denormals(flush)
            optimizer = module.Adam(beta2=0.9)   # v shrinks like m: subnormal within reach
            params = {"w": np.ones(args.elements, dtype)}
            optimizer.update(params, {"w": np.ones(args.elements, dtype)})
            zero = {"w": np.zeros(args.elements, dtype)}
            done = 0
            for checkpoint in checkpoints:
                for _ in range(checkpoint - done):
                    optimizer.update(params, zero)
                done = checkpoint
                rows.append((checkpoint, median_update(optimizer, params, zero),
                             subnormal_fraction(optimizer.v["w"])))
                done += 15
            columns.append(rows)
        fastopt.set_flush_denormals(False)
        print(f"\n{np.dtype(dtype).name}: {'step':>6} {'fastopt us':>11} {'subnormal v':>11} "
              f"{'flushing us':>12} {'NumPy us':>9}")
        for (step, fast, share), (_, flushed, _), (_, slow, _) in zip(*columns, strict=True):
            print(f"{'':8} {step:6} {fast:11.1f} {share:11.0%} {flushed:12.1f} {slow:9.1f}")


if __name__ == "__main__":
    main()
