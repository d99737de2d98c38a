"""The book's optimizers in pure NumPy: the baseline fastopt is measured and checked against.

Each ``*_rule`` function is the body of the book's ``for key in params.keys():`` loop, statement
for statement (``common/optimizer.py`` of *Deep Learning from Scratch*), with the options of
``fastopt``'s classes. The classes below loop over the keys as the book does. fastopt itself
calls these same rules for the inputs its compiled loops do not take (non-contiguous views,
float16, scalar params, a grad that shares memory with its param), so both give the same
numbers by construction.

Differences from the book, none of which changes a number the book computes: ``params`` may be
a list (state is then kept by position, as in the second book), a key that first appears in a
later call gets zero state instead of a KeyError, and the variants of ``fastopt``'s options are
available. Hyperparameters are checked as in ``fastopt``.
"""
from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np

__all__ = ["SGD", "AdaGrad", "Adam", "Momentum", "Nesterov", "RMSProp", "RMSprop"]

#: ``update``'s params: a dict of arrays (or float scalars), or a list or tuple of them.
Params: TypeAlias = Mapping[Any, Any] | list[Any] | tuple[Any, ...]
#: ``update``'s grads: the same keys, or the same length.
Grads: TypeAlias = Mapping[Any, Any] | Sequence[Any]
#: A state attribute: None before the first update, then a dict (or list) of arrays.
State: TypeAlias = dict[Any, Any] | list[Any] | None


# ---------------------------------------------------------------------------------------------
# The rules: one key's update, the book's statements. ``params[key] -= ...`` updates an array
# in place and stores a new value for a scalar param, exactly as in the book.

def _denominator(h: Any, eps: float, eps_inside_sqrt: bool) -> Any:
    if eps_inside_sqrt:
        return np.sqrt(h + eps)
    return np.sqrt(h) + eps


def sgd_rule(params: Any, key: Any, grad: Any, lr: float) -> None:
    params[key] -= lr * grad


def momentum_rule(params: Any, key: Any, grad: Any, v: Any, lr: float,
                  momentum: float) -> None:
    v[key] = momentum * v[key] - lr * grad
    params[key] += v[key]


def nesterov_rule(params: Any, key: Any, grad: Any, v: Any, lr: float, momentum: float,
                  velocity_first: bool) -> None:
    if velocity_first:
        v[key] *= momentum
        v[key] -= lr * grad
        params[key] += momentum * momentum * v[key]
        params[key] -= (1 + momentum) * lr * grad
    else:
        params[key] += momentum * momentum * v[key]
        params[key] -= (1 + momentum) * lr * grad
        v[key] *= momentum
        v[key] -= lr * grad


def adagrad_rule(params: Any, key: Any, grad: Any, h: Any, lr: float, eps: float,
                 eps_inside_sqrt: bool) -> None:
    h[key] += grad * grad
    params[key] -= lr * grad / _denominator(h[key], eps, eps_inside_sqrt)


def rmsprop_rule(params: Any, key: Any, grad: Any, h: Any, lr: float, decay_rate: float,
                 eps: float, eps_inside_sqrt: bool) -> None:
    h[key] *= decay_rate
    h[key] += (1 - decay_rate) * grad * grad
    params[key] -= lr * grad / _denominator(h[key], eps, eps_inside_sqrt)


def adam_rule(params: Any, key: Any, grad: Any, m: Any, v: Any, lr_t: Any, beta1: float,
              beta2: float, eps: float, eps_inside_sqrt: bool) -> None:
    m[key] += (1 - beta1) * (grad - m[key])
    v[key] += (1 - beta2) * (grad**2 - v[key])
    params[key] -= lr_t * m[key] / _denominator(v[key], eps, eps_inside_sqrt)


def adam_paper_rule(params: Any, key: Any, grad: Any, m: Any, v: Any, lr: float, beta1: float,
                    beta2: float, bias_correction1: float, bias_correction2: float,
                    eps: float, eps_inside_sqrt: bool) -> None:
    m[key] = beta1 * m[key] + (1 - beta1) * grad
    v[key] = beta2 * v[key] + (1 - beta2) * grad * grad
    m_hat = m[key] / bias_correction1
    v_hat = v[key] / bias_correction2
    params[key] -= lr * m_hat / _denominator(v_hat, eps, eps_inside_sqrt)


# ---------------------------------------------------------------------------------------------
# Hyperparameter checks, shared with fastopt's classes (which inherit these constructors).

def _check_number(name: str, value: Any) -> None:
    if type(value) is float:
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r} "
                        f"({type(value).__name__})")


def check_learning_rate(name: str, value: Any) -> None:
    """``value`` must be a real number >= 0 (and not nan)."""
    _check_number(name, value)
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")


def check_coefficient(name: str, value: Any) -> None:
    """``value`` must be a real number with 0 <= value < 1 (momentum, decay rates, betas)."""
    _check_number(name, value)
    if not 0 <= value < 1:
        raise ValueError(f"{name} must satisfy 0 <= {name} < 1; got {value!r}")


def check_epsilon(name: str, value: Any) -> None:
    """``value`` must be a real number > 0."""
    _check_number(name, value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")


# ---------------------------------------------------------------------------------------------
# The classes.

def _keys(params: Params) -> Any:
    return params.keys() if isinstance(params, Mapping) else range(len(params))


class ReferenceOptimizer:
    """The book's ``update`` loop, shared by the six reference classes.

    Subclasses name their state attributes in ``_state_names`` and implement ``_next_step()``,
    which returns the rule to apply to each key in the coming step, with the scalars that follow
    the state in its signature, without changing anything; ``_commit_step()`` then counts the
    step (Adam's ``iter``).
    """

    _state_names: tuple[str, ...] = ()

    def check_hyperparameters(self) -> None:
        """Raise TypeError or ValueError if a hyperparameter attribute is out of range."""

    def _next_step(self) -> tuple[Callable[..., None], tuple[Any, ...]]:
        raise NotImplementedError

    def _commit_step(self) -> None:
        """Count one update; only Adam counts."""

    @staticmethod
    def _zeros(param: Any) -> Any:
        """A param's initial state: the book's ``np.zeros_like``."""
        return np.zeros_like(param)

    def _add_zero_state(self, params: Params) -> None:
        """Zero state for every param that has none: all of them on the first call."""
        for name in self._state_names:
            state = getattr(self, name)
            if state is None:
                state = {} if isinstance(params, Mapping) else []
                setattr(self, name, state)
            if isinstance(params, Mapping) and isinstance(state, dict):
                for key, val in params.items():
                    if key not in state:
                        state[key] = self._zeros(val)
            elif not isinstance(params, Mapping) and isinstance(state, list):
                for val in params[len(state):]:
                    state.append(self._zeros(val))
            else:
                raise TypeError(f"state {name!r} is a {type(state).__name__}, but params is a "
                                f"{type(params).__name__}; pass the same kind every call")

    def update(self, params: Params, grads: Grads) -> None:
        """Update ``params`` in place from ``grads``, as the book's code does."""
        self._add_zero_state(params)
        rule, scalars = self._next_step()
        self._commit_step()
        states = [getattr(self, name) for name in self._state_names]
        for key in _keys(params):
            rule(params, key, grads[key], *states, *scalars)

    def __repr__(self) -> str:
        names = inspect.signature(type(self)).parameters
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__name__}({args})"


class SGD(ReferenceOptimizer):
    """``p -= lr*g``."""

    lr: float

    def __init__(self, lr: float = 0.01) -> None:
        self.lr = lr
        self.check_hyperparameters()

    def check_hyperparameters(self) -> None:
        check_learning_rate("lr", self.lr)

    def _next_step(self) -> tuple[Callable[..., None], tuple[Any, ...]]:
        return sgd_rule, (self.lr,)


class Momentum(ReferenceOptimizer):
    """``v = momentum*v - lr*g; p += v``."""

    _state_names = ("v",)
    lr: float
    momentum: float
    v: State

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        self.lr = lr
        self.momentum = momentum
        self.v = None
        self.check_hyperparameters()

    def check_hyperparameters(self) -> None:
        check_learning_rate("lr", self.lr)
        check_coefficient("momentum", self.momentum)

    def _next_step(self) -> tuple[Callable[..., None], tuple[Any, ...]]:
        return momentum_rule, (self.lr, self.momentum)


class Nesterov(ReferenceOptimizer):
    """Nesterov momentum; ``velocity_first=True`` is the book's 2016 order."""

    _state_names = ("v",)
    lr: float
    momentum: float
    velocity_first: bool
    v: State

    def __init__(self, lr: float = 0.01, momentum: float = 0.9, *,
                 velocity_first: bool = False) -> None:
        self.lr = lr
        self.momentum = momentum
        self.velocity_first = bool(velocity_first)
        self.v = None
        self.check_hyperparameters()

    def check_hyperparameters(self) -> None:
        check_learning_rate("lr", self.lr)
        check_coefficient("momentum", self.momentum)

    def _next_step(self) -> tuple[Callable[..., None], tuple[Any, ...]]:
        return nesterov_rule, (self.lr, self.momentum, self.velocity_first)


class AdaGrad(ReferenceOptimizer):
    """``h += g*g; p -= lr*g / (sqrt(h) + eps)``."""

    _state_names = ("h",)
    lr: float
    eps: float
    eps_inside_sqrt: bool
    h: State

    def __init__(self, lr: float = 0.01, *, eps: float = 1e-7,
                 eps_inside_sqrt: bool = False) -> None:
        self.lr = lr
        self.eps = eps
        self.eps_inside_sqrt = bool(eps_inside_sqrt)
        self.h = None
        self.check_hyperparameters()

    def check_hyperparameters(self) -> None:
        check_learning_rate("lr", self.lr)
        check_epsilon("eps", self.eps)

    def _next_step(self) -> tuple[Callable[..., None], tuple[Any, ...]]:
        return adagrad_rule, (self.lr, self.eps, self.eps_inside_sqrt)


class RMSprop(ReferenceOptimizer):
    """``h *= decay_rate; h += (1-decay_rate)*g*g; p -= lr*g / (sqrt(h) + eps)``."""

    _state_names = ("h",)
    lr: float
    decay_rate: float
    eps: float
    eps_inside_sqrt: bool
    h: State

    def __init__(self, lr: float = 0.01, decay_rate: float = 0.99, *, eps: float = 1e-7,
                 eps_inside_sqrt: bool = False) -> None:
        self.lr = lr
        self.decay_rate = decay_rate
        self.eps = eps
        self.eps_inside_sqrt = bool(eps_inside_sqrt)
        self.h = None
        self.check_hyperparameters()

    def check_hyperparameters(self) -> None:
        check_learning_rate("lr", self.lr)
        check_coefficient("decay_rate", self.decay_rate)
        check_epsilon("eps", self.eps)

    def _next_step(self) -> tuple[Callable[..., None], tuple[Any, ...]]:
        return rmsprop_rule, (self.lr, self.decay_rate, self.eps, self.eps_inside_sqrt)


RMSProp = RMSprop


class Adam(ReferenceOptimizer):
    """The book's Adam, or the paper's Algorithm 1 with ``paper_form=True``."""

    _state_names = ("m", "v")
    lr: float
    beta1: float
    beta2: float
    eps: float
    eps_inside_sqrt: bool
    paper_form: bool
    iter: int
    m: State
    v: State

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, *,
                 eps: float | None = None, eps_inside_sqrt: bool = False,
                 paper_form: bool = False) -> None:
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.paper_form = bool(paper_form)
        self.eps = (1e-8 if self.paper_form else 1e-7) if eps is None else eps
        self.eps_inside_sqrt = bool(eps_inside_sqrt)
        self.iter = 0
        self.m = None
        self.v = None
        self.check_hyperparameters()

    def check_hyperparameters(self) -> None:
        check_learning_rate("lr", self.lr)
        check_coefficient("beta1", self.beta1)
        check_coefficient("beta2", self.beta2)
        check_epsilon("eps", self.eps)

    def _commit_step(self) -> None:
        self.iter += 1

    def _next_step(self) -> tuple[Callable[..., None], tuple[Any, ...]]:
        t = self.iter + 1
        if self.paper_form:
            bias_correction1 = 1 - self.beta1**t
            bias_correction2 = 1 - self.beta2**t
            return adam_paper_rule, (self.lr, self.beta1, self.beta2, bias_correction1,
                                     bias_correction2, self.eps, self.eps_inside_sqrt)
        lr_t = self.lr * np.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)
        return adam_rule, (lr_t, self.beta1, self.beta2, self.eps, self.eps_inside_sqrt)
