"""How a large update shares out over fastopt's pool: for SGD, AdaGrad and Adam on one
1e7-element param of each dtype, the chunks the pool's worker ran over 20 updates at 2 threads
(of 16 per update), then the median time of 1 and of 2 threads, alternated update by update.

    python bench/investigations/pool_chunks.py                    # the installed fastopt
    PYTHONPATH=/other/build python bench/investigations/pool_chunks.py   # another, to compare

Run it on an idle machine, two builds one after the other, and compare.
"""
import sys
from pathlib import Path

import numpy as np

import fastopt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: _common.py
from _common import one_and_two_threads

SIZE = 10**7


def main() -> None:
    for name in ("SGD", "AdaGrad", "Adam"):
        for dtype in (np.float32, np.float64):
            rng = np.random.default_rng(0)
            params = {"w": rng.random(SIZE).astype(dtype)}
            grads = {"w": (rng.random(SIZE) * 1e-3).astype(dtype)}
            optimizer = getattr(fastopt, name)()
            chunks, one, two = one_and_two_threads(optimizer, params, grads, 20, 0.0, 9)
            print(f"{name:8s} {np.dtype(dtype).name}: worker ran {chunks:3d} of 320 chunks; "
                  f"1 thread {one:7.2f} ms, 2 threads {two:7.2f} ms, 1->2 {one / two:.2f}")


if __name__ == "__main__":
    main()
