"""fastopt.dezero against DeZero's own optimizers (Deep Learning from Scratch 3).

DeZero is not a dependency: below are a DeZero-like ``Parameter`` and ``Layer``/``Model`` (what
``dezero/core.py`` and ``dezero/layers.py`` give an optimizer: ``params()`` yielding objects with
``.data`` and ``.grad``, whose ``.data`` is the grad array) and DeZero's ``dezero/optimizers.py``
restated as the oracle (MIT-licensed, see LICENSES/): the same statements in the same order,
so the same arithmetic. Every comparison is of bits (dtype, shape and bytes).
"""
import math

import numpy as np
import pytest

from fastopt import dezero

from _helpers import assert_same_bits

# ---------------------------------------------------------------------------------------------
# What DeZero's core.py and layers.py give an optimizer.


class Variable:
    def __init__(self, data, name=None):
        self.data = data
        self.name = name
        self.grad = None


class Parameter(Variable):
    pass


class Layer:
    """DeZero's Layer: params and sublayers are registered by attribute name (in a set, as
    DeZero does), and ``params()`` yields them, a sublayer's recursively."""

    def __init__(self):
        self._params = set()

    def __setattr__(self, name, value):
        if isinstance(value, (Parameter, Layer)):
            self._params.add(name)
        super().__setattr__(name, value)

    def params(self):
        for name in self._params:
            obj = self.__dict__[name]
            if isinstance(obj, Layer):
                yield from obj.params()
            else:
                yield obj


class Linear(Layer):
    def __init__(self, name, in_size, out_size, w_dtype, b_dtype, rng):
        super().__init__()
        self.W = Parameter((rng.standard_normal((in_size, out_size))
                            * np.sqrt(1 / in_size)).astype(w_dtype), name=f"{name}.W")
        self.b = Parameter(np.zeros(out_size, dtype=b_dtype), name=f"{name}.b")


class MLP(Layer):
    """A small 2-layer MLP (DeZero's ``MLP((40, 3))`` on 6 inputs), plus a param that never
    gets a grad. ``dtypes``: (W's, b's); DeZero's own Linear under NumPy >= 2 gives a float64
    W (``randn(...).astype(float32) * np.sqrt(1/I)`` promotes) and a float32 b."""

    def __init__(self, dtypes, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.l0 = Linear("l0", 6, 40, *dtypes, rng)
        self.l1 = Linear("l1", 40, 3, *dtypes, rng)
        self.unused = Parameter(np.ones((2, 2), dtypes[0]), name="unused")


# The models' dtypes: float64, float32, and DeZero's Linear under NumPy >= 2 (float64 W,
# float32 b, and float64 grads for both: the graph computes in float64).
MODELS = {"float64": ((np.float64, np.float64), (np.float64, np.float64)),
          "float32": ((np.float32, np.float32), (np.float32, np.float32)),
          "dezero-linear": ((np.float64, np.float32), (np.float64, np.float64))}


# ---------------------------------------------------------------------------------------------
# DeZero's dezero/optimizers.py, restated: the oracle.


class RefOptimizer:
    def __init__(self):
        self.target = None
        self.hooks = []

    def setup(self, target):
        self.target = target
        return self

    def update(self):
        with_grads = [p for p in self.target.params() if p.grad is not None]
        for hook in self.hooks:
            hook(with_grads)
        for p in with_grads:
            self.update_one(p)

    def add_hook(self, f):
        self.hooks.append(f)


class RefWeightDecay:
    def __init__(self, rate):
        self.rate = rate

    def __call__(self, params):
        for p in params:
            p.grad.data += self.rate * p.data


class RefClipGrad:
    def __init__(self, max_norm):
        self.max_norm = max_norm

    def __call__(self, params):
        total = 0
        for p in params:
            total += (p.grad.data ** 2).sum()
        total = math.sqrt(float(total))
        rate = self.max_norm / (total + 1e-6)
        if rate < 1:
            for p in params:
                p.grad.data *= rate


class RefFreezeParam:
    def __init__(self, *layers):
        self.freeze_params = []
        for layer in layers:
            if isinstance(layer, Parameter):
                self.freeze_params.append(layer)
            else:
                self.freeze_params.extend(layer.params())

    def __call__(self, params):
        for p in self.freeze_params:
            p.grad = None


class RefSGD(RefOptimizer):
    def __init__(self, lr=0.01):
        super().__init__()
        self.lr = lr

    def update_one(self, param):
        param.data -= self.lr * param.grad.data


class RefMomentumSGD(RefOptimizer):
    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__()
        self.lr = lr
        self.momentum = momentum
        self.vs = {}

    def update_one(self, param):
        if id(param) not in self.vs:
            self.vs[id(param)] = np.zeros_like(param.data)
        v = self.vs[id(param)]
        v *= self.momentum
        v -= self.lr * param.grad.data
        param.data += v


class RefAdaGrad(RefOptimizer):
    def __init__(self, lr=0.001, eps=1e-8):
        super().__init__()
        self.lr = lr
        self.eps = eps
        self.hs = {}

    def update_one(self, param):
        if id(param) not in self.hs:
            self.hs[id(param)] = np.zeros_like(param.data)
        g = param.grad.data
        h = self.hs[id(param)]
        h += g * g
        param.data -= self.lr * g / (np.sqrt(h) + self.eps)


class RefAdaDelta(RefOptimizer):
    def __init__(self, rho=0.95, eps=1e-6):
        super().__init__()
        self.rho = rho
        self.eps = eps
        self.msg = {}
        self.msdx = {}

    def update_one(self, param):
        if id(param) not in self.msg:
            self.msg[id(param)] = np.zeros_like(param.data)
            self.msdx[id(param)] = np.zeros_like(param.data)
        msg, msdx = self.msg[id(param)], self.msdx[id(param)]
        g = param.grad.data
        msg *= self.rho
        msg += (1 - self.rho) * g * g
        dx = np.sqrt((msdx + self.eps) / (msg + self.eps)) * g
        msdx *= self.rho
        msdx += (1 - self.rho) * dx * dx
        param.data -= dx


class RefAdam(RefOptimizer):
    def __init__(self, alpha=0.001, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__()
        self.t = 0
        self.alpha = alpha
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.ms = {}
        self.vs = {}

    def update(self):
        self.t += 1
        super().update()

    @property
    def lr(self):
        fix1 = 1. - math.pow(self.beta1, self.t)
        fix2 = 1. - math.pow(self.beta2, self.t)
        return self.alpha * math.sqrt(fix2) / fix1

    def update_one(self, param):
        if id(param) not in self.ms:
            self.ms[id(param)] = np.zeros_like(param.data)
            self.vs[id(param)] = np.zeros_like(param.data)
        m, v = self.ms[id(param)], self.vs[id(param)]
        g = param.grad.data
        m += (1 - self.beta1) * (g - m)
        v += (1 - self.beta2) * (g * g - v)
        param.data -= self.lr * m / (np.sqrt(v) + self.eps)


# name: (oracle class, fastopt.dezero class, its state dicts, constructor arguments). The
# arguments are DeZero's defaults, and larger steps that move the params visibly in 100 steps.
OPTIMIZERS = {
    "SGD": (RefSGD, dezero.SGD, (), {}),
    "SGD-lr": (RefSGD, dezero.SGD, (), {"lr": 0.1}),
    "MomentumSGD": (RefMomentumSGD, dezero.MomentumSGD, ("vs",), {}),
    "AdaGrad": (RefAdaGrad, dezero.AdaGrad, ("hs",), {}),
    "AdaGrad-lr": (RefAdaGrad, dezero.AdaGrad, ("hs",), {"lr": 0.1, "eps": 1e-3}),
    "AdaDelta": (RefAdaDelta, dezero.AdaDelta, ("msg", "msdx"), {}),
    "Adam": (RefAdam, dezero.Adam, ("ms", "vs"), {}),
    "Adam-alpha": (RefAdam, dezero.Adam, ("ms", "vs"), {"alpha": 0.01, "beta2": 0.99}),
}

HOOKS = ["none", "WeightDecay", "ClipGrad", "FreezeParam", "all"]


def _hooks(kind, model, ours):
    """The hooks of ``kind`` for ``model``: fastopt.dezero's (``ours``) or the oracle's."""
    decay = (dezero.WeightDecay if ours else RefWeightDecay)(1e-2)
    clip = (dezero.ClipGrad if ours else RefClipGrad)(5.0)
    freeze = [dezero.FreezeParam(model.l0)] if ours else []   # see test_freeze_param
    return {"none": [], "WeightDecay": [decay], "ClipGrad": [clip], "FreezeParam": freeze,
            "all": [*freeze, decay, clip]}[kind]


def _by_name(model):
    return {p.name: p for p in model.params()}


def _give_grads(models, grad_dtypes, rng):
    """The same random grads (a new array for each model) for every param but ``unused``,
    whose grad is None. Now and then the grads are small, so
    that ClipGrad sometimes leaves them as they are."""
    scale = rng.uniform(0.05, 1.5)
    names = sorted(_by_name(models[0]))
    for name in names:
        kind = grad_dtypes[0] if name.endswith(".W") or name == "unused" else grad_dtypes[1]
        shape = _by_name(models[0])[name].data.shape
        grad = (scale * rng.standard_normal(shape)).astype(kind)
        for model in models:
            param = _by_name(model)[name]
            param.grad = None if name == "unused" else Variable(grad.copy())


def _assert_same(model, ref_model, opt, ref_opt, state_names):
    ours, theirs = _by_name(model), _by_name(ref_model)
    for name, param in ours.items():
        assert_same_bits(param.data, theirs[name].data)
        for state in state_names:
            held, expected = getattr(opt, state), getattr(ref_opt, state)
            assert (id(param) in held) == (id(theirs[name]) in expected), (name, state)
            if id(param) in held:
                assert_same_bits(held[id(param)], expected[id(theirs[name])])
    for state in state_names:
        assert len(getattr(opt, state)) == len(getattr(ref_opt, state))
    assert getattr(opt, "t", None) == getattr(ref_opt, "t", None)


@pytest.mark.parametrize("hooks", HOOKS)
@pytest.mark.parametrize("dtypes", list(MODELS))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_bit_for_bit_dezero_over_100_steps(name, dtypes, hooks):
    ref_class, our_class, state_names, kwargs = OPTIMIZERS[name]
    param_dtypes, grad_dtypes = MODELS[dtypes]
    model, ref_model = MLP(param_dtypes), MLP(param_dtypes)
    opt = our_class(**kwargs).setup(model)
    ref_opt = ref_class(**kwargs).setup(ref_model)
    for hook in _hooks(hooks, model, True):
        opt.add_hook(hook)
    for hook in _hooks(hooks, ref_model, False):
        ref_opt.add_hook(hook)
    arrays = {p.name: p.data for p in model.params()}
    addresses = {p.name: p.data.ctypes.data for p in model.params()}
    unused = model.unused.data.copy()
    # DeZero's update reads a frozen param's grad and fails (test_freeze_param): the oracle
    # gets those grads as None, which is what freezing them means.
    frozen = ("l0.",) if hooks in ("FreezeParam", "all") else ()
    rng = np.random.default_rng(1)
    for _ in range(100):
        _give_grads([model, ref_model], grad_dtypes, rng)
        if frozen:
            for param in ref_model.l0.params():
                param.grad = None
        opt.update()
        ref_opt.update()
        _assert_same(model, ref_model, opt, ref_opt, state_names)
    # in place: the same arrays, at the same addresses; the param without a grad untouched
    for param in model.params():
        assert param.data is arrays[param.name]
        assert param.data.ctypes.data == addresses[param.name]
    assert_same_bits(model.unused.data, unused)
    for state in state_names:
        assert id(model.unused) not in getattr(opt, state)
    if frozen:
        initial = MLP(param_dtypes)
        for param in model.l0.params():
            assert_same_bits(param.data, _by_name(initial)[param.name].data)
            assert param.grad is None
    else:
        assert not np.array_equal(model.l0.W.data, MLP(param_dtypes).l0.W.data)


def test_freeze_param():
    # DeZero's update lists the params with grads before its hooks run, so a frozen param
    # that had a grad reaches update_one with grad None: AttributeError, after the params
    # listed before it were updated. fastopt.dezero leaves it out, updating the others.
    ref_model, model = MLP(MODELS["float64"][0]), MLP(MODELS["float64"][0])
    ref_opt = RefSGD().setup(ref_model)
    ref_opt.add_hook(RefFreezeParam(ref_model.l0.W))
    opt = dezero.SGD().setup(model)
    opt.add_hook(dezero.FreezeParam(model.l0.W))
    _give_grads([ref_model, model], MODELS["float64"][1], np.random.default_rng(0))
    with pytest.raises(AttributeError):
        ref_opt.update()
    before = {p.name: p.data.copy() for p in model.params()}
    opt.update()
    for param in model.params():
        changed = not np.array_equal(param.data, before[param.name])
        assert changed == (param.name not in ("l0.W", "unused"))
    assert model.l0.W.grad is None and model.l0.b.grad is not None


def test_freeze_param_takes_params_layers_and_models():
    model = MLP(MODELS["float32"][0])
    hook = dezero.FreezeParam(model.l1.b, model.l0)
    assert hook.freeze_params[0] is model.l1.b
    assert {p.name for p in hook.freeze_params[1:]} == {"l0.W", "l0.b"}
    assert len(dezero.FreezeParam(model).freeze_params) == 5
    with pytest.raises(TypeError, match="argument 1 is int"):
        dezero.FreezeParam(model.l0, 3)


def test_hooks_run_in_order_on_the_params_with_grads_and_write_them_in_place():
    model = MLP(MODELS["float64"][0])
    seen = []
    opt = dezero.SGD(lr=0.0).setup(model)
    opt.add_hook(lambda params: seen.append(("first", [p.name for p in params])))
    opt.add_hook(dezero.WeightDecay(0.5))
    opt.add_hook(lambda params: seen.append(("second", len(params))))
    _give_grads([model], MODELS["float64"][1], np.random.default_rng(0))
    grads = {p.name: p.grad.data for p in model.params() if p.grad is not None}
    expected = {name: grad + 0.5 * _by_name(model)[name].data for name, grad in grads.items()}
    opt.update()
    assert seen[0][0] == "first" and sorted(seen[0][1]) == sorted(grads)
    assert seen[1] == ("second", 4)
    for name, grad in grads.items():
        assert _by_name(model)[name].grad.data is grad   # written in place
        assert_same_bits(grad, expected[name])


@pytest.mark.parametrize("name", ["SGD", "MomentumSGD", "AdaGrad", "Adam"])
@pytest.mark.parametrize("dtypes", ["float64", "float32"])
def test_the_compiled_loops_take_the_params_they_give_dezeros_bits_for(name, dtypes,
                                                                        monkeypatch):
    # NumPy's statements (_numpy_one) run only where the loops would not give DeZero's bits:
    # Adam on float32 params.
    _, our_class, _, kwargs = OPTIMIZERS[name]
    model = MLP(MODELS[dtypes][0])
    opt = our_class(**kwargs).setup(model)
    calls = []
    monkeypatch.setattr(opt, "_numpy_one", lambda param, states: calls.append(param.name))
    _give_grads([model], MODELS[dtypes][1], np.random.default_rng(0))
    before = model.l0.W.data.copy()
    opt.update()
    if name == "Adam" and dtypes == "float32":
        assert sorted(calls) == ["l0.W", "l0.b", "l1.W", "l1.b"]
    else:
        assert calls == []
        assert not np.array_equal(model.l0.W.data, before)


def test_numpy_paths_for_what_the_loops_do_not_take():
    # A transposed param, a float16 one, a float32 param with a float64 grad, and NumPy scalar
    # hyperparameters (np.float64 on float32 arrays: NumPy computes in float64): DeZero's bits.
    def build():
        model = Layer()
        rng = np.random.default_rng(3)
        model.a = Parameter(rng.standard_normal((5, 4)).T, name="a")
        model.b = Parameter(rng.standard_normal(7).astype(np.float16), name="b")
        model.c = Parameter(rng.standard_normal(9).astype(np.float32), name="c")
        model.d = Parameter(rng.standard_normal(6).astype(np.float32), name="d")
        return model
    for ref_class, our_class, state_names, kwargs in [
            (RefMomentumSGD, dezero.MomentumSGD, ("vs",), {"lr": np.float64(0.1)}),
            (RefAdaGrad, dezero.AdaGrad, ("hs",), {"lr": np.float64(0.1), "eps": 1e-3}),
            (RefAdam, dezero.Adam, ("ms", "vs"), {"alpha": np.float64(0.01), "eps": 1e-3}),
            (RefSGD, dezero.SGD, (), {"lr": np.float32(0.1)})]:
        model, ref_model = build(), build()
        opt, ref_opt = our_class(**kwargs).setup(model), ref_class(**kwargs).setup(ref_model)
        rng = np.random.default_rng(4)
        for _ in range(20):
            for name in "abcd":
                param = _by_name(model)[name]
                grad = rng.standard_normal(param.data.shape)
                if name != "c":
                    grad = grad.astype(param.data.dtype)
                param.grad = Variable(grad)
                _by_name(ref_model)[name].grad = Variable(grad.copy())
            opt.update()
            ref_opt.update()
            _assert_same(model, ref_model, opt, ref_opt, state_names)


def test_a_layer_twice_in_the_model_is_updated_twice_as_in_dezero():
    # A layer assigned to two attributes yields its params twice: DeZero updates them twice,
    # with the same state, one after the other; so does the compiled call.
    def build():
        model = MLP(MODELS["float64"][0])
        model.again = model.l1
        return model
    model, ref_model = build(), build()
    opt, ref_opt = dezero.Adam().setup(model), RefAdam().setup(ref_model)
    rng = np.random.default_rng(5)
    for _ in range(10):
        _give_grads([model, ref_model], MODELS["float64"][1], rng)
        opt.update()
        ref_opt.update()
        _assert_same(model, ref_model, opt, ref_opt, ("ms", "vs"))


def test_update_one_and_a_subclass_written_for_dezero():
    model, ref_model = MLP(MODELS["float32"][0]), MLP(MODELS["float32"][0])
    _give_grads([model, ref_model], MODELS["float32"][1], np.random.default_rng(6))
    opt, ref_opt = dezero.MomentumSGD(), RefMomentumSGD()
    for _ in range(3):
        opt.update_one(model.l0.W)
        ref_opt.update_one(ref_model.l0.W)
    assert_same_bits(model.l0.W.data, ref_model.l0.W.data)
    assert_same_bits(opt.vs[id(model.l0.W)], ref_opt.vs[id(ref_model.l0.W)])

    class Halve(dezero.Optimizer):   # DeZero's way to write an optimizer
        def update_one(self, param):
            param.data -= 0.5 * param.grad.data

    expected = model.l1.b.data - 0.5 * model.l1.b.grad.data
    Halve().setup(model).update()
    assert_same_bits(model.l1.b.data, expected)

    class Faster(dezero.SGD):   # a subclass of fastopt's class with its own rule
        def update_one(self, param):
            param.data -= 2 * self.lr * param.grad.data

    expected = model.l1.b.data - 2 * 0.01 * model.l1.b.grad.data
    Faster().setup(model).update()
    assert_same_bits(model.l1.b.data, expected)


def test_adam_step_count_and_lr():
    opt = dezero.Adam(alpha=0.002, beta1=0.8, beta2=0.9)
    with pytest.raises(ZeroDivisionError, match="t = 0"):
        _ = opt.lr
    model = MLP(MODELS["float64"][0])
    opt.setup(model)
    seen = []
    opt.add_hook(lambda params: seen.append(opt.t))   # t counts before the hooks run
    for step in range(1, 4):
        _give_grads([model], MODELS["float64"][1], np.random.default_rng(step))
        opt.update()
        assert opt.t == step
        assert opt.lr == 0.002 * math.sqrt(1 - 0.9**step) / (1 - 0.8**step)
    assert seen == [1, 2, 3]
    with pytest.raises(AttributeError):
        opt.lr = 0.1   # a property, as in DeZero


def test_defaults_and_names_are_dezeros():
    assert dezero.SGD().lr == 0.01
    momentum = dezero.MomentumSGD()
    assert (momentum.lr, momentum.momentum, momentum.vs) == (0.01, 0.9, {})
    adagrad = dezero.AdaGrad()
    assert (adagrad.lr, adagrad.eps, adagrad.hs) == (0.001, 1e-8, {})
    adadelta = dezero.AdaDelta()
    assert (adadelta.rho, adadelta.eps, adadelta.msg, adadelta.msdx) == (0.95, 1e-6, {}, {})
    adam = dezero.Adam()
    assert (adam.alpha, adam.beta1, adam.beta2, adam.eps, adam.t, adam.ms, adam.vs) == (
        0.001, 0.9, 0.999, 1e-8, 0, {}, {})
    opt = dezero.SGD()
    assert (opt.target, opt.hooks) == (None, [])
    model = MLP(MODELS["float64"][0])
    assert opt.setup(model) is opt and opt.target is model
    assert dezero.WeightDecay(1e-4).rate == 1e-4
    assert dezero.ClipGrad(1.0).max_norm == 1.0
    assert sorted(dezero.__all__) == sorted(["Optimizer", "SGD", "MomentumSGD", "AdaGrad",
                                             "AdaDelta", "Adam", "WeightDecay", "ClipGrad",
                                             "FreezeParam"])


@pytest.mark.parametrize("make, kind, message", [
    (lambda: dezero.SGD(lr=-0.1), ValueError, "lr must be finite and >= 0; got -0.1"),
    (lambda: dezero.SGD(lr="0.1"), TypeError, "lr must be a real number"),
    (lambda: dezero.SGD(lr=True), TypeError, "lr must be a real number"),
    (lambda: dezero.MomentumSGD(momentum=1.0), ValueError, "0 <= momentum < 1; got 1.0"),
    (lambda: dezero.AdaGrad(eps=0.0), ValueError, "eps must be finite and > 0; got 0.0"),
    (lambda: dezero.AdaGrad(lr=math.inf), ValueError, "lr must be finite and >= 0; got inf"),
    (lambda: dezero.AdaDelta(rho=-0.5), ValueError, "0 <= rho < 1; got -0.5"),
    (lambda: dezero.AdaDelta(eps=math.nan), ValueError, "eps must be finite and > 0; got nan"),
    (lambda: dezero.Adam(alpha=-1), ValueError, "alpha must be finite and >= 0; got -1"),
    (lambda: dezero.Adam(beta1=1.0), ValueError, "0 <= beta1 < 1; got 1.0"),
    (lambda: dezero.Adam(beta2=None), TypeError, "beta2 must be a real number"),
    (lambda: dezero.WeightDecay(-1e-4), ValueError, "rate must be finite and >= 0"),
    (lambda: dezero.ClipGrad(0), ValueError, "max_norm must be finite and > 0; got 0"),
    (lambda: dezero.SGD().setup([1, 2]), TypeError, "params\\(\\) method\\); got list"),
    (lambda: dezero.SGD().add_hook(3), TypeError, "a hook must be callable"),
    (lambda: dezero.SGD().update(), RuntimeError, "call setup\\(model\\) before update"),
])
def test_clear_errors_for_bad_arguments(make, kind, message):
    with pytest.raises(kind, match=message):
        make()


def _snapshot(model, opt, state_names):
    return ({p.name: (p.data.copy(), None if p.grad is None else p.grad.data.copy())
             for p in model.params()},
            {name: {key: value.copy() for key, value in getattr(opt, name).items()}
             for name in state_names}, getattr(opt, "t", None))


def _assert_unchanged(model, opt, state_names, snapshot):
    params, states, t = snapshot
    for param in model.params():
        assert_same_bits(param.data, params[param.name][0])
        if param.grad is not None and isinstance(param.grad.data, np.ndarray):
            assert_same_bits(param.grad.data, params[param.name][1])
    for name in state_names:
        assert getattr(opt, name).keys() == states[name].keys()
        for key, value in states[name].items():
            assert_same_bits(getattr(opt, name)[key], value)
    assert getattr(opt, "t", None) == t


@pytest.mark.parametrize("name", ["MomentumSGD", "AdaDelta", "Adam"])
@pytest.mark.parametrize("break_it, kind, message", [
    (lambda opt, model: setattr(opt, "eps" if hasattr(opt, "eps") else "lr", -1.0),
     ValueError, "must be finite and"),
    (lambda opt, model: setattr(opt, "eps" if hasattr(opt, "eps") else "lr", "x"),
     TypeError, "must be a real number"),
    (lambda opt, model: setattr(model.l1.b.grad, "data", np.zeros(4)),
     ValueError, "param .* \\('l1.b'\\)'s grad.data has shape \\(4,\\) but its data has shape "
     "\\(3,\\)"),
    (lambda opt, model: setattr(model.l1.W.grad, "data", [1.0]),
     TypeError, "\\('l1.W'\\)'s grad.data is \\[1.0\\] \\(list\\); expected a NumPy"),
    (lambda opt, model: setattr(model.l1.W, "data", model.l1.W.data.astype(np.int64)),
     TypeError, "\\('l1.W'\\)'s data is an ndarray of dtype int64"),
    (lambda opt, model: model.l1.W.data.setflags(write=False),
     ValueError, "\\('l1.W'\\)'s data is read-only"),
])
def test_a_rejected_update_changes_nothing(name, break_it, kind, message):
    # checked before any param, state, step count or grad changes and before any hook runs
    _, our_class, state_names, kwargs = OPTIMIZERS[name]
    model = MLP(MODELS["float32"][0])
    opt = our_class(**kwargs).setup(model)
    called = []
    opt.add_hook(lambda params: called.append(True))
    opt.add_hook(dezero.WeightDecay(0.1))
    rng = np.random.default_rng(7)
    _give_grads([model], MODELS["float32"][1], rng)
    opt.update()
    _give_grads([model], MODELS["float32"][1], rng)
    break_it(opt, model)
    snapshot = _snapshot(model, opt, state_names)
    with pytest.raises(kind, match=message):
        opt.update()
    _assert_unchanged(model, opt, state_names, snapshot)
    assert called == [True]


def test_state_of_another_shape_is_refused():
    model = MLP(MODELS["float64"][0])
    opt = dezero.AdaGrad().setup(model)
    _give_grads([model], MODELS["float64"][1], np.random.default_rng(8))
    opt.update()
    model.l1.b.data = np.zeros(5)
    model.l1.b.grad = Variable(np.zeros(5))
    snapshot = _snapshot(model, opt, ("hs",))
    with pytest.raises(ValueError, match=r"state hs\[id\(param \d \('l1.b'\)\)\] has dtype "
                                         r"float64 and shape \(3,\)"):
        opt.update()
    _assert_unchanged(model, opt, ("hs",), snapshot)


@pytest.mark.parametrize("hook, message", [
    (lambda: dezero.WeightDecay(1e-3), "WeightDecay: param .*'s grad.data is read-only"),
    (lambda: dezero.ClipGrad(1e-3), "ClipGrad: param .*'s grad.data is read-only"),
])
def test_hooks_check_every_grad_before_writing_any(hook, message):
    model = MLP(MODELS["float64"][0])
    _give_grads([model], MODELS["float64"][1], np.random.default_rng(9))
    params = [p for p in model.params() if p.grad is not None]
    params[-1].grad.data.setflags(write=False)
    grads = [p.grad.data.copy() for p in params]
    with pytest.raises(ValueError, match=message):
        hook()(params)
    for param, grad in zip(params, grads, strict=True):
        assert_same_bits(param.grad.data, grad)
