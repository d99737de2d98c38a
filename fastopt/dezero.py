"""The optimizers of *Deep Learning from Scratch 3* (DeZero), compiled where that keeps its bits.

*Deep Learning from Scratch 3* (Koki Saitoh, O'Reilly Japan, 2020; code at
https://github.com/oreilly-japan/deep-learning-from-scratch-3) builds DeZero, whose
``dezero/optimizers.py`` has an ``Optimizer`` that is ``setup`` with a model and then
``update``s every ``Parameter`` of ``model.params()`` whose ``.grad`` is not None, from
``param.grad.data``, keeping its state in dicts keyed by ``id(param)``; hooks added with
``add_hook`` see the list of those params first. This module gives the same names with the
same constructors, attributes, state and numbers, so that one import line changes::

    from dezero import optimizers               ->  from fastopt import dezero as optimizers
    from dezero.optimizers import Adam          ->  from fastopt.dezero import Adam

``SGD(lr=0.01)``, ``MomentumSGD(lr=0.01, momentum=0.9)`` (state ``vs``), ``AdaGrad(lr=0.001,
eps=1e-8)`` (``hs``), ``AdaDelta(rho=0.95, eps=1e-6)`` (``msg``, ``msdx``) and ``Adam(alpha=0.001,
beta1=0.9, beta2=0.999, eps=1e-8)`` (``ms``, ``vs``, the step count ``t`` and the step size
property ``lr``), and the hooks ``WeightDecay(rate)``, ``ClipGrad(max_norm)`` and
``FreezeParam(*layers)``. DeZero itself is not needed: any object whose ``params()`` yields
objects with ``.data`` (a NumPy float array) and ``.grad`` (None, or an object whose ``.data``
is an array of the param's shape) can be a target.

Numbers
-------
Every param's ``.data`` and every state array are bit for bit what DeZero's own classes
compute under NumPy >= 2, in float64 and float32 alike (at every SIMD level and thread count;
not with the opt-in ``fastopt.set_flush_denormals(True)``, which flushes subnormal results of
the compiled loops), and arrays are updated in place (the same objects, as DeZero's ``-=``
does). The params of one ``update`` go to fastopt's compiled loops in one call where those
loops compute DeZero's statements exactly: ``SGD``, ``MomentumSGD``, ``AdaGrad`` (float32 and
float64) and ``Adam`` (float64; DeZero's ``Adam`` is the first book's with ``eps = 1e-8`` and
the step size computed with ``math``). Everything else runs DeZero's own NumPy statements,
written out in each class (``_numpy_one``):

- ``AdaDelta``: DeZero takes the square root of a quotient, ``sqrt((msdx + eps)/(msg + eps))``,
  where fastopt's loop (torch's Adadelta) divides two square roots; no compiled loop has
  DeZero's form.
- ``Adam`` on float32 params: DeZero's step size is a Python float, so its last statement is
  float32 arithmetic, where fastopt's loop computes it in float64 (the first book's step size
  is a NumPy float64); no compiled loop has the float32 form.
- params the loops do not take: a grad of another dtype than its param (DeZero's ``Linear``
  under NumPy >= 2 makes ``W`` float64 and leaves ``b`` float32, whose grad is then float64),
  non-contiguous arrays, float16, a grad that shares memory with its param;
- hyperparameters given as NumPy scalars (``np.float64(0.1)``): NumPy's promotion rules then
  decide the precision of DeZero's statements, so NumPy computes them;
- the hooks: ``WeightDecay`` and the norm of ``ClipGrad`` write and read the grads as DeZero's
  statements do (``ClipGrad`` sums each grad's squares in NumPy's own order and dtype);
  ``ClipGrad`` scales the grads with a compiled loop when its factor is a Python float.

Differences from DeZero
-----------------------
None of them changes a number DeZero computes.

- Hyperparameters are checked when constructing and at every ``update`` (a TypeError or
  ValueError naming the hyperparameter, as fastopt's other classes give; nothing changes),
  and each param and grad before anything is written: a NumPy floating-point array, writeable,
  a grad of its param's shape, existing state of its param's shape and dtype. The attributes
  keep the objects given (a NumPy scalar stays one, as in DeZero).
- ``FreezeParam`` clears the grads of the frozen params. DeZero's ``update`` builds its list of
  params before the hooks run, then reads ``param.grad.data`` of a frozen param and raises
  AttributeError, after updating the params before it. Here a param whose grad a hook has
  cleared leaves the list before the next hook and is not updated: that is the freezing the
  hook is for.
- A plain ndarray param's state arrays are C-contiguous zeros, aligned as the param
  (DeZero: ``zeros_like``, of the param's layout); the values are the same.
- NumPy arrays only, not CuPy's.

This module restates the statements of DeZero's ``dezero/optimizers.py``, MIT-licensed: see
the notice in ``LICENSES/``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from . import _validation as v
from ._base import aligned_zeros
from ._simd import kernels as _kernels
from ._validation import Check, to_float

__all__ = ["SGD", "AdaDelta", "AdaGrad", "Adam", "ClipGrad", "FreezeParam", "MomentumSGD",
           "Optimizer", "WeightDecay"]

#: A hook: called with the list of params about to be updated.
Hook = Callable[[list[Any]], object]


def _describe(value: Any) -> str:
    """What a value is, for error messages."""
    if isinstance(value, np.ndarray):
        return f"an ndarray of dtype {value.dtype} and shape {value.shape}"
    return f"{value!r} ({type(value).__name__})"


def _label(index: int, param: Any) -> str:
    """How an error message names a param: its position in ``target.params()`` and name."""
    name = getattr(param, "name", None)
    return f"param {index}" + ("" if name is None else f" ({name!r})")


def _is_python_number(value: Any) -> bool:
    """A Python float or int: NumPy converts it to the array's dtype, as the loops do."""
    return type(value) is float or type(value) is int


def _check_array(what: str, data: Any) -> None:
    """``data`` must be a writeable NumPy floating-point array (``what`` names it)."""
    if not isinstance(data, np.ndarray) or data.dtype.kind != "f":
        raise TypeError(f"{what} is {_describe(data)}; expected a NumPy floating-point ndarray "
                        f"(float16, float32 or float64)")
    if not data.flags.writeable:
        raise ValueError(f"{what} is read-only; it is updated in place, so it must be a "
                         f"writeable array")


def _check_number(name: str, value: Any, check: Check) -> None:
    """``value`` must be a real number that passes ``check`` (fastopt's checks and messages)."""
    check(name, to_float(name, value), "")


class Optimizer:
    """DeZero's optimizer base: ``setup(target)``, then ``update()`` after each backward pass.

    ``update`` takes every param of ``target.params()`` whose ``grad`` is not None, calls each
    hook with that list (in the order they were added), then updates each param of the list
    with ``update_one``. A subclass written for DeZero (one that defines ``update_one``) works
    unchanged; fastopt's own subclasses update the whole list in one compiled call where they
    can (see the module's docstring).

    Attributes
    ----------
    target : Layer or Model, or None
        What ``setup`` was given; None before.
    hooks : list of callable
        The hooks ``add_hook`` added.
    """

    #: The float hyperparameters and how each is checked (fastopt/_validation.py).
    _checks: ClassVar[dict[str, Check]] = {}

    def __init__(self) -> None:
        self.target: Any = None
        self.hooks: list[Hook] = []
        self._check_hyperparameters()

    def setup(self, target: Any) -> Optimizer:
        """Set the model (a DeZero ``Layer`` or ``Model``) whose params ``update`` updates.

        Returns
        -------
        Optimizer
            ``self``, so that ``optimizer = SGD().setup(model)`` reads as in DeZero.
        """
        if not callable(getattr(target, "params", None)):
            raise TypeError(f"target must be a DeZero Layer or Model (an object with a params() "
                            f"method); got {type(target).__name__}")
        self.target = target
        return self

    def add_hook(self, f: Hook) -> None:
        """Add ``f``, called as ``f(params)`` at each ``update`` before the params change."""
        if not callable(f):
            raise TypeError(f"a hook must be callable, called with the list of params; got "
                            f"{type(f).__name__}")
        self.hooks.append(f)

    def update(self) -> None:
        """Update every param of the target whose ``grad`` is not None, in place.

        Raises
        ------
        RuntimeError
            Before ``setup``.
        TypeError, ValueError
            When a hyperparameter, a param or its grad cannot be used; the message names it.
            Nothing has changed then: no param, no state, no hook called.
        """
        if self.target is None:
            raise RuntimeError(f"{type(self).__name__} has no target: call setup(model) before "
                               f"update()")
        listed = [(index, param) for index, param in enumerate(self.target.params())
                  if param.grad is not None]
        self._check_hyperparameters()
        for index, param in listed:
            self._check_param(_label(index, param), param)
        params = [param for _, param in listed]
        self._count_step()
        for hook in self.hooks:
            hook(params)
            if any(param.grad is None for param in params):   # FreezeParam cleared some
                params[:] = [param for param in params if param.grad is not None]
        self._update_params(params)

    def update_one(self, param: Any) -> None:
        """Update one param from ``param.grad.data`` (DeZero's subclasses define this)."""
        raise NotImplementedError(f"{type(self).__name__} does not define update_one(param)")

    # --- what fastopt's subclasses change ------------------------------------------------------

    def _check_hyperparameters(self) -> None:
        for name, check in self._checks.items():
            _check_number(name, getattr(self, name), check)

    def _check_param(self, label: str, param: Any) -> None:
        """Raise unless ``param`` and its grad can be updated; write nothing."""
        data = param.data
        _check_array(f"{label}'s data", data)
        grad = getattr(param.grad, "data", None)
        if not isinstance(grad, np.ndarray) or grad.dtype.kind != "f":
            raise TypeError(f"{label}'s grad.data is {_describe(grad)}; expected a NumPy "
                            f"floating-point ndarray of its param's shape {data.shape}")
        if grad.shape != data.shape:
            raise ValueError(f"{label}'s grad.data has shape {grad.shape} but its data has "
                             f"shape {data.shape}; they must be equal (no broadcasting)")

    def _count_step(self) -> None:
        """What ``update`` counts before the hooks run (Adam's ``t``)."""

    def _update_params(self, params: list[Any]) -> None:
        for param in params:
            self.update_one(param)


class _Compiled(Optimizer):
    """A rule of DeZero's, with fastopt's compiled loop where it gives DeZero's bits."""

    #: The state dicts (keyed by ``id(param)``), in the order of the kernel's state slots.
    _state_names: ClassVar[tuple[str, ...]] = ()

    def _kernel(self) -> str | None:
        """The compiled loop for this rule now, by name, or None (NumPy's path for every
        param)."""
        return None

    def _scalars(self) -> dict[str, Any]:
        """The loop's scalars by name (fastopt/_kernels.pyx's Step fields)."""
        return {}

    def _takes(self, data: np.ndarray[Any, Any]) -> bool:
        """Whether the loop gives DeZero's bits for a param of ``data``'s dtype."""
        return True

    def _numpy_one(self, param: Any, states: list[Any]) -> None:
        """DeZero's statements for one param (``states``: its arrays, as ``_state_names``)."""
        raise NotImplementedError

    def _python_hyperparameters(self) -> bool:
        return all(_is_python_number(getattr(self, name)) for name in self._checks)

    def _check_param(self, label: str, param: Any) -> None:
        super()._check_param(label, param)
        data = param.data
        for name in self._state_names:
            state = getattr(self, name).get(id(param))
            if state is None:
                continue
            if state.shape != data.shape or state.dtype != data.dtype:
                raise ValueError(
                    f"state {name}[id({label})] has dtype {state.dtype} and shape {state.shape} "
                    f"but the param's data has dtype {data.dtype} and shape {data.shape}; "
                    f"a param's state belongs to the array first seen (use a new optimizer "
                    f"for a new array)")

    def update_one(self, param: Any) -> None:
        """Update one param from ``param.grad.data``, as DeZero's ``update_one`` does.

        ``update`` does not call it one param at a time (unless a subclass defines its own
        ``update_one``): it updates the whole list at once, with the same numbers.
        """
        if param.grad is None:
            raise ValueError("the param's grad is None; update_one needs a grad (update() "
                             "skips such params)")
        self._check_hyperparameters()
        self._check_param("the param", param)
        self._apply([param])

    def _update_params(self, params: list[Any]) -> None:
        if type(self).update_one is not _Compiled.update_one:   # a subclass's own rule
            super()._update_params(params)
        else:
            self._apply(params)

    def _states_of(self, param: Any) -> list[Any]:
        """The param's state arrays, created as zeros on its first update."""
        states = []
        key = id(param)
        for name in self._state_names:
            store = getattr(self, name)
            state = store.get(key)
            if state is None:
                data = param.data
                state = store[key] = (aligned_zeros(data) if type(data) is np.ndarray
                                      else np.zeros_like(data))
            states.append(state)
        return states

    def _apply(self, params: list[Any]) -> None:
        """Update ``params`` in their order: the compiled loop for every param it takes, in
        one call where it takes them all, else DeZero's NumPy statements."""
        if not params:
            return
        scalars = self._scalars()   # Adam's lr: raises, before anything changes, at t = 0
        states = [self._states_of(param) for param in params]
        loop = self._kernel() if self._python_hyperparameters() else None
        if loop is None:
            for param, own in zip(params, states, strict=True):
                self._numpy_one(param, own)
            return
        slots = len(self._state_names)

        def call(indices: list[int]) -> bool:
            columns: list[Any] = [None, None, None]
            for slot in range(slots):
                columns[slot] = [states[index][slot] for index in indices]
            done: bool = _kernels.run(loop, [params[index].data for index in indices],
                                      [params[index].grad.data for index in indices],
                                      columns[0], columns[1], columns[2], None, None, 0.0,
                                      scalars)
            return done

        def flush(run: list[int]) -> None:
            if run and not call(run):
                # another thread changed an array since it was checked: NumPy's path
                for index in run:
                    self._numpy_one(params[index], states[index])
            run.clear()

        everything = list(range(len(params)))
        if all(self._takes(param.data) for param in params) and call(everything):
            return
        # Runs of consecutive params the loop takes, one call each; NumPy's path between.
        run: list[int] = []
        for index, param in enumerate(params):
            own = states[index]
            if self._takes(param.data) and _kernels.ready(param.data, param.grad.data, *own):
                run.append(index)
            else:
                flush(run)
                self._numpy_one(param, own)
        flush(run)


class SGD(_Compiled):
    """Stochastic gradient descent, as DeZero's::

        param.data -= lr * param.grad.data

    Compiled (float32 and float64) for Python-number hyperparameters.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, finite and >= 0.
    """

    _checks = {"lr": v.check_learning_rate}

    def __init__(self, lr: float = 0.01) -> None:
        self.lr = lr
        super().__init__()

    def _kernel(self) -> str | None:
        return "sgd"

    def _scalars(self) -> dict[str, Any]:
        return {"lr": self.lr}

    def _numpy_one(self, param: Any, states: list[Any]) -> None:
        param.data -= self.lr * param.grad.data


class MomentumSGD(_Compiled):
    """SGD with momentum, as DeZero's::

        v *= momentum
        v -= lr * param.grad.data
        param.data += v

    Compiled (float32 and float64) for Python-number hyperparameters.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, finite and >= 0.
    momentum : float, default 0.9
        Momentum coefficient, 0 <= momentum < 1.

    Attributes
    ----------
    vs : dict
        The velocity of each param, keyed by ``id(param)``; zeros at its first update.
    """

    _checks = {"lr": v.check_learning_rate, "momentum": v.check_coefficient}
    _state_names = ("vs",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        self.lr = lr
        self.momentum = momentum
        self.vs: dict[int, Any] = {}
        super().__init__()

    def _kernel(self) -> str | None:
        return "momentum"

    def _scalars(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum}

    def _numpy_one(self, param: Any, states: list[Any]) -> None:
        v = states[0]
        v *= self.momentum
        v -= self.lr * param.grad.data
        param.data += v


class AdaGrad(_Compiled):
    """AdaGrad, as DeZero's::

        h += grad * grad
        param.data -= lr * grad / (sqrt(h) + eps)

    Compiled (float32 and float64) for Python-number hyperparameters.

    Parameters
    ----------
    lr : float, default 0.001
        Learning rate, finite and >= 0.
    eps : float, default 1e-8
        Added to the denominator, finite and > 0.

    Attributes
    ----------
    hs : dict
        The sum of squared grads of each param, keyed by ``id(param)``.
    """

    _checks = {"lr": v.check_learning_rate, "eps": v.check_epsilon}
    _state_names = ("hs",)

    def __init__(self, lr: float = 0.001, eps: float = 1e-8) -> None:
        self.lr = lr
        self.eps = eps
        self.hs: dict[int, Any] = {}
        super().__init__()

    def _kernel(self) -> str | None:
        return "adagrad"

    def _scalars(self) -> dict[str, Any]:
        return {"lr": self.lr, "eps": self.eps, "eps_inside_sqrt": False}

    def _numpy_one(self, param: Any, states: list[Any]) -> None:
        h = states[0]
        grad = param.grad.data
        h += grad * grad
        param.data -= self.lr * grad / (np.sqrt(h) + self.eps)


class AdaDelta(_Compiled):
    """AdaDelta (Zeiler 2012), as DeZero's::

        msg *= rho
        msg += (1 - rho) * grad * grad
        dx = sqrt((msdx + eps) / (msg + eps)) * grad
        msdx *= rho
        msdx += (1 - rho) * dx * dx
        param.data -= dx

    The square root of the quotient, with no learning rate: not ``fastopt.Adadelta``'s
    arithmetic (torch's, a quotient of square roots), so always NumPy's statements.

    Parameters
    ----------
    rho : float, default 0.95
        Decay rate of both averages, 0 <= rho < 1.
    eps : float, default 1e-6
        Added inside both averages, finite and > 0.

    Attributes
    ----------
    msg : dict
        The running average of squared grads of each param, keyed by ``id(param)``.
    msdx : dict
        The running average of squared steps of each param, keyed by ``id(param)``.
    """

    _checks = {"rho": v.check_coefficient, "eps": v.check_epsilon}
    _state_names = ("msg", "msdx")

    def __init__(self, rho: float = 0.95, eps: float = 1e-6) -> None:
        self.rho = rho
        self.eps = eps
        self.msg: dict[int, Any] = {}
        self.msdx: dict[int, Any] = {}
        super().__init__()

    def _numpy_one(self, param: Any, states: list[Any]) -> None:
        msg, msdx = states
        rho = self.rho
        eps = self.eps
        grad = param.grad.data
        msg *= rho
        msg += (1 - rho) * grad * grad
        dx = np.sqrt((msdx + eps) / (msg + eps)) * grad
        msdx *= rho
        msdx += (1 - rho) * dx * dx
        param.data -= dx


class Adam(_Compiled):
    """Adam, as DeZero's: the first book's form, the bias correction in the step size::

        t += 1                                          (once per update(), before the hooks)
        lr = alpha * sqrt(1 - beta2**t) / (1 - beta1**t)    (a Python float, math.pow)
        m += (1 - beta1) * (grad - m)
        v += (1 - beta2) * (grad * grad - v)
        param.data -= lr * m / (sqrt(v) + eps)

    Compiled for float64 params and Python-number hyperparameters. For float32 params every
    statement is float32 arithmetic (``lr`` is a Python float), which fastopt's loop does not
    compute (the first book's step size is a NumPy float64): NumPy's statements.

    Parameters
    ----------
    alpha : float, default 0.001
        Learning rate, finite and >= 0.
    beta1, beta2 : float, default 0.9 and 0.999
        Decay rates of the first and second moment estimates, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, finite and > 0.

    Attributes
    ----------
    t : int
        Number of ``update`` calls so far.
    lr : float
        The step size of step ``t`` (read-only; ZeroDivisionError before the first update).
    ms, vs : dict
        The first and second moment estimates of each param, keyed by ``id(param)``.
    """

    _checks = {"alpha": v.check_learning_rate, "beta1": v.check_coefficient,
               "beta2": v.check_coefficient, "eps": v.check_epsilon}
    _state_names = ("ms", "vs")

    def __init__(self, alpha: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8) -> None:
        self.t = 0
        self.alpha = alpha
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.ms: dict[int, Any] = {}
        self.vs: dict[int, Any] = {}
        super().__init__()

    @property
    def lr(self) -> float:
        """``alpha * sqrt(1 - beta2**t) / (1 - beta1**t)``, with Python's ``math``."""
        fix1 = 1. - math.pow(self.beta1, self.t)
        fix2 = 1. - math.pow(self.beta2, self.t)
        if fix1 == 0:
            raise ZeroDivisionError(f"Adam.lr is the step size of step t = {self.t}, and "
                                    f"1 - beta1**t is 0: it exists from the first update()")
        step: float = self.alpha * math.sqrt(fix2) / fix1
        return step

    def _count_step(self) -> None:
        self.t += 1

    def _check_hyperparameters(self) -> None:
        super()._check_hyperparameters()
        t = self.t
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise TypeError(f"t must be an int (the number of updates so far); got "
                            f"{_describe(t)}")
        if t < 0:
            raise ValueError(f"t must be >= 0 (the number of updates so far); got {t!r}")

    def _kernel(self) -> str | None:
        return "adam"

    def _scalars(self) -> dict[str, Any]:
        return {"lr_t": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "eps_inside_sqrt": False}

    def _takes(self, data: np.ndarray[Any, Any]) -> bool:
        return bool(data.dtype == np.float64)

    def _numpy_one(self, param: Any, states: list[Any]) -> None:
        m, v = states
        beta1, beta2, eps = self.beta1, self.beta2, self.eps
        grad = param.grad.data
        m += (1 - beta1) * (grad - m)
        v += (1 - beta2) * (grad * grad - v)
        param.data -= self.lr * m / (np.sqrt(v) + eps)


# ---------------------------------------------------------------------------------------------
# Hooks: called with the list of params before they are updated; each writes the grads in
# place, as DeZero's do.

def _grads_to_write(hook: str, params: list[Any]) -> list[Any]:
    """The params' grad arrays, checked before a hook writes any of them."""
    grads = []
    for index, param in enumerate(params):
        grad = getattr(param.grad, "data", None)
        _check_array(f"{hook}: {_label(index, param)}'s grad.data", grad)
        grads.append(grad)
    return grads


class WeightDecay:
    """Coupled weight decay, as DeZero's hook: for each param, before the update::

        param.grad.data += rate * param.data

    The grads are written in place (NumPy's statement).

    Parameters
    ----------
    rate : float
        The decay rate, finite and >= 0.
    """

    def __init__(self, rate: float) -> None:
        _check_number("rate", rate, v.check_nonnegative)
        self.rate = rate

    def __call__(self, params: list[Any]) -> None:
        _check_number("rate", self.rate, v.check_nonnegative)
        _grads_to_write("WeightDecay", params)
        for param in params:
            param.grad.data += self.rate * param.data


class ClipGrad:
    """Gradient clipping by global L2 norm, as DeZero's hook::

        total_norm = sqrt(sum over params of (param.grad.data ** 2).sum())
        rate = max_norm / (total_norm + 1e-6)
        if rate < 1: param.grad.data *= rate        (every param)

    Each grad's sum of squares is NumPy's, in the grad's dtype, and the sums add up as NumPy
    scalars from the int 0, as in DeZero (float32 grads: a float32 total); the square root is
    ``math.sqrt`` of its float. (``fastopt.clip_grad_norm`` sums in float64 in a fixed order
    instead.) The grads are scaled in place, by a compiled loop when ``rate`` is a Python
    float.

    Parameters
    ----------
    max_norm : float
        The largest norm allowed, finite and > 0.
    """

    def __init__(self, max_norm: float) -> None:
        _check_number("max_norm", max_norm, v.check_epsilon)
        self.max_norm = max_norm

    def __call__(self, params: list[Any]) -> None:
        _check_number("max_norm", self.max_norm, v.check_epsilon)
        grads = _grads_to_write("ClipGrad", params)
        total_norm: Any = 0
        for grad in grads:
            total_norm += (grad ** 2).sum()
        total_norm = math.sqrt(float(total_norm))
        rate = self.max_norm / (total_norm + 1e-6)
        if rate < 1:
            if type(rate) is float and _kernels.scale_in_place(grads, rate):
                return
            for param in params:
                param.grad.data *= rate


class FreezeParam:
    """Keep some params as they are: clears their grads (``param.grad = None``) before the
    update, as DeZero's hook.

    The optimizer then leaves them out: of the hooks after this one and of the update (in
    DeZero, a frozen param that had a grad makes ``update`` raise AttributeError).

    Parameters
    ----------
    *layers : Parameter, Layer or Model
        Each a param (anything without a ``params()`` method, with ``data`` and ``grad``), or
        a layer or model whose ``params()`` are all frozen (taken now, when constructing).
    """

    def __init__(self, *layers: Any) -> None:
        self.freeze_params: list[Any] = []
        for index, layer in enumerate(layers):
            if callable(getattr(layer, "params", None)):
                self.freeze_params.extend(layer.params())
            elif hasattr(layer, "data") and hasattr(layer, "grad"):
                self.freeze_params.append(layer)
            else:
                raise TypeError(f"FreezeParam takes Parameters, Layers and Models; argument "
                                f"{index} is {type(layer).__name__}, with neither a params() "
                                f"method nor data and grad attributes")

    def __call__(self, params: list[Any]) -> None:
        for param in self.freeze_params:
            param.grad = None
