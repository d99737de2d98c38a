"""What does each SIMD level buy? fastopt's loops at every level this machine runs, side by side.

    python bench/investigations/simd.py [--workload two_layer_net ...] [--budget 0.4]
        [--json out.json]

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
import sys
from pathlib import Path

import numpy as np

import fastopt
from fastopt._simd import _module_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: _common.py
from _common import OPTIMIZERS, all_workloads, cpu_model, make_arrays, measure, warm_allocator

DEFAULT_WORKLOADS = ["1e4", "two_layer_net", "five_layer_net", "1e6", "1e7"]


def make_step(module, optimizer, params, grads):
    """One step of ``optimizer`` with the book's defaults, run by ``module``'s compiled entry:
    the entry, scalars and state the fastopt class hands its own level's kernel."""
    instance = getattr(fastopt, optimizer)()
    step_of = instance._next_step(instance.hyperparameter_values())
    own = [value.copy() for value in params.values()]
    grad_list = list(grads.values())
    states = [[np.zeros_like(value) for value in own] for _ in instance.state_names]
    states += [None] * (3 - len(states))

    def step():
        if not module.run(step_of.loop, own, grad_list, *states, None, None, 0.0,
                          step_of.scalars):
            raise RuntimeError(f"{module.__name__}'s loop {step_of.loop} declined the arrays")
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", nargs="+", default=DEFAULT_WORKLOADS,
                        choices=[w.name for w in all_workloads()])
    parser.add_argument("--optimizer", nargs="+", default=OPTIMIZERS, choices=OPTIMIZERS)
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"],
                        choices=["float32", "float64"])
    parser.add_argument("--budget", type=float, default=0.4, help="seconds per cell")
    parser.add_argument("--json", help="also write the medians to this file")
    args = parser.parse_args()

    levels = fastopt.simd_levels()
    modules = {level: importlib.import_module(_module_name(level)) for level in levels}
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
                params, grads = make_arrays(workload.shapes, dtype)
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
