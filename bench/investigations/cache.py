"""Where a contender's arrays are when its sample starts: fastopt and torch's fused SGD, warm
and evicted, each in a process of its own.

    python bench/investigations/cache.py [--rounds 3] [--threads 2]

Why bench/run.py times each contender's samples in a row. It used to interleave fastopt, the
book's NumPy code and the bandwidth probe sample by sample in its process, while the peer
(torch) took its samples in a row in a process of its own: at 1e7 float32 elements the NumPy
code's arrays and temporaries pushed fastopt's params and grads out of the cache between
fastopt's samples, and torch's stayed. This times SGD (lr 0.01) on one float32 array of 1e7
elements, fastopt's ``update`` and ``torch.optim.SGD(fused=True)``'s ``step`` on the same
values, each in a fresh process at ``--threads``: "warm", 200 calls in a row; "evicted",
200 calls each after an untimed pass over a 200 MB array (as another contender's sample
would leave the caches). Processes alternate round by round; prints each one's median us per
update and the medians over the rounds, with fastopt's speedup in each condition. Run it on
an idle machine.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: _common.py
from _common import cpu_model

CONTENDERS = ("fastopt", "torch")
CONDITIONS = ("warm", "evicted")


def child(contender: str, condition: str, threads: int, calls: int = 200) -> None:
    """One process: time ``calls`` updates and print their median (us) as JSON."""
    rng = np.random.default_rng(0)
    param = rng.standard_normal(10_000_000).astype(np.float32)
    grad = (rng.standard_normal(param.size) * 1e-3).astype(np.float32)
    if contender == "fastopt":
        import fastopt
        fastopt.set_num_threads(threads)
        optimizer = fastopt.SGD(lr=0.01)
        params, grads = {"w": param}, {"w": grad}

        def step() -> None:
            optimizer.update(params, grads)
    else:
        import torch
        torch.set_num_threads(threads)
        tensor = torch.from_numpy(param)
        tensor.grad = torch.from_numpy(grad)
        step = torch.optim.SGD([tensor], lr=0.01, fused=True).step
    other = np.ones(50_000_000, np.float32) if condition == "evicted" else None
    for _ in range(20):
        step()
    samples = []
    for _ in range(calls):
        if other is not None:
            other += 1.0                          # untimed: another 200 MB through the caches
        start = time.perf_counter_ns()
        step()
        samples.append((time.perf_counter_ns() - start) / 1e3)
    print(json.dumps({"median_us": float(np.median(samples))}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.threads)
        return
    print(f"{cpu_model()}; SGD float32, 1e7 elements, {args.threads} threads; median us per "
          f"update, one process per cell, {args.rounds} rounds")
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for condition in CONDITIONS:
            for contender in CONTENDERS:
                out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                                      "--child", contender, condition], check=True,
                                     capture_output=True, text=True).stdout
                results.setdefault((contender, condition), []).append(
                    json.loads(out)["median_us"])
    for condition in CONDITIONS:
        medians = {c: float(np.median(results[c, condition])) for c in CONTENDERS}
        rounds = ", ".join(f"{c} " + " ".join(f"{v:.0f}" for v in results[c, condition])
                           for c in CONTENDERS)
        print(f"{condition:8s} fastopt {medians['fastopt']:8.0f}  torch {medians['torch']:8.0f}"
              f"  torch/fastopt {medians['torch'] / medians['fastopt']:.2f}   ({rounds})")


if __name__ == "__main__":
    main()
