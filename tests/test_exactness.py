"""fastopt's trajectories equal fastopt.reference's, bit for bit.

float64 must be bit-identical by contract. float32 is bit-identical too: the kernels round
every statement as NumPy >= 2 does (Python-float hyperparameters become float32; the book's
Adam does its last statement in float64 because lr_t is a NumPy float64), so the float32 bound
this suite enforces is 0 ulp.
"""
import numpy as np
import pytest

import fastopt
from fastopt import _base, _rules

from _helpers import (
    SHAPES,
    as_param,
    assert_same_bits,
    assert_same_state,
    assert_same_values,
    copy_params,
    make_pair,
    param_shapes,
    random_params,
)

STEPS = 60


def run_trajectories(config, shapes, dtype, steps=STEPS, seed=0, params_factory=None):
    rng = np.random.default_rng(seed)
    fast, ref = make_pair(config)
    shapes = param_shapes(config, shapes)   # matrices for a rule of 2-D params only (Muon)
    start = random_params(shapes, dtype, rng)
    ours = params_factory(start) if params_factory else copy_params(start)
    theirs = params_factory(start) if params_factory else copy_params(start)
    for _ in range(steps):
        grads = random_params(shapes, dtype, rng)
        fast.update(ours, grads)
        ref.update(theirs, grads)
        for key in start:
            assert_same_bits(ours[key], theirs[key])
        assert_same_state(fast, ref)
    return fast, ours


@pytest.mark.parametrize("shapes", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_trajectory_matches_reference_bit_for_bit(config, shapes, dtype):
    run_trajectories(config, shapes, dtype)


def _second_pass_loops():
    """The compiled loops of the rules' second passes (LAMB's, after its per-param norms)."""
    loops = set()
    for rule in _rules.RULES:
        optimizer = getattr(fastopt, rule.__name__)()
        loops.add(optimizer._next_step(optimizer.hyperparameter_values()).second)
    return loops - {None}


SECOND_PASS_LOOPS = _second_pass_loops()


@pytest.fixture
def kernel_calls(monkeypatch):
    """Record the size of each compiled call of a first pass that ran (a declined call updates
    nothing), so a test can prove which path updated the params; ``.second`` records those of
    a second pass."""
    calls = KernelCalls()
    run_loop = _base._run_loop

    def counted(loop, params, *args):
        done = run_loop(loop, params, *args)
        if done:
            (calls.second if loop in SECOND_PASS_LOOPS else calls).append(len(params))
        return done
    monkeypatch.setattr(_base, "_run_loop", counted)
    return calls


class KernelCalls(list):
    def __init__(self):
        super().__init__()
        self.second = []


def test_a_second_pass_runs_compiled_param_by_param(kernel_calls):
    # LAMB: every param's first pass in one call, then each param's second pass after its
    # norms, compiled too.
    shapes = SHAPES["two_layer_net"]
    run_trajectories(("LAMB", {}), shapes, np.float64, steps=3)
    assert kernel_calls == [len(shapes)] * 3
    assert kernel_calls.second == [1] * len(shapes) * 3


def test_a_rule_with_only_a_per_param_pass_runs_compiled_param_by_param(kernel_calls):
    # LARS: a first pass that only checks every param, in one call, then each param's pass
    # after its norms, compiled.
    shapes = SHAPES["two_layer_net"]
    run_trajectories(("LARS", {"momentum": 0.9, "weight_decay": 0.01}), shapes, np.float64,
                     steps=3)
    assert kernel_calls == [len(shapes)] * 3
    assert kernel_calls.second == [1] * len(shapes) * 3


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_contiguous_arrays_take_one_compiled_call(config, dtype, kernel_calls):
    # Without this, every exactness test could pass through the NumPy fallback.
    shapes = SHAPES["two_layer_net"]
    run_trajectories(config, shapes, dtype, steps=3)
    assert kernel_calls == [len(shapes)] * 3


# --- the slower path: inputs the kernels do not take, same numbers as the reference ----------

def transposed(params):
    return {key: np.ascontiguousarray(value.T).T if value.ndim == 2 else value.copy()
            for key, value in params.items()}


def strided(params):
    out = {}
    for key, value in params.items():
        base = np.zeros((*value.shape, 2), value.dtype)
        base[..., 0] = value
        out[key] = base[..., 0]
    return out


@pytest.mark.parametrize("factory", [transposed, strided], ids=["transposed", "strided"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_non_contiguous_views_match_reference(config, dtype, factory, kernel_calls):
    shapes = [(13, 7), (7,), (7, 4)]
    run_trajectories(config, shapes, dtype, steps=20, params_factory=factory)
    if factory is strided:
        assert kernel_calls == []          # every param is a view with a stride of 2 elements
    else:
        assert kernel_calls == [1] * 20    # only the 1-D param, between the transposed ones


def test_float16_matches_reference(config, kernel_calls):
    # In float16 Adam(paper_form=True)'s eps=1e-8 rounds to 0, so a zero grad gives 0/0 and
    # NumPy warns: both sides run NumPy there and must agree on the resulting NaNs too.
    with np.errstate(divide="ignore", invalid="ignore"):
        run_trajectories(config, [(9, 5), (5,)], np.float16, steps=20)
    assert kernel_calls == []


def test_float16_paper_adam_turns_a_zero_grad_into_nan_as_numpy_does():
    # The README's warning: eps=1e-8 rounds to 0 in float16, so m_hat/(sqrt(v_hat) + eps) is
    # 0/0 for a zero grad, on the NumPy path fastopt takes for float16, as in the reference.
    assert np.float16(1e-8) == 0
    ours, theirs = {"w": np.ones(3, np.float16)}, {"w": np.ones(3, np.float16)}
    grads = {"w": np.array([0.0, 1.0, 0.0], np.float16)}
    with np.errstate(invalid="ignore"):
        fastopt.Adam(paper_form=True).update(ours, grads)
        fastopt.reference.Adam(paper_form=True).update(theirs, grads)
    assert np.isnan(ours["w"]).tolist() == [True, False, True]
    assert_same_bits(ours["w"], theirs["w"])


@pytest.mark.parametrize("param_dtype, grad_dtype",
                         [(np.float32, np.float64), (np.float64, np.float32),
                          (np.float16, np.float32)])
def test_grad_of_another_float_dtype_matches_reference(config, param_dtype, grad_dtype,
                                                       kernel_calls):
    rng = np.random.default_rng(1)
    fast, ref = make_pair(config)
    shapes = param_shapes(config, [(6, 4), (4,)])
    start = random_params(shapes, param_dtype, rng)
    ours, theirs = copy_params(start), copy_params(start)
    for _ in range(20):
        grads = random_params(shapes, grad_dtype, rng)
        fast.update(ours, grads)
        ref.update(theirs, grads)
    for key in start:
        assert_same_bits(ours[key], theirs[key])
    assert_same_state(fast, ref)
    assert kernel_calls == []


def test_mixed_keys_keep_the_books_order(config, kernel_calls):
    # One array seen under two keys, the first a transposed view (NumPy path), the second the
    # contiguous array (kernel): the result depends on the order, which must be the book's.
    rng = np.random.default_rng(2)
    fast, ref = make_pair(config)
    ours_w = rng.standard_normal((5, 3))
    theirs_w = ours_w.copy()
    ours = {"wT": ours_w.T, "w": ours_w, "b": as_param(config, rng.standard_normal(3))}
    theirs = {"wT": theirs_w.T, "w": theirs_w, "b": ours["b"].copy()}
    for _ in range(10):
        g = rng.standard_normal((5, 3))
        grads = {"wT": g.T.copy(), "w": g, "b": as_param(config, rng.standard_normal(3))}
        fast.update(ours, grads)
        ref.update(theirs, grads)
        assert_same_bits(ours_w, theirs_w)
        assert_same_bits(ours["b"], theirs["b"])
    assert kernel_calls == [2] * 10   # "w" and "b" in one run after the NumPy path for "wT"


def test_grad_that_is_the_param_itself(config):
    # Nesterov reads the grad after writing the param: NumPy's statement-by-statement result.
    rng = np.random.default_rng(3)
    fast, ref = make_pair(config)
    ours = {"w": as_param(config, rng.standard_normal(17))}
    theirs = copy_params(ours)
    for _ in range(10):
        fast.update(ours, ours)
        ref.update(theirs, theirs)
        assert_same_bits(ours["w"], theirs["w"])
    assert_same_state(fast, ref)


def test_grad_overlapping_the_param(config):
    rng = np.random.default_rng(4)
    fast, ref = make_pair(config)
    ours_buf = rng.standard_normal(20)
    theirs_buf = ours_buf.copy()
    for _ in range(10):
        fast.update({"w": as_param(config, ours_buf[:16])},
                    {"w": as_param(config, ours_buf[4:])})
        ref.update({"w": as_param(config, theirs_buf[:16])},
                   {"w": as_param(config, theirs_buf[4:])})
        assert_same_bits(ours_buf, theirs_buf)


def test_read_only_grads_work(config):
    rng = np.random.default_rng(5)
    fast, ref = make_pair(config)
    ours = {"w": as_param(config, rng.standard_normal(33))}
    theirs = copy_params(ours)
    for _ in range(5):
        g = as_param(config, rng.standard_normal(33))
        g.flags.writeable = False
        fast.update(ours, {"w": g})
        ref.update(theirs, {"w": g})
    assert_same_bits(ours["w"], theirs["w"])


# --- NaN and inf propagate as in NumPy -------------------------------------------------------

def special_values(dtype):
    info = np.finfo(dtype)
    return np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, info.tiny, -info.max,
                     info.smallest_subnormal, 1.0], dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nan_and_inf_propagate_as_in_numpy(config, dtype):
    # The README's promise: a NaN exactly where NumPy gives one (its sign and payload aside),
    # every other result bit for bit NumPy's.
    values = special_values(dtype)
    # every (param, grad) combination of the special values, over a few steps
    param = as_param(config, np.repeat(values, values.size))
    grads = [as_param(config, g) for g in (np.tile(values, values.size),
                                           np.tile(values[::-1], values.size),
                                           np.ones(param.size, dtype))]
    fast, ref = make_pair(config)
    ours, theirs = {"w": param.copy()}, {"w": param.copy()}
    with np.errstate(all="ignore"):
        for g in grads:
            fast.update(ours, {"w": g})
            ref.update(theirs, {"w": g})
            assert_same_values(ours["w"], theirs["w"])
            assert_same_state(fast, ref, assert_same_values)
    assert np.isnan(ours["w"]).any()
