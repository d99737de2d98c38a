"""Opt-in flush-to-zero: scoped to the compiled loops, off by default, never leaking out."""
import numpy as np
import pytest

import fastopt
from fastopt import _kernels, reference

needs_flush = pytest.mark.skipif(not _kernels.can_flush_denormals(),
                                 reason="this build cannot flush subnormals")
TINY = np.finfo(np.float64).tiny          # the smallest normal float64, about 2.2e-308


@pytest.fixture
def flushing():
    fastopt.set_flush_denormals(True)
    yield
    fastopt.set_flush_denormals(False)


def subnormal_result_case(size=5):
    # p - lr*g = 4e-308 - 3e-308 = 1e-308: a subnormal result of normal inputs
    assert 4e-308 > 3e-308 > TINY
    return ({"w": np.full(size, 4e-308)}, {"w": np.full(size, 1.0)}, 3e-308)


def test_off_by_default_and_bit_identical_to_numpy():
    assert fastopt.get_flush_denormals() is False
    params, grads, lr = subnormal_result_case()
    fastopt.SGD(lr=lr).update(params, grads)
    expected, _, _ = subnormal_result_case()
    reference.SGD(lr=lr).update(expected, grads)
    assert params["w"].tobytes() == expected["w"].tobytes()
    assert 0 < params["w"][0] < TINY


@needs_flush
@pytest.mark.parametrize("threads", [1, 2])
def test_flushing_zeroes_subnormal_results_and_inputs(flushing, threads):
    count = fastopt.get_num_threads()
    fastopt.set_num_threads(threads)
    try:
        size = 300_001   # split across threads when there are several
        params, grads, lr = subnormal_result_case(size)
        fastopt.SGD(lr=lr).update(params, grads)
        assert np.all(params["w"] == 0.0)                  # flush-to-zero on the result
        params = {"w": np.full(size, 1e-310)}                # subnormal input
        fastopt.SGD(lr=0.5).update(params, {"w": np.zeros(size)})
        assert np.all(params["w"] == 0.0)                  # denormals-are-zero on the input
    finally:
        fastopt.set_num_threads(count)


@needs_flush
def test_the_callers_floating_point_mode_is_restored(flushing):
    params, grads, lr = subnormal_result_case()
    fastopt.SGD(lr=lr).update(params, grads)
    assert params["w"][0] == 0.0
    # NumPy in the same thread still sees and makes subnormals
    result = np.array([4e-308]) - np.array([3e-308])
    assert 0 < result[0] < TINY
    assert np.array([1e-310])[0] * 1.0 != 0.0


@needs_flush
def test_the_numpy_path_is_never_flushed(flushing):
    base = np.full((5, 2), 4e-308)
    params = {"w": base[:, 0]}                               # a strided view: NumPy's path
    fastopt.SGD(lr=3e-308).update(params, {"w": np.ones(5)})
    assert np.all((params["w"] > 0) & (params["w"] < TINY))


def test_set_flush_denormals_takes_a_bool():
    with pytest.raises(TypeError, match="bool"):
        fastopt.set_flush_denormals(1)
    assert fastopt.get_flush_denormals() is False
