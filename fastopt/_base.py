"""Shared machinery of fastopt's optimizers: input checks, state, and dispatch to the kernels.

``Optimizer.update`` first tries the common case in one compiled call: every param an
array the loops take, with its state already there. The kernel entry checks every param before
it writes anything and declines (returning False, nothing changed) otherwise. Then the checked
path runs in two phases, so that a rejected call changes nothing:

1. *Check*: every key's param, grad and existing state is validated; nothing is written.
2. *Apply*: zero state is created for new keys, the step is counted, and the keys are
   updated in the book's order. Runs of consecutive keys that the compiled loops take
   (``_kernels.ready``) go to the kernel in one call; any other key goes through the same
   pure-NumPy rule as ``fastopt.reference``.
"""
from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import numpy as np

from . import reference
from ._simd import kernels as _kernels

# The compiled entry for each of fastopt.reference's rules: the same arguments after the arrays.
_KERNEL_FOR_RULE: dict[Callable[..., None], Callable[..., bool]] = {
    reference.sgd_rule: _kernels.sgd_step,
    reference.momentum_rule: _kernels.momentum_step,
    reference.nesterov_rule: _kernels.nesterov_step,
    reference.adagrad_rule: _kernels.adagrad_step,
    reference.rmsprop_rule: _kernels.rmsprop_step,
    reference.adam_rule: _kernels.adam_step,
    reference.adam_paper_rule: _kernels.adam_paper_step,
}


def _describe(value: Any) -> str:
    """What a value is, for error messages: 'an ndarray of dtype ...', 'a float -7.0'."""
    name = type(value).__name__
    article = "an" if name[0] in "aeiou" else "a"
    if isinstance(value, np.ndarray):
        return f"{article} {name} of dtype {value.dtype} and shape {value.shape}"
    if np.ndim(value) == 0:
        return f"{article} {name} {value!r}"
    return f"{article} {name}"


def _is_real_scalar(value: Any) -> bool:
    return (isinstance(value, (numbers.Real, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_, np.ndarray)))


def _check_param(key: Any, param: Any, grad: Any, mutable: bool) -> tuple[int, ...]:
    """Raise if ``param`` and ``grad`` are not a pair fastopt can update under ``key``.

    Returns the param's shape, ``()`` for a scalar param.
    """
    if isinstance(param, np.ndarray):
        if param.dtype.kind != "f":
            raise TypeError(f"param {key!r} has dtype {param.dtype}; expected a floating-point "
                            f"array (float16, float32 or float64)")
        if not param.flags.writeable:
            raise ValueError(f"param {key!r} is read-only; fastopt updates params in place, "
                             f"so they must be writeable arrays")
        if not isinstance(grad, np.ndarray):
            raise TypeError(f"grad {key!r} is {_describe(grad)}; expected an ndarray of its "
                            f"param's shape {param.shape}")
        if grad.dtype.kind != "f":
            raise TypeError(f"grad {key!r} has dtype {grad.dtype}; expected a floating-point "
                            f"array like its param ({param.dtype})")
        if grad.shape != param.shape:
            raise ValueError(f"grad {key!r} has shape {grad.shape} but its param has shape "
                             f"{param.shape}; they must be equal (no broadcasting)")
        shape: tuple[int, ...] = param.shape
        return shape
    if isinstance(param, (float, np.floating)):
        if not _is_real_scalar(grad):
            raise TypeError(f"grad {key!r} is {_describe(grad)}; a scalar param "
                            f"({_describe(param)}) takes a real scalar grad")
        if not mutable:
            raise TypeError(f"param {key!r} is {_describe(param)} in a tuple; a scalar "
                            f"param's new value must be stored back, so "
                            f"pass a list or dict")
        return ()
    raise TypeError(f"param {key!r} is {_describe(param)}; expected a floating-point "
                    f"ndarray, or a float scalar like the book's params['x'] = -7.0")


def _run_kernel(kernel: Callable[..., bool], params: Any, grads: Any, states: list[Any],
                keys: list[Any], scalars: tuple[Any, ...]) -> None:
    """One compiled call for ``keys``, every one of which ``_kernels.ready`` accepted."""
    done = kernel([params[key] for key in keys], [grads[key] for key in keys],
                  *[[state[key] for key in keys] for state in states], *scalars)
    assert done, "the kernel declined params that _kernels.ready accepted"


class Optimizer(reference.ReferenceOptimizer):
    """Base of fastopt's optimizers: the reference's hyperparameters, compiled updates.

    Subclasses inherit their constructor, hyperparameter checks and per-step scalars from the
    ``fastopt.reference`` class of the same name; this class replaces its ``update``.
    """

    def update(self, params: reference.Params, grads: reference.Grads) -> None:
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
        self.check_hyperparameters()
        if not self._update_compiled(params, grads):
            self._update_checked(params, grads)

    def _update_compiled(self, params: reference.Params, grads: reference.Grads) -> bool:
        """Update in one compiled call if every param can take it; else change nothing."""
        states = [getattr(self, name) for name in self._state_names]
        if type(params) is dict:
            if type(grads) is not dict:
                return False
            for state in states:
                if type(state) is not dict:
                    return False
            arguments: tuple[Any, ...] = (params, grads, *states)   # the kernel reads the dicts
        elif type(params) is list:
            count = len(params)
            if type(grads) is not list or len(grads) != count:
                return False
            for state in states:
                if type(state) is not list or len(state) < count:
                    return False
            arguments = (params, grads,
                         *[state if len(state) == count else state[:count] for state in states])
        else:
            return False
        rule, scalars = self._next_step()
        if not _KERNEL_FOR_RULE[rule](*arguments, *scalars):
            return False
        self._commit_step()
        return True

    def _update_checked(self, params: reference.Params, grads: reference.Grads) -> None:
        """Validate every key, then update each by the kernel or by NumPy's rule."""
        # --- check: nothing is written until "apply" ---------------------------------------
        by_name = type(params) is dict or isinstance(params, Mapping)
        if by_name:
            if type(grads) is not dict and not isinstance(grads, Mapping):
                raise TypeError(f"params is a {type(params).__name__}, so grads must be a "
                                f"mapping with the same keys; got {type(grads).__name__}")
            keys: Any = list(params)
            mutable = type(params) is dict or isinstance(params, MutableMapping)
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

        states = [getattr(self, name) for name in self._state_names]
        for name, state in zip(self._state_names, states, strict=True):
            if state is not None and isinstance(state, dict) != by_name:
                kept = "by key (a dict)" if isinstance(state, dict) else "by position (a list)"
                raise TypeError(f"state {name!r} is kept {kept} from earlier calls, but params "
                                f"is now a {type(params).__name__}; pass the same kind of "
                                f"container every call")

        grad_list = []
        compiled = []
        complete = None not in states   # does every key already have its state?
        for key in keys:
            param = params[key]
            try:
                grad = grads[key]
            except (KeyError, IndexError):
                raise KeyError(f"grads has no entry for param {key!r}; expected a grad for "
                               f"every param") from None
            shape = _check_param(key, param, grad, mutable)
            own = []
            for name, state in zip(self._state_names, states, strict=True):
                if state is None:
                    entry = None
                elif by_name:
                    entry = state.get(key)
                else:
                    entry = state[key] if key < len(state) else None
                if entry is None:
                    complete = False
                elif getattr(entry, "shape", None) != shape:
                    raise ValueError(
                        f"state {name}[{key!r}] has shape {np.shape(entry)} but param {key!r} "
                        f"has shape {shape}; a param's state belongs to the array first seen "
                        f"under its key (use a new optimizer for a new shape)")
                own.append(entry)
            grad_list.append(grad)
            compiled.append(_kernels.ready(param, grad, *own))

        # --- apply ---------------------------------------------------------------------------
        if not complete:
            self._add_zero_state(params)
            states = [getattr(self, name) for name in self._state_names]
        rule, scalars = self._next_step()
        self._commit_step()
        kernel = _KERNEL_FOR_RULE[rule]
        run: list[Any] = []
        for key, grad, fast in zip(keys, grad_list, compiled, strict=True):
            if fast:
                run.append(key)
                continue
            if run:
                _run_kernel(kernel, params, grads, states, run, scalars)
                run = []
            rule(params, key, grad, *states, *scalars)
        if run:
            _run_kernel(kernel, params, grads, states, run, scalars)

    @staticmethod
    def _zeros(param: Any) -> Any:
        if isinstance(param, np.ndarray):
            return np.zeros(param.shape, param.dtype)   # C-contiguous whatever param's layout
        return np.zeros_like(param)                      # a scalar param, as the book does
