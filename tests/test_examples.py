"""The examples in --quick mode: their own assertions hold and they write what they promise."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt

from registry import BOOK_NAMES

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(script, *args, timeout=600, env=None):
    # One OpenBLAS thread unless the caller's environment says otherwise: the examples' small
    # matrix products gain nothing from a second thread, whose spin-waiting costs several times
    # the CPU time of the training wherever the cores are busy (fastopt's own pool is not
    # OpenBLAS's and keeps its setting).
    env = {**os.environ, **(env or {})}
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    completed = subprocess.run([sys.executable, str(EXAMPLES / script), *args],
                               capture_output=True, text=True, timeout=timeout, env=env)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


@pytest.mark.parametrize("script", ["paths.py", "train_digits.py"])
def test_help(script):
    assert "--quick" in run(script, "--help") and "--out" in run(script, "--help")


def test_typed_usage_takes_help_and_steps():
    usage = run("typed_usage.py", "--help")
    assert usage.startswith("usage: typed_usage.py") and "--steps" in usage
    assert "W1" not in usage   # --help trains nothing
    assert run("typed_usage.py", "--steps", "1").startswith("{'W1': ")


def load_module(path):
    """The script at ``path`` as a module (its main() not run)."""
    name = f"_script_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # (dataclasses look their module up)
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


@pytest.mark.parametrize("epochs", [2, 3, 5, 30])
def test_the_digits_pictures_tick_whole_epochs(epochs):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    digits = load_module(EXAMPLES / "train_digits.py")
    run = {"fastopt": {"losses": list(np.linspace(2, 0.1, 11 * epochs)),
                       "accuracies": list(np.linspace(0.3, 0.9, epochs)),
                       "hyperparameters": [{"lr": 0.1, "momentum": 0.9}] * (11 * epochs)}}
    adam = {"fastopt": {**run["fastopt"], "test_losses": list(np.linspace(2, 0.2, epochs)),
                        "optimizer": fastopt.Adam()}}
    free = {"fastopt": {**adam["fastopt"], "test_losses_at_y": adam["fastopt"]["test_losses"],
                        "accuracies_at_y": run["fastopt"]["accuracies"],
                        "optimizer": fastopt.ScheduleFreeAdamW(warmup_steps=11)}}
    for figure, axis in ((digits.digits_figure({"SGD": run}, epochs), 1),
                         (digits.schedule_figure({"constants": run, "schedules": run}, epochs),
                          1),
                         (digits.schedule_free_figure({"Adam": adam, "ScheduleFreeAdamW": free},
                                                      epochs), 1),
                         (digits.schedule_free_figure({"Adam": adam, "ScheduleFreeAdamW": free},
                                                      epochs), 2)):
        figure.canvas.draw()
        low, high = figure.axes[axis].get_xlim()
        ticks = [tick for tick in figure.axes[axis].get_xticks() if low <= tick <= high]
        plt.close(figure)
        assert figure.axes[axis].get_xlabel() == "epoch"
        assert len(ticks) >= 2 and all(tick == int(tick) for tick in ticks), ticks


def test_the_speedup_pictures_legend_covers_no_axis_text():
    # bench/run.py --plot (bench/results/speedup.png), drawn from the committed run's cells.
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    bench = EXAMPLES.parent / "bench"
    run = json.loads((bench / "results" / "full.json").read_text())
    figure = load_module(bench / "run.py").speedup_figure(
        run["cells"], {"cpu": "a CPU", "date_utc": "2026-01-01 00:00"})
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legend = figure.legends[0].get_window_extent(renderer)
    plt.close(figure)
    assert len(figure.axes) == 2
    for axis in figure.axes:
        assert axis.get_xlabel() == "elements in the parameter array"
        # the panel with its tick labels and axis titles
        assert not legend.overlaps(axis.get_tightbbox(renderer)), axis.get_title()
    assert legend.y0 >= 0 and legend.x0 >= 0 and legend.x1 <= figure.bbox.x1


def test_paths(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "paths.png"
    stdout = run("paths.py", "--quick", "--out", str(out))
    assert "identical paths, bit for bit" in stdout
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    paths = json.loads(out.with_suffix(".json").read_text())
    assert list(paths) == BOOK_NAMES
    for points in paths.values():
        assert len(points) == 31 and points[0] == [-7.0, 2.0]
        assert abs(points[-1][0]) < 1 and abs(points[-1][1]) < 1   # all head for the minimum
    # The committed picture was drawn from exactly these paths.
    assert paths == json.loads((EXAMPLES / "paths.json").read_text())


def test_train_digits(tmp_path):
    for extra in ("matplotlib", "sklearn", "tqdm"):
        pytest.importorskip(extra)
    out = tmp_path / "digits.png"
    stdout = run("train_digits.py", "--quick", "--no-progress", "--out", str(out))
    assert stdout.count("(identical losses)") == 6
    assert "3 epochs of 11 mini-batches of 128" in stdout
    rows = [line.split() for line in stdout.splitlines()
            if line.split()[:1] and line.split()[0] in BOOK_NAMES
            and line.rstrip().endswith(" s")]
    assert len(rows) == 6
    for row in rows:
        speedup = float(row[5].rstrip("x"))
        assert speedup > 0 and float(row[1]) > 0 and float(row[3]) > 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_quick_mode_leaves_the_committed_pictures_alone(tmp_path):
    pytest.importorskip("matplotlib")
    committed = {path: path.read_bytes() for path in (EXAMPLES / "paths.png",
                                                       EXAMPLES / "paths.json")}
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    stdout = run("paths.py", "--quick", env=env)
    written = tmp_path / "fastopt-examples" / "paths.png"
    assert f"wrote {written}" in stdout
    assert written.read_bytes()[:8] == PNG_SIGNATURE
    assert {path: path.read_bytes() for path in committed} == committed


def test_train_digits_schedule(tmp_path):
    """--schedule --quick: the notes' schedules in Momentum, identical losses to
    fastopt.reference, into the temporary directory; the committed picture stays."""
    for extra in ("matplotlib", "sklearn", "tqdm"):
        pytest.importorskip(extra)
    picture = EXAMPLES / "train_digits_schedule.png"
    committed = picture.read_bytes() if picture.exists() else None   # (not in the sdist)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    stdout = run("train_digits.py", "--quick", "--schedule", "--no-progress", env=env)
    assert stdout.count("(identical losses)") == 2
    # 3 epochs of 11 mini-batches: 33 updates; the decay takes 3/4 of them, the ramp 1/4.
    assert "lr=LinearDecay(start=0.1, n=24, end=0.001)" in stdout
    assert "momentum=LinearRamp(start=0.5, end=0.9, n=8)" in stdout
    assert "max_grad_norm=1.0; 33 updates" in stdout
    assert "schedules: lr 0.1 -> 0.001, momentum 0.5 -> 0.9" in stdout
    written = tmp_path / "fastopt-examples" / "train_digits_schedule.png"
    assert f"wrote {written}" in stdout
    assert written.read_bytes()[:8] == PNG_SIGNATURE
    assert (picture.read_bytes() if picture.exists() else None) == committed


def test_train_digits_schedule_free(tmp_path):
    """--schedule-free --quick: Adam and ScheduleFreeAdamW with identical losses to
    fastopt.reference, Schedule-Free's figures at x (eval) unlike those at y (train), into the
    temporary directory; the committed picture stays."""
    for extra in ("matplotlib", "sklearn", "tqdm"):
        pytest.importorskip(extra)
    assert "--schedule-free" in run("train_digits.py", "--help")
    picture = EXAMPLES / "train_digits_schedulefree.png"
    committed = picture.read_bytes() if picture.exists() else None   # (not in the sdist)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    stdout = run("train_digits.py", "--quick", "--schedule-free", "--no-progress", env=env)
    assert "  Adam(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-07)  (identical losses)" in stdout
    assert ("  ScheduleFreeAdamW(lr=0.0025, beta1=0.9, beta2=0.999, warmup_steps=11)  "
            "(identical losses)") in stdout
    lines = stdout.splitlines()
    header = lines.index("after 3 epochs" + " " * 20 + " training loss  test loss  test accuracy")
    rows = {line[:34].strip(): [float(value) for value in line[34:].split()]
            for line in lines[header + 1:header + 4]}
    assert list(rows) == ["Adam", "ScheduleFreeAdamW at x (eval)",
                          "ScheduleFreeAdamW at y (train)"]
    assert len(rows["Adam"]) == 3 and len(rows["ScheduleFreeAdamW at y (train)"]) == 3
    at_x, at_y = rows["ScheduleFreeAdamW at x (eval)"], rows["ScheduleFreeAdamW at y (train)"]
    assert len(at_x) == 2 and at_x[0] != at_y[1]   # test loss: x is not y
    for values in rows.values():
        assert all(value > 0 for value in values) and 0 < values[-1] <= 1
    written = tmp_path / "fastopt-examples" / "train_digits_schedulefree.png"
    assert f"wrote {written}" in stdout
    assert written.read_bytes()[:8] == PNG_SIGNATURE
    assert (picture.read_bytes() if picture.exists() else None) == committed


def test_train_digits_evaluates_schedule_free_at_its_average():
    # The recorded test figures are the network's at x, the optimizer's average, those "at y"
    # at the training point, and train(params) put y back bit for bit: without eval the two
    # would agree; without train the next update would raise; a broken switch would differ.
    for extra in ("sklearn", "tqdm"):
        pytest.importorskip(extra)
    digits = load_module(EXAMPLES / "train_digits.py")
    data = digits.load_data(0)
    result = digits.train(fastopt, "ScheduleFreeAdamW", data, 2, 0, False, {"warmup_steps": 11})
    network, optimizer = result["network"], result["optimizer"]
    _, _, x_test, t_test = data
    assert optimizer.training and optimizer.iter == 2 * 11
    assert network.loss(x_test, t_test) == result["test_losses_at_y"][-1]
    assert network.accuracy(x_test, t_test) == result["accuracies_at_y"][-1]
    y = {key: param.copy() for key, param in network.params.items()}
    network.params = {key: optimizer.x[key].copy() for key in y}
    assert network.loss(x_test, t_test) == result["test_losses"][-1]
    assert network.accuracy(x_test, t_test) == result["accuracies"][-1]
    assert all(at_x != at_y for at_x, at_y in zip(result["test_losses"],
                                                   result["test_losses_at_y"], strict=True))
    assert any(not np.array_equal(y[key], optimizer.x[key]) for key in y)
    # Adam has no average: its figures are its params', with no "at y".
    adam = digits.train(fastopt, "Adam", data, 1, 0, False)
    assert "test_losses_at_y" not in adam
    assert adam["network"].loss(x_test, t_test) == adam["test_losses"][-1]
