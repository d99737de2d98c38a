"""fastopt.Lookahead: after every k-th update of its base, slow += alpha*(p - slow); p = slow.

Lookahead is a wrapper, not a rule, so it is not in the registry: its sync is checked here
against a formula oracle written from scratch, the compiled loop against its NumPy definition
(``fastopt.reference.lookahead_rule``) to the bit, and the whole against timm's Lookahead
wrapping torch's Adam (float64, 100 steps) when timm and torch are importable.

timm's package ``__init__`` imports torchvision, which this environment need not have; its
optimizer files need only torch. So the test loads ``timm/optim/lookahead.py`` under a
private package name (its folder found without importing timm), and skips when timm or torch
is absent.

Tolerance against timm: normwise relative, ``max|ours - timm| <= RTOL * max|timm|`` per param
and per slow array, with RTOL = 1e-10 (tests/test_torch_parity.py's, for the same reason:
torch's Adam evaluates the same formula with other statements, so not bits). Measured over
100 steps (16 or 20 syncs) with seeds 0-9 and both (alpha, k) below: at most 3.7e-16, never
0; a step size off by one part in a million gives 8e-8 (``test_the_timm_tolerance_has_teeth``).
"""
from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt import SGD, Adam, Lookahead, Momentum, reference
from fastopt._simd import kernels

from _helpers import assert_same_bits, run_python, timm_optim

RTOL = 1e-10
SHAPES = {"W1": (7, 5), "b1": (5,), "W2": (5, 3), "s": ()}


def params_and_grads(rng, dtype=np.float64, steps=10):
    params = {key: np.array(rng.standard_normal(shape), dtype)
              for key, shape in SHAPES.items()}
    grads = [{key: np.array(rng.standard_normal(shape), dtype)
              for key, shape in SHAPES.items()} for _ in range(steps)]
    return params, grads


# --- the formula -----------------------------------------------------------------------------

def oracle_sgd_lookahead(params, grads, lr, alpha, k):
    """Lookahead around SGD from the paper's Algorithm 1 and timm's code, statement by
    statement, sharing nothing with fastopt: k fast steps, then the slow weights (a copy of
    the fast ones the first time) move alpha of the way and the fast ones restart there."""
    fast = {key: value.copy() for key, value in params.items()}
    slow = {}
    for t, grad in enumerate(grads, start=1):
        for key in fast:
            fast[key] = fast[key] - lr * grad[key]
        if t % k == 0:
            for key in fast:
                if key not in slow:
                    slow[key] = fast[key].copy()
                slow[key] = slow[key] + alpha * (fast[key] - slow[key])
                fast[key] = slow[key].copy()
    return fast, slow


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("alpha, k", [(0.5, 6), (0.8, 1), (0.3, 4), (0.0, 2), (1.0, 3)])
def test_lookahead_around_sgd_is_the_formula_to_the_bit(dtype, alpha, k):
    params, grads = params_and_grads(np.random.default_rng(0), dtype, steps=13)
    expected, slow = oracle_sgd_lookahead(params, grads, 0.1, alpha, k)
    optimizer = Lookahead(SGD(lr=0.1), alpha=alpha, k=k)
    for grad in grads:
        optimizer.update(params, grad)
    assert optimizer.iter == 13
    for key in params:
        assert_same_bits(params[key], expected[key])
        assert_same_bits(optimizer.slow[key], slow[key])


def test_the_first_sync_leaves_the_params_as_they_are():
    # timm's slow buffer starts as a copy of the fast weights at the first sync, so that sync
    # computes p + alpha*(p - p): the params of the base alone.
    params, grads = params_and_grads(np.random.default_rng(1))
    alone = copy.deepcopy(params)
    wrapped, base = Lookahead(Adam(lr=0.1), alpha=0.5, k=3), Adam(lr=0.1)
    for grad in grads[:3]:
        wrapped.update(params, grad)
        base.update(alone, grad)
    for key in params:
        assert_same_bits(params[key], alone[key])
        assert_same_bits(wrapped.slow[key], alone[key])
    wrapped.update(params, grads[3])
    base.update(alone, grads[3])
    assert_same_bits(params["W1"], alone["W1"])   # no sync at step 4
    for grad in grads[4:6]:
        wrapped.update(params, grad)
        base.update(alone, grad)
    assert params["W1"].tobytes() != alone["W1"].tobytes()   # the second sync moves them


def test_lookahead_around_any_base_is_its_update_then_the_numpy_sync():
    # Adam, Momentum: the base's own update (its bits), then reference.lookahead_rule.
    for base in (Adam(lr=0.05), Momentum(lr=0.05)):
        params, grads = params_and_grads(np.random.default_rng(2))
        alone = copy.deepcopy(params)
        twin = copy.deepcopy(base)
        wrapped = Lookahead(base, alpha=0.7, k=2)
        slow = {}
        for t, grad in enumerate(grads, start=1):
            wrapped.update(params, grad)
            twin.update(alone, grad)
            if t % 2 == 0:
                for key in alone:
                    slow.setdefault(key, alone[key].copy())
                    reference.lookahead_rule(alone[key], grad[key], slow[key], 0.7)
        for key in params:
            assert_same_bits(params[key], alone[key])


# --- the compiled loop and its NumPy definition ----------------------------------------------

def special_arrays(dtype, size, rng):
    """Random fast and slow weights; from 36 elements on, NaN, infinities, signed zeros,
    subnormals and extremes in the fast weights, the slow ones and both at once."""
    info = np.finfo(dtype)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, info.smallest_subnormal,
                        -info.smallest_subnormal, info.smallest_normal, info.max, -info.max,
                        info.eps, 1.0], dtype)
    fast = rng.standard_normal(size).astype(dtype)
    slow = rng.standard_normal(size).astype(dtype)
    n = special.size
    if size >= 3 * n:
        fast[:n] = special
        slow[n:2 * n] = special
        fast[2 * n:3 * n] = special
        slow[2 * n:3 * n] = special[::-1]
    return fast, slow


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("size", [0, 1, 37, 1023, 2**18 + 9])   # 2**18 + 9: split over threads
@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0, 0.0])
def test_the_compiled_sync_has_the_bits_of_its_numpy_definition(dtype, size, alpha):
    fast, slow = special_arrays(dtype, size, np.random.default_rng(size))
    grad = np.zeros_like(fast)
    fast_numpy, slow_numpy = fast.copy(), slow.copy()
    with np.errstate(all="ignore"):
        assert kernels.run("lookahead", [fast], [grad], [slow], None, None, None, None, 0.0,
                           {"lookahead_alpha": alpha})
        reference.lookahead_rule(fast_numpy, grad, slow_numpy, alpha)
    assert_same_bits(fast, fast_numpy)
    assert_same_bits(slow, slow_numpy)


LEVEL_WORKER = """
import sys
import numpy as np
import fastopt
from fastopt._simd import kernels
sys.path.insert(0, sys.argv[1])
import test_lookahead as here
arrays = {}
for dtype in (np.float64, np.float32):
    for size in (1023, 2**18 + 9):
        fast, slow = here.special_arrays(dtype, size, np.random.default_rng(size))
        with np.errstate(all="ignore"):
            assert kernels.run("lookahead", [fast], [np.zeros_like(fast)], [slow], None, None,
                               None, None, 0.0, {"lookahead_alpha": 0.3})
        arrays[f"{np.dtype(dtype).name} {size} fast"] = fast
        arrays[f"{np.dtype(dtype).name} {size} slow"] = slow
np.savez(sys.argv[2], **arrays)
print(fastopt.simd_level())
"""


def test_every_simd_level_and_thread_count_gives_the_numpy_bits(tmp_path):
    expected = {}
    for dtype in (np.float64, np.float32):
        for size in (1023, 2**18 + 9):
            fast, slow = special_arrays(dtype, size, np.random.default_rng(size))
            with np.errstate(all="ignore"):
                reference.lookahead_rule(fast, None, slow, 0.3)
            expected[f"{np.dtype(dtype).name} {size} fast"] = fast
            expected[f"{np.dtype(dtype).name} {size} slow"] = slow
    runs = [(level, "2") for level in fastopt.simd_levels()] + [(fastopt.simd_level(), "1")]
    for level, threads in runs:
        out = tmp_path / f"{level}-{threads}.npz"
        result = run_python(LEVEL_WORKER, str(Path(__file__).parent), str(out),
                            FASTOPT_SIMD=level, FASTOPT_NUM_THREADS=threads)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [level]
        found = np.load(out)
        for name, array in expected.items():
            assert_same_bits(found[name], array)


def test_params_the_loops_do_not_take_get_the_same_numbers():
    # Non-contiguous views and float16 take NumPy's rule; the numbers are the loop's.
    rng = np.random.default_rng(3)
    base = rng.standard_normal((6, 8))
    grads = [rng.standard_normal((6, 8)) for _ in range(6)]
    contiguous = {"w": base.T.copy()}
    strided_owner = base.copy()
    strided = {"w": strided_owner.T}
    assert not strided["w"].flags.c_contiguous
    one, two = Lookahead(Adam(lr=0.1), k=2), Lookahead(Adam(lr=0.1), k=2)
    for grad in grads:
        one.update(contiguous, {"w": grad.T.copy()})
        two.update(strided, {"w": grad.T.copy()})
    assert_same_bits(np.ascontiguousarray(strided["w"]), contiguous["w"])
    half = {"w": np.ones(5, np.float16)}
    Lookahead(SGD(lr=0.25), alpha=0.5, k=1).update(half, {"w": np.ones(5, np.float16)})
    assert half["w"].dtype == np.float16 and np.all(half["w"] == np.float16(0.75))


def test_a_key_that_appears_later_gets_its_slow_copy_at_its_first_sync():
    params = {"w": np.ones(3)}
    optimizer = Lookahead(SGD(lr=0.5), alpha=0.5, k=2)
    optimizer.update(params, {"w": np.ones(3)})
    optimizer.update(params, {"w": np.ones(3)})
    params["u"] = np.full(2, 4.0)
    grads = {"w": np.ones(3), "u": np.ones(2)}
    optimizer.update(params, grads)
    assert set(optimizer.slow) == {"w"}
    optimizer.update(params, grads)
    assert_same_bits(optimizer.slow["u"], np.full(2, 3.0))   # 4 - 0.5 - 0.5, then its copy
    assert_same_bits(params["u"], np.full(2, 3.0))


def test_list_and_scalar_params():
    # The book's params['x'] = -7.0: a scalar's new value is stored back.
    listed = [-7.0, np.ones(2)]
    optimizer = Lookahead(SGD(lr=0.5), alpha=0.5, k=1)
    optimizer.update(listed, [2.0, np.ones(2)])
    assert listed[0] == -8.0 and isinstance(optimizer.slow, list)
    optimizer.update(listed, [2.0, np.ones(2)])
    assert listed[0] == -8.5   # slow -8 moves half way to the fast -9


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("options, kind, message", [
    ({"alpha": 1.5}, ValueError, r"alpha must be a number with 0 <= alpha <= 1; got 1\.5"),
    ({"alpha": -0.1}, ValueError, "alpha must be a number with 0 <= alpha <= 1"),
    ({"alpha": np.nan}, ValueError, "alpha must be a number with 0 <= alpha <= 1"),
    ({"alpha": lambda step: 0.5}, TypeError, r"alpha must be a real number .* \(not a "
                                             r"schedule\)"),
    ({"alpha": "0.5"}, TypeError, "alpha must be a real number"),
    ({"k": 0}, ValueError, r"k must be an int >= 1 \(sync every k updates\); got 0"),
    ({"k": 2.0}, TypeError, r"k must be an int >= 1 .*got 2\.0 \(float\)"),
    ({"k": True}, TypeError, "k must be an int >= 1"),
])
def test_bad_settings_are_refused(options, kind, message):
    with pytest.raises(kind, match=message):
        Lookahead(Adam(), **options)
    # Set later, they are refused at the update, before the base steps.
    optimizer = Lookahead(Adam(), k=1)
    params = {"w": np.ones(3)}
    for name, value in options.items():
        setattr(optimizer, name, value)
    with pytest.raises(kind, match=message):
        optimizer.update(params, {"w": np.ones(3)})
    assert optimizer.iter == 0 and optimizer.base.iter == 0 and np.all(params["w"] == 1.0)


def test_bad_bases_are_refused():
    with pytest.raises(TypeError, match=r"base is a builtins\.dict; expected one of fastopt's"):
        Lookahead({})
    with pytest.raises(TypeError, match="base is already a Lookahead; wrap the optimizer once"):
        Lookahead(Lookahead(Adam()))


def test_a_rejected_update_changes_nothing():
    params, grads = params_and_grads(np.random.default_rng(4))
    optimizer = Lookahead(Adam(lr=0.1), k=2)
    for grad in grads[:2]:
        optimizer.update(params, grad)
    before = (copy.deepcopy(params), copy.deepcopy(optimizer.slow), copy.deepcopy(
        optimizer.base.m), optimizer.iter, optimizer.base.iter)

    def unchanged():
        assert optimizer.iter == before[3] and optimizer.base.iter == before[4]
        for key in params:
            assert_same_bits(params[key], before[0][key])
            assert_same_bits(optimizer.slow[key], before[1][key])
            assert_same_bits(optimizer.base.m[key], before[2][key])

    with pytest.raises(ValueError, match=r"grad 'b1' has shape \(4,\)"):   # the base's check
        optimizer.update(params, {**grads[2], "b1": np.ones(4)})
    unchanged()
    optimizer.update(params, grads[2])   # step 3: no sync
    before = (copy.deepcopy(params), copy.deepcopy(optimizer.slow), copy.deepcopy(
        optimizer.base.m), optimizer.iter, optimizer.base.iter)
    # At a sync step, slow weights that do not fit their param are refused before the base
    # steps (a param replaced by an array of another shape under the same key).
    optimizer.base.m["W1"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"state m\['W1'\] has shape \(2, 2\)"):
        optimizer.update(params, grads[3])
    optimizer.base.m["W1"] = before[2]["W1"].copy()
    optimizer.slow["W1"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"Lookahead's slow weights of param 'W1' have shape "
                                         r"\(2, 2\) and dtype float64, but the param has shape "
                                         r"\(7, 5\)"):
        optimizer.update(params, grads[3])
    optimizer.slow["W1"] = before[1]["W1"]
    unchanged()
    with pytest.raises(TypeError, match=r"keeps its slow weights by key \(a dict\) from "
                                        r"earlier calls, but params is now a list"):
        optimizer.update(list(params.values()), list(grads[3].values()))
    unchanged()


# --- checkpoints, copies, pickles ------------------------------------------------------------

def make_lookahead():
    """Also what the new process builds: a schedule of fastopt's own is in the checkpoint."""
    return Lookahead(Adam(lr=fastopt.schedules.CosineDecay(0.05, 20)), alpha=0.6, k=3)


RESUME = """
import sys
import numpy as np
import fastopt
sys.path.insert(0, sys.argv[2])
import test_lookahead as here
folder = sys.argv[1]
optimizer = here.make_lookahead()
optimizer.load_state_dict(fastopt.load(folder + "/lookahead.npz"))
saved = np.load(folder + "/params.npz")
params = {key: saved[key].copy() for key in saved.files}
grads = np.load(folder + "/grads.npz")
for step in range(5):
    optimizer.update(params, {key: grads[f"{step}.{key}"] for key in params})
np.savez(folder + "/resumed.npz", **params)
print("resumed", optimizer.iter)
"""


def test_exact_resume_in_a_new_process(tmp_path):
    # Saved after 4 updates (one sync behind it, the next one 2 updates on), resumed for 5.
    params, grads = params_and_grads(np.random.default_rng(5), steps=9)
    optimizer = make_lookahead()
    for grad in grads[:4]:
        optimizer.update(params, grad)
    fastopt.save(tmp_path / "lookahead.npz", optimizer)
    np.savez(tmp_path / "params.npz", **params)
    np.savez(tmp_path / "grads.npz", **{f"{step}.{key}": grad[key]
                                        for step, grad in enumerate(grads[4:]) for key in grad})
    for grad in grads[4:]:
        optimizer.update(params, grad)
    result = run_python(RESUME, str(tmp_path), str(Path(__file__).parent))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["resumed", "9"]
    resumed = np.load(tmp_path / "resumed.npz")
    for key in params:
        assert_same_bits(resumed[key], params[key])


def test_the_checkpoint_holds_the_settings_the_slow_weights_and_the_base(tmp_path):
    params, grads = params_and_grads(np.random.default_rng(6))
    optimizer = Lookahead(Adam(lr=0.1), alpha=0.25, k=2)
    for grad in grads[:3]:
        optimizer.update(params, grad)
    state = optimizer.state_dict()
    assert state["settings"] == {"alpha": 0.25, "k": 2} and state["iter"] == 3
    assert state["parts"][0]["class"]["qualname"] == "Adam" and state["parts"][0]["iter"] == 3
    assert state["state"]["slow"]["W1"] is not optimizer.slow["W1"]
    fastopt.save(tmp_path / "c.npz", optimizer)
    assert "state.slow.0" in np.load(tmp_path / "c.npz").files
    fresh = Lookahead(Adam(), alpha=0.9, k=7)
    fresh.load_state_dict(fastopt.load(tmp_path / "c.npz"))
    assert (fresh.alpha, fresh.k, fresh.iter, fresh.base.lr) == (0.25, 2, 3, 0.1)
    twin = copy.deepcopy(params)
    fresh.update(twin, grads[3])
    optimizer.update(params, grads[3])
    for key in params:
        assert_same_bits(twin[key], params[key])


def test_a_checkpoint_that_does_not_fit_changes_nothing():
    params, grads = params_and_grads(np.random.default_rng(7))
    optimizer = Lookahead(Adam(lr=0.1), k=2)
    for grad in grads[:2]:
        optimizer.update(params, grad)
    state = optimizer.state_dict()
    other = Lookahead(Momentum(lr=0.3), alpha=0.1, k=5)
    with pytest.raises(ValueError, match=r"its base \(Momentum\): the checkpoint is of class "
                                         r"fastopt.optimizers.Adam"):
        other.load_state_dict(state)
    assert (other.alpha, other.k, other.iter, other.slow) == (0.1, 5, 0, None)
    spoiled = copy.deepcopy(state)
    spoiled["settings"]["k"] = 0
    with pytest.raises(ValueError, match="k must be an int >= 1; got 0"):
        Lookahead(Adam()).load_state_dict(spoiled)
    with pytest.raises(ValueError, match=re.escape(
            "the checkpoint is of class fastopt.wrappers.Lookahead, but this optimizer is a "
            "fastopt.optimizers.Adam")):
        Adam().load_state_dict(state)
    with pytest.raises(ValueError, match=re.escape(
            "the checkpoint is of class fastopt.optimizers.Adam, but this optimizer is a "
            "fastopt.wrappers.Lookahead")):
        Lookahead(Adam()).load_state_dict(optimizer.base.state_dict())


def test_copies_and_pickles_have_the_same_future():
    params, grads = params_and_grads(np.random.default_rng(8))
    optimizer = Lookahead(Adam(lr=0.1), k=2)
    for grad in grads[:3]:
        optimizer.update(params, grad)
    copies = [copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))]
    results = []
    for twin in copies:
        twin_params = copy.deepcopy(params)
        for grad in grads[3:6]:
            twin.update(twin_params, grad)
        results.append(twin_params)
    for grad in grads[3:6]:
        optimizer.update(params, grad)
    for result in results:
        for key in params:
            assert_same_bits(result[key], params[key])
    assert copies[0].slow["W1"] is not optimizer.slow["W1"]


# --- timm ------------------------------------------------------------------------------------

def timm_lookahead():
    """timm's Lookahead class, loaded from its file without importing timm (whose __init__
    needs torchvision; ``_helpers.timm_optim``); skip when timm or torch is absent."""
    module = timm_optim("lookahead")
    if module is None:
        pytest.skip("timm and torch are not both installed (pip install --no-deps timm)")
    return module.Lookahead


def normwise_error(ours, theirs):
    scale = np.max(np.abs(theirs)) if theirs.size else 0.0
    return float(np.max(np.abs(ours - theirs)) / scale) if scale else 0.0


def run_against_timm(seed, lr=1e-2, alpha=0.5, k=6, steps=100, ours_lr=None):
    timm_class = timm_lookahead()   # skips without timm or torch
    import torch
    rng = np.random.default_rng(seed)
    shapes = {"W1": (13, 7), "b1": (7,), "W2": (7, 5)}
    start = {key: rng.standard_normal(shape) for key, shape in shapes.items()}
    grads = [{key: rng.standard_normal(shape) for key, shape in shapes.items()}
             for _ in range(steps)]
    tensors = {key: torch.tensor(value, dtype=torch.float64, requires_grad=True)
               for key, value in start.items()}
    theirs = timm_class(torch.optim.Adam(list(tensors.values()), lr=lr, foreach=False),
                        alpha=alpha, k=k)
    params = {key: value.copy() for key, value in start.items()}
    ours = Lookahead(Adam(lr=lr if ours_lr is None else ours_lr, paper_form=True),
                     alpha=alpha, k=k)
    for grad in grads:
        for key, tensor in tensors.items():
            tensor.grad = torch.tensor(grad[key], dtype=torch.float64)
        theirs.step()
        ours.update(params, grad)
    errors = []
    for key, tensor in tensors.items():
        errors.append(normwise_error(params[key], tensor.detach().numpy()))
        slow = theirs._base_optimizer.state[tensor]["lookahead_slow_buff"]
        errors.append(normwise_error(ours.slow[key], slow.numpy()))
    return max(errors)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("alpha, k", [(0.5, 6), (0.8, 5)])
def test_timm_lookahead_around_torch_adam_agrees(seed, alpha, k):
    assert run_against_timm(seed, alpha=alpha, k=k) <= RTOL


def test_the_timm_tolerance_has_teeth():
    # A step size off by one part in a million is seen: the tolerance is not a pass for all.
    assert run_against_timm(0, ours_lr=1e-2 * (1 + 1e-6)) > RTOL
