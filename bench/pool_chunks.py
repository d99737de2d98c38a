"""How a large update shares out over fastopt's pool: for SGD, AdaGrad and Adam on one
1e7-element param of each dtype, the chunks the pool's worker ran over 20 updates at 2 threads
(of 16 per update), then the median time of 1 and of 2 threads, alternated update by update.

    python bench/pool_chunks.py            # the installed fastopt
    PYTHONPATH=/path/to/other/build python bench/pool_chunks.py   # another build, to compare

Run it on an idle machine, two builds one after the other, and compare.
"""
import statistics
import time

import numpy as np

import fastopt
from fastopt._simd import kernels

SIZE = 10**7


def main() -> None:
    for name in ("SGD", "AdaGrad", "Adam"):
        for dtype in (np.float32, np.float64):
            rng = np.random.default_rng(0)
            params = {"w": rng.random(SIZE).astype(dtype)}
            grads = {"w": (rng.random(SIZE) * 1e-3).astype(dtype)}
            optimizer = getattr(fastopt, name)()
            fastopt.set_num_threads(2)
            optimizer.update(params, grads)
            before = kernels.pool_worker_chunks()
            for _ in range(20):
                optimizer.update(params, grads)
            chunks = kernels.pool_worker_chunks() - before
            times: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(9):
                for threads in times:
                    fastopt.set_num_threads(threads)
                    optimizer.update(params, grads)
                    start = time.perf_counter()
                    optimizer.update(params, grads)
                    times[threads].append(time.perf_counter() - start)
            one, two = (statistics.median(times[t]) * 1e3 for t in (1, 2))
            print(f"{name:8s} {np.dtype(dtype).name}: worker ran {chunks:3d} of 320 chunks; "
                  f"1 thread {one:7.2f} ms, 2 threads {two:7.2f} ms, 1->2 {one / two:.2f}")


if __name__ == "__main__":
    main()
