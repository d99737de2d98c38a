"""Every rejected input of SPEC section 4, and hyperparameter checks.

Each case checks the exception type, that the message names the offending key, and that the
rejected call changed nothing: no param, no state (no new keys either) and no step count.
"""
import copy
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt

import registry
from _helpers import CONFIGS, config_id, make_pair, param_shape, takes_scalars


def good(shape=(4, 3), dtype=np.float64):
    return np.linspace(-1, 1, int(np.prod(shape))).reshape(shape).astype(dtype)


def read_only(array):
    array.flags.writeable = False
    return array


# (case id, bad param, its grad, exception, words the message must contain)
BAD_PAIRS = [
    ("grad-shape-broadcastable", good(), good((1, 3)), ValueError, ["shape (1, 3)", "(4, 3)"]),
    ("grad-shape-scalar-like", good(), good((1,)), ValueError, ["shape (1,)"]),
    ("grad-shape-other", good(), good((3, 4)), ValueError, ["shape (3, 4)"]),
    ("param-int", np.arange(12).reshape(4, 3), good(), TypeError, ["int64"]),
    ("param-bool", np.ones((4, 3), bool), good(), TypeError, ["bool"]),
    ("param-complex", good().astype(complex), good(), TypeError, ["complex128"]),
    ("param-object", good().astype(object), good(), TypeError, ["object"]),
    ("grad-int", good(), np.ones((4, 3), np.int32), TypeError, ["int32"]),
    ("grad-bool", good(), np.ones((4, 3), bool), TypeError, ["bool"]),
    ("grad-complex", good(), good().astype(np.complex64), TypeError, ["complex64"]),
    ("grad-object", good(), good().astype(object), TypeError, ["object"]),
    ("param-read-only", read_only(good()), good(), ValueError, ["read-only"]),
    ("param-list", [1.0, 2.0], good((2,)), TypeError, ["list"]),
    ("param-none", None, good(), TypeError, ["NoneType"]),
    ("param-string", "w", good(), TypeError, ["str"]),
    ("param-python-int", 3, 1.0, TypeError, ["int"]),
    ("param-complex-scalar", 1 + 2j, 1.0, TypeError, ["complex"]),
    ("grad-list", good((2,)), [1.0, 2.0], TypeError, ["list"]),
    ("grad-python-float-for-array", good(), 0.5, TypeError, ["float"]),
    ("grad-none", good(), None, TypeError, ["NoneType"]),
    ("scalar-param-array-grad", -7.0, good((2,)), TypeError, ["real scalar"]),
    ("scalar-param-complex-grad", -7.0, 1j, TypeError, ["real scalar"]),
    ("scalar-param-bool-grad", -7.0, True, TypeError, ["real scalar"]),
    ("scalar-param-string-grad", -7.0, "0.5", TypeError, ["real scalar"]),
    # np.matrix's * is a matrix product: g*g in a rule would not be elementwise
    ("param-matrix", good().view(np.matrix), good(), TypeError,
     ["param", "numpy.matrix", "matrix product", "np.asarray(param)"]),
    ("grad-matrix", good(), good().view(np.matrix), TypeError,
     ["grad", "numpy.matrix", "matrix product", "np.asarray(grad)"]),
]


def entries(container):
    """(key, value) pairs of a dict, or (position, value) pairs of a list or tuple."""
    return list(container.items() if isinstance(container, dict) else enumerate(container))


def snapshot(optimizer, params):
    state = {name: copy.deepcopy(getattr(optimizer, name)) for name in optimizer.state_names}
    return ([(key, np.array(value, copy=True) if isinstance(value, np.ndarray) else value)
             for key, value in entries(params)], state, getattr(optimizer, "iter", None))


def assert_unchanged(optimizer, params, before):
    old_params, old_state, old_iter = before
    now_params = entries(params)
    assert [key for key, _ in now_params] == [key for key, _ in old_params]
    for (key, value), (_, old) in zip(now_params, old_params, strict=True):
        if isinstance(value, np.ndarray) and value.dtype == object:
            assert value.tolist() == old.tolist(), key
        elif isinstance(value, np.ndarray):
            assert value.tobytes() == old.tobytes(), key
        else:
            assert value is old or value == old, key
    for name, state in old_state.items():
        now = getattr(optimizer, name)
        if state is None:
            assert now is None
            continue
        # the same keys or positions (no zero state was added), with the same bytes
        assert [key for key, _ in entries(now)] == [key for key, _ in entries(state)]
        for (_, value), (_, old) in zip(entries(now), entries(state), strict=True):
            assert value.tobytes() == old.tobytes()
    assert getattr(optimizer, "iter", None) == old_iter


def check_rejected(optimizer, params, grads, error, words):
    before = snapshot(optimizer, params)
    with pytest.raises(error) as info:
        optimizer.update(params, grads)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    assert_unchanged(optimizer, params, before)
    return message


@pytest.fixture(params=[False, True], ids=["fresh", "after-a-step"])
def stepped(request):
    return request.param


def fit(config, shape):
    """``good(shape)``, or a matrix of as many elements for a rule of 2-D params only (Muon:
    tests/registry.py's ``param_shape``)."""
    return good(param_shape(config, shape))


def prepared(config, stepped):
    optimizer, _ = make_pair(config)
    params = {"a": good(), "b": fit(config, (3,))}
    if stepped:
        optimizer.update(params, {"a": good() * 0.5, "b": fit(config, (3,)) * 0.5})
    return optimizer, params


@pytest.mark.parametrize("case", BAD_PAIRS, ids=[case[0] for case in BAD_PAIRS])
def test_bad_param_or_grad_is_rejected_and_changes_nothing(config, stepped, case):
    _, bad_param, bad_grad, error, words = case
    optimizer, params = prepared(config, stepped)
    # good keys, and a key never seen before, come first: they must not be touched either
    params = {**params, "new": fit(config, (2,)), "bad key": bad_param}
    grads = {"a": good(), "b": fit(config, (3,)), "new": fit(config, (2,)), "bad key": bad_grad}
    message = check_rejected(optimizer, params, grads, error, words)
    assert "'bad key'" in message


def test_bad_entry_in_a_list_names_its_position(config, stepped):
    optimizer, _ = make_pair(config)
    params = [good(), fit(config, (3,))]
    if stepped:
        optimizer.update(params, [good(), fit(config, (3,))])
    message = check_rejected(optimizer, params,
                             [good(), fit(config, (3,)).astype(np.int8)], TypeError, ["int8"])
    assert "grad 1 " in message


def test_missing_grad_key(config, stepped):
    optimizer, params = prepared(config, stepped)
    params = {**params, "new": fit(config, (2,))}
    message = check_rejected(optimizer, params, {"a": good(), "new": fit(config, (2,))}, KeyError,
                             ["'b'"])
    assert "grads has no entry" in message


def test_extra_grad_keys_are_ignored_as_in_the_book():
    params = {"w": good()}
    fastopt.SGD().update(params, {"w": good(), "unused": None})


def test_list_lengths_must_match(config, stepped):
    optimizer, _ = make_pair(config)
    params = [good(), fit(config, (3,))]
    if stepped:
        optimizer.update(params, [good(), fit(config, (3,))])
    check_rejected(optimizer, params, [good()], ValueError,
                   ["grads has 1 entries but params has 2"])


@pytest.mark.parametrize("params, grads, words", [
    ({"w": good()}, [good()], ["grads must be a mapping", "list"]),
    ([good()], {0: good()}, ["grads must be a list", "dict"]),
    (good(), good(), ["params must be a dict", "ndarray"]),
    ("w", "g", ["params must be a dict", "str"]),
], ids=["dict-list", "list-dict", "array", "string"])
def test_containers_must_be_dicts_or_sequences(config, params, grads, words):
    optimizer, _ = make_pair(config)
    with pytest.raises(TypeError) as info:
        optimizer.update(params, grads)
    for word in words:
        assert word in str(info.value)
    assert all(getattr(optimizer, name) is None for name in optimizer.state_names)


def test_scalar_param_in_a_tuple_cannot_be_stored_back(config, stepped):
    if stepped and not takes_scalars(config):
        pytest.skip("it refuses scalar params (a rule of 2-D params only: tests/test_muon.py)")
    optimizer, _ = make_pair(config)
    params = (good(), 1.5)
    if stepped:
        optimizer.update(list(params), [good(), 0.5])
    message = check_rejected(optimizer, params,
                             (good(), 0.5), TypeError, ["in a tuple", "list or dict"])
    assert "param 1 " in message


@pytest.mark.parametrize("config", [c for c in CONFIGS if c[0] != "SGD"],
                         ids=[config_id(c) for c in CONFIGS if c[0] != "SGD"])
def test_state_kind_cannot_switch_between_dict_and_list(config):
    optimizer, _ = make_pair(config)
    optimizer.update({"a": good()}, {"a": good()})
    before = snapshot(optimizer, {})
    with pytest.raises(TypeError, match="by key"):
        optimizer.update([good()], [good()])
    assert_unchanged(optimizer, {}, before)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c[0] != "SGD"],
                         ids=[config_id(c) for c in CONFIGS if c[0] != "SGD"])
def test_param_replaced_by_another_shape(config):
    optimizer, _ = make_pair(config)
    params = {"a": good(), "b": fit(config, (3,))}
    optimizer.update(params, {"a": good(), "b": fit(config, (3,))})
    params["b"] = fit(config, (5,))
    message = check_rejected(optimizer, params, {"a": good(), "b": fit(config, (5,))},
                             ValueError, ["'b'", str(param_shape(config, (3,))),
                                          str(param_shape(config, (5,)))])
    assert "state" in message


# What each range check of fastopt/_validation.py rejects: (value, exception, words the
# message must contain), by the check's name.
RANGE_CASES = {
    "check_learning_rate": [(-0.1, ValueError, ">= 0"), (float("nan"), ValueError, ">= 0")],
    "check_coefficient": [(1.0, ValueError, "< 1"), (1.5, ValueError, "< 1"),
                          (float("inf"), ValueError, "< 1"), (float("nan"), ValueError, "< 1"),
                          (-0.1, ValueError, "0 <="), (-1e-9, ValueError, "0 <=")],
    "check_epsilon": [(0.0, ValueError, "> 0"), (-1e-8, ValueError, "> 0"),
                      (float("nan"), ValueError, "> 0")],
    "check_nonpositive": [(0.1, ValueError, "<= 0"), (float("-inf"), ValueError, "<= 0"),
                          (float("nan"), ValueError, "<= 0")],
    "check_at_least_one": [(0.5, ValueError, ">= 1"), (float("inf"), ValueError, ">= 1"),
                           (float("nan"), ValueError, ">= 1")],
}
# What every hyperparameter rejects, whatever its range: values that are not real numbers.
KIND_CASES = [("0.1", TypeError, "real number"), ("tiny", TypeError, "real number"),
              (None, TypeError, "real number"), (True, TypeError, "real number"),
              (1j, TypeError, "real number")]


def _rejected_at_construction(name, attribute, value):
    """False only for None where the constructor's default is None (Adam's ``eps``: its
    default then depends on another option)."""
    default = inspect.signature(getattr(fastopt, name)).parameters[attribute].default
    return not (value is None and default is None)


# Every float hyperparameter of every optimizer in the registry, with the check its class
# declares for it (weight_decay included): a check with no cases above fails collection.
HYPERPARAMETER_PARAMS = [
    (entry.name, attribute, value, error, words)
    for entry in registry.REGISTRY
    for attribute, check in getattr(fastopt, entry.name)._checks.items()
    for value, error, words in [*RANGE_CASES[check.__name__], *KIND_CASES]]
CONSTRUCTION_PARAMS = [case for case in HYPERPARAMETER_PARAMS
                       if _rejected_at_construction(*case[:3])]


@pytest.mark.parametrize("name, attribute, value, error, words", CONSTRUCTION_PARAMS,
                         ids=[f"{n}-{a}={v!r}" for n, a, v, _, _ in CONSTRUCTION_PARAMS])
def test_hyperparameters_are_checked_at_construction(name, attribute, value, error, words):
    for module in (fastopt, fastopt.reference):
        with pytest.raises(error) as info:
            getattr(module, name)(**{attribute: value})
        assert attribute in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("name, attribute, value, error, words", HYPERPARAMETER_PARAMS,
                         ids=[f"{n}-{a}={v!r}" for n, a, v, _, _ in HYPERPARAMETER_PARAMS])
def test_bad_hyperparameter_set_later_rejects_the_next_update(name, attribute, value, error,
                                                              words):
    optimizer = getattr(fastopt, name)()
    params = {"a": good()}
    optimizer.update(params, {"a": good()})
    setattr(optimizer, attribute, value)
    check_rejected(optimizer, params, {"a": good()}, error, [attribute, words])


@pytest.mark.parametrize("name, options", [
    ("SGD", {"lr": 0}), ("Momentum", {"momentum": 0}), ("RMSprop", {"decay_rate": 0.0}),
    ("Adam", {"beta1": 0, "beta2": 0.0, "lr": np.float32(0.5)}), ("AdaGrad", {"eps": 1e-300}),
])
def test_boundary_hyperparameters_are_accepted(name, options):
    optimizer = getattr(fastopt, name)(**options)
    params = {"a": good()}
    optimizer.update(params, {"a": good()})


def test_unknown_and_positional_options_are_rejected():
    with pytest.raises(TypeError):
        fastopt.Adam(0.001, 0.9, 0.999, 1e-8)    # eps is keyword-only
    with pytest.raises(TypeError):
        fastopt.Nesterov(nesterov_form="old")


def test_scalar_grad_too_large_for_a_float_is_rejected_and_changes_nothing():
    optimizer = fastopt.Adam()
    params = {"a": good(), "x": 0.5}
    before = snapshot(optimizer, params)
    with pytest.raises(ValueError, match="grad 'x' is an integer too large for a float"):
        optimizer.update(params, {"a": good(), "x": 10**400})
    assert_unchanged(optimizer, params, before)


def test_a_scalar_grad_whose_square_overflows_gives_inf_not_a_half_done_update():
    # The book's Adam computes g**2, and for a Python float Python raises OverflowError where
    # the square is beyond the float range; fastopt (and its reference) use the IEEE result,
    # inf, so every key is updated instead of an exception after the first ones.
    for module in (fastopt, fastopt.reference):
        optimizer = module.Adam()
        params = {"a": np.zeros(3), "x": 0.0}
        with np.errstate(all="ignore"):
            optimizer.update(params, {"a": np.ones(3), "x": 1.7976931348623157e308})
        assert optimizer.v["x"] == np.inf
        assert np.all(params["a"] != 0) and optimizer.iter == 1


@pytest.mark.parametrize("name, value", [("lr", np.inf), ("weight_decay", np.inf),
                                         ("eps", np.inf), ("lr", -np.inf)])
def test_infinite_hyperparameters_are_rejected(name, value):
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        fastopt.Adam(**{name: value})
    optimizer = fastopt.Adam()
    params = {"W": good()}
    before = snapshot(optimizer, params)
    setattr(optimizer, name, value)
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        optimizer.update(params, {"W": good()})
    assert_unchanged(optimizer, params, before)


def test_state_of_another_dtype_than_its_param_is_rejected_and_changes_nothing():
    optimizer = fastopt.Adam()
    optimizer.update({"W": good()}, {"W": good()})          # float64 state
    params = {"W": good(dtype=np.float32)}
    before = snapshot(optimizer, params)
    with pytest.raises(ValueError, match=r"state m\['W'\] has dtype float64 but param 'W' has "
                                         r"dtype float32"):
        optimizer.update(params, {"W": good(dtype=np.float32)})
    assert_unchanged(optimizer, params, before)


class Tagged(np.ndarray):
    """An ndarray subclass of the user's."""


def slow_path_cases(tmp_path):
    """(case, params, grads, a change to the optimizer after its first update, the reason)."""
    def memmap(name):
        array = np.memmap(tmp_path / name, np.float64, "w+", shape=(4, 3))
        array[...] = good()
        return array

    shared = good()

    def state_view_of_another(optimizer):
        optimizer.v["w"] = optimizer.m["w"]

    def strided_state(optimizer):
        optimizer.m["w"] = np.zeros((4, 6))[:, ::2]
    return [
        ("transposed", {"w": good((3, 4)).T}, {"w": good()}, None,
         "because it is not C-contiguous (a transposed view or a slice)"),
        ("memmap param", {"w": memmap("p.dat")}, {"w": good()}, None,
         "because it is a numpy.memmap, a subclass of ndarray (the loops take plain ndarrays; "
         "param.view(np.ndarray) is one over the same memory)"),
        ("memmap grad", {"w": good()}, {"w": memmap("g.dat")}, None,
         "because its grad is a numpy.memmap, a subclass of ndarray (the loops take plain "
         "ndarrays; grad.view(np.ndarray) is one over the same memory)"),
        ("subclass param", {"w": good().view(Tagged)}, {"w": good()}, None,
         f"because it is a {__name__}.Tagged, a subclass of ndarray (the loops take plain "
         f"ndarrays; param.view(np.ndarray) is one over the same memory)"),
        ("grad is the param", {"w": shared}, {"w": shared}, None,
         "because it shares memory with its grad"),
        ("state shares memory", {"w": good()}, {"w": good()}, state_view_of_another,
         "because its state v shares memory with its state m"),
        ("strided state", {"w": good()}, {"w": good()}, strided_state,
         "because its state m is not a C-contiguous, aligned, writeable, native-order array"),
    ]


def test_the_slow_path_warning_gives_the_real_reason(tmp_path):
    saved = fastopt.get_slow_path_warning()
    try:
        for case, params, grads, change, reason in slow_path_cases(tmp_path):
            optimizer = fastopt.Adam()
            if change is not None:
                optimizer.update(params, grads)
                change(optimizer)
            fastopt.set_slow_path_warning(True)
            # (state arrays that share memory compute nonsense: NaN is no concern here)
            with pytest.warns(fastopt.SlowPathWarning) as caught, np.errstate(all="ignore"):
                optimizer.update(params, grads)
            fastopt.set_slow_path_warning(False)
            messages = [str(warning.message) for warning in caught]
            assert messages == [f"param 'w' is updated by NumPy's path, several times slower "
                                f"than the compiled loops, {reason}"], case
    finally:
        fastopt.set_slow_path_warning(saved)


def test_pytest_without_fastopt_says_how_to_install_it(tmp_path):
    # A pytest whose Python has no fastopt (one from another environment than fastopt's) stops
    # with one error naming that Python and the install line, not one per test module.
    root = Path(__file__).resolve().parents[1]
    shadow = tmp_path / "fastopt"
    shadow.mkdir()
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'fastopt'\", name='fastopt')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    completed = subprocess.run(
        [sys.executable, "-c", "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))",
         "-q", "-p", "no:cacheprovider", "--rootdir", str(root),
         "-c", str(root / "pyproject.toml"), str(root / "tests" / "test_formulas.py")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert completed.returncode == 4, completed.stdout + completed.stderr
    assert (f"fastopt cannot be imported (No module named 'fastopt') in the Python that runs "
            f"pytest, {sys.executable}." in completed.stderr)
    assert f"{sys.executable} -m pip install \".[test,mpi]\"" in completed.stderr
