"""How much does glibc's malloc state move the book's NumPy code? Fresh processes, timed.

    python bench/investigations/malloc.py

Times fastopt.reference.Adam (the book's code) on TwoLayerNet's float64 params in three fresh
processes each: as started, after freeing one 32 MB block first (what bench/run.py does, and
what a training loop's batches do), and after importing torch (when installed). glibc serves
blocks over its mmap threshold with fresh pages until the first such block is freed; then the
threshold rises and NumPy's temporaries reuse heap pages.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys

CHILD = r"""
import sys, timeit
import numpy as np
if sys.argv[1] == "warm":
    block = np.empty(4_000_000); del block
elif sys.argv[1] == "torch":
    import torch
from fastopt import reference
rng = np.random.default_rng(0)
shapes = [(784, 50), (50,), (50, 10), (10,)]
params = {f"p{i}": rng.standard_normal(shape) for i, shape in enumerate(shapes)}
grads = {key: rng.standard_normal(value.shape) * 1e-3 for key, value in params.items()}
optimizer = reference.Adam()
optimizer.update(params, grads)
times = sorted(timeit.repeat(lambda: optimizer.update(params, grads), number=20, repeat=15))
print(times[len(times) // 2] / 20 * 1e6)
"""


def main() -> None:
    modes = ["fresh", "warm"] + (["torch"] if importlib.util.find_spec("torch") else [])
    print("the book's Adam (fastopt.reference) on TwoLayerNet float64, median us per update,"
          " three fresh processes per state")
    results = {mode: [] for mode in modes}
    for _ in range(3):
        for mode in modes:   # interleaved, so drift hits every state alike
            output = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True,
                                    text=True, check=True).stdout
            results[mode].append(float(output))
    fresh = sorted(results["fresh"])[1]
    for mode, values in results.items():
        middle = sorted(values)[1]
        print(f"  {mode:6} {middle:7.1f} us   (runs: {', '.join(f'{v:.0f}' for v in values)})"
              f"   fresh / this = {fresh / middle:.2f}")


if __name__ == "__main__":
    main()
