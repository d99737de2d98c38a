"""The software float64 square root of the AVX-512 build: the same bits as the hardware on a
subset of bench/verify_sqrt.py's classes, and the choice between the two at import
(fastopt/_simd.py): the variable, the table of CPU models, the measurement kept in a cache
file, the same method in every process. That every optimizer gives the reference's bits with
it forced on is in tests/test_simd.py."""
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt import _simd

from _helpers import run_python

TOOL = Path(__file__).resolve().parents[1] / "bench" / "verify_sqrt.py"
_spec = importlib.util.spec_from_file_location("verify_sqrt", TOOL)
verify_sqrt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(verify_sqrt)

KERNELS = verify_sqrt.software_kernels()
needs_software = pytest.mark.skipif(KERNELS is None, reason="no AVX-512 module on this machine")


@needs_software
@pytest.mark.parametrize("name", sorted(verify_sqrt.CLASSES))
def test_software_root_matches_the_hardware(name):
    rng = np.random.default_rng(sorted(verify_sqrt.CLASSES).index(name))
    x = verify_sqrt.CLASSES[name](rng, 400_000)
    wrong = verify_sqrt.mismatches(KERNELS, x)
    assert wrong.size == 0, [x[i].hex() for i in wrong[:5]]


@needs_software
def test_every_tail_length_and_special_lane():
    # Lengths 0..17 cover the masked tail of every width; each special value sits in a
    # vector of ordinary lanes (so the whole vector falls back) and beside zeros (which do not).
    info = np.finfo(np.float64)
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, -4.0, info.smallest_subnormal,
                info.smallest_normal, info.max, 2.0**-900, 2.0**900,
                np.nextafter(2.0**-900, 0), np.nextafter(2.0**900, np.inf)]
    for length in range(18):
        x = np.linspace(0.5, 3.0, length)
        assert verify_sqrt.mismatches(KERNELS, x).size == 0
        for special in specials:
            for where in range(length):
                y = x.copy()
                y[where] = special
                y[(where + 3) % length] = 0.0
                assert verify_sqrt.mismatches(KERNELS, y).size == 0, (length, special, where)


@needs_software
def test_the_verifier_sees_a_wrong_root():
    # The comparison itself must be able to fail: a root one unit off is reported.
    x = np.linspace(1.0, 2.0, 64)

    class OffByOne:
        @staticmethod
        def soft_sqrt(array):
            array[:] = np.nextafter(np.sqrt(array), np.inf)

    assert verify_sqrt.mismatches(OffByOne, x).size == 64


def test_choice_follows_the_timings_and_the_variable():
    def timings(hardware, software):
        return lambda: (hardware, software)

    assert _simd.choose_sqrt(True, None, timings(2.0, 1.0)) == "software"
    assert _simd.choose_sqrt(True, None, timings(1.0, 1.0)) == "hardware"
    assert _simd.choose_sqrt(True, None, timings(1.0, 1.2)) == "hardware"
    assert _simd.choose_sqrt(False, None, timings(9.0, 1.0)) == "hardware"   # not built

    def never():
        raise AssertionError("forced or not built: nothing is timed")

    assert _simd.choose_sqrt(False, None, never) == "hardware"
    assert _simd.choose_sqrt(True, " Software ", never) == "software"
    assert _simd.choose_sqrt(True, "hardware", never) == "hardware"
    with pytest.raises(ValueError, match="expected one of hardware, software"):
        _simd.choose_sqrt(True, "fast", never)
    with pytest.raises(ValueError, match="only in the AVX-512 build"):
        _simd.choose_sqrt(False, "software", never)


@pytest.mark.skipif(sys.platform == "win32", reason="subprocess environment")
def test_the_variable_is_obeyed_and_a_bad_one_fails_loudly():
    completed = run_python("import fastopt; print(fastopt.sqrt_method())",
                           FASTOPT_SQRT="hardware")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "hardware"
    completed = run_python("import fastopt", FASTOPT_SQRT="quick")
    assert completed.returncode != 0
    assert "FASTOPT_SQRT='quick': expected one of hardware, software" in completed.stderr
    if "avx512" in fastopt.simd_levels():
        completed = run_python("import fastopt; print(fastopt.sqrt_method())",
                               FASTOPT_SQRT="software", FASTOPT_SIMD="avx2")
        assert completed.returncode != 0
        assert "only in the AVX-512 build" in completed.stderr


def test_the_method_in_use_is_reported():
    assert fastopt.sqrt_method() in ("hardware", "software")
    assert _simd.kernels.get_soft_sqrt() == (fastopt.sqrt_method() == "software")
    if not _simd.kernels.can_soft_sqrt():
        assert fastopt.sqrt_method() == "hardware"
        with pytest.raises(ValueError, match="only in the AVX-512 build"):
            _simd.kernels.set_soft_sqrt(True)


@needs_software
def test_timing_both_roots_gives_two_positive_times():
    hardware, software = KERNELS.time_soft_sqrt(3)
    assert 0 < hardware < 0.1 and 0 < software < 0.1


# ---------------------------------------------------------------------------------------------
# The decision: a function of (CPU, build, FASTOPT_SQRT, cache, timer), tested with fakes

EMERALD_RAPIDS = _simd.CpuIdentity("GenuineIntel", 6, 207, "INTEL(R) XEON(R) PLATINUM 8581C")
ZEN4 = _simd.CpuIdentity("AuthenticAMD", 25, 17, "AMD EPYC 9B14")
ZEN4_OTHER_MODEL = _simd.CpuIdentity("AuthenticAMD", 25, 97, "AMD Ryzen 9 7950X")
UNKNOWN = _simd.CpuIdentity("GenuineIntel", 6, 143, "Intel(R) Xeon(R) Platinum 8480+")

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: INTEL(R) XEON(R)   PLATINUM 8581C
flags\t\t: fpu avx512f

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9B14
"""


def never():
    raise AssertionError("nothing should be timed here")


class Timer:
    """A fake measurement: each round gives the next (hardware, software) of ``rounds``."""

    def __init__(self, *rounds):
        self.rounds = itertools.cycle(rounds)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return next(self.rounds)


class FailingCache:
    """A cache that cannot be used: any access raises ``error``."""

    path = "/nowhere/sqrt.json"

    def __init__(self, error=None):
        self.error = error or PermissionError("read-only file system")

    def load(self):
        raise self.error

    def store(self, method, ratio):
        raise self.error


def cache_in(directory, cpu=UNKNOWN, version="1.0", module="fastopt._kernels_avx512"):
    return _simd.SqrtCache(str(directory), cpu, version, module)


def test_cpuinfo_gives_the_first_processors_identity(tmp_path):
    assert _simd.parse_cpuinfo(CPUINFO) == EMERALD_RAPIDS
    assert _simd.parse_cpuinfo("processor : 0\nBogoMIPS : 50.00\nCPU implementer : 0x41\n") \
        is None   # arm64's format names no vendor
    assert _simd.parse_cpuinfo("vendor_id : X\ncpu family : ?\n") == \
        _simd.CpuIdentity("X", None, None, "")
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert _simd.cpu_identity(str(path)) == EMERALD_RAPIDS
    # Without /proc/cpuinfo: platform's name, and no family or model for the table to match.
    fallback = _simd.cpu_identity(str(tmp_path / "missing"))
    assert fallback.family is None and fallback.model is None
    assert _simd.table_entry(fallback) is None


def test_the_table_decides_for_the_cpu_models_it_names():
    assert _simd.decide_sqrt(EMERALD_RAPIDS, True, None, FailingCache(), never)[0] == "software"
    for zen4 in (ZEN4, ZEN4_OTHER_MODEL):   # the whole family
        method, reason = _simd.decide_sqrt(zen4, True, None, FailingCache(), never)
        assert method == "hardware"
        assert "Zen 4" in reason
    method, reason = _simd.decide_sqrt(EMERALD_RAPIDS, True, None, None, never)
    assert "Emerald Rapids" in reason and "1.4-1.8x" in reason
    # A neighbouring model of the same Intel family is not covered by that row.
    assert _simd.table_entry(UNKNOWN) is None
    assert _simd.table_entry(EMERALD_RAPIDS._replace(vendor="AuthenticAMD")) is None
    for row in _simd.SQRT_TABLE:
        assert row.method in _simd.SQRT_METHODS


def test_without_the_software_root_it_is_the_hardware_whatever_the_cpu():
    for cpu in (EMERALD_RAPIDS, UNKNOWN):
        method, reason = _simd.decide_sqrt(cpu, False, None, FailingCache(), never)
        assert method == "hardware"
        assert "no software square root" in reason


def test_the_variable_overrides_table_cache_and_measurement():
    method, reason = _simd.decide_sqrt(ZEN4, True, "Software ", FailingCache(), never)
    assert (method, reason) == ("software", "FASTOPT_SQRT='Software '")
    assert _simd.decide_sqrt(EMERALD_RAPIDS, True, "hardware", FailingCache(), never)[0] == \
        "hardware"
    assert _simd.decide_sqrt(UNKNOWN, False, "hardware", None, never)[0] == "hardware"


def test_an_invalid_variable_is_refused_before_anything_else():
    with pytest.raises(ValueError, match=r"FASTOPT_SQRT='fast': expected one of hardware, "
                                         r"software"):
        _simd.decide_sqrt(EMERALD_RAPIDS, True, "fast", FailingCache(), never)
    with pytest.raises(ValueError, match=r"FASTOPT_SQRT='software': the software square root "
                                         r"is only in the AVX-512 build"):
        _simd.decide_sqrt(UNKNOWN, False, "software", FailingCache(), never)


def test_an_unknown_cpu_is_measured_once_and_then_read_from_the_cache(tmp_path):
    timer = Timer((2.0, 1.0))
    method, reason = _simd.decide_sqrt(UNKNOWN, True, None, cache_in(tmp_path), timer)
    assert method == "software"
    assert timer.calls == _simd.SQRT_ROUNDS > 1   # several rounds, not one timing
    assert "measured on this machine (hardware/software 2.00" in reason
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("sqrt-")
    assert json.loads(files[0].read_text())["method"] == "software"
    # Every later process reads it, whatever a new measurement would say.
    method, reason = _simd.decide_sqrt(UNKNOWN, True, None, cache_in(tmp_path), never)
    assert method == "software"
    assert "measured on this machine before" in reason and str(files[0]) in reason


def test_the_cache_is_keyed_by_cpu_version_and_module(tmp_path):
    _simd.decide_sqrt(UNKNOWN, True, None, cache_in(tmp_path), Timer((2.0, 1.0)))
    for other in (cache_in(tmp_path, cpu=UNKNOWN._replace(model=106)),
                  cache_in(tmp_path, version="1.1"),
                  cache_in(tmp_path, module="fastopt._kernels_avx10")):
        timer = Timer((1.0, 1.0))
        assert _simd.decide_sqrt(UNKNOWN, True, None, other, timer)[0] == "hardware"
        assert timer.calls == _simd.SQRT_ROUNDS
    assert len(list(tmp_path.iterdir())) == 4


def test_the_measurement_needs_a_clear_median_gain():
    gain = _simd.SOFT_SQRT_GAIN
    assert gain >= 1.2   # a wide margin: a near tie stays with the hardware root
    assert _simd.measure_sqrt(Timer((gain * 2, 2.0))) == pytest.approx(gain)
    # One disturbed round in either direction moves the median nowhere.
    assert _simd.measure_sqrt(Timer(*[(1.5, 1.0)] * 6, (0.2, 1.0))) == 1.5
    assert _simd.measure_sqrt(Timer(*[(1.0, 1.0)] * 6, (9.0, 1.0))) == 1.0
    for ratio, expected in ((1.0, "hardware"), (gain * 0.99, "hardware"), (gain, "software"),
                            (1.8, "software")):
        with tempfile.TemporaryDirectory() as directory:
            method, _ = _simd.decide_sqrt(UNKNOWN, True, None, cache_in(directory),
                                          Timer((ratio, 1.0)))
        assert method == expected, ratio


def test_a_noisy_machine_still_gives_every_process_the_first_ones_method(tmp_path):
    # Measurements scattered around the threshold, as on a busy machine: each fresh process
    # alone would flip, but the first one's result is the one every later process takes.
    rng = np.random.default_rng(0)

    def noisy():
        return _simd.SOFT_SQRT_GAIN * rng.uniform(0.7, 1.3), 1.0

    methods = {_simd.decide_sqrt(UNKNOWN, True, None, cache_in(tmp_path), noisy)[0]
               for _ in range(40)}
    alone = set()
    for _ in range(40):
        with tempfile.TemporaryDirectory() as directory:
            alone.add(_simd.decide_sqrt(UNKNOWN, True, None, cache_in(directory), noisy)[0])
    assert len(methods) == 1
    assert alone == {"hardware", "software"}   # what the cache prevents


def test_processes_measuring_at_once_take_the_first_stored_result(tmp_path):
    first, second = cache_in(tmp_path), cache_in(tmp_path)
    assert first.load() is None and second.load() is None   # both miss, both measure
    assert first.store("software", 1.5) == ("software", 1.5)
    assert second.store("hardware", 1.1) == ("software", 1.5)
    assert [path.name for path in tmp_path.iterdir()] == [os.path.basename(first.path)]


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[]", b"",
                                     b'{"method": "software", "ratio": 2.0}'])
def test_a_corrupt_cache_file_is_measured_again_and_replaced(tmp_path, content):
    cache = cache_in(tmp_path)
    with open(cache.path, "wb") as file:
        file.write(content)
    timer = Timer((1.0, 1.0))
    method, reason = _simd.decide_sqrt(UNKNOWN, True, None, cache, timer)
    assert method == "hardware" and timer.calls == _simd.SQRT_ROUNDS
    assert "measured on this machine (" in reason
    assert cache_in(tmp_path).load() == ("hardware", 1.0)
    assert len(list(tmp_path.iterdir())) == 1   # no temporary file left


def test_an_entry_with_an_unknown_method_is_not_used(tmp_path):
    cache = cache_in(tmp_path)
    with open(cache.path, "w") as file:
        json.dump({"key": cache.key, "method": "fast", "ratio": 3.0}, file)
    assert cache.load() is None


def test_without_a_usable_cache_an_unknown_cpu_takes_the_hardware_root(tmp_path):
    # No cache directory, an unwritable one, one that cannot be created: nothing is measured
    # (a lone measurement could differ between processes) and nothing is raised.
    for cache in (None, FailingCache(), FailingCache(OSError(30, "Read-only file system"))):
        method, reason = _simd.decide_sqrt(UNKNOWN, True, None, cache, never)
        assert method == "hardware"
        assert "the hardware root, by default" in reason
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = cache_in(blocker / "fastopt")   # its parent is a file
    method, reason = _simd.decide_sqrt(UNKNOWN, True, None, cache, never)
    assert method == "hardware" and "cannot be cached" in reason

    class StoreFails(_simd.SqrtCache):
        def store(self, method, ratio):
            raise PermissionError("disk full")

    method, reason = _simd.decide_sqrt(UNKNOWN, True, None, StoreFails(
        str(tmp_path), UNKNOWN, "1.0", "m"), Timer((2.0, 1.0)))
    assert method == "hardware" and "disk full" in reason


@pytest.mark.skipif(sys.platform == "win32", reason="HOME and XDG_CACHE_HOME")
def test_the_cache_directory_follows_xdg_and_home():
    assert _simd.default_cache_dir({"XDG_CACHE_HOME": "/c", "HOME": "/h"}) == "/c/fastopt"
    expected = ("/h/Library/Caches/fastopt" if sys.platform == "darwin"
                else "/h/.cache/fastopt")
    assert _simd.default_cache_dir({"XDG_CACHE_HOME": "relative", "HOME": "/h"}) == expected
    assert _simd.default_cache_dir({}) is None
    assert _simd.default_cache_dir({"HOME": ""}) is None


def test_the_reason_is_reported():
    reason = _simd.sqrt_reason()
    assert isinstance(reason, str) and reason
    assert fastopt.show_config("dicts")["simd"]["sqrt_reason"] == reason
    if not _simd.kernels.can_soft_sqrt() and not os.environ.get("FASTOPT_SQRT"):
        assert reason == f"the {fastopt.simd_level()} build has no software square root"


def _fresh_env(cache_home):
    env = {key: value for key, value in os.environ.items()
           if key not in ("FASTOPT_SIMD", "FASTOPT_SQRT")}
    env["XDG_CACHE_HOME"] = str(cache_home)
    return env


@pytest.mark.skipif(sys.platform == "win32", reason="subprocess environment")
def test_twenty_fresh_processes_take_the_same_method(tmp_path):
    # Started together, so that on a CPU outside the table they measure at the same time.
    code = ("import fastopt, fastopt._simd as s; "
            "print(fastopt.sqrt_method(), s.sqrt_reason(), sep='|')")
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=_fresh_env(tmp_path),
                                  cwd=tempfile.gettempdir()) for _ in range(20)]
    results = [(*process.communicate(timeout=600), process.returncode)
               for process in processes]
    outputs = []
    for out, err, returncode in results:
        assert returncode == 0 and err == "", err
        outputs.append(out.strip().split("|"))
    methods = {method for method, _ in outputs}
    assert len(methods) == 1, outputs
    assert methods <= set(_simd.SQRT_METHODS)
    cached = list(tmp_path.rglob("sqrt-*.json"))
    measured = any("not in fastopt's table" in reason for _, reason in outputs)
    assert len(cached) == (1 if measured else 0)
    if cached:
        assert json.loads(cached[0].read_text())["method"] in methods


@pytest.mark.skipif(sys.platform == "win32", reason="subprocess environment")
def test_import_is_silent_without_a_home_or_with_a_read_only_cache(tmp_path):
    env = _fresh_env(tmp_path)
    del env["XDG_CACHE_HOME"]
    env.pop("HOME", None)
    code = "import fastopt; print(fastopt.sqrt_method())"
    completed = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                               text=True, env=env, cwd=tempfile.gettempdir(), timeout=600)
    assert completed.returncode == 0 and completed.stderr == "", completed.stderr
    assert completed.stdout.strip() in _simd.SQRT_METHODS
    (tmp_path / "file").write_text("")
    env["XDG_CACHE_HOME"] = str(tmp_path / "file")   # not a directory
    completed = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                               text=True, env=env, cwd=tempfile.gettempdir(), timeout=600)
    assert completed.returncode == 0 and completed.stderr == "", completed.stderr
