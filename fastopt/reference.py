"""fastopt's optimizers in pure NumPy: the definition fastopt is checked and measured against.

Each ``*_rule`` function is one param's update, the body of the book's ``for key in
params.keys():`` loop statement for statement (``common/optimizer.py`` of *Deep Learning from
Scratch*; the rules beyond the book follow torch.optim 2.13's formulas). A rule takes the
param ``p``, its grad ``g``, the param's state arrays and the step's scalars, updates ``p`` and
the state in place and returns ``p`` (a new value only for a scalar param, which the caller
stores back). fastopt calls these same rules for the inputs its compiled loops do not take
(non-contiguous views, float16, scalar params, a grad that shares memory with its param), so
both give the same numbers by construction.

What every optimizer shares lives in ``ReferenceOptimizer``: hyperparameters that are numbers
or schedules (callables of the step count), checked and converted to Python floats once per
``update``; the step count ``iter``; the grad transform (gradient clipping by global norm, then
coupled weight decay ``g + weight_decay*p``), applied on the fly without writing the caller's
grads; and which params decay (``weight_decay_filter``).

Differences from the book, none of which changes a number the book computes: ``params`` may be
a list or tuple (state is then kept by position, as in the second book); a key that first
appears in a later call gets zero state instead of a KeyError; state arrays are updated in
place and never rebound (``v[key][...] = momentum*v[key] - lr*g`` computes the book's
right-hand side, then writes it into the same array); an array param is never stored back
(only a scalar param's new value is); hyperparameters are converted to Python floats.

This module carries code restated from *Deep Learning from Scratch* (Koki Saitoh, O'Reilly
Japan), MIT-licensed: see the notice in ``LICENSES/``.
"""
from __future__ import annotations

import inspect
import math
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np

__all__ = ["SGD", "AdaGrad", "Adadelta", "Adam", "AdamW", "Adamax", "Lion", "Momentum", "NAdam",
           "Nesterov", "RAdam", "RMSProp", "RMSprop"]

#: ``update``'s params: a dict of arrays (or float scalars), or a list or tuple of them.
Params: TypeAlias = Mapping[Any, Any] | list[Any] | tuple[Any, ...]
#: ``update``'s grads: the same keys, or the same length.
Grads: TypeAlias = Mapping[Any, Any] | Sequence[Any]
#: A state attribute: None before the first update, then a dict (or list) of arrays.
State: TypeAlias = dict[Any, Any] | list[Any] | None
#: A float hyperparameter: a number, or a schedule (a callable of the step count).
Hyper: TypeAlias = float | Callable[[int], float]
#: Which params decay: a callable of ``(key, param)`` returning a bool.
DecayFilter: TypeAlias = Callable[[Any, Any], bool]


# ---------------------------------------------------------------------------------------------
# The rules: one param's update. ``p`` is updated in place (an array) or rebound (a scalar) and
# returned; every state array is written in place.

def _denominator(h: Any, eps: float, eps_inside_sqrt: bool) -> Any:
    if eps_inside_sqrt:
        return np.sqrt(h + eps)
    return np.sqrt(h) + eps


def _square(g: Any) -> Any:
    """``g**2`` as the book computes it (for a Python float, C's ``pow``, which is not always
    ``g*g`` to the bit); where Python raises OverflowError for a finite square beyond the
    float range, inf, the IEEE (and NumPy) result, so an update never fails half-way."""
    try:
        return g**2
    except OverflowError:
        return math.inf


def sgd_rule(p: Any, g: Any, lr: float) -> Any:
    p -= lr * g
    return p


def momentum_rule(p: Any, g: Any, v: Any, lr: float, momentum: float) -> Any:
    v[...] = momentum * v - lr * g
    p += v
    return p


def nesterov_rule(p: Any, g: Any, v: Any, lr: float, momentum: float,
                  velocity_first: bool) -> Any:
    if velocity_first:
        v *= momentum
        v -= lr * g
        p += momentum * momentum * v
        p -= (1 + momentum) * lr * g
    else:
        p += momentum * momentum * v
        p -= (1 + momentum) * lr * g
        v *= momentum
        v -= lr * g
    return p


def adagrad_rule(p: Any, g: Any, h: Any, lr: float, eps: float, eps_inside_sqrt: bool) -> Any:
    h += g * g
    p -= lr * g / _denominator(h, eps, eps_inside_sqrt)
    return p


def rmsprop_rule(p: Any, g: Any, h: Any, grad_avg: Any, momentum_buffer: Any, lr: float,
                 decay_rate: float, eps: float, eps_inside_sqrt: bool, momentum: float) -> Any:
    """The book's RMSprop (``grad_avg`` and ``momentum_buffer`` None), with torch's options:
    a ``grad_avg`` centers ``h`` by the squared mean gradient; a ``momentum_buffer``
    accumulates the step."""
    h *= decay_rate
    h += (1 - decay_rate) * g * g
    if grad_avg is None and momentum_buffer is None:
        p -= lr * g / _denominator(h, eps, eps_inside_sqrt)
        return p
    if grad_avg is not None:
        grad_avg += (1 - decay_rate) * (g - grad_avg)
        denominator = _denominator(h - grad_avg * grad_avg, eps, eps_inside_sqrt)
    else:
        denominator = _denominator(h, eps, eps_inside_sqrt)
    if momentum_buffer is not None:
        momentum_buffer[...] = momentum * momentum_buffer + g / denominator
        p -= lr * momentum_buffer
    else:
        p -= lr * g / denominator
    return p


def adam_rule(p: Any, g: Any, m: Any, v: Any, v_max: Any, lr_t: Any, beta1: float,
              beta2: float, eps: float, eps_inside_sqrt: bool) -> Any:
    m += (1 - beta1) * (g - m)
    v += (1 - beta2) * (_square(g) - v)
    if v_max is not None:
        v_max[...] = np.maximum(v_max, v)
        v = v_max
    p -= lr_t * m / _denominator(v, eps, eps_inside_sqrt)
    return p


def adam_paper_rule(p: Any, g: Any, m: Any, v: Any, v_max: Any, lr: float, beta1: float,
                    beta2: float, bias_correction1: float, bias_correction2: float,
                    eps: float, eps_inside_sqrt: bool) -> Any:
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    if v_max is not None:
        v_max[...] = np.maximum(v_max, v)
        v = v_max
    m_hat = m / bias_correction1
    v_hat = v / bias_correction2
    p -= lr * m_hat / _denominator(v_hat, eps, eps_inside_sqrt)
    return p


def adamw_rule(p: Any, g: Any, m: Any, v: Any, v_max: Any, beta1: float, beta2: float,
               step_size: float, bias_correction2_sqrt: float, eps: float,
               lr_weight_decay: float) -> Any:
    """torch's AdamW: decoupled decay first, then Adam with the bias corrections folded into
    ``step_size = lr/(1 - beta1**t)`` and ``bias_correction2_sqrt = sqrt(1 - beta2**t)``."""
    if lr_weight_decay:
        p -= lr_weight_decay * p
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    if v_max is not None:
        v_max[...] = np.maximum(v_max, v)
        v = v_max
    p -= step_size * m / (np.sqrt(v) / bias_correction2_sqrt + eps)
    return p


def nadam_rule(p: Any, g: Any, m: Any, v: Any, beta1: float, beta2: float,
               bias_correction2: float, eps: float, grad_step: float,
               momentum_step: float) -> Any:
    """torch's NAdam: ``grad_step = lr*(1 - mu_t)/(1 - prod mu_1..t)`` and
    ``momentum_step = lr*mu_t+1/(1 - prod mu_1..t+1)``."""
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    denominator = np.sqrt(v / bias_correction2) + eps
    p -= grad_step * g / denominator
    p -= momentum_step * m / denominator
    return p


def radam_rule(p: Any, g: Any, m: Any, v: Any, lr: float, beta1: float, beta2: float,
               bias_correction1: float, bias_correction2_sqrt: float, eps: float,
               rectified: bool, rectification: float) -> Any:
    """torch's RAdam: the rectified adaptive step when ``rho_t > 5``, else the bias-corrected
    momentum step."""
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    m_hat = m / bias_correction1
    if rectified:
        p -= m_hat * lr * (bias_correction2_sqrt / (np.sqrt(v) + eps)) * rectification
    else:
        p -= m_hat * lr
    return p


def adamax_rule(p: Any, g: Any, m: Any, u: Any, beta1: float, beta2: float, step_size: float,
                eps: float) -> Any:
    m[...] = beta1 * m + (1 - beta1) * g
    u[...] = np.maximum(beta2 * u, np.abs(g) + eps)
    p -= step_size * m / u
    return p


def adadelta_rule(p: Any, g: Any, v: Any, u: Any, lr: float, rho: float, eps: float) -> Any:
    v[...] = rho * v + (1 - rho) * g * g
    d = np.sqrt(u + eps) / np.sqrt(v + eps) * g
    u[...] = rho * u + (1 - rho) * d * d
    p -= lr * d
    return p


def lion_rule(p: Any, g: Any, m: Any, lr: float, beta1: float, beta2: float,
              weight_decay: float) -> Any:
    c = beta1 * m + (1 - beta1) * g
    if weight_decay:
        p -= lr * (np.sign(c) + weight_decay * p)
    else:
        p -= lr * np.sign(c)
    m[...] = beta2 * m + (1 - beta2) * g
    return p


# ---------------------------------------------------------------------------------------------
# Hyperparameters: numbers (Python or NumPy ints and floats, converted to Python floats) or
# schedules (callables of the step count, evaluated once per update). Every value is checked
# before anything changes.

def to_float(name: str, value: Any, where: str = "") -> float:
    """``value`` as a Python float, or a TypeError/ValueError naming ``name``."""
    if type(value) is float:
        return value
    if (isinstance(value, (bool, np.bool_))
            or not isinstance(value, (int, float, np.integer, np.floating))):
        raise TypeError(f"{name} must be a real number (a Python or NumPy int or float) or a "
                        f"schedule (a callable of the step); got {value!r} "
                        f"({type(value).__name__}){where}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name}={value!r} is too large for a float{where}") from None


def check_learning_rate(name: str, value: float, where: str = "") -> None:
    """``value`` must be finite and >= 0."""
    if not 0 <= value < math.inf:
        raise ValueError(f"{name} must be finite and >= 0; got {value!r}{where}")


def check_coefficient(name: str, value: float, where: str = "") -> None:
    """``value`` must satisfy 0 <= value < 1 (momentum, decay rates, betas)."""
    if not 0 <= value < 1:
        raise ValueError(f"{name} must satisfy 0 <= {name} < 1; got {value!r}{where}")


def check_epsilon(name: str, value: float, where: str = "") -> None:
    """``value`` must be finite and > 0."""
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be finite and > 0; got {value!r}{where}")


check_nonnegative = check_learning_rate


def check_option(name: str, value: Any) -> bool:
    """A boolean option: a bool or NumPy bool, nothing merely truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r} ({type(value).__name__})")
    return bool(value)


Check: TypeAlias = Callable[[str, float, str], None]


# ---------------------------------------------------------------------------------------------
# Gradient clipping by global norm. The sum of squares has a fixed blocking, so that the
# compiled version (fastopt/_kernels.pyx) gives the same bits at every SIMD width and thread
# count: each grad's elements, as float64, are squared into blocks of NORM_BLOCK; inside a
# block element i goes to lane i % NORM_LANES, in order; the lanes are combined as
# ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)); a grad's block sums pairwise (first half + second
# half, recursively); the grads' sums in order, from 0.

NORM_BLOCK = 4096
NORM_LANES = 8


def _pairwise(sums: list[float]) -> float:
    if not sums:
        return 0.0
    if len(sums) == 1:
        return sums[0]
    half = len(sums) // 2
    return _pairwise(sums[:half]) + _pairwise(sums[half:])


def sum_of_squares(grad: Any) -> float:
    """The blocked float64 sum of squares of one grad (an array or a real scalar)."""
    x = np.asarray(grad)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"a grad of dtype {x.dtype} has no real norm")
    x = x.astype(np.float64).reshape(-1)
    if x.size == 0:
        return 0.0
    blocks = -(-x.size // NORM_BLOCK)
    padded = np.zeros(blocks * NORM_BLOCK)   # zeros add nothing to a sum of squares
    padded[:x.size] = x
    squares = (padded * padded).reshape(blocks, NORM_BLOCK // NORM_LANES, NORM_LANES)
    lanes = squares[:, 0, :].copy()
    for row in range(1, NORM_BLOCK // NORM_LANES):
        lanes += squares[:, row, :]
    block_sums = (((lanes[:, 0] + lanes[:, 1]) + (lanes[:, 2] + lanes[:, 3]))
                  + ((lanes[:, 4] + lanes[:, 5]) + (lanes[:, 6] + lanes[:, 7])))
    return _pairwise([float(value) for value in block_sums])


def global_norm(grads: Sequence[Any]) -> float:
    """The L2 norm of all ``grads`` together, as a float (NumPy; the definition)."""
    total = 0.0
    for grad in grads:
        total += sum_of_squares(grad)
    return math.sqrt(total)


def clip_coefficient(norm: float, max_norm: float) -> float | None:
    """torch's clip factor ``max_norm/(norm + 1e-6)`` when ``norm`` exceeds ``max_norm`` (or
    is nan), else None (no clipping)."""
    if norm <= max_norm:
        return None
    return max_norm / (norm + 1e-6)


# ---------------------------------------------------------------------------------------------
# The classes.

def _keys(params: Params) -> Any:
    return params.keys() if isinstance(params, Mapping) else range(len(params))


def transform_grad(g: Any, p: Any, grad_scale: float | None, weight_decay: float) -> Any:
    """The grad a rule sees: clipped (``g*grad_scale``), then with coupled decay
    (``+ weight_decay*p``). Never writes ``g``; a term that is off is left out entirely."""
    if grad_scale is not None:
        g = g * grad_scale
    if weight_decay:
        g = g + weight_decay * p
    return g


class ReferenceOptimizer:
    """The update loop and the hyperparameter machinery shared by every optimizer.

    A subclass lists its float hyperparameters with their checks in ``_hyperparameters`` and
    its boolean options in ``_options``, names its state attributes in ``state_names``, and
    implements ``_next_step(values)``: from the step's hyperparameter values (Python floats)
    it returns the rule, the scalars that follow the state in the rule's signature, and the
    attributes to set when the step is taken (at least ``iter``), without changing anything.
    A subclass whose rule applies weight decay itself (decoupled: AdamW, Lion) sets
    ``_decoupled`` and takes the decay term as its rule's last scalar.
    """

    _hyperparameters: dict[str, Check] = {"lr": check_learning_rate}
    _checks: dict[str, Check] = {}   # _hyperparameters and weight_decay (__init_subclass__)
    _options: tuple[str, ...] = ()
    _decoupled = False
    lr: Hyper
    weight_decay: Hyper
    weight_decay_filter: DecayFilter | None
    max_grad_norm: float | None
    iter: int
    _lock: threading.Lock

    def _setup(self, weight_decay: Hyper, weight_decay_filter: DecayFilter | None,
               max_grad_norm: float | None) -> None:
        """Set what every optimizer has, then check every hyperparameter."""
        self.weight_decay = weight_decay
        self.weight_decay_filter = weight_decay_filter
        self.max_grad_norm = max_grad_norm
        self.iter = 0
        self._decays: State = None
        for name in self.state_names:
            setattr(self, name, None)
        _new_lock(self)
        self.check_hyperparameters()

    _states: tuple[str, ...] = ()

    @property
    def state_names(self) -> tuple[str, ...]:
        """The state attributes this optimizer keeps, with its options."""
        return self._states

    # --- hyperparameters ------------------------------------------------------------------

    def hyperparameter_values(self, step: int | None = None) -> dict[str, float]:
        """Every float hyperparameter's value at ``step`` (default: the coming update's,
        ``iter``), schedules evaluated, as Python floats; TypeError or ValueError naming the
        hyperparameter (and the step, for a schedule) if one is out of range."""
        step = self.iter if step is None else step
        values = {}
        for name, check in self._all_hyperparameters().items():
            value = getattr(self, name)
            where = ""
            if callable(value):
                where = f" (the schedule's value at step {step})"
                value = value(step)
            number = to_float(name, value, where)
            check(name, number, where)
            values[name] = number
        return values

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._checks = {**cls._hyperparameters, "weight_decay": check_nonnegative}

    def _all_hyperparameters(self) -> dict[str, Check]:
        """Every float hyperparameter and its check (built once per class; not to be
        modified)."""
        return self._checks

    def check_hyperparameters(self) -> None:
        """Raise TypeError or ValueError if a hyperparameter or option is not usable."""
        self._checked_values()

    def _checked_values(self) -> dict[str, float]:
        """Check the options, then return ``hyperparameter_values()``."""
        for name in self._options:
            check_option(name, getattr(self, name))
        if self.weight_decay_filter is not None and not callable(self.weight_decay_filter):
            raise TypeError(f"weight_decay_filter must be a callable of (key, param) or None; "
                            f"got {self.weight_decay_filter!r}")
        if self.max_grad_norm is not None:
            norm = to_float("max_grad_norm", self.max_grad_norm)
            if not norm > 0:
                raise ValueError(f"max_grad_norm must be > 0 (or None); got {norm!r}")
        return self.hyperparameter_values()

    def _next_step(self, values: dict[str, float]
                   ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        raise NotImplementedError

    def _coupled_decay(self, values: dict[str, float]) -> float:
        """The weight decay added to the grads (0 for decoupled rules)."""
        return 0.0 if self._decoupled else values["weight_decay"]

    # --- state ----------------------------------------------------------------------------

    @staticmethod
    def _zeros(param: Any) -> Any:
        """A param's initial state: the book's ``np.zeros_like``."""
        return np.zeros_like(param)

    def _add_zero_state(self, params: Params) -> None:
        """Zero state for every param that has none: all of them on the first call."""
        by_key = isinstance(params, Mapping)
        for name in self.state_names:
            state = getattr(self, name)
            if state is None:
                state = {} if by_key else []
                setattr(self, name, state)
            if isinstance(params, Mapping) and isinstance(state, dict):
                for key, val in params.items():
                    if key not in state:
                        state[key] = self._zeros(val)
            elif not by_key and isinstance(state, list):
                for val in params[len(state):]:
                    state.append(self._zeros(val))
            else:
                raise TypeError(f"state {name!r} is a {type(state).__name__}, but params is a "
                                f"{type(params).__name__}; pass the same kind every call")

    def _key_decays(self, params: Params) -> State:
        """Whether each param decays (``weight_decay_filter``, asked once per key, when the
        key is first seen), by key or position; None when every param decays."""
        chooser = self.weight_decay_filter
        if chooser is None:
            return None
        by_key = isinstance(params, Mapping)
        # A new container (never the current one written in place), so that a filter that
        # raises part way changes nothing.
        kept = self._decays
        if kept is None or isinstance(kept, dict) != by_key:
            kept = {} if by_key else []
        decays = kept.copy()
        if isinstance(params, Mapping):
            assert isinstance(decays, dict)
            for key, val in params.items():
                if key not in decays:
                    decays[key] = _decision(chooser, key, val)
        else:
            assert isinstance(decays, list)
            for position in range(len(decays), len(params)):
                decays.append(_decision(chooser, position, params[position]))
        return decays

    # --- the update -----------------------------------------------------------------------

    def update(self, params: Params, grads: Grads) -> None:
        """Update ``params`` in place from ``grads``, as the book's code does."""
        with self._lock:
            values = self._checked_values()
            rule, scalars, after = self._next_step(values)
            grad_scale = self._clip_factor([grads[key] for key in _keys(params)])
            decays = self._key_decays(params)
            self._add_zero_state(params)
            self._decays = decays
            for name, value in after.items():
                setattr(self, name, value)
            self._apply(rule, scalars, values, grad_scale, decays, params, grads,
                        self._rule_states(), list(_keys(params)))

    def _rule_states(self) -> list[Any]:
        """The state containers the rule takes, in its order (None for one not kept)."""
        return [None if name is None else getattr(self, name)
                for name in self._rule_state_names()]

    def _rule_state_names(self) -> list[str | None]:
        """The names of the state attributes the rule takes, in its order (None for a slot
        its options do not use)."""
        return list(self.state_names)

    def _apply(self, rule: Callable[..., Any], scalars: tuple[Any, ...],
               values: dict[str, float], grad_scale: float | None, decays: State,
               params: Params, grads: Grads, states: list[Any], keys: list[Any],
               read: list[Any] | None = None) -> None:
        """Run ``rule`` on each key: the grads (``read``, or ``grads[key]``) transformed, the
        scalars without the decay term for a param that does not decay."""
        decay = self._coupled_decay(values)
        undecayed = (*scalars[:-1], 0.0) if self._decoupled else scalars
        for index, key in enumerate(keys):
            param = params[key]
            grad = grads[key] if read is None else read[index]
            decays_here = decays is None or decays[key]
            grad = transform_grad(grad, param, grad_scale, decay if decays_here else 0.0)
            new = rule(param, grad, *[state[key] if state is not None else None
                                      for state in states],
                       *(scalars if decays_here else undecayed))
            if not isinstance(param, np.ndarray):
                params[key] = new   # type: ignore[index]

    # The global norm of the grads; fastopt's classes use the compiled one (the same bits).
    _global_norm = staticmethod(global_norm)

    def _clip_factor(self, grads: list[Any]) -> float | None:
        """The factor that clips ``grads`` (every param's, in order) to ``max_grad_norm``, or
        None."""
        if self.max_grad_norm is None:
            return None
        return clip_coefficient(self._global_norm(grads), float(self.max_grad_norm))

    def __repr__(self) -> str:
        """The positional hyperparameters, then the keyword-only options that differ from
        their defaults."""
        shown = []
        for name, parameter in inspect.signature(type(self)).parameters.items():
            value = getattr(self, name)
            if parameter.kind is parameter.KEYWORD_ONLY and _same(value, parameter.default):
                continue
            shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        _new_lock(self)

    # --- checkpoints: the logic is in fastopt/checkpoint.py --------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything this optimizer needs to continue exactly, as plain data (copies).

        Returns
        -------
        dict
            Format name and version, class, hyperparameters (fastopt's schedules as their
            ``to_dict()``; a schedule of your own is only marked), options, ``iter`` and the
            state arrays by key or position. See ``fastopt.checkpoint``; ``fastopt.save``
            writes it to a file.
        """
        from . import checkpoint
        return checkpoint.state_dict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Check ``state`` (from ``state_dict()`` or ``fastopt.load``), then continue from it.

        Works before the first update. Schedules of your own and ``weight_decay_filter`` are
        not in a checkpoint: pass them to the constructor again before loading.

        Raises
        ------
        ValueError
            If ``state`` is of another class or version, malformed, or does not fit this
            optimizer's existing state; the message names what differs, and nothing changes.
        """
        from . import checkpoint
        checkpoint.load_state_dict(self, state)


# Every optimizer that has a lock, by id (a weak reference: the registry keeps none alive, and
# needs no hash of the optimizer, which a subclass may make unhashable).
_LOCKED: weakref.WeakValueDictionary[int, ReferenceOptimizer] = weakref.WeakValueDictionary()


def _new_lock(optimizer: ReferenceOptimizer) -> None:
    """Give ``optimizer`` a lock of its own (``update`` and checkpoints hold it) and register
    it, so that a forked child can free it (``_free_locks_in_child``)."""
    optimizer._lock = threading.Lock()
    _LOCKED[id(optimizer)] = optimizer


def _free_locks_in_child() -> None:
    """Runs in a forked child (``os.fork``, multiprocessing's "fork"): replace every lock
    that was held at the fork with a new, free one.

    Only the forking thread exists in the child, so a lock held then was held by a thread the
    child does not have, in the middle of an update (or a checkpoint), and would never be
    released: the child's first update of that optimizer would wait forever. The update that
    thread was making is not finished in the child: its params and state are as it had left
    them at the instant of the fork. (A fork from inside an update, from a schedule or a
    filter that the update calls, is not supported: that update's own lock is replaced too.)
    """
    for optimizer in list(_LOCKED.values()):
        own = vars(optimizer)
        lock = own.get("_lock")
        if lock is not None and lock.locked():
            own["_lock"] = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_free_locks_in_child)


def _same(value: Any, default: Any) -> bool:
    try:
        return bool(value is default or (type(value) is type(default) and value == default))
    except (TypeError, ValueError):
        return False


def _decision(chooser: DecayFilter, key: Any, param: Any) -> bool:
    answer = chooser(key, param)
    if not isinstance(answer, (bool, np.bool_)):
        raise TypeError(f"weight_decay_filter({key!r}, param) must return True or False; got "
                        f"{answer!r}")
    return bool(answer)


_COMMON = ("weight_decay", "weight_decay_filter", "max_grad_norm")


class SGD(ReferenceOptimizer):
    """``p -= lr*g``."""

    def __init__(self, lr: Hyper = 0.01, *, weight_decay: Hyper = 0.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def _next_step(self, values: dict[str, float]
                   ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return sgd_rule, (values["lr"],), {"iter": self.iter + 1}


class Momentum(ReferenceOptimizer):
    """``v = momentum*v - lr*g; p += v``."""

    _states = ("v",)
    _hyperparameters = {"lr": check_learning_rate, "momentum": check_coefficient}
    momentum: Hyper
    v: State

    def __init__(self, lr: Hyper = 0.01, momentum: Hyper = 0.9, *, weight_decay: Hyper = 0.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.momentum = momentum
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)


    def _next_step(self, values: dict[str, float]
                   ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return momentum_rule, (values["lr"], values["momentum"]), {"iter": self.iter + 1}


class Nesterov(Momentum):
    """Nesterov momentum; ``velocity_first=True`` is the book's 2016 order."""

    _options = ("velocity_first",)
    velocity_first: bool

    def __init__(self, lr: Hyper = 0.01, momentum: Hyper = 0.9, *,
                 velocity_first: bool = False, weight_decay: Hyper = 0.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.velocity_first = velocity_first
        super().__init__(lr, momentum, weight_decay=weight_decay,
                         weight_decay_filter=weight_decay_filter, max_grad_norm=max_grad_norm)

    def _next_step(self, values: dict[str, float]
                   ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return (nesterov_rule, (values["lr"], values["momentum"], bool(self.velocity_first)),
                {"iter": self.iter + 1})


class AdaGrad(ReferenceOptimizer):
    """``h += g*g; p -= lr*g / (sqrt(h) + eps)``."""

    _states = ("h",)
    _hyperparameters = {"lr": check_learning_rate, "eps": check_epsilon}
    _options = ("eps_inside_sqrt",)
    eps: Hyper
    eps_inside_sqrt: bool
    h: State

    def __init__(self, lr: Hyper = 0.01, *, eps: Hyper = 1e-7, eps_inside_sqrt: bool = False,
                 weight_decay: Hyper = 0.0, weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.eps = eps
        self.eps_inside_sqrt = eps_inside_sqrt
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)


    def _next_step(self, values: dict[str, float]
                   ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return (adagrad_rule, (values["lr"], values["eps"], bool(self.eps_inside_sqrt)),
                {"iter": self.iter + 1})


class RMSprop(ReferenceOptimizer):
    """``h *= decay_rate; h += (1-decay_rate)*g*g; p -= lr*g / (sqrt(h) + eps)``, with torch's
    ``centered`` and ``momentum`` forms as options."""

    _hyperparameters = {"lr": check_learning_rate, "decay_rate": check_coefficient,
                        "eps": check_epsilon, "momentum": check_coefficient}
    _options = ("eps_inside_sqrt", "centered")
    decay_rate: Hyper
    eps: Hyper
    momentum: Hyper
    eps_inside_sqrt: bool
    centered: bool
    h: State
    grad_avg: State
    momentum_buffer: State

    def __init__(self, lr: Hyper = 0.01, decay_rate: Hyper = 0.99, *, eps: Hyper = 1e-7,
                 eps_inside_sqrt: bool = False, centered: bool = False, momentum: Hyper = 0.0,
                 weight_decay: Hyper = 0.0, weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.decay_rate = decay_rate
        self.eps = eps
        self.eps_inside_sqrt = eps_inside_sqrt
        self.centered = centered
        self.momentum = momentum
        self.grad_avg = self.momentum_buffer = None
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    @property
    def _uses_momentum(self) -> bool:
        """Momentum is used (with its buffer) when it is a schedule or nonzero."""
        return callable(self.momentum) or self.momentum != 0

    @property
    def state_names(self) -> tuple[str, ...]:
        return (("h",) + (("grad_avg",) if self.centered else ())
                + (("momentum_buffer",) if self._uses_momentum else ()))

    def _next_step(self, values: dict[str, float]
                   ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return (rmsprop_rule, (values["lr"], values["decay_rate"], values["eps"],
                               bool(self.eps_inside_sqrt), values["momentum"]),
                {"iter": self.iter + 1})

    def _rule_state_names(self) -> list[str | None]:
        return ["h", "grad_avg" if self.centered else None,
                "momentum_buffer" if self._uses_momentum else None]


RMSProp = RMSprop


class Adam(ReferenceOptimizer):
    """The book's Adam, or the paper's Algorithm 1 with ``paper_form=True``; ``amsgrad=True``
    keeps the running maximum of ``v`` and divides by it."""

    _hyperparameters = {"lr": check_learning_rate, "beta1": check_coefficient,
                        "beta2": check_coefficient, "eps": check_epsilon}
    _options = ("eps_inside_sqrt", "paper_form", "amsgrad")
    beta1: Hyper
    beta2: Hyper
    eps: Hyper
    eps_inside_sqrt: bool
    paper_form: bool
    amsgrad: bool
    m: State
    v: State
    v_max: State

    def __init__(self, lr: Hyper = 0.001, beta1: Hyper = 0.9, beta2: Hyper = 0.999, *,
                 eps: Hyper | None = None, eps_inside_sqrt: bool = False,
                 paper_form: bool = False, amsgrad: bool = False, weight_decay: Hyper = 0.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.paper_form = check_option("paper_form", paper_form)
        self.eps = (1e-8 if self.paper_form else 1e-7) if eps is None else eps
        self.eps_inside_sqrt = eps_inside_sqrt
        self.amsgrad = amsgrad
        self.v_max = None
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("m", "v", "v_max") if self.amsgrad else ("m", "v")

    def _rule_state_names(self) -> list[str | None]:
        return ["m", "v", "v_max" if self.amsgrad else None]

    def _next_step(self, values: dict[str, float]
                   ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        t = self.iter + 1
        lr, beta1, beta2 = values["lr"], values["beta1"], values["beta2"]
        inside = bool(self.eps_inside_sqrt)
        if self.paper_form:
            return (adam_paper_rule, (lr, beta1, beta2, 1 - beta1**t, 1 - beta2**t,
                                      values["eps"], inside), {"iter": t})
        # The book computes lr_t with np.sqrt, so it is a NumPy float64 (which makes NumPy
        # compute the last statement in float64 for float32 arrays); math.sqrt gives its bits.
        lr_t = np.float64(lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t))
        return adam_rule, (lr_t, beta1, beta2, values["eps"], inside), {"iter": t}



class AdamW(Adam):
    """torch's AdamW: decoupled weight decay ``p -= lr*weight_decay*p``, then Adam with the
    bias corrections of torch."""

    _decoupled = True

    def __init__(self, lr: Hyper = 0.001, beta1: Hyper = 0.9, beta2: Hyper = 0.999, *,
                 eps: Hyper = 1e-8, weight_decay: Hyper = 1e-2, amsgrad: bool = False,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        if eps is None:   # Adam reads None as "the default of its form"; AdamW has one default
            to_float("eps", eps)
        super().__init__(lr, beta1, beta2, eps=eps, amsgrad=amsgrad, paper_form=True,
                         weight_decay=weight_decay, weight_decay_filter=weight_decay_filter,
                         max_grad_norm=max_grad_norm)

    def _next_step(self, values: dict[str, float]
                   ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        t = self.iter + 1
        lr, beta1, beta2 = values["lr"], values["beta1"], values["beta2"]
        return (adamw_rule, (beta1, beta2, lr / (1 - beta1**t), math.sqrt(1 - beta2**t),
                             values["eps"], lr * values["weight_decay"]), {"iter": t})


class NAdam(ReferenceOptimizer):
    """torch's NAdam (Dozat 2016) with its momentum schedule
    ``mu_t = beta1*(1 - 0.5*0.96**(t*momentum_decay))``."""

    _states = ("m", "v")
    _hyperparameters = {"lr": check_learning_rate, "beta1": check_coefficient,
                        "beta2": check_coefficient, "eps": check_epsilon,
                        "momentum_decay": check_nonnegative}
    beta1: Hyper
    beta2: Hyper
    eps: Hyper
    momentum_decay: Hyper
    mu_product: float
    m: State
    v: State

    def __init__(self, lr: Hyper = 2e-3, beta1: Hyper = 0.9, beta2: Hyper = 0.999, *,
                 eps: Hyper = 1e-8, momentum_decay: Hyper = 4e-3, weight_decay: Hyper = 0.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.momentum_decay = momentum_decay
        self.mu_product = 1.0
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)


    def _next_step(self, values: dict[str, float]
                   ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        t = self.iter + 1
        lr, beta1, beta2 = values["lr"], values["beta1"], values["beta2"]
        decay = values["momentum_decay"]
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * decay))
        mu_product = self.mu_product * mu
        grad_step = lr * (1.0 - mu) / (1.0 - mu_product)
        momentum_step = lr * mu_next / (1.0 - mu_product * mu_next)
        return (nadam_rule, (beta1, beta2, 1 - beta2**t, values["eps"], grad_step,
                             momentum_step), {"iter": t, "mu_product": mu_product})


class RAdam(ReferenceOptimizer):
    """torch's RAdam (Liu et al. 2020): rectified when ``rho_t > 5``."""

    _states = ("m", "v")
    _hyperparameters = {"lr": check_learning_rate, "beta1": check_coefficient,
                        "beta2": check_coefficient, "eps": check_epsilon}
    beta1: Hyper
    beta2: Hyper
    eps: Hyper
    m: State
    v: State

    def __init__(self, lr: Hyper = 1e-3, beta1: Hyper = 0.9, beta2: Hyper = 0.999, *,
                 eps: Hyper = 1e-8, weight_decay: Hyper = 0.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)


    def _next_step(self, values: dict[str, float]
                   ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        t = self.iter + 1
        lr, beta1, beta2 = values["lr"], values["beta1"], values["beta2"]
        bias_correction1 = 1 - beta1**t
        bias_correction2 = 1 - beta2**t
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * t * (beta2**t) / bias_correction2
        rectified = rho_t > 5.0
        rectification = (math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                                   / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                         if rectified else 0.0)
        return (radam_rule, (lr, beta1, beta2, bias_correction1, math.sqrt(bias_correction2),
                             values["eps"], rectified, rectification), {"iter": t})


class Adamax(ReferenceOptimizer):
    """torch's Adamax: ``u = max(beta2*u, abs(g) + eps); p -= (lr/(1-beta1**t))*m/u``."""

    _states = ("m", "u")
    _hyperparameters = {"lr": check_learning_rate, "beta1": check_coefficient,
                        "beta2": check_coefficient, "eps": check_epsilon}
    beta1: Hyper
    beta2: Hyper
    eps: Hyper
    m: State
    u: State

    def __init__(self, lr: Hyper = 2e-3, beta1: Hyper = 0.9, beta2: Hyper = 0.999, *,
                 eps: Hyper = 1e-8, weight_decay: Hyper = 0.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)


    def _next_step(self, values: dict[str, float]
                   ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        t = self.iter + 1
        lr, beta1 = values["lr"], values["beta1"]
        return (adamax_rule, (beta1, values["beta2"], lr / (1 - beta1**t), values["eps"]),
                {"iter": t})


class Adadelta(ReferenceOptimizer):
    """torch's Adadelta: ``v = rho*v + (1-rho)*g*g; d = sqrt(u + eps)/sqrt(v + eps)*g;
    u = rho*u + (1-rho)*d*d; p -= lr*d``."""

    _states = ("v", "u")
    _hyperparameters = {"lr": check_learning_rate, "rho": check_coefficient,
                        "eps": check_epsilon}
    rho: Hyper
    eps: Hyper
    v: State
    u: State

    def __init__(self, lr: Hyper = 1.0, rho: Hyper = 0.9, *, eps: Hyper = 1e-6,
                 weight_decay: Hyper = 0.0, weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.rho = rho
        self.eps = eps
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)


    def _next_step(self, values: dict[str, float]
                   ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return (adadelta_rule, (values["lr"], values["rho"], values["eps"]),
                {"iter": self.iter + 1})


class Lion(ReferenceOptimizer):
    """Lion (Chen et al. 2023): ``c = beta1*m + (1-beta1)*g;
    p -= lr*(sign(c) + weight_decay*p); m = beta2*m + (1-beta2)*g``."""

    _states = ("m",)
    _hyperparameters = {"lr": check_learning_rate, "beta1": check_coefficient,
                        "beta2": check_coefficient}
    _decoupled = True
    beta1: Hyper
    beta2: Hyper
    m: State

    def __init__(self, lr: Hyper = 1e-4, beta1: Hyper = 0.9, beta2: Hyper = 0.99, *,
                 weight_decay: Hyper = 0.0, weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)


    def _next_step(self, values: dict[str, float]
                   ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return (lion_rule, (values["lr"], values["beta1"], values["beta2"],
                            values["weight_decay"]), {"iter": self.iter + 1})
