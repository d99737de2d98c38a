"""bench/run.py in its smallest mode: the JSON schema, positive timings, consistent ratios, the
peers (torch.optim, schedulefree, timm)."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import fastopt
from fastopt._rules import RULES

from _helpers import timm_optim
from registry import REGISTRY

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"
INVESTIGATIONS = BENCH.parent / "investigations"
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
    assert "optimizer         dtype   workload" in stdout     # as wide as ScheduleFreeAdamW
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
                assert result["peer"] == cell["peer"] == f"torch.optim.{cell['optimizer']}" + (
                    " (fused)" if result["implementation"] == "fused" else "")
            else:
                assert isinstance(result["alloc_bytes"], int) and result["alloc_bytes"] >= 0
        if not torch_installed:
            assert cell["peer"] is None and cell["speedup_vs_peer"] == {}


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
            assert cell["speedup_vs_peer"] == cell["speedup_vs_torch"]
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
    command = [sys.executable, str(INVESTIGATIONS / "simd.py"), "--workload", "1e2",
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
    command = [sys.executable, str(INVESTIGATIONS / "overhead.py"), "--elements", "10",
               "--budget", "0.005"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300,
                               cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    rows = [line.split() for line in completed.stdout.splitlines()[2:]]
    # every rule that takes its vector param, in the order of its declarations
    # (fastopt._rules.RULES), as the benchmark (Muon takes matrices only)
    assert {entry.name for entry in REGISTRY} == {rule.__name__ for rule in RULES}
    assert [(row[0], row[1]) for row in rows] == [
        (rule.__name__, dtype) for rule in RULES if rule._param_ndim is None
        for dtype in ("float32", "float64")]
    for row in rows:
        assert float(row[2]) > 0 and float(row[3]) > 0


def test_the_clipping_comparison_runs(tmp_path):
    command = [sys.executable, str(INVESTIGATIONS / "clipping.py"), "--workload", "1e4",
               "--dtype", "float32", "--budget", "0.01"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300,
                               cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    row = completed.stdout.splitlines()[3].split()
    assert row[:2] == ["1e4", "float32"]
    assert float(row[2]) > 0 and float(row[3]) > 0


# --------------------------------------------------------------------------------------------
# Every contender at the same thread count, in blocks of its own; thread scaling; the headline.

TARGETS = BENCH.parent / "targets.py"


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load(BENCH, "fastopt_bench_run")


@pytest.fixture()
def restored_threads():
    """Leave fastopt's and the BLAS libraries' thread counts as the test found them."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = fastopt.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=None):
        yield
    fastopt.set_num_threads(before)


def blas_present():
    try:
        import threadpoolctl
    except ImportError:
        return False
    return any(entry.get("user_api") == "blas" for entry in threadpoolctl.threadpool_info())


@pytest.fixture(scope="module")
def two_thread_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench2")
    out, table = folder / "results.json", folder / "table.md"
    command = [sys.executable, str(BENCH), "--threads", "2", "--optimizer", "Adam",
               "--dtype", "float64", "--workload", "1e2", "two_layer_net", "--budget", "0.02",
               "--min-rounds", "4", "--blocks", "2", "--settle", "0.001", "--json", str(out),
               "--markdown", str(table)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout, json.loads(out.read_text()), table.read_text()


def test_every_contender_runs_at_the_same_thread_count(two_thread_run):
    _, data, _ = two_thread_run
    assert data["settings"]["threads"] == data["machine"]["threads"] == 2
    assert data["settings"]["scaling"] is True
    if data["machine"]["torch"] is not None:
        assert data["machine"]["torch_threads"] == 2
    for cell in data["cells"]:
        assert cell["threads"] == 2
        for name, result in cell["results"].items():
            if name == "numpy":
                assert result["threads"] == (2 if blas_present() else None)
            else:
                assert result["threads"] == 2, name
        expected = {"fastopt"} | ({"probe"} if cell["arrays"] == 1 else set())
        expected |= {"torch"} if "torch" in cell["results"] else set()
        assert set(cell["one_thread"]) == expected
        for name, result in cell["one_thread"].items():
            assert result["threads"] == 1, name


def test_thread_scaling_is_the_ratio_of_one_thread_to_n(two_thread_run):
    stdout, data, table = two_thread_run
    rows = [line for line in stdout.splitlines() if line.startswith("Adam ")]
    assert "1->2" in stdout and "peer 1->2" in stdout and "probe@1" in stdout
    for row, cell in zip(rows, data["cells"], strict=True):
        single, results = cell["one_thread"], cell["results"]
        assert set(cell["scaling"]) == set(single)
        for name in single:
            assert cell["scaling"][name] == pytest.approx(
                single[name]["median_us"] / results[name]["median_us"], rel=1e-12)
            # the same samples at 1 thread as at 2: the blocks alternate
            assert single[name]["samples"] == results[name]["samples"] >= 4
            assert single[name]["calls_per_sample"] == results[name]["calls_per_sample"]
        assert f" {cell['scaling']['fastopt']:6.2f} " in row
        if "probe" in single:
            assert cell["fraction_of_probe_one_thread"]["fastopt"] == pytest.approx(
                single["probe"]["median_us"] / single["fastopt"]["median_us"], rel=1e-12)
            assert f" {cell['fraction_of_probe_one_thread']['fastopt']:.0%} " in row
        else:
            assert cell["fraction_of_probe_one_thread"] == {}
        assert f"{cell['scaling']['fastopt']:.2f}× 1→2" in table


def test_the_spread_is_in_the_json_and_the_table(two_thread_run):
    _, data, table = two_thread_run
    for cell in data["cells"]:
        for result in [*cell["results"].values(), *cell["one_thread"].values()]:
            assert (0 < result["min_us"] <= result["p10_us"] <= result["p25_us"]
                    <= result["median_us"] <= result["p75_us"] <= result["p90_us"]
                    <= result["max_us"])
        fast = cell["results"]["fastopt"]
        iqr = (fast["p75_us"] - fast["p25_us"]) / fast["median_us"]
        assert f" ±{iqr:.0%} · {cell['speedup_vs_numpy']['fastopt']:.1f}× np" in table


def test_one_thread_run_has_no_scaling_columns(bench, restored_threads):
    plan = bench.Plan(threads=1, budget=0.001, min_rounds=2, blocks=2, settle=0.0)
    cell = bench.run_cell("SGD", "float32", bench.workload_named("1e2"), plan, None)
    assert cell["one_thread"] == {} and cell["scaling"] == {}
    assert cell["results"]["fastopt"]["threads"] == 1


class FakeTorch:
    """Stands in for the torch worker: records every request, answers with fixed timings."""

    def __init__(self, available=("Adam",)):
        self.requests = []
        self.available = set(available)     # the optimizers whose peer loaded

    def ask(self, message):
        self.requests.append((message, fastopt.get_num_threads()))
        if message["op"] == "setup":
            return {"implementation": "fused", "fastest": 1e-6}
        return {"samples": [1e-6 * message["threads"]] * message["count"],
                "threads": message["threads"]}


def test_torch_is_timed_in_blocks_of_its_own_at_each_thread_count(bench, restored_threads):
    worker = FakeTorch()
    plan = bench.Plan(threads=2, budget=0.001, min_rounds=3, blocks=3, settle=0.0)
    cell = bench.run_cell("Adam", "float64", bench.workload_named("1e2"), plan, worker)
    ops = [message["op"] for message, _ in worker.requests]
    assert ops == ["setup"] + ["time"] * 6
    assert [message["threads"] for message, _ in worker.requests] == [2, 2, 1, 2, 1, 2, 1]
    # the thread count torch is asked for is the one the local block before it ran at
    assert all(threads == message["threads"] for message, threads in worker.requests[1:])
    assert cell["results"]["torch"]["threads"] == 2
    assert cell["one_thread"]["torch"]["threads"] == 1
    assert cell["scaling"]["torch"] == pytest.approx(0.5)
    assert cell["results"]["torch"]["samples"] == cell["results"]["fastopt"]["samples"]
    assert cell["peer"] == cell["results"]["torch"]["peer"] == "torch.optim.Adam (fused)"
    assert cell["speedup_vs_peer"] == cell["speedup_vs_torch"]
    assert fastopt.get_num_threads() == 2


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_the_torch_worker_is_another_process(bench):
    worker = bench.TorchWorker()
    try:
        assert worker.pid != __import__("os").getpid()
        setup = worker.ask({"op": "setup", "optimizer": "SGD", "dtype": "float32",
                            "workload": "1e2", "threads": 1})
        assert setup["implementation"] in ("fused", "default") and setup["fastest"] > 0
        timed = worker.ask({"op": "time", "threads": 1, "calls": 2, "count": 3})
        assert timed["threads"] == 1 and len(timed["samples"]) == 3
        assert worker.available | set(worker.missing) == set(bench.PEERS)
        assert not worker.available & set(worker.missing)
    finally:
        worker.close()
    assert worker.process.returncode == 0


# --------------------------------------------------------------------------------------------
# The rules timed, and each rule's peer.

def test_the_optimizers_are_the_rules(bench):
    # every rule, Muon (matrices only) on the networks' weight matrices
    names = [rule.__name__ for rule in RULES]
    assert bench.ALL_OPTIMIZERS == names
    assert "Partition" not in names and "Lookahead" not in names
    assert bench.parse_args([]).optimizer == names
    with pytest.raises(SystemExit):
        bench.parse_args(["--optimizer", "Lookahead"])


def test_a_rule_of_matrices_gets_a_networks_matrices_and_no_vector(bench, restored_threads):
    net = bench.workload_named("two_layer_net")
    taken = bench.workload_for("Muon", net)
    assert taken.name == "two_layer_net"
    assert taken.shapes == ((784, 50), (50, 10)) and taken.elements == 784 * 50 + 50 * 10
    assert bench.workload_for("Muon", bench.workload_named("1e7")) is None
    assert bench.workload_for("Adam", net) is net
    plan = bench.Plan(threads=1, budget=0.001, min_rounds=1, blocks=1, settle=0.0)
    cell = bench.run_cell("Muon", "float32", taken, plan, None)
    read, written = bench.traffic("Muon", taken.shapes)
    assert cell["bytes_per_update"] == 4 * (read + written)
    assert set(cell["results"]) == {"fastopt", "numpy"}
    # and the command line's run has Muon's network cells only
    completed = subprocess.run([sys.executable, str(BENCH), "--optimizer", "Muon", "--dtype",
                                "float32", "--workload", "1e2", "two_layer_net", "--budget",
                                "0.02", "--blocks", "1", "--no-torch", "--threads", "1"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    rows = [line.split() for line in completed.stdout.splitlines()
            if line.startswith("Muon ") and line.split()[1] == "float32"]
    assert [row[2] for row in rows] == ["two_layer_net"]
    assert "Muon: on the networks' weight matrices only" in completed.stdout


def test_a_block_times_each_contender_in_a_row_in_a_rotating_order(bench):
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples = bench.time_block(steps, 1, 3, first=1, consecutive=True)
    # two warming calls, then the three samples, contender after contender from "b"
    assert "".join(calls) == "bbbbbcccccaaaaa"
    assert {name: len(values) for name, values in samples.items()} == {"a": 3, "b": 3, "c": 3}
    calls.clear()
    bench.time_block(steps, 1, 2)                      # the investigations' interleaving
    assert "".join(calls) == "aabbcc" + "abc" + "bca"


def test_a_cell_gives_every_contender_its_samples_in_a_row(bench, monkeypatch, restored_threads):
    """As the peer in its process: interleaved, the book's NumPy code evicted fastopt's arrays
    from the cache between fastopt's samples while the peer's stayed."""
    seen = []
    timed = bench.time_block

    def recording(*args, **kwargs):
        seen.append(kwargs.get("consecutive", False))
        return timed(*args, **kwargs)

    monkeypatch.setattr(bench, "time_block", recording)
    plan = bench.Plan(threads=1, budget=0.001, min_rounds=1, blocks=2, settle=0.0)
    bench.run_cell("SGD", "float32", bench.workload_named("1e2"), plan, None)
    assert seen == [True, True]


@pytest.mark.parametrize("optimizer", [rule.__name__ for rule in RULES if rule._param_ndim is None])
def test_every_rule_runs_in_a_cell(bench, restored_threads, optimizer):
    """Each rule at its defaults (LARS's trust ratio inactive without weight decay), on a
    single array with the probe and on matrices (Adafactor's factored state), no peer."""
    plan = bench.Plan(threads=1, budget=0.001, min_rounds=1, blocks=1, settle=0.0)
    for workload in ("1", "two_layer_net"):
        cell = bench.run_cell(optimizer, "float32", bench.workload_named(workload), plan, None)
        read, written = bench.traffic(optimizer, bench.workload_named(workload).shapes)
        assert cell["bytes_per_update"] == 4 * (read + written)
        # the probe writes up to 4 arrays, as many as any rule's update (LAMB's and
        # ScheduleFreeAdamW's param and three state arrays)
        probed = workload == "1"
        assert set(cell["results"]) == {"fastopt", "numpy"} | ({"probe"} if probed else set())
        assert all(result["median_us"] > 0 for result in cell["results"].values())


def test_every_peer_is_installed_or_skipped(bench):
    """The peer table maps rules to torch.optim's classes (under the results' "torch") and to
    schedulefree's and timm's (under their package's name); each loads in the torch worker or
    says why not."""
    assert set(bench.PEERS) <= set(bench.ALL_OPTIMIZERS)
    assert set(bench.PEERS) == set(bench.TORCH_EQUIVALENTS) | set(bench.OTHER_PEERS)
    assert {"ADOPT", "LAMB", "LARS", "ScheduleFreeAdamW", "ScheduleFreeSGD", "Adafactor",
            "Muon"} <= set(bench.PEERS)
    for optimizer, peer in bench.PEERS.items():
        assert (peer.contender == "torch") == (optimizer in bench.TORCH_EQUIVALENTS)
        assert peer.contender in ("torch", "schedulefree", "timm")
        assert peer.package in bench.INSTALL
    torch = pytest.importorskip("torch")
    for optimizer, peer in bench.PEERS.items():
        found, missing = bench.peer_class(torch, peer)
        if found is not None:
            assert missing is None and found.__name__ == peer.name, optimizer
            assert issubclass(found, torch.optim.Optimizer), optimizer
        elif importlib.util.find_spec(peer.package) is None:
            assert missing == f"{peer.package} is not installed ({bench.INSTALL[peer.package]})"
        else:
            assert peer.name in missing or peer.namespace in missing, (optimizer, missing)


def test_a_missing_peer_is_skipped_and_said_once(bench, monkeypatch, capsys, restored_threads):
    torch = pytest.importorskip("torch")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec",
                        lambda name, *rest: None if name == "schedulefree" else find_spec(
                            name, *rest))
    missing = {optimizer: bench.peer_class(torch, peer)[1]
               for optimizer, peer in bench.PEERS.items()}
    monkeypatch.undo()
    reason = "schedulefree is not installed (pip install schedulefree)"
    assert missing["ScheduleFreeAdamW"] == missing["ScheduleFreeSGD"] == reason
    info = bench.machine_info(None, 1)
    info.update(torch=torch.__version__, peer_versions={"schedulefree": None, "timm": None},
                peers_missing={"ScheduleFreeAdamW": reason, "ScheduleFreeSGD": reason})
    bench.print_header(info, {"budget": 0.1, "blocks": 2, "settle": 0.0, "min_rounds": 3})
    skipped = [line for line in capsys.readouterr().out.splitlines() if "skipped" in line]
    assert skipped == [f"  skipped  no peer for ScheduleFreeAdamW, ScheduleFreeSGD: {reason}"]
    # a cell whose peer did not load has no peer column, and asks the worker nothing
    worker = FakeTorch(available=())
    plan = bench.Plan(threads=1, budget=0.001, min_rounds=2, blocks=1, settle=0.0)
    cell = bench.run_cell("ScheduleFreeSGD", "float32", bench.workload_named("1e2"), plan,
                          worker)
    assert worker.requests == []
    assert cell["peer"] is None and set(cell["results"]) == {"fastopt", "numpy", "probe"}
    assert cell["speedup_vs_peer"] == cell["speedup_vs_torch"] == {}


def test_the_traffic_counts_the_state_each_rule_keeps(bench):
    assert bench.traffic("SGD", [(10,)]) == (20, 10)
    assert bench.traffic("Adam", [(10,), (2, 3)]) == (4 * 16, 3 * 16)
    assert bench.traffic("LARS", [(10,)]) == (20, 10)      # no momentum: no buffer
    # Adafactor: a vector's variance, a matrix's row and column factors
    assert bench.traffic("Adafactor", [(10,)]) == (30, 20)
    assert bench.traffic("Adafactor", [(784, 50)]) == (2 * 39200 + 834, 39200 + 834)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_a_peer_cell_records_its_peer(tmp_path):
    """LARS's peer is timm's Lars (in the torch worker, at the same threads), or, without
    timm, none: the header says so once."""
    out, table = tmp_path / "lars.json", tmp_path / "lars.md"
    command = [sys.executable, str(BENCH), "--quick", "--optimizer", "LARS", "--workload",
               "1e2", "--dtype", "float32", "--budget", "0.02", "--min-rounds", "3",
               "--settle", "0.001", "--json", str(out), "--markdown", str(table)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    (cell,) = json.loads(out.read_text())["cells"]
    assert cell["speedup_vs_torch"] == {} and "torch" not in cell["results"]
    if timm_optim("lars") is None:
        assert cell["peer"] is None and cell["speedup_vs_peer"] == {}
        assert completed.stdout.count("skipped  no peer for LARS: timm is not installed") == 1
        return
    timm = cell["results"]["timm"]
    assert cell["peer"] == timm["peer"] == "timm.optim.Lars"
    assert timm["implementation"] == "default" and timm["alloc_bytes"] is None
    assert timm["samples"] == cell["results"]["fastopt"]["samples"] >= 3
    assert cell["speedup_vs_peer"]["fastopt"] == pytest.approx(
        timm["median_us"] / cell["results"]["fastopt"]["median_us"], rel=1e-12)
    assert cell["speedup_vs_numpy"]["timm"] == pytest.approx(
        cell["results"]["numpy"]["median_us"] / timm["median_us"], rel=1e-12)
    assert "peers ('peer' columns): LARS timm.optim.Lars" in completed.stdout
    assert "skipped" not in completed.stdout
    text = table.read_text()
    assert f"{cell['speedup_vs_peer']['fastopt']:.2f}× timm" in text
    assert "timm's torch implementation, `× timm`" in text
    assert "LARS `timm.optim.Lars`." in text


def test_the_timm_loader_is_shared_with_the_tests():
    assert Path(timm_optim.__code__.co_filename).resolve() == BENCH.parent / "_common.py"


def headline_data(cpu="Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"):
    cells = []
    for workload, optimizer, speedup in [
            ("two_layer_net", "SGD", 2.84), ("two_layer_net", "Adam", 6.96),
            ("five_layer_net", "Momentum", 3.41), ("five_layer_net", "AdaGrad", 2.76),
            ("two_layer_net", "NAdam", 1.2),    # beyond the book: not in the headline
            ("1e2", "SGD", 12.0),               # not a network of the book
            ("many_small", "Adam", 15.0)]:
        cells.append({"workload": workload, "optimizer": optimizer, "dtype": "float64",
                      "results": {}, "speedup_vs_numpy": {"fastopt": speedup}})
    return {"machine": {"cpu": cpu, "threads": 2}, "cells": cells}


def test_the_headline_is_read_off_the_json():
    targets = load(TARGETS, "fastopt_bench_targets")
    assert targets.headline(headline_data()) == (
        "2.8–7.0× faster than that code on the book's networks (Intel Xeon Platinum 8481C, "
        "2 threads)")
    assert targets.headline(headline_data("AMD EPYC 7B13 64-Core Processor")).endswith(
        "(AMD EPYC 7B13, 2 threads)")
    assert targets.headline({"machine": {}, "cells": headline_data()["cells"][4:]}) is None


def test_the_headline_check_of_a_readme(tmp_path):
    saved = tmp_path / "full.json"
    saved.write_text(json.dumps(headline_data()))
    good, stale = tmp_path / "good.md", tmp_path / "stale.md"
    good.write_text("same numbers as the book, 2.8–7.0× faster than that code\non the book's "
                    "networks (Intel Xeon Platinum 8481C, 2 threads, [performance]"
                    "(#performance)), and more\n")
    stale.write_text("2.2–6.0× faster than that code on the book's networks (AMD EPYC)\n")
    for readme, status in ((good, 0), (stale, 1)):
        completed = subprocess.run([sys.executable, str(TARGETS), str(saved), "--readme",
                                    str(readme)], capture_output=True, text=True, timeout=60)
        assert completed.returncode == status, completed.stderr
        assert "headline: 2.8–7.0× faster" in completed.stdout
    assert 'expected "2.8–7.0×' in completed.stderr


def test_the_table_carries_the_headline(two_thread_run):
    _, data, table = two_thread_run
    targets = load(TARGETS, "fastopt_bench_targets")
    assert f"Headline: fastopt is {targets.headline(data)}." in table


def test_the_one_thread_target_reads_the_runs_own_one_thread_timing(two_thread_run):
    _, data, _ = two_thread_run
    targets = load(TARGETS, "fastopt_bench_targets")
    (cell,) = [c for c in data["cells"] if c["workload"] == "two_layer_net"]
    expected = cell["results"]["numpy"]["median_us"] / cell["one_thread"]["fastopt"]["median_us"]
    row = next(row for row in targets.rows(data, None) if "one thread" in row[0])
    assert row[1] == f"{expected:.2f}x (Adam float64)"


def test_the_comparison_with_torch_is_read_off_the_json():
    targets = load(TARGETS, "fastopt_bench_targets")
    data = headline_data()
    assert targets.against_torch(data) is None          # a run without torch
    for cell, speedup in zip(data["cells"], [1.86, 9.97, 3.0, 2.5, 0.5, 40.0, 0.1], strict=True):
        cell["speedup_vs_torch"] = {"fastopt": speedup}   # the last three: not in the range
    assert targets.against_torch(data) == (
        "1.9–10.0× faster than torch.optim on the same networks")


def test_the_readme_check_wants_the_comparison_with_torch(tmp_path):
    data = headline_data()
    for cell in data["cells"]:
        cell["speedup_vs_torch"] = {"fastopt": 2.0}
    saved = tmp_path / "full.json"
    saved.write_text(json.dumps(data))
    without, stale, good = (tmp_path / name for name in ("without.md", "stale.md", "good.md"))
    headline = ("2.8–7.0× faster than that code on the book's networks (Intel Xeon Platinum "
                "8481C, 2 threads)")
    without.write_text(headline + "\n")
    stale.write_text(headline + " and 1.5–2.0× faster than torch.optim on the same networks\n")
    good.write_text(headline + " and 2.0–2.0× faster than torch.optim\non the same networks.\n")
    for readme, status in ((without, 1), (stale, 1), (good, 0)):
        completed = subprocess.run([sys.executable, str(TARGETS), str(saved), "--readme",
                                    str(readme)], capture_output=True, text=True, timeout=60)
        assert completed.returncode == status, (readme.name, completed.stderr)
        if status:
            assert 'expected "2.0–2.0× faster than torch.optim on the same networks"' in (
                completed.stderr)


def test_the_torch_targets_read_only_torch_optim_cells():
    """Other peers' cells (schedulefree's, timm's: ``speedup_vs_peer``, results under their
    package) count in neither the torch targets nor the README's figure against torch."""
    targets = load(TARGETS, "fastopt_bench_targets")
    data = headline_data()
    data["cells"][0].update(results={"torch": {}}, speedup_vs_torch={"fastopt": 4.0},
                            speedup_vs_peer={"fastopt": 4.0})
    for optimizer, package in (("LARS", "timm"), ("ScheduleFreeSGD", "schedulefree")):
        data["cells"].append({"workload": "two_layer_net", "optimizer": optimizer,
                              "dtype": "float64", "results": {package: {"peer": "x"}},
                              "speedup_vs_numpy": {"fastopt": 9.0}, "speedup_vs_torch": {},
                              "speedup_vs_peer": {"fastopt": 0.5}})
    row = next(row for row in targets.rows(data, None) if "x torch.optim" in row[0])
    assert row[1:] == ["4.00x (SGD float64)", "met"]
    assert targets.against_torch(data) == (
        "4.0–4.0× faster than torch.optim on the same networks")


ROOT = BENCH.parents[1]
COMMITTED = BENCH.parent / "results" / "full.json"


@pytest.mark.skipif(not (ROOT / "README.md").exists() or not COMMITTED.exists(),
                    reason="the README and the committed run are not beside these tests")
def test_the_readme_carries_the_committed_runs_figures():
    completed = subprocess.run([sys.executable, str(TARGETS), str(COMMITTED), "--readme",
                                str(ROOT / "README.md")], capture_output=True, text=True,
                               timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert "carries them" in completed.stdout


@pytest.mark.skipif(not (ROOT / "docs" / "performance.md").exists() or not COMMITTED.exists(),
                    reason="the docs and the committed run are not beside these tests")
def test_the_docs_carry_the_committed_runs_table_and_targets(bench):
    data = json.loads(COMMITTED.read_text())
    docs = (ROOT / "docs" / "performance.md").read_text()
    drawn = bench.markdown(data["cells"], data["machine"], "")
    table = [line for line in drawn.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 * 8        # header, rule, every workload in both dtypes
    assert "\n".join(table) in docs
    assert next(line for line in drawn.splitlines() if line.startswith("Each cell:")) in docs
    targets = load(TARGETS, "fastopt_bench_targets")
    for name, measured, verdict in targets.rows(data, None):
        assert f"| {name} | {measured} | {verdict} |" in docs
