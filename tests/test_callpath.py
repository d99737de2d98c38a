"""The compiled call path (``_kernels.CallPlan``): an update whose hyperparameters are the objects
the last checked update checked runs in one compiled call. These tests fail if it ever runs
when it should not (a hyperparameter or option changed, however), runs with stale scalars, or
gives other bits, errors or state than the checked path and fastopt.reference."""
from __future__ import annotations

import copy
import math
import pickle
import threading
from unittest import mock

import numpy as np
import pytest

import fastopt
from fastopt import _base, reference, schedules

from _helpers import (
    CONFIGS,
    as_param,
    assert_same_bits,
    assert_same_state,
    config_id,
    copy_params,
    make_pair,
    param_shapes,
    random_params,
)
from registry import BY_NAME


def _restated(config):
    """Whether the rule's declaration says how a plan restates its step's scalars (not NAdam's
    or RAdam's, for example): its ``Step.form``."""
    name, options = config
    optimizer = getattr(fastopt, name)(**options)
    return optimizer._next_step(optimizer.hyperparameter_values()).form is not None


# The configurations a plan takes: every one whose step a plan restates, but not with gradient
# clipping (the norm is taken on the checked path).
PLANNED = [config for config in CONFIGS if _restated(config) and "max_grad_norm" not in config[1]]
UNPLANNED = [config for config in CONFIGS if config not in PLANNED]

# A second value for every hyperparameter, and a schedule for it.
OTHER = {"lr": 0.003, "momentum": 0.5, "decay_rate": 0.8, "rho": 0.7, "beta1": 0.6,
         "beta2": 0.95, "eps": 1e-3, "weight_decay": 0.02, "momentum_decay": 0.01}


def _values(optimizer):
    return {name: getattr(optimizer, name) for name in optimizer._all_hyperparameters()}


def _runs(optimizer):
    """Whether the optimizer's plan would run its next update (if nothing changes)."""
    return optimizer._call_plan is not None and optimizer._call_plan.runs


def _checked_path_only():
    """Make every update that reaches the checked path fail the test."""
    def fail(*args, **kwargs):
        raise AssertionError("the checked path ran")
    return mock.patch.multiple(_base.Optimizer, _update_kernel=fail, _update_checked=fail)


@pytest.mark.parametrize("config", PLANNED, ids=[config_id(c) for c in PLANNED])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_plan_takes_the_updates_after_the_first(config, dtype):
    fast, ref = make_pair(config)
    rng = np.random.default_rng(0)
    ours = random_params([(1,), (7,)], dtype, rng)
    theirs = copy_params(ours)
    for _ in range(2):   # the first notes the attributes, the second plans
        grads = random_params([(1,), (7,)], dtype, rng)
        fast.update(ours, grads)
        ref.update(theirs, grads)
    assert _runs(fast)
    with _checked_path_only():
        for _ in range(5):
            grads = random_params([(1,), (7,)], dtype, rng)
            fast.update(ours, grads)
            ref.update(theirs, grads)
    for key in ours:
        assert_same_bits(ours[key], theirs[key])
    assert_same_state(fast, ref)


@pytest.mark.parametrize("config", UNPLANNED, ids=[config_id(c) for c in UNPLANNED])
def test_no_plan_where_the_steps_are_not_restated(config):
    fast, _ = make_pair(config)
    params = {"W": as_param(config, np.ones(3))}
    fast.update(params, {"W": as_param(config, np.ones(3))})
    assert not _runs(fast)


def _change(optimizer, name, how):
    """Set hyperparameter ``name`` another way at each step: a new value, an equal value in a
    new object, a schedule, a NumPy scalar, back to a number. (The schedule and the last
    number go toward 0, or toward the range's floor where the registry declares one.)"""
    entry = BY_NAME[type(optimizer).__name__]
    value = OTHER.get(name, entry.other_values.get(name))
    if how == 0:
        return value
    current = getattr(optimizer, name)
    if how == 1 and not callable(current):
        return float.fromhex(float(current).hex())   # equal, but another object
    if how == 2:
        if name in entry.floors:
            floor = entry.floors[name]
            return schedules.LinearDecay(value, n=7, end=floor + 0.01 * (value - floor))
        return schedules.LinearDecay(value, n=7)
    if how == 3:
        return np.float32(value)
    if name in entry.floors:
        return entry.floors[name] + (value - entry.floors[name]) * 0.5
    return value * 0.5


@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("container", ["dict", "list"])
def test_reassigned_hyperparameters_give_the_references_bits(config, dtype, container):
    fast, ref = make_pair(config)
    rng = np.random.default_rng(1)
    shapes = param_shapes(config, [(1,), (5, 3), (33,)])   # Muon's: matrices
    ours = random_params(shapes, dtype, rng)
    if container == "list":
        ours = list(ours.values())
    theirs = copy.deepcopy(ours)
    names = list(fast._all_hyperparameters())
    for step in range(40):
        if step % 3 == 1:
            name = names[step % len(names)]
            value = _change(fast, name, (step // 3) % 5)
            setattr(fast, name, value)
            setattr(ref, name, value)
        grads = random_params(shapes, dtype, rng)
        if container == "list":
            grads = list(grads.values())
        fast.update(ours, grads)
        ref.update(theirs, grads)
        for key in (ours if container == "dict" else range(len(ours))):
            assert_same_bits(ours[key], theirs[key])
        assert_same_state(fast, ref)


@pytest.mark.parametrize("config", PLANNED, ids=[config_id(c) for c in PLANNED])
def test_options_set_between_updates_take_effect(config):
    for option in getattr(fastopt, config[0])._options:
        fast, ref = make_pair(config)
        rng = np.random.default_rng(2)
        ours = random_params([(1,), (9,)], np.float64, rng)
        theirs = copy_params(ours)
        for step in range(8):
            if step == 3:
                value = not getattr(fast, option)
                setattr(fast, option, value)
                setattr(ref, option, value)
                for state in ref.state_names:   # a state the option adds starts at zero
                    if getattr(fast, state) is None:
                        assert getattr(ref, state) is None
            grads = random_params([(1,), (9,)], np.float64, rng)
            fast.update(ours, grads)
            ref.update(theirs, grads)
            for key in ours:
                assert_same_bits(ours[key], theirs[key])


def _error(optimizer, params, grads):
    with pytest.raises((TypeError, ValueError)) as caught:
        optimizer.update(params, grads)
    return type(caught.value), str(caught.value)


BAD = [("lr", -1.0), ("lr", math.nan), ("lr", True), ("lr", "0.1"), ("lr", 10**400),
       ("weight_decay", -0.5), ("weight_decay", np.bool_(False)), ("beta1", 1.0),
       ("momentum", 1.0), ("eps", 0.0), ("lr", lambda step: -0.5 if step >= 3 else 0.1),
       ("beta2", schedules.LinearRamp(0.9, 1.5, n=4)), ("max_grad_norm", 0.0),
       ("max_grad_norm", "1"), ("weight_decay_filter", 3), ("amsgrad", 1),
       ("eps_inside_sqrt", None), ("velocity_first", "yes"), ("centered", 0)]


@pytest.mark.parametrize("config", PLANNED, ids=[config_id(c) for c in PLANNED])
def test_a_bad_value_raises_as_for_a_fresh_optimizer_and_changes_nothing(config):
    name, _ = config
    cls = getattr(fastopt, name)
    names = {*cls._checks, *cls._options, "max_grad_norm", "weight_decay_filter"}
    for attribute, bad in BAD:
        if attribute not in names:
            continue
        fast, _ = make_pair(config)
        rng = np.random.default_rng(3)
        params = random_params([(1,), (4,)], np.float64, rng)
        grads = random_params([(1,), (4,)], np.float64, rng)
        for _ in range(3):
            fast.update(params, grads)
        assert _runs(fast)
        fresh, _ = make_pair(config)
        fresh_params = copy_params(params)
        for _ in range(3):
            fresh.update(fresh_params, grads)
        before = (copy_params(params), copy.deepcopy(
            {state: getattr(fast, state) for state in fast.state_names}), fast.iter)
        for optimizer in (fast, fresh):
            setattr(optimizer, attribute, bad)
        # the fresh optimizer never planned anything: its error is the checked path's
        fresh._call_plan = None
        assert _error(fast, params, grads) == _error(fresh, fresh_params, grads), attribute
        for key in params:
            assert_same_bits(params[key], before[0][key])
        for state, container in before[1].items():
            for key in container:
                assert_same_bits(getattr(fast, state)[key], container[key])
        assert fast.iter == before[2]


@pytest.mark.parametrize("config", PLANNED, ids=[config_id(c) for c in PLANNED])
def test_assignments_through_the_instance_dict_are_seen(config):
    fast, ref = make_pair(config)
    rng = np.random.default_rng(5)
    ours = random_params([(1,), (6,)], np.float32, rng)
    theirs = copy_params(ours)
    for step in range(9):
        if step == 2:
            vars(fast)["lr"] = vars(ref)["lr"] = 0.125
        if step == 4:
            vars(fast).update(weight_decay=0.25)
            vars(ref).update(weight_decay=0.25)
        if step == 6:
            vars(fast)["lr"] = -0.0   # valid, and equal to 0.0 but not the same bits
            vars(ref)["lr"] = -0.0
        grads = random_params([(1,), (6,)], np.float32, rng)
        fast.update(ours, grads)
        ref.update(theirs, grads)
        for key in ours:
            assert_same_bits(ours[key], theirs[key])
    vars(fast)["lr"] = -2.0
    with pytest.raises(ValueError, match=r"lr must be finite and >= 0; got -2\.0"):
        fast.update(ours, random_params([(1,), (6,)], np.float32, rng))


def test_zero_and_negative_zero_are_not_confused():
    # 0.0 == -0.0, but lr*g differs in sign for a zero grad: the plan must see the new object.
    fast, ref = fastopt.SGD(lr=0.0), reference.SGD(lr=0.0)
    ours, theirs = {"w": np.zeros(1)}, {"w": np.zeros(1)}
    grads = {"w": np.zeros(1)}
    for lr in (0.0, -0.0, 0.0, -0.0):
        fast.lr = ref.lr = lr
        fast.update(ours, grads)
        ref.update(theirs, grads)
        assert_same_bits(ours["w"], theirs["w"])
    fast.weight_decay = ref.weight_decay = 1.0   # then the same for a coupled decay term
    for decay in (-0.0, 0.0):
        fast.weight_decay = ref.weight_decay = decay
        fast.update(ours, grads)
        ref.update(theirs, grads)
        assert_same_bits(ours["w"], theirs["w"])


class DoubledRate(fastopt.SGD):
    """A hyperparameter that is a property: its value changes without an assignment to it."""

    @property
    def lr(self):
        return 2 * self.base

    @lr.setter
    def lr(self, value):
        self.base = value


class OwnSchedule(fastopt.Adam):
    """A user's own step rule: the plan must not restate fastopt's in its place."""

    def _next_step(self, values):
        return super()._next_step({**values, "lr": values["lr"] * (self.iter + 1)})


class Plain(fastopt.Adam):
    """A subclass that changes nothing an update does: the plan serves it."""

    def describe(self):
        return "plain"


def test_a_subclass_with_a_hyperparameter_property_is_never_planned():
    fast = DoubledRate(lr=0.5)
    params = {"w": np.ones(1)}
    grads = {"w": np.ones(1)}
    fast.update(params, grads)
    assert not _runs(fast)
    fast.base = 0.25   # the property's value changes: lr is now 0.5
    fast.update(params, grads)
    assert_same_bits(params["w"], np.array([1.0 - 1.0 - 0.5]))


def test_a_subclass_with_its_own_step_is_never_planned():
    fast, ref = OwnSchedule(), reference.Adam()
    ours, theirs = {"w": np.ones(1)}, {"w": np.ones(1)}
    for step in range(4):
        grads = {"w": np.full(1, 0.5)}
        fast.update(ours, grads)
        ref.lr = 0.001 * (step + 1)
        ref.update(theirs, grads)
        assert_same_bits(ours["w"], theirs["w"])
    assert fast._call_plan is None


def test_a_subclass_that_changes_nothing_is_planned():
    fast, ref = Plain(), reference.Adam()
    ours, theirs = {"w": np.ones(2)}, {"w": np.ones(2)}
    for _ in range(4):
        fast.update(ours, {"w": np.full(2, 0.5)})
        ref.update(theirs, {"w": np.full(2, 0.5)})
    assert _runs(fast)
    assert_same_bits(ours["w"], theirs["w"])


def test_the_notes_flavour_aliases_are_seen():
    from fastopt import notes
    fast, ref = notes.Adam(), reference.Adam(eps=1e-8, paper_form=True)
    ours, theirs = {"w": np.ones(3)}, {"w": np.ones(3)}
    for step in range(6):
        if step == 3:
            fast.rho1 = ref.beta1 = 0.5   # through the notes' property, onto beta1
        fast.update(ours, {"w": np.full(3, 0.25)})
        ref.update(theirs, {"w": np.full(3, 0.25)})
        assert_same_bits(ours["w"], theirs["w"])


@pytest.mark.parametrize("config", PLANNED, ids=[config_id(c) for c in PLANNED])
def test_loading_a_checkpoint_then_updating(config):
    source, _ = make_pair(config)
    rng = np.random.default_rng(6)
    params = random_params([(1,), (8,)], np.float64, rng)
    steps = [random_params([(1,), (8,)], np.float64, rng) for _ in range(10)]
    for grads in steps[:5]:
        source.update(params, grads)
    saved = source.state_dict()
    halfway = copy_params(params)
    for grads in steps[5:]:
        source.update(params, grads)
    # A target with other hyperparameters, already planned, then loaded.
    name, options = config
    target = getattr(fastopt, name)(**{**options, "lr": 0.5})
    scratch = copy_params(halfway)
    for grads in steps[:3]:
        target.update(scratch, grads)
    assert _runs(target)
    target.load_state_dict(saved)
    for grads in steps[5:]:
        target.update(halfway, grads)
    for key in params:
        assert_same_bits(halfway[key], params[key])


def test_copies_and_pickles_start_without_a_plan_and_stay_independent():
    fast = fastopt.Adam(lr=0.01)
    params = {"w": np.ones(4)}
    grads = {"w": np.full(4, 0.5)}
    fast.update(params, grads)
    fast.update(params, grads)
    assert _runs(fast)
    for other in (copy.copy(fast), copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        assert other._call_plan is None
        assert "_call_plan" not in vars(other)
        other.lr = 0.5
        theirs = copy_params(params)
        other.update(theirs, grads)
        other.update(theirs, grads)
        assert fast.lr == 0.01
    ref = reference.Adam(lr=0.01)
    ours = copy_params(params)
    mine = copy.deepcopy(fast)
    ref.m, ref.v, ref.iter = copy.deepcopy(fast.m), copy.deepcopy(fast.v), fast.iter
    for _ in range(3):
        mine.update(ours, grads)
        ref.update(params, grads)
    assert_same_bits(ours["w"], params["w"])


def test_a_rejected_call_after_planned_ones_changes_nothing():
    fast = fastopt.Adam()
    params = {"a": np.ones(1), "b": np.ones(3)}
    grads = {"a": np.ones(1), "b": np.ones(3)}
    for _ in range(3):
        fast.update(params, grads)
    before = copy_params(params), copy_params(fast.m), copy_params(fast.v), fast.iter
    with pytest.raises(KeyError, match="grads has no entry for param 'b'"):
        fast.update(params, {"a": np.ones(1)})
    with pytest.raises(ValueError, match="grad 'b' has shape"):
        fast.update(params, {"a": np.ones(1), "b": np.ones(4)})
    for key in params:
        assert_same_bits(params[key], before[0][key])
        assert_same_bits(fast.m[key], before[1][key])
        assert_same_bits(fast.v[key], before[2][key])
    assert fast.iter == before[3]


@pytest.mark.parametrize("iteration", [-1, 2**53 - 1, 2**53, 2**64])
def test_a_step_count_the_plan_does_not_take_goes_the_checked_way(iteration):
    fast, ref = fastopt.Adam(), reference.Adam()
    ours, theirs = {"w": np.ones(2)}, {"w": np.ones(2)}
    fast.update(ours, {"w": np.ones(2)})
    ref.update(theirs, {"w": np.ones(2)})
    fast.iter = ref.iter = iteration
    outcomes = []
    for optimizer, params in ((fast, ours), (ref, theirs)):
        try:
            optimizer.update(params, {"w": np.full(2, 0.5)})
            outcomes.append(None)
        except Exception as error:   # the reference's own outcome, whatever it is
            outcomes.append((type(error), str(error)))
    assert outcomes[0] == outcomes[1]
    assert_same_bits(ours["w"], theirs["w"])
    assert fast.iter == ref.iter


# The forms the plan restates: for many steps and coefficients, its scalars have the bits of
# _next_step's (pow and sqrt from the C library, as Python's ** and math.sqrt).
FORM_CONFIGS = [("Adam", {}), ("Adam", {"paper_form": True}), ("AdamW", {}), ("Adamax", {})]

def _expected(name, paper, scalars):
    if name == "Adam" and not paper:
        return {"lr_t": scalars["lr_t"]}
    if name == "Adam":
        return {"bias_correction1": scalars["bias_correction1"],
                "bias_correction2": scalars["bias_correction2"]}
    if name == "AdamW":
        return {"step_size": scalars["step_size"],
                "bias_correction2_sqrt": scalars["bias_correction2_sqrt"]}
    return {"step_size": scalars["step_size"]}


@pytest.mark.parametrize("config", FORM_CONFIGS, ids=[config_id(c) for c in FORM_CONFIGS])
def test_the_plans_step_scalars_have_the_bits_of_next_step(config):
    name, options = config
    rng = np.random.default_rng(7)
    coefficients = [(0.001, 0.9, 0.999), (0.1, 0.0, 0.0), (3.0, -0.0, -0.0),
                    (1e-300, 1 - 2**-53, 1 - 2**-53), (0.5, 0.5, 0.99999999)]
    coefficients += [(float(lr), float(b1), float(b2)) for lr, b1, b2 in
                     zip(rng.uniform(0, 1, 20), rng.uniform(0, 1, 20), rng.uniform(0, 1, 20),
                         strict=True)]
    steps = [*range(1, 300), *rng.integers(300, 10**7, 200).tolist(), 2**31, 2**40 + 1,
             2**53 - 1]
    for lr, beta1, beta2 in coefficients:
        optimizer = getattr(fastopt, name)(lr=lr, beta1=beta1, beta2=beta2, **options)
        for _ in range(2):
            optimizer.update({"w": np.ones(1)}, {"w": np.ones(1)})
        plan = optimizer._call_plan
        assert _runs(optimizer)
        values = optimizer.hyperparameter_values()
        for t in steps:
            optimizer.iter = t - 1
            expected = _expected(name, options.get("paper_form", False),
                                 optimizer._next_step(values)[1])
            got = plan.step_scalars(t)
            for field, value in expected.items():
                assert float(value).hex() == got[field].hex(), (field, lr, beta1, beta2, t)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_threads_sharing_one_optimizer_each_take_whole_steps(name):
    # Every update has the same grads, so any order gives the bits of the same number of
    # steps in a row, if and only if each step is taken whole under the lock.
    fast = getattr(fastopt, name)(lr=0.01)
    control = getattr(fastopt, name)(lr=0.01)
    params = {"w": np.ones(5), "b": np.ones(1)}
    expected = copy_params(params)
    grads = {"w": np.linspace(-1, 1, 5), "b": np.full(1, 0.5)}
    fast.update(params, grads)
    control.update(expected, grads)
    count, threads = 400, 4

    def work():
        for _ in range(count):
            fast.update(params, grads)
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for _ in range(count * threads):
        control.update(expected, grads)
    assert fast.iter == control.iter == 1 + count * threads
    for key in params:
        assert_same_bits(params[key], expected[key])
