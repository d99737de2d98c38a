"""Benchmark fastopt against the book's pure-NumPy optimizers and each rule's torch peer.

    python bench/run.py --quick                 # the README's main command, about a minute
    python bench/run.py --json results.json --plot speedup.png
    python bench/run.py --optimizer Adam --dtype float32 --workload 1e7

Peers (PEERS). Each rule's peer is torch.optim's class where torch.optim has the rule (fused
where torch has a fused CPU kernel: TORCH_EQUIVALENTS), else the torch implementation its
tests compare with (OTHER_PEERS): schedulefree's fast classes for the Schedule-Free rules,
timm's optimizer modules (loaded alone, ``_common.timm_optim``) for ADOPT, LAMB and LARS; all
at fastopt's defaults, which are theirs. A peer that is not installed is left out, and the
header says so once. Only torch.optim's cells are stored under ``torch`` (``speedup_vs_torch``,
read by bench/targets.py); every peer's cell names it (``peer``) and has ``speedup_vs_peer``.

Method. For each cell (optimizer x dtype x workload) every contender gets its own copy of the
same params and grads and runs at the same thread count N (``--threads``, default fastopt's
own): fastopt's pool through ``fastopt.set_num_threads``, torch (and so every peer) through
``torch.set_num_threads``, NumPy's BLAS through threadpoolctl when it is installed. fastopt,
the book's NumPy code and the bandwidth probe are timed in this process (their only threads
are fastopt's pool); the peer is timed in a worker process of its own, the torch worker
(torch's OpenMP threads spin after each parallel region and would otherwise run during
fastopt's samples). The timing blocks alternate ``--blocks`` times per cell: this process at
N threads, the peer at N, then fastopt, the probe and the peer at 1 thread for the scaling
columns; before each block the machine is left idle for ``--settle`` seconds so that the
previous block's spinning threads go to sleep. In a block each contender takes its samples in
a row, after two untimed calls that wake its threads, in an order that rotates from block to
block: every sample finds the caches as the contender's own previous call left them, the
peer's in its process as fastopt's in this one (interleaved sample by sample, the book's
NumPy code evicted fastopt's arrays of 1e7 elements between its calls while the peer's stayed
in the cache). Every contender gets the same number of samples, each the
same number of ``update()`` calls (one, unless the fastest contender needs more to span
20 us). Only the update calls are timed. Reported: the median time per update with min, max
and the 10th, 25th, 75th and 90th percentiles, ns per element, effective GB/s (the bytes one
fused pass must read and write, over the time), speedups computed from those medians, time on
1 thread over time on N, and the bytes allocated by one update as tracemalloc sees them
(NumPy's temporaries; the peers allocate in torch, outside Python's view, so n/a).

The bandwidth probe is a compiled streaming pass with the same reads and writes as the
optimizer (``bandwidth_probe`` at the SIMD level fastopt runs), on fastopt's threads and timed
in the same rounds; on large arrays the "of probe" column is how close each contender comes to
that memory limit, at N threads and at 1.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field

import numpy as np

import fastopt
from fastopt import reference
from fastopt._simd import kernels

# _common.py, beside this file (on the path already when this runs as a script, not when it
# is loaded by path, as the tests do)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (
    ALL_OPTIMIZERS,
    DTYPES,
    Workload,
    all_workloads,
    calls_for,
    compiler_version,
    cpu_model,
    cpu_simd,
    fastest_call,
    make_arrays,
    make_numpy_like,
    time_block,
    timm_optim,
    warm_allocator,
    workload_for,
    workload_named,
)


def state_elements(optimizer: str, shape: tuple) -> int:
    """Elements of the state arrays one param of ``shape`` has under ``optimizer`` with its
    default options: each of the param's shape unless the rule declares another (Adafactor's
    row and column factors of a matrix, and its ``variance`` only for a vector:
    ``_state_shapes``)."""
    rule = getattr(fastopt, optimizer)()
    shapes = rule._state_shapes
    return sum(math.prod(shapes[name](shape) if name in shapes else shape)
               for name in rule.state_names)


def traffic(optimizer: str, shapes) -> tuple[int, int]:
    """Elements one fused pass of ``optimizer`` reads and writes over params of ``shapes``:
    (read, written), the params, grads and state read, the params and state written."""
    elements = sum(math.prod(shape) for shape in shapes)
    states = sum(state_elements(optimizer, shape) for shape in shapes)
    return 2 * elements + states, elements + states


# torch.optim with the book's hyperparameters. torch's Adam is the paper's form, whose cost is
# the same as the book's.
TORCH_EQUIVALENTS = {
    "SGD": ("SGD", {"lr": 0.01}),
    "Momentum": ("SGD", {"lr": 0.01, "momentum": 0.9}),
    "Nesterov": ("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    "AdaGrad": ("Adagrad", {"lr": 0.01, "eps": 1e-7}),
    "RMSprop": ("RMSprop", {"lr": 0.01, "alpha": 0.99, "eps": 1e-7}),
    "Adam": ("Adam", {"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-7}),
    # Beyond the book: fastopt's defaults are torch's (Lion has no torch.optim class).
    "AdamW": ("AdamW", {}),
    "NAdam": ("NAdam", {}),
    "RAdam": ("RAdam", {}),
    "Adamax": ("Adamax", {}),
    "Adadelta": ("Adadelta", {}),
    "Adafactor": ("Adafactor", {}),
    # on a network's weight matrices only (workload_for), as a training loop gives them to it
    "Muon": ("Muon", {}),
}


@dataclass(frozen=True)
class Peer:
    """A rule's implementation outside fastopt, timed in the torch worker: class ``name`` of
    ``namespace`` (as its users import it) with ``options``; ``package`` is what pip installs,
    ``timm_module`` the file of timm/optim/ it is loaded from alone (``timm_optim``), and
    ``train`` whether ``train()`` must be called before it steps (schedulefree's classes)."""
    package: str
    namespace: str
    name: str
    options: dict = field(default_factory=dict)
    timm_module: str | None = None
    train: bool = False

    @property
    def contender(self) -> str:
        """The key of its results in a cell: ``torch`` for torch.optim only (the cells
        bench/targets.py and the README's figures read), else its package."""
        return "torch" if self.namespace == "torch.optim" else self.package

    def label(self, implementation: str) -> str:
        """How the JSON, the printout and the table name it: ``torch.optim.Adam (fused)``,
        ``timm.optim.Lars``."""
        return f"{self.namespace}.{self.name}" + (" (fused)" if implementation == "fused"
                                                   else "")


# The rules torch.optim lacks, against the torch implementations fastopt's tests compare them
# with, at fastopt's defaults (which are theirs): schedulefree's fast classes (foreach kernels;
# the tests' oracles are its Reference classes, whose formulas these compute) and timm 1.0.31's
# classes (LAMB without its global clipping, which is fastopt's max_grad_norm).
OTHER_PEERS = {
    "ADOPT": Peer("timm", "timm.optim", "Adopt", timm_module="adopt"),
    "LAMB": Peer("timm", "timm.optim", "Lamb", {"max_grad_norm": None}, timm_module="lamb"),
    "LARS": Peer("timm", "timm.optim", "Lars", timm_module="lars"),
    "ScheduleFreeAdamW": Peer("schedulefree", "schedulefree", "AdamWScheduleFree", train=True),
    "ScheduleFreeSGD": Peer("schedulefree", "schedulefree", "SGDScheduleFree", train=True),
}

#: Each rule's peer: torch.optim's class where torch.optim has the rule, else OTHER_PEERS'.
PEERS = {**{optimizer: Peer("torch", "torch.optim", name, options)
            for optimizer, (name, options) in TORCH_EQUIVALENTS.items()}, **OTHER_PEERS}

INSTALL = {"torch": "pip install torch==2.13.0", "schedulefree": "pip install schedulefree",
           "timm": "pip install --no-deps timm==1.0.31"}

QUICK_WORKLOADS = ["1e2", "1e4", "1e6", "two_layer_net", "five_layer_net", "many_small"]


# --------------------------------------------------------------------------------------------
# Contenders: each returns a zero-argument callable that performs one update().

def package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def peer_class(torch, peer: Peer) -> tuple[type | None, str | None]:
    """The peer's class and None, or None and why it is missing (its package not installed,
    or without the class); in the torch worker."""
    if peer.package == "torch":
        found = getattr(torch.optim, peer.name, None)
        return (found, None) if found is not None else (
            None, f"torch {torch.__version__} has no torch.optim.{peer.name}")
    if importlib.util.find_spec(peer.package) is None:
        return None, f"{peer.package} is not installed ({INSTALL[peer.package]})"
    try:
        module = (timm_optim(peer.timm_module) if peer.timm_module is not None
                  else importlib.import_module(peer.namespace))
    except ImportError as error:
        return None, f"{peer.namespace} does not load here ({error})"
    found = getattr(module, peer.name, None)
    if found is None:
        return None, (f"{peer.package} {package_version(peer.package)} has no "
                      f"{peer.namespace}.{peer.name}")
    return found, None


def torch_implementation(torch, optimizer, dtype):
    """Which implementation of the peer runs: torch.optim's ``fused`` where torch has a fused
    CPU kernel for it, else ``default``; another peer's own default, ``foreach`` where that is
    its multi-tensor path (schedulefree's), else ``default`` (timm's on CPU: one tensor at a
    time, as torch.optim's)."""
    peer = PEERS[optimizer]
    cls, _ = peer_class(torch, peer)
    probe = torch.zeros(4, dtype=getattr(torch, dtype))
    probe.grad = torch.ones(4, dtype=getattr(torch, dtype))
    if peer.package != "torch":
        return "foreach" if cls([probe], **peer.options).defaults.get("foreach") else "default"
    try:
        cls([probe], fused=True, **peer.options).step()
        return "fused"
    except (RuntimeError, TypeError, ValueError):
        return "default"


def make_torch(torch, optimizer, params, grads, implementation):
    """The peer's step over torch copies of ``params`` and ``grads``."""
    peer = PEERS[optimizer]
    cls, _ = peer_class(torch, peer)
    tensors = [torch.from_numpy(value.copy()) for value in params.values()]
    for tensor, grad in zip(tensors, grads.values(), strict=True):
        tensor.grad = torch.from_numpy(grad.copy())
    extra = {"fused": True} if implementation == "fused" else {}
    instance = cls(tensors, **peer.options, **extra)
    if peer.train:
        instance.train()          # schedulefree steps only in train mode
    return instance.step


# The most targets bandwidth_probe reads and writes in one pass: the param and three state
# arrays, as the loops' slots. An update that writes more has no probe to compare with: two
# passes would read the source twice.
PROBE_TARGETS = 4


def make_probe(params, grads, written: int):
    """The bandwidth probe over the single param: ``written`` targets of its size."""
    (array,) = params.values()
    targets = [np.zeros_like(array) for _ in range(written)]
    source = next(iter(grads.values()))

    def step():
        kernels.bandwidth_probe(targets, source)
    return step


# --------------------------------------------------------------------------------------------
# Timing.

def set_threads(count: int) -> int | None:
    """Put fastopt's pool and NumPy's BLAS (through threadpoolctl, when installed) at
    ``count`` threads; return the BLAS libraries' largest thread count, None without
    threadpoolctl or BLAS library."""
    fastopt.set_num_threads(count)
    try:
        import threadpoolctl
    except ImportError:
        return None
    threadpoolctl.threadpool_limits(limits=count, user_api="blas")
    blas = [entry["num_threads"] for entry in threadpoolctl.threadpool_info()
            if entry.get("user_api") == "blas"]
    return max(blas) if blas else None


def allocated_bytes(step) -> int:
    """Peak bytes that one call allocates, as tracemalloc sees them."""
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        step()
        return max(0, tracemalloc.get_traced_memory()[1] - baseline)
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------------------------
# torch in a process of its own.

class TorchWorker:
    """The peers timed in a child process (``run.py --torch-worker``), one request at a time;
    ``available``: the optimizers whose peer loads there, ``missing``: why each other one's
    does not, ``versions``: the other peers' packages, None where not installed.

    torch's OpenMP threads spin for a while after each parallel region; in the benchmark's
    own process they would compete for the CPUs with fastopt's pool during fastopt's samples
    (and fastopt's with torch's), so that on a machine with few CPUs one contender's timing
    measured the other's idle threads. Here the parent waits while the child times, and the
    child sleeps on its pipe while the parent times.
    """

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__),
                                         "--torch-worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)
        info = self.ask({"op": "info"})
        self.version = info["torch"]
        self.default_threads = info["default_threads"]
        self.pid = info["pid"]
        self.missing = info["missing"]
        self.versions = info["versions"]
        self.available = set(PEERS) - set(self.missing)

    def ask(self, message: dict) -> dict:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"the torch worker (bench/run.py --torch-worker) exited with "
                               f"status {code} on request {message['op']!r}; its error is "
                               f"printed above")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.process.stdout.close()


def torch_worker(stdin=sys.stdin, stdout=sys.stdout) -> None:
    """The child's side of TorchWorker: JSON requests in, one JSON line out for each."""
    import torch
    step = None
    for line in stdin:
        message = json.loads(line)
        if message["op"] == "quit":
            break
        if message["op"] == "info":
            missing = {optimizer: peer_class(torch, peer)[1] for optimizer, peer in PEERS.items()}
            reply = {"torch": torch.__version__, "default_threads": torch.get_num_threads(),
                     "pid": os.getpid(),
                     "missing": {name: why for name, why in missing.items() if why is not None},
                     "versions": {package: package_version(package)
                                  for package in ("schedulefree", "timm")}}
        elif message["op"] == "setup":
            step = None
            workload = workload_for(message["optimizer"], workload_named(message["workload"]))
            params, grads = make_arrays(workload.shapes, message["dtype"])
            torch.set_num_threads(message["threads"])
            implementation = torch_implementation(torch, message["optimizer"], message["dtype"])
            step = make_torch(torch, message["optimizer"], params, grads, implementation)
            step()
            step()
            reply = {"implementation": implementation, "fastest": fastest_call(step)}
        else:  # "time"
            torch.set_num_threads(message["threads"])
            samples = time_block({"torch": step}, message["calls"], message["count"])["torch"]
            reply = {"samples": samples, "threads": torch.get_num_threads()}
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()


# --------------------------------------------------------------------------------------------
# One cell.

@dataclass(frozen=True)
class Plan:
    """How a cell is timed: ``threads`` (N) for every contender, also 1 thread when
    ``scaling``; ``blocks`` alternations of the timing blocks, ``settle`` seconds of idleness
    before each block, ``budget`` seconds of samples in all, at least ``min_rounds`` samples
    per contender."""
    threads: int
    budget: float
    min_rounds: int
    blocks: int = 3
    settle: float = 0.05
    scaling: bool = True


def summarize(seconds: list, workload: Workload, moved: int, calls: int) -> dict:
    """One contender's samples: their median and spread, and per element and per byte of the
    ``moved`` bytes one fused pass reads and writes."""
    median = float(np.median(seconds))
    return {
        "median_us": median * 1e6,
        "min_us": float(np.min(seconds)) * 1e6,
        "max_us": float(np.max(seconds)) * 1e6,
        "p10_us": float(np.percentile(seconds, 10)) * 1e6,
        "p25_us": float(np.percentile(seconds, 25)) * 1e6,
        "p75_us": float(np.percentile(seconds, 75)) * 1e6,
        "p90_us": float(np.percentile(seconds, 90)) * 1e6,
        "samples": len(seconds),
        "calls_per_sample": calls,
        "ns_per_element": median * 1e9 / workload.elements,
        "gb_per_s": moved / median / 1e9,
    }


def run_cell(optimizer, dtype, workload, plan: Plan, worker: TorchWorker | None) -> dict:
    """Time one cell: fastopt, NumPy and the probe one after the other in this process
    (one thread pool among them: fastopt's), the rule's peer in the torch worker, in separate
    blocks that alternate ``plan.blocks`` times; every contender at ``plan.threads`` threads,
    and fastopt, the probe and the peer at 1 thread too when ``plan.scaling``."""
    params, grads = make_arrays(workload.shapes, dtype)
    read, written = traffic(optimizer, workload.shapes)
    steps = {"fastopt": make_numpy_like(fastopt, optimizer, params, grads),
             "numpy": make_numpy_like(reference, optimizer, params, grads)}
    if workload.single_array and written <= PROBE_TARGETS * workload.elements:
        steps["probe"] = make_probe(params, grads, round(written / workload.elements))
    set_threads(plan.threads)
    fastest = {}
    for name, step in steps.items():          # the first call allocates state; then warm up
        step()
        step()
        fastest[name] = fastest_call(step)
    with_peer = worker is not None and optimizer in worker.available
    peer = PEERS[optimizer] if with_peer else None
    key = peer.contender if peer is not None else None    # its results' key: "torch", "timm"
    implementation = None
    if peer is not None:
        reply = worker.ask({"op": "setup", "optimizer": optimizer, "dtype": dtype,
                            "workload": workload.name, "threads": plan.threads})
        implementation = reply["implementation"]
        fastest[key] = reply["fastest"]
    calls = calls_for(min(fastest.values()))

    counts = [plan.threads] + ([1] if plan.scaling and plan.threads > 1 else [])
    one_thread = {name: steps[name] for name in ("fastopt", "probe") if name in steps}
    per_round = calls * (sum(fastest.values()) + (len(counts) - 1) * (
        sum(fastest[name] for name in one_thread) + fastest.get(key, 0.0)))
    count = max(math.ceil(plan.min_rounds / plan.blocks),
                min(100_000, int(plan.budget / (plan.blocks * max(per_round, 1e-9)))))
    samples: dict[tuple[str, int], list[float]] = {}
    threads_used: dict[tuple[str, int], int | None] = {}
    for block_index in range(plan.blocks):
        for threads in counts:
            time.sleep(plan.settle)               # let the last block's threads go to sleep
            blas = set_threads(threads)
            # each contender's samples in a row, as the peer's are in its process: every one
            # finds the caches as its own last call left them (not as another's evicted them)
            block = time_block(steps if threads == plan.threads else one_thread, calls, count,
                               first=block_index, consecutive=True)
            for name, seconds in block.items():
                samples.setdefault((name, threads), []).extend(seconds)
                threads_used[name, threads] = blas if name == "numpy" else \
                    fastopt.get_num_threads()
            if peer is not None:
                time.sleep(plan.settle)
                reply = worker.ask({"op": "time", "threads": threads, "calls": calls,
                                    "count": count})
                samples.setdefault((key, threads), []).extend(reply["samples"])
                threads_used[key, threads] = reply["threads"]
    set_threads(plan.threads)

    moved = (read + written) * np.dtype(dtype).itemsize
    label = peer.label(implementation) if peer is not None else None
    results, single = {}, {}
    for (name, threads), seconds in samples.items():
        result = summarize(seconds, workload, moved, calls)
        result["threads"] = threads_used[name, threads]
        if name == key:
            result["alloc_bytes"] = None
            result["implementation"] = implementation
            result["peer"] = label
        elif threads == plan.threads:
            result["alloc_bytes"] = allocated_bytes(steps[name])
        (results if threads == plan.threads else single)[name] = result

    def ratio(table, slow, fast):
        if slow in table and fast in table:
            return table[slow]["median_us"] / table[fast]["median_us"]
        return None

    def ratios(table, slow, names):
        return {name: ratio(table, slow, name) for name in names
                if name is not None and ratio(table, slow, name) is not None}

    cell = {
        "optimizer": optimizer, "dtype": dtype, "workload": workload.name,
        "description": workload.description, "arrays": len(workload.shapes),
        "elements": workload.elements, "bytes_per_update": moved, "threads": plan.threads,
        # the peer timed (PEERS), None without one; its results are under "torch" for
        # torch.optim, else under its package ("schedulefree", "timm")
        "peer": label,
        "results": results,
        "speedup_vs_numpy": ratios(results, "numpy", ("fastopt", key)),
        # torch.optim's cells only, as before there were other peers (bench/targets.py)
        "speedup_vs_torch": ratios(results, "torch", ("fastopt",)),
        # against the peer, whichever it is
        "speedup_vs_peer": ratios(results, key, ("fastopt",)) if key is not None else {},
        # probe time over the contender's: 1.0 means at the probe's bandwidth
        "fraction_of_probe": ratios(results, "probe", ("fastopt", "numpy", key)),
        # the same contenders on 1 thread (absent when the run's thread count is 1)
        "one_thread": single,
        "fraction_of_probe_one_thread": ratios(single, "probe", ("fastopt", key)),
        # time on 1 thread over time on N threads: above 1.0 the threads pay
        "scaling": {name: single[name]["median_us"] / results[name]["median_us"]
                    for name in single},
    }
    return cell


# --------------------------------------------------------------------------------------------
# The machine.

def machine_info(worker: TorchWorker | None, threads: int) -> dict:
    try:
        import Cython
        cython_version = Cython.__version__
    except ImportError:
        cython_version = "not installed here (needed only to build)"
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_model(),
        "cpu_simd": cpu_simd(),
        "logical_cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "fastopt_threads": threads,
        "threads": threads,
        "fastopt_simd": f"{fastopt.simd_level()} ({kernels.compiled_simd()})",
        "fastopt": f"{fastopt.__version__} at {os.path.dirname(fastopt.__file__)}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cython": cython_version,
        "compiler": compiler_version(),
        "torch": worker.version if worker is not None else None,
        "torch_threads": threads if worker is not None else None,
        "torch_default_threads": worker.default_threads if worker is not None else None,
        # the other peers' packages (schedulefree, timm): their versions, None where missing
        "peer_versions": worker.versions if worker is not None else None,
        "platform": platform.platform(),
    }


def print_header(info: dict, settings: dict) -> None:
    print("fastopt benchmark:", info["date_utc"], "UTC")
    print(f"  CPU      {info['cpu']} ({info['cpu_simd']}), {info['logical_cpus']} logical CPUs,"
          f" {info['cpus_usable']} usable")
    threads = info["threads"]
    threading = (f"{threads} thread{'s' if threads > 1 else ''} per large param (--threads to "
                 f"change)")
    print(f"  fastopt  {info['fastopt']}; {threading}, loops compiled for "
          f"{info['fastopt_simd']} (FASTOPT_SIMD to force a level)")
    print(f"  versions Python {info['python']}, NumPy {info['numpy']}, Cython {info['cython']}, "
          f"{info['compiler']}")
    if info["torch"]:
        others = [f"{package} {version}" for package, version in
                  (info.get("peer_versions") or {}).items() if version]
        torch_line = (f"in a process of its own, torch {info['torch']}: torch.optim"
                      + (f", and {' and '.join(others)} where torch.optim lacks the rule"
                         if others else ""))
    else:
        torch_line = (f"torch not installed: no peer column (torch.optim, schedulefree, timm; "
                      f"{INSTALL['torch']})")
    print(f"  peers    fastopt.reference (pure NumPy, the book's code); {torch_line}")
    by_reason: dict[str, list[str]] = {}
    for optimizer, why in (info.get("peers_missing") or {}).items():
        by_reason.setdefault(why, []).append(optimizer)
    for why, optimizers in by_reason.items():
        print(f"  skipped  no peer for {', '.join(optimizers)}: {why}")
    print(f"  threads  every contender at {threads} (fastopt's pool, torch.set_num_threads, "
          f"NumPy's BLAS through threadpoolctl"
          + ("" if info.get("blas_limited") else ": not installed, BLAS left as it is") + ")"
          + (f"; fastopt, the probe and the peer also at 1 thread for the 1->{threads} columns"
             if settings.get("scaling") and threads > 1 else ""))
    print(f"  method   {settings['budget']:g} s of samples per cell in "
          f"{settings.get('blocks', 1)} alternations of timing blocks (in each, every "
          f"contender's samples in a row; the peer in its own process; "
          f"{settings.get('settle', 0) * 1e3:g} ms idle before each block), at least "
          f"{settings['min_rounds']} samples each; medians, spread of the samples (min, max, "
          f"10th, 25th, 75th and 90th percentiles in the JSON); malloc warmed as in a training "
          f"process")
    print()


def format_bytes(value) -> str:
    if value is None:
        return "n/a"
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if value >= size:
            return f"{value / size:.0f}{unit}"
    return str(value)


# A contender whose samples spread wider than this around their median is flagged as noisy.
NOISY_SPREAD = 0.25


def spread(result: dict) -> float:
    """How far one contender's samples spread: (90th - 10th percentile) / median."""
    return (result["p90_us"] - result["p10_us"]) / result["median_us"]


def spread_text(results: dict) -> str:
    """The widest spread among a cell's contenders, and which ones are noisy."""
    spreads = {name: spread(result) for name, result in results.items() if name != "probe"}
    noisy = [name for name, value in spreads.items() if value > NOISY_SPREAD]
    text = f"{max(spreads.values()):.0%}"
    return text + (f" noisy: {', '.join(noisy)}" if noisy else "")


def peer_key(cell: dict) -> str | None:
    """The key of the cell's peer among its results (``torch``, ``schedulefree``, ``timm``),
    None without one. Runs from before there were other peers timed torch.optim only, under
    ``torch``."""
    return next((name for name, result in cell["results"].items() if "peer" in result),
                "torch" if "torch" in cell["results"] else None)


def peer_speedup(cell: dict) -> float | None:
    """fastopt's speedup over the cell's peer (ratio of medians), None without a peer."""
    return cell.get("speedup_vs_peer", cell["speedup_vs_torch"]).get("fastopt")


def peer_names(cells: list) -> dict[str, list[str]]:
    """Each optimizer's peers as the cells record them (one, unless torch fuses the rule for
    one dtype only), in the order of ALL_OPTIMIZERS; none for runs that did not record them."""
    names: dict[str, list[str]] = {}
    for optimizer in ALL_OPTIMIZERS:
        labels = sorted({c["peer"] for c in cells if c["optimizer"] == optimizer and c.get("peer")})
        if labels:
            names[optimizer] = labels
    return names


def print_row(cell: dict, first: bool) -> None:
    results = cell["results"]
    threads = cell.get("threads", 1)
    width = max(len(name) for name in ALL_OPTIMIZERS)    # ScheduleFreeAdamW
    if first:
        scaling = f"1->{threads}"
        print(f"{'optimizer':{width}} {'dtype':7} {'workload':14} {'fastopt us':>11} "
              f"{'numpy us':>10} {'peer us':>9} {'x numpy':>8} {'x peer':>8} {'ns/elem':>8} "
              f"{'GB/s':>6} {'of probe':>8} {scaling:>6} {'peer ' + scaling:>10} {'probe@1':>7}  "
              f"{'alloc fastopt/numpy':>19}  spread")
    key = peer_key(cell)
    peer = results.get(key) if key is not None else None
    fast = results["fastopt"]
    probe = cell["fraction_of_probe"].get("fastopt")
    probe_single = cell.get("fraction_of_probe_one_thread", {}).get("fastopt")
    scaling = cell.get("scaling", {})
    peer_us = f"{peer['median_us']:9.2f}" if peer else f"{'-':>9}"
    versus_peer = peer_speedup(cell)
    versus_peer_text = f"{versus_peer:8.2f}" if versus_peer else f"{'-':>8}"
    allocations = (f"{format_bytes(fast['alloc_bytes'])}/"
                   f"{format_bytes(results['numpy']['alloc_bytes'])}")

    def ratio_text(value, width):
        return f"{value:{width}.2f}" if value is not None else f"{'-':>{width}}"
    print(f"{cell['optimizer']:{width}} {cell['dtype']:7} {cell['workload']:14} "
          f"{fast['median_us']:11.2f} {results['numpy']['median_us']:10.2f} "
          f"{peer_us} {cell['speedup_vs_numpy']['fastopt']:8.2f} {versus_peer_text} "
          f"{fast['ns_per_element']:8.3f} {fast['gb_per_s']:6.1f} "
          f"{'' if probe is None else f'{probe:.0%}':>8} "
          f"{ratio_text(scaling.get('fastopt'), 6)} {ratio_text(scaling.get(key), 10)} "
          f"{'' if probe_single is None else f'{probe_single:.0%}':>7}  "
          f"{allocations:>19}  {spread_text(results)}",
          flush=True)


# --------------------------------------------------------------------------------------------
# The plot.

def plot(cells: list, path: str, info: dict) -> None:
    figure = speedup_figure(cells, info)
    figure.savefig(path, dpi=110)
    print(f"plot written to {path}")


def speedup_figure(cells: list, info: dict):
    """The speedups of the single-array workloads by size, one panel per dtype; the legend
    below the panels, in space of its own (constrained layout), clear of the axis titles."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    singles = [cell for cell in cells if cell["arrays"] == 1]
    dtypes = sorted({cell["dtype"] for cell in singles})
    if not singles:
        raise SystemExit("--plot needs single-array workloads (1e2 ... 1e7) in the run")
    figure, axes = plt.subplots(1, len(dtypes), figsize=(6.5 * len(dtypes), 5.6), sharey=True,
                                squeeze=False, layout="constrained")
    colors = dict(zip(ALL_OPTIMIZERS, plt.get_cmap("tab20").colors, strict=False))  # 20 colours
    for axis, dtype in zip(axes[0], dtypes, strict=True):
        for optimizer in ALL_OPTIMIZERS:
            rows = sorted((cell for cell in singles
                           if cell["dtype"] == dtype and cell["optimizer"] == optimizer),
                          key=lambda cell: cell["elements"])
            if not rows:
                continue
            sizes = [cell["elements"] for cell in rows]
            axis.plot(sizes, [cell["speedup_vs_numpy"]["fastopt"] for cell in rows], "o-",
                      color=colors[optimizer], label=f"fastopt {optimizer}")
            key = peer_key(rows[0])
            if key is not None and all(key in cell["speedup_vs_numpy"] for cell in rows):
                axis.plot(sizes, [cell["speedup_vs_numpy"][key] for cell in rows], "x--",
                          color=colors[optimizer], alpha=0.6, label=f"{key} {optimizer}")
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("elements in the parameter array")
        axis.set_title(dtype)
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("speedup over the book's NumPy code (x)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=8, ncol=6, loc="outside lower center")
    figure.suptitle(f"fastopt vs pure NumPy (solid) and each rule's torch peer (dashed: "
                    f"torch.optim, schedulefree, timm), higher is better\n{info['cpu']}, "
                    f"{info['date_utc']} UTC", fontsize=10)
    return figure


# --------------------------------------------------------------------------------------------
# The README's table.

def matrix_rules(cells: list) -> list[str]:
    """The rules of ``cells`` that take matrices only (Muon), timed on the networks' weight
    matrices (``workload_for``), in the order of ALL_OPTIMIZERS."""
    names = {cell["optimizer"] for cell in cells}
    return [name for name in ALL_OPTIMIZERS
            if name in names and getattr(fastopt, name)._param_ndim is not None]


def markdown(cells: list, info: dict, command: str) -> str:
    """Per workload and dtype, fastopt's median per update, the spread of its samples, its
    speedups and its thread scaling, per optimizer; the README's headline first."""
    optimizers = [name for name in ALL_OPTIMIZERS if any(c["optimizer"] == name for c in cells)]
    with_torch = any("fastopt" in cell["speedup_vs_torch"] for cell in cells)
    # the peers beyond torch.optim in the run (schedulefree, timm)
    others = sorted({peer_key(cell) for cell in cells if peer_speedup(cell) is not None}
                    - {"torch"})
    if others:
        against = (" and over its peer (" + "; ".join(
            (["torch.optim's class, `× torch`"] if with_torch else [])
            + [f"{package}'s torch implementation, `× {package}`" for package in others])
            + "; each named below the table)")
    else:
        against = " and over torch.optim" if with_torch else ""
    threads = info.get("threads", info["fastopt_threads"])
    same = "threads" in info             # runs before it: each contender at its own default
    with_scaling = any("fastopt" in cell.get("scaling", {}) for cell in cells)
    summary = targets_module().headline({"machine": info, "cells": cells})
    lines = [
        f"Measured {info['date_utc']} UTC on {info['cpu']} ({info['logical_cpus']} CPUs, loops "
        f"compiled for {info['fastopt_simd']}), Python {info['python']}, NumPy {info['numpy']}"
        + (f", torch {info['torch']}" if info["torch"] else "")
        + "".join(f", {package} {(info.get('peer_versions') or {}).get(package)}"
                  for package in others)
        + (f"; every contender at {threads} thread{'s' if threads > 1 else ''}" if same
           else f"; fastopt up to {threads} threads, torch at {info.get('torch_threads')}")
        + f", with `{command}`.",
        "",
    ]
    if summary:
        lines += [f"Headline: fastopt is {summary}.", ""]
    lines += [
        "Each cell: fastopt's median time per `update()` and the interquartile range of its "
        "samples over the median, then its speedup over the book's NumPy code"
        + against + " (ratios of medians"
        + (", every contender at the same thread count)" if same else ")")
        + (f", then fastopt's time on 1 thread over its time on {threads} (1→{threads})"
           if with_scaling else "") + ".",
        "",
        "| workload | dtype | " + " | ".join(optimizers) + " |",
        "|---|---|" + "---|" * len(optimizers),
    ]
    workloads = [w for w in all_workloads() if any(c["workload"] == w.name for c in cells)]
    for workload in workloads:
        for dtype in DTYPES:
            row = []
            for optimizer in optimizers:
                cell = next((c for c in cells if c["workload"] == workload.name
                             and c["dtype"] == dtype and c["optimizer"] == optimizer), None)
                if cell is None:
                    row.append("")
                    continue
                fast = cell["results"]["fastopt"]
                text = format_time(fast["median_us"])
                if "p25_us" in fast:
                    text += f" ±{(fast['p75_us'] - fast['p25_us']) / fast['median_us']:.0%}"
                text += f" · {cell['speedup_vs_numpy']['fastopt']:.1f}× np"
                if peer_speedup(cell) is not None:
                    text += f" · {peer_speedup(cell):.2f}× {peer_key(cell)}"
                if "fastopt" in cell.get("scaling", {}):
                    text += f" · {cell['scaling']['fastopt']:.2f}× 1→{cell['threads']}"
                row.append(text)
            if any(row):
                lines.append(f"| {workload.description} | {dtype} | " + " | ".join(row) + " |")
    matrices_only = matrix_rules(cells)
    if matrices_only:
        lines += ["", f"{', '.join(matrices_only)}: on a network's weight matrices only, the "
                  f"params it takes (its biases go to another rule through `fastopt.Partition`); "
                  f"no cell on single arrays."]
    peers = peer_names(cells)
    if peers:
        lines += ["", "Peers, each timed in a torch process of its own at the same thread count: "
                  + "; ".join(f"{optimizer} `{'`, `'.join(labels)}`"
                              for optimizer, labels in peers.items()) + "."]
    return "\n".join(lines) + "\n"


def targets_module():
    """bench/targets.py (the headline and the targets), loaded from beside this file."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets.py")
    spec = importlib.util.spec_from_file_location("fastopt_bench_targets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def format_time(microseconds: float) -> str:
    if microseconds >= 1000:
        return f"{microseconds / 1000:.1f} ms"
    return f"{microseconds:.1f} µs" if microseconds >= 10 else f"{microseconds:.2f} µs"


# --------------------------------------------------------------------------------------------

def parse_args(argv=None):
    names = [workload.name for workload in all_workloads()]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small budget, two alternations, no 1e7 arrays: about a minute")
    parser.add_argument("--json", metavar="FILE", help="write all results as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="plot speedup vs size (matplotlib)")
    parser.add_argument("--markdown", metavar="FILE.md", help="write the README's table")
    parser.add_argument("--from-json", metavar="FILE",
                        help="measure nothing: redraw --plot/--markdown from an earlier --json")
    parser.add_argument("--optimizer", nargs="+", choices=ALL_OPTIMIZERS, default=ALL_OPTIMIZERS)
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, default=DTYPES)
    parser.add_argument("--workload", "--size", nargs="+", choices=names, dest="workload",
                        help="which sizes and networks (default: all; --quick: all but 1e7)")
    parser.add_argument("--budget", type=float,
                        help="seconds of timing per cell (default 0.15 with --quick, else 1.5)")
    parser.add_argument("--min-rounds", type=int, default=5,
                        help="samples per contender and cell even past the budget (default 5)")
    parser.add_argument("--blocks", type=int,
                        help="alternations of the timing blocks per cell (default 2 with "
                             "--quick, else 3)")
    parser.add_argument("--settle", type=float, default=0.05,
                        help="seconds of idleness before each timing block, for the last "
                             "block's spinning threads to go to sleep (default 0.05)")
    parser.add_argument("--no-torch", action="store_true",
                        help="leave torch and so every peer out (torch.optim, schedulefree, timm)")
    parser.add_argument("--threads", type=int,
                        help="threads for every contender: fastopt per large param, the peer, "
                             "NumPy's BLAS (default: fastopt's own, from FASTOPT_NUM_THREADS "
                             "or OMP_NUM_THREADS, else the CPUs it may use, at most 8)")
    parser.add_argument("--no-scaling", action="store_true",
                        help="time only at --threads, not also at 1 thread (about half the "
                             "time)")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("min_rounds", "blocks", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.settle < 0:
        parser.error(f"--settle must be at least 0 seconds, got {args.settle}")
    if args.budget is None:
        args.budget = 0.15 if args.quick else 1.5
    if args.blocks is None:
        args.blocks = 2 if args.quick else 3
    if args.workload is None:
        args.workload = QUICK_WORKLOADS if args.quick else names
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.torch_worker:
        torch_worker()
        return 0
    if args.threads is not None:
        fastopt.set_num_threads(args.threads)
    if args.from_json:
        with open(args.from_json) as saved:
            results = json.load(saved)
        write_reports(args, results["cells"], results["machine"], results["settings"])
        return 0
    threads = fastopt.get_num_threads()
    worker = None
    if not args.no_torch and importlib.util.find_spec("torch") is not None:
        worker = TorchWorker()
    try:
        return run(args, argv, threads, worker)
    finally:
        if worker is not None:
            worker.close()


def run(args, argv, threads: int, worker: TorchWorker | None) -> int:
    plan = Plan(threads=threads, budget=args.budget, min_rounds=args.min_rounds,
                blocks=args.blocks, settle=args.settle, scaling=not args.no_scaling)
    info = machine_info(worker, threads)
    info["blas_limited"] = importlib.util.find_spec("threadpoolctl") is not None
    # the run's optimizers whose peer is not installed, and why: said once, in the header
    info["peers_missing"] = ({optimizer: worker.missing[optimizer] for optimizer in args.optimizer
                              if optimizer in worker.missing} if worker is not None else None)
    settings = {"quick": args.quick, "budget": args.budget, "min_rounds": args.min_rounds,
                "blocks": args.blocks, "settle": args.settle, "threads": threads,
                "scaling": plan.scaling and threads > 1,
                "optimizers": args.optimizer, "dtypes": args.dtype,
                "workloads": args.workload,
                "command": "python bench/run.py " + " ".join(sys.argv[1:] if argv is None
                                                              else argv)}
    warm_allocator()
    print_header(info, settings)
    workloads = [workload for workload in all_workloads() if workload.name in args.workload]
    cells = []
    started = time.perf_counter()
    for optimizer in args.optimizer:
        for dtype in args.dtype:
            for workload in workloads:
                taken = workload_for(optimizer, workload)   # Muon: the net's matrices
                if taken is None:                           # Muon: a single vector
                    continue
                cell = run_cell(optimizer, dtype, taken, plan, worker)
                print_row(cell, first=not cells)
                cells.append(cell)
    elapsed = time.perf_counter() - started
    matrices_only = matrix_rules(cells)
    if matrices_only:
        print(f"\n{', '.join(matrices_only)}: on the networks' weight matrices only (the params "
              f"it takes); no cell on single arrays")
    peers = peer_names(cells)
    if peers:
        print("\npeers ('peer' columns):", "; ".join(
            f"{optimizer} {', '.join(labels)}" for optimizer, labels in peers.items()))
    print(f"\n{len(cells)} cells in {elapsed:.0f} s. 'x numpy' and 'x peer' are speedups of "
          f"fastopt (median over median), 'x peer' over the rule's peer named above (torch.optim "
          f"where it has the rule, else schedulefree's or timm's torch implementation); "
          f"'of probe' is the bandwidth probe's time over "
          f"fastopt's on single arrays (100% = at the memory limit the probe reaches). "
          + (f"'1->{threads}' is fastopt's (and 'peer 1->{threads}' the peer's) time on 1 thread "
             f"over its time on {threads} (above 1.00 the threads pay); 'probe@1' is 'of probe' "
             f"with both on 1 thread. " if settings["scaling"] else "")
          + f"'spread' is the widest (90th - 10th percentile) / median among the contenders' "
          f"samples; above {NOISY_SPREAD:.0%} the contender is named as noisy: rerun that "
          f"cell before quoting it.")
    summary = targets_module().headline({"machine": info, "cells": cells})
    if summary:
        print(f"Headline: fastopt is {summary}.")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"schema": 1, "machine": info, "settings": settings, "cells": cells},
                      out, indent=1)
        print(f"results written to {args.json}")
    write_reports(args, cells, info, settings)
    return 0


def write_reports(args, cells: list, info: dict, settings: dict) -> None:
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(markdown(cells, info, settings["command"]))
        print(f"table written to {args.markdown}")
    if args.plot:
        plot(cells, args.plot, info)


if __name__ == "__main__":
    sys.exit(main())
