"""Every optimizer against its formula, restated independently (tests/oracles.py).

For every entry of tests/registry.py and every option set it sweeps, plus the options every
optimizer takes (weight decay with a filter that leaves the biases out, and clipping by global
norm): float64 and float32 params of the book's TwoLayerNet shapes and odd shapes, 100 steps
of random grads of varying size, through ``fastopt.<Class>``, through
``fastopt.reference.<Class>`` and through the oracle. After steps 1, 2, 6 and 100 every param,
every state array and every scalar state must equal the oracle's: bit for bit, or within the
documented tolerance where the oracle cannot follow fastopt's statements (clipping's norm;
see tests/oracles.py).
"""
import ast
import functools

import numpy as np
import pytest

import fastopt
from fastopt import optimizers, reference

import oracles
from _helpers import SHAPES, assert_same_bits, config_id
from registry import BY_NAME, REGISTRY

STEPS = 100
CHECKED = (1, 2, 6, STEPS)   # RAdam: 6 is its first rectified step with the default beta2
PARAM_SHAPES = SHAPES["two_layer_net"] + [(7,), (3, 5, 11)]
KEYS = ["W1", "b1", "W2", "b2", "odd", "cube"]


def not_a_bias(key, param):
    return param.ndim > 1


# The options every optimizer takes: weight decay (coupled, or decoupled for AdamW and Lion) for
# the params the filter accepts, for every optimizer; and with clipping by global norm for one
# rule whose step moves with the grad's size (SGD) and one with decoupled decay (AdamW; Adam's
# own entry has a clipped option set too). The grads' norm is about 200*scale (see
# grad_steps): the steps with scale 1 and 1.5 are clipped, those with 0.5 are not.
DECAY = {"weight_decay": 0.05, "weight_decay_filter": not_a_bias}
DECAY_CLIP = {**DECAY, "max_grad_norm": 150.0}

CASES = ([(entry.name, options) for entry in REGISTRY
          for options in (*entry.book_configs, *entry.configs)]
         + [(entry.name, DECAY) for entry in REGISTRY]
         + [("SGD", DECAY_CLIP), ("AdamW", DECAY_CLIP)])
DTYPES = [np.float64, np.float32]


def case_id(case):
    name, options = case
    if options is DECAY:
        return f"{name}-decay-filter"
    if options is DECAY_CLIP:
        return f"{name}-decay-filter-clip"
    return config_id(case)


def shapes_of(name):
    """PARAM_SHAPES, or for a rule of 2-D params only (Muon) matrices of as many elements
    (the registry's ``param_shape``): every other rule's runs are unchanged."""
    return tuple(BY_NAME[name].param_shapes(PARAM_SHAPES))


def start(dtype, shapes=tuple(PARAM_SHAPES)):
    rng = np.random.default_rng(2024)
    return {key: rng.standard_normal(shape).astype(dtype)
            for key, shape in zip(KEYS, shapes, strict=True)}


@functools.lru_cache(maxsize=4)
def grad_steps(dtype, shapes=tuple(PARAM_SHAPES)):
    """STEPS dicts of random grads; their scale cycles through 0.5, 1 and 1.5 (made once per
    dtype and shapes: nothing writes them)."""
    rng = np.random.default_rng(99)
    steps = []
    for t in range(1, STEPS + 1):
        scale = 0.5 * (1 + t % 3)
        steps.append({key: (scale * rng.standard_normal(shape)).astype(dtype)
                      for key, shape in zip(KEYS, shapes, strict=True)})
    return steps


def snapshot(params, state_arrays, scalars):
    return ({key: value.copy() for key, value in params.items()},
            {name: {key: value.copy() for key, value in arrays.items()}
             for name, arrays in state_arrays.items()},
            dict(scalars))


@functools.lru_cache(maxsize=4)
def oracle_run(name, case_index, dtype):
    """The oracle's params, state arrays and scalar state after each CHECKED step."""
    entry = BY_NAME[name]
    options = CASES[case_index][1]
    params, state, seen = start(dtype, shapes_of(name)), {}, {}
    for t, grads in enumerate(grad_steps(dtype, shapes_of(name)), start=1):
        params, state = oracles.step(entry.oracle, params, grads, state, t,
                                     {"lr": entry.lr, **options})
        if t in CHECKED:
            arrays = {key: value for key, value in state.items() if isinstance(value, dict)}
            scalars = {key: value for key, value in state.items() if key not in arrays}
            seen[t] = snapshot(params, arrays, {**scalars, "iter": t})
    return seen


def class_run(module, name, options, dtype):
    """The same through ``module.<name>`` (fastopt or fastopt.reference)."""
    entry = BY_NAME[name]
    optimizer = getattr(module, name)(lr=entry.lr, **options)
    params, seen = start(dtype, shapes_of(name)), {}
    for t, grads in enumerate(grad_steps(dtype, shapes_of(name)), start=1):
        optimizer.update(params, grads)
        if t in CHECKED:
            arrays = {state: getattr(optimizer, state) for state in entry.state_names(options)}
            scalars = {state: getattr(optimizer, state)
                       for state in (*entry.scalar_state, "iter")}
            seen[t] = snapshot(params, arrays, scalars)
    return seen


def tolerance(entry, options, dtype):
    """The normwise relative bound for this run (0: bits)."""
    rtol = entry.rtol
    if not isinstance(rtol, float):   # a bound per dtype
        rtol = rtol[np.dtype(dtype)]
    if options.get("max_grad_norm") is not None:
        return max(rtol, oracles.CLIPPED[np.dtype(dtype)])
    return rtol


def assert_close(actual, expected, rtol, what):
    if rtol == oracles.EXACT:
        try:
            assert_same_bits(actual, expected)
        except AssertionError as error:
            raise AssertionError(f"{what}: {error}") from None
        return
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    largest = np.max(np.abs(expected), initial=0.0)
    difference = np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0)
    assert difference <= rtol * largest, (
        f"{what}: differs by {difference:.3g}, {difference / largest:.3g} of its largest "
        f"element; the bound is {rtol:g}")


def assert_matches(ours, theirs, rtol):
    for t in CHECKED:
        (params, arrays, scalars), (want_params, want_arrays, want_scalars) = ours[t], theirs[t]
        assert list(params) == list(want_params)
        for key in want_params:
            assert_close(params[key], want_params[key], rtol, f"step {t}, param {key}")
        assert set(arrays) == set(want_arrays), f"step {t}: state {set(arrays)}"
        for name, want in want_arrays.items():
            assert list(arrays[name]) == list(want), f"step {t}, state {name}"
            for key in want:
                assert_close(arrays[name][key], want[key], rtol, f"step {t}, {name} of {key}")
        assert set(scalars) == set(want_scalars), f"step {t}: scalar state {set(scalars)}"
        for name, want in want_scalars.items():
            if rtol == oracles.EXACT or name == "iter":
                assert scalars[name] == want, f"step {t}, {name}: {scalars[name]!r} != {want!r}"
            else:
                assert abs(scalars[name] - want) <= rtol * abs(want), f"step {t}, {name}"


@pytest.mark.parametrize("module", [fastopt, reference], ids=["fastopt", "reference"])
@pytest.mark.parametrize("case_index", range(len(CASES)),
                         ids=[case_id(case) for case in CASES])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_every_rule_follows_its_formula(module, case_index, dtype):
    name, options = CASES[case_index]
    expected = oracle_run(name, case_index, dtype)
    ours = class_run(module, name, options, dtype)
    assert_matches(ours, expected, tolerance(BY_NAME[name], options, dtype))


def test_the_registry_names_every_optimizer_fastopt_exports():
    # An optimizer added to fastopt without an entry (and so without an oracle) fails here.
    exported = set(optimizers.__all__) - {"RMSProp"}   # RMSProp is RMSprop under the notes' name
    assert optimizers.RMSProp is optimizers.RMSprop
    assert {entry.name for entry in REGISTRY} == exported
    assert set(reference.__all__) == set(optimizers.__all__)
    assert len(REGISTRY) == len(BY_NAME)
    for entry in REGISTRY:
        assert entry.oracle.__module__ == "oracles"


def test_the_oracles_use_nothing_of_fastopt():
    # Independent of what they check: no import of fastopt, no name taken from it.
    with open(oracles.__file__, encoding="utf-8") as file:
        tree = ast.parse(file.read())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert imported and not [name for name in imported if name.split(".")[0] == "fastopt"]
    assert not [name for name, value in vars(oracles).items()
                if (getattr(value, "__module__", None) or "").startswith("fastopt")]


@pytest.mark.parametrize("config", [(entry.name, options) for entry in REGISTRY
                                    for options in (*entry.book_configs, *entry.configs)],
                         ids=config_id)
def test_the_registry_names_each_optimizers_state(config):
    name, options = config
    entry = BY_NAME[name]
    for module in (fastopt, reference):
        optimizer = getattr(module, name)(**options)
        assert tuple(optimizer.state_names) == entry.state_names(options)
        for scalar in entry.scalar_state:
            assert isinstance(getattr(optimizer, scalar), float)


def test_the_clipped_tolerance_sees_a_small_change():
    # The oracle tests compare bits, except with clipping in float64, whose bound must still
    # see the learning rate changed by one part in 10**9.
    index = CASES.index(("SGD", DECAY_CLIP))
    entry = BY_NAME["SGD"]
    rtol = tolerance(entry, DECAY_CLIP, np.float64)
    assert rtol == oracles.CLIPPED[np.dtype(np.float64)] > 0
    expected = oracle_run("SGD", index, np.float64)
    assert_matches(class_run(fastopt, "SGD", DECAY_CLIP, np.float64), expected, rtol)
    optimizer = fastopt.SGD(lr=entry.lr * (1 + 1e-9), **DECAY_CLIP)
    params = start(np.float64)
    for grads in grad_steps(np.float64):
        optimizer.update(params, grads)
    with pytest.raises(AssertionError, match="the bound is"):
        assert_close(params["W1"], expected[STEPS][0]["W1"], rtol, "W1")
