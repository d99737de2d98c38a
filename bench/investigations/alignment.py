"""State placed at its param's address mod 64 against NumPy's placement, in one process.

    python bench/investigations/alignment.py [--budget 1.0]

fastopt allocates each state array at the same address modulo 64 as its param, and its loops
peel a head up to the param's first 64-byte boundary, so the vector loops store whole cache
lines of the param and the state. The other contender is the same build with the state from
``np.zeros`` (wherever NumPy's allocator puts it; the param is where NumPy put it in both).
Interleaved rounds (bench/run.py's method); prints medians and the ratio.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import fastopt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: _common.py
from _common import all_workloads, cpu_model, make_arrays, measure, warm_allocator

OPTIMIZERS = ["SGD", "Momentum", "Adam", "AdamW", "Lion"]


def contender(optimizer, params, grads, numpy_placement):
    instance = getattr(fastopt, optimizer)()
    if numpy_placement:
        instance._zeros = lambda param: np.zeros(param.shape, param.dtype)
    own = {key: value.copy() for key, value in params.items()}

    def step():
        instance.update(own, grads)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per cell")
    parser.add_argument("--workload", nargs="+", default=["two_layer_net", "five_layer_net",
                                                          "1e6"])
    args = parser.parse_args()
    warm_allocator()
    print(f"fastopt {fastopt.__version__}; CPU {cpu_model()}, loops {fastopt.simd_level()}, "
          f"{fastopt.get_num_threads()} thread; median µs per update, interleaved rounds")
    print(f"{'workload':15} {'optimizer':9} {'dtype':7} {'aligned':>10} {'numpy':>10} "
          f"{'speedup':>8}")
    workloads = {w.name: w for w in all_workloads()}
    for name in args.workload:
        for optimizer in OPTIMIZERS:
            for dtype in ("float32", "float64"):
                params, grads = make_arrays(workloads[name].shapes, dtype)
                steps = {"aligned": contender(optimizer, params, grads, False),
                         "numpy": contender(optimizer, params, grads, True)}
                samples = measure(steps, args.budget, min_rounds=7)["samples"]
                median = {key: float(np.median(value)) * 1e6 for key, value in samples.items()}
                print(f"{name:15} {optimizer:9} {dtype:7} {median['aligned']:10.2f} "
                      f"{median['numpy']:10.2f} {median['numpy'] / median['aligned']:8.2f}")


if __name__ == "__main__":
    main()
