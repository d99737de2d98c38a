"""Shared machinery of fastopt's optimizers: input checks, state, and dispatch to the kernels.

``Optimizer.update`` first offers the call to the optimizer's plan (``_kernels.CallPlan``,
made by a checked update from one snapshot of the attributes): when every hyperparameter and
option is still the object that was checked (numbers, not schedules) and every param is an
array the loops take with its state already there, the whole update (the lock, the step's
scalars, the loops, the step count) is one compiled call. Otherwise it changes nothing and
the checked update runs: under the optimizer's lock (concurrent calls on one optimizer run
one after the other) it notes what the attributes hold if something was assigned since the
plan, or plans and runs the plan if they have held since the previous checked update; else it
evaluates and checks the hyperparameters (fastopt/_core.py's machinery: schedules, Python
floats), computes the step's scalars (the rule's declaration, fastopt/_rules.py), and first
tries the common case in one kernel call. The kernel entry checks every param before it
writes anything and declines (returning False, nothing changed) otherwise. Then the checked
path runs in two phases, so that a rejected call changes nothing:

1. *Check*: every key's param, grad and existing state is validated, each grad read exactly
   once; nothing is written.
2. *Apply*: zero state is created for new keys, the step is counted, and the keys are
   updated in the book's order. Runs of consecutive keys that the compiled loops take
   (``_kernels.ready``) go to the kernel in one call; any other key goes through the same
   pure-NumPy rule as ``fastopt.reference``. An array param is only ever updated in place;
   only a scalar param's new value is stored back.

The kernel call and the checked path run with SIGINT held in the main thread
(``_InterruptHeld``): a Ctrl-C meanwhile raises KeyboardInterrupt just after the update, which
is whole. An exception nothing holds that stops the writes part way carries a note saying
what was done.
"""
from __future__ import annotations

import importlib
import signal
import threading
import warnings
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, NamedTuple

import numpy as np

from . import _settings, reference
from ._core import DecayFilter, Grads, Hyper, OptimizerCore, Params, Step
from ._simd import kernels as _kernels
from ._validation import describe as _describe
from ._validation import is_real_scalar as _is_real_scalar
from .clipping import global_norm

# Every compiled update goes through this one entry (a module global, so that a test can wrap
# it): the rule's loop by name, the arrays, the grad transform, and the step's scalars by name.
_run_loop: Callable[..., bool] = _kernels.run


def _sum_of_squares(array: Any, scale: float | None = None) -> float:
    """The blocked float64 sum of squares of ``array`` (times ``scale`` first, in its dtype;
    fastopt.reference's definition), compiled where the array allows."""
    total = _kernels.sum_of_squares(array, scale)
    return reference.sum_of_squares(array, scale) if total is None else total

SLOTS = 3   # state slots of every compiled loop

# What a CallPlan does in place of these methods; a class that defines any of them itself
# (outside fastopt) always takes the checked path.
_PLANNED_METHODS = ("_update_compiled", "_update_kernel", "_checked_values",
                    "hyperparameter_values", "_all_hyperparameters", "_next_step",
                    "_coupled_decay", "_rule_states", "_rule_state_names", "state_names",
                    "_uses_momentum", "_used_states", "_scalars_without_decay")

# Hyperparameter values a plan may hold: immutable numbers, so that the same object is the
# same value (a user's subclass of float could compute its value anew each time).
_NUMBERS = frozenset({float, int, *(np.dtype(code).type for code in
                                    np.typecodes["Float"] + np.typecodes["AllInteger"])})


class SlowPathWarning(UserWarning):
    """A param was updated by NumPy's path rather than the compiled loops (opt-in, see
    ``fastopt.set_slow_path_warning``)."""


def _check_param(key: Any, param: Any, grad: Any, fixed: str | None) -> tuple[int, ...]:
    """Raise if ``param`` and ``grad`` are not a pair fastopt can update under ``key``;
    ``fixed`` names the container if it cannot be written (a tuple, a read-only mapping).
    An ``np.matrix`` param or grad is refused: its ``*`` is a matrix product.

    Returns the param's shape, ``()`` for a scalar param.
    """
    if isinstance(param, np.ndarray):
        # np.matrix is refused rather than viewed as an ndarray: the book's statements, which
        # fastopt.reference runs, compute g*g as a matrix product for it, and fastopt's numbers
        # are the reference's; np.asarray is a one-line fix over the same memory.
        for role, array in (("param", param), ("grad", grad)):
            if isinstance(array, np.matrix):
                raise TypeError(
                    f"{role} {key!r} is a numpy.matrix, whose * is a matrix product: the "
                    f"update's elementwise statements (g*g) would compute something else; "
                    f"pass np.asarray({role}), a plain ndarray of the same memory")
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
        try:
            float(grad)
        except OverflowError:
            raise ValueError(f"grad {key!r} is an integer too large for a float; a scalar "
                             f"grad must be a float64 value") from None
        if fixed is not None:
            raise TypeError(f"param {key!r} is {_describe(param)} in a {fixed}, which cannot "
                            f"be written; a scalar param's new value must be stored back, so "
                            f"pass a list or dict")
        return ()
    raise TypeError(f"param {key!r} is {_describe(param)}; expected a floating-point "
                    f"ndarray, or a float scalar like the book's params['x'] = -7.0")


def _slow_reason(param: Any, grad: Any, states: list[tuple[str, Any]]) -> str:
    """Why the compiled loops do not take this param, for SlowPathWarning: the first of the
    conditions ``_kernels.ready`` checks that fails. ``states`` holds the param's existing
    state arrays by name."""
    if not isinstance(param, np.ndarray):
        return "it is a scalar"
    if type(param) is not np.ndarray:
        return (f"it is a {_class_name(param)}, a subclass of ndarray (the loops take plain "
                f"ndarrays; param.view(np.ndarray) is one over the same memory)")
    if param.dtype not in (np.float32, np.float64):
        return f"its dtype is {param.dtype} (the loops take float32 and float64)"
    if not param.dtype.isnative:
        return "it is not in native byte order"
    if not param.flags.c_contiguous:
        return "it is not C-contiguous (a transposed view or a slice)"
    if not param.flags.aligned:
        return "it is not aligned"
    if type(grad) is not np.ndarray:
        return (f"its grad is a {_class_name(grad)}, a subclass of ndarray (the loops take "
                f"plain ndarrays; grad.view(np.ndarray) is one over the same memory)")
    if grad.dtype != param.dtype:
        return f"its grad has dtype {grad.dtype}, not the param's {param.dtype}"
    if not (grad.flags.c_contiguous and grad.flags.aligned and grad.dtype.isnative):
        return "its grad is not a C-contiguous, aligned, native-order array"
    if np.may_share_memory(param, grad):
        return "it shares memory with its grad"
    for index, (name, state) in enumerate(states):
        if state is None:
            continue
        if type(state) is not np.ndarray:
            return f"its state {name} is a {_class_name(state)}, not a plain ndarray"
        if not (state.flags.c_contiguous and state.flags.aligned and state.flags.writeable
                and state.dtype.isnative):
            return (f"its state {name} is not a C-contiguous, aligned, writeable, "
                    f"native-order array")
        for other, array in (("the param", param), ("its grad", grad),
                             *((f"its state {before}", earlier)
                               for before, earlier in states[:index] if earlier is not None)):
            if np.may_share_memory(state, array):
                return f"its state {name} shares memory with {other}"
    return "the compiled loops do not take it"


def _class_name(value: Any) -> str:
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


# The signal module's own functions without its wrappers, which convert every handler to and
# from an enum (most of the hold's cost: about 20 us a checked update with the wrappers, under
# 2 with these). CPython's signal module is a thin layer over _signal; elsewhere, the layer.
_getsignal: Callable[..., Any] = signal.getsignal
_setsignal: Callable[..., Any] = signal.signal
try:
    _signal = importlib.import_module("_signal")
    _getsignal, _setsignal = _signal.getsignal, _signal.signal
except (ImportError, AttributeError):
    pass
_SIGINT = int(signal.SIGINT)


class _InterruptHeld:
    """Holds SIGINT (Ctrl-C) for the span of an update's writes, then delivers it.

    An update that writes in several Python steps (NumPy's path: a few statements per param and
    state array; a kernel call followed by setting ``iter``) would be left partly done by a
    KeyboardInterrupt raised between two of them. In the main thread, while SIGINT's handler is
    a Python function (by default ``signal.default_int_handler``, which raises
    KeyboardInterrupt), this swaps in a handler that only notes the signal, and on leaving puts
    the handler back and calls it if the signal came: the update is whole and the interrupt is
    raised just after it. Other threads run no signal handlers, so nothing needs holding there;
    a handler that is not a Python function (``SIG_IGN``, ``SIG_DFL``) is left alone.
    """

    __slots__ = ("came", "frame", "previous")

    def __enter__(self) -> None:
        self.previous: Any = None
        self.came = False
        if threading.get_ident() != threading.main_thread().ident:
            return
        handler = _getsignal(_SIGINT)
        if not callable(handler):
            return
        try:
            _setsignal(_SIGINT, self._note)
        except ValueError:   # the main thread of another interpreter than the main one
            return
        self.previous = handler

    def _note(self, signum: int, frame: Any) -> None:
        self.came = True
        self.frame = frame

    def __exit__(self, *exception: object) -> None:
        handler = self.previous
        if handler is None:
            return
        _setsignal(_SIGINT, handler)
        if self.came:
            handler(signal.SIGINT, self.frame)


def _partial_note(optimizer: Any, keys: list[Any], finished: int) -> str:
    """What an exception that stopped an update's writes left behind, for its notes."""
    if finished < len(keys):
        where = (f"the first {finished} of its {len(keys)} params were updated (in order), "
                 f"{keys[finished]!r} partly or not at all, the others not")
    else:
        where = f"all {len(keys)} params were updated"
    return (f"fastopt: this {type(optimizer).__name__}.update was stopped part way: {where}, "
            f"and iter is now {optimizer.iter}: continue from a checkpoint taken "
            f"before")


class Checked(NamedTuple):
    """What the check phase of a checked update found (``Optimizer._check_inputs``)."""

    keys: Any                  # the params' keys, or range(len(params))
    params: list[Any]          # in that order
    grads: list[Any]           # each read once, in that order
    compiled: list[bool]       # whether the compiled loops take each (``_kernels.ready``)
    decays: Any                # the weight-decay filter's answers (None: every param decays)


def _pad(states: list[Any]) -> list[Any]:
    return states + [None] * (SLOTS - len(states))


def container_keys(params: Params, grads: Grads) -> list[Any]:
    """``params``' keys (or positions) after the checks of the two containers every update
    makes: a mapping with a mapping, a list or tuple with one of the same length."""
    if isinstance(params, Mapping):
        if not isinstance(grads, Mapping):
            raise TypeError(f"params is a {type(params).__name__}, so grads must be a "
                            f"mapping with the same keys; got {type(grads).__name__}")
        return list(params)
    if isinstance(params, (list, tuple)):
        if not isinstance(grads, (list, tuple)):
            raise TypeError(f"params is a {type(params).__name__}, so grads must be a list "
                            f"or tuple of the same length; got {type(grads).__name__}")
        if len(grads) != len(params):
            raise ValueError(f"grads has {len(grads)} entries but params has "
                             f"{len(params)}; expected one grad per param")
        return list(range(len(params)))
    raise TypeError(f"params must be a dict of arrays (or a list or tuple of arrays); "
                    f"got {type(params).__name__}")


class Optimizer(OptimizerCore):
    """Base of fastopt's optimizers: compiled updates of the rules fastopt/_rules.py declares.

    Each optimizer class joins a rule's declaration (constructor, hyperparameter checks,
    state, the step's scalars) to this class's ``update``.
    """

    # The optimizer's plan (``_plan``, ``_snapshot``): a cache, not state, so a slot, outside
    # the ``__dict__`` that pickles, copies and checkpoints carry.
    __slots__ = ("_call_plan",)
    _call_plan: _kernels.CallPlan | None

    # Set for each class when it is made: whether a plan may stand in for its checked
    # updates, and the names its classes define (a plan reads no attribute of these names).
    _plannable_class = False
    _class_attributes: frozenset[str] = frozenset()
    _plan_names: tuple[str, ...] = ()   # the attributes a plan checks are the same objects

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._plannable_class = _plannable(cls)
        cls._class_attributes = frozenset(name for klass in cls.__mro__ for name in vars(klass))
        cls._plan_names = (*cls._checks, *cls._options, *cls._settings, "weight_decay_filter",
                           "max_grad_norm")

    def _setup(self, weight_decay: Hyper, weight_decay_filter: DecayFilter | None,
               max_grad_norm: float | None) -> None:
        self._call_plan = None
        super()._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._call_plan = None   # copies and unpickled optimizers plan anew
        super().__setstate__(state)

    def update(self, params: Params, grads: Grads) -> None:
        """Update ``params`` in place from ``grads``; return None.

        Parameters
        ----------
        params : dict or list of ndarray
            The arrays to update, in place (a float scalar param gets its new value stored
            back into the dict or list). A dict keeps the state under the same keys, a list
            or tuple by position.
        grads : dict or list of ndarray
            A grad for every param: same keys (extra keys are ignored) or same length; each
            grad has its param's shape. Grads are never written.

        Raises
        ------
        TypeError, ValueError, KeyError
            When a hyperparameter, param or grad cannot be used; the message names the key.
            A rejected call changes no param, no state and no step count.
        """
        if self._update_compiled(params, grads):
            return
        with self._lock:
            plan = self._call_plan
            if plan is None or not plan.holds(self):
                # Something was assigned (or this is the first update): note what the
                # attributes hold, and plan if they still hold it at the next checked update
                # (so that an attribute assigned before every update costs no plan each time).
                self._call_plan = self._snapshot()
            elif not plan.planned:
                plan = self._call_plan = self._plan()
                if plan is not None and plan.run(self, params, grads):
                    return
            values = self._checked_values()
            step = self._next_step(values)
            with _InterruptHeld():   # a Ctrl-C meanwhile is raised after the update, whole
                if not self._update_kernel(params, grads, values, step):
                    self._update_checked(params, grads, values, step)

    _global_norm = staticmethod(global_norm)   # compiled; the reference's bits

    def _update_compiled(self, *inputs: Any) -> bool:
        """``(params, grads)``: the whole update in one compiled call, if the plan still holds
        and every param can take it; else False, nothing changed. (The plan's call is this
        method's one call with ``*args``: tests/test_reliability.py finds the compiled call
        in progress by that instruction.)"""
        plan = self._call_plan
        return plan is not None and plan(self, *inputs)

    def _snapshot(self) -> _kernels.CallPlan | None:
        """A plan that never runs: it notes which objects the attributes a plan checks hold
        now, so that the next checked update can tell whether they have lasted."""
        cls = type(self)
        return _kernels.note(self, cls._plan_names) if cls._plannable_class else None

    def _plan(self) -> _kernels.CallPlan | None:
        """The plan for this update and the ones to come (``_kernels.CallPlan``), from one
        snapshot of this optimizer's attributes. A plan without a kernel where the checked
        path must run every update while nothing changes (a schedule, gradient clipping, a
        rule whose steps a plan does not restate); None for a value the checks refuse or a
        class that changes what an update does."""
        cls = type(self)
        if not cls._plannable_class:
            return None
        own = vars(self).copy()   # one instant: another thread may assign meanwhile
        hyperparameters = self._all_hyperparameters()
        names = cls._plan_names
        objects = tuple(map(own.get, names))

        def checked_only() -> _kernels.CallPlan:
            return _kernels.CallPlan(cls, names, objects, (None, None, None), False, None, {},
                                     0.0, "constant", 0.0, 0.0, 0.0)
        if own.get("max_grad_norm") is not None or any(
                type(own.get(name)) not in _NUMBERS for name in hyperparameters):
            return checked_only()
        # Everything below comes from the snapshot, so the values are those of its objects.
        frozen = cls.__new__(cls)
        frozen.__dict__ = own
        try:
            values = frozen._checked_values()
            step = frozen._next_step(values)
        except (AttributeError, TypeError, ValueError):   # the checked update says what
            return None
        slots = tuple(_pad(frozen._rule_state_names()))
        read = {*names, *slots, "iter", "_decays", "_lock"} - {None}
        # The plan restates the step's scalars (``step.form``: how they follow from the step
        # count; None for a rule whose scalars it does not restate, or that carries state from
        # step to step) and runs the loop itself.
        if (step.form is None or set(step.after) != {"iter"} or cls._workspace
                # not if the compiled entry was replaced
                or _run_loop is not _kernels.run
                # a class attribute (a property, say) would shadow what __dict__ holds
                or not cls._class_attributes.isdisjoint(read)):
            return checked_only()
        return _kernels.CallPlan(
            cls, names, objects, slots, own["weight_decay_filter"] is not None,
            step.loop, step.scalars, frozen._coupled_decay(values), step.form,
            values["lr"], values.get("beta1", 0.0), values.get("beta2", 0.0))

    def _update_kernel(self, params: Params, grads: Grads, values: dict[str, float],
                       step: Step) -> bool:
        """Update in one kernel call if every param can take it; else change nothing."""
        kind = type(params)
        if (kind is not dict and kind is not list) or type(grads) is not kind:
            return False
        decays = self._decays
        if self.weight_decay_filter is None:
            decays = None
        elif type(decays) is not kind:   # the filter has not been asked yet
            return False
        # The rule's slots: every state container it keeps must exist (not on the first
        # update) and be of params' kind; None for a slot its options do not use.
        states: list[Any] = [None] * SLOTS
        for slot, name in enumerate(self._rule_state_names()):
            if name is not None:
                states[slot] = state = self._container(name)
                if type(state) is not kind:
                    return False
        if kind is list:
            count = len(params)
            if len(grads) != count or (decays is not None and len(decays) < count):
                return False
            for state in states:
                if state is not None and len(state) < count:
                    return False
            states = [state if state is None or len(state) == count else state[:count]
                      for state in states]
            if decays is not None and len(decays) != count:
                decays = decays[:count]
        grad_scale = None
        if self.max_grad_norm is not None:
            try:
                grad_scale = self._clip_factor([grads[key] for key in (
                    params if kind is dict else range(len(params)))])
            except (KeyError, IndexError, TypeError, ValueError):
                return False   # the checked path explains what is wrong
        try:
            done = _run_loop(step.loop, params, grads, *states, decays, grad_scale,
                             self._coupled_decay(values), step.scalars)
        except BaseException as error:
            # The entry raises only these, and before it writes; anything else came from a
            # signal handler (not SIGINT's, which update holds) as the loops returned.
            if not isinstance(error, (TypeError, ValueError, MemoryError)):
                error.add_note(f"fastopt: this {type(self).__name__}.update may have updated "
                               f"every param and its state without counting the step in "
                               f"iter ({self.iter}): continue from a checkpoint taken before")
            raise
        if not done:
            return False
        for name, value in step.after.items():
            setattr(self, name, value)
        if step.second is not None:
            keys = list(params) if kind is dict else list(range(len(params)))
            self._second_pass(step, values, grad_scale, decays, params,
                              [grads[key] for key in keys], states, keys)
        return True

    def _second_pass(self, step: Step, values: dict[str, float], grad_scale: float | None,
                     decays: Any, params: Any, read: list[Any], states: list[Any],
                     keys: list[Any]) -> None:
        """The second pass of a two-pass rule, param after param (``read``: their grads, as
        the first pass read them, before the clip factor ``grad_scale``): each param's sums
        of squares, its scalars, its transform (``Step.transform``, NumPy's, in its
        workspace), then the compiled loop (NumPy's rule for a param it declines)."""
        assert step.second is not None
        for key, grad in zip(keys, read, strict=True):
            param = params[key]
            decay = decays is None or bool(decays[key])
            sums = tuple(_sum_of_squares(array, scale) for array, scale in self._reductions(
                key, param, grad, grad_scale)) if self._reads_sums(values, decay) else ()
            scalars = self._per_param(values, sums, decay, np.shape(param))
            if step.transform is not None:
                reference.transform(self, step, key, sums)
            own = [None if state is None else [state[key]] for state in _pad(states)]
            if not _run_loop(step.second, [param], [grad], *own, None, grad_scale, 0.0,
                             scalars):
                reference.second_rule(self, step, scalars, grad_scale, params, states, key,
                                      grad)

    def _used_states(self) -> list[Any]:
        """The state containers this optimizer keeps (``state_names``), None for one not
        created yet (the first update)."""
        return [getattr(self, name) for name in self.state_names]

    def _update_checked(self, params: Params, grads: Grads, values: dict[str, float],
                        step: Step) -> None:
        """Validate every key, then update each by the kernel or by NumPy's rule."""
        checked = self._check_inputs(params, grads, step.loop)
        self._apply_checked(params, grads, checked, values, step,
                            self._clip_factor(checked.grads))

    def _check_inputs(self, params: Params, grads: Grads, loop: str | None) -> Checked:
        """The check phase of a checked update (of the step's compiled ``loop``): validate
        every key's param, grad and existing state (each grad read once) and ask the
        weight-decay filter about new keys; nothing is written. ``fastopt.Partition`` runs it
        for every group before any group's apply."""
        keys = container_keys(params, grads)
        by_name = isinstance(params, Mapping)
        writable = MutableMapping if by_name else list
        fixed = None if isinstance(params, writable) else type(params).__name__

        for name in self.state_names:
            state = getattr(self, name)
            if state is not None and isinstance(state, dict) != by_name:
                kept = "by key (a dict)" if isinstance(state, dict) else "by position (a list)"
                raise TypeError(f"state {name!r} is kept {kept} from earlier calls, but params "
                                f"is now a {type(params).__name__}; pass the same kind of "
                                f"container every call")

        used = list(zip(self.state_names, self._used_states(), strict=True))
        param_list = []
        grad_list = []
        compiled = []
        owns = []   # each key's existing state arrays, in state_names' order
        for key in keys:
            param = params[key]
            try:
                grad = grads[key]
            except (KeyError, IndexError):
                raise KeyError(f"grads has no entry for param {key!r}; expected a grad for "
                               f"every param") from None
            shape = _check_param(key, param, grad, fixed)
            self._check_param_shape(key, param)
            own = []
            for name, state in used:
                entry = None
                if state is not None:
                    entry = state.get(key) if by_name else (
                        state[key] if key < len(state) else None)
                if name in self._state_shapes:
                    expected = self._state_shape(name, shape)
                    if entry is not None and getattr(entry, "shape", None) != expected:
                        raise ValueError(
                            f"state {name}[{key!r}] has shape {np.shape(entry)} but a param "
                            f"of shape {shape} (as {key!r} is) keeps one of shape {expected}; "
                            f"a param's state belongs to the array first seen under its key "
                            f"(use a new optimizer for a new shape)")
                elif entry is not None and getattr(entry, "shape", None) != shape:
                    raise ValueError(
                        f"state {name}[{key!r}] has shape {np.shape(entry)} but param {key!r} "
                        f"has shape {shape}; a param's state belongs to the array first seen "
                        f"under its key (use a new optimizer for a new shape)")
                # (a scalar param's type may change as the book computes it: np.float32 to
                # np.float64 through Adam's lr_t; an array's never does)
                if (entry is not None and isinstance(param, np.ndarray)
                        and entry.dtype != param.dtype):
                    raise ValueError(
                        f"state {name}[{key!r}] has dtype {entry.dtype} but param {key!r} has "
                        f"dtype {param.dtype}; a param's state has its dtype (a checkpoint "
                        f"loaded for params of another dtype?)")
                own.append(entry)
            param_list.append(param)
            grad_list.append(grad)
            # (the loop by name: a rule with its own driver takes state of other shapes;
            # own is in state_names' order, which is then its slots')
            compiled.append(_kernels.ready(param, grad, *own, loop=loop))
            owns.append(own)
        decays = self._key_decays(params)
        if _settings.slow_path_warning():
            names = [name for name, _ in used]
            for key, param, grad, own, fast in zip(keys, param_list, grad_list, owns,
                                                   compiled, strict=True):
                if not fast:
                    reason = _slow_reason(param, grad, list(zip(names, own, strict=True)))
                    warnings.warn(f"param {key!r} is updated by NumPy's path, several times "
                                  f"slower than the compiled loops, because {reason}",
                                  SlowPathWarning, stacklevel=5)
        return Checked(keys, param_list, grad_list, compiled, decays)

    def _apply_checked(self, params: Params, grads: Grads, checked: Checked,
                       values: dict[str, float], step: Step, grad_scale: float | None) -> None:
        """The apply phase of a checked update, after ``_check_inputs``: zero state for new
        keys, the step counted, every key updated with the grads scaled by ``grad_scale``
        (the clip factor, None for none)."""
        keys, param_list, grad_list, compiled, decays = checked
        finished = 0   # keys updated, in order
        try:
            self._add_zero_state(params)
            self._decays = decays
            for name, value in step.after.items():
                setattr(self, name, value)
            states = self._rule_states()
            coupled = self._coupled_decay(values)
            for fast, group in _runs(compiled):
                run = [keys[index] for index in group]
                read = [grad_list[index] for index in group]
                done = fast and _run_loop(
                    step.loop, [param_list[index] for index in group], read,
                    *[None if state is None else [state[key] for key in run]
                      for state in _pad(states)],
                    None if decays is None else [decays[key] for key in run],
                    grad_scale, coupled, step.scalars)
                if not done:   # NumPy's path (also if another thread changed an array meanwhile)
                    reference.apply(self, step, values, grad_scale, decays, params, grads,
                                    states, run, read)
                finished += len(group)
            if step.second is not None:
                self._second_pass(step, values, grad_scale, decays, params, grad_list, states,
                                  list(keys))
        except BaseException as error:
            # Only an exception from a signal handler (not SIGINT's, which update holds) or
            # from NumPy (MemoryError; a floating-point warning made an error) gets here.
            error.add_note(_partial_note(self, list(keys), finished))
            raise

    @staticmethod
    def _zeros(param: Any) -> Any:
        if isinstance(param, np.ndarray):
            return aligned_zeros(param)   # C-contiguous whatever param's layout
        return np.zeros_like(param)       # a scalar param, as the book does


def _plannable(cls: type) -> bool:
    """Whether a CallPlan may stand in for ``cls``'s checked updates: it reads and sets
    attributes plainly and defines none of the methods a plan does instead."""
    if any(name in vars(klass) for klass in cls.__mro__[:-1]
           for name in ("__setattr__", "__getattribute__", "__delattr__")):
        return False
    for name in _PLANNED_METHODS:
        owner = next((klass for klass in cls.__mro__ if name in vars(klass)), None)
        if owner is not None and not owner.__module__.startswith("fastopt."):
            return False
    return True


def aligned_zeros(param: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Zeros of ``param``'s shape and dtype, C-contiguous, at the same address modulo 64 as
    ``param``: the loops then store whole cache lines of the param and its state alike (the
    loops peel a head up to the param's first 64-byte boundary)."""
    size = param.nbytes
    buffer = np.zeros(size + LINE, np.uint8)
    offset = (param.ctypes.data - buffer.ctypes.data) % LINE
    if offset % param.dtype.itemsize:   # a param not aligned to its itemsize: no gain
        offset = 0
    state: np.ndarray[Any, Any] = buffer[offset:offset + size].view(param.dtype)
    return state.reshape(param.shape)


LINE = 64   # bytes in a cache line (and in an AVX-512 register)


def _runs(flags: list[bool]) -> list[tuple[bool, list[int]]]:
    """Consecutive positions with the same flag: [(flag, [positions]), ...]."""
    runs: list[tuple[bool, list[int]]] = []
    for index, flag in enumerate(flags):
        if runs and runs[-1][0] == flag and flag:
            runs[-1][1].append(index)
        else:
            runs.append((flag, [index]))
    return runs
