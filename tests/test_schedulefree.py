"""Schedule-Free AdamW and SGD: against the schedulefree package, and their two modes.

- Peers: 100 float64 steps of random grads on params of several shapes, through fastopt, its
  NumPy reference and schedulefree's ``AdamWScheduleFreeReference`` /
  ``SGDScheduleFreeReference`` (torch float64 tensors); then ``eval()`` and ``train()`` on
  both. torch rounds some statements differently (its CPU kernels fuse ``add(..., alpha=)``
  into multiply-adds), so the comparison is normwise (``PEER_RTOL``); the float state
  (``weight_sum``, ``lr_max``) is computed by the same Python statements and is equal.
  Skipped when schedulefree (or torch) is not installed.
- The modes: ``eval``/``train`` are idempotent, restore the training point to the bit on the
  compiled and on NumPy's path, refuse params that are not the optimizer's (nothing changes),
  and a checkpoint taken in eval mode resumes exactly; ``update`` in eval mode is refused.
- Bad hyperparameters: a clear error naming the hyperparameter and the value.
- Zero weight decay is no decay: the generic check (tests/test_weight_decay.py) needs state
  that never sees the params, but Schedule-Free's starts as copies of them; after the first
  update it never reads them again without decay, so inf and nan put into the params then
  leave the state exactly as in a finite twin (and with decay they do not).
"""
from __future__ import annotations

import types

import numpy as np
import pytest

import fastopt
from fastopt import optimizers, reference

from _helpers import assert_same_bits

STEPS = 100
SHAPES = {"W1": (7, 5), "b1": (5,), "cube": (3, 4, 2), "scalar": (), "one": (1,)}
#: fastopt against schedulefree's reference classes, float64, 100 steps: the largest
#: difference of a param (after any step), a state array or an evaluated param from theirs,
#: relative to that array's largest element. Measured over PEER_CASES (torch 2.13 CPU): at
#: most 7.0e-16 for AdamW and 1.6e-14 for SGD (its second case, on the one-element params);
#: 1e-11 leaves a margin of 600, and a learning rate off by one part in 10**9 still differs
#: by 2e-10 (test_the_peer_tolerance_sees_a_small_change).
PEER_RTOL = 1e-11

CLASSES = {"ScheduleFreeAdamW": "AdamWScheduleFreeReference",
           "ScheduleFreeSGD": "SGDScheduleFreeReference"}
# fastopt's state names -> schedulefree's
STATE_NAMES = {"z": "z", "x": "x", "v": "exp_avg_sq"}
PEER_CASES = [
    ("ScheduleFreeAdamW", {}),
    ("ScheduleFreeAdamW", {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6,
                           "weight_decay": 0.1, "warmup_steps": 10, "r": 0.5,
                           "weight_lr_power": 1.0}),
    ("ScheduleFreeSGD", {}),
    ("ScheduleFreeSGD", {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.05, "warmup_steps": 20,
                         "r": 1.0, "weight_lr_power": 0.0}),
]


def peer_id(case):
    name, options = case
    return name + ("-defaults" if not options else "-options")


def theirs_options(options):
    """fastopt's keywords in schedulefree's spelling (``betas``)."""
    options = dict(options)
    if "beta1" in options or "beta2" in options:
        options["betas"] = (options.pop("beta1", 0.9), options.pop("beta2", 0.999))
    return options


def start_params(seed=5):
    rng = np.random.default_rng(seed)
    return {key: rng.standard_normal(shape) for key, shape in SHAPES.items()}


def relative(actual, expected):
    largest = np.max(np.abs(expected), initial=0.0)
    return float(np.max(np.abs(actual - expected), initial=0.0) / largest) if largest else 0.0


def peer_run(name, options, lr_factor=1.0):
    """fastopt's run beside schedulefree's: the largest relative difference of the params
    after every step, of the state at the end, and of the params after eval() and train()
    again; and the float state and step count, ours and theirs."""
    torch = pytest.importorskip("torch")
    schedulefree = pytest.importorskip("schedulefree")
    params = start_params()
    tensors = {key: torch.tensor(value.copy(), dtype=torch.float64)
               for key, value in params.items()}
    theirs = getattr(schedulefree, CLASSES[name])(list(tensors.values()),
                                                  **theirs_options(options))
    theirs.train()   # schedulefree's AdamW starts in eval mode; fastopt's in train mode
    ours_options = dict(options)
    ours_options["lr"] = options.get("lr", getattr(fastopt, name)().lr) * lr_factor
    ours = getattr(fastopt, name)(**ours_options)
    rng = np.random.default_rng(11)
    worst = {"params": 0.0, "state": 0.0, "eval": 0.0, "train": 0.0}
    for _ in range(STEPS):
        grads = {key: rng.standard_normal(shape) for key, shape in SHAPES.items()}
        for key, tensor in tensors.items():
            tensor.grad = torch.tensor(grads[key])
        theirs.step()
        ours.update(params, grads)
        for key, tensor in tensors.items():
            worst["params"] = max(worst["params"], relative(params[key], tensor.numpy()))
    group = theirs.param_groups[0]
    float_state = ((ours.weight_sum, ours.lr_max, ours.iter),
                   (group["weight_sum"], group["lr_max"], group["k"]))
    for key, tensor in tensors.items():
        for mine, their in STATE_NAMES.items():
            if mine in ours.state_names:
                worst["state"] = max(worst["state"], relative(
                    getattr(ours, mine)[key], theirs.state[tensor][their].numpy()))
    for mode in ("eval", "train"):
        getattr(ours, mode)(params)
        getattr(theirs, mode)()
        for key, tensor in tensors.items():
            worst[mode] = max(worst[mode], relative(params[key], tensor.numpy()))
    return worst, float_state


@pytest.mark.parametrize("case", PEER_CASES, ids=peer_id)
def test_steps_and_modes_match_schedulefree(case, capsys):
    worst, (ours, theirs) = peer_run(*case)
    capsys.readouterr()   # schedulefree's AdamW prints each switch of mode
    assert max(worst.values()) <= PEER_RTOL, worst
    assert ours == theirs   # weight_sum, lr_max and the step count: the same Python statements


def test_the_peer_tolerance_sees_a_small_change(capsys):
    worst, _ = peer_run("ScheduleFreeAdamW", {"lr": 0.01}, lr_factor=1 + 1e-9)
    capsys.readouterr()
    assert worst["params"] > PEER_RTOL


# --- the two modes ------------------------------------------------------------------------

def trained(module, name, dtype=np.float64, steps=5, layout=None, **options):
    rng = np.random.default_rng(3)
    optimizer = getattr(module, name)(lr=0.05, **options)
    params = {key: rng.standard_normal(shape).astype(dtype) for key, shape in SHAPES.items()}
    if layout is not None:
        params = layout(params)
    for _ in range(steps):
        optimizer.update(params, {key: rng.standard_normal(np.shape(value)).astype(dtype)
                                  for key, value in params.items()})
    return optimizer, params


def transposed(params):
    return {key: np.ascontiguousarray(value.T).T if value.ndim >= 2 else value.copy()
            for key, value in params.items()}


def copies(params):
    return {key: np.array(value, copy=True) for key, value in params.items()}


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", [None, transposed], ids=["compiled", "views"])
def test_eval_and_train_switch_in_place_idempotently(name, dtype, layout):
    optimizer, params = trained(fastopt, name, dtype, layout=layout)
    ref, ref_params = trained(reference, name, dtype, layout=layout)
    y = copies(params)
    arrays = {key: params[key] for key in params}
    assert optimizer.training and optimizer.train_mode == 1.0
    optimizer.train(params)   # already training: nothing
    for key in params:
        assert_same_bits(params[key], y[key])
    for _ in range(2):
        optimizer.eval(params)
        assert not optimizer.training and optimizer.train_mode == 0.0
        for key in params:
            assert params[key] is arrays[key]
            assert_same_bits(params[key], optimizer.x[key])
    ref.eval(ref_params)
    for _ in range(2):
        optimizer.train(params)
        assert optimizer.training
        for key in params:
            assert params[key] is arrays[key]
            assert_same_bits(params[key], y[key])   # the step's bits, recomputed
    ref.train(ref_params)
    for key in params:
        assert_same_bits(params[key], ref_params[key])


@pytest.mark.parametrize("name", list(CLASSES))
def test_train_takes_the_compiled_loop_for_every_array_it_can(name, monkeypatch):
    calls = []
    compiled = optimizers._kernels

    def run(loop, params, *args):
        done = compiled.run(loop, params, *args)
        calls.append((loop, len(params), done))
        return done
    optimizer, params = trained(fastopt, name)
    y = copies(params)
    monkeypatch.setattr(optimizers, "_kernels", types.SimpleNamespace(run=run))
    optimizer.eval(params)
    optimizer.train(params)
    assert calls == [("schedulefree_train", len(SHAPES), True)]
    for key in params:
        assert_same_bits(params[key], y[key])


@pytest.mark.parametrize("name", list(CLASSES))
def test_scalar_params_are_stored_back_by_eval_and_train(name):
    for module in (fastopt, reference):
        optimizer = getattr(module, name)(lr=0.1)
        params = {"x": -7.0, "w": np.ones(3)}
        for _ in range(3):
            optimizer.update(params, {"x": params["x"] / 10.0, "w": np.full(3, 0.5)})
        y = params["x"]
        optimizer.eval(params)
        assert params["x"] == optimizer.x["x"] != y
        optimizer.train(params)
        assert params["x"] == y


@pytest.mark.parametrize("name", list(CLASSES))
def test_update_in_eval_mode_is_refused_and_changes_nothing(name):
    optimizer, params = trained(fastopt, name)
    optimizer.eval(params)
    before = copies(params), {key: value.copy() for key, value in optimizer.z.items()}
    weight_sum, count = optimizer.weight_sum, optimizer.iter
    for _ in range(2):   # the checked path, then any plan made meanwhile
        with pytest.raises(RuntimeError, match=r"eval mode.*train\(params\)"):
            optimizer.update(params, {key: np.ones(np.shape(value))
                                      for key, value in params.items()})
    for key in params:
        assert_same_bits(params[key], before[0][key])
        assert_same_bits(optimizer.z[key], before[1][key])
    assert (optimizer.weight_sum, optimizer.iter) == (weight_sum, count)


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.parametrize("change, error, words", [
    (lambda params: params.pop("b1"), KeyError, ["'b1'", "pass the params given to update"]),
    (lambda params: params.update(b1=np.zeros(6)), ValueError, ["'b1'", "(6,)", "(5,)"]),
    (lambda params: params.update(b1=np.zeros(5, np.float32)), ValueError,
     ["'b1'", "float32", "float64"]),
    (lambda params: params["b1"].setflags(write=False), ValueError, ["'b1'", "read-only"]),
    (lambda params: params.update(b1="b"), TypeError, ["'b1'", "str"]),
])
def test_eval_and_train_refuse_other_params_and_change_nothing(name, change, error, words):
    for mode in ("eval", "train"):
        optimizer, params = trained(fastopt, name)
        if mode == "train":
            optimizer.eval(params)
        change(params)
        before = copies({key: value for key, value in params.items()
                         if isinstance(value, np.ndarray)})
        flag = optimizer.train_mode
        with pytest.raises(error) as info:
            getattr(optimizer, mode)(params)
        for word in words:
            assert word in str(info.value)
        assert optimizer.train_mode == flag
        for key, value in before.items():
            assert_same_bits(params[key], value)
    with pytest.raises(TypeError, match="kept by key"):
        optimizer.eval([np.zeros(5)])


@pytest.mark.parametrize("name", list(CLASSES))
def test_eval_and_train_before_any_update_change_no_param(name):
    optimizer = getattr(fastopt, name)()
    params = {"w": np.ones(3)}
    optimizer.eval(params)
    assert not optimizer.training
    optimizer.train(params)
    optimizer.update(params, {"w": np.ones(3)})
    assert optimizer.iter == 1


@pytest.mark.parametrize("name", list(CLASSES))
def test_a_checkpoint_taken_in_eval_mode_resumes_exactly(name, tmp_path):
    rng = np.random.default_rng(8)
    grads = [{key: rng.standard_normal(shape) for key, shape in SHAPES.items()}
             for _ in range(12)]
    through, params = trained(fastopt, name, steps=0, warmup_steps=4, weight_decay=0.01)
    for step in grads:
        through.update(params, step)
    resumed, saved_params = trained(fastopt, name, steps=0, warmup_steps=4, weight_decay=0.01)
    for step in grads[:7]:
        resumed.update(saved_params, step)
    resumed.eval(saved_params)   # the model is saved with x, as schedulefree advises
    fastopt.save(tmp_path / "opt.npz", resumed)
    model = copies(saved_params)
    loaded = getattr(fastopt, name)(lr=0.05, warmup_steps=4, weight_decay=0.01)
    loaded.load_state_dict(fastopt.load(tmp_path / "opt.npz"))
    assert not loaded.training
    for scalar in type(loaded)._scalar_state:
        assert getattr(loaded, scalar) == getattr(resumed, scalar)
    loaded.train(model)
    for step in grads[7:]:
        loaded.update(model, step)
    for key in params:
        assert_same_bits(model[key], params[key])
    loaded.eval(model)
    through.eval(params)
    for key in params:
        assert_same_bits(model[key], params[key])


@pytest.mark.parametrize("name, attribute, value, words", [
    ("ScheduleFreeAdamW", "lr", -0.1, "lr must be finite and >= 0; got -0.1"),
    ("ScheduleFreeAdamW", "beta1", 1.0, "beta1 < 1; got 1.0"),
    ("ScheduleFreeAdamW", "beta2", -0.5, "0 <= beta2 < 1; got -0.5"),
    ("ScheduleFreeAdamW", "eps", 0.0, "eps must be finite and > 0; got 0.0"),
    ("ScheduleFreeAdamW", "warmup_steps", -1, "warmup_steps must be finite and >= 0; got -1.0"),
    ("ScheduleFreeAdamW", "r", float("nan"), "r must be finite and >= 0; got nan"),
    ("ScheduleFreeAdamW", "weight_lr_power", -2, "weight_lr_power must be finite and >= 0"),
    ("ScheduleFreeAdamW", "weight_decay", float("inf"), "weight_decay must be finite"),
    ("ScheduleFreeSGD", "momentum", 1.0, "momentum < 1; got 1.0"),
    ("ScheduleFreeSGD", "r", -0.5, "r must be finite and >= 0; got -0.5"),
    ("ScheduleFreeSGD", "warmup_steps", float("inf"), "warmup_steps must be finite"),
    ("ScheduleFreeSGD", "weight_lr_power", "2", "weight_lr_power must be a real number"),
])
def test_bad_hyperparameters_are_refused_by_name(name, attribute, value, words):
    error = TypeError if isinstance(value, str) else ValueError
    for module in (fastopt, reference):
        with pytest.raises(error) as info:
            getattr(module, name)(**{attribute: value})
        assert words in str(info.value)
    optimizer, params = trained(fastopt, name)
    before = copies(params)
    setattr(optimizer, attribute, value)
    with pytest.raises(error, match=attribute):
        optimizer.update(params, {key: np.ones(np.shape(v)) for key, v in params.items()})
    for key in params:
        assert_same_bits(params[key], before[key])
    assert optimizer.iter == 5


def test_an_overflowing_averaging_weight_is_refused_by_name():
    optimizer, params = trained(fastopt, "ScheduleFreeSGD", steps=1, r=2000.0)
    with pytest.raises(ValueError, match=r"overflows at step 1 \(r=2000.0"):
        optimizer.update(params, {key: np.ones(np.shape(v)) for key, v in params.items()})
    assert optimizer.iter == 1


@pytest.mark.parametrize("name, value, words", [
    ("train_mode", 0.5, "'train_mode' must be 1.0 (on) or 0.0 (off); got 0.5"),
    ("lr_max", -0.5, "'lr_max' must be -1 (before the first step)"),
    ("weight_sum", -1.0, "'weight_sum' must be a number >= 0"),
    ("last_beta1", 1.0, "last_beta1 < 1; got 1.0"),
])
def test_a_checkpoint_with_bad_float_state_is_refused(name, value, words):
    optimizer, _ = trained(fastopt, "ScheduleFreeAdamW")
    state = optimizer.state_dict()
    state[name] = value
    target = fastopt.ScheduleFreeAdamW()
    with pytest.raises(ValueError) as info:
        target.load_state_dict(state)
    assert words in str(info.value)
    assert target.iter == 0 and target.z is None


# --- zero weight decay is no decay, after the first update -----------------------------------

SPECIAL = {(0, 0): np.inf, (1, 1): -np.inf, (2, 2): np.nan}


def state_after_specials(module, name, dtype, special, **decay):
    """Five updates; after the first, the params' SPECIAL places are set to inf and nan (or,
    for the twin, to 0.5) before every update."""
    rng = np.random.default_rng(6)
    optimizer = getattr(module, name)(lr=0.05, **decay)
    params = {"W": rng.standard_normal((6, 5)).astype(dtype)}
    with np.errstate(invalid="ignore", over="ignore"):
        for step in range(5):
            if step:
                for index, value in SPECIAL.items():
                    params["W"][index] = value if special else 0.5
            optimizer.update(params, {"W": rng.standard_normal((6, 5)).astype(dtype)})
    return {name: getattr(optimizer, name)["W"] for name in optimizer.state_names}


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.parametrize("module", [fastopt, reference], ids=["fastopt", "reference"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("zero", [0.0, 0, lambda step: 0.0], ids=["0.0", "int-0", "schedule"])
def test_zero_decay_never_reads_the_params_after_the_first_update(name, module, dtype, zero):
    special = state_after_specials(module, name, dtype, True, weight_decay=zero)
    twin = state_after_specials(module, name, dtype, False, weight_decay=zero)
    for state in special:
        assert_same_bits(special[state], twin[state])
    decayed = state_after_specials(module, name, dtype, True, weight_decay=0.01)
    assert not np.isfinite(decayed["z"]).all()   # the check can fail
