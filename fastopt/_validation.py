"""The checks fastopt makes of what it is given, and their messages, in one place.

Hyperparameters are numbers (Python or NumPy ints and floats, converted to Python floats) or
schedules (callables of the step count); each has a check of its range. Options are bools.
Every check raises TypeError for a value of the wrong kind and ValueError for one out of
range, naming what was checked and, through ``where``, when (a schedule's step, a
checkpoint). Nothing here changes anything: callers check everything before they write.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np

#: A range check of a float hyperparameter: ``check(name, value, where)`` raises or returns.
Check: TypeAlias = Callable[[str, float, str], None]
#: The check of a setting (an option that is neither a float nor a bool: an int, a string, a
#: tuple of numbers): ``check(name, value)`` returns the value in its one form, or raises.
SettingCheck: TypeAlias = Callable[[str, Any], Any]


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


def check_nonpositive(name: str, value: float, where: str = "") -> None:
    """``value`` must be finite and <= 0 (Adafactor's ``beta2_decay``)."""
    if not -math.inf < value <= 0:
        raise ValueError(f"{name} must be finite and <= 0; got {value!r}{where}")


def check_at_least_one(name: str, value: float, where: str = "") -> None:
    """``value`` must be finite and >= 1 (Adafactor's clipping threshold ``d``)."""
    if not 1 <= value < math.inf:
        raise ValueError(f"{name} must be finite and >= 1; got {value!r}{where}")


def check_unit_interval(name: str, value: float, where: str = "") -> None:
    """``value`` must satisfy 0 <= value <= 1 (a product of momentum coefficients)."""
    if not 0 <= value <= 1:
        raise ValueError(f"{name!r} must be a number in [0, 1] (a product of momentum "
                         f"coefficients); got {value!r}{where}")


def check_weight_sum(name: str, value: float, where: str = "") -> None:
    """``value`` must be >= 0, inf included (a sum of Schedule-Free's averaging weights)."""
    if not 0 <= value:
        raise ValueError(f"{name!r} must be a number >= 0 (a sum of averaging weights); got "
                         f"{value!r}{where}")


def check_running_max(name: str, value: float, where: str = "") -> None:
    """``value`` must be -1 (no step yet) or finite and >= 0 (the largest learning rate so
    far)."""
    if not (value == -1 or 0 <= value < math.inf):
        raise ValueError(f"{name!r} must be -1 (before the first step) or a finite number "
                         f">= 0 (the largest learning rate so far); got {value!r}{where}")


def check_flag(name: str, value: float, where: str = "") -> None:
    """``value`` must be 0.0 or 1.0 (a mode kept as float state)."""
    if value != 0 and value != 1:
        raise ValueError(f"{name!r} must be 1.0 (on) or 0.0 (off); got {value!r}{where}")


def check_option(name: str, value: Any) -> bool:
    """A boolean option: a bool or NumPy bool, nothing merely truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r} ({type(value).__name__})")
    return bool(value)


def check_iteration_count(name: str, value: Any) -> int:
    """An int ``0 <= value < 100`` (a number of iterations per step, as torch's Muon
    ``ns_steps``), not a bool nor a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int with 0 <= {name} < 100; got {value!r} "
                        f"({type(value).__name__})")
    if not 0 <= value < 100:
        raise ValueError(f"{name} must be an int with 0 <= {name} < 100; got {value!r}")
    return int(value)


def check_three_floats(name: str, value: Any) -> tuple[float, float, float]:
    """A tuple (or list) of three finite real numbers, as a tuple of Python floats (Muon's
    ``ns_coefficients``)."""
    if not isinstance(value, (tuple, list)) or len(value) != 3 or not all(
            is_real_scalar(item) for item in value):
        raise TypeError(f"{name} must be a tuple of three real numbers (a, b, c); got "
                        f"{value!r} ({type(value).__name__})")
    numbers_ = tuple(to_float(f"{name}[{index}]", item) for index, item in enumerate(value))
    if not all(math.isfinite(item) for item in numbers_):
        raise ValueError(f"{name} must be three finite numbers; got {value!r}")
    return numbers_[0], numbers_[1], numbers_[2]


def check_choice(*choices: str | None) -> SettingCheck:
    """The check of a setting that is one of ``choices`` (strings, or None)."""
    def check(name: str, value: Any) -> str | None:
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be one of {list(choices)}; got {value!r} "
                            f"({type(value).__name__})")
        if value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}")
        return str(value) if value is not None else None
    return check


def plain_setting(value: Any) -> Any:
    """A setting's value as plain data for a checkpoint: a tuple as a list."""
    return list(value) if isinstance(value, tuple) else value


def check_param_ndim(optimizer: str, key: Any, shape: tuple[int, ...], ndim: int) -> None:
    """A param of a rule that takes ``ndim``-dimensional params only (Muon: matrices) must
    have ``ndim`` dims; the message points to ``fastopt.Partition`` for the others."""
    if len(shape) != ndim:
        raise ValueError(
            f"param {key!r} has shape {shape}; {optimizer} updates {ndim}-D params only; "
            f"route the others to another optimizer with fastopt.Partition([(lambda k, p: "
            f"p.ndim == {ndim}, {optimizer}()), (None, AdamW())])")


def check_max_grad_norm(value: Any, where: str = "") -> float | None:
    """``max_grad_norm``: None (no clipping) or a number > 0, as a float."""
    if value is None:
        return None
    norm = to_float("max_grad_norm", value, where)
    if not norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 (or None); got {norm!r}{where}")
    return norm


def check_decay_filter(value: Any) -> None:
    """``weight_decay_filter``: None or a callable of ``(key, param)``."""
    if value is not None and not callable(value):
        raise TypeError(f"weight_decay_filter must be a callable of (key, param) or None; "
                        f"got {value!r}")


def decision(chooser: Callable[[Any, Any], Any], key: Any, param: Any) -> bool:
    """``weight_decay_filter(key, param)``, which must answer True or False."""
    answer = chooser(key, param)
    if not isinstance(answer, (bool, np.bool_)):
        raise TypeError(f"weight_decay_filter({key!r}, param) must return True or False; got "
                        f"{answer!r}")
    return bool(answer)


def describe(value: Any) -> str:
    """What a value is, for error messages: 'an ndarray of dtype ...', 'a float -7.0'."""
    name = type(value).__name__
    article = "an" if name[0] in "aeiou" else "a"
    if isinstance(value, np.ndarray):
        return f"{article} {name} of dtype {value.dtype} and shape {value.shape}"
    if np.ndim(value) == 0:
        return f"{article} {name} {value!r}"
    return f"{article} {name}"


def is_real_scalar(value: Any) -> bool:
    """A real number that is not a bool nor an array."""
    return (isinstance(value, (numbers.Real, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_, np.ndarray)))
