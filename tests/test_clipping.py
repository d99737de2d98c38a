"""Gradient clipping by global norm: fastopt.clip_grad_norm and the optimizers' max_grad_norm.

The norm is a blocked float64 sum of squares (fastopt.reference.sum_of_squares defines the
blocking), so it has the same bits compiled and in NumPy, at every SIMD level and thread count.
Against torch.nn.utils.clip_grad_norm_ and an exactly rounded sum (math.fsum) the tolerance is
1e-12 relative: torch sums in another order, and any order's rounding error is about
(terms per lane) * 2**-53 relative, about 6e-14 here.
"""
import json
import math
import tracemalloc

import numpy as np
import pytest

import fastopt
from fastopt import reference
from fastopt._simd import kernels

from _helpers import (
    CONFIGS,
    LEARNING_RATES,
    assert_same_bits,
    assert_same_state,
    config_id,
    param_shapes,
    run_python,
)

SIZES = [0, 1, 7, 8, 9, 4095, 4096, 4097, 3 * 4096 + 5, 2**20 + 7]


def grads_of(sizes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(size).astype(dtype) for size in sizes]


def exact_norm(grads):
    return math.sqrt(math.fsum(float(x) * float(x) for g in grads for x in g.ravel().tolist()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", SIZES)
def test_compiled_sum_equals_the_numpy_definition(size, dtype):
    (grad,) = grads_of([size], dtype, seed=size)
    compiled = kernels.sum_of_squares(grad)
    assert compiled is not None
    assert compiled.hex() == reference.sum_of_squares(grad).hex()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [0, 9, 4097, 2**20 + 7])
def test_a_scaled_sum_is_that_of_the_grad_scaled_in_its_dtype(size, dtype):
    # A second pass's norm of the grad as the loops read it: each element times the clip
    # factor, rounded to the grad's dtype, then squared in float64.
    (grad,) = grads_of([size], dtype, seed=size)
    scale = 0.1234567891234
    expected = reference.sum_of_squares(grad * scale)
    assert kernels.sum_of_squares(grad, scale).hex() == expected.hex()
    assert reference.sum_of_squares(grad, scale).hex() == expected.hex()
    if size and dtype is np.float32:   # the product was rounded to float32 first
        assert expected != reference.sum_of_squares(grad.astype(np.float64) * scale)


def test_arrays_the_loops_cannot_read_are_summed_by_numpy_with_the_same_bits():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((300, 70))
    for grad in (base.T, base[:, ::3], base.astype(np.float16), base.astype(">f8")):
        assert kernels.sum_of_squares(grad) is None
        expected = reference.sum_of_squares(np.ascontiguousarray(grad, dtype=np.float64))
        assert fastopt.clipping.global_norm([grad]) == math.sqrt(expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_is_within_1e_12_of_the_exact_sum(dtype):
    grads = grads_of([4097, 3 * 4096 + 5, 70_001], dtype)
    grads.append(np.full(50_000, 1e-3, dtype))   # many equal terms: the worst case for order
    norm = fastopt.clipping.global_norm(grads)
    exact = exact_norm(grads)
    assert abs(norm - exact) <= 1e-12 * exact


def test_matches_torch_clip_grad_norm():
    torch = pytest.importorskip("torch")
    for max_norm in (0.5, 10.0, 1e6):
        ours = grads_of([784 * 50, 50, 500, 10, 4097], np.float64, seed=3)
        tensors = [torch.zeros(g.shape, dtype=torch.float64) for g in ours]
        for tensor, grad in zip(tensors, ours, strict=True):
            tensor.grad = torch.from_numpy(grad.copy())
        expected = float(torch.nn.utils.clip_grad_norm_(tensors, max_norm, foreach=False))
        norm = fastopt.clip_grad_norm(ours, max_norm)
        assert isinstance(norm, float)
        assert abs(norm - expected) <= 1e-12 * expected
        for grad, tensor in zip(ours, tensors, strict=True):
            np.testing.assert_allclose(grad, tensor.grad.numpy(), rtol=1e-12, atol=0)


def test_scales_in_place_only_above_max_norm_with_torchs_factor():
    for dtype in (np.float32, np.float64):
        grads = {"W": np.full((3, 4), 2.0, dtype), "b": np.full(4, -2.0, dtype)}
        ids = {key: (id(g), g.ctypes.data) for key, g in grads.items()}
        norm = fastopt.clip_grad_norm(grads, 1.0)
        assert norm == math.sqrt(16 * 4.0)
        factor = 1.0 / (norm + 1e-6)
        for key, grad in grads.items():
            assert (id(grad), grad.ctypes.data) == ids[key]
            assert grad.dtype == dtype
            sign = 1.0 if key == "W" else -1.0
            assert np.all(grad == dtype(sign * 2.0) * dtype(factor))
        before = {key: g.copy() for key, g in grads.items()}
        fastopt.clip_grad_norm(grads, 100.0)   # below max_norm: untouched
        for key in grads:
            assert_same_bits(grads[key], before[key])


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_nonfinite_norms_as_torch_or_an_error(bad):
    grads = [np.array([1.0, bad, 3.0]), np.array([4.0])]
    before = [g.copy() for g in grads]
    with pytest.raises(ValueError, match="error_if_nonfinite"):
        fastopt.clip_grad_norm(grads, 1.0, error_if_nonfinite=True)
    for grad, old in zip(grads, before, strict=True):
        assert_same_bits(grad, old)
    norm = fastopt.clip_grad_norm(grads, 1.0)
    with np.errstate(all="ignore"):
        if np.isnan(bad):
            assert math.isnan(norm)
            assert all(np.isnan(g).all() for g in grads)   # torch: factor nan
        else:
            assert norm == math.inf
            # torch: factor max_norm/(inf + 1e-6) = 0, so inf*0 = nan and finite*0 = 0
            assert np.isnan(grads[0][1]) and grads[0][0] == 0 and grads[1][0] == 0


def test_clip_grad_norm_rejects_bad_input_and_changes_nothing():
    grads = [np.ones(3), np.ones(2)]
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        fastopt.clip_grad_norm(grads, 0.0)
    with pytest.raises(TypeError, match="grad 1 is dtype int64"):
        fastopt.clip_grad_norm([np.ones(3), np.ones(2, np.int64)], 1.0)
    read_only = np.ones(2)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastopt.clip_grad_norm([np.full(3, 5.0), read_only], 1.0)
    with pytest.raises(TypeError, match="dict, list or tuple"):
        fastopt.clip_grad_norm(np.ones(3), 1.0)
    assert all(np.all(g == 1) for g in grads)


def test_clip_grad_norm_allocates_no_arrays():
    grads = grads_of([2**20, 4097, 10], np.float32)
    fastopt.clip_grad_norm(grads, 1.0)
    tracemalloc.start()
    try:
        fastopt.clip_grad_norm(grads, 1.0)
        fastopt.clip_grad_norm(grads, 1e-3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4096, peak   # one float32 grad copy alone would be 4 MiB


NORMS_IN_A_PROCESS = """
import json, sys
import numpy as np
import fastopt
rng = np.random.default_rng(0)
out = {}
for dtype in ("float32", "float64"):
    grads = [rng.standard_normal(size).astype(dtype) for size in (2**20 + 7, 3 * 4096 + 5, 9)]
    out[dtype] = [fastopt.clipping.global_norm(grads).hex(),
                  [float(g[-1]) for g in grads if fastopt.clip_grad_norm(grads, 1.0)]]
print(json.dumps({"level": fastopt.simd_level(), "threads": fastopt.get_num_threads(),
                  "out": out}))
"""


def test_same_bits_at_every_simd_level_and_thread_count():
    results = []
    for level in fastopt.simd_levels():
        for threads in ("1", "2", "3"):
            completed = run_python(NORMS_IN_A_PROCESS, FASTOPT_SIMD=level,
                                   FASTOPT_NUM_THREADS=threads)
            assert completed.returncode == 0, completed.stderr
            result = json.loads(completed.stdout)
            assert result["level"] == level
            results.append(result["out"])
    assert all(out == results[0] for out in results[1:])
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float64"):
        grads = [rng.standard_normal(size).astype(dtype) for size in (2**20 + 7, 3 * 4096 + 5, 9)]
        assert results[0][dtype][0] == reference.global_norm(grads).hex()


@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_grad_norm_is_clip_then_update_and_leaves_the_grads(config, dtype):
    name, options = config
    options = {key: value for key, value in options.items() if key != "max_grad_norm"}
    rng = np.random.default_rng(5)
    shapes = param_shapes(config, [(40, 30), (30,), (1,)])   # Muon's: matrices
    fused = getattr(fastopt, name)(lr=LEARNING_RATES[name], max_grad_norm=0.5, **options)
    plain = getattr(fastopt, name)(lr=LEARNING_RATES[name], **options)
    slow = getattr(reference, name)(lr=LEARNING_RATES[name], max_grad_norm=0.5, **options)
    ours = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    theirs = [p.copy() for p in ours]
    numpy_path = [p.copy() for p in ours]
    for _ in range(8):
        grads = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
        before = [g.copy() for g in grads]
        fused.update(ours, grads)
        for grad, old in zip(grads, before, strict=True):
            assert_same_bits(grad, old)   # the caller's grads are left as they were
        slow.update(numpy_path, grads)
        clipped = [g.copy() for g in grads]
        fastopt.clip_grad_norm(clipped, 0.5)
        plain.update(theirs, clipped)
    for a, b, c in zip(ours, theirs, numpy_path, strict=True):
        assert_same_bits(a, b)
        assert_same_bits(a, c)
    assert_same_state(fused, slow)


def test_slow_path_warning_is_opt_in_and_names_the_param():
    params = {"W": np.ones((3, 4)).T, "b": np.ones(3)}   # W: a transposed view
    grads = {"W": np.ones((4, 3)), "b": np.ones(3)}
    optimizer = fastopt.SGD()
    assert not fastopt.get_slow_path_warning()
    optimizer.update(params, grads)   # no warning by default (filterwarnings = error)
    fastopt.set_slow_path_warning(True)
    try:
        with pytest.warns(fastopt.SlowPathWarning, match="param 'W'.*not C-contiguous"):
            optimizer.update(params, grads)
    finally:
        fastopt.set_slow_path_warning(False)
    with pytest.raises(TypeError, match="bool"):
        fastopt.set_slow_path_warning("yes")
