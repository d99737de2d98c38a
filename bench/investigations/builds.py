"""Two builds of fastopt against each other: before and after a performance change.

    python bench/investigations/builds.py BEFORE AFTER [--rounds 3]

BEFORE and AFTER are folders that hold a built fastopt package (for example two checkouts
built in place with ``python setup.py build_ext --inplace``). Two builds cannot share one
process, so each round runs one process per build, alternating, and each process times
``update()`` on the book's two networks and a 1e6 array for a few optimizers and both dtypes
(medians of 9 samples); the table gives the median over the rounds and AFTER/BEFORE.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

WORKER = r"""
import json, time
import numpy as np
import fastopt
work = {"two_layer_net": [(784, 50), (50,), (50, 10), (10,)],
        "five_layer_net": [(784, 100), (100,), (100, 100), (100,), (100, 100), (100,),
                           (100, 100), (100,), (100, 10), (10,)],
        "1e6": [(10**6,)]}
out = {"where": fastopt.__file__, "cpu": "", "times": {}}
for workload, shapes in work.items():
    for name in ["SGD", "Momentum", "Adam", "AdamW", "Lion"]:
        for dtype in (np.float32, np.float64):
            rng = np.random.default_rng(0)
            params = {f"p{i}": rng.standard_normal(s).astype(dtype) for i, s in enumerate(shapes)}
            grads = {k: rng.standard_normal(v.shape).astype(dtype) * 1e-3
                     for k, v in params.items()}
            optimizer = getattr(fastopt, name)()
            optimizer.update(params, grads)
            calls = 20 if workload == "1e6" else 200
            samples = []
            for _ in range(9):
                start = time.perf_counter()
                for _ in range(calls):
                    optimizer.update(params, grads)
                samples.append((time.perf_counter() - start) / calls * 1e6)
            out["times"][f"{workload} {name} {dtype.__name__}"] = float(np.median(samples))
print(json.dumps(out))
"""


def run(build: str, worker: str = WORKER) -> dict:
    """Run ``worker`` (code that prints a JSON object with "where", fastopt's file, and
    "times") in a fresh process that imports fastopt from ``build``; return its times."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(build)}
    completed = subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True,
                               env=env, cwd=tempfile.gettempdir(), check=True)
    result = json.loads(completed.stdout)
    if not result["where"].startswith(os.path.abspath(build)):
        raise SystemExit(f"{build} did not provide fastopt (got {result['where']})")
    return result["times"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    before, after = [], []
    for _ in range(args.rounds):
        before.append(run(args.before))
        after.append(run(args.after))
    print(f"median µs per update over {args.rounds} alternating rounds; "
          f"BEFORE={args.before} AFTER={args.after}")
    print(f"{'cell':32} {'before':>10} {'after':>10} {'after/before':>13}")
    for cell in before[0]:
        b = float(np.median([r[cell] for r in before]))
        a = float(np.median([r[cell] for r in after]))
        print(f"{cell:32} {b:10.2f} {a:10.2f} {a / b:13.2f}")


if __name__ == "__main__":
    main()
