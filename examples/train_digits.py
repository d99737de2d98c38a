"""The book's optimizer comparison network, trained on scikit-learn's handwritten digits.

*Deep Learning from Scratch* ch06/optimizer_compare_mnist.py trains a 5-layer network
(100 units x 4 hidden layers, ReLU, He initialisation, softmax cross-entropy) with each
optimizer and compares their loss curves. This script does the same on the 8x8 digits that
ship with scikit-learn (1797 images, loaded offline), with the forward and backward passes
written in NumPy below. Every optimizer is trained twice from the same initial weights and on
the same mini-batches: once with fastopt and once with fastopt.reference (the book's NumPy
code). The script asserts that both give identical float64 losses at every step, then
reports the time spent in update() and the total training time of each.

    python examples/train_digits.py                    # writes examples/train_digits.png
    python examples/train_digits.py --quick            # 3 epochs, into $TMPDIR/fastopt-examples/

Needs the examples extra: pip install ".[examples]" (matplotlib, scikit-learn, tqdm).
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

import fastopt
from fastopt import reference

OPTIMIZERS = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam"]  # book defaults
HIDDEN = [100, 100, 100, 100]
BATCH_SIZE = 128


class Network:
    """Affine -> ReLU (x4) -> Affine -> softmax cross-entropy, float64, He initialisation."""

    def __init__(self, sizes: list[int], rng: np.random.Generator) -> None:
        self.params: dict[str, np.ndarray] = {}
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes), start=1):
            self.params[f"W{i}"] = rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)
            self.params[f"b{i}"] = np.zeros(n_out)
        self.layers = len(sizes) - 1

    def scores(self, x: np.ndarray) -> np.ndarray:
        h = x
        for i in range(1, self.layers):
            h = np.maximum(h @ self.params[f"W{i}"] + self.params[f"b{i}"], 0.0)
        return h @ self.params[f"W{self.layers}"] + self.params[f"b{self.layers}"]

    def loss_and_gradient(self, x: np.ndarray, t: np.ndarray) -> tuple[float, dict]:
        activations = [x]
        for i in range(1, self.layers):
            a = activations[-1] @ self.params[f"W{i}"] + self.params[f"b{i}"]
            activations.append(np.maximum(a, 0.0))
        scores = activations[-1] @ self.params[f"W{self.layers}"] + self.params[f"b{self.layers}"]
        shifted = scores - scores.max(axis=1, keepdims=True)
        y = np.exp(shifted)
        y /= y.sum(axis=1, keepdims=True)
        n = x.shape[0]
        loss = float(-np.mean(np.log(y[np.arange(n), t] + 1e-7)))
        delta = y
        delta[np.arange(n), t] -= 1.0
        delta /= n
        grads = {}
        for i in range(self.layers, 0, -1):
            grads[f"W{i}"] = activations[i - 1].T @ delta
            grads[f"b{i}"] = delta.sum(axis=0)
            if i > 1:
                delta = (delta @ self.params[f"W{i}"].T) * (activations[i - 1] > 0)
        return loss, grads

    def accuracy(self, x: np.ndarray, t: np.ndarray) -> float:
        return float(np.mean(self.scores(x).argmax(axis=1) == t))


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype(np.float64) / 16.0
    t = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    test = order[:360]
    train = order[360:]
    return x[train], t[train], x[test], t[test]


def train(module, name: str, data, epochs: int, seed: int, progress: bool) -> dict:
    """Train one network; return its losses, accuracies and timings."""
    from tqdm import tqdm

    x_train, t_train, x_test, t_test = data
    network = Network([x_train.shape[1], *HIDDEN, 10], np.random.default_rng(seed))
    optimizer = getattr(module, name)()
    batches = np.random.default_rng(seed + 1)
    per_epoch = len(x_train) // BATCH_SIZE
    losses, epoch_losses, accuracies, update_seconds = [], [], [], []
    started = time.perf_counter()
    label = "fastopt" if module is fastopt else "NumPy"
    bar = tqdm(range(epochs), desc=f"{name:9} {label:7}", disable=not progress, leave=False)
    for _ in bar:
        order = batches.permutation(len(x_train))
        for b in range(per_epoch):
            index = order[b * BATCH_SIZE:(b + 1) * BATCH_SIZE]
            loss, grads = network.loss_and_gradient(x_train[index], t_train[index])
            tick = time.perf_counter()
            optimizer.update(network.params, grads)
            update_seconds.append(time.perf_counter() - tick)
            losses.append(loss)
        epoch_losses.append(float(np.mean(losses[-per_epoch:])))
        accuracies.append(network.accuracy(x_test, t_test))
        bar.set_postfix(loss=f"{epoch_losses[-1]:.3f}", acc=f"{accuracies[-1]:.3f}")
    return {"losses": losses, "epoch_losses": epoch_losses, "accuracies": accuracies,
            "update_seconds": update_seconds, "total_seconds": time.perf_counter() - started}


def draw(results: dict, out: Path, epochs: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for name, runs in results.items():
        losses = np.array(runs["fastopt"]["losses"])
        window = max(1, len(losses) // 60)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        left.plot(np.arange(len(smooth)) + window, smooth, label=name)
        right.plot(np.arange(1, epochs + 1), runs["fastopt"]["accuracies"], "o-", markersize=3,
                   label=name)
    left.set_yscale("log")
    left.set_xlabel("iteration (mini-batch of 128)")
    left.set_ylabel("training loss (moving average)")
    right.set_xlabel("epoch")
    right.set_ylabel("test accuracy (360 held-out digits)")
    right.set_ylim(0, 1)
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("The book's 5-layer network on scikit-learn's 8x8 digits with book default "
                    "hyperparameters (fastopt; losses identical to the book's NumPy code)",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(out, dpi=90, metadata={"Software": None})
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parent
    parser.add_argument("--out", type=Path,
                        help="the PNG to write (default: examples/train_digits.png, or with "
                             "--quick the temporary directory's fastopt-examples/"
                             "train_digits.png, so the committed picture stays)")
    parser.add_argument("--quick", action="store_true", help="3 epochs instead of 30")
    parser.add_argument("--epochs", type=int, help="epochs per optimizer (overrides --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = (Path(tempfile.gettempdir()) / "fastopt-examples" if args.quick
                    else here) / "train_digits.png"
    epochs = args.epochs or (3 if args.quick else 30)

    data = load_data(args.seed)
    print(f"digits: {len(data[0])} training and {len(data[2])} test images of 8x8; network "
          f"{data[0].shape[1]}-{'-'.join(map(str, HIDDEN))}-10; {epochs} epochs of "
          f"{len(data[0]) // BATCH_SIZE} mini-batches of {BATCH_SIZE}")
    results = {}
    for name in OPTIMIZERS:
        runs = {label: train(module, name, data, epochs, args.seed, not args.no_progress)
                for label, module in (("fastopt", fastopt), ("numpy", reference))}
        assert runs["fastopt"]["losses"] == runs["numpy"]["losses"], (
            f"{name}: fastopt's losses differ from the book's NumPy code")
        results[name] = runs
        print(f"  {name:9} epoch losses " + " ".join(
            f"{loss:.3f}" for loss in runs["fastopt"]["epoch_losses"][-3:])
            + f"  test accuracy {runs['fastopt']['accuracies'][-1]:.3f}  (identical losses)")

    print(f"\n{'optimizer':9} {'update() fastopt':>17} {'update() NumPy':>15} {'speedup':>8} "
          f"{'training fastopt':>17} {'training NumPy':>15}")
    for name, runs in results.items():
        fast = float(np.median(runs["fastopt"]["update_seconds"])) * 1e6
        slow = float(np.median(runs["numpy"]["update_seconds"])) * 1e6
        print(f"{name:9} {fast:14.1f} us {slow:12.1f} us {slow / fast:7.1f}x "
              f"{runs['fastopt']['total_seconds']:15.2f} s "
              f"{runs['numpy']['total_seconds']:13.2f} s")
    print("(median time of one update() call; training time includes the NumPy forward and "
          "backward passes, which fastopt does not change)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(results, args.out, epochs)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
