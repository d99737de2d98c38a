"""What every optimizer shares, compiled or not: the machinery that reads a rule's declaration.

A rule is declared once (fastopt/_rules.py), as a class of class attributes and two methods:

- ``_hyperparameters``: its float hyperparameters and their range checks (lr first), each a
  number or a schedule; ``weight_decay`` is added to every rule's;
- ``_options``: its boolean options;
- ``_settings``: its options that are neither floats nor bools (Muon's ``ns_steps``, an int;
  ``ns_coefficients``, a tuple of three floats; ``adjust_lr_fn``, a string or None), each
  with its check, which returns the value in its one form (``fastopt/_validation.py``); a
  checkpoint holds them as plain data in its ``settings`` field;
- ``_param_ndim``: the number of dims every param must have (Muon's 2), None for any; a
  param of another shape is refused, its message pointing to ``fastopt.Partition``;
- ``_states``, or a ``state_names`` property where options change them: its state arrays,
  each of its param's shape unless ``_state_shapes`` says otherwise;
- ``_state_shapes`` and ``_param_shape``: for state arrays of other shapes (Adafactor's row
  and column moments), the shape of each such state as a function of its param's shape, and
  the param shape that one key's state arrays imply (a checkpoint's, before any update);
  state allocation, the update's checks of existing state, ``state_dict`` and
  ``load_state_dict`` all read them;
- ``_rule_state_names()``: the state in the three slots of the rule's loop, in its order;
- ``_scalar_state``: float state beside the arrays (a running product), with its initial
  value and its check;
- ``_decoupled``: the rule applies weight decay itself (its ``decoupled_decay`` scalar);
- ``_reduced`` and ``_per_param``: for a rule with a second pass (LAMB, LARS, Muon), the
  arrays whose sums of squares each param's second pass needs (the param, the grad as the
  loops read it, a state or a workspace array), and its scalars from them and the param's
  shape;
- ``_workspace``: per-param scratch arrays (Muon's Newton-Schulz matrices), each with its
  shape as a function of the param's: made with the state, at a param's first update, and
  reused by every update after (no allocation per step), but not state: not in
  ``state_dict``, checkpoints, copies or pickles (a copy makes its own at its next update).
  A slot of the rule's loop may name one (``_rule_state_names``), as may ``_reduced``; a
  ``Step.transform`` (a NumPy function of ``fastopt.reference`` run on each param's
  workspace between its reduction and its second pass) computes in them;
- ``__init__``: its constructor, the names and defaults users see;
- ``_next_step(values)``: from the step's hyperparameter values, a ``Step``: the NumPy rule
  and the compiled loop it runs, their scalars by name, the attributes the step sets, and
  how a call plan restates the scalars that depend on the step count.

``OptimizerCore`` reads that declaration: it checks hyperparameters, creates the state, asks
the weight-decay filter, computes the clip factor, keeps the lock, and writes and reads
checkpoints (fastopt/_state.py). How the update runs is its subclasses': NumPy's
(``fastopt.reference.ReferenceOptimizer``) or the compiled loops' (``fastopt._base.Optimizer``).
"""
from __future__ import annotations

import inspect
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeAlias

import numpy as np

from . import _state, _validation
from ._validation import Check

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


class Step(NamedTuple):
    """One step of a rule, as its ``_next_step`` computes it (nothing is changed by that)."""

    #: The NumPy rule, ``fastopt.reference.<rule>_rule``, by its name without ``_rule``.
    rule: str
    #: The scalars the rule and its loop take after the state, by name (the ``Step`` fields
    #: of fastopt/_kernels.pyx).
    scalars: dict[str, Any]
    #: The attributes the step sets when it is taken: ``iter``, and any scalar state.
    after: dict[str, Any]
    #: The compiled loop (``fastopt._kernels.loops()``).
    loop: str
    #: How a call plan computes the scalars that depend on the step count
    #: (``_kernels.CallPlan``'s forms), or None: every update takes the checked path.
    form: str | None = "constant"
    #: A second pass over every param, after a reduction of each (the sums of squares of the
    #: arrays the rule's ``_reduced`` names): its NumPy rule (``<second>_rule``) and compiled
    #: loop, which take the scalars ``_per_param`` computes from those sums. It runs once
    #: every param's first pass is done and the step is counted (``after`` is set). None: one
    #: pass. A rule whose every statement follows its reductions (LARS: norms of the param
    #: and grad as they come) has the first pass ``"none"``, which writes nothing (its
    #: compiled call still checks, all or none, that the loops take every param).
    second: str | None = None
    #: A per-param transform between a param's reduction and its second pass:
    #: ``(name, arguments)``, the NumPy function ``fastopt.reference.<name>_transform`` and
    #: the step's arguments for it; it takes the param's workspace arrays (``_workspace``'s
    #: order), the sums of squares ``_reduced`` names (``sums``) and those arguments, and
    #: writes the workspace in place. Compiled updates and ``fastopt.reference`` run the same
    #: function (matrix products through NumPy's BLAS, into the workspace). None: none.
    transform: tuple[str, dict[str, Any]] | None = None


def clip_coefficient(norm: float, max_norm: float) -> float | None:
    """torch's clip factor ``max_norm/(norm + 1e-6)`` when ``norm`` exceeds ``max_norm`` (or
    is nan), else None (no clipping)."""
    if norm <= max_norm:
        return None
    return max_norm / (norm + 1e-6)


class OptimizerCore:
    """The hyperparameters, state, decay decisions, clipping, lock and checkpoints of an
    optimizer, read from its rule's declaration (see this module's docstring)."""

    # The workspace arrays (``_workspace``) by name, each a dict by key or a list by
    # position as the state; None before the first update. A slot, outside the ``__dict__``
    # that checkpoints, copies and pickles carry: scratch, not state. (Every other attribute
    # is in the ``__dict__``, and an optimizer can be weakly referenced: ``_LOCKED``.)
    __slots__ = ("__dict__", "__weakref__", "_workspace_arrays")
    _workspace_arrays: dict[str, Any] | None

    _hyperparameters: dict[str, Check] = {"lr": _validation.check_learning_rate}
    _checks: dict[str, Check] = {}   # _hyperparameters and weight_decay (__init_subclass__)
    _options: tuple[str, ...] = ()
    _settings: dict[str, _validation.SettingCheck] = {}
    _param_ndim: int | None = None
    # per-param scratch arrays: name -> its shape from the param's shape
    _workspace: dict[str, Callable[[tuple[int, ...]], tuple[int, ...]]] = {}
    _states: tuple[str, ...] = ()
    _scalar_state: dict[str, tuple[float, Check]] = {}
    # state arrays not of their param's shape: name -> its shape from the param's shape
    _state_shapes: dict[str, Callable[[tuple[int, ...]], tuple[int, ...]]] = {}
    # The arrays whose sums of squares a second pass needs: "param", "grad" (as the loops read
    # it: scaled by the clip factor; a rule that reduces it applies its weight decay itself,
    # ``_decoupled``), a state name or a workspace name.
    _reduced: tuple[str, ...] = ()
    _decoupled = False
    lr: Hyper
    weight_decay: Hyper
    weight_decay_filter: DecayFilter | None
    max_grad_norm: float | None
    iter: int
    _lock: threading.Lock

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._checks = {**cls._hyperparameters, "weight_decay": _validation.check_nonnegative}

    def _setup(self, weight_decay: Hyper, weight_decay_filter: DecayFilter | None,
               max_grad_norm: float | None) -> None:
        """Set what every optimizer has, then check every hyperparameter."""
        self.weight_decay = weight_decay
        self.weight_decay_filter = weight_decay_filter
        self.max_grad_norm = max_grad_norm
        self.iter = 0
        self._workspace_arrays = None
        for name, (initial, _) in self._scalar_state.items():
            setattr(self, name, initial)
        self._decays: State = None
        for name in self.state_names:
            setattr(self, name, None)
        _new_lock(self)
        self.check_hyperparameters()

    @property
    def state_names(self) -> tuple[str, ...]:
        """The state attributes this optimizer keeps, with its options."""
        return self._states

    def _rule_state_names(self) -> list[str | None]:
        """The names of the state attributes the rule takes, in its order (None for a slot
        its options do not use)."""
        return list(self.state_names)

    def _rule_states(self) -> list[Any]:
        """The state (or workspace) containers the rule takes, in its order (None for one not
        kept, or not made yet)."""
        return [None if name is None else self._container(name)
                for name in self._rule_state_names()]

    def _container(self, name: str) -> Any:
        """State ``name``'s container, or workspace ``name``'s (None before it is made)."""
        if name in self._workspace:
            arrays = self._workspace_arrays
            return None if arrays is None else arrays.get(name)
        return getattr(self, name)

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
            number = _validation.to_float(name, value, where)
            check(name, number, where)
            values[name] = number
        return values

    def _all_hyperparameters(self) -> dict[str, Check]:
        """Every float hyperparameter and its check (built once per class; not to be
        modified)."""
        return self._checks

    def check_hyperparameters(self) -> None:
        """Raise TypeError or ValueError if a hyperparameter or option is not usable."""
        self._checked_values()

    def _checked_values(self) -> dict[str, float]:
        """Check the options and settings, then return ``hyperparameter_values()``."""
        for name in self._options:
            _validation.check_option(name, getattr(self, name))
        for name, check in self._settings.items():
            check(name, getattr(self, name))
        _validation.check_decay_filter(self.weight_decay_filter)
        _validation.check_max_grad_norm(self.max_grad_norm)
        return self.hyperparameter_values()

    def _next_step(self, values: dict[str, float]) -> Step:
        raise NotImplementedError

    def _per_param(self, values: dict[str, float], sums: tuple[float, ...],
                   decays: bool, shape: tuple[int, ...]) -> dict[str, float]:
        """The second pass's scalars for one param, from the step's hyperparameter values and
        the sums of squares of the arrays ``_reduced`` names (``"param"``, ``"grad"``, a
        state or a workspace name), each a float64 sum in fastopt.reference's fixed blocking;
        ``decays``: whether this param decays; ``shape``: the param's. The step is counted
        already: ``iter`` is its t."""
        raise NotImplementedError

    @classmethod
    def _elementwise(cls) -> bool:
        """Whether each element's update reads only that element of the param, its grad and
        its state, beside the step's scalars: no per-param reduction, no state of other
        shapes, no per-param workspace and no required number of dims.
        fastopt.distributed.ShardedOptimizer splits such a rule by elements, and any other by
        whole params (a shard of a param's elements has no whole norm, row, column or
        matrix)."""
        return not (cls._reduced or cls._state_shapes or cls._workspace
                    or cls._param_ndim is not None)

    def _reads_sums(self, values: dict[str, float], decays: bool) -> bool:
        """Whether ``_per_param`` reads the sums of squares of ``_reduced`` for a param this
        step (``decays``: whether weight decay applies to it); when it does not, they are not
        computed and it gets ``()`` (LARS without decay or ``always_adapt``: trust ratio 1)."""
        return True

    def _reductions(self, key: Any, param: Any, grad: Any,
                    grad_scale: float | None) -> list[tuple[Any, float | None]]:
        """The arrays whose sums of squares ``_per_param`` takes, for the param of ``key``,
        each with the factor it is multiplied by (in its dtype) before it is squared: the clip
        factor for the grad, so that its sum is that of the grad the loops read; else None."""
        return [(grad, grad_scale) if name == "grad"
                else (param if name == "param" else self._container(name)[key], None)
                for name in self._reduced]

    def _workspace_of(self, key: Any) -> list[Any]:
        """The workspace arrays of the param of ``key``, in ``_workspace``'s order."""
        return [self._container(name)[key] for name in self._workspace]

    def _check_param_shape(self, key: Any, param: Any) -> None:
        """Raise ValueError if the rule does not take a param of this shape (``_param_ndim``:
        Muon's matrices), naming the key and its shape and pointing to ``fastopt.Partition``."""
        if self._param_ndim is not None:
            _validation.check_param_ndim(type(self).__name__, key, np.shape(param),
                                         self._param_ndim)

    def _coupled_decay(self, values: dict[str, float]) -> float:
        """The weight decay added to the grads (0 for decoupled rules)."""
        return 0.0 if self._decoupled else values["weight_decay"]

    def _scalars_without_decay(self, scalars: dict[str, Any]) -> dict[str, Any]:
        """The step's scalars for a param that does not decay."""
        if self._decoupled and "decoupled_decay" in scalars:
            return {**scalars, "decoupled_decay": 0.0}
        return scalars

    # --- state ----------------------------------------------------------------------------

    @staticmethod
    def _zeros(param: Any) -> Any:
        """A param's initial state: the book's ``np.zeros_like``."""
        return np.zeros_like(param)

    def _new_state(self, name: str, param: Any) -> Any:
        """Zero state ``name`` for ``param``: of its shape, or of the shape ``_state_shapes``
        gives; always of its dtype."""
        shape_of = self._state_shapes.get(name)
        if shape_of is None:
            return self._zeros(param)
        return np.zeros(shape_of(np.shape(param)), np.asarray(param).dtype)

    def _state_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of state ``name`` for a param of ``shape``."""
        shape_of = self._state_shapes.get(name)
        return shape if shape_of is None else tuple(shape_of(shape))

    def _param_shape(self, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...] | None:
        """The param shape that one key's state arrays (``shapes``, by state name) imply, or
        None if they fit no param. Without ``_state_shapes``: the shape they all have."""
        for name, shape in shapes.items():
            if name not in self._state_shapes:
                return shape
        return None

    def _new_workspace(self, name: str, param: Any) -> Any:
        """Workspace array ``name`` for ``param``: of the shape ``_workspace`` gives, of its
        dtype, C-contiguous."""
        return np.zeros(self._workspace[name](np.shape(param)), np.asarray(param).dtype)

    def _add_zero_state(self, params: Params) -> None:
        """Zero state, and the workspace, for every param that has none: all of them on the
        first call."""
        by_key = isinstance(params, Mapping)
        if self._workspace:
            arrays = self._workspace_arrays
            if arrays is None or any(isinstance(container, dict) != by_key
                                     for container in arrays.values()):
                arrays = self._workspace_arrays = {name: {} if by_key else []
                                                   for name in self._workspace}
            for name, container in arrays.items():
                if isinstance(params, Mapping):
                    for key, val in params.items():
                        if key not in container:
                            container[key] = self._new_workspace(name, val)
                else:
                    for val in params[len(container):]:
                        container.append(self._new_workspace(name, val))
        for name in self.state_names:
            state = getattr(self, name)
            if state is None:
                state = {} if by_key else []
                setattr(self, name, state)
            if isinstance(params, Mapping) and isinstance(state, dict):
                for key, val in params.items():
                    if key not in state:
                        state[key] = self._new_state(name, val)
            elif not by_key and isinstance(state, list):
                for val in params[len(state):]:
                    state.append(self._new_state(name, val))
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
                    decays[key] = _validation.decision(chooser, key, val)
        else:
            assert isinstance(decays, list)
            for position in range(len(decays), len(params)):
                decays.append(_validation.decision(chooser, position, params[position]))
        return decays

    # --- the update -----------------------------------------------------------------------

    def update(self, params: Params, grads: Grads) -> None:
        """Update ``params`` in place from ``grads``."""
        raise NotImplementedError

    # The global norm of all grads: NumPy's (fastopt.reference) or the compiled one (the
    # same bits), set by the subclasses.
    _global_norm: Callable[[list[Any]], float]

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
        self._workspace_arrays = None   # scratch: made anew at the next update
        _new_lock(self)

    # --- checkpoints: fastopt/_state.py --------------------------------------------------

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
        return _state.state_dict(self)

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
        _state.load_state_dict(self, state)


# Every optimizer that has a lock, by id (a weak reference: the registry keeps none alive, and
# needs no hash of the optimizer, which a subclass may make unhashable).
_LOCKED: weakref.WeakValueDictionary[int, OptimizerCore] = weakref.WeakValueDictionary()


def _new_lock(optimizer: OptimizerCore) -> None:
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
