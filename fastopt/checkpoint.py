"""Checkpoints: an optimizer's state as plain data, and as one ``.npz`` file.

This module is the file format: it converts a state dict to and from a ``.npz`` file and
checks that a dict is a well-formed checkpoint; it knows nothing of optimizers. Each
optimizer owns its ``state_dict`` and ``load_state_dict`` (fastopt/_state.py, which reads the
rule's declaration).

``opt.state_dict()`` returns everything an optimizer needs to continue exactly where it was;
``opt.load_state_dict(state)`` checks all of it against the optimizer first and then takes it,
or raises and changes nothing. ``fastopt.save(path, opt)`` writes the same data as one
``.npz`` file, atomically; ``fastopt.load(path)`` reads it back as the plain dict that
``load_state_dict`` takes. Loading never runs code from the file: no pickle, no import, no
lookup of a class or function by a name the file gives.

The state dict (``state_dict()``; every value a copy, nothing shared with the optimizer)::

    {"format": "fastopt-checkpoint", "version": 1,
     "class": {"module": "fastopt.optimizers", "qualname": "Adam"},
     "hyperparameters": {"lr": 0.001, ...},     # every float hyperparameter, see below
     "options": {"amsgrad": False, ...},        # every boolean option
     "max_grad_norm": None,                     # or a float
     "weight_decay_filter": False,              # True: a callable of yours was set (not saved)
     "iter": 10,                                # updates so far
     "mu_product": 0.53,                        # float state of the rule (NAdam's product)
     "settings": {"ns_steps": 5, ...},          # if the rule has any: its options that are
                                                # neither floats nor bools (Muon's)
     "state": {"m": {"W1": array, ...}, "v": ...},   # each state attribute: None, or a dict
                                                     # by key or a list by position of arrays
     "decays": None}                            # or weight_decay_filter's answer per key

A hyperparameter is saved as a float; a schedule of ``fastopt.schedules`` as
``{"schedule": schedule.to_dict()}``, rebuilt on load by ``fastopt.schedules.from_dict``; a
schedule of your own (any other callable) as ``{"user_schedule": True}``: it is not saved, and
the optimizer that loads the checkpoint must already hold a callable for that hyperparameter
(``Adam(lr=your_schedule)``), which it keeps. Likewise ``weight_decay_filter``: its answers for
the keys seen so far are saved (``decays``), the callable is not, and must be passed again.
Everything else in the checkpoint replaces what the optimizer had: hyperparameters, options,
``max_grad_norm``, ``iter`` and the state (keys the checkpoint does not have get zero state at
their first update, as new keys always do).

The file is an ordinary ``.npz`` (``np.load(path, allow_pickle=False)`` reads it): a member
``metadata``, a 0-d unicode array holding the state dict above as JSON, with each state
container replaced by its description (``{"container": "dict", "keys": [...]}`` or
``{"container": "list", "length": n}``) and ``decays`` by ``{"container": "dict", "keys":
[...], "values": [...]}`` or ``{"container": "list", "values": [...]}``; then one member per
state array, ``state.<name>.<i>`` for the ``i``-th entry of state ``name`` (float16, float32 or
float64, as the optimizer holds it). Keys must be str or int to be saved.

A wrapper of optimizers (``fastopt.Partition``, ``fastopt.Lookahead``) saves one checkpoint
of another shape, holding the ordinary checkpoints of the optimizers it wraps::

    {"format": "fastopt-checkpoint", "version": 1,
     "class": {"module": "fastopt.wrappers", "qualname": "Lookahead"},
     "settings": {"alpha": 0.5, "k": 6},        # the wrapper's own numbers (or None)
     "iter": 12,
     "routes": None,                            # or which part takes each key (an int by key
                                                # or position): Partition's routing
     "state": {"slow": {"W1": array, ...}},     # the wrapper's own arrays, as above
     "parts": [{...}, ...]}                     # the wrapped optimizers' checkpoints, in order

In the file, ``routes`` is described as ``decays`` is, and each part's record sits in its
place in the metadata, its arrays being the members ``parts.<j>.state.<name>.<i>`` (nested
wrappers prefix again: ``parts.0.parts.1.state.m.0``); parts nest at most ``MAX_DEPTH`` deep.
"""
from __future__ import annotations

import importlib
import io
import json
import math
import os
import stat
import uuid
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import IO, Any

import numpy as np

from ._validation import to_float

__all__ = ["FORMAT", "VERSION", "load", "load_state_dict", "save", "state_dict"]

#: The ``format`` field of every fastopt checkpoint.
FORMAT = "fastopt-checkpoint"
#: The version this fastopt writes and reads.
VERSION = 1

_METADATA = "metadata"
_FLOAT_DTYPES = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64))
# Float state kept beside the arrays, by attribute name, on the classes that have it.
FIELDS = ("format", "version", "class", "hyperparameters", "options", "max_grad_norm",
           "weight_decay_filter", "iter", "state", "decays")
#: The fields of a wrapper's checkpoint (``parts``: the wrapped optimizers' checkpoints).
WRAPPER_FIELDS = ("format", "version", "class", "settings", "iter", "routes", "state", "parts")
#: How deep wrappers' checkpoints may nest (a Lookahead of a Partition is 2).
MAX_DEPTH = 8
_SCHEDULES = "fastopt.schedules"
#: An optional field: the states whose arrays are not of their param's shape (a list of
#: names; absent when every state is param-shaped). The arrays of one param must otherwise
#: all have its shape.
OTHER_SHAPES = "other_shapes"
#: An optional field: the rule's settings, its options that are neither floats nor bools
#: (Muon's ``ns_steps``, ``ns_coefficients``, ``adjust_lr_fn``), by name, each an int, a
#: string, None or a list of numbers; absent when the rule has none. The optimizer checks
#: their values when it loads them.
SETTINGS = "settings"


# ---------------------------------------------------------------------------------------------
# The optimizer's side, for callers that prefer functions: the optimizer's own methods.

def state_dict(optimizer: Any) -> dict[str, Any]:
    """``optimizer.state_dict()``: its state as the plain data described above."""
    state: dict[str, Any] = optimizer.state_dict()
    return state


def load_state_dict(optimizer: Any, state: Mapping[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``: check ``state`` against it, then continue from
    it; ValueError naming what differs, and nothing changes."""
    optimizer.load_state_dict(state)


def _native(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """``dtype`` in native byte order: a file may hold either order, state is native."""
    return dtype.newbyteorder("=")


def _copy_array(value: Any, where: str) -> np.ndarray[Any, Any]:
    array = np.asarray(value)
    if _native(array.dtype) not in _FLOAT_DTYPES:
        raise TypeError(f"state {where} has dtype {array.dtype}; a checkpoint holds float16, "
                        f"float32 or float64 arrays")
    # Native byte order, C order, writeable and owned: what fastopt's own state arrays are.
    return np.array(array, dtype=array.dtype.newbyteorder("="), order="C", copy=True)


# ---------------------------------------------------------------------------------------------
# Checks. _check_plain: what any checkpoint must be, whatever the optimizer. _plan: whether it
# fits this optimizer, and the attribute assignments that load it (nothing is set there).

def _differences(what: str, missing: list[str], extra: list[str]) -> str:
    return ", ".join(([f"missing {what} {missing}"] if missing else [])
                     + ([f"unknown {what} {extra}"] if extra else []))


def _fail(message: str) -> ValueError:
    return ValueError(f"not a usable fastopt checkpoint: {message}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_setting(value: Any) -> bool:
    """A setting's plain value: an int, a string, None or a list of numbers."""
    return (value is None or isinstance(value, str)
            or (type(value) is int)
            or (isinstance(value, list) and all(_is_number(item) for item in value)))


def _check_plain(state: Mapping[str, Any], depth: int = 0) -> None:
    """Raise ValueError unless ``state`` is a well-formed checkpoint of this version (an
    optimizer's, or a wrapper's whose parts are, ``depth`` levels down)."""
    if state.get("format") != FORMAT:
        raise ValueError(f"not a fastopt checkpoint: its 'format' is {state.get('format')!r}; "
                         f"expected {FORMAT!r}")
    version = state.get("version")
    if type(version) is not int or version != VERSION:
        newer = type(version) is int and version > VERSION
        raise ValueError(f"fastopt checkpoint of version {version!r}; this fastopt reads "
                         f"version {VERSION}" + (" (the file is from a newer fastopt)"
                                                 if newer else ""))
    if "parts" in state:
        _check_wrapper(state, depth)
        return
    # Beside the fields every checkpoint has, a rule's float state (NAdam's mu_product): any
    # other field a number; which the optimizer keeps, and their ranges, it checks itself.
    missing = [name for name in FIELDS if name not in state]
    extra = sorted(str(name) for name, value in state.items()
                   if name not in FIELDS and name not in (OTHER_SHAPES, SETTINGS)
                   and not (isinstance(name, str) and _is_number(value)))
    if missing or extra:
        raise _fail(_differences("fields", missing, extra))
    if SETTINGS in state:
        settings = state[SETTINGS]
        if (not isinstance(settings, Mapping) or not settings
                or not all(isinstance(name, str) and _is_setting(value)
                           for name, value in settings.items())):
            raise _fail(f"{SETTINGS!r} must map names to ints, strings, None or lists of "
                        f"numbers, at least one; got {_shown(settings)}")
    _check_class(state["class"])
    hypers = state["hyperparameters"]
    if not isinstance(hypers, Mapping) or not all(isinstance(name, str) for name in hypers):
        raise _fail(f"'hyperparameters' must map names to values; got {hypers!r}")
    for name, value in hypers.items():
        if _is_number(value) or (isinstance(value, Mapping)
                                 and dict(value) == {"user_schedule": True}):
            continue
        if (isinstance(value, Mapping) and set(value) == {"schedule"}
                and isinstance(value["schedule"], Mapping)
                and isinstance(value["schedule"].get("type"), str)):
            continue
        raise _fail(f"hyperparameter {name!r} is {value!r}; expected a number, "
                    f"{{'schedule': {{'type': ..., ...}}}} or {{'user_schedule': True}}")
    options = state["options"]
    if (not isinstance(options, Mapping)
            or not all(isinstance(n, str) and type(v) is bool for n, v in options.items())):
        raise _fail(f"'options' must map names to True or False; got {options!r}")
    if state["max_grad_norm"] is not None and not _is_number(state["max_grad_norm"]):
        raise _fail(f"'max_grad_norm' must be a number or None; got {state['max_grad_norm']!r}")
    if type(state["weight_decay_filter"]) is not bool:
        raise _fail(f"'weight_decay_filter' must be True or False; got "
                    f"{state['weight_decay_filter']!r}")
    _check_iter(state["iter"])
    for name, value in hypers.items():   # rebuilt and evaluated: a schedule that loads works
        if isinstance(value, Mapping) and "schedule" in value:
            _rebuild_schedule(name, value["schedule"], state["iter"])
    kinds = _check_containers(state["state"], _other_shapes(state))
    decays = state["decays"]
    if decays is not None:
        if isinstance(decays, Mapping):
            kinds["decays"] = dict
            values = list(decays.values())
        elif isinstance(decays, list):
            kinds["decays"] = list
            values = decays
        else:
            raise _fail(f"'decays' must be None, a dict or a list; got {type(decays).__name__}")
        if not all(type(value) is bool for value in values):
            raise _fail("'decays' must hold True or False for each key")
    if len(set(kinds.values())) > 1:
        by = {name: "by key" if kind is dict else "by position" for name, kind in kinds.items()}
        raise _fail(f"state kept partly by key and partly by position: {by}")


def _check_containers(containers: Any, other_shapes: frozenset[str] = frozenset()
                      ) -> dict[str, type]:
    """Check a checkpoint's ``state``: names -> None, or a dict or list of float arrays, the
    state of one param (one key) agreeing in dtype, and in shape but for the states of
    ``other_shapes``; return each one's kind."""
    if not isinstance(containers, Mapping) or not all(isinstance(n, str) for n in containers):
        raise _fail(f"'state' must map state names to None, a dict or a list; got "
                    f"{type(containers).__name__}")
    kinds: dict[str, type] = {}
    # key -> the first state's (name, shape, dtype), and the first param-shaped state's
    entries: dict[Any, _Entry] = {}
    shaped_entries: dict[Any, _Entry] = {}
    for name, container in containers.items():
        if container is None:
            continue
        if isinstance(container, Mapping):
            kinds[name] = dict
            items = list(container.items())
        elif isinstance(container, list):
            kinds[name] = list
            items = list(enumerate(container))
        else:
            raise _fail(f"state {name!r} is a {type(container).__name__}; expected None, a "
                        f"dict or a list of arrays")
        for key, array in items:
            where = f"state {name}[{key!r}]"
            if not isinstance(array, np.ndarray):
                raise _fail(f"{where} is a {type(array).__name__}; expected an ndarray")
            if _native(array.dtype) not in _FLOAT_DTYPES:
                raise _fail(f"{where} has dtype {array.dtype}; a checkpoint holds float16, "
                            f"float32 or float64 arrays")
            first = _disagreeing(entries, shaped_entries, key, name, array.shape,
                                 array.dtype, other_shapes)
            if first is not None:
                raise _fail(f"{where} has shape {array.shape} and dtype {array.dtype}, but "
                            f"state {first[0]}[{key!r}] has shape {first[1]} and dtype "
                            f"{first[2]}; the state of one param must agree")
    return kinds


def _check_class(cls: Any) -> None:
    if (not isinstance(cls, Mapping) or set(cls) != {"module", "qualname"}
            or not all(isinstance(cls[name], str) for name in cls)):
        raise _fail(f"'class' must be {{'module': str, 'qualname': str}}; got {cls!r}")


def _check_iter(count: Any) -> None:
    # iter below 2**53: a step count a float holds exactly (bias corrections use t as one)
    if type(count) is not int or not 0 <= count < 2**53:
        raise _fail(f"'iter' must be an int >= 0 and < 2**53; got {count!r}")


def _is_index(value: Any) -> bool:
    return type(value) is int and value >= 0


def _check_wrapper(state: Mapping[str, Any], depth: int) -> None:
    """The checks of ``_check_plain`` for a wrapper's checkpoint, its parts' included."""
    missing = [name for name in WRAPPER_FIELDS if name not in state]
    extra = sorted(str(name) for name in state if name not in WRAPPER_FIELDS)
    if missing or extra:
        raise _fail("a wrapper's checkpoint: " + _differences("fields", missing, extra))
    _check_class(state["class"])
    settings = state["settings"]
    if (not isinstance(settings, Mapping)
            or not all(isinstance(name, str) and (value is None or _is_number(value))
                       for name, value in settings.items())):
        raise _fail(f"'settings' must map names to numbers or None; got {settings!r}")
    _check_iter(state["iter"])
    routes = state["routes"]
    if routes is not None:
        values = (list(routes.values()) if isinstance(routes, Mapping)
                  else routes if isinstance(routes, list) else None)
        if values is None or not all(_is_index(value) for value in values):
            raise _fail(f"'routes' must be None, or a dict or list of part numbers (ints >= "
                        f"0); got {type(routes).__name__}")
    _check_containers(state["state"])
    parts = state["parts"]
    if not isinstance(parts, list) or not all(isinstance(part, Mapping) for part in parts):
        raise _fail(f"'parts' must be a list of checkpoints; got {type(parts).__name__}")
    if depth >= MAX_DEPTH:
        raise _fail(f"wrappers' checkpoints nest more than {MAX_DEPTH} deep")
    for index, part in enumerate(parts):
        try:
            _check_plain(part, depth + 1)
        except ValueError as error:
            raise ValueError(f"part {index}: {error}") from None


_Entry = tuple[str, tuple[int, ...], np.dtype[Any]]


def _other_shapes(state: Mapping[str, Any]) -> frozenset[str]:
    """The states of ``state`` whose arrays are not of their param's shape (its optional
    ``other_shapes`` field: Adafactor's row and column moments), checked."""
    names = state.get(OTHER_SHAPES, [])
    containers = state.get("state")
    if (not isinstance(names, list) or (not names and OTHER_SHAPES in state)
            or not all(isinstance(name, str) for name in names)
            or len(set(names)) != len(names)
            or not isinstance(containers, Mapping) or not set(names) <= set(containers)):
        raise _fail(f"{OTHER_SHAPES!r} must list distinct names of its states, at least one; "
                    f"got {_shown(names)}")
    return frozenset(names)


def _disagreeing(entries: dict[Any, _Entry], shaped_entries: dict[Any, _Entry], key: Any,
                 name: str, shape: tuple[int, ...], dtype: np.dtype[Any],
                 other_shapes: frozenset[str]) -> _Entry | None:
    """The state of ``key`` seen before that this array of state ``name`` disagrees with, or
    None: every state of one param has one dtype, and every state not in ``other_shapes`` its
    param's shape (the first such state's)."""
    first = entries.setdefault(key, (name, shape, dtype))
    if name not in other_shapes:
        first_shaped = shaped_entries.setdefault(key, (name, shape, dtype))
        if first_shaped[1] != shape:
            return first_shaped
    if _native(first[2]) != _native(dtype):
        return first
    return None


def _float(name: str, value: Any) -> float:
    """A number of the checkpoint as a float; ValueError for an int too large for one."""
    try:
        return float(value)
    except OverflowError:
        raise _fail(f"{name} is an int too large for a float") from None


def _shown(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message stays short."""
    try:
        text = repr(value)
    except ValueError:   # an int of more digits than Python converts to text
        return f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[:limit] + "...(cut)"


def _rebuild_schedule(name: str, described: Mapping[str, Any], step: int
                      ) -> tuple[Callable[[int], float], float]:
    """A schedule of fastopt.schedules from its ``to_dict()``, and its value at ``step`` (the
    coming update's), proof that it works; ValueError if it cannot be rebuilt or evaluated
    there. fastopt's schedules check their parameters (finite, step counts at most 2**53)
    and their nesting depth when built, so evaluating one is quick."""
    try:
        schedules = importlib.import_module(_SCHEDULES)
    except ImportError:
        raise ValueError(f"{name} was a {described.get('type')!r} schedule of "
                         f"{_SCHEDULES}, which this fastopt does not have") from None
    try:
        schedule = schedules.from_dict(dict(described))
    except (TypeError, ValueError, KeyError, RecursionError) as error:
        raise _fail(f"{name}'s schedule {_shown(dict(described))} cannot be rebuilt: "
                    f"{error}") from None
    if not callable(schedule):
        raise _fail(f"{name}'s schedule rebuilt as {schedule!r}, which is not callable")
    try:
        number = to_float(name, schedule(step))
    except (TypeError, ValueError, ArithmeticError, RecursionError) as error:
        raise _fail(f"{name}'s schedule {_shown(schedule)} does not work at step {step} (the "
                    f"next update's): {type(error).__name__}: {error}") from None
    if not math.isfinite(number):
        raise _fail(f"{name}'s schedule {_shown(schedule)} gives {number!r} at step {step} "
                    f"(the next update's); a hyperparameter must be finite")
    result: Callable[[int], float] = schedule
    return result, number


# ---------------------------------------------------------------------------------------------
# Files.

def _encode_key(key: Any, where: str) -> str | int:
    if isinstance(key, str):
        return str(key)
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return int(key)
    raise TypeError(f"{where}: key {key!r} ({type(key).__name__}) cannot be saved; a "
                    f"checkpoint file keeps params by str or int keys")


def _to_members(state: Mapping[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
    """The ``.npz`` members of a checked state dict: metadata first, then the arrays."""
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    record = _encode(state, "", arrays)
    text = json.dumps(record, allow_nan=True)
    return {_METADATA: np.array(text), **arrays}


def _encode(state: Mapping[str, Any], prefix: str,
            arrays: dict[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
    """The metadata record of one checkpoint (a wrapper's parts' within it); its arrays go
    to ``arrays`` as the members ``<prefix>state.<name>.<i>``."""
    record = {name: value for name, value in state.items()
              if name not in ("state", "decays", "routes", "parts")}
    described: dict[str, Any] = {}
    for name, container in state["state"].items():
        if container is None:
            described[name] = None
            continue
        if isinstance(container, Mapping):
            described[name] = {"container": "dict",
                               "keys": [_encode_key(key, f"state {name!r}")
                                        for key in container]}
            values = list(container.values())
        else:
            described[name] = {"container": "list", "length": len(container)}
            values = list(container)
        for index, array in enumerate(values):
            arrays[f"{prefix}state.{name}.{index}"] = array
    record["state"] = described
    for field in ("decays", "routes"):
        if field not in state:
            continue
        values = state[field]
        if isinstance(values, Mapping):
            record[field] = {"container": "dict",
                             "keys": [_encode_key(key, field) for key in values],
                             "values": list(values.values())}
        elif values is not None:
            record[field] = {"container": "list", "values": list(values)}
        else:
            record[field] = None
    if "parts" in state:
        record["parts"] = [_encode(part, f"{prefix}parts.{index}.", arrays)
                           for index, part in enumerate(state["parts"])]
    return record


def save(file: str | os.PathLike[str], optimizer: Any) -> None:
    """Write ``optimizer``'s checkpoint to ``file``, one ``.npz``, atomically.

    The data is written to a temporary file in the same directory, flushed and fsynced, then
    renamed over ``file`` (``os.replace``): a crash or an error during the save leaves any
    previous ``file`` whole (a crash may leave the temporary ``.fastopt-<random>.tmp`` behind).
    ``file`` is written as named: no ``.npz`` suffix is added. If ``file`` is a symbolic link,
    the file it points to is replaced (the temporary file is made beside that file) and the
    link stays. A file that is replaced keeps its permission bits; a new file gets the
    default ones (0o666 less the umask).

    Parameters
    ----------
    file : str or os.PathLike
        Where to write. A path, not an open file (the rename needs one).
    optimizer : fastopt or fastopt.reference optimizer
        Anything with a ``state_dict()`` method that returns a checkpoint's dict.

    Raises
    ------
    TypeError
        If ``file`` is not a path, or a param key is not a str or int.
    OSError
        If the file cannot be written; ``file`` is then unchanged.

    Notes
    -----
    Hyperparameters that are schedules of your own (and ``weight_decay_filter``) are not
    saved: pass them again to the constructor of the optimizer you load the file into.
    ``np.load(file, allow_pickle=False)`` reads the file; see ``fastopt.checkpoint``.
    """
    if not isinstance(file, (str, os.PathLike)) or isinstance(os.fspath(file), bytes):
        raise TypeError(f"fastopt.save writes to a path (str or os.PathLike), where it can "
                        f"replace the file atomically; got {type(file).__name__}")
    # Through symbolic links to the file they name: the link stays a link, and the
    # temporary file is made beside the target, in its file system, so the rename is atomic.
    path = os.path.realpath(os.fspath(file))
    members: dict[str, Any] = _to_members(optimizer.state_dict())
    directory = os.path.dirname(path)
    try:
        mode: int | None = stat.S_IMODE(os.stat(path).st_mode)   # an existing file keeps it
    except FileNotFoundError:
        mode = None
    temporary, descriptor = _create_temporary(directory)
    try:
        if mode is not None:
            _set_mode(descriptor, temporary, mode)
        with os.fdopen(descriptor, "wb") as stream:
            np.savez(stream, **members)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.remove(temporary)
        except OSError:
            pass
        raise
    _sync_directory(directory)


def _create_temporary(directory: str) -> tuple[str, int]:
    """A new file beside the target (mode 0o666 less the umask, as ``open`` gives)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        # a short name whatever the target's: a long target name must still be savable
        temporary = os.path.join(directory, f".fastopt-{uuid.uuid4().hex[:16]}.tmp")
        try:
            return temporary, os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory!r}")


def _set_mode(descriptor: int, path: str, mode: int) -> None:
    """Give the new file ``mode`` (the permission bits of the file it replaces)."""
    if hasattr(os, "fchmod"):
        os.fchmod(descriptor, mode)
    else:   # Windows: only the read-only bit
        os.chmod(path, mode)


def _sync_directory(directory: str) -> None:
    """Make the rename durable (POSIX); a file system that cannot is not an error."""
    if os.name != "posix":
        return
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def load(file: str | os.PathLike[str] | IO[bytes]) -> dict[str, Any]:
    """Read a checkpoint that ``fastopt.save`` wrote, as the dict ``load_state_dict`` takes.

    Every member is checked before any array is read: the file must be a ``.npz`` holding a
    fastopt ``metadata`` record of this version and exactly the float arrays it names. No
    pickle is ever loaded and no code from the file runs. Any file is read in memory and
    time bounded by its size: members must be stored or deflated and not encrypted, no member
    may claim more bytes than its bytes in the file can hold, each ``.npy`` header is read
    from its member's first bytes and checked (dtype, shape, size) before its data, the
    metadata's descriptions are checked against the members the file has, and data is read
    in bounded chunks. Schedules of ``fastopt.schedules`` are rebuilt and evaluated at the
    checkpoint's ``iter``.

    Parameters
    ----------
    file : str, os.PathLike or binary file object (readable and seekable)

    Returns
    -------
    dict
        The state dict (see ``fastopt.checkpoint``); pass it to ``opt.load_state_dict``.

    Raises
    ------
    ValueError
        If the file is truncated, damaged, not a fastopt checkpoint, of another version, or
        holds anything but what its metadata names (an object array, a pickle, an extra or a
        missing member, an array of another dtype, an encrypted or bzip2/LZMA member, a bad
        shape, a size the file cannot hold, a schedule that does not work). The message
        names the file, and the member at fault, and says which.
    OSError
        If the file cannot be opened (FileNotFoundError, PermissionError, ...).
    """
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as stream:
            return _read(stream, repr(os.fspath(file)))
    return _read(file, "the file")


# What a member may be. Stored (np.savez, fastopt.save) or deflated (np.savez_compressed):
# deflate expands at most 1032-fold (a 258-byte match costs at least two bits), so a member's
# size is bounded by bytes that are in the file. Other methods (bzip2 expands a millionfold)
# are refused unread.
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_OTHER_METHODS = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA"}
_DEFLATE_RATIO = 1032
_ENCRYPTED = 0x41        # zip flag bits: encrypted (0), strongly encrypted (6)
_MAX_HEADER = 10_000     # bytes of .npy header read at most (NumPy's own limit)
_MAX_DIMS = 64           # NumPy's
_CHUNK = 1 << 20         # bytes read (and decompressed) at a time


def _read(stream: IO[bytes], name: str) -> dict[str, Any]:
    start = stream.tell()
    magic = stream.read(6)
    end = stream.seek(0, os.SEEK_END)
    stream.seek(start)
    if magic[:2] != b"PK":
        if magic and b"PK\x03\x04".startswith(magic):
            raise ValueError(f"{name} is a truncated .npz file ({len(magic)} bytes), not a "
                             f"loadable fastopt checkpoint")
        what = ("a .npy file (one array)" if magic == b"\x93NUMPY"
                else "a pickle" if magic[:1] == b"\x80"
                else "empty" if not magic else f"not an .npz file (it starts with {magic!r})")
        raise ValueError(f"{name} is not a fastopt checkpoint: it is {what}")
    try:
        with zipfile.ZipFile(stream) as archive:
            return _read_archive(archive, name, end)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, UnicodeDecodeError,
            NotImplementedError) as error:
        # OSError here is a short or failing read of an open file: a damaged file.
        raise ValueError(f"{name} is a damaged or truncated .npz file, not a loadable "
                         f"fastopt checkpoint ({type(error).__name__}: {error})") from None


def _check_entry(info: zipfile.ZipInfo, name: str, end: int) -> None:
    """Refuse, before reading any of it, a member whose size is not bounded by the file:
    encrypted, compressed otherwise than stored or deflated, or larger than its bytes in the
    file can hold."""
    where = f"{name}: member {info.filename!r}"
    if info.flag_bits & _ENCRYPTED:
        raise ValueError(f"{where} is encrypted; a fastopt checkpoint has no encrypted "
                         f"members")
    method = _METHODS.get(info.compress_type)
    if method is None:
        other = _OTHER_METHODS.get(info.compress_type,
                                   f"compression method {info.compress_type}")
        raise ValueError(f"{where} is compressed with {other}; fastopt reads members stored "
                         f"or deflated, as np.savez and np.savez_compressed write them")
    if info.header_offset + info.compress_size > end:
        raise ValueError(f"{where} says it has {info.compress_size} bytes from offset "
                         f"{info.header_offset}, past the end of the file ({end} bytes): "
                         f"truncated or tampered with")
    limit = info.compress_size * (1 if method == "stored" else _DEFLATE_RATIO)
    if info.file_size > limit:
        raise ValueError(f"{where} says it holds {info.file_size} bytes, more than its "
                         f"{info.compress_size} {method} bytes can: tampered with")


def _read_archive(archive: zipfile.ZipFile, name: str, end: int) -> dict[str, Any]:
    infos = archive.infolist()
    members = [info.filename for info in infos]
    if len(set(members)) != len(members):
        raise ValueError(f"{name} is not a loadable fastopt checkpoint: it has members of the "
                         f"same name twice")
    if _METADATA + ".npy" not in members:
        raise ValueError(f"{name} is not a fastopt checkpoint: it has no '{_METADATA}' record "
                         f"(its members: {members[:10]})")
    for info in infos:
        _check_entry(info, name, end)
    text = _read_member(archive, _METADATA, name)
    try:
        record = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{name}: its '{_METADATA}' record is not valid JSON "
                         f"({error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{name} is not a fastopt checkpoint: its '{_METADATA}' record is "
                         f"not a JSON object")
    if record.get("format") != FORMAT or record.get("version") != VERSION:
        _check_plain_in(record, name)   # the format and version messages
    # Every description checked, every named member present and every header read before
    # any array's data: nothing is built for more entries than the file has members.
    nodes = _nodes(record, "", name, 0)   # the checkpoint, and a wrapper's parts within it
    arrays = len(members) - 1
    expected = {_METADATA + ".npy"}
    node_keys: list[dict[str, list[Any] | None]] = []
    for prefix, node in nodes:
        described_keys: dict[str, list[Any] | None] = {}
        for state_name, described in node["state"].items():
            member = f"{prefix}state.{state_name}"
            try:
                keys = _container_keys(described, f"state {prefix + state_name!r}", arrays)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
            described_keys[state_name] = keys
            if keys is None:
                continue
            expected.update(f"{member}.{index}.npy" for index in range(len(keys)))
            missing = [f"{member}.{index}" for index in range(len(keys))
                       if f"{member}.{index}.npy" not in members]
            if missing:
                raise ValueError(f"{name} is missing the arrays {missing[:10]} that its "
                                 f"metadata names")
        node_keys.append(described_keys)
    extra = sorted(set(members) - expected)
    if extra:
        raise ValueError(f"{name} holds members its metadata does not name: {extra[:10]}; "
                         f"a fastopt checkpoint holds only its metadata and state arrays")
    for (prefix, node), described_keys in zip(nodes, node_keys, strict=True):
        try:
            other_shapes = _other_shapes(node)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        first: dict[Any, _Entry] = {}
        first_shaped: dict[Any, _Entry] = {}
        for state_name, keys in described_keys.items():
            for index, key in enumerate(keys or ()):
                shape, dtype = _read_member(archive, f"{prefix}state.{state_name}.{index}",
                                            name, header_only=True)
                by_key = node["state"][state_name]["container"] == "dict"
                seen = _disagreeing(first, first_shaped, (by_key, key), state_name, shape,
                                    dtype, other_shapes)
                if seen is not None:
                    other, other_shape, other_dtype = seen
                    raise ValueError(f"{name}: " + str(_fail(
                        f"state {prefix}{state_name}[{key!r}] has shape {shape} and dtype "
                        f"{dtype}, but state {prefix}{other}[{key!r}] has shape {other_shape} "
                        f"and dtype {other_dtype}; the state of one param must agree")))
    for (prefix, node), described_keys in zip(nodes, node_keys, strict=True):
        state: dict[str, Any] = {}
        for state_name, keys in described_keys.items():
            if keys is None:
                state[state_name] = None
                continue
            loaded = [_read_member(archive, f"{prefix}state.{state_name}.{index}", name)
                      for index in range(len(keys))]
            state[state_name] = (dict(zip(keys, loaded, strict=True))
                                 if node["state"][state_name]["container"] == "dict"
                                 else loaded)
        node["state"] = state
        for field in ("decays", "routes"):
            if field in node or (field == "decays" and "parts" not in node):
                node[field] = _decode_decays(node.get(field), field)
    _check_plain_in(record, name)
    return record


def _nodes(record: dict[str, Any], prefix: str, name: str, depth: int
           ) -> list[tuple[str, dict[str, Any]]]:
    """The records of a checkpoint's metadata that describe arrays, with their members'
    prefix: the checkpoint's own, then its parts' (a wrapper's), depth first."""
    where = f"part {prefix[:-1]!r}'s " if prefix else ""
    if not isinstance(record.get("state"), dict):
        raise _fail(f"{name}'s {where}'state' must map state names to their descriptions")
    found = [(prefix, record)]
    if "parts" in record:
        parts = record["parts"]
        if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
            raise _fail(f"{name}'s {where}'parts' must be a list of checkpoints")
        if depth >= MAX_DEPTH:
            raise _fail(f"{name}: wrappers' checkpoints nest more than {MAX_DEPTH} deep")
        for index, part in enumerate(parts):
            found += _nodes(part, f"{prefix}parts.{index}.", name, depth + 1)
    return found


def _check_plain_in(record: dict[str, Any], name: str) -> None:
    """``_check_plain``, its message starting with the file's name."""
    try:
        _check_plain(record)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a JSON object names the same field twice")
    return result


def _container_keys(described: Any, where: str, limit: int | None = None
                    ) -> list[Any] | None:
    """The keys (or positions) a metadata description names; None for no state. A list's
    length is checked against ``limit`` (the arrays the file has) before anything is built."""
    if described is None:
        return None
    if isinstance(described, dict) and described.get("container") == "dict":
        keys = described.get("keys")
        if (set(described) == {"container", "keys"} and isinstance(keys, list)
                and all(isinstance(key, (str, int)) and not isinstance(key, bool)
                        for key in keys)
                and len(set(keys)) == len(keys)):
            return keys
    if isinstance(described, dict) and described.get("container") == "list":
        length = described.get("length")
        if (set(described) == {"container", "length"} and type(length) is int
                and length >= 0):
            if limit is not None and length > limit:
                shown = length if length < 10**30 else f"an int of {length.bit_length()} bits"
                raise _fail(f"{where} is described as a list of {shown} arrays, but the "
                            f"file holds {limit} arrays in all")
            return list(range(length))
    raise _fail(f"{where} is described as {described!r}; expected None, "
                f"{{'container': 'dict', 'keys': [distinct str or int keys]}} or "
                f"{{'container': 'list', 'length': n}}")


def _decode_decays(described: Any, field: str = "decays") -> Any:
    """``decays`` (or a wrapper's ``routes``) from its description in the metadata."""
    if described is None:
        return None
    if isinstance(described, dict):
        values = described.get("values")
        if described.get("container") == "list" and set(described) == {"container", "values"}:
            if isinstance(values, list):
                return values
        keys = _container_keys({"container": "dict", "keys": described.get("keys")},
                               field) if described.get("container") == "dict" else None
        if (keys is not None and set(described) == {"container", "keys", "values"}
                and isinstance(values, list) and len(values) == len(keys)):
            return dict(zip(keys, values, strict=True))
    raise _fail(f"{field!r} is described as {described!r}; expected None, {{'container': "
                f"'dict', 'keys': [...], 'values': [...]}} or {{'container': 'list', "
                f"'values': [...]}}")


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    """Up to ``size`` bytes (fewer only at the end of the member), read in bounded chunks."""
    parts = []
    while size > 0:
        part = stream.read(min(size, _CHUNK))
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _read_header(stream: IO[bytes], where: str
                 ) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """A member's ``.npy`` header, from its first bytes only: (shape, fortran, dtype)."""
    prefix = _read_exactly(stream, 8)
    if len(prefix) < 8 or prefix[:6] != b"\x93NUMPY":
        raise ValueError(f"{where} is not a readable .npy array (it does not start as one)")
    version = (prefix[6], prefix[7])
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"{where} is not a readable .npy array (.npy format version "
                         f"{version}; fastopt writes 1.0)")
    width = 2 if version == (1, 0) else 4
    length_bytes = _read_exactly(stream, width)
    length = int.from_bytes(length_bytes, "little")
    if len(length_bytes) < width or length > _MAX_HEADER:
        raise ValueError(f"{where} is not a readable .npy array (its header is "
                         f"{'truncated' if len(length_bytes) < width else f'{length} bytes'}; "
                         f"at most {_MAX_HEADER} are read)")
    header = _read_exactly(stream, length)
    if len(header) < length:
        raise ValueError(f"{where} is not a readable .npy array (its header is truncated)")
    parse = (np.lib.format.read_array_header_1_0 if version == (1, 0)
             else np.lib.format.read_array_header_2_0)
    try:
        shape, fortran, dtype = parse(io.BytesIO(length_bytes + header),
                                      max_header_size=_MAX_HEADER)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError,
            OverflowError) as error:
        raise ValueError(f"{where} is not a readable .npy array ({error})") from None
    if not (isinstance(shape, tuple) and len(shape) <= _MAX_DIMS
            and all(type(length) is int and length >= 0 for length in shape)):
        raise ValueError(f"{where} has the shape {shape!r} in its .npy header; expected a "
                         f"tuple of at most {_MAX_DIMS} ints >= 0")
    return shape, bool(fortran), dtype


def _read_member(archive: zipfile.ZipFile, member: str, name: str,
                 header_only: bool = False) -> Any:
    """One ``.npy`` member: its header read and checked first (``header_only``: return its
    (shape, dtype) then), then its data, in bounded chunks into an array of the size checked;
    the metadata as str, a state array as a native-order, C-contiguous, writeable float
    array."""
    info = archive.getinfo(member + ".npy")
    where = f"{name}: member {member!r}"
    with archive.open(info) as stream:
        shape, fortran, dtype = _read_header(stream, where)
        if dtype.hasobject:
            raise ValueError(f"{where} holds pickled Python objects (dtype {dtype}); a fastopt "
                             f"checkpoint holds only numbers and text, and never loads a "
                             f"pickle")
        if member == _METADATA:
            if dtype.kind != "U" or shape != ():
                raise ValueError(f"{where} is an array of dtype {dtype} and shape {shape}; "
                                 f"expected a 0-d unicode array holding JSON")
        elif _native(dtype) not in _FLOAT_DTYPES:
            raise ValueError(f"{where} has dtype {dtype}; a checkpoint holds float16, float32 "
                             f"or float64 arrays")
        size = math.prod(shape) * dtype.itemsize
        header = stream.tell()
        if header + size != info.file_size:   # file_size is bounded by the file (_check_entry)
            raise ValueError(f"{where} is {info.file_size} bytes, but its header says "
                             f"{header + size} (shape {shape}, dtype {dtype}): truncated or "
                             f"tampered with")
        if header_only:
            return shape, dtype
        data = np.empty(size, dtype=np.uint8)
        done = 0
        while done < size:
            part = stream.read(min(size - done, _CHUNK))
            if not part:
                break
            data[done:done + len(part)] = np.frombuffer(part, dtype=np.uint8)
            done += len(part)
        if done != size or stream.read(1):   # reading to the end checks the CRC
            raise ValueError(f"{where} is truncated")
    array = data.view(dtype).reshape(shape, order="F" if fortran else "C")
    if member == _METADATA:
        return str(array[()])
    if array.dtype.isnative and array.flags.c_contiguous:
        return array
    return _copy_array(array, member)
