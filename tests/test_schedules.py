"""fastopt.schedules: each formula at its first step, at its boundaries and after its end;
reprs, equality, pickling and plain data; and schedules inside every optimizer, which must give
the bits of setting the hyperparameter by hand before each update."""
from __future__ import annotations

import copy
import json
import math
import pickle

import numpy as np
import pytest

import fastopt
from fastopt import reference, schedules
from fastopt.schedules import (
    Constant,
    CosineDecay,
    ExponentialDecay,
    InverseTimeDecay,
    Join,
    LinearDecay,
    LinearRamp,
    StepDecay,
    Warmup,
)

from _helpers import param_shapes

# --- the formulas, written out -----------------------------------------------------------------
# (schedule, {step: expected}): the first step, the steps around each boundary, and well after.

FORMULAS = [
    # The notes: a = k/n; (1 - a)*lr_0 + a*lr_n, lr_n = 1% of lr_0 (0.01*0.1 is 0.001 in
    # float64), constant after n.
    (LinearDecay(0.1, 10),
     {0: 0.1, 1: (1 - 0.1) * 0.1 + 0.1 * 0.001, 5: 0.5 * 0.1 + 0.5 * 0.001,
      9: (1 - 0.9) * 0.1 + 0.9 * 0.001, 10: 0.001, 11: 0.001, 10**9: 0.001}),
    (LinearDecay(0.5, 4, end=0.1),
     {0: 0.5, 1: 0.75 * 0.5 + 0.25 * 0.1, 3: 0.25 * 0.5 + 0.75 * 0.1, 4: 0.1, 5: 0.1}),
    (LinearDecay(0.1, 1),
     {0: 0.1, 1: 0.001, 2: 0.001}),
    # The notes' momentum, small at first and then larger.
    (LinearRamp(0.5, 0.9, 4),
     {0: 0.5, 1: 0.75 * 0.5 + 0.25 * 0.9, 3: 0.25 * 0.5 + 0.75 * 0.9, 4: 0.9, 5: 0.9,
      1000: 0.9}),
    (LinearRamp(0.9, 0.5, 2),
     {0: 0.9, 1: 0.5 * 0.9 + 0.5 * 0.5, 2: 0.5, 3: 0.5}),
    (ExponentialDecay(0.1, 0.5),
     {0: 0.1, 1: 0.05, 2: 0.1 * 0.25, 3: 0.1 * 0.125, 40: 0.1 * 2.0**-40}),
    (ExponentialDecay(0.1, 0.99),
     {0: 0.1, 1: 0.1 * 0.99, 2: 0.1 * 0.99**2, 100: 0.1 * 0.99**100}),
    (StepDecay(0.1, 3, 0.5),
     {0: 0.1, 1: 0.1, 2: 0.1, 3: 0.05, 4: 0.05, 5: 0.05, 6: 0.1 * 0.25, 31: 0.1 * 2.0**-10}),
    # torch's CosineAnnealingLR closed form: end + (start - end)*(1 + cos(pi*k/n))/2.
    (CosineDecay(1.0, 4),
     {0: 1.0, 1: (1 + math.cos(math.pi / 4)) / 2, 2: 0.5,
      3: (1 + math.cos(3 * math.pi / 4)) / 2, 4: 0.0, 5: 0.0, 8: 0.0}),
    # pi*k/n is computed as (pi*k)/n, which for n = 13 differs from pi*(k/n) at k = 1 and 11.
    (CosineDecay(1.0, 13),
     {0: 1.0, 1: (1 + math.cos(math.pi * 1 / 13)) / 2, 11: (1 + math.cos(math.pi * 11 / 13)) / 2,
      12: (1 + math.cos(math.pi * 12 / 13)) / 2, 13: 0.0, 14: 0.0}),
    (CosineDecay(0.1, 10, end=0.01),
     {0: 0.1, 1: 0.01 + (0.1 - 0.01) * (1 + math.cos(math.pi * 1 / 10)) / 2,
      9: 0.01 + (0.1 - 0.01) * (1 + math.cos(math.pi * 9 / 10)) / 2, 10: 0.01, 11: 0.01}),
    (InverseTimeDecay(0.1, 0.5),
     {0: 0.1, 1: 0.1 / 1.5, 2: 0.1 / 2.0, 4: 0.1 / 3.0, 1000: 0.1 / 501.0}),
    (Constant(0.3), {0: 0.3, 1: 0.3, 10**6: 0.3}),
    # Warmup: a = k/steps; (1 - a)*start + a*schedule(0) for k < steps, then
    # schedule(k - steps), the schedule starting from its own step 0.
    (Warmup(CosineDecay(0.1, 10), 4),
     {0: 0.0, 1: 0.25 * 0.1, 2: 0.5 * 0.1, 3: 0.75 * 0.1, 4: 0.1,
      5: 0.1 * (1 + math.cos(math.pi * 1 / 10)) / 2, 13: 0.1 * (1 + math.cos(math.pi * 9 / 10)) / 2,
      14: 0.0, 15: 0.0}),
    (Warmup(Constant(0.5), 2, start=0.1),
     {0: 0.1, 1: 0.5 * 0.1 + 0.5 * 0.5, 2: 0.5, 3: 0.5}),
    # Join: each schedule starts again from its own step 0 at its boundary.
    (Join([Constant(0.1), LinearDecay(0.1, 4), Constant(0.5)], [3, 9]),
     {0: 0.1, 2: 0.1, 3: 0.1, 4: 0.75 * 0.1 + 0.25 * 0.001, 6: 0.25 * 0.1 + 0.75 * 0.001,
      7: 0.001, 8: 0.001, 9: 0.5, 10: 0.5, 10**6: 0.5}),
    (Join([LinearRamp(0.0, 0.1, 2), InverseTimeDecay(0.1, 1.0)], [2]),
     {0: 0.0, 1: 0.5 * 0.1, 2: 0.1, 3: 0.1 / 2.0, 4: 0.1 / 3.0}),
]


@pytest.mark.parametrize(("schedule", "expected"), FORMULAS, ids=repr)
def test_formula(schedule, expected):
    got = {k: schedule(k) for k in expected}
    assert got == expected
    assert all(type(value) is float for value in got.values())


def test_linear_decay_end_defaults_to_one_percent_of_the_start():
    assert LinearDecay(0.1, 1000).end == 0.01 * 0.1 == 0.001
    assert LinearDecay(3.0, 7).end == 0.01 * 3.0
    # 0.01*start, not start/100, which differs in the last bit for this start.
    assert LinearDecay(0.303, 7).end == 0.01 * 0.303 != 0.303 / 100
    assert LinearDecay(3.0, 7)(7) == LinearDecay(3.0, 7)(10**6) == 0.01 * 3.0
    assert LinearDecay(3.0, 7, end=0.0)(7) == 0.0


def test_join_restarts_each_schedule_from_its_own_step_zero():
    joined = Join([lambda k: float(k), lambda k: 100.0 + k], [5])
    assert [joined(k) for k in range(8)] == [0.0, 1.0, 2.0, 3.0, 4.0, 100.0, 101.0, 102.0]


def test_warmup_is_a_ramp_joined_to_the_schedule():
    after = CosineDecay(0.1, 20, end=0.001)
    warm = Warmup(after, 7, start=0.01)
    joined = Join([LinearRamp(0.01, after(0), 7), after], [7])
    assert [warm(k) for k in range(40)] == [joined(k) for k in range(40)]


def test_warmup_accepts_any_callable_and_rejects_a_non_number_first_value():
    assert Warmup(lambda k: 2.0 ** -k, 2)(1) == 0.5 * 1.0
    assert Warmup(lambda k: 2.0 ** -k, 2)(3) == 0.5
    with pytest.raises(TypeError, match=r"Warmup: the wrapped schedule's value at step 0 "
                                        r"must be a real number; got '0.1' \(str\)"):
        Warmup(lambda k: "0.1", 2)(1)


SCHEDULES = [schedule for schedule, _ in FORMULAS]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_is_a_pure_function_of_the_step(schedule):
    """Any order of steps gives the same values: nothing is counted inside."""
    forward = [schedule(k) for k in range(30)]
    backward = [schedule(k) for k in reversed(range(30))][::-1]
    assert forward == backward
    assert schedule(np.int64(12)) == schedule(12) and type(schedule(np.int64(12))) is float


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
@pytest.mark.parametrize(("step", "error", "message"), [
    (-1, ValueError, r"the step must be >= 0; got -1"),
    (np.int64(-3), ValueError, r"the step must be >= 0; got np.int64\(-3\)"),
    (True, TypeError, r"the step must be an int >= 0 \(the optimizer's iter\); got True \(bool\)"),
    (2.0, TypeError, r"the step must be an int >= 0 \(the optimizer's iter\); got 2.0 \(float\)"),
    ("3", TypeError, r"the step must be an int >= 0 \(the optimizer's iter\); got '3' \(str\)"),
])
def test_rejects_a_step_that_is_not_an_int_at_least_zero(schedule, step, error, message):
    with pytest.raises(error, match=rf"^{type(schedule).__name__}: {message}"):
        schedule(step)


# --- constructors ------------------------------------------------------------------------------

@pytest.mark.parametrize(("build", "error", "message"), [
    (lambda: LinearDecay(0.1, 0), ValueError, r"^LinearDecay: n must be >= 1; got 0$"),
    (lambda: LinearDecay(0.1, 10.0), TypeError,
     r"^LinearDecay: n must be an int >= 1 \(a number of steps\); got 10.0 \(float\)$"),
    (lambda: LinearDecay(0.1, True), TypeError, r"n must be an int >= 1 .* got True \(bool\)"),
    (lambda: LinearDecay(0.1, 0.001), TypeError, r"n must be an int"),   # (start, end) swapped
    (lambda: LinearDecay(math.nan, 10), ValueError, r"^LinearDecay: start must be finite; got nan"),
    (lambda: LinearDecay(0.1, 10, end=math.inf), ValueError, r"end must be finite; got inf"),
    (lambda: LinearDecay("0.1", 10), TypeError,
     r"^LinearDecay: start must be a real number \(a Python or NumPy int or float\); got '0.1' "
     r"\(str\)$"),
    (lambda: LinearRamp(0.5, 100, 0.9), TypeError, r"^LinearRamp: n must be an int"),
    (lambda: LinearRamp(0.5, 0.9, -1), ValueError, r"^LinearRamp: n must be >= 1; got -1$"),
    (lambda: ExponentialDecay(0.1, 0.0), ValueError,
     r"^ExponentialDecay: rate must satisfy 0 < rate <= 1; got 0.0$"),
    (lambda: ExponentialDecay(0.1, 1.01), ValueError, r"rate must satisfy 0 < rate <= 1"),
    (lambda: StepDecay(0.1, 0, 0.5), ValueError, r"^StepDecay: step_size must be >= 1; got 0$"),
    (lambda: StepDecay(0.1, 10, 2.0), ValueError,
     r"^StepDecay: gamma must satisfy 0 < gamma <= 1; got 2.0$"),
    (lambda: CosineDecay(0.1, 0), ValueError, r"^CosineDecay: n must be >= 1; got 0$"),
    (lambda: InverseTimeDecay(0.1, -0.5), ValueError,
     r"^InverseTimeDecay: decay must be >= 0; got -0.5$"),
    (lambda: Constant(None), TypeError, r"^Constant: value must be a real number"),
    (lambda: Warmup(0.1, 10), TypeError,
     r"^Warmup: schedule must be a schedule \(a callable of the step\); got 0.1 \(float\)$"),
    (lambda: Warmup(Constant(0.1), 0), ValueError, r"^Warmup: steps must be >= 1; got 0$"),
    (lambda: Join([], []), ValueError, r"^Join: schedules must hold at least one schedule"),
    (lambda: Join(Constant(0.1), []), TypeError, r"^Join: schedules must be a sequence"),
    (lambda: Join([Constant(0.1), 0.2], [3]), TypeError,
     r"^Join: schedules\[1\] must be a schedule \(a callable of the step\); got 0.2"),
    (lambda: Join([Constant(0.1), Constant(0.2)], []), ValueError,
     r"^Join: 2 schedules need 1 boundaries; got 0: \[\]$"),
    (lambda: Join([Constant(0.1), Constant(0.2)], 3), TypeError,
     r"^Join: boundaries must be a sequence of ints; got 3 \(int\)$"),
    (lambda: Join([Constant(0.1)] * 3, [5, 5]), ValueError,
     r"^Join: boundaries must be strictly increasing; got \[5, 5\]$"),
    (lambda: Join([Constant(0.1)] * 2, [0]), ValueError, r"^Join: boundaries\[0\] must be >= 1"),
    (lambda: Join([Constant(0.1)] * 2, [2.5]), TypeError, r"^Join: boundaries\[0\] must be an int"),
])
def test_constructor_rejects(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_numpy_numbers_are_stored_as_python_numbers():
    schedule = LinearDecay(np.float32(0.5), np.int64(10), end=np.float64(0.25))
    assert (type(schedule.start), type(schedule.n), type(schedule.end)) == (float, int, float)
    assert schedule == LinearDecay(0.5, 10, 0.25)
    assert Join([Constant(1)], []).schedules == (Constant(1.0),)


def test_is_immutable():
    schedule = LinearDecay(0.1, 10)
    with pytest.raises(AttributeError, match="LinearDecay is immutable; build a new schedule"):
        schedule.n = 20
    with pytest.raises(AttributeError, match="immutable"):
        del schedule.end
    with pytest.raises(AttributeError):
        schedule.other = 1   # no __dict__ to hold it
    assert schedule == LinearDecay(0.1, 10, 0.001)


# --- repr, equality, pickle, plain data --------------------------------------------------------

@pytest.mark.parametrize(("schedule", "text"), [
    (LinearDecay(0.1, 1000), "LinearDecay(start=0.1, n=1000, end=0.001)"),
    (LinearRamp(0.5, 0.9, 100), "LinearRamp(start=0.5, end=0.9, n=100)"),
    (ExponentialDecay(0.1, 0.99), "ExponentialDecay(start=0.1, rate=0.99)"),
    (StepDecay(0.1, 30, 0.1), "StepDecay(start=0.1, step_size=30, gamma=0.1)"),
    (CosineDecay(1, 50), "CosineDecay(start=1.0, n=50, end=0.0)"),
    (InverseTimeDecay(0.1, 0.01), "InverseTimeDecay(start=0.1, decay=0.01)"),
    (Warmup(CosineDecay(0.1, 900), 100),
     "Warmup(schedule=CosineDecay(start=0.1, n=900, end=0.0), steps=100, start=0.0)"),
    (Join([Constant(0.1), LinearDecay(0.1, 900)], (100,)),
     "Join(schedules=[Constant(value=0.1), LinearDecay(start=0.1, n=900, end=0.001)], "
     "boundaries=[100])"),
])
def test_repr(schedule, text):
    assert repr(schedule) == text


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_repr_rebuilds_an_equal_schedule(schedule):
    rebuilt = eval(repr(schedule), vars(schedules))   # a test of the repr only
    assert rebuilt == schedule and hash(rebuilt) == hash(schedule)


def test_equality_is_by_class_and_parameters():
    assert LinearDecay(0.1, 10) == LinearDecay(0.1, 10, end=0.001)
    assert LinearDecay(0.1, 10) != LinearDecay(0.1, 11)
    assert LinearDecay(0.1, 10, 0.001) != LinearRamp(0.1, 0.001, 10)   # same values, other class
    assert LinearDecay(0.1, 10) != 0.1
    assert Warmup(Constant(1.0), 3) != Warmup(Constant(2.0), 3)
    assert len({LinearDecay(0.1, 10), LinearDecay(0.1, 10, 0.001), Constant(0.1)}) == 2


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickle_and_deepcopy_give_an_equal_schedule(schedule, how):
    steps = [0, 1, 2, 3, 4, 5, 9, 10, 11, 100]
    copied = (pickle.loads(pickle.dumps(schedule)) if how == "pickle"
              else copy.deepcopy(schedule))
    assert copied is not schedule and type(copied) is type(schedule) and copied == schedule
    assert [copied(k) for k in steps] == [schedule(k) for k in steps]


def _assert_plain(data, where="data"):
    """Only str, int (not bool), float, list and dict with str keys."""
    if isinstance(data, dict):
        for key, value in data.items():
            assert type(key) is str, where
            _assert_plain(value, f"{where}[{key!r}]")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _assert_plain(value, f"{where}[{i}]")
    else:
        assert type(data) in (str, int, float), f"{where} is {data!r}"


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_to_dict_is_plain_data_that_from_dict_rebuilds(schedule):
    data = schedule.to_dict()
    _assert_plain(data)
    assert data["type"] == type(schedule).__name__
    # Through JSON, as a checkpoint might store it: the same schedule, the same values.
    rebuilt = schedules.from_dict(json.loads(json.dumps(data)))
    assert rebuilt == schedule
    assert [rebuilt(k) for k in range(20)] == [schedule(k) for k in range(20)]


def test_to_dict_of_nested_schedules():
    joined = Join([Warmup(Constant(0.5), 2), ExponentialDecay(0.5, 0.9)], [10])
    assert joined.to_dict() == {
        "type": "Join",
        "schedules": [
            {"type": "Warmup", "schedule": {"type": "Constant", "value": 0.5}, "steps": 2,
             "start": 0.0},
            {"type": "ExponentialDecay", "start": 0.5, "rate": 0.9},
        ],
        "boundaries": [10],
    }
    assert LinearDecay(0.1, 1000).to_dict() == {"type": "LinearDecay", "start": 0.1, "n": 1000,
                                                "end": 0.001}


@pytest.mark.parametrize("schedule", [Warmup(lambda k: 0.1, 10),
                                      Join([Constant(0.1), lambda k: 0.01], [5])])
def test_to_dict_refuses_a_user_callable(schedule):
    with pytest.raises(TypeError, match=r"to_dict: schedules?(\[1\])? is <function .*not one of "
                                        r"fastopt.schedules' classes; a callable cannot be stored "
                                        r"as data, so pass it again after loading"):
        schedule.to_dict()


@pytest.mark.parametrize(("data", "error", "message"), [
    ([("type", "Constant")], TypeError, r"^from_dict takes a dict from Schedule.to_dict"),
    ({"value": 0.1}, ValueError, r"'type' must name one of fastopt's schedules \(Constant, "
                                 r"CosineDecay, .*Warmup\); got None$"),
    ({"type": "os.system", "value": 0.1}, ValueError, r"got 'os.system'$"),
    ({"type": "Schedule"}, ValueError, r"got 'Schedule'$"),
    ({"type": "LinearDecay", "start": 0.1, "n": 10}, ValueError,
     r"^from_dict: a LinearDecay takes the keys start, n, end; missing end$"),
    ({"type": "Constant", "value": 0.1, "extra": 1}, ValueError,
     r"^from_dict: a Constant takes the keys value; unknown 'extra'$"),
    ({"type": "LinearRamp", "start": 0.1, "n": 10, "x": 1}, ValueError,
     r"missing end; unknown 'x'$"),
    ({"type": "LinearDecay", "start": 0.1, "n": 0, "end": 0.0}, ValueError,
     r"^LinearDecay: n must be >= 1; got 0$"),
    ({"type": "Warmup", "schedule": "lambda k: 0.1", "steps": 2, "start": 0.0}, TypeError,
     r"^from_dict takes a dict"),
    ({"type": "Join", "schedules": {"type": "Constant", "value": 0.1}, "boundaries": []},
     TypeError, r"^from_dict: a Join's schedules must be a list of dicts"),
    ({"type": "Join", "schedules": [{"type": "Nope"}], "boundaries": []}, ValueError,
     r"got 'Nope'$"),
])
def test_from_dict_rejects(data, error, message):
    with pytest.raises(error, match=message):
        schedules.from_dict(data)


def test_fastopt_exports_the_module():
    assert fastopt.schedules is schedules
    assert "schedules" not in fastopt.__all__


# --- inside the optimizers ---------------------------------------------------------------------
# Every optimizer with a schedule on lr and on one more hyperparameter. Their boundaries (n=5,
# step_size=3, steps=2) fall inside the 12 updates.

SCHEDULED = [
    ("SGD", {"lr": LinearDecay(0.1, 5), "weight_decay": LinearRamp(0.0, 0.01, 5)}),
    ("Momentum", {"lr": LinearDecay(0.05, 5), "momentum": LinearRamp(0.5, 0.9, 5)}),
    ("Nesterov", {"lr": CosineDecay(0.05, 5, end=0.001), "momentum": LinearRamp(0.5, 0.9, 5)}),
    ("AdaGrad", {"lr": StepDecay(0.1, 3, 0.5), "eps": ExponentialDecay(1e-3, 0.5)}),
    ("RMSprop", {"lr": InverseTimeDecay(0.01, 0.3), "decay_rate": LinearRamp(0.9, 0.99, 5)}),
    ("Adam", {"lr": Warmup(LinearDecay(0.01, 5), 2), "beta1": LinearRamp(0.5, 0.9, 5)}),
    ("AdamW", {"lr": LinearDecay(0.01, 5), "weight_decay": ExponentialDecay(0.1, 0.8)}),
    ("NAdam", {"lr": Join([Constant(0.01), LinearDecay(0.01, 4)], [3]),
               "beta2": LinearRamp(0.9, 0.999, 5)}),
    ("RAdam", {"lr": LinearDecay(0.01, 5), "beta1": LinearRamp(0.5, 0.9, 5)}),
    ("Adamax", {"lr": LinearDecay(0.01, 5), "beta2": StepDecay(0.99, 3, 0.95)}),
    ("Adadelta", {"lr": LinearDecay(1.0, 5), "rho": LinearRamp(0.5, 0.95, 5)}),
    ("Lion", {"lr": LinearDecay(0.001, 5), "beta1": LinearRamp(0.5, 0.9, 5)}),
    ("Muon", {"lr": LinearDecay(0.02, 5), "momentum": LinearRamp(0.5, 0.95, 5),
              "weight_decay": ExponentialDecay(0.1, 0.8)}),
]
SHAPES = [(3, 4), (5,), (), (7,)]
STEPS = 12


def _params(rng, name=None):
    """SHAPES's params; for a rule of 2-D params only (Muon) matrices of as many elements."""
    shapes = SHAPES if name is None else param_shapes(name, SHAPES)
    params = {f"W{i}": rng.standard_normal(shape) for i, shape in enumerate(shapes)}
    params["W3"] = params["W3"].astype(np.float32)
    return params


def _grads(rng, params):
    return {key: rng.standard_normal(np.shape(p)).astype(p.dtype) for key, p in params.items()}


def _same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _snapshot(opt, params):
    """Everything an update may change: params, state arrays, iter and scalar state."""
    state = {name: copy.deepcopy(getattr(opt, name)) for name in opt.state_names}
    return (copy.deepcopy(params), state, opt.iter, getattr(opt, "mu_product", None))


def _assert_same(one, other):
    (params_a, state_a, iter_a, mu_a), (params_b, state_b, iter_b, mu_b) = one, other
    assert iter_a == iter_b and mu_a == mu_b
    assert params_a.keys() == params_b.keys() and state_a.keys() == state_b.keys()
    for key in params_a:
        assert _same_bits(params_a[key], params_b[key]), key
    for name in state_a:
        assert (state_a[name] is None) == (state_b[name] is None), name
        for key in state_a[name] or {}:
            assert _same_bits(state_a[name][key], state_b[name][key]), (name, key)


@pytest.mark.parametrize("module", [fastopt, reference], ids=["fastopt", "reference"])
@pytest.mark.parametrize(("name", "scheduled"), SCHEDULED, ids=[name for name, _ in SCHEDULED])
def test_a_schedule_gives_the_bits_of_setting_the_value_by_hand(module, name, scheduled):
    cls = getattr(module, name)
    rng = np.random.default_rng(7)
    params = _params(rng, name)
    by_schedule = cls(**scheduled)
    by_hand = cls(**{key: schedule(0) for key, schedule in scheduled.items()})
    fixed = cls(**{key: schedule(0) for key, schedule in scheduled.items()})
    params_by_hand, params_fixed = copy.deepcopy(params), copy.deepcopy(params)
    for _ in range(STEPS):
        grads = _grads(rng, params)
        for key, schedule in scheduled.items():
            setattr(by_hand, key, schedule(by_hand.iter))
        by_schedule.update(params, grads)
        by_hand.update(params_by_hand, grads)
        fixed.update(params_fixed, grads)
    assert by_schedule.iter == STEPS
    _assert_same(_snapshot(by_schedule, params), _snapshot(by_hand, params_by_hand))
    # The schedules mattered: the values of step 0 throughout give other numbers.
    assert not _same_bits(params["W0"], params_fixed["W0"])
    # The schedules are still there, unchanged.
    assert all(getattr(by_schedule, key) is schedule for key, schedule in scheduled.items())


@pytest.mark.parametrize(("name", "scheduled"), SCHEDULED, ids=[name for name, _ in SCHEDULED])
def test_fastopt_and_reference_agree_with_schedules(name, scheduled):
    rng = np.random.default_rng(3)
    params = _params(rng, name)
    fast, slow = getattr(fastopt, name)(**scheduled), getattr(reference, name)(**scheduled)
    params_slow = copy.deepcopy(params)
    for _ in range(STEPS):
        grads = _grads(rng, params)
        fast.update(params, grads)
        slow.update(params_slow, grads)
    _assert_same(_snapshot(fast, params), _snapshot(slow, params_slow))


def test_plain_lambdas_work():
    rng = np.random.default_rng(1)
    params = _params(rng)
    params_by_hand = copy.deepcopy(params)
    lr = lambda k: 0.1 / (k + 1)   # noqa: E731
    momentum = lambda k: min(0.9, 0.5 + 0.1 * k)   # noqa: E731
    by_schedule = fastopt.Momentum(lr=lr, momentum=momentum)
    by_hand = fastopt.Momentum()
    for _ in range(6):
        grads = _grads(rng, params)
        by_hand.lr, by_hand.momentum = lr(by_hand.iter), momentum(by_hand.iter)
        by_schedule.update(params, grads)
        by_hand.update(params_by_hand, grads)
    _assert_same(_snapshot(by_schedule, params), _snapshot(by_hand, params_by_hand))


def test_a_pickled_optimizer_continues_its_schedules():
    """A resumed run gets the same values: the schedule depends on iter only."""
    rng = np.random.default_rng(5)
    params = _params(rng)
    opt = fastopt.Momentum(lr=LinearDecay(0.05, 8), momentum=LinearRamp(0.5, 0.9, 8))
    for _ in range(5):
        opt.update(params, _grads(rng, params))
    resumed, params_resumed = pickle.loads(pickle.dumps(opt)), copy.deepcopy(params)
    assert resumed.lr == opt.lr and resumed.momentum == opt.momentum and resumed.iter == 5
    for _ in range(7):
        grads = _grads(rng, params)
        opt.update(params, grads)
        resumed.update(params_resumed, grads)
    _assert_same(_snapshot(opt, params), _snapshot(resumed, params_resumed))


def _bad_at_3(good, bad):
    return lambda k: good if k < 3 else bad


# (optimizer, hyperparameter, schedule, error, message): each schedule is fine until step 3
# (LinearRamp(0.5, 1.1, 3) gives 0.5, 0.7, 0.9, then 1.1).
BAD = [
    *[(name, "lr", _bad_at_3(0.01, -1.0), ValueError, r"lr must be finite and >= 0; got -1.0")
      for name, _ in SCHEDULED],
    ("Momentum", "momentum", _bad_at_3(0.9, 1.5), ValueError,
     r"momentum must satisfy 0 <= momentum < 1; got 1.5"),
    ("Nesterov", "momentum", LinearRamp(0.5, 1.1, 3), ValueError,
     r"momentum must satisfy 0 <= momentum < 1; got 1.1"),
    ("Adam", "beta1", _bad_at_3(0.9, "0.9"), TypeError,
     r"beta1 must be a real number .* got '0.9' \(str\)"),
    ("RMSprop", "decay_rate", _bad_at_3(0.99, math.nan), ValueError,
     r"decay_rate must satisfy 0 <= decay_rate < 1; got nan"),
    ("Adadelta", "rho", _bad_at_3(0.9, None), TypeError,
     r"rho must be a real number .* got None \(NoneType\)"),
    ("AdamW", "weight_decay", _bad_at_3(0.01, -0.01), ValueError,
     r"weight_decay must be finite and >= 0; got -0.01"),
]


@pytest.mark.parametrize("module", [fastopt, reference], ids=["fastopt", "reference"])
@pytest.mark.parametrize(("name", "key", "schedule", "error", "message"), BAD,
                         ids=[f"{name}-{key}-{i}" for i, (name, key, *_) in enumerate(BAD)])
def test_a_bad_value_names_the_hyperparameter_and_step_and_changes_nothing(
        module, name, key, schedule, error, message):
    rng = np.random.default_rng(2)
    params = _params(rng, name)
    opt = getattr(module, name)(**{key: schedule})
    for _ in range(3):
        opt.update(params, _grads(rng, params))
    before = _snapshot(opt, params)
    grads = _grads(rng, params)
    with pytest.raises(error, match=message + r" \(the schedule's value at step 3\)$"):
        opt.update(params, grads)
    _assert_same(_snapshot(opt, params), before)
    assert opt.iter == 3 and getattr(opt, key) is schedule


def test_an_int_too_large_for_a_float_is_a_value_error():
    with pytest.raises(ValueError, match="LinearDecay: start must be finite"):
        schedules.LinearDecay(10**400, 5)


# --- limits checked when a schedule is built: none that builds fails at a call -----------------

COUNTS = [
    ("LinearRamp", lambda n: LinearRamp(0.5, 0.9, n), "n"),
    ("LinearDecay", lambda n: LinearDecay(0.1, n), "n"),
    ("StepDecay", lambda n: StepDecay(0.1, n, 0.5), "step_size"),
    ("CosineDecay", lambda n: CosineDecay(0.1, n), "n"),
    ("Warmup", lambda n: Warmup(Constant(0.1), n), "steps"),
    ("Join", lambda n: Join([Constant(0.1), Constant(0.2)], [n]), r"boundaries\[0\]"),
]


@pytest.mark.parametrize(("owner", "build", "name"), COUNTS, ids=[c[0] for c in COUNTS])
def test_a_step_count_beyond_2_53_is_a_value_error(owner, build, name):
    for value, shown in [(2**53 + 1, "9007199254740993"), (10**400, "an int of 1329 bits"),
                         (np.uint64(2**64 - 1), r"np\.uint64\(18446744073709551615\)")]:
        with pytest.raises(ValueError, match=rf"^{owner}: {name} must be at most 2\*\*53 \(a "
                                             rf"step count a float holds exactly\); got "
                                             rf"{shown}$"):
            build(value)
    largest = build(2**53)   # the largest works at every step an optimizer reaches
    for k in (0, 1, 2**52, 2**53 - 1, 2**53):
        assert math.isfinite(largest(k))


def test_cosine_decay_with_a_huge_n_is_refused_when_built():
    with pytest.raises(ValueError, match="CosineDecay: n must be at most 2"):
        CosineDecay(0.1, 10**400)


def _nest(depth, wrap):
    schedule = Constant(0.1)
    for _ in range(depth - 1):
        schedule = wrap(schedule)
    return schedule


NESTINGS = [
    ("Warmup", lambda s: Warmup(s, 2)),
    ("Join", lambda s: Join([Constant(0.2), s], [1])),
    ("Join", lambda s: Join([s, Constant(0.2)], [1])),
]


@pytest.mark.parametrize(("owner", "wrap"), NESTINGS, ids=["warmup", "join-last", "join-first"])
def test_nesting_deeper_than_32_is_refused_when_built(owner, wrap):
    deepest = _nest(32, wrap)
    for k in range(40):
        assert math.isfinite(deepest(k))
    with pytest.raises(ValueError, match=rf"^{owner}: schedules nested 33 deep; at most 32 "
                                         rf"levels of Warmup and Join are allowed$"):
        wrap(deepest)
    assert schedules.from_dict(deepest.to_dict()) == deepest


@pytest.mark.parametrize("depth", [33, 500, 5000])
def test_from_dict_refuses_deep_nesting_before_building_it(depth):
    described = Constant(0.1).to_dict()
    for _ in range(depth - 1):
        described = {"type": "Warmup", "schedule": described, "steps": 2, "start": 0.0}
    with pytest.raises(ValueError, match=r"^from_dict: schedules nested more than 32 deep"):
        schedules.from_dict(described)


def test_a_users_callable_is_not_counted_as_nesting():
    # Only fastopt's schedules are seen through; a callable of the user's is one level.
    deepest = _nest(31, lambda s: Warmup(s, 2))
    assert Warmup(lambda k: deepest(k), 2)(5) == deepest(3)
