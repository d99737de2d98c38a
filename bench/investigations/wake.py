"""Does waking the pool's sleeping worker pay? One update at 1 and at 2 threads, after a gap.

    python bench/investigations/wake.py [--rounds 30]

Between the updates of a training loop (the forward and backward passes) fastopt's workers
stop spinning and sleep; the next update that wants them wakes them. This times single
``update()`` calls of the book's TwoLayerNet (784x50, 50, 50x10, 10) with Adam in float64,
each after a busy gap of 0, 100 or 1000 us on the calling thread (longer than the workers'
50 us spin: they are asleep), alternating blocks of 100 calls at 1 and at 2 threads; then
single params of a few sizes around the size from which an update wakes them (4 times its
loop's split size, and at most 2**19 elements: 2**17 for Adam, 2**19 for SGD) after a 1000 us
gap. Prints the
10th percentile, median and 90th percentile of the calls (us), and 1 thread / 2 threads of
the medians (above 1: the second thread pays). Run it on an idle machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import fastopt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: _common.py
from _common import TWO_LAYER_NET, cpu_model


def busy(microseconds: float) -> None:
    """Keep the calling thread busy (not asleep) for ``microseconds``."""
    end = time.perf_counter_ns() + microseconds * 1000
    while time.perf_counter_ns() < end:
        pass


def timed(name: str, dtype: str, shapes: list[tuple[int, ...]], gap: float, rounds: int,
          calls: int) -> dict[int, np.ndarray]:
    """us per call of ``update()`` after each ``gap``, at 1 and 2 threads in alternation."""
    rng = np.random.default_rng(0)
    params = {f"p{i}": rng.standard_normal(shape).astype(dtype) for i, shape in
              enumerate(shapes)}
    grads = {key: (rng.standard_normal(value.shape) * 1e-3).astype(dtype)
             for key, value in params.items()}
    optimizer = getattr(fastopt, name)()
    for _ in range(20):
        optimizer.update(params, grads)
    samples: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):
        for threads in (1, 2):
            fastopt.set_num_threads(threads)
            for _ in range(calls):
                busy(gap)
                start = time.perf_counter_ns()
                optimizer.update(params, grads)
                samples[threads].append((time.perf_counter_ns() - start) / 1e3)
    return {threads: np.array(values) for threads, values in samples.items()}


def row(label: str, samples: dict[int, np.ndarray]) -> str:
    cells = []
    for threads in (1, 2):
        values = samples[threads]
        cells.append(f"{np.percentile(values, 10):8.1f} {np.median(values):8.1f} "
                     f"{np.percentile(values, 90):8.1f}")
    ratio = np.median(samples[1]) / np.median(samples[2])
    return f"{label:34s} {cells[0]}   {cells[1]}   {ratio:5.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    default = fastopt.get_num_threads()
    print(f"fastopt {fastopt.__version__} on {cpu_model()}; us per update() after a busy gap")
    print(f"{'':34s} {'1 thread: p10, median, p90':28s}   {'2 threads: p10, median, p90':28s}"
          f"   1t/2t")
    try:
        for gap in (0.0, 100.0, 1000.0):
            print(row(f"TwoLayerNet Adam float64, gap {gap:g}",
                      timed("Adam", "float64", TWO_LAYER_NET, gap, args.rounds, 100)))
        for name, dtype, sizes in (("Adam", "float64", (2**16, 2**17, 2**18)),
                                   ("SGD", "float32", (2**18, 2**19, 2**20, 2**21))):
            for size in sizes:
                print(row(f"{name} {dtype} {size:>8d} elements, gap 1000",
                          timed(name, dtype, [(size,)], 1000.0, max(args.rounds // 2, 5),
                                20)))
    finally:
        fastopt.set_num_threads(default)


if __name__ == "__main__":
    main()
