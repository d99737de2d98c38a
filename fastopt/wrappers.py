"""Optimizers made of optimizers: ``Partition`` (param groups) and ``Lookahead``.

Both are thin Python layers: the optimizers they hold do the compiled work (and Lookahead's
sync is one compiled loop, ``lookahead`` in fastopt/_kernels.pyx, whose NumPy definition is
``fastopt.reference.lookahead_rule``). Each keeps the drop-in contract of one optimizer:
``update(params, grads)`` on a dict or list, in place; a rejected call changes nothing (no
param, no state, no step count, in any group); ``iter`` counts updates; one ``state_dict``
and ``load_state_dict`` (a wrapper's checkpoint, fastopt/checkpoint.py, holding the wrapped
optimizers' own), ``fastopt.save`` and ``fastopt.load``; ``copy.deepcopy`` and ``pickle``.

Neither can be sharded by ``fastopt.distributed.ShardedOptimizer``, which refuses them by
name: its shards are pieces (flat, or whole params) of one optimizer's params, while a
Partition routes whole params by key and clips over all of them, and Lookahead keeps whole
slow copies. With MPI,
average the grads with ``GradientAverager`` and step the wrapper on every rank.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, TypeAlias

import numpy as np

from . import _state, reference
from ._base import Checked, Optimizer, _InterruptHeld, aligned_zeros, container_keys
from ._core import Grads, OptimizerCore, Params, State, Step, clip_coefficient
from ._simd import kernels as _kernels
from ._validation import check_max_grad_norm, describe, is_real_scalar, to_float
from .checkpoint import FORMAT, VERSION, _check_plain, _copy_array, _fail
from .clipping import global_norm

__all__ = ["Lookahead", "Partition"]

#: A group's selector: a callable of ``(key, param)`` returning True or False, or None (it
#: takes every key).
Selector: TypeAlias = Callable[[Any, Any], Any] | None

# Every compiled sync goes through this entry (a module global, so that a test can wrap it).
_run_loop: Callable[..., bool] = _kernels.run


def _class_record(obj: object) -> dict[str, str]:
    cls = type(obj)
    return {"module": cls.__module__, "qualname": cls.__qualname__}


def _check_class(obj: object, state: Mapping[str, Any]) -> None:
    """``state`` must be a checkpoint of ``obj``'s class, and of its kind (a wrapper's, with
    parts, or an optimizer's)."""
    saved = f"{state['class']['module']}.{state['class']['qualname']}"
    mine = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if saved != mine:
        raise ValueError(f"the checkpoint is of class {saved}, but this optimizer is a {mine}; "
                         f"load it into a {saved}")
    if ("parts" in state) != isinstance(obj, _Wrapper):
        raise _fail(f"it names class {saved}, but is not a checkpoint of its kind (a "
                    f"wrapper's checkpoint has parts, an optimizer's has none)")


def _fixed(params: Params) -> str | None:
    """The container's type name if a scalar param's new value cannot be stored in it."""
    if isinstance(params, Mapping):
        return None if isinstance(params, MutableMapping) else type(params).__name__
    return None if isinstance(params, list) else type(params).__name__


def _load_changes(optimizer: Any, state: Mapping[str, Any]
                  ) -> list[tuple[object, dict[str, Any]]]:
    """The attribute assignments that load checkpoint ``state`` (already checked by
    ``_check_plain``) into ``optimizer`` or a wrapper and what it wraps; nothing is set."""
    if isinstance(optimizer, (Partition, Lookahead)):
        return optimizer._load_changes(state)
    _check_class(optimizer, state)
    return [(optimizer, _state._plan(optimizer, state))]


@contextlib.contextmanager
def _holding(locks: list[threading.Lock]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield


class _Wrapper:
    """The lock, copies and pickles of a wrapper (as ``OptimizerCore``'s)."""

    _lock: threading.Lock
    iter: int

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_changes(self, state: Mapping[str, Any]) -> list[tuple[object, dict[str, Any]]]:
        raise NotImplementedError

    def _locks(self) -> list[threading.Lock]:
        """This wrapper's lock and those of everything it wraps, outermost first."""
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Check ``state`` (from ``state_dict()`` or ``fastopt.load``), all of it, the wrapped
        optimizers' parts included, then continue from it.

        Works before the first update. Selectors, schedules of your own and
        ``weight_decay_filter`` are not in a checkpoint: pass them to the constructors again
        before loading.

        Raises
        ------
        ValueError
            If ``state`` is of another class or version, malformed, or does not fit this
            wrapper or an optimizer it wraps; the message names what differs, and nothing
            changes anywhere.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict takes the dict that state_dict() or "
                            f"fastopt.load() returns; got {type(state).__name__}")
        with _holding(self._locks()):
            _check_plain(state)
            changes = self._load_changes(state)
            for target, assignments in changes:   # plain assignments: nothing here can fail
                for name, value in assignments.items():
                    setattr(target, name, value)


class Partition(_Wrapper):
    """Param groups: each param is updated by the first optimizer whose selector takes it.

    ``Partition([(selector, optimizer), ...])`` routes each key of ``update(params, grads)``
    to the first group whose ``selector(key, param)`` returns True (a selector of None takes
    every key), and updates each group's params with its optimizer, as optax's
    ``multi_transform`` and torch's param groups do. Per-group hyperparameters are two
    instances of one class; different rules per group are instances of different classes
    (Muon-style: ``Partition([(lambda k, p: p.ndim == 2, AdamW(lr=3e-4)), (None, Adam())])``).

    Parameters
    ----------
    groups : sequence of (selector, optimizer) pairs
        ``selector``: a callable of ``(key, param)`` returning True or False (a NumPy bool
        too), or None. ``optimizer``: one of fastopt's compiled optimizers, new or used (all
        of the same ``iter``), each in one group only, with ``max_grad_norm=None``.
    max_grad_norm : float, optional
        Clip by the global L2 norm of all the grads of every group together (in ``params``'
        key order, as ``fastopt.clip_grad_norm`` would): the factor
        ``max_grad_norm/(norm + 1e-6)`` is computed once per update and applied on the fly
        inside every group's compiled update; the caller's grads are left as they were. The
        result has the bits of one optimizer holding all the keys with that
        ``max_grad_norm``. A group's own ``max_grad_norm`` would clip over its own keys only,
        so it is refused (ValueError): set it here.

    Attributes
    ----------
    groups : tuple of (selector, optimizer)
        Change a group's hyperparameters on its optimizer (``partition.groups[0][1].lr``).
    optimizers : tuple of optimizers
        The groups' optimizers, in order.
    iter : int
        Updates so far: every group's optimizer steps at every update, its ``iter`` too (a
        group with no param that update steps on nothing, so that all groups share one step
        count for their bias corrections and schedules).
    routes : dict or list, or None
        The group of each key (or position) seen so far; None before the first update.

    Notes
    -----
    Routing happens once per key, the first time the key is seen, and is remembered (like
    ``weight_decay_filter``'s answers, and like torch's groups, whose params are fixed when
    the group is made): a selector is never asked about a key again, so a key never moves
    to another group, even if its selector would now answer otherwise. The routes are part
    of the checkpoint; the selectors are not (pass the same groups when you load).

    A key that no selector takes, a selector that raises or returns anything but True or
    False, and every error of the groups' optimizers (a bad param, grad or hyperparameter)
    are raised before anything is written: a rejected update changes no param and no state
    of any group, no route and no ``iter``. Errors name the key.

    With list params, each group's optimizer keeps its state by the params' positions in
    the whole list (a dict keyed by position), so its messages and checkpoints name the
    same positions as yours.

    Copies (``copy.deepcopy``) hold copies of the optimizers and the same selectors; pickling
    needs selectors that pickle (functions defined at module level, not lambdas).
    ``fastopt.distributed.ShardedOptimizer`` does not take a Partition (see
    ``fastopt.wrappers``).
    """

    def __init__(self, groups: Sequence[tuple[Selector, Optimizer]], *,
                 max_grad_norm: float | None = None) -> None:
        if isinstance(groups, (str, bytes, Mapping)) or not isinstance(groups, Sequence):
            raise TypeError(f"groups must be a list of (selector, optimizer) pairs; got "
                            f"{type(groups).__name__}")
        checked: list[tuple[Selector, Optimizer]] = []
        for index, group in enumerate(groups):
            if not isinstance(group, tuple) or len(group) != 2:
                raise TypeError(f"group {index} is {describe(group)}; each group is a "
                                f"(selector, optimizer) pair")
            selector, optimizer = group
            if selector is not None and not callable(selector):
                raise TypeError(f"group {index}'s selector is {describe(selector)}; expected "
                                f"a callable of (key, param) returning True or False, or None "
                                f"(every key)")
            if isinstance(optimizer, (Partition, Lookahead)):
                raise TypeError(f"group {index}'s optimizer is a {type(optimizer).__name__}; "
                                f"a group holds one of fastopt's optimizers (a Partition's "
                                f"groups are flat; wrap the whole Partition in Lookahead)")
            if not isinstance(optimizer, Optimizer):
                kind = type(optimizer)
                raise TypeError(f"group {index}'s optimizer is a {kind.__module__}."
                                f"{kind.__qualname__}; expected one of fastopt's compiled "
                                f"optimizers (fastopt.Adam(...), ...)")
            for other, (_, earlier) in enumerate(checked):
                if earlier is optimizer:
                    raise ValueError(f"groups {other} and {index} hold the same "
                                     f"{type(optimizer).__name__} instance; each group needs "
                                     f"its own optimizer (a second instance, with its own "
                                     f"state)")
            checked.append((selector, optimizer))
        if not checked:
            raise ValueError("a Partition needs at least one (selector, optimizer) group")
        counts = sorted({optimizer.iter for _, optimizer in checked})
        if len(counts) > 1:
            raise ValueError(f"the groups' optimizers have taken different numbers of steps "
                             f"(iter {counts}); a Partition has one step count: give it new "
                             f"optimizers, or ones of the same iter")
        self.groups = tuple(checked)
        self.max_grad_norm = max_grad_norm
        self.iter: int = counts[0]
        self.routes: State = None
        self._lock = threading.Lock()
        self._check_settings()

    @property
    def optimizers(self) -> tuple[Optimizer, ...]:
        """The groups' optimizers, in order."""
        return tuple(optimizer for _, optimizer in self.groups)

    def __repr__(self) -> str:
        groups = ", ".join(f"({getattr(selector, '__name__', selector)!s}, {optimizer!r})"
                           for selector, optimizer in self.groups)
        clip = "" if self.max_grad_norm is None else f", max_grad_norm={self.max_grad_norm!r}"
        return f"Partition([{groups}]{clip})"

    def _locks(self) -> list[threading.Lock]:
        return [self._lock, *(optimizer._lock for optimizer in self.optimizers)]

    def _check_settings(self) -> float | None:
        """``max_grad_norm`` as a float (or None), after the checks of the groups."""
        for index, optimizer in enumerate(self.optimizers):
            if optimizer.max_grad_norm is not None:
                raise ValueError(
                    f"group {index}'s {type(optimizer).__name__} has max_grad_norm="
                    f"{optimizer.max_grad_norm!r}, which would clip by the norm of its own "
                    f"grads only; a Partition clips by the norm of all groups' grads: set "
                    f"Partition(..., max_grad_norm=...) and leave the groups' at None")
        return check_max_grad_norm(self.max_grad_norm)

    # --- routing --------------------------------------------------------------------------

    def _choose(self, key: Any, param: Any) -> int:
        """The first group whose selector takes ``key``."""
        for index, (selector, _) in enumerate(self.groups):
            if selector is None:
                return index
            try:
                answer = selector(key, param)
            except Exception as error:
                error.add_note(f"fastopt: raised by the selector of Partition group {index}, "
                               f"asked about param {key!r}; nothing was changed")
                raise
            if not isinstance(answer, (bool, np.bool_)):
                raise TypeError(f"the selector of Partition group {index} returned "
                                f"{answer!r} ({type(answer).__name__}) for param {key!r}; a "
                                f"selector must return True or False")
            if answer:
                return index
        raise ValueError(f"param {key!r} is taken by no group: none of the Partition's "
                         f"{len(self.groups)} selectors accepts it; add a last group whose "
                         f"selector is None (it takes every key left)")

    def _route(self, params: Params, keys: list[Any]) -> dict[Any, int] | list[int]:
        """The routes after this update's keys: a new container (the current one is not
        written, so that a failure part way changes nothing)."""
        by_key = isinstance(params, Mapping)
        kept = self.routes
        if kept is not None and isinstance(kept, dict) != by_key:
            how = "by key (a dict)" if isinstance(kept, dict) else "by position (a list)"
            raise TypeError(f"this Partition routes its params {how} from earlier calls, but "
                            f"params is now a {type(params).__name__}; pass the same kind of "
                            f"container every call")
        if by_key:
            routes: dict[Any, int] = {} if kept is None else dict(kept)
            for key in keys:
                if key not in routes:
                    routes[key] = self._choose(key, params[key])
            return routes
        positions: list[int] = [] if kept is None else list(kept)
        for position in keys[len(positions):]:
            positions.append(self._choose(position, params[position]))
        return positions

    # --- the update -----------------------------------------------------------------------

    def update(self, params: Params, grads: Grads) -> None:
        """Route each key to its group, then update every group; return None.

        Parameters
        ----------
        params : dict or list of ndarray
            As for any fastopt optimizer: updated in place (a float scalar param gets its new
            value stored back).
        grads : dict or list of ndarray
            A grad for every param (same keys, or same length); never written.

        Raises
        ------
        TypeError, ValueError, KeyError
            A key no selector takes, a selector that fails, or any error of a group's
            optimizer; the message names the key. Nothing changes, in any group.
        """
        with _holding(self._locks()):
            max_grad_norm = self._check_settings()
            keys = container_keys(params, grads)
            fixed = _fixed(params)
            if fixed is not None:
                for key in keys:
                    param = params[key]
                    if isinstance(param, (float, np.floating)):
                        raise TypeError(f"param {key!r} is {describe(param)} in a {fixed}, "
                                        f"which cannot be written; a scalar param's new value "
                                        f"must be stored back, so pass a list or dict")
            routes = self._route(params, keys)
            members: list[list[Any]] = [[] for _ in self.groups]
            for key in keys:
                members[routes[key]].append(key)
            # Check every group before any is written (fastopt/_base.py's check phase).
            plans: list[tuple[Optimizer, dict[Any, Any], dict[Any, Any], Checked,
                              dict[str, float], Step]] = []
            read: dict[Any, Any] = {}
            for optimizer, group_keys in zip(self.optimizers, members, strict=True):
                sub_params = {key: params[key] for key in group_keys}
                sub_grads = {}
                for key in group_keys:
                    try:
                        sub_grads[key] = grads[key]
                    except (KeyError, IndexError):
                        raise KeyError(f"grads has no entry for param {key!r}; expected a "
                                       f"grad for every param") from None
                values = optimizer._checked_values()
                step = optimizer._next_step(values)
                checked = optimizer._check_inputs(sub_params, sub_grads, step.loop)
                read.update(zip(group_keys, checked.grads, strict=True))
                plans.append((optimizer, sub_params, sub_grads, checked, values, step))
            grad_scale = None
            if max_grad_norm is not None:   # one norm over every grad, in params' order
                grad_scale = clip_coefficient(global_norm([read[key] for key in keys]),
                                              max_grad_norm)
            # --- apply ----------------------------------------------------------------------
            with _InterruptHeld():
                self.routes = routes
                self.iter += 1
                for optimizer, sub_params, sub_grads, checked, values, step in plans:
                    optimizer._apply_checked(sub_params, sub_grads, checked, values, step,
                                             grad_scale)
                    for key, param in sub_params.items():
                        if not isinstance(param, np.ndarray):   # a scalar's new value
                            params[key] = param  # type: ignore[index]

    # --- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything this Partition needs to continue exactly, as plain data (copies).

        Returns
        -------
        dict
            A wrapper's checkpoint (``fastopt.checkpoint``): class, ``settings``
            (``max_grad_norm``), ``iter``, ``routes`` (each key's group) and ``parts``, each
            group's optimizer's own ``state_dict()``, in order. ``fastopt.save`` writes it.
        """
        with self._lock:
            routes = self.routes
            state: dict[str, Any] = {
                "format": FORMAT, "version": VERSION, "class": _class_record(self),
                "settings": {"max_grad_norm": self._check_settings()},
                "iter": _state._step_count(self.iter),
                "routes": None if routes is None else (
                    dict(routes) if isinstance(routes, dict) else list(routes)),
                "state": {},
                "parts": [optimizer.state_dict() for optimizer in self.optimizers]}
            _check_plain(state)
            return state

    def _load_changes(self, state: Mapping[str, Any]) -> list[tuple[object, dict[str, Any]]]:
        _check_class(self, state)
        if set(state["settings"]) != {"max_grad_norm"} or state["state"]:
            raise _fail(f"a Partition's checkpoint has settings ['max_grad_norm'] and no "
                        f"arrays of its own; this one has settings {sorted(state['settings'])} "
                        f"and arrays {sorted(state['state'])}")
        try:
            max_grad_norm = check_max_grad_norm(state["settings"]["max_grad_norm"])
        except (TypeError, ValueError) as error:
            raise _fail(str(error)) from None
        parts = state["parts"]
        if len(parts) != len(self.groups):
            raise ValueError(f"the checkpoint has {len(parts)} groups, but this Partition has "
                             f"{len(self.groups)}; load it into a Partition of the same groups")
        routes = state["routes"]
        if routes is not None:
            for key, group in (routes.items() if isinstance(routes, Mapping)
                               else enumerate(routes)):
                if group >= len(self.groups):
                    raise _fail(f"it routes param {key!r} to group {group}, but it has "
                                f"{len(self.groups)} groups")
        changes: list[tuple[object, dict[str, Any]]] = []
        for index, (optimizer, part) in enumerate(zip(self.optimizers, parts, strict=True)):
            where = f"group {index} ({type(optimizer).__name__})"
            if "parts" not in part and part["max_grad_norm"] is not None:
                raise _fail(f"{where} has max_grad_norm={part['max_grad_norm']!r}; a "
                            f"Partition's groups clip only through the Partition")
            if part["iter"] != state["iter"]:
                raise _fail(f"{where} has taken {part['iter']} steps, but the Partition "
                            f"{state['iter']}; a Partition's groups step together")
            for name, container in part["state"].items():
                if container is None:
                    continue
                if not isinstance(container, Mapping):
                    raise _fail(f"{where} keeps state {name!r} by position; a Partition's "
                                f"groups keep theirs by key (or by position in the whole "
                                f"list, as a dict)")
                for key in container:
                    mine = None
                    if isinstance(routes, Mapping):
                        mine = routes.get(key)
                    elif isinstance(routes, list) and isinstance(key, int) \
                            and 0 <= key < len(routes):
                        mine = routes[key]
                    if mine != index:
                        raise _fail(f"{where} holds state {name}[{key!r}], but the "
                                    f"checkpoint routes {key!r} to "
                                    f"{'no group' if mine is None else f'group {mine}'}")
            try:
                changes += _load_changes(optimizer, part)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
        changes.append((self, {
            "max_grad_norm": max_grad_norm, "iter": state["iter"],
            "routes": None if routes is None else (
                dict(routes) if isinstance(routes, Mapping) else list(routes))}))
        return changes


class Lookahead(_Wrapper):
    """Lookahead (Zhang et al. 2019, "k steps forward, 1 step back"), as timm's ``Lookahead``.

    Wraps any fastopt optimizer (or a ``Partition``): every ``update`` runs the base
    optimizer's update, and after every ``k``-th update each param is synced with its slow
    weights::

        slow += alpha*(p - slow)      # NumPy's rounding: slow + alpha*(p - slow)
        p = slow                      # in place

    As in timm, a param's slow weights are created at its first sync, as a copy of the param
    at that moment, so the first sync leaves the params as they are (``p + alpha*(p - p)``:
    exactly ``p``, except that -0.0 becomes +0.0 and inf becomes nan, as in timm); a key that
    first appears later gets its slow copy at its first sync. The sync is a compiled loop
    (fastopt/_kernels.pyx, ``lookahead``) with the bits of ``fastopt.reference.lookahead_rule``
    in float32 and float64; inputs the loops do not take (views, float16, scalar params) take
    that NumPy rule.

    Parameters
    ----------
    base : fastopt optimizer or Partition
        The optimizer of the fast weights. Its own hyperparameters stay on it
        (``lookahead.base.lr``), and so does clipping (``max_grad_norm``).
    alpha : float, default 0.5
        The slow weights' step size, ``0 <= alpha <= 1`` (a number, not a schedule).
    k : int, default 6
        Sync after every ``k``-th update, ``k >= 1``.

    Attributes
    ----------
    iter : int
        Updates so far (timm's ``lookahead_step``); a sync follows the updates where
        ``iter % k == 0``.
    slow : dict or list of ndarray, or None
        The slow weights, by key or position, of each param's dtype and shape; None before
        the first sync.

    Notes
    -----
    A rejected update (the base's checks, or a slow copy that no longer fits its param)
    changes nothing. ``state_dict`` holds ``alpha``, ``k``, ``iter``, the slow weights and the
    base's own checkpoint; ``fastopt.save`` and ``fastopt.load`` resume exactly.
    ``fastopt.distributed.ShardedOptimizer`` does not take a Lookahead (see
    ``fastopt.wrappers``).
    """

    def __init__(self, base: OptimizerCore | Partition, alpha: float = 0.5,
                 k: int = 6) -> None:
        if isinstance(base, Lookahead):
            raise TypeError("base is already a Lookahead; wrap the optimizer once")
        if not isinstance(base, (OptimizerCore, Partition)):
            kind = type(base)
            raise TypeError(f"base is a {kind.__module__}.{kind.__qualname__}; expected one of "
                            f"fastopt's optimizers (fastopt.Adam(...), ...) or a "
                            f"fastopt.Partition")
        self.base = base
        self.alpha = alpha
        self.k = k
        self.iter: int = 0
        self.slow: State = None
        self._lock = threading.Lock()
        self._check_settings()

    def __repr__(self) -> str:
        return f"Lookahead({self.base!r}, alpha={self.alpha!r}, k={self.k!r})"

    def _locks(self) -> list[threading.Lock]:
        base = self.base
        return [self._lock, *(base._locks() if isinstance(base, Partition) else [base._lock])]

    def _check_settings(self) -> tuple[float, int]:
        """``alpha`` as a float and ``k`` as an int, or TypeError/ValueError."""
        if not is_real_scalar(self.alpha):
            raise TypeError(f"alpha must be a real number with 0 <= alpha <= 1 (not a "
                            f"schedule); got {self.alpha!r} ({type(self.alpha).__name__})")
        alpha = to_float("alpha", self.alpha)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number with 0 <= alpha <= 1; got {self.alpha!r}")
        k = self.k
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int >= 1 (sync every k updates); got {k!r} "
                            f"({type(k).__name__})")
        if k < 1:
            raise ValueError(f"k must be an int >= 1 (sync every k updates); got {k!r}")
        return alpha, int(k)

    def _check_slow(self, params: Params) -> None:
        """The slow weights kept so far must fit the params they will be synced with."""
        slow = self.slow
        if slow is None or not isinstance(params, (Mapping, list, tuple)):
            return   # the base's checks say what is wrong with params
        if isinstance(slow, dict) != isinstance(params, Mapping):
            how = "by key (a dict)" if isinstance(slow, dict) else "by position (a list)"
            raise TypeError(f"Lookahead keeps its slow weights {how} from earlier calls, but "
                            f"params is now a {type(params).__name__}; pass the same kind of "
                            f"container every call")
        items = (((key, params[key]) for key in params if key in slow)
                 if isinstance(params, Mapping) and isinstance(slow, dict)
                 else ((position, params[position])
                       for position in range(min(len(params), len(slow)))))
        for key, param in items:
            copy = slow[key]
            shape = np.shape(param)
            if copy.shape != shape or (isinstance(param, np.ndarray)
                                       and copy.dtype != param.dtype):
                raise ValueError(f"Lookahead's slow weights of param {key!r} have shape "
                                 f"{copy.shape} and dtype {copy.dtype}, but the param has "
                                 f"shape {shape} and dtype {np.asarray(param).dtype}; they "
                                 f"belong to the array first seen under its key")

    def update(self, params: Params, grads: Grads) -> None:
        """The base optimizer's update, then, after every ``k``-th, the sync; return None.

        Raises
        ------
        TypeError, ValueError, KeyError
            The base's errors, a bad ``alpha`` or ``k``, or slow weights that do not fit
            their param; nothing changes then.
        """
        with self._lock:
            alpha, k = self._check_settings()
            syncs = (self.iter + 1) % k == 0
            if syncs:
                self._check_slow(params)
            with _InterruptHeld():   # the base's step and the sync, whole
                self.base.update(params, grads)
                self.iter += 1
                if syncs:
                    self._sync(params, grads, alpha)

    def _sync(self, params: Params, grads: Grads, alpha: float) -> None:
        """``slow += alpha*(p - slow); p = slow`` for every param, after creating the slow
        copies of params that have none."""
        by_key = isinstance(params, Mapping)
        keys = list(params) if isinstance(params, Mapping) else list(range(len(params)))
        slow = self.slow
        if slow is None:
            slow = {} if by_key else []
        if isinstance(slow, dict):
            for key in keys:
                if key not in slow:
                    slow[key] = _copy_of(params[key])
        else:
            for position in keys[len(slow):]:
                slow.append(_copy_of(params[position]))
        self.slow = slow
        scalars = {"lookahead_alpha": alpha}
        kind = type(params)
        if (kind is dict or kind is list) and type(grads) is kind:
            own = slow if isinstance(slow, dict) or len(slow) == len(keys) \
                else slow[:len(keys)]
            if _run_loop("lookahead", params, grads, own, None, None, None, None, 0.0,
                         scalars):
                return
        for key in keys:   # param by param: the loop, or NumPy's rule where it declines
            param, grad, copy = params[key], grads[key], slow[key]
            if not _run_loop("lookahead", [param], [grad], [copy], None, None, None, None,
                             0.0, scalars):
                new = reference.lookahead_rule(param, grad, copy, alpha)
                if not isinstance(param, np.ndarray):
                    params[key] = new  # type: ignore[index]

    # --- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything this Lookahead needs to continue exactly, as plain data (copies).

        Returns
        -------
        dict
            A wrapper's checkpoint (``fastopt.checkpoint``): class, ``settings`` (``alpha``,
            ``k``), ``iter``, ``state`` (``slow``) and ``parts``, the base's own
            ``state_dict()``. ``fastopt.save`` writes it.
        """
        with self._lock:
            alpha, k = self._check_settings()
            state: dict[str, Any] = {
                "format": FORMAT, "version": VERSION, "class": _class_record(self),
                "settings": {"alpha": alpha, "k": k},
                "iter": _state._step_count(self.iter), "routes": None,
                "state": {"slow": _state._copy_container(self.slow, "slow")},
                "parts": [self.base.state_dict()]}
            _check_plain(state)
            return state

    def _load_changes(self, state: Mapping[str, Any]) -> list[tuple[object, dict[str, Any]]]:
        _check_class(self, state)
        settings = state["settings"]
        if set(settings) != {"alpha", "k"} or set(state["state"]) != {"slow"} \
                or len(state["parts"]) != 1 or state["routes"] is not None:
            raise _fail(f"a Lookahead's checkpoint has settings ['alpha', 'k'], the state "
                        f"['slow'], one part (its base's) and no routes; this one has "
                        f"settings {sorted(settings)}, state {sorted(state['state'])}, "
                        f"{len(state['parts'])} parts and routes {state['routes']!r}")
        alpha, k = settings["alpha"], settings["k"]
        if alpha is None or not 0 <= alpha <= 1:
            raise _fail(f"alpha must be a number with 0 <= alpha <= 1; got {alpha!r}")
        if type(k) is not int or k < 1:
            raise _fail(f"k must be an int >= 1; got {k!r}")
        slow = state["state"]["slow"]
        mine = self.slow
        if slow is not None and mine is not None:
            if isinstance(mine, dict) != isinstance(slow, Mapping):
                raise ValueError("this Lookahead keeps its slow weights by "
                                 f"{'key' if isinstance(mine, dict) else 'position'}, but the "
                                 f"checkpoint does not; its params were passed as another "
                                 f"kind of container")
            for key, array in (slow.items() if isinstance(slow, Mapping)
                               else enumerate(slow)):
                if (key in mine) if isinstance(mine, dict) else key < len(mine):
                    kept = mine[key]
                    if (array.shape, array.dtype.newbyteorder("=")) != (kept.shape,
                                                                        kept.dtype):
                        raise ValueError(f"the checkpoint's slow weights of param {key!r} "
                                         f"have shape {array.shape} and dtype {array.dtype}, "
                                         f"but this Lookahead's have shape {kept.shape} and "
                                         f"dtype {kept.dtype}; the checkpoint is of another "
                                         f"model")
        try:
            changes = _load_changes(self.base, state["parts"][0])
        except ValueError as error:
            raise ValueError(f"its base ({type(self.base).__name__}): {error}") from None
        copied: State = None
        if isinstance(slow, Mapping):
            copied = {key: _copy_array(array, f"slow[{key!r}]") for key, array in slow.items()}
        elif slow is not None:
            copied = [_copy_array(array, f"slow[{key}]") for key, array in enumerate(slow)]
        changes.append((self, {"alpha": float(alpha), "k": k, "iter": state["iter"],
                               "slow": copied}))
        return changes


def _copy_of(param: Any) -> Any:
    """A param's slow weights at its first sync: a copy of it (C-contiguous, aligned as the
    param, for the loop; a 0-d array for a scalar param, as the book's zero state is)."""
    if isinstance(param, np.ndarray):
        copy = aligned_zeros(param)
    else:
        copy = np.zeros_like(param)
    copy[...] = param
    return copy
