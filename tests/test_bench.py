"""bench/run.py in its smallest mode: the JSON schema, positive timings, consistent ratios."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import fastopt

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"
RESULT_KEYS = {"median_us", "min_us", "max_us", "p10_us", "p90_us", "samples",
               "calls_per_sample", "ns_per_element", "gb_per_s", "alloc_bytes"}
TRAFFIC_ARRAYS = {"SGD": 3, "Adam": 7}   # arrays read plus arrays written per element


@pytest.fixture(scope="module")
def smallest_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    command = [sys.executable, str(BENCH), "--quick", "--optimizer", "SGD", "Adam",
               "--dtype", "float32", "--workload", "1e2", "two_layer_net", "--budget", "0.02",
               "--min-rounds", "3", "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout, json.loads(out.read_text())


def test_prints_the_header_and_table(smallest_run):
    stdout, _ = smallest_run
    assert "CPU" in stdout and "NumPy" in stdout and "loops compiled for" in stdout
    assert "optimizer dtype   workload" in stdout
    assert sum(line.startswith(("SGD ", "Adam ")) for line in stdout.splitlines()) == 4


def test_each_row_prints_the_spread_of_its_samples(smallest_run):
    stdout, data = smallest_run
    rows = [line for line in stdout.splitlines() if line.startswith(("SGD ", "Adam "))]
    for row, cell in zip(rows, data["cells"], strict=True):
        spreads = {name: (r["p90_us"] - r["p10_us"]) / r["median_us"]
                   for name, r in cell["results"].items() if name != "probe"}
        noisy = [name for name, value in spreads.items() if value > 0.25]
        expected = f"  {max(spreads.values()):.0%}" + (
            f" noisy: {', '.join(noisy)}" if noisy else "")
        assert row.endswith(expected), (row, expected)


def test_json_schema(smallest_run):
    _, data = smallest_run
    assert data["schema"] == 1
    for key in ("cpu", "logical_cpus", "fastopt_simd", "fastopt_threads", "python", "numpy",
                "cython", "compiler", "torch", "date_utc"):
        assert key in data["machine"]
    assert data["settings"]["min_rounds"] == 3
    cells = data["cells"]
    assert {(c["optimizer"], c["dtype"], c["workload"]) for c in cells} == {
        (o, "float32", w) for o in ("SGD", "Adam") for w in ("1e2", "two_layer_net")}
    torch_installed = data["machine"]["torch"] is not None
    assert torch_installed == (importlib.util.find_spec("torch") is not None)
    for cell in cells:
        expected = {"fastopt", "numpy"} | ({"torch"} if torch_installed else set())
        expected |= {"probe"} if cell["arrays"] == 1 else set()
        assert set(cell["results"]) == expected
        for name, result in cell["results"].items():
            assert RESULT_KEYS <= set(result), name
            if name == "torch":
                assert result["implementation"] in ("fused", "default")
                assert result["alloc_bytes"] is None
            else:
                assert isinstance(result["alloc_bytes"], int) and result["alloc_bytes"] >= 0


def test_every_timing_is_positive_and_ordered(smallest_run):
    _, data = smallest_run
    for cell in data["cells"]:
        # every contender's samples are alike: the same number of calls, the same rounds
        assert len({result["calls_per_sample"] for result in cell["results"].values()}) == 1
        assert len({result["samples"] for result in cell["results"].values()}) == 1
        for result in cell["results"].values():
            assert 0 < result["min_us"] <= result["p10_us"] <= result["median_us"]
            assert result["median_us"] <= result["p90_us"] <= result["max_us"]
            assert result["samples"] >= 3 and result["calls_per_sample"] >= 1
            assert result["ns_per_element"] > 0 and result["gb_per_s"] > 0


def test_every_ratio_is_the_ratio_of_the_reported_timings(smallest_run):
    _, data = smallest_run
    for cell in data["cells"]:
        results = cell["results"]
        median = {name: result["median_us"] for name, result in results.items()}
        assert cell["speedup_vs_numpy"]["fastopt"] == pytest.approx(
            median["numpy"] / median["fastopt"], rel=1e-12)
        if "torch" in results:
            assert cell["speedup_vs_numpy"]["torch"] == pytest.approx(
                median["numpy"] / median["torch"], rel=1e-12)
            assert cell["speedup_vs_torch"]["fastopt"] == pytest.approx(
                median["torch"] / median["fastopt"], rel=1e-12)
        else:
            assert cell["speedup_vs_torch"] == {}
        if "probe" in results:
            for name in ("fastopt", "numpy"):
                assert cell["fraction_of_probe"][name] == pytest.approx(
                    median["probe"] / median[name], rel=1e-12)
        for result in results.values():
            assert result["ns_per_element"] == pytest.approx(
                result["median_us"] * 1e3 / cell["elements"], rel=1e-12)
            assert result["gb_per_s"] == pytest.approx(
                cell["bytes_per_update"] / (result["median_us"] * 1e-6) / 1e9, rel=1e-12)
        itemsize = 4 if cell["dtype"] == "float32" else 8
        assert cell["bytes_per_update"] == (TRAFFIC_ARRAYS[cell["optimizer"]] * itemsize
                                            * cell["elements"])
        assert cell["elements"] == {"1e2": 100, "two_layer_net": 784 * 50 + 50 + 500 + 10}[
            cell["workload"]]


def test_reports_redraw_from_the_json(smallest_run, tmp_path):
    _, data = smallest_run
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(data))
    table = tmp_path / "table.md"
    command = [sys.executable, str(BENCH), "--from-json", str(saved), "--markdown", str(table)]
    plotting = importlib.util.find_spec("matplotlib") is not None
    if plotting:
        command += ["--plot", str(tmp_path / "plot.png")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    text = table.read_text()
    assert "| workload | dtype | SGD | Adam |" in text
    speedup = data["cells"][0]["speedup_vs_numpy"]["fastopt"]
    assert f"{speedup:.1f}× np" in text
    if plotting:
        assert (tmp_path / "plot.png").stat().st_size > 10_000
    assert math.isfinite(speedup)


def test_the_simd_comparison_runs_every_level(tmp_path):
    out = tmp_path / "simd.json"
    command = [sys.executable, str(BENCH.parent / "simd.py"), "--workload", "1e2",
               "--optimizer", "SGD", "Adam", "--dtype", "float64", "--budget", "0.01",
               "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300,
                               cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    data = json.loads(out.read_text())
    assert data["levels"] == list(fastopt.simd_levels())
    assert [(row["optimizer"], row["workload"]) for row in data["rows"]] == [
        ("SGD", "1e2"), ("Adam", "1e2")]
    for row in data["rows"]:
        assert set(row["median_us"]) == set(data["levels"])
        assert all(0 < value < 1e6 for value in row["median_us"].values())


def test_the_overhead_comparison_runs(tmp_path):
    command = [sys.executable, str(BENCH.parent / "overhead.py"), "--elements", "10",
               "--budget", "0.005"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300,
                               cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    rows = [line.split() for line in completed.stdout.splitlines()[2:]]
    assert [(row[0], row[1]) for row in rows] == [
        (name, dtype) for name in ("SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam",
                                   "AdamW", "NAdam", "RAdam", "Adamax", "Adadelta", "Lion")
        for dtype in ("float32", "float64")]
    for row in rows:
        assert float(row[2]) > 0 and float(row[3]) > 0


def test_the_clipping_comparison_runs(tmp_path):
    command = [sys.executable, str(BENCH.parent / "clipping.py"), "--workload", "1e4",
               "--dtype", "float32", "--budget", "0.01"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300,
                               cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    row = completed.stdout.splitlines()[3].split()
    assert row[:2] == ["1e4", "float32"]
    assert float(row[2]) > 0 and float(row[3]) > 0
