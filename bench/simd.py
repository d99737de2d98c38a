"""What does each SIMD level buy? fastopt's loops at every level this machine runs, side by side.

    python bench/simd.py [--workload two_layer_net ...] [--budget 0.4] [--json out.json]

Every built level this CPU runs (fastopt.simd_levels()) is imported in this one process and
its compiled entry is called directly, on its own copy of the same params, grads and state,
one optimizer step per call, with the book's hyperparameters. Interleaved rounds as in
bench/run.py; prints median us per update and each level's speedup over the baseline. The
levels give identical bits (tests/test_simd.py), so only time differs.
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform

import numpy as np
from run import all_workloads, cpu_model, measure, warm_allocator

import fastopt

# The compiled entry and the arguments after (params, grads) of one optimizer step with the
# book's defaults: how many state lists, then the scalars (Adam's lr_t at its first step).
STEPS = {
    "SGD": ("sgd_step", 0, (0.01,)),
    "Momentum": ("momentum_step", 1, (0.01, 0.9)),
    "Nesterov": ("nesterov_step", 1, (0.01, 0.9, False)),
    "AdaGrad": ("adagrad_step", 1, (0.01, 1e-7, False)),
    "RMSprop": ("rmsprop_step", 1, (0.01, 0.99, 1e-7, False)),
    "Adam": ("adam_step", 2, (0.001 * (1 - 0.999) ** 0.5 / (1 - 0.9), 0.9, 0.999, 1e-7, False)),
}
DEFAULT_WORKLOADS = ["1e4", "two_layer_net", "five_layer_net", "1e6", "1e7"]


def make_step(module, optimizer, params, grads):
    entry, states, scalars = STEPS[optimizer]
    kernel = getattr(module, entry)
    own = [value.copy() for value in params]
    state = [[np.zeros_like(value) for value in params] for _ in range(states)]

    def step():
        if not kernel(own, grads, *state, *scalars):
            raise RuntimeError(f"{module.__name__}.{entry} declined the arrays")
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", nargs="+", default=DEFAULT_WORKLOADS,
                        choices=[w.name for w in all_workloads()])
    parser.add_argument("--optimizer", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"],
                        choices=["float32", "float64"])
    parser.add_argument("--budget", type=float, default=0.4, help="seconds per cell")
    parser.add_argument("--json", help="also write the medians to this file")
    args = parser.parse_args()

    levels = fastopt.simd_levels()
    modules = {level: importlib.import_module(
        "fastopt._kernels" if level == "baseline" else f"fastopt._kernels_{level}")
        for level in levels}
    warm_allocator()
    print(f"fastopt {fastopt.__version__}, one thread ({fastopt.get_num_threads()} set), "
          f"{cpu_model()}, Python {platform.python_version()}, NumPy {np.__version__}")
    print(f"levels this machine runs: {', '.join(levels)} (import chose {fastopt.simd_level()})")
    print(f"{'optimizer':9} {'dtype':7} {'workload':15} "
          + " ".join(f"{level + ' us':>11}" for level in levels)
          + "".join(f" {level + ' x':>9}" for level in levels[1:]))
    workloads = {w.name: w for w in all_workloads()}
    rows = []
    for name in args.workload:
        workload = workloads[name]
        for optimizer in args.optimizer:
            for dtype in args.dtype:
                rng = np.random.default_rng(0)
                params = [rng.standard_normal(shape).astype(dtype) for shape in workload.shapes]
                grads = [(rng.standard_normal(value.shape) * 1e-3).astype(dtype)
                         for value in params]
                steps = {level: make_step(module, optimizer, params, grads)
                         for level, module in modules.items()}
                samples = measure(steps, args.budget, min_rounds=15)["samples"]
                medians = {level: float(np.median(s)) * 1e6 for level, s in samples.items()}
                rows.append({"optimizer": optimizer, "dtype": dtype, "workload": name,
                             "median_us": medians})
                print(f"{optimizer:9} {dtype:7} {name:15} "
                      + " ".join(f"{medians[level]:11.2f}" for level in levels)
                      + "".join(f" {medians['baseline'] / medians[level]:9.2f}"
                                for level in levels[1:]), flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"cpu": cpu_model(), "levels": list(levels), "rows": rows}, file,
                      indent=1)


if __name__ == "__main__":
    main()
