"""Where do threads start to pay? fastopt on 1 thread against N threads, by array size.

    python bench/investigations/threads.py [--threads 2] [--budget 0.5]

Interleaved rounds in one process (set_num_threads switches between the two contenders);
prints median µs per update and the speedup of N threads. The size from which N threads win
for streaming loops (SGD) and for sqrt/division-bound loops (Adam) sets STREAMING_MIN and
DIVIDING_MIN in fastopt/_kernels.pyx; run a build with both set low to see the whole curve.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np

import fastopt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: _common.py
from _common import alternating


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per cell")
    args = parser.parse_args()
    default = fastopt.get_num_threads()
    print(f"fastopt {fastopt.__version__}: 1 thread vs {args.threads} threads, medians of "
          f"interleaved single calls")
    print(f"{'optimizer':9} {'dtype':7} {'elements':>9} {'1 thread us':>12} "
          f"{args.threads} threads us  speedup")
    try:
        for name, dtype in (("SGD", np.float64), ("SGD", np.float32), ("Adam", np.float32),
                            ("Adam", np.float64)):
            for exponent in range(12, 24, 2):
                size = 2**exponent
                rng = np.random.default_rng(0)
                params = {"w": rng.standard_normal(size).astype(dtype)}
                grads = {"w": (rng.standard_normal(size) * 1e-3).astype(dtype)}
                optimizer = getattr(fastopt, name)()
                optimizer.update(params, grads)
                step = partial(optimizer.update, params, grads)
                median = alternating({1: step, args.threads: step}, args.budget,
                                     before=fastopt.set_num_threads)
                one, many = (median[count] * 1e6 for count in (1, args.threads))
                print(f"{name:9} {np.dtype(dtype).name:7} {size:9} {one:12.2f} {many:14.2f} "
                      f"{one / many:8.2f}")
    finally:
        fastopt.set_num_threads(default)


if __name__ == "__main__":
    main()
