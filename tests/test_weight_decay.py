"""Weight decay (SPEC §8): zero decay is no decay, the filter, and the caller's grads.

- ``weight_decay=0`` (a float, an int or a schedule's value) gives the bits of the optimizer
  without decay, also with inf and nan params and -0.0 grads: there is no ``0*p`` term, which
  would turn an infinite param into nan and poison the state. The oracle does not use fastopt's
  decay code: without decay no rule's state depends on the params, so a run whose params hold
  inf and nan must keep exactly the state of a run with finite params in those places, and
  its infinite params stay infinite. The same check with a nonzero decay fails (asserted).
  Schedule-Free's state starts as copies of the params and its params are rewritten from it
  each step, so it is checked after the first update instead (tests/test_schedulefree.py).
  Adafactor's step size reads the whole param's norm, so an inf or nan reaches its whole
  param: it is left out (declared in the registry as ``param_norm_step``), and
  tests/test_adafactor.py checks what holds for it instead. Muon's decoupled decay multiplies
  the param (``p *= 1 - lr*weight_decay``, as torch's), which keeps an inf or nan where it is:
  the check with zero decay holds for it, the proof that a nonzero decay fails that check does
  not (``decay_scales_param`` in the registry); its decay is seen acting by the filter's test.
  A rule of 2-D params only (Muon) gets matrices of as many elements as the tests' vectors.
- ``weight_decay_filter=lambda key, p: p.ndim > 1`` keeps the excluded params exactly as an
  optimizer without decay keeps them, and the others exactly as one with decay on them only.
- The caller's grads are never written (their bytes are the same after every update), with
  coupled or decoupled decay and with ``max_grad_norm`` clipping, on the compiled path and on
  NumPy's path (transposed views).

Each on every optimizer and option of the test matrix, for fastopt and fastopt.reference.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastopt
from fastopt import reference

from _helpers import CONFIGS, LEARNING_RATES, as_param, config_id, param_shape
from registry import BY_NAME

# Every optimizer and variant option, without the configs that set decay or clipping.
PLAIN = [(name, options) for name, options in CONFIGS
         if not {"weight_decay", "max_grad_norm"} & set(options)]
# The rules whose params' inf and nan stay in their places, and whose state never sees
# the params, without decay: all but those whose state starts as a copy of the param
# (Schedule-Free's, checked after the first update in tests/test_schedulefree.py) and those
# whose step size reads the whole param's norm (Adafactor's; see tests/test_adafactor.py).
CONFINED = [(name, options) for name, options in PLAIN
            if not BY_NAME[name].param_state and not BY_NAME[name].param_norm_step]
# Those where a nonzero decay brings the params' inf and nan into the params or state (not a
# decay that multiplies the param: Muon's).
DECAY_SEEN = [config for config in CONFINED if not BY_NAME[config[0]].decay_scales_param]
IMPLEMENTATIONS = {"fastopt": fastopt, "reference": reference}
STEPS = 5


def make(module, config, **extra):
    name, options = config
    return getattr(module, name)(**{"lr": LEARNING_RATES[name], **options, **extra})


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def state_arrays(opt):
    """(name, key, array) for every state array."""
    for name in opt.state_names:
        state = getattr(opt, name)
        for key in (state if isinstance(state, dict) else range(len(state))):
            yield name, key, state[key]


@pytest.fixture
def compiled_only():
    """SlowPathWarning on while the test runs: under ``filterwarnings = error`` a param that
    falls back to NumPy's path raises, unless the test expects the warning."""
    saved = fastopt.get_slow_path_warning()
    fastopt.set_slow_path_warning(True)
    try:
        yield
    finally:
        fastopt.set_slow_path_warning(saved)


# --- weight_decay=0 is no decay ---------------------------------------------------------------

# Special params: inf, -inf and nan in the places below; their twin holds 0.5 there.
SPECIAL = {"W": {(0, 0): np.inf, (1, 1): -np.inf, (2, 2): np.nan}, "b": {(0,): np.nan,
                                                                          (1,): np.inf}}
SHAPES = {"W": (6, 5), "b": (7,)}


def special_params(rng, dtype, layout, config=None):
    """(params with inf and nan, the same params finite there), as C-contiguous arrays or as
    transposed views (NumPy's path); of ``param_shape`` for ``config``'s rule."""
    special, finite = {}, {}
    for key, shape in SHAPES.items():
        values = rng.standard_normal(shape).astype(dtype)
        twin = values.copy()
        for index, value in SPECIAL[key].items():
            values[index] = value
            twin[index] = 0.5
        if config is not None:
            values, twin = as_param(config, values), as_param(config, twin)
        if layout == "views":
            special[key] = np.ascontiguousarray(values.T).T
            finite[key] = np.ascontiguousarray(twin.T).T
        else:
            special[key], finite[key] = values, twin
    return special, finite


def grads_with_negative_zeros(rng, dtype, config=None):
    grads = {key: rng.standard_normal(shape).astype(dtype) for key, shape in SHAPES.items()}
    grads["W"][:, 3] = -0.0
    grads["b"][2:5] = -0.0
    grads["W"][4, :] = 0.0
    if config is not None:
        grads = {key: as_param(config, grad) for key, grad in grads.items()}
    return grads


def check_state_never_sees_params(module, config, dtype, layout, **decay):
    """Run on params with inf/nan and on finite twins; assert what no decay implies."""
    rng = np.random.default_rng(3)
    params, twins = special_params(rng, dtype, layout, config)
    opt, twin_opt = make(module, config, **decay), make(module, config, **decay)
    with np.errstate(invalid="ignore", over="ignore"):
        for _ in range(STEPS):
            grads = grads_with_negative_zeros(rng, dtype, config)
            opt.update(params, grads)
            twin_opt.update(twins, grads)
    for (name, key, array), (_, _, twin) in zip(state_arrays(opt), state_arrays(twin_opt),
                                                strict=True):
        assert same_bits(array, twin), f"state {name}[{key!r}] saw the params' inf or nan"
    for key, places in SPECIAL.items():
        mask = np.zeros(SHAPES[key], bool)
        for index in places:
            mask[index] = True
        # (in the shape the places are given in: Muon's params are matrices)
        param, twin = params[key].reshape(SHAPES[key]), twins[key].reshape(SHAPES[key])
        assert same_bits(param[~mask], twin[~mask]), f"param {key!r}"
        for index, value in places.items():
            got = param[index]
            assert (np.isnan(got) if np.isnan(value) else got == value), \
                f"param {key}{list(index)} was {value}, is now {got}"


@pytest.mark.parametrize("layout", ["compiled", "views"])
@pytest.mark.parametrize("zero", [0.0, 0, lambda step: 0.0], ids=["0.0", "int-0", "schedule"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("config", CONFINED, ids=[config_id(c) for c in CONFINED])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_zero_decay_is_no_decay(config, implementation, zero, layout, dtype, request):
    if layout == "compiled":
        request.getfixturevalue("compiled_only")   # and no fallback to NumPy's path
    check_state_never_sees_params(IMPLEMENTATIONS[implementation], config, dtype, layout,
                                  weight_decay=zero)


@pytest.mark.parametrize("config", DECAY_SEEN, ids=[config_id(c) for c in DECAY_SEEN])
def test_zero_decay_check_fails_with_decay(config):
    # The check above can fail: a nonzero decay brings the params' inf and nan in.
    with pytest.raises(AssertionError):
        check_state_never_sees_params(fastopt, config, np.float64, "compiled",
                                      weight_decay=0.01)


@pytest.mark.parametrize("config", PLAIN, ids=[config_id(c) for c in PLAIN])
def test_zero_decay_equals_compiled_and_reference(config, compiled_only):
    # The compiled loops give the reference's bits with weight_decay=0 and specials too.
    rng = np.random.default_rng(4)
    params, _ = special_params(rng, np.float64, "compiled", config)
    ref_params = {key: value.copy() for key, value in params.items()}
    ours, ref = make(fastopt, config, weight_decay=0.0), make(reference, config,
                                                              weight_decay=0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        for _ in range(STEPS):
            grads = grads_with_negative_zeros(rng, np.float64, config)
            ours.update(params, grads)
            ref.update(ref_params, grads)
    for key in params:
        assert np.array_equal(params[key], ref_params[key], equal_nan=True)
        assert np.array_equal(np.signbit(params[key]), np.signbit(ref_params[key]))
    for (name, key, array), (_, _, theirs) in zip(state_arrays(ours), state_arrays(ref),
                                                  strict=True):
        assert same_bits(array, theirs), f"state {name}[{key!r}]"


# --- which params decay -----------------------------------------------------------------------

FILTER_SHAPES = {"W1": (5, 4), "b1": (4,), "W2": (4, 3), "b2": (3,)}


def laid_out(values, layout):
    """A new array of ``values``: C-contiguous, or non-contiguous (NumPy's path)."""
    if layout == "compiled":
        return values.copy()
    view = (np.ascontiguousarray(values.T).T if values.ndim > 1 and min(values.shape) > 1
            else np.repeat(values, 2, axis=-1)[..., ::2])
    assert not view.flags.c_contiguous
    return view


def as_container(params, keys, kind):
    chosen = {key: params[key] for key in keys}
    return chosen if kind == "dict" else list(chosen.values())


@pytest.mark.parametrize("kind", ["dict", "list"])
@pytest.mark.parametrize("layout", ["compiled", "views"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("config", PLAIN, ids=[config_id(c) for c in PLAIN])
def test_filter_leaves_excluded_params_undecayed(config, implementation, layout, kind,
                                                 request):
    if layout == "compiled":
        request.getfixturevalue("compiled_only")
    module = IMPLEMENTATIONS[implementation]
    rng = np.random.default_rng(5)
    shapes = {key: param_shape(config, shape) for key, shape in FILTER_SHAPES.items()}
    start = {key: rng.standard_normal(shape) for key, shape in shapes.items()}
    copies = [{key: laid_out(value, layout) for key, value in start.items()}
              for _ in range(4)]
    filtered, decayed, plain, plain_all = copies
    matrices, vectors = ["W1", "W2"], ["b1", "b2"]
    # the matrices, not the vectors (which are matrices of one row for Muon)
    opt = make(module, config, weight_decay=0.1,
               weight_decay_filter=lambda key, p: p.ndim > 1 and p.shape[0] > 1)
    opt_decayed = make(module, config, weight_decay=0.1)
    opt_plain = make(module, config, weight_decay=0.0)
    opt_plain_all = make(module, config, weight_decay=0.0)
    for _ in range(STEPS):
        grads = {key: rng.standard_normal(shape) for key, shape in shapes.items()}
        opt.update(as_container(filtered, FILTER_SHAPES, kind),
                   as_container(grads, FILTER_SHAPES, kind))
        opt_decayed.update(as_container(decayed, matrices, kind),
                           as_container(grads, matrices, kind))
        opt_plain.update(as_container(plain, vectors, kind), as_container(grads, vectors, kind))
        opt_plain_all.update(as_container(plain_all, FILTER_SHAPES, kind),
                             as_container(grads, FILTER_SHAPES, kind))
    positions = {key: index for index, key in enumerate(FILTER_SHAPES)}
    for twin, twin_opt, keys in [(decayed, opt_decayed, matrices), (plain, opt_plain, vectors)]:
        for index, key in enumerate(keys):
            assert same_bits(filtered[key], twin[key]), f"param {key!r}"
            for name in opt.state_names:
                ours = getattr(opt, name)[key if kind == "dict" else positions[key]]
                theirs = getattr(twin_opt, name)[key if kind == "dict" else index]
                assert same_bits(ours, theirs), f"state {name}[{key!r}]"
    # The decay was applied to the matrices (else the test above could not fail).
    for key in matrices:
        assert not np.array_equal(filtered[key], plain_all[key])


# --- the caller's grads are never written -----------------------------------------------------

@pytest.mark.parametrize("options", [{"weight_decay": 0.1}, {"max_grad_norm": 0.5},
                                     {"weight_decay": 0.1, "max_grad_norm": 0.5}],
                         ids=["decay", "clip", "decay+clip"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("config", PLAIN, ids=[config_id(c) for c in PLAIN])
def test_grads_are_not_written_compiled(config, implementation, options, compiled_only):
    module = IMPLEMENTATIONS[implementation]
    rng = np.random.default_rng(6)
    opt = make(module, config, **options)
    shapes = {key: param_shape(config, shape) for key, shape in FILTER_SHAPES.items()}
    params = {key: rng.standard_normal(shape) for key, shape in shapes.items()}
    for _ in range(STEPS):
        grads = {key: rng.standard_normal(shape) for key, shape in shapes.items()}
        assert reference.global_norm(list(grads.values())) > 0.5   # clipping happens
        before = {key: grad.tobytes() for key, grad in grads.items()}
        opt.update(params, grads)
        assert {key: grad.tobytes() for key, grad in grads.items()} == before


@pytest.mark.parametrize("options", [{"weight_decay": 0.1}, {"max_grad_norm": 0.5},
                                     {"weight_decay": 0.1, "max_grad_norm": 0.5}],
                         ids=["decay", "clip", "decay+clip"])
@pytest.mark.parametrize("config", PLAIN, ids=[config_id(c) for c in PLAIN])
def test_grads_are_not_written_numpy_path(config, options, compiled_only):
    # Params and grads are transposed views: fastopt takes NumPy's path (the warning says so).
    rng = np.random.default_rng(7)
    opt = make(fastopt, config, **options)
    params = {key: np.ascontiguousarray(rng.standard_normal(shape[::-1])).T
              for key, shape in FILTER_SHAPES.items() if len(shape) > 1}
    for _ in range(STEPS):
        bases = {key: rng.standard_normal(param.shape[::-1]) for key, param in params.items()}
        grads = {key: base.T for key, base in bases.items()}
        assert reference.global_norm(list(grads.values())) > 0.5   # clipping happens
        before = {key: base.tobytes() for key, base in bases.items()}
        with pytest.warns(fastopt.SlowPathWarning):
            opt.update(params, grads)
        assert {key: base.tobytes() for key, base in bases.items()} == before
