"""Threads without the GIL: fastopt declares that its compiled module runs without it.

On a free-threaded CPython (3.13t, 3.14t; tools/freethreaded.sh builds one and runs the tests
of threads and of the compiled module on it) importing fastopt must leave the GIL disabled,
and Python threads then run fastopt's Python layer, and each other's, truly at once. The
stress test below runs on any build: threads that update optimizers of their own, threads that
share one optimizer, and a thread that keeps changing the run-time settings (thread count,
flush-to-zero, the square-root method, the slow-path warning) while the updates run. Each
update must give the bits of the same updates run one after another, and the settings must
read back only values that were set.

The threads run in a subprocess, so a crash fails one test instead of the session;
FASTOPT_STRESS_SECONDS sets how long (tools/sanitize.sh runs it longer, under ASan).
"""
import json
import os
import subprocess
import sys
import sysconfig
import tempfile

import pytest

from _helpers import run_python

TESTS = os.path.dirname(os.path.abspath(__file__))
SECONDS = os.environ.get("FASTOPT_STRESS_SECONDS", "3")
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def _without_gil_setting():
    """The environment of a test process, less PYTHON_GIL: whether the GIL comes back on is
    what is checked."""
    return {key: value for key, value in os.environ.items() if key != "PYTHON_GIL"}


@pytest.mark.skipif(not FREE_THREADED, reason="a free-threaded CPython build (3.13t, 3.14t)")
def test_importing_fastopt_leaves_the_gil_disabled():
    # A module without the freethreading_compatible declaration makes CPython re-enable the
    # GIL on import, with a RuntimeWarning: -W error makes that warning fail the import.
    import fastopt

    code = ("import sys, fastopt\n"
            "print(fastopt.simd_level(), sys._is_gil_enabled())\n")
    for level in fastopt.simd_levels():
        environment = _without_gil_setting()
        environment.update(FASTOPT_SIMD=level)
        completed = _run_isolated(code, environment)
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert completed.stdout.split() == [level, "False"], completed.stdout
        assert "GIL" not in completed.stderr, completed.stderr


def _run_isolated(code, environment):
    """``python -W error -c code`` with exactly ``environment``, from a neutral directory."""
    return subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, env=environment, cwd=tempfile.gettempdir(), timeout=300)


STRESS = r"""
import json, random, sys, sysconfig, threading, time
import numpy as np
sys.path.insert(0, sys.argv[2])
import fastopt
from fastopt import _simd, reference
from _helpers import CONFIGS, LEARNING_RATES, as_param

seconds = float(sys.argv[1])
# Above the thread split (2**15 elements for the dividing rules, 2**18 for the streaming
# ones), in between, and a remainder-only size: the pool, the single-thread loop, the tail.
SIZES = {"pool": 2**18 + 9, "mid": 1001, "tail": 3}
OWN, SHARED, STEPS = 4, 2, 4
report = {"rounds": 0, "mismatches": [], "errors": [], "settings_changes": 0, "bad_reads": []}
stop = threading.Event()

def problem(data, config):
    # One optimizer's params and a fixed sequence of grads, float64 and float32 alike, in
    # the range where nothing goes subnormal (flush-to-zero then changes no bit).
    rng = np.random.default_rng(data)
    dtype = np.float32 if data % 2 else np.float64
    # (matrices of one row for a rule of 2-D params only: Muon)
    start = {k: as_param(config, rng.standard_normal(n).astype(dtype))
             for k, n in SIZES.items()}
    grads = [{k: as_param(config, (rng.standard_normal(n) + 3.0).astype(dtype))
              for k, n in SIZES.items()} for _ in range(STEPS)]
    return start, grads

def make(module, config):
    name, options = config
    return getattr(module, name)(lr=LEARNING_RATES[name], **options)

def check(label, ours, theirs, fast, ref):
    for key in SIZES:
        pairs = [(ours[key], theirs[key])] + [
            (getattr(fast, s)[key], getattr(ref, s)[key]) for s in ref.state_names]
        for a, b in pairs:
            if a.tobytes() != b.tobytes():
                report["mismatches"].append(f"{label}: {key}")
                return

def own_updates(index, round_, barrier, results):
    # An optimizer of this thread's own, on params of its own.
    try:
        config = CONFIGS[(index + OWN * round_) % len(CONFIGS)]
        start, grads = problem(100 * round_ + index, config)
        fast, params = make(fastopt, config), {k: v.copy() for k, v in start.items()}
        barrier.wait()
        for grad in grads:
            fast.update(params, grad)
        results[index] = (config, start, grads, fast, params)
    except BaseException as error:
        report["errors"].append(f"own {index}: {error!r}")

def shared_updates(optimizer, params, grad, barrier):
    # One optimizer stepped by several threads: each call is one whole step. The same grad
    # every time, so that the order in which the threads' calls come does not matter.
    try:
        barrier.wait()
        for _ in range(STEPS):
            optimizer.update(params, grad)
    except BaseException as error:
        report["errors"].append(f"shared: {error!r}")

def settings():
    # Keep changing every run-time setting while the updates run; each read must give a
    # value some thread set (never a torn or stale-garbage one).
    r = random.Random(5)
    soft = _simd.kernels.can_soft_sqrt()
    while not stop.is_set():
        count = r.randint(1, 4)
        fastopt.set_num_threads(count)
        fastopt.set_flush_denormals(r.random() < 0.5)
        fastopt.set_slow_path_warning(r.random() < 0.5)
        if soft:
            _simd.kernels.set_soft_sqrt(r.random() < 0.5)
        if not 1 <= fastopt.get_num_threads() <= 4:
            report["bad_reads"].append(fastopt.get_num_threads())
        if fastopt.get_flush_denormals() not in (True, False):
            report["bad_reads"].append(fastopt.get_flush_denormals())
        report["settings_changes"] += 1
        time.sleep(0.0001)

initial = (fastopt.get_num_threads(), fastopt.get_flush_denormals(),
           fastopt.get_slow_path_warning(), _simd.kernels.get_soft_sqrt())
changer = threading.Thread(target=settings)
changer.start()
deadline = time.monotonic() + seconds
round_ = 0
try:
    while time.monotonic() < deadline or round_ == 0:
        barrier = threading.Barrier(OWN + SHARED)
        results = [None] * OWN
        shared_config = CONFIGS[round_ % len(CONFIGS)]
        shared_start, shared_grads = problem(7 + round_, shared_config)
        shared = make(fastopt, shared_config)
        shared_params = {k: v.copy() for k, v in shared_start.items()}
        workers = [threading.Thread(target=own_updates, args=(i, round_, barrier, results))
                   for i in range(OWN)]
        workers += [threading.Thread(target=shared_updates,
                                     args=(shared, shared_params, shared_grads[0], barrier))
                    for _ in range(SHARED)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if report["errors"]:
            break
        # The same updates, one after another, by fastopt.reference.
        for index, (config, start, grads, fast, params) in enumerate(results):
            ref, theirs = make(reference, config), {k: v.copy() for k, v in start.items()}
            for grad in grads:
                ref.update(theirs, grad)
            check(f"round {round_} own {index} {config}", params, theirs, fast, ref)
        ref = make(reference, shared_config)
        theirs = {k: v.copy() for k, v in shared_start.items()}
        for _ in range(STEPS * SHARED):
            ref.update(theirs, shared_grads[0])
        check(f"round {round_} shared {shared_config}", shared_params, theirs, shared, ref)
        if getattr(shared, "iter", None) != getattr(ref, "iter", None):
            report["mismatches"].append(f"round {round_} shared step count")
        round_ += 1
        report["rounds"] = round_
finally:
    stop.set()
    changer.join()
# A setting set last, with no other thread left, reads back as set.
fastopt.set_num_threads(initial[0])
fastopt.set_flush_denormals(initial[1])
fastopt.set_slow_path_warning(initial[2])
_simd.kernels.set_soft_sqrt(initial[3])
restored = (fastopt.get_num_threads(), fastopt.get_flush_denormals(),
            fastopt.get_slow_path_warning(), _simd.kernels.get_soft_sqrt())
if restored != initial:
    report["bad_reads"].append(f"restored {restored} != {initial}")
report["gil"] = sys._is_gil_enabled() if hasattr(sys, "_is_gil_enabled") else True
report["free_threaded"] = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
report["mismatches"] = report["mismatches"][:10]
print(json.dumps(report))
"""


@pytest.mark.stress
@pytest.mark.parametrize("threads", ["1", "2"])
def test_threads_update_while_settings_change(threads):
    completed = run_python(STRESS, SECONDS, TESTS, timeout=300, FASTOPT_NUM_THREADS=threads)
    assert completed.returncode == 0, (
        f"the process died (return code {completed.returncode}):\n{completed.stderr[-3000:]}")
    report = json.loads(completed.stdout.splitlines()[-1])
    assert report["errors"] == [], report
    assert report["rounds"] > 0 and report["settings_changes"] > 0, report
    assert report["mismatches"] == [], report
    assert report["bad_reads"] == [], report
    # On a free-threaded build the threads above ran without the GIL, unless the environment
    # asked for it.
    if report["free_threaded"] and os.environ.get("PYTHON_GIL") != "1":
        assert report["gil"] is False, report
