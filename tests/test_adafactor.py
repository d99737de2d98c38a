"""Adafactor against torch.optim.Adafactor 2.13, its state of other shapes, its checkpoints.

torch's single-tensor Adafactor is the oracle: 100 float64 steps of random grads over params
of 0, 1, 2 and 3 dims, with and without weight decay. torch's order of operations differs
(its means, norms and matmul reduce in their own order; its lerp and add may fuse a
multiply-add), so the comparison is normwise: the largest difference relative to each array's
largest element. Measured: at most 1.2e-15 on the params and 2.3e-16 on the state (float64);
TORCH_RTOL = 1e-12 leaves a margin of about 800 and still sees lr off by one part in 10**9.
"""
import numpy as np
import pytest

import fastopt
from fastopt import reference

from _helpers import assert_same_bits

torch = pytest.importorskip("torch")
if not hasattr(torch.optim, "Adafactor"):
    pytest.skip("this torch has no optim.Adafactor", allow_module_level=True)

SHAPES = [(), (7,), (5, 3), (4, 3, 2)]
KEYS = ["scalar", "vector", "matrix", "cube"]
STEPS = 100
TORCH_RTOL = 1e-12


def _start(seed=0):
    rng = np.random.default_rng(seed)
    return {key: rng.standard_normal(shape) for key, shape in zip(KEYS, SHAPES, strict=True)}


def _grads(rng):
    return {key: rng.standard_normal(shape) for key, shape in zip(KEYS, SHAPES, strict=True)}


def _relative(actual, expected):
    largest = np.max(np.abs(expected), initial=0.0)
    difference = np.max(np.abs(np.asarray(actual) - expected), initial=0.0)
    return difference / largest if largest else difference


def _torch_run(options, lr_scale=1.0):
    """fastopt's and torch's params and state after STEPS steps of the same grads."""
    params = _start()
    tensors = [torch.tensor(params[key].copy(), requires_grad=True) for key in KEYS]
    ours = fastopt.Adafactor(**{**options, "lr": options["lr"] * lr_scale})
    theirs = torch.optim.Adafactor(tensors, **options)
    rng = np.random.default_rng(1)
    for _ in range(STEPS):
        grads = _grads(rng)
        ours.update(params, grads)
        for key, tensor in zip(KEYS, tensors, strict=True):
            tensor.grad = torch.tensor(grads[key])
        theirs.step()
    return ours, params, theirs, tensors


@pytest.mark.parametrize("options", [{"lr": 1e-2}, {"lr": 0.05, "weight_decay": 0.1},
                                     {"lr": 0.3, "beta2_decay": -0.5, "d": 1.5}],
                         ids=["defaults", "weight-decay", "other-values"])
def test_100_float64_steps_agree_with_torch(options):
    ours, params, theirs, tensors = _torch_run(options)
    for key, tensor in zip(KEYS, tensors, strict=True):
        expected = tensor.detach().numpy()
        assert _relative(params[key], expected) <= TORCH_RTOL, key
        state = theirs.state[tensor]
        assert int(state["step"]) == ours.iter == STEPS
        for name in ("row_var", "col_var", "variance"):
            if name in state:
                assert _relative(getattr(ours, name)[key], state[name].numpy()) <= TORCH_RTOL


def test_the_torch_tolerance_sees_a_small_change():
    _, params, _, tensors = _torch_run({"lr": 1e-2}, lr_scale=1 + 1e-9)
    worst = max(_relative(params[key], tensor.detach().numpy())
                for key, tensor in zip(KEYS, tensors, strict=True))
    assert worst > TORCH_RTOL


def test_state_has_torchs_shapes_and_size_0_where_unused():
    optimizer = fastopt.Adafactor()
    params = _start()
    optimizer.update(params, _grads(np.random.default_rng(2)))
    shapes = {name: {key: value.shape for key, value in getattr(optimizer, name).items()}
              for name in optimizer.state_names}
    assert shapes == {
        "row_var": {"scalar": (0,), "vector": (0,), "matrix": (5, 1), "cube": (4, 3, 1)},
        "col_var": {"scalar": (0,), "vector": (0,), "matrix": (1, 3), "cube": (4, 1, 2)},
        "variance": {"scalar": (), "vector": (7,), "matrix": (0,), "cube": (0,)}}
    assert optimizer.iter == 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_and_reference_agree_bit_for_bit(dtype):
    rng = np.random.default_rng(3)
    shapes = [*SHAPES, (0,), (3, 0), (33, 257), (2, 4100)]
    params = {f"w{i}": rng.standard_normal(shape).astype(dtype) for i, shape in enumerate(shapes)}
    twin = {key: value.copy() for key, value in params.items()}
    options = {"lr": 0.1, "weight_decay": 0.05, "max_grad_norm": 20.0,
               "weight_decay_filter": lambda key, p: p.ndim > 1}
    ours, theirs = fastopt.Adafactor(**options), reference.Adafactor(**options)
    for _ in range(12):
        grads = {key: rng.standard_normal(value.shape).astype(dtype)
                 for key, value in params.items()}
        ours.update(params, grads)
        theirs.update(twin, grads)
    for key in params:
        assert_same_bits(params[key], twin[key])
        for name in ours.state_names:
            assert_same_bits(getattr(ours, name)[key], getattr(theirs, name)[key])


def test_eps1_none_is_each_dtypes_machine_epsilon():
    for dtype in (np.float64, np.float32):
        grads = {"w": np.zeros((2, 3), dtype)}   # the estimate falls to its floor
        implicit, explicit = fastopt.Adafactor(), fastopt.Adafactor(
            eps1=float(np.finfo(dtype).eps))
        a, b = {"w": np.ones((2, 3), dtype)}, {"w": np.ones((2, 3), dtype)}
        grads["w"][0, 0] = 1
        implicit.update(a, grads)
        explicit.update(b, grads)
        assert_same_bits(a["w"], b["w"])


def test_checkpoint_round_trip_resumes_exactly(tmp_path):
    rng = np.random.default_rng(4)
    steps = [_grads(rng) for _ in range(6)]
    whole, params = fastopt.Adafactor(lr=0.05, weight_decay=0.1), _start()
    for grads in steps:
        whole.update(params, grads)
    first, resumed = fastopt.Adafactor(lr=0.05, weight_decay=0.1), _start()
    for grads in steps[:3]:
        first.update(resumed, grads)
    fastopt.save(tmp_path / "adafactor.npz", first)
    state = fastopt.load(tmp_path / "adafactor.npz")
    assert state["other_shapes"] == ["row_var", "col_var", "variance"]
    second = fastopt.Adafactor(lr=0.05, weight_decay=0.1)
    second.load_state_dict(state)
    for grads in steps[3:]:
        second.update(resumed, grads)
    for key in KEYS:
        assert_same_bits(resumed[key], params[key])
        for name in whole.state_names:
            assert_same_bits(getattr(second, name)[key], getattr(whole, name)[key])


def _trained():
    optimizer = fastopt.Adafactor()
    optimizer.update(_start(), _grads(np.random.default_rng(5)))
    return optimizer


@pytest.mark.parametrize("into", ["new", "trained"])
def test_a_checkpoint_array_of_the_wrong_shape_is_refused(into):
    # Refused whether or not the optimizer has state yet: the key's other arrays imply its
    # param's shape. The message names the key and both shapes; nothing changes.
    state = _trained().state_dict()
    state["state"]["row_var"]["matrix"] = np.zeros((5, 2))
    target = fastopt.Adafactor() if into == "new" else _trained()
    before = target.state_dict()
    with pytest.raises(ValueError, match=r"state row_var\['matrix'\] has shape \(5, 2\), but "
                                         r"a param of shape \(5, 3\) \(as its other state "
                                         r"implies\) keeps one of shape \(5, 1\)"):
        target.load_state_dict(state)
    after = target.state_dict()
    assert after["iter"] == before["iter"]
    for name, container in before["state"].items():
        assert (container is None) == (after["state"][name] is None)
        for key, array in (container or {}).items():
            assert_same_bits(after["state"][name][key], array)


def test_a_checkpoint_whose_state_fits_no_param_is_refused():
    state = _trained().state_dict()
    state["state"]["variance"]["matrix"] = np.zeros(4)
    with pytest.raises(ValueError, match=r"state variance\['matrix'\] has shape \(4,\), but a "
                                         r"param of shape \(5, 3\)"):
        fastopt.Adafactor().load_state_dict(state)
    state = _trained().state_dict()
    state["state"]["row_var"]["vector"] = np.zeros((7, 1))
    with pytest.raises(ValueError, match=r"the state of 'vector' fits no param"):
        fastopt.Adafactor().load_state_dict(state)
    state = _trained().state_dict()
    del state["other_shapes"]   # then every state must have its param's shape
    with pytest.raises(ValueError, match="the state of one param must agree"):
        fastopt.Adafactor().load_state_dict(state)


def test_an_update_refuses_state_of_another_shape_and_changes_nothing():
    optimizer = _trained()
    optimizer.col_var["matrix"] = np.zeros((1, 4))
    params = _start()
    before = {key: value.copy() for key, value in params.items()}
    with pytest.raises(ValueError, match=r"state col_var\['matrix'\] has shape \(1, 4\) but a "
                                         r"param of shape \(5, 3\) .* keeps one of shape "
                                         r"\(1, 3\)"):
        optimizer.update(params, _grads(np.random.default_rng(6)))
    assert optimizer.iter == 1
    for key in KEYS:
        assert_same_bits(params[key], before[key])


def test_eps1_none_is_kept_out_of_the_checkpoints_hyperparameters():
    state = _trained().state_dict()
    assert "eps1" not in state["hyperparameters"]
    with pytest.raises(ValueError, match="eps1"):
        fastopt.Adafactor(eps1=1e-30).load_state_dict(state)
    numbered = fastopt.Adafactor(eps1=1e-30)
    numbered.update(_start(), _grads(np.random.default_rng(7)))
    assert numbered.state_dict()["hyperparameters"]["eps1"] == 1e-30
    with pytest.raises(ValueError, match="eps1 must be finite and >= 0"):
        fastopt.Adafactor(eps1=-1.0)


def test_ready_takes_the_declared_state_shapes_given_the_loop():
    # The checked path asks _kernels.ready about each param: with Adafactor's loop it takes
    # state of the declared shapes (or none yet), and nothing else.
    from fastopt._simd import kernels
    p, g = np.ones((5, 3)), np.ones((5, 3))
    row, col, none = np.zeros((5, 1)), np.zeros((1, 3)), np.zeros((0,))
    assert kernels.ready(p, g, row, col, none, loop="adafactor")
    assert kernels.ready(p, g, None, None, None, loop="adafactor")
    assert not kernels.ready(p, g, row, col, none)                            # elementwise
    assert not kernels.ready(p, g, np.zeros((5, 3)), col, none, loop="adafactor")
    assert not kernels.ready(p, g, row, col, np.zeros((5, 3)), loop="adafactor")
    assert not kernels.ready(p, g, row, col.astype(np.float32), none, loop="adafactor")
    assert not kernels.ready(p.T, g.T, np.zeros((3, 1)), np.zeros((1, 5)), none,
                             loop="adafactor")                                   # a view
    assert not kernels.ready(p, g, p[:, :1], col, none, loop="adafactor")     # not contiguous
    v = np.ones(7)
    assert kernels.ready(v, v.copy(), none, none, np.zeros(7), loop="adafactor")
    assert not kernels.ready(v, v.copy(), none, none, v, loop="adafactor")    # the param


# --- what holds of the params' inf and nan -----------------------------------------------------
# The step size reads the whole param's norm (torch's relative step), so an inf or nan in a
# param reaches every element of that param: tests/test_weight_decay.py's check that they stay
# in their places leaves Adafactor out (the registry's param_norm_step). What holds instead:
# the state is a function of the grads alone (the decay, decoupled, scales only the param),
# and a param's inf or nan reaches no other param (a nan does not even spread in its own:
# see below).

def _views(params):
    return {key: np.ascontiguousarray(value.T).T if value.ndim >= 2 else value.copy()
            for key, value in params.items()}


def _state_bits(optimizer):
    return {(name, key): array.tobytes() for name in optimizer.state_names
            for key, array in getattr(optimizer, name).items()}


@pytest.mark.parametrize("layout", ["compiled", "views"])
@pytest.mark.parametrize("decay", [0.0, 0, lambda step: 0.0, 0.1],
                         ids=["0.0", "int-0", "schedule", "0.1"])
@pytest.mark.parametrize("module", [fastopt, reference], ids=["fastopt", "reference"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_state_never_depends_on_the_params(dtype, module, decay, layout):
    rng = np.random.default_rng(8)
    shapes = {"W": (6, 5), "T": (3, 4, 2), "b": (7,)}
    first = {key: rng.standard_normal(shape).astype(dtype) for key, shape in shapes.items()}
    second = {key: (3 * rng.standard_normal(shape)).astype(dtype)
              for key, shape in shapes.items()}
    special = {key: value.copy() for key, value in first.items()}
    special["W"][0, 0], special["T"][1, 2, 0], special["b"][3] = np.inf, -np.inf, np.nan
    runs = [_views(params) if layout == "views" else params
            for params in (first, second, special)]
    optimizers = [module.Adafactor(lr=0.1, weight_decay=decay) for _ in runs]
    with np.errstate(invalid="ignore", over="ignore"):
        for _ in range(5):
            grads = {key: rng.standard_normal(shape).astype(dtype)
                     for key, shape in shapes.items()}
            grads["W"][:, 3] = -0.0
            grads["b"][2:5] = 0.0
            for optimizer, params in zip(optimizers, runs, strict=True):
                optimizer.update(params, grads)
    assert not np.array_equal(runs[0]["W"], runs[1]["W"])   # the params did differ
    for optimizer in optimizers[1:]:
        assert _state_bits(optimizer) == _state_bits(optimizers[0])


@pytest.mark.parametrize("layout", ["compiled", "views"])
@pytest.mark.parametrize("module", [fastopt, reference], ids=["fastopt", "reference"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_params_inf_or_nan_reaches_no_other_param(dtype, module, layout):
    rng = np.random.default_rng(9)
    shapes = {"W": (6, 5), "b": (7,), "c": (4,)}
    finite = {key: rng.standard_normal(shape).astype(dtype) for key, shape in shapes.items()}
    special = {key: value.copy() for key, value in finite.items()}
    special["W"][2, 2], special["b"][1] = np.inf, np.nan
    runs = [_views(params) if layout == "views" else params for params in (finite, special)]
    optimizers = [module.Adafactor(lr=0.1) for _ in runs]
    with np.errstate(invalid="ignore", over="ignore"):
        for _ in range(5):
            grads = {key: rng.standard_normal(shape).astype(dtype)
                     for key, shape in shapes.items()}
            for optimizer, params in zip(optimizers, runs, strict=True):
                optimizer.update(params, grads)
    assert_same_bits(runs[1]["c"], runs[0]["c"])
    assert np.all(np.isfinite(runs[0]["W"])) and np.all(np.isfinite(runs[0]["b"]))
    # As torch's: an inf makes the norm, so the step size, infinite: every element of its
    # param is then inf or nan. A nan makes the norm nan, and Python's max(eps2, nan) is eps2
    # (torch's max too): the step size is eps2*rho, and the nan stays in its place.
    assert not np.any(np.isfinite(runs[1]["W"]))
    assert np.isnan(runs[1]["b"][1])
    assert np.all(np.isfinite(np.delete(runs[1]["b"], 1)))
