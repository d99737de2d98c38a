"""The software float64 square root of the AVX-512 build: the same bits as the hardware on a
subset of bench/verify_sqrt.py's classes, and the choice between the two at import
(fastopt/_simd.py). That every optimizer gives the reference's bits with it forced on is in
tests/test_simd.py."""
import importlib.util
import sys
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
