"""The drop-in contract of SPEC section 1 (and the scalar params of section 4)."""
import inspect

import numpy as np
import pytest

import fastopt
from fastopt import reference

from _helpers import (
    CONFIGS,
    LEARNING_RATES,
    as_param,
    assert_same_bits,
    assert_same_state,
    config_id,
    copy_params,
    make_pair,
    param_shapes,
    random_params,
    takes_scalars,
)
from registry import REGISTRY

BOOK_SIGNATURES = {
    "SGD": [("lr", 0.01)],
    "Momentum": [("lr", 0.01), ("momentum", 0.9)],
    "Nesterov": [("lr", 0.01), ("momentum", 0.9)],
    "AdaGrad": [("lr", 0.01)],
    "RMSprop": [("lr", 0.01), ("decay_rate", 0.99)],
    "Adam": [("lr", 0.001), ("beta1", 0.9), ("beta2", 0.999)],
}
STATE_NAMES = {entry.name: entry.state for entry in REGISTRY if entry.book}


@pytest.mark.parametrize("name", BOOK_SIGNATURES)
def test_constructors_take_the_books_names_order_and_defaults(name):
    for module in (fastopt, reference):
        parameters = inspect.signature(getattr(module, name)).parameters.values()
        positional = [(p.name, p.default) for p in parameters
                      if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        assert positional == BOOK_SIGNATURES[name]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters
                   if p.name not in dict(BOOK_SIGNATURES[name]))
    optimizer = getattr(fastopt, name)(*[default for _, default in BOOK_SIGNATURES[name]])
    for attribute, default in BOOK_SIGNATURES[name]:
        assert getattr(optimizer, attribute) == default


def test_public_names():
    assert fastopt.RMSProp is fastopt.RMSprop
    assert reference.RMSProp is reference.RMSprop
    namespace = {}
    exec("from fastopt import *", namespace)
    assert {"SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "RMSProp",
            "Adam"} <= set(namespace)
    assert fastopt.__version__


def test_update_is_in_place_on_the_callers_arrays(config):
    fast, _ = make_pair(config)
    rng = np.random.default_rng(0)
    shapes = param_shapes(config, [(784, 50), (50,), (0,), ()])
    params = random_params(shapes, np.float32, rng)
    before = {key: (value, value.ctypes.data, value.copy()) for key, value in params.items()}
    network_view = params["W0"][:10]   # a layer holding a reference to part of the weights
    # Three steps: Lion moves each element by exactly +-lr, so two can cancel out.
    for _ in range(3):
        assert fast.update(params, random_params(shapes, np.float32, rng)) is None
    for key, (array, address, old) in before.items():
        assert params[key] is array
        assert params[key].ctypes.data == address
        if array.size:
            assert not np.array_equal(array, old)
    assert np.shares_memory(network_view, params["W0"])
    assert_same_bits(network_view, params["W0"][:10])


@pytest.mark.parametrize("container", [list, tuple])
def test_list_and_tuple_params_keep_state_by_position(config, container):
    fast, ref = make_pair(config)
    rng = np.random.default_rng(1)
    shapes = param_shapes(config, [(5, 3), (3,), (4,)])
    ours = container(random_params(shapes, np.float64, rng).values())
    theirs = [value.copy() for value in ours]
    identity = [id(value) for value in ours]
    for _ in range(20):
        grads = container(random_params(shapes, np.float64, rng).values())
        fast.update(ours, grads)
        ref.update(theirs, list(grads))
    assert [id(value) for value in ours] == identity
    for a, b in zip(ours, theirs, strict=True):
        assert_same_bits(a, b)
    assert_same_state(fast, ref)
    for name in fast.state_names:
        assert isinstance(getattr(fast, name), list)


def test_state_attributes_as_in_the_book(config):
    name, _ = config
    fast, _ = make_pair(config)
    if name in STATE_NAMES:   # the book's names first, then those of options beyond the book
        assert fast.state_names[:len(STATE_NAMES[name])] == STATE_NAMES[name]
    for state in fast.state_names:
        assert getattr(fast, state) is None
    assert fast.iter == 0   # every optimizer counts its updates, as the book's Adam does
    params = {"W": np.ones((3, 2), np.float32),
              "b": np.ones(param_shapes(config, [(2,)])[0], np.float32)}
    grads = {key: np.full_like(value, 0.5) for key, value in params.items()}
    for step in range(1, 4):
        fast.update(params, grads)
        assert fast.iter == step
    for state in fast.state_names:
        entries = getattr(fast, state)
        assert isinstance(entries, dict) and list(entries) == ["W", "b"]
        for key, value in entries.items():
            # of its param's dtype, and of its shape unless the declaration gives another
            # (_state_shapes: Adafactor's row and column factors, size 0 where unused)
            shape = fast._state_shape(state, params[key].shape)
            assert isinstance(value, np.ndarray)
            assert value.dtype == params[key].dtype and value.shape == shape
            assert value.any() or value.size == 0


def test_adam_iter_counts_update_calls_even_without_params():
    adam = fastopt.Adam()
    adam.update({}, {})
    adam.update({}, {})
    assert adam.iter == 2 and adam.m == {} and adam.v == {}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_key_first_seen_later_gets_zero_state(config, dtype):
    name, options = config
    fast, ref = make_pair(config)
    rng = np.random.default_rng(2)
    ours = random_params([(4, 3)], dtype, rng, keys=["old"])
    theirs = copy_params(ours)
    for _ in range(5):
        grads = random_params([(4, 3)], dtype, rng, keys=["old"])
        fast.update(ours, grads)
        ref.update(theirs, grads)
    ours["new"] = as_param(config, rng.standard_normal(6).astype(dtype))
    theirs["new"] = ours["new"].copy()
    fresh_start = ours["new"].copy()
    # The scalar state before this step (NAdam's running product, Schedule-Free's weight sum)
    scalars = {name: getattr(ref, name) for name in type(ref)._scalar_state}
    grads = {"old": rng.standard_normal((4, 3)).astype(dtype),
             "new": as_param(config, rng.standard_normal(6).astype(dtype))}
    fast.update(ours, grads)
    ref.update(theirs, grads)
    for key in ours:
        assert_same_bits(ours[key], theirs[key])
    assert_same_state(fast, ref)
    # The reference's zero state is the independent check: a fresh optimizer whose step count
    # is advanced to the same point gives the new key the same first step.
    if "max_grad_norm" in options:
        return   # clipping scales by the norm of all grads, which a key alone does not have
    fresh = getattr(reference, name)(lr=LEARNING_RATES[name], **options)
    fresh.iter = fast.iter - 1
    for scalar, value in scalars.items():
        setattr(fresh, scalar, value)
    alone = {"new": fresh_start}
    fresh.update(alone, {"new": grads["new"]})
    assert_same_bits(ours["new"], alone["new"])


def test_a_list_that_grows_gets_zero_state_for_new_positions(config):
    fast, ref = make_pair(config)
    rng = np.random.default_rng(3)
    ours = [as_param(config, rng.standard_normal(3))]
    theirs = [ours[0].copy()]
    for length in (1, 2, 2):
        if len(ours) < length:
            ours.append(as_param(config, rng.standard_normal(5)))
            theirs.append(ours[-1].copy())
        grads = [rng.standard_normal(value.shape) for value in ours]
        fast.update(ours, grads)
        ref.update(theirs, grads)
    for a, b in zip(ours, theirs, strict=True):
        assert_same_bits(a, b)
    assert_same_state(fast, ref)


# A second value for each hyperparameter, by class name; the setting some need to act in.
HYPERPARAMETERS = {entry.name: entry.other_values for entry in REGISTRY}
SETUPS = {entry.name: entry.other_values_setup for entry in REGISTRY}


@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_changing_a_hyperparameter_takes_effect_on_the_next_step(config, dtype):
    name, _ = config
    for attribute, value in HYPERPARAMETERS[name].items():
        setup = SETUPS[name].get(attribute, {})
        fast, ref = make_pair(config, **setup)
        rng = np.random.default_rng(4)
        shapes = param_shapes(config, [(9,)])   # Muon's: a matrix
        ours = random_params(shapes, dtype, rng)
        theirs, unchanged = copy_params(ours), copy_params(ours)
        control, _ = make_pair(config, **setup)
        for step in range(6):
            if step == 3:
                setattr(fast, attribute, value)
                setattr(ref, attribute, value)
            grads = random_params(shapes, dtype, rng)
            fast.update(ours, grads)
            ref.update(theirs, grads)
            control.update(unchanged, grads)
        assert_same_bits(ours["W0"], theirs["W0"])
        assert not np.array_equal(ours["W0"], unchanged["W0"]), attribute


# --- scalar params, as in the book's ch06/optimizer_compare_naive.py ------------------------

def book_function_grad(x, y):
    return x / 10.0, 2.0 * y


@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_scalar_params_are_stored_back_like_the_book(config):
    if not takes_scalars(config):
        pytest.skip("it refuses scalar params (a rule of 2-D params only: tests/test_muon.py)")
    fast, ref = make_pair(config)
    ours = {"x": -7.0, "y": 2.0}
    theirs = dict(ours)
    for _ in range(30):
        gx, gy = book_function_grad(ours["x"], ours["y"])
        fast.update(ours, {"x": gx, "y": gy})
        gx, gy = book_function_grad(theirs["x"], theirs["y"])
        ref.update(theirs, {"x": gx, "y": gy})
        for key in ours:
            assert type(ours[key]) is type(theirs[key])
            assert_same_bits(ours[key], theirs[key])
    assert_same_state(fast, ref)
    assert ours["x"] != -7.0


def test_scalar_params_in_a_list_and_numpy_scalars():
    fast, ref = fastopt.Adam(lr=0.3), reference.Adam(lr=0.3)
    ours = [np.float32(1.5), -7.0]
    theirs = list(ours)
    for step in range(10):
        grads = [np.float32(0.25 * step), 3]
        fast.update(ours, grads)
        ref.update(theirs, grads)
    for a, b in zip(ours, theirs, strict=True):
        assert type(a) is type(b)
        assert_same_bits(a, b)
