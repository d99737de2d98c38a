"""Property-based comparison of every optimizer with ``fastopt.reference``.

One property: for any optimizer of ``_helpers.CONFIGS`` with valid hyperparameters, any
container (dict, list, tuple) of params of any shape (0-d, empty, odd, small), dtype (float32,
float64; float16 and a grad of another float dtype go through NumPy's path), layout (C,
transposed, strided slice) and values (NaN, infinities, subnormals, extremes), and any number
of steps, fastopt gives the reference's bits: in every param, every state array and ``iter``.
NaN is compared by position only (SPEC 3: the sign and payload of a NaN are not part of the
contract).

Profiles: ``ci`` (chosen when CI is set: 200 examples, derandomized so a CI run is
reproducible, no example database) and ``dev`` (the default: 100 random examples).
HYPOTHESIS_PROFILE overrides both.
"""
import inspect
import os

import numpy as np
import pytest

# In the test extra; tools/dist.sh installs pytest alone, and there this module skips.
pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastopt
from fastopt import reference

from _helpers import CONFIGS, assert_same_bits
from registry import BY_NAME, REGISTRY

settings.register_profile(
    "ci", max_examples=200, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "dev", max_examples=100, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(   # a long search, by hand: HYPOTHESIS_PROFILE=long pytest ...
    "long", max_examples=5000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")

# Valid ranges of the hyperparameters by name (SPEC 2, 7, 8). A class's constructor arguments
# with these names are drawn; any other argument keeps its default, so an optimizer these
# strategies do not know yet is still compared, with its defaults.
COEFFICIENT = st.one_of(st.just(0.0), st.floats(0.0, 1.0, exclude_max=True))
HYPERPARAMETERS = {
    "lr": st.one_of(st.just(0.0), st.floats(1e-6, 1.0)),
    "momentum": COEFFICIENT,
    "decay_rate": COEFFICIENT,
    "beta1": COEFFICIENT,
    "beta2": COEFFICIENT,
    "rho": COEFFICIENT,
    "eps": st.floats(1e-12, 1e-1),
    "weight_decay": st.one_of(st.just(0.0), st.floats(0.0, 0.1)),
    "momentum_decay": st.floats(0.0, 1e-2),
    "velocity_first": st.booleans(),
    "eps_inside_sqrt": st.booleans(),
    "paper_form": st.booleans(),
    "amsgrad": st.booleans(),
    "centered": st.booleans(),
    "max_grad_norm": st.one_of(st.none(), st.floats(1e-3, 10.0)),
}
KNOWN_CLASSES = {entry.name for entry in REGISTRY}

LAYOUTS = ["C", "transposed", "strided"]


def special_values(dtype):
    info = np.finfo(dtype)
    return [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, float(info.smallest_subnormal),
            -float(info.smallest_subnormal), float(info.smallest_normal), float(info.max),
            -float(info.max), float(info.eps), 1.0]


def values_of(dtype):
    width = np.dtype(dtype).itemsize * 8
    return st.one_of(st.floats(-8.0, 8.0, width=width),
                     st.sampled_from(special_values(dtype)).map(np.dtype(dtype).type))


@st.composite
def hyperparameters(draw, name, options):
    cls = getattr(fastopt, name)
    drawn = {}
    if name in KNOWN_CLASSES:
        for key in inspect.signature(cls).parameters:
            if key in HYPERPARAMETERS and key not in options:
                drawn[key] = draw(HYPERPARAMETERS[key])
    return drawn


@st.composite
def param_specs(draw, container, ndim=None):
    """What one param and its grads are: built twice (fastopt's and the reference's copy);
    of ``ndim`` dims for a rule that takes only those (Muon's 2)."""
    shape = draw(hnp.array_shapes(min_dims=0 if ndim is None else ndim,
                                  max_dims=3 if ndim is None else ndim, min_side=0,
                                  max_side=7))
    numpy_path = draw(st.booleans())
    if numpy_path:
        dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
        grad_dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    else:
        dtype = grad_dtype = draw(st.sampled_from([np.float32, np.float64]))
    kinds = list(LAYOUTS)
    if shape == () and container != "tuple" and dtype == np.float64 == grad_dtype:
        kinds.append("scalar")   # the book's params['x'] = -7.0
    layout = draw(st.sampled_from(kinds))
    value = draw(hnp.arrays(dtype, shape, elements=values_of(dtype)))
    return {"shape": shape, "dtype": dtype, "grad_dtype": grad_dtype, "layout": layout,
            "value": value}


def build(spec, value=None, grad=False):
    """The array (or float) of ``spec``'s layout holding ``value`` (default: its start)."""
    value = spec["value"] if value is None else value
    if spec["layout"] == "scalar":
        return float(value)
    if grad:
        return value.copy()
    if spec["layout"] == "transposed" or value.ndim == 0:
        return np.array(value.T, order="C").T
    wide = np.zeros((*value.shape[:-1], 2 * value.shape[-1] + 1), value.dtype)
    wide[..., 1::2] = value
    return wide[..., 1::2] if spec["layout"] == "strided" else value.copy()


def container_of(kind, keys, values):
    if kind == "dict":
        return dict(zip(keys, values, strict=True))
    return list(values) if kind == "list" else tuple(values)


def assert_same_nans_and_bits(actual, expected, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, what
    assert actual.shape == expected.shape, what
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(actual), nan), f"{what}: NaN where NumPy has none, or not"
    try:
        assert_same_bits(actual[~nan], expected[~nan])
    except AssertionError as error:
        raise AssertionError(f"{what}: {error}") from None


def values_after(optimizer, params, keys):
    out = {f"param {k}": params[k] for k in keys}
    for name in optimizer.state_names:
        state = getattr(optimizer, name)
        out.update({f"{name} {k}": state[k] for k in keys})
    return out


@settings.get_profile(PROFILE)
@given(data=st.data())
def test_every_optimizer_matches_the_reference(data):
    config = data.draw(st.sampled_from(CONFIGS), label="config")
    name, options = config
    options = {**options, **data.draw(hyperparameters(name, options), label="hyperparameters")}
    container = data.draw(st.sampled_from(["dict", "list", "tuple"]), label="container")
    ndim = BY_NAME[name].param_ndim if name in BY_NAME else None
    specs = data.draw(st.lists(param_specs(container, ndim), min_size=1, max_size=4),
                      label="params")
    steps = data.draw(st.integers(1, 4), label="steps")
    grads = [[data.draw(hnp.arrays(spec["grad_dtype"], spec["shape"],
                                   elements=values_of(spec["grad_dtype"])))
              for spec in specs] for _ in range(steps)]

    keys = [f"k{i}" for i in range(len(specs))] if container == "dict" else range(len(specs))
    fast = getattr(fastopt, name)(**options)
    ref = getattr(reference, name)(**options)
    ours = container_of(container, keys, [build(spec) for spec in specs])
    theirs = container_of(container if container != "tuple" else "list", keys,
                          [build(spec) for spec in specs])
    with np.errstate(all="ignore"):
        for step in grads:
            values = [build(spec, g, grad=True) if spec["layout"] != "scalar" else float(g)
                      for spec, g in zip(specs, step, strict=True)]
            fast.update(ours, container_of(container, keys, values))
            ref.update(theirs, container_of(container if container != "tuple" else "list",
                                            keys, values))
    mine, expected = values_after(fast, ours, keys), values_after(ref, theirs, keys)
    for what, value in expected.items():
        assert_same_nans_and_bits(mine[what], value, what)
    assert getattr(fast, "iter", None) == getattr(ref, "iter", None)
