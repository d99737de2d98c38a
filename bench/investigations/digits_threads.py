"""fastopt on 1 thread against N threads inside a training loop, next to NumPy's BLAS threads.

    python bench/investigations/digits_threads.py [--threads 2] [--epochs 20] [--hidden 100]
        [--optimizers ...]

Trains the digits network of examples/train_digits.py (its forward and backward passes are
matrix products, so OpenBLAS's threads run, and then spin, between the updates) and times
every update() call. The thread count alternates 1, N, N, 1, ... from one update to the next
in one process, so both contenders see the same machine; results do not depend on it, bit
for bit. Prints the median µs of an update on each, their ratio, and the training time per
epoch. ``--hidden 1000`` widens the example's four hidden layers from 100 units (params of at
most 10,000 elements, below the size from which fastopt uses threads) to 1000 (1e6). Leave
OPENBLAS_NUM_THREADS unset (OpenBLAS then runs a thread per CPU) or set it, to compare.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

import fastopt


def load_example():
    path = Path(__file__).resolve().parents[2] / "examples" / "train_digits.py"
    spec = importlib.util.spec_from_file_location("train_digits", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_digits"] = module
    spec.loader.exec_module(module)
    return module


def blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_info  # type: ignore[import-untyped]
    except ImportError:
        return "unknown (no threadpoolctl)"
    pools = [f"{info['internal_api']} {info['num_threads']}" for info in threadpool_info()
             if info["user_api"] == "blas"]
    return ", ".join(pools) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=100, help="units per hidden layer")
    parser.add_argument("--optimizers", nargs="+", default=["Adam", "AdaGrad", "RMSprop", "SGD"])
    args = parser.parse_args()
    example = load_example()
    x_train, t_train, _, _ = example.load_data(0)
    sizes = [x_train.shape[1], *[args.hidden] * len(example.HIDDEN), 10]
    default = fastopt.get_num_threads()
    print(f"fastopt {fastopt.__version__} ({fastopt.simd_level()}), the digits network "
          f"{'-'.join(map(str, sizes))}, batch {example.BATCH_SIZE}, {args.epochs} epochs; "
          f"BLAS threads: {blas_threads()} (OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}); CPUs available: "
          f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}")
    print("medians of single update() calls, 1 and N fastopt threads alternating")
    print(f"{'optimizer':9} {'1 thread us':>12} {args.threads} threads us {'ratio N/1':>10} "
          f"{'epoch ms':>9}")
    order = [1, args.threads, args.threads, 1]
    try:
        for name in args.optimizers:
            network = example.Network(sizes, np.random.default_rng(0))
            optimizer = getattr(fastopt, name)()
            batches = np.random.default_rng(1)
            samples: dict[int, list[float]] = {1: [], args.threads: []}
            per_epoch = len(x_train) // example.BATCH_SIZE
            step = 0
            started = time.perf_counter()
            for _ in range(args.epochs):
                permutation = batches.permutation(len(x_train))
                for b in range(per_epoch):
                    index = permutation[b * example.BATCH_SIZE:(b + 1) * example.BATCH_SIZE]
                    _, grads = network.loss_and_gradient(x_train[index], t_train[index])
                    count = order[step % len(order)]
                    fastopt.set_num_threads(count)
                    tick = time.perf_counter()
                    optimizer.update(network.params, grads)
                    samples[count].append(time.perf_counter() - tick)
                    step += 1
            epoch = (time.perf_counter() - started) / args.epochs
            one, many = (float(np.median(samples[c])) * 1e6 for c in (1, args.threads))
            print(f"{name:9} {one:12.1f} {many:14.1f} {many / one:10.2f} {epoch * 1e3:9.1f}")
    finally:
        fastopt.set_num_threads(default)


if __name__ == "__main__":
    main()
