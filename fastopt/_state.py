"""An optimizer's own state as plain data: ``state_dict`` and ``load_state_dict``.

What an optimizer keeps comes from its rule's declaration (fastopt/_core.py): its float
hyperparameters and their checks, its options and settings, its state arrays
(``state_names``, which may depend on the options) and its float state
(``_scalar_state``). The format of the dict, and the ``.npz`` file that holds it, are
fastopt/checkpoint.py's, which knows nothing of optimizers.
"""
from __future__ import annotations

import copy
import json
import operator
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ._validation import Check, check_max_grad_norm, check_option, plain_setting, to_float

if TYPE_CHECKING:
    from ._core import OptimizerCore
from .checkpoint import (
    _SCHEDULES,
    FIELDS,
    FORMAT,
    OTHER_SHAPES,
    SETTINGS,
    VERSION,
    _check_plain,
    _copy_array,
    _differences,
    _fail,
    _float,
    _is_number,
    _native,
    _rebuild_schedule,
)


def state_dict(optimizer: OptimizerCore) -> dict[str, Any]:
    """``optimizer``'s state as plain data (``optimizer.state_dict()``).

    Parameters
    ----------
    optimizer : fastopt or fastopt.reference optimizer

    Returns
    -------
    dict
        The checkpoint described in this module's docstring. Arrays are copies.

    Raises
    ------
    TypeError, ValueError
        If a hyperparameter, option or ``max_grad_norm`` is not one the optimizer could
        update with (such a checkpoint could not be loaded).
    """
    with optimizer._lock:
        cls = type(optimizer)
        checks = optimizer._all_hyperparameters()
        state: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "class": {"module": cls.__module__, "qualname": cls.__qualname__},
            "hyperparameters": {name: _encode_hyperparameter(name, getattr(optimizer, name),
                                                             check)
                                for name, check in checks.items()},
            "options": {name: check_option(name, getattr(optimizer, name))
                        for name in optimizer._options},
            "max_grad_norm": check_max_grad_norm(optimizer.max_grad_norm),
            "weight_decay_filter": optimizer.weight_decay_filter is not None,
            "iter": _step_count(optimizer.iter),
        }
        if optimizer._settings:
            state[SETTINGS] = {name: plain_setting(check(name, getattr(optimizer, name)))
                               for name, check in optimizer._settings.items()}
        for name in optimizer._scalar_state:
            state[name] = to_float(name, getattr(optimizer, name))
        state["state"] = {name: _copy_container(getattr(optimizer, name), name)
                          for name in optimizer.state_names}
        other_shapes = _other_shapes(optimizer, optimizer.state_names)
        if other_shapes:
            state[OTHER_SHAPES] = other_shapes
        state["decays"] = _copy_decays(optimizer._decays)
        _check_plain(state)   # what load_state_dict would refuse, refused now
        return state


def load_state_dict(optimizer: OptimizerCore, state: Mapping[str, Any]) -> None:
    """Check ``state`` against ``optimizer``, then make it the optimizer's state
    (``optimizer.load_state_dict(state)``).

    Parameters
    ----------
    optimizer : fastopt or fastopt.reference optimizer
        Of exactly the class that saved ``state``; it may be new (no update yet).
    state : dict
        From ``state_dict()`` or ``fastopt.load``; its arrays are copied, not shared.

    Raises
    ------
    TypeError
        If ``state`` is not a mapping.
    ValueError
        If anything in ``state`` is malformed or does not fit ``optimizer``: another class,
        format or version, unknown or missing fields, a hyperparameter out of range, a
        schedule of your own that ``optimizer`` does not hold (pass it again to the
        constructor), state arrays that are not float16/32/64 or whose shape or dtype differs
        from the state ``optimizer`` already keeps. Nothing is changed then.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"load_state_dict takes the dict that state_dict() or fastopt.load() "
                        f"returns; got {type(state).__name__}")
    with optimizer._lock:
        _check_plain(state)
        changes = _plan(optimizer, state)
        for name, value in changes.items():   # plain assignments: nothing here can fail
            setattr(optimizer, name, value)


def _encode_hyperparameter(name: str, value: Any, check: Check) -> Any:
    if not callable(value):
        number = to_float(name, value)
        check(name, number, "")
        return number
    to_dict = getattr(value, "to_dict", None)
    if type(value).__module__ == _SCHEDULES and callable(to_dict):
        try:
            described = to_dict()
        except TypeError:   # a Warmup or Join around a callable of the user's own
            return {"user_schedule": True}
        try:   # a deep copy that is also proof of plain data
            plain = json.loads(json.dumps(described, allow_nan=True))
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name}'s schedule {value!r}: to_dict() returned {described!r}, "
                            f"which is not plain data ({error})") from None
        return {"schedule": plain}
    return {"user_schedule": True}


def _step_count(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"iter must be an int >= 0; got {value!r}")
    count = operator.index(value)
    if count < 0:
        raise ValueError(f"iter must be an int >= 0; got {count}")
    return count


def _copy_container(container: Any, name: str) -> Any:
    if container is None:
        return None
    if isinstance(container, dict):
        return {key: _copy_array(value, f"{name}[{key!r}]") for key, value in container.items()}
    if isinstance(container, list):
        return [_copy_array(value, f"{name}[{index}]") for index, value in enumerate(container)]
    raise TypeError(f"state {name!r} is a {type(container).__name__}; expected None, a dict "
                    f"or a list of arrays")


def _copy_decays(decays: Any) -> Any:
    if decays is None:
        return None
    if isinstance(decays, dict):
        return {key: bool(value) for key, value in decays.items()}
    return [bool(value) for value in decays]


def _plan(optimizer: OptimizerCore, state: Mapping[str, Any]) -> dict[str, Any]:
    """The attribute assignments that load ``state`` into ``optimizer``, or a ValueError."""
    cls = type(optimizer)
    saved = f"{state['class']['module']}.{state['class']['qualname']}"
    mine = f"{cls.__module__}.{cls.__qualname__}"
    if saved != mine:
        raise ValueError(f"the checkpoint is of class {saved}, but this optimizer is a {mine}; "
                         f"load it into a {saved}")
    if "parts" in state:   # fastopt/wrappers.py's kind, whatever class it names
        raise _fail(f"it names class {saved} but is a wrapper's checkpoint (with parts); an "
                    f"optimizer's has none")
    changes: dict[str, Any] = {}
    checks = optimizer._all_hyperparameters()
    hypers = state["hyperparameters"]
    for what, saved_names, names in [("hyperparameters", hypers, checks),
                                     ("options", state["options"], optimizer._options)]:
        if set(saved_names) != set(names):
            raise _fail(f"its {what} are not those of a {mine}: " + _differences(
                what, [n for n in names if n not in saved_names],
                sorted(n for n in saved_names if n not in names)))
    for name, check in checks.items():
        value = hypers[name]
        if _is_number(value):
            number = _float(name, value)
            try:
                check(name, number, " (in the checkpoint)")
            except ValueError as error:
                raise _fail(str(error)) from None
            changes[name] = number
        elif "schedule" in value:
            schedule, number = _rebuild_schedule(name, value["schedule"], state["iter"])
            try:
                check(name, number, f" (the schedule's value at step {state['iter']}, in the "
                                    f"checkpoint)")
            except ValueError as error:
                raise _fail(str(error)) from None
            changes[name] = schedule
        elif not callable(getattr(optimizer, name)):
            raise ValueError(f"{name} was a schedule of your own when saved; pass it again: "
                             f"{cls.__name__}({name}=your_schedule) before load_state_dict")
    changes.update(state["options"])
    saved_settings = state.get(SETTINGS, {})
    if set(saved_settings) != set(optimizer._settings):
        raise _fail(f"its settings are not those of a {mine}: " + _differences(
            "settings", [n for n in optimizer._settings if n not in saved_settings],
            sorted(n for n in saved_settings if n not in optimizer._settings)))
    for name, setting_check in optimizer._settings.items():
        try:
            changes[name] = setting_check(name, saved_settings[name])
        except (TypeError, ValueError) as error:
            raise _fail(str(error)) from None
    try:
        changes["max_grad_norm"] = check_max_grad_norm(state["max_grad_norm"])
    except (TypeError, ValueError) as error:
        raise _fail(str(error)) from None
    if not state["weight_decay_filter"]:
        changes["weight_decay_filter"] = None
    elif not callable(optimizer.weight_decay_filter):
        raise ValueError(f"weight_decay_filter was a callable of your own when saved; pass it "
                         f"again: {cls.__name__}(weight_decay_filter=your_filter) before "
                         f"load_state_dict")
    changes["iter"] = state["iter"]
    for name in state:
        if (name not in FIELDS and name not in optimizer._scalar_state
                and name not in (OTHER_SHAPES, SETTINGS)):
            raise _fail(f"it has {name!r}, which a {mine} does not keep")
    for name, (_, check) in optimizer._scalar_state.items():
        if name not in state:
            raise _fail(f"it has no {name!r}, which a {mine} keeps")
        number = _float(name, state[name])
        try:
            check(name, number, "")
        except ValueError as error:
            raise _fail(str(error)) from None
        changes[name] = number

    # Which state the optimizer keeps depends on its options (and on RMSprop's momentum):
    # ask a shallow copy with the checkpoint's settings.
    candidate = copy.copy(optimizer)
    for name, value in changes.items():
        setattr(candidate, name, value)
    names = candidate.state_names
    if set(state["state"]) != set(names):
        raise _fail(f"it holds state {sorted(state['state'])}, but a {mine} with its options "
                    f"keeps {sorted(names)}")
    other_shapes = _other_shapes(candidate, names)
    if state.get(OTHER_SHAPES, []) != other_shapes:
        raise _fail(f"it lists {state.get(OTHER_SHAPES, [])} as its state of other shapes than "
                    f"its params', but a {mine} keeps {other_shapes} so")
    _check_state_shapes(candidate, {name: state["state"][name] for name in names})
    for name in names:
        container = state["state"][name]
        _check_against_existing(optimizer, name, container)
        if isinstance(container, Mapping):
            changes[name] = {key: _copy_array(value, f"{name}[{key!r}]")
                             for key, value in container.items()}
        elif container is not None:
            changes[name] = [_copy_array(value, f"{name}[{key}]")
                             for key, value in enumerate(container)]
        else:
            changes[name] = None
    for name in optimizer.state_names:
        if name not in names:
            changes[name] = None   # as the constructor leaves a state the options do not use
    changes["_decays"] = _copy_decays(state["decays"])
    changes["_workspace_arrays"] = None   # scratch of the state replaced: made anew
    return changes


def _other_shapes(optimizer: OptimizerCore, names: Any) -> list[str]:
    """The states among ``names`` whose arrays are not of their param's shape, in order."""
    return [name for name in names if name in optimizer._state_shapes]


def _check_state_shapes(optimizer: OptimizerCore, containers: dict[str, Any]) -> None:
    """Each key's state arrays have the shapes one param's would (the declaration's
    ``_state_shapes`` and ``_param_shape``); without state of other shapes,
    ``checkpoint._check_plain`` has already seen that they all have one shape."""
    if not optimizer._state_shapes:
        return
    by_key: dict[Any, dict[str, tuple[int, ...]]] = {}
    for name, container in containers.items():
        if container is None:
            continue
        items = container.items() if isinstance(container, Mapping) else enumerate(container)
        for key, array in items:
            by_key.setdefault(key, {})[name] = tuple(np.shape(array))
    for key, shapes in by_key.items():
        param_shape = optimizer._param_shape(shapes)
        if param_shape is None:
            described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
            raise _fail(f"the state of {key!r} fits no param: its arrays have the shapes "
                        f"{described}")
        for name, shape in shapes.items():
            expected = optimizer._state_shape(name, param_shape)
            if shape != expected:
                raise _fail(f"its state {name}[{key!r}] has shape {shape}, but a param of shape "
                            f"{param_shape} (as its other state implies) keeps one of shape "
                            f"{expected}")


def _check_against_existing(optimizer: OptimizerCore, name: str,
                            container: Any) -> None:
    """Where ``optimizer`` already keeps state ``name``, the checkpoint's must fit it."""
    existing = getattr(optimizer, name) if name in optimizer.state_names else None
    if existing is None or container is None:
        return
    if isinstance(existing, dict) != isinstance(container, Mapping):
        kept = "by key (a dict)" if isinstance(existing, dict) else "by position (a list)"
        raise ValueError(f"this optimizer keeps state {name!r} {kept}, but the checkpoint "
                         f"does not; its params were passed as another kind of container")
    items = container.items() if isinstance(container, Mapping) else enumerate(container)
    for key, array in items:
        if isinstance(existing, dict):
            if key not in existing:
                continue
            mine = existing[key]
        elif key < len(existing):
            mine = existing[key]
        else:
            continue
        shape, dtype = np.shape(mine), _native(np.asarray(mine).dtype)
        if (array.shape, _native(array.dtype)) != (shape, dtype):
            raise ValueError(f"the checkpoint's state {name}[{key!r}] has shape {array.shape} "
                             f"and dtype {array.dtype}, but this optimizer's has shape {shape} "
                             f"and dtype {dtype}; the checkpoint is of another model")
