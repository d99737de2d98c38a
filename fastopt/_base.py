"""Shared machinery of fastopt's optimizers: input checks, state, and dispatch to the kernels.

``Optimizer.update`` works in two phases so that a rejected call changes nothing:

1. *Check*: every key's param, grad and existing state is validated; nothing is written.
2. *Apply*: zero state is created for new keys, the step counter advances, and the keys are
   updated in the book's order. Runs of consecutive keys that the compiled loops take
   (``_kernels.ready``) go to the kernel in one call; any other key goes through the same
   pure-NumPy rule as ``fastopt.reference``.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np

from . import _kernels, reference

# The compiled entry for each of fastopt.reference's rules: same arguments after the arrays.
_KERNEL_FOR_RULE = {
    reference.sgd_rule: _kernels.sgd_step,
    reference.momentum_rule: _kernels.momentum_step,
    reference.nesterov_rule: _kernels.nesterov_step,
    reference.adagrad_rule: _kernels.adagrad_step,
    reference.rmsprop_rule: _kernels.rmsprop_step,
    reference.adam_rule: _kernels.adam_step,
    reference.adam_paper_rule: _kernels.adam_paper_step,
}


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{type(value).__name__} of dtype {value.dtype} and shape {value.shape}"
    return f"{type(value).__name__} {value!r}" if np.ndim(value) == 0 else type(value).__name__


def _is_float_scalar(value: Any) -> bool:
    return isinstance(value, (float, np.floating))


def _is_real_scalar(value: Any) -> bool:
    return (isinstance(value, (numbers.Real, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_, np.ndarray)))


def _check_param(key: Any, param: Any, grad: Any, mutable: bool) -> None:
    """Raise if ``param``/``grad`` is not a pair fastopt can update under ``key``."""
    if isinstance(param, np.ndarray):
        if param.dtype.kind != "f":
            raise TypeError(f"param {key!r} has dtype {param.dtype}; expected a floating-point "
                            f"array (float16, float32 or float64)")
        if not param.flags.writeable:
            raise ValueError(f"param {key!r} is read-only; fastopt updates params in place, "
                             f"so they must be writeable arrays")
        if not isinstance(grad, np.ndarray):
            raise TypeError(f"grad {key!r} is a {_describe(grad)}; expected an ndarray of the "
                            f"param's shape {param.shape}")
        if grad.dtype.kind != "f":
            raise TypeError(f"grad {key!r} has dtype {grad.dtype}; expected a floating-point "
                            f"array like its param ({param.dtype})")
        if grad.shape != param.shape:
            raise ValueError(f"grad {key!r} has shape {grad.shape} but its param has shape "
                             f"{param.shape}; they must be equal (no broadcasting)")
    elif _is_float_scalar(param):
        if not _is_real_scalar(grad):
            raise TypeError(f"grad {key!r} is a {_describe(grad)}; a scalar param "
                            f"({_describe(param)}) takes a real scalar grad")
        if not mutable:
            raise TypeError(f"param {key!r} is a scalar ({_describe(param)}) inside a tuple; a "
                            f"scalar's new value must be stored back, so pass a list or dict")
    else:
        raise TypeError(f"param {key!r} is a {_describe(param)}; expected a floating-point "
                        f"ndarray, or a float scalar like the book's params['x'] = -7.0")


def _check_state(name: str, key: Any, state: Any, param: Any) -> None:
    if np.shape(state) != np.shape(param):
        raise ValueError(f"state {name}[{key!r}] has shape {np.shape(state)} but param {key!r} "
                         f"now has shape {np.shape(param)}; a param's state belongs to the "
                         f"array first seen under its key (use a new optimizer for new shapes)")


class Optimizer(reference.ReferenceOptimizer):
    """Base of fastopt's optimizers: the reference's hyperparameters, compiled updates.

    Subclasses inherit their constructor, hyperparameter checks and per-step scalars from the
    matching ``fastopt.reference`` class; this class replaces its ``update``.
    """

    def update(self, params, grads) -> None:
        """Update ``params`` in place from ``grads``; return None.

        Parameters
        ----------
        params : dict or list of ndarray
            The arrays to update, in place (a float scalar param gets its new value stored
            back into the dict or list). A dict keeps the state under the same keys, a list
            or tuple by position.
        grads : dict or list of ndarray
            A grad for every param: same keys (extra keys are ignored) or same length; each
            grad has its param's shape.

        Raises
        ------
        TypeError, ValueError, KeyError
            When a hyperparameter, param or grad cannot be used; the message names the key.
            A rejected call changes no param, no state and no step count.
        """
        # --- check: nothing below this line and above "apply" writes anything -----------
        self.check_hyperparameters()
        if isinstance(params, Mapping):
            if not isinstance(grads, Mapping):
                raise TypeError(f"params is a {type(params).__name__}, so grads must be a "
                                f"mapping with the same keys; got {type(grads).__name__}")
            keys = list(params)
            mutable = isinstance(params, MutableMapping)
        elif isinstance(params, (list, tuple)):
            if not isinstance(grads, (list, tuple)):
                raise TypeError(f"params is a {type(params).__name__}, so grads must be a list "
                                f"or tuple of the same length; got {type(grads).__name__}")
            if len(grads) != len(params):
                raise ValueError(f"grads has {len(grads)} entries but params has "
                                 f"{len(params)}; expected one grad per param")
            keys = range(len(params))
            mutable = isinstance(params, list)
        else:
            raise TypeError(f"params must be a dict of arrays (or a list or tuple of arrays); "
                            f"got {type(params).__name__}")

        by_name = isinstance(params, Mapping)
        states = [getattr(self, name) for name in self._state_names]
        for name, state in zip(self._state_names, states):
            if state is not None and isinstance(state, dict) != by_name:
                raise TypeError(
                    f"state {name!r} is kept {'by key' if isinstance(state, dict) else 'by position'}"
                    f" from earlier calls, but params is now a {type(params).__name__}; pass "
                    f"the same kind of container every call")

        grad_list = []
        fast = []
        for key in keys:
            param = params[key]
            try:
                grad = grads[key]
            except (KeyError, IndexError):
                raise KeyError(f"grads has no entry for param {key!r}; expected a grad for "
                               f"every param") from None
            _check_param(key, param, grad, mutable)
            own = [self._state_of(state, key) for state in states]
            for name, entry in zip(self._state_names, own):
                if entry is not None:
                    _check_state(name, key, entry, param)
            grad_list.append(grad)
            fast.append(_kernels.ready(param, grad, *own))

        # --- apply -----------------------------------------------------------------------
        self._add_zero_state(params)
        rule, scalars = self._begin_step()
        kernel = _KERNEL_FOR_RULE[rule]
        states = [getattr(self, name) for name in self._state_names]
        run: list[Any] = []
        for key, grad, compiled in zip(keys, grad_list, fast):
            if compiled:
                run.append(key)
                continue
            if run:
                self._run_kernel(kernel, params, grads, states, run, scalars)
                run = []
            rule(params, key, grad, *states, *scalars)
        if run:
            self._run_kernel(kernel, params, grads, states, run, scalars)

    @staticmethod
    def _state_of(state: Any, key: Any) -> Any:
        if state is None:
            return None
        if isinstance(state, dict):
            return state.get(key)
        return state[key] if key < len(state) else None

    @staticmethod
    def _zeros(param: Any) -> Any:
        if isinstance(param, np.ndarray):
            return np.zeros(param.shape, param.dtype)   # C-contiguous whatever param's layout
        return np.zeros_like(param)                      # a scalar param: as the book does

    @staticmethod
    def _run_kernel(kernel, params, grads, states, keys, scalars) -> None:
        kernel([params[key] for key in keys], [grads[key] for key in keys],
               *[[state[key] for key in keys] for state in states], *scalars)
