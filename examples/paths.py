"""The book's optimizer comparison on f(x, y) = x**2/20 + y**2, with fastopt.

Reproduces *Deep Learning from Scratch* ch06/optimizer_compare_naive.py: 30 steps from
(-7, 2) with SGD(lr=0.95), Momentum(lr=0.1), AdaGrad(lr=1.5) and Adam(lr=0.3), plus
Nesterov(lr=0.1) and RMSprop(lr=0.25), drawn over the contours of f, one panel per optimizer.

Each path is computed four ways: by fastopt and by fastopt.reference (the book's NumPy code),
each with the book's float params (``params['x'] = -7.0``, NumPy's path inside fastopt) and
with 0-d float64 arrays (fastopt's compiled loops). The script asserts all four are the same
path, bit for bit.

    python examples/paths.py                  # writes examples/paths.png and examples/paths.json
    python examples/paths.py --quick          # coarser, into $TMPDIR/fastopt-examples/
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import fastopt
from fastopt import reference

START = (-7.0, 2.0)
STEPS = 30
# The book's learning rates; Nesterov's and RMSprop's are ours.
OPTIMIZERS = {"SGD": {"lr": 0.95}, "Momentum": {"lr": 0.1}, "Nesterov": {"lr": 0.1},
              "AdaGrad": {"lr": 1.5}, "RMSprop": {"lr": 0.25}, "Adam": {"lr": 0.3}}


def f(x, y):
    return x**2 / 20.0 + y**2


def df(x, y):
    return x / 10.0, 2.0 * y


def path(module, name: str, as_arrays: bool) -> list[tuple[float, float]]:
    """The points visited, starting point first, as the book's loop visits them."""
    optimizer = getattr(module, name)(**OPTIMIZERS[name])
    if as_arrays:
        params = {"x": np.array(START[0]), "y": np.array(START[1])}
    else:
        params = {"x": START[0], "y": START[1]}
    grads = {}
    points = []
    for _ in range(STEPS):
        points.append((float(params["x"]), float(params["y"])))
        gx, gy = df(params["x"], params["y"])
        if as_arrays:
            grads["x"], grads["y"] = np.asarray(gx), np.asarray(gy)
        else:
            grads["x"], grads["y"] = gx, gy
        optimizer.update(params, grads)
    points.append((float(params["x"]), float(params["y"])))
    return points


def all_paths() -> dict[str, list[tuple[float, float]]]:
    paths = {}
    for name in OPTIMIZERS:
        ours = path(fastopt, name, as_arrays=False)
        for module, as_arrays in ((fastopt, True), (reference, False), (reference, True)):
            theirs = path(module, name, as_arrays)
            # bit for bit: compare the float64 bit patterns, not within a tolerance
            assert (np.array(ours).view(np.uint64) == np.array(theirs).view(np.uint64)).all(), (
                f"{name}: fastopt's path differs from {module.__name__}'s "
                f"({'arrays' if as_arrays else 'floats'})")
        paths[name] = ours
    return paths


def draw(paths, out: Path, resolution: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.linspace(-10, 10, resolution)
    y = np.linspace(-5, 5, resolution)
    grid_x, grid_y = np.meshgrid(x, y)
    z = f(grid_x, grid_y)
    z[z > 7] = 0   # the book's trick: only the inner contours
    figure, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharex=True, sharey=True)
    for axis, (name, points) in zip(axes.ravel(), paths.items(), strict=True):
        xs, ys = zip(*points, strict=True)
        axis.contour(grid_x, grid_y, z, colors="grey", linewidths=0.7)
        axis.plot(xs, ys, "o-", color="red", markersize=3, linewidth=1)
        axis.plot(0, 0, "+", color="black", markersize=10)
        axis.set_title(f"{name} (lr={OPTIMIZERS[name]['lr']})")
        axis.set_xlim(-10, 10)
        axis.set_ylim(-5, 5)
        axis.set_xticks([-10, -5, 0, 5, 10])
    for axis in axes[-1]:
        axis.set_xlabel("x")
    for axis in axes[:, 0]:
        axis.set_ylabel("y")
    figure.suptitle(f"f(x, y) = x²/20 + y², {STEPS} steps from {START}: fastopt, identical to "
                    f"the book's NumPy code bit for bit")
    figure.tight_layout()
    figure.savefig(out, dpi=90, metadata={"Software": None})
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parent
    parser.add_argument("--out", type=Path,
                        help="the PNG to write; the paths go beside it as .json (default: "
                             "examples/paths.png, or with --quick the temporary directory's "
                             "fastopt-examples/paths.png, so the committed picture stays)")
    parser.add_argument("--quick", action="store_true",
                        help="a coarser contour grid: the same paths, drawn faster")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = (Path(tempfile.gettempdir()) / "fastopt-examples" if args.quick
                    else here) / "paths.png"

    paths = all_paths()
    print(f"{len(paths)} optimizers x 4 ways (fastopt/reference x floats/arrays): "
          f"identical paths, bit for bit")
    for name, points in paths.items():
        x, y = points[-1]
        print(f"  {name:9} after {STEPS} steps: x={x:+.6f} y={y:+.6f} f={f(x, y):.3e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(paths, indent=1) + "\n")
    draw(paths, args.out, resolution=120 if args.quick else 400)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
