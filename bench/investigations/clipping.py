"""Gradient clipping + Adam: fastopt's fused max_grad_norm against NumPy and torch.optim.

    python bench/investigations/clipping.py [--budget 1.0]
        [--workload two_layer_net five_layer_net 1e7]

Per cell, in interleaved rounds in one process (bench/run.py's method), one training step's
optimizer work with the global norm clipped to half the grads' norm (so clipping is active):

- fastopt: ``Adam(max_grad_norm=c).update(params, grads)``: one compiled reduction pass, then
  the update with the clip factor applied on the fly; the grads are not written.
- numpy: the book's Adam (fastopt.reference) after NumPy's norm-then-scale:
  ``norm = sqrt(sum(np.sum(g*g)))``, scaled copies ``g*coef``, then the update.
- torch: ``torch.nn.utils.clip_grad_norm_`` then torch.optim.Adam (fused where torch has it).

Prints medians (µs per step) and fastopt's speedups, with the CPU they were measured on.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

import fastopt
from fastopt import reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: _common.py
from _common import all_workloads, cpu_model, make_arrays, measure, warm_allocator


def numpy_step(params, grads, max_norm):
    optimizer = reference.Adam()
    own = {key: value.copy() for key, value in params.items()}

    def step():
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
        coef = max_norm / (norm + 1e-6)
        clipped = {key: g * coef for key, g in grads.items()} if coef < 1 else grads
        optimizer.update(own, clipped)
    return step


def fastopt_step(params, grads, max_norm):
    optimizer = fastopt.Adam(max_grad_norm=max_norm)
    own = {key: value.copy() for key, value in params.items()}

    def step():
        optimizer.update(own, grads)
    return step


def torch_step(torch, params, grads, max_norm):
    tensors = [torch.from_numpy(value.copy()) for value in params.values()]
    for tensor, grad in zip(tensors, grads.values(), strict=True):
        tensor.grad = torch.from_numpy(grad.copy())
    try:
        optimizer = torch.optim.Adam(tensors, lr=0.001, eps=1e-7, fused=True)
        optimizer.step()
        kind = "fused"
    except (RuntimeError, TypeError, ValueError):
        optimizer = torch.optim.Adam(tensors, lr=0.001, eps=1e-7)
        kind = "default"

    def step():
        torch.nn.utils.clip_grad_norm_(tensors, max_norm)
        optimizer.step()
    return step, kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per cell")
    parser.add_argument("--workload", nargs="+",
                        default=["two_layer_net", "five_layer_net", "1e7"])
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    warm_allocator()
    print(f"fastopt {fastopt.__version__} clipping + Adam; CPU {cpu_model()}, loops "
          f"{fastopt.simd_level()}, fastopt threads {fastopt.get_num_threads()}"
          + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else ""))
    print("median µs per step (norm, clip and Adam update); interleaved rounds, "
          f"{args.budget} s per cell")
    print(f"{'workload':15} {'dtype':7} {'fastopt':>10} {'numpy':>10} {'torch':>10} "
          f"{'x numpy':>8} {'x torch':>8}")
    workloads = {w.name: w for w in all_workloads()}
    for name in args.workload:
        for dtype in args.dtype:
            params, grads = make_arrays(workloads[name].shapes, dtype)
            max_norm = 0.5 * fastopt.clipping.global_norm(list(grads.values()))
            steps = {"fastopt": fastopt_step(params, grads, max_norm),
                     "numpy": numpy_step(params, grads, max_norm)}
            kind = None
            if torch is not None:
                steps["torch"], kind = torch_step(torch, params, grads, max_norm)
            samples = measure(steps, args.budget, min_rounds=7)["samples"]
            median = {key: float(np.median(value)) * 1e6 for key, value in samples.items()}
            torch_text = f"{median['torch']:10.1f}" if "torch" in median else f"{'-':>10}"
            ratio = (f"{median['torch'] / median['fastopt']:8.2f}" if "torch" in median
                     else f"{'-':>8}")
            print(f"{name:15} {dtype:7} {median['fastopt']:10.1f} {median['numpy']:10.1f} "
                  f"{torch_text} {median['numpy'] / median['fastopt']:8.2f} {ratio}"
                  + (f"  (torch Adam {kind})" if kind else ""))


if __name__ == "__main__":
    main()
