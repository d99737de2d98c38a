"""Adafactor on 1 and 2 threads: one update of a 1e7-element vector (float32 and float64, the
benchmark's workload) and of a 3000x3000 float32 matrix (factored second moment), the median
time of 1 and of 2 threads alternated update by update in one process, and the chunks the
pool's worker ran over 10 updates at 2 threads. Then smaller params, which must not be slower
on 2 threads: 2**16 elements (its two passes with a square root split only while the
workers are awake: a job that small does not wake them), 2**15 - 1 (never split) and the book's
TwoLayerNet (784x50, 50, 50x10, 10). First, as a control, Adam on a 1e7-element float32 vector,
which the pool has always split: where it gains nothing on 2 threads, the other CPU was busy.

    python bench/investigations/adafactor_threads.py                    # the installed fastopt
    PYTHONPATH=/other/build python bench/investigations/adafactor_threads.py   # another build

Results in bench/investigations/results/adafactor_threads.txt (the CPU is named there).
"""
import sys
from pathlib import Path

import numpy as np

import fastopt
from fastopt._simd import kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: _common.py
from _common import cpu_model, one_and_two_threads

CASES = (("Adam vector 1e7", [(10**7,)], np.float32),   # the control
         ("vector 1e7", [(10**7,)], np.float32), ("vector 1e7", [(10**7,)], np.float64),
         ("matrix 3000x3000", [(3000, 3000)], np.float32),
         ("vector 2**16", [(2**16,)], np.float64), ("matrix 256x256", [(256, 256)], np.float32),
         ("vector 2**15-1", [(2**15 - 1,)], np.float64),
         ("TwoLayerNet", [(784, 50), (50,), (50, 10), (10,)], np.float64))


def main() -> None:
    print(f"{cpu_model()}, {kernels.compiled_simd()} loops, "
          f"{fastopt.get_num_threads()} threads by default")
    for label, shapes, dtype in CASES:
        rng = np.random.default_rng(0)
        params = {f"w{i}": rng.standard_normal(shape).astype(dtype)
                  for i, shape in enumerate(shapes)}
        grads = {key: rng.standard_normal(value.shape).astype(dtype)
                 for key, value in params.items()}
        optimizer = (fastopt.Adam() if label.startswith("Adam") else
                     fastopt.Adafactor(lr=1e-3, weight_decay=0.01))
        chunks, one, two = one_and_two_threads(optimizer, params, grads, 10, 3.0, 15)
        print(f"{label:17s} {np.dtype(dtype).name}: worker ran {chunks:4d} chunks in 10 "
              f"updates; 1 thread {one:8.3f} ms, 2 threads {two:8.3f} ms, 1->2 {one / two:.2f}")


if __name__ == "__main__":
    main()
