"""fastopt in typed code: this file passes `mypy --strict` (checked in CI).

Run it to update a small network's params with each of the book's optimizers and print the
params' sums.
"""
from __future__ import annotations

import argparse

import numpy as np
import numpy.typing as npt

import fastopt


def train(steps: int) -> dict[str, npt.NDArray[np.float64]]:
    rng = np.random.default_rng(0)
    params: dict[str, npt.NDArray[np.float64]] = {
        "W1": rng.standard_normal((784, 50)), "b1": np.zeros(50),
    }
    optimizers: list[fastopt.optimizers.Optimizer] = [
        fastopt.SGD(lr=0.1), fastopt.Momentum(0.01, 0.9), fastopt.Nesterov(velocity_first=True),
        fastopt.AdaGrad(eps=1e-6), fastopt.RMSprop(decay_rate=0.9, eps_inside_sqrt=True),
        fastopt.Adam(lr=1e-3, paper_form=True),
    ]
    for optimizer in optimizers:
        for _ in range(steps):
            grads = {key: rng.standard_normal(value.shape) for key, value in params.items()}
            optimizer.update(params, grads)
    adam = fastopt.Adam()
    layers = [params["W1"], params["b1"]]
    adam.update(layers, [np.ones_like(layer) for layer in layers])
    step_count: int = adam.iter
    assert step_count == 1 and adam.m is not None
    return params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3,
                        help="updates per optimizer (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.steps < 0:
        parser.error(f"--steps must be >= 0; got {args.steps}")
    print({key: float(value.sum()) for key, value in train(args.steps).items()})


if __name__ == "__main__":
    main()
