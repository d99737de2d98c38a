"""What does one more param cost? The same elements as 200 params or as one, timed interleaved.

    python bench/investigations/overhead.py [--budget 0.5]

For each optimizer and dtype, fastopt updates 200 params of ``--elements`` each (200 x 1000
by default: a network of many small layers) and one param holding the same number of
elements, in interleaved rounds in one process as in bench/run.py. Overhead per extra param
is the difference of the two medians over 199: what the dict walk, the per-param checks and
the per-param loop start cost, with the arithmetic the same on both sides.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import fastopt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: _common.py
from _common import OPTIMIZERS, header, make_arrays, make_numpy_like, measure, warm_allocator

COUNT = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", type=int, default=1000, help="elements per param")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per cell")
    args = parser.parse_args()
    warm_allocator()
    print(header())
    print(f"{'optimizer':9} {'dtype':7} {f'{COUNT} params us':>14} {'1 param us':>11} "
          f"{'per extra param us':>19}")
    for optimizer in OPTIMIZERS:
        for dtype in ("float32", "float64"):
            steps = {name: make_numpy_like(fastopt, optimizer, *make_arrays(shapes, dtype))
                     for name, shapes in (("many", [(args.elements,)] * COUNT),
                                          ("one", [(args.elements * COUNT,)]))}
            samples = measure(steps, args.budget, min_rounds=15)["samples"]
            many, one = (float(np.median(samples[name])) * 1e6 for name in ("many", "one"))
            print(f"{optimizer:9} {dtype:7} {many:14.2f} {one:11.2f} "
                  f"{(many - one) / (COUNT - 1):19.3f}", flush=True)


if __name__ == "__main__":
    main()
