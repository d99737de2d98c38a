"""What one small update costs: two builds against each other, and where the time goes.

    python bench/investigations/callpath.py BEFORE AFTER [--rounds 15]

Times one ``update()`` of one param of one element (a dict ``{'w': array}``, hot: after the
first calls), where the call's fixed cost is everything, for Adam and SGD in float32 and
float64; and, in float64, the same update with ``lr`` assigned a new value before every
update (the checked path every time) and with ``lr`` a schedule. Two builds cannot share one
process, so each round runs one process per build, in alternating order; each process takes
the median of 15 samples of 20,000 calls (5,000 for the checked cells). The table gives the
median over the rounds, the range of the per-round medians, and AFTER/BEFORE. Then, in this
process and with the AFTER build, the parts of one hot call.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import timeit

import numpy as np
from builds import run

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # bench/
from _common import cpu_model  # imports no fastopt: the AFTER build is not on the path yet

WORKER = r"""
import json, timeit
import numpy as np
import fastopt
from fastopt import schedules

def cell(name, dtype, how):
    optimizer = getattr(fastopt, name)(
        lr=schedules.ExponentialDecay(0.01, 0.999) if how == "lr schedule" else 0.01)
    params = {"w": np.ones(1, dtype)}
    grads = {"w": np.full(1, 1e-3, dtype)}
    rates = [0.01, 0.02]
    def step():
        if how == "lr reassigned":
            optimizer.lr = rates[optimizer.iter % 2]
        optimizer.update(params, grads)
    for _ in range(3):
        step()
    number = 20000 if how == "hot" else 5000
    return float(np.median(timeit.repeat(step, number=number, repeat=15))) / number * 1e6

out = {"where": fastopt.__file__, "times": {}}
for name in ("SGD", "Adam"):
    for dtype in ("float32", "float64"):
        out["times"][f"{name} {dtype} hot"] = cell(name, dtype, "hot")
    for how in ("lr reassigned", "lr schedule"):
        out["times"][f"{name} float64 {how}"] = cell(name, "float64", how)
print(json.dumps(out))
"""


def median_us(function, number: int = 20000) -> float:
    return float(np.median(timeit.repeat(function, number=number, repeat=15))) / number * 1e6


def parts(name: str, dtype: str) -> tuple[float, float, float]:
    """One hot update, its plan's compiled call alone, and the kernel entry alone."""
    import fastopt
    from fastopt import _base
    optimizer = getattr(fastopt, name)()
    params = {"w": np.ones(1, dtype)}
    grads = {"w": np.full(1, 1e-3, dtype)}
    for _ in range(3):
        optimizer.update(params, grads)
    plan = optimizer._call_plan
    whole = median_us(lambda: optimizer.update(params, grads))
    alone = median_us(lambda: plan(optimizer, params, grads))
    step = optimizer._next_step(optimizer.hyperparameter_values())
    states = _base._pad(optimizer._rule_states())
    entry = median_us(lambda: _base._run_loop(step.loop, params, grads, *states, None, None,
                                              0.0, step.scalars))
    return whole, alone, entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="folder with the old build")
    parser.add_argument("after", help="folder with the new build")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.after))   # this process times the AFTER build
    print(f"{cpu_model()}, Python {platform.python_version()}, NumPy {np.__version__}; "
          f"{args.rounds} rounds, BEFORE={args.before}, AFTER={args.after}")
    times: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    for index in range(args.rounds):
        order = ("before", "after") if index % 2 == 0 else ("after", "before")
        for side in order:
            build = args.before if side == "before" else args.after
            for cell, value in run(build, WORKER).items():
                times[side].setdefault(cell, []).append(value)
    print(f"\n{'update() of 1 element':28} {'before us':>10} {'range':>11} {'after us':>9} "
          f"{'range':>11} {'after/before':>13}")
    for cell in times["before"]:
        before, after = (float(np.median(times[side][cell])) for side in ("before", "after"))
        spread = {side: f"{min(times[side][cell]):.2f}-{max(times[side][cell]):.2f}"
                  for side in times}
        print(f"{cell:28} {before:10.3f} {spread['before']:>11} {after:9.3f} "
              f"{spread['after']:>11} {after / before:13.2f}")

    import fastopt
    print(f"\nwhere one hot call goes ({os.path.dirname(fastopt.__file__)}; medians, us)")
    print(f"{'cell':16} {'update()':>9} {'plan':>7} {'frames':>7} {'kernel entry':>13}")
    for name in ("SGD", "Adam"):
        for dtype in ("float32", "float64"):
            whole, alone, entry = parts(name, dtype)
            print(f"{name + ' ' + dtype:16} {whole:9.3f} {alone:7.3f} {whole - alone:7.3f} "
                  f"{entry:13.3f}")
    print("update(): the whole call; plan: the CallPlan call alone (the lock, the identity "
          "checks, the step's scalars, the dict walk and checks of _run, the loop, the step "
          "count); frames: the rest, update() and _update_compiled in Python; kernel entry: "
          "the compiled entry the checked path calls, alone, for comparison.")


if __name__ == "__main__":
    main()
