"""The book's optimizer comparison network, trained on scikit-learn's handwritten digits.

*Deep Learning from Scratch* ch06/optimizer_compare_mnist.py trains a 5-layer network
(100 units x 4 hidden layers, ReLU, He initialisation, softmax cross-entropy) with each
optimizer and compares their loss curves. This script does the same on the 8x8 digits that
ship with scikit-learn (1797 images, loaded offline), with the forward and backward passes
written in NumPy below. Every optimizer is trained twice from the same initial weights and on
the same mini-batches: once with fastopt and once with fastopt.reference (the book's NumPy
code). The script asserts that both give identical float64 losses at every step, then
reports the time spent in update() and the total training time of each.

With --schedule it trains Momentum instead as the lecture notes advise: the learning rate
decays linearly to 1% of its start (fastopt.schedules.LinearDecay, constant after n), the
momentum coefficient grows from 0.5 to 0.9 (LinearRamp), and the grads are clipped to a global
norm of 1 (max_grad_norm); beside it, Momentum with the book's constant lr=0.01, momentum=0.9.
The picture shows both losses and the two hyperparameters over the steps.

With --schedule-free it trains ScheduleFreeAdamW at its defaults (lr=0.0025) with no schedule
against Adam at the book's defaults (constant lr=0.001), from the same initial weights and on
the same mini-batches, each again with fastopt and fastopt.reference. While training the
params hold y, where the grads are taken; after each epoch opt.eval(params) puts x, the
average, into them for the test set, and opt.train(params) puts y back before the next update.
Its lr warms up over the first epoch (11 updates): the first Adam-style steps move every weight
by about lr whatever its gradient (the second moment is one mini-batch's), and a warmup keeps
those steps small and, through the averaging weights (lr_max**2), light in x. The picture
shows the training losses (Schedule-Free's at y) and the test loss and accuracy after each
epoch, Schedule-Free's at x and, dashed, at y.

    python examples/train_digits.py                    # writes examples/train_digits.png
    python examples/train_digits.py --quick            # 3 epochs, into $TMPDIR/fastopt-examples/
    python examples/train_digits.py --schedule         # writes examples/train_digits_schedule.png
    python examples/train_digits.py --schedule-free    # examples/train_digits_schedulefree.png

Needs the examples extra: pip install ".[examples]" (matplotlib, scikit-learn, tqdm).
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import fastopt
from fastopt import reference
from fastopt.schedules import LinearDecay, LinearRamp

OPTIMIZERS = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam"]  # book defaults
HIDDEN = [100, 100, 100, 100]
BATCH_SIZE = 128
LR_START = 0.1          # --schedule: the notes' lr_0; lr_n = 0.01*lr_0 (LinearDecay's default)
MOMENTUM_RAMP = (0.5, 0.9)
MAX_GRAD_NORM = 1.0


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
        scores: np.ndarray = h @ self.params[f"W{self.layers}"] + self.params[f"b{self.layers}"]
        return scores

    def loss_and_gradient(self, x: np.ndarray, t: np.ndarray
                          ) -> tuple[float, dict[str, np.ndarray]]:
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

    def loss(self, x: np.ndarray, t: np.ndarray) -> float:
        """The cross-entropy loss_and_gradient returns, without the gradient."""
        scores = self.scores(x)
        shifted = scores - scores.max(axis=1, keepdims=True)
        y = np.exp(shifted)
        y /= y.sum(axis=1, keepdims=True)
        return float(-np.mean(np.log(y[np.arange(x.shape[0]), t] + 1e-7)))

    def accuracy(self, x: np.ndarray, t: np.ndarray) -> float:
        return float(np.mean(self.scores(x).argmax(axis=1) == t))


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    digits = load_digits()
    x = digits.data.astype(np.float64) / 16.0
    t = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    test = order[:360]
    train = order[360:]
    return x[train], t[train], x[test], t[test]


Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def train(module: ModuleType, name: str, data: Data, epochs: int, seed: int, progress: bool,
          options: dict[str, Any] | None = None, label: str | None = None) -> dict[str, Any]:
    """Train one network with ``getattr(module, name)(**options)``; return its losses, test
    losses and accuracies (after each epoch), timings, the network and the optimizer, and with
    ``options`` the hyperparameters of every step.

    A Schedule-Free optimizer (one with ``eval``) is evaluated at ``x``, its average:
    ``eval(params)`` before the test set, ``train(params)`` after it, so the next update sees
    ``y`` again; its test loss and accuracy at ``y``, where the grads are taken, are kept too
    (``test_losses_at_y``, ``accuracies_at_y``)."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    x_train, t_train, x_test, t_test = data
    network = Network([x_train.shape[1], *HIDDEN, 10], np.random.default_rng(seed))
    optimizer = getattr(module, name)(**(options or {}))
    batches = np.random.default_rng(seed + 1)
    per_epoch = len(x_train) // BATCH_SIZE
    losses, epoch_losses, accuracies, update_seconds, hyperparameters = [], [], [], [], []
    test_losses: list[float] = []
    at_y: dict[str, list[float]] = {"test_losses_at_y": [], "accuracies_at_y": []}
    schedule_free = hasattr(optimizer, "eval")
    started = time.perf_counter()
    label = label or name
    where = "fastopt" if module is fastopt else "NumPy"
    bar = tqdm(range(epochs), desc=f"{label:9} {where:7}", disable=not progress, leave=False)
    for _ in bar:
        order = batches.permutation(len(x_train))
        for b in range(per_epoch):
            index = order[b * BATCH_SIZE:(b + 1) * BATCH_SIZE]
            loss, grads = network.loss_and_gradient(x_train[index], t_train[index])
            if options:
                # The values this update uses: the schedules at the optimizer's iter.
                hyperparameters.append(optimizer.hyperparameter_values())
            tick = time.perf_counter()
            optimizer.update(network.params, grads)
            update_seconds.append(time.perf_counter() - tick)
            losses.append(loss)
        epoch_losses.append(float(np.mean(losses[-per_epoch:])))
        if schedule_free:
            at_y["test_losses_at_y"].append(network.loss(x_test, t_test))
            at_y["accuracies_at_y"].append(network.accuracy(x_test, t_test))
            optimizer.eval(network.params)     # the params hold x, the average
        test_losses.append(network.loss(x_test, t_test))
        accuracies.append(network.accuracy(x_test, t_test))
        if schedule_free:
            optimizer.train(network.params)    # y again, for the next update
        bar.set_postfix(loss=f"{epoch_losses[-1]:.3f}", acc=f"{accuracies[-1]:.3f}")
    return {"losses": losses, "epoch_losses": epoch_losses, "test_losses": test_losses,
            "accuracies": accuracies, **(at_y if schedule_free else {}),
            "update_seconds": update_seconds, "total_seconds": time.perf_counter() - started,
            "hyperparameters": hyperparameters, "network": network, "optimizer": optimizer}


def epoch_axis(axis: Any) -> None:
    """Label ``axis``'s x axis in epochs, ticked at whole epochs only (3 epochs would
    otherwise be ticked at 1.0, 1.25, 1.5, ...)."""
    from matplotlib.ticker import MaxNLocator
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def draw(results: dict[str, Any], out: Path, epochs: int) -> None:
    figure = digits_figure(results, epochs)
    figure.savefig(out, dpi=90, metadata={"Software": None})
    import matplotlib.pyplot as plt
    plt.close(figure)


def digits_figure(results: dict[str, Any], epochs: int) -> Any:
    """The picture: each optimizer's training loss and test accuracy."""
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
    epoch_axis(right)
    right.set_ylabel("test accuracy (360 held-out digits)")
    right.set_ylim(0, 1)
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("The book's 5-layer network on scikit-learn's 8x8 digits with book default "
                    "hyperparameters (fastopt; losses identical to the book's NumPy code)",
                    fontsize=10)
    figure.tight_layout()
    return figure


def scheduled_options(steps: int) -> dict[str, Any]:
    """--schedule: the notes' linear lr decay over the first 3/4 of the steps (then 1% of the
    start), the momentum ramp over the first 1/4, and clipping."""
    return {"lr": LinearDecay(LR_START, max(1, 3 * steps // 4)),
            "momentum": LinearRamp(*MOMENTUM_RAMP, max(1, steps // 4)),
            "max_grad_norm": MAX_GRAD_NORM}


def compare_schedules(data: Data, epochs: int, seed: int, progress: bool) -> dict[str, Any]:
    """Momentum with the notes' schedules and clipping, and with the book's constants; each
    trained by fastopt and by fastopt.reference, which must give identical losses."""
    steps = epochs * (len(data[0]) // BATCH_SIZE)
    scheduled = scheduled_options(steps)
    print(f"Momentum with lr={scheduled['lr']!r},\n"
          f"         momentum={scheduled['momentum']!r},\n"
          f"         max_grad_norm={scheduled['max_grad_norm']}; {steps} updates")
    results = {}
    for label, options in (("book constants", {"lr": 0.01, "momentum": 0.9}),
                           ("schedules", scheduled)):
        runs = {where: train(module, "Momentum", data, epochs, seed, progress, options, label)
                for where, module in (("fastopt", fastopt), ("numpy", reference))}
        assert runs["fastopt"]["losses"] == runs["numpy"]["losses"], (
            f"Momentum with {label}: fastopt's losses differ from fastopt.reference's")
        assert runs["fastopt"]["hyperparameters"] == runs["numpy"]["hyperparameters"]
        results[label] = runs
        print(f"  {label:14} epoch losses " + " ".join(
            f"{loss:.3f}" for loss in runs["fastopt"]["epoch_losses"][-3:])
            + f"  test accuracy {runs['fastopt']['accuracies'][-1]:.3f}  (identical losses)")
    used = results["schedules"]["fastopt"]["hyperparameters"]
    print(f"  schedules: lr {used[0]['lr']:.4g} -> {used[-1]['lr']:.4g}, "
          f"momentum {used[0]['momentum']:.4g} -> {used[-1]['momentum']:.4g}")
    return results


def draw_schedules(results: dict[str, Any], out: Path, epochs: int) -> None:
    figure = schedule_figure(results, epochs)
    figure.savefig(out, dpi=90, metadata={"Software": None})
    import matplotlib.pyplot as plt
    plt.close(figure)


def schedule_figure(results: dict[str, Any], epochs: int) -> Any:
    """--schedule's picture: loss, accuracy, and the schedules' values."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.6))
    for label, runs in results.items():
        losses = np.array(runs["fastopt"]["losses"])
        window = max(1, len(losses) // 60)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        left.plot(np.arange(len(smooth)) + window, smooth, label=f"Momentum, {label}")
        middle.plot(np.arange(1, epochs + 1), runs["fastopt"]["accuracies"], "o-",
                    markersize=3, label=f"Momentum, {label}")
    left.set_yscale("log")
    left.set_xlabel("iteration (mini-batch of 128)")
    left.set_ylabel("training loss (moving average)")
    epoch_axis(middle)
    middle.set_ylabel("test accuracy (360 held-out digits)")
    middle.set_ylim(0, 1)
    used = results["schedules"]["fastopt"]["hyperparameters"]
    steps = np.arange(len(used))
    lr_line, = right.plot(steps, [values["lr"] for values in used], color="tab:blue",
                          label="lr: LinearDecay (notes), 1% after n")
    right.set_xlabel("iteration (the optimizer's iter)")
    right.set_ylabel("lr", color="tab:blue")
    right.set_ylim(0, None)
    twin = right.twinx()
    momentum_line, = twin.plot(steps, [values["momentum"] for values in used],
                               color="tab:orange", label="momentum: LinearRamp 0.5 -> 0.9")
    twin.set_ylabel("momentum", color="tab:orange")
    twin.set_ylim(0, 1)
    right.legend(handles=[lr_line, momentum_line], fontsize=8, loc="lower left")
    right.set_title("the schedules' values at each update", fontsize=9)
    for axis in (left, middle, right):
        axis.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    middle.legend(fontsize=8)
    figure.suptitle(f"Momentum on scikit-learn's 8x8 digits: the notes' linear lr decay and "
                    f"momentum ramp with clipping (max_grad_norm={MAX_GRAD_NORM}) against the "
                    f"book's constants (fastopt; losses identical to fastopt.reference)",
                    fontsize=10)
    figure.tight_layout()
    return figure


def compare_schedule_free(data: Data, epochs: int, seed: int, progress: bool
                          ) -> dict[str, Any]:
    """--schedule-free: Adam at the book's defaults (constant lr) and ScheduleFreeAdamW at its
    defaults with no schedule but one epoch of warmup, from the same initial weights and on
    the same mini-batches; each trained by fastopt and by fastopt.reference, which must give
    identical losses (Schedule-Free's test losses at x and at y too)."""
    per_epoch = len(data[0]) // BATCH_SIZE
    runs_of = {"Adam": ("Adam", {}),
               "ScheduleFreeAdamW": ("ScheduleFreeAdamW", {"warmup_steps": per_epoch})}
    results = {}
    for label, (name, options) in runs_of.items():
        runs = {where: train(module, name, data, epochs, seed, progress, options, label)
                for where, module in (("fastopt", fastopt), ("numpy", reference))}
        for key in ("losses", "test_losses", "test_losses_at_y"):
            assert runs["fastopt"].get(key) == runs["numpy"].get(key), (
                f"{label}: fastopt's {key} differ from fastopt.reference's")
        results[label] = runs
        print(f"  {runs['fastopt']['optimizer']!r}  (identical losses)")
    print(f"\n{f'after {epochs} epochs':34} training loss  test loss  test accuracy")
    for label, runs in results.items():
        run = runs["fastopt"]
        if "test_losses_at_y" in run:
            print(f"  {label + ' at x (eval)':32} {'':>13} {run['test_losses'][-1]:10.4f} "
                  f"{run['accuracies'][-1]:14.4f}")
            print(f"  {label + ' at y (train)':32} {run['epoch_losses'][-1]:13.4f} "
                  f"{run['test_losses_at_y'][-1]:10.4f} {run['accuracies_at_y'][-1]:14.4f}")
        else:
            print(f"  {label:32} {run['epoch_losses'][-1]:13.4f} {run['test_losses'][-1]:10.4f} "
                  f"{run['accuracies'][-1]:14.4f}")
    print("(training loss: the mean mini-batch loss of the last epoch, taken where the grads "
          "are, Schedule-Free's y; test: the 360 held-out digits)")
    return results


def draw_schedule_free(results: dict[str, Any], out: Path, epochs: int) -> None:
    figure = schedule_free_figure(results, epochs)
    figure.savefig(out, dpi=90, metadata={"Software": None})
    import matplotlib.pyplot as plt
    plt.close(figure)


def schedule_free_figure(results: dict[str, Any], epochs: int) -> Any:
    """--schedule-free's picture: training loss, and test loss and accuracy after each epoch
    (Schedule-Free's at x, the average it evaluates, and thin dashed at y)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.6))
    colors = {"Adam": "tab:blue", "ScheduleFreeAdamW": "tab:red"}
    axis_epochs = np.arange(1, epochs + 1)
    for label, runs in results.items():
        run = runs["fastopt"]
        color = colors.get(label)
        losses = np.array(run["losses"])
        window = max(1, len(losses) // 60)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        schedule_free = "test_losses_at_y" in run
        left.plot(np.arange(len(smooth)) + window, smooth, color=color,
                  label=f"{label} (at y)" if schedule_free else label)
        name = f"{label} at x (eval)" if schedule_free else label
        middle.plot(axis_epochs, run["test_losses"], "o-", markersize=3, color=color, label=name)
        right.plot(axis_epochs, run["accuracies"], "o-", markersize=3, color=color, label=name)
        if schedule_free:
            middle.plot(axis_epochs, run["test_losses_at_y"], "--", linewidth=1, color=color,
                        alpha=0.6, label=f"{label} at y (train)")
            right.plot(axis_epochs, run["accuracies_at_y"], "--", linewidth=1, color=color,
                       alpha=0.6, label=f"{label} at y (train)")
    left.set_yscale("log")
    left.set_xlabel("iteration (mini-batch of 128)")
    left.set_ylabel("training loss (moving average)")
    middle.set_yscale("log")
    middle.set_ylabel("test loss (360 held-out digits)")
    right.set_ylabel("test accuracy (360 held-out digits)")
    low = min(min(runs["fastopt"]["accuracies"][epochs // 3:]) for runs in results.values())
    right.set_ylim(min(0.9, np.floor(low * 50) / 50), 1)
    for axis in (middle, right):
        epoch_axis(axis)
    for axis in (left, middle, right):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    free = results["ScheduleFreeAdamW"]["fastopt"]["optimizer"]
    figure.suptitle(f"scikit-learn's 8x8 digits, same initial weights and mini-batches: Adam at "
                    f"the book's defaults (lr={results['Adam']['fastopt']['optimizer'].lr}, "
                    f"constant) against ScheduleFreeAdamW (lr={free.lr}, no schedule, "
                    f"warmup_steps={free.warmup_steps:g})\nfastopt, losses identical to "
                    f"fastopt.reference; Schedule-Free evaluated at x, its average, after each "
                    f"epoch (eval(params), then train(params))",
                    fontsize=10)
    figure.tight_layout()
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parent
    parser.add_argument("--out", type=Path,
                        help="the PNG to write (default: examples/train_digits.png, or with "
                             "--quick the temporary directory's fastopt-examples/"
                             "train_digits.png, so the committed picture stays; with "
                             "--schedule train_digits_schedule.png, with --schedule-free "
                             "train_digits_schedulefree.png in the same place)")
    parser.add_argument("--quick", action="store_true", help="3 epochs instead of 30")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--schedule", action="store_true",
                      help="train Momentum with the lecture notes' linear lr decay, their "
                           "momentum ramp and clipping, against the book's constants")
    mode.add_argument("--schedule-free", action="store_true",
                      help="train ScheduleFreeAdamW (no schedule, one epoch of warmup), "
                           "evaluated at its average x, against Adam at the book's defaults")
    parser.add_argument("--epochs", type=int, help="epochs per optimizer (overrides --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = (Path(tempfile.gettempdir()) / "fastopt-examples" if args.quick
                    else here) / ("train_digits_schedule.png" if args.schedule
                                  else "train_digits_schedulefree.png" if args.schedule_free
                                  else "train_digits.png")
    epochs = args.epochs or (3 if args.quick else 30)

    data = load_data(args.seed)
    print(f"digits: {len(data[0])} training and {len(data[2])} test images of 8x8; network "
          f"{data[0].shape[1]}-{'-'.join(map(str, HIDDEN))}-10; {epochs} epochs of "
          f"{len(data[0]) // BATCH_SIZE} mini-batches of {BATCH_SIZE}")
    if args.schedule:
        results = compare_schedules(data, epochs, args.seed, not args.no_progress)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        draw_schedules(results, args.out, epochs)
        print(f"wrote {args.out}")
        return 0
    if args.schedule_free:
        results = compare_schedule_free(data, epochs, args.seed, not args.no_progress)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        draw_schedule_free(results, args.out, epochs)
        print(f"wrote {args.out}")
        return 0
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
