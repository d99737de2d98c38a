"""Schedules: hyperparameters that change with the step count.

Every float hyperparameter of a fastopt optimizer (``lr``, ``momentum``, ``beta1``, ...) may be
a schedule: a callable of the step ``k`` (an int, the optimizer's ``iter`` before the update,
0 at the first update) returning a float. The optimizer calls it once per ``update`` and
checks the value like a constant. Any callable works (``lambda k: 0.1/(k + 1)``); the classes
here are the common ones, written so that a run stopped and resumed gets the same values:

- each is a pure function of ``k``: no state, no counter, immutable once built;
- each returns a Python float, computed in float64 by the formula in its docstring, in the
  order written there, so the same ``k`` always gives the same bits;
- each has a repr that rebuilds it, compares equal by its parameters, pickles, and turns into
  plain data with ``to_dict()`` (str, int, float, lists and dicts; no code), which
  ``from_dict`` turns back into the schedule. A checkpoint stores fastopt's own schedules
  that way; a user's callable cannot be stored and must be passed again after loading.

The lecture notes' linear decay of the learning rate until step ``n`` and their growing
momentum coefficient are ``LinearDecay`` and ``LinearRamp``::

    from fastopt import Momentum
    from fastopt.schedules import LinearDecay, LinearRamp

    opt = Momentum(lr=LinearDecay(0.1, 1000), momentum=LinearRamp(0.5, 0.9, 1000))

Steps
-----
A schedule takes ``k`` as a Python or NumPy integer ``>= 0``: a bool or a float raises
TypeError, a negative ``k`` ValueError (the optimizer always passes its ``iter``, an int >= 0).

Limits
------
Every number of steps a constructor takes (``n``, ``steps``, ``step_size``, a boundary) is an
int from 1 to 2**53, the step counts a float holds exactly (an optimizer's ``iter`` stays
below 2**53), and every real parameter is finite: anything else raises ValueError when the
schedule is built, not at an update. ``Warmup`` and ``Join`` nest at most 32 levels deep.
``from_dict`` builds through the constructors, so the same holds for a schedule read from a
checkpoint.
"""
from __future__ import annotations

import bisect
import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

__all__ = ["Constant", "CosineDecay", "ExponentialDecay", "InverseTimeDecay", "Join",
           "LinearDecay", "LinearRamp", "Schedule", "StepDecay", "Warmup", "from_dict"]

ScheduleLike = Callable[[int], float]


# --- argument checks ---------------------------------------------------------------------------

def _real(owner: str, name: str, value: Any) -> float:
    """``value`` as a finite Python float, or a TypeError/ValueError naming ``owner.name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number (a Python or NumPy int or "
                        f"float); got {value!r} ({type(value).__name__})")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{owner}: {name} must be finite; got an int too large for a "
                         f"float") from None
    if not math.isfinite(number):
        raise ValueError(f"{owner}: {name} must be finite; got {value!r}")
    return number


# The largest number of steps a schedule takes: a step count a float holds exactly, as an
# optimizer's ``iter`` always is (a checkpoint's ``iter`` is below it too).
_MAX_STEPS = 2**53
# How deep fastopt's schedules may be nested (a ``Warmup`` of a ``Join`` of ... counts each
# level): far more than any real schedule needs, and few enough that evaluating one stays
# far from Python's recursion limit.
_MAX_DEPTH = 32


def _count(owner: str, name: str, value: Any) -> int:
    """``value`` as a Python int in [1, _MAX_STEPS], or a TypeError/ValueError naming
    ``owner.name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int >= 1 (a number of steps); got "
                        f"{value!r} ({type(value).__name__})")
    number = int(value)
    if number < 1:
        raise ValueError(f"{owner}: {name} must be >= 1; got {value!r}")
    if number > _MAX_STEPS:
        shown = repr(value) if number < 10**30 else f"an int of {number.bit_length()} bits"
        raise ValueError(f"{owner}: {name} must be at most 2**53 (a step count a float holds "
                         f"exactly); got {shown}")
    return number


def _depth(value: Any) -> int:
    """How deep fastopt's schedules are nested in ``value`` (0 for anything else)."""
    if not isinstance(value, Schedule):
        return 0
    parts: list[Any] = []
    for name in value._fields:
        field = getattr(value, name)
        parts.extend(field if isinstance(field, tuple) else (field,))
    return 1 + max(map(_depth, parts), default=0)


def _check_depth(owner: str, parts: Iterable[Any]) -> None:
    """ValueError if ``owner`` around ``parts`` would nest deeper than _MAX_DEPTH."""
    depth = 1 + max((_depth(part) for part in parts), default=0)
    if depth > _MAX_DEPTH:
        raise ValueError(f"{owner}: schedules nested {depth} deep; at most {_MAX_DEPTH} "
                         f"levels of Warmup and Join are allowed")


def _step(owner: Schedule, k: Any) -> int:
    """The step ``k`` as a Python int >= 0, or a TypeError/ValueError."""
    if type(k) is int and k >= 0:   # the optimizer's case, first
        return k
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{type(owner).__name__}: the step must be an int >= 0 (the "
                        f"optimizer's iter); got {k!r} ({type(k).__name__})")
    if k < 0:
        raise ValueError(f"{type(owner).__name__}: the step must be >= 0; got {k!r}")
    return int(k)


def _interpolate(start: float, end: float, k: int, n: int) -> float:
    """The notes' linear decay: ``a = k/n; (1 - a)*start + a*end`` (for ``k < n``)."""
    a = k / n
    return (1 - a) * start + a * end


# --- the schedules -----------------------------------------------------------------------------

class Schedule:
    """Base class of fastopt's schedules: immutable, compared and pickled by parameters.

    A subclass lists its constructor's parameters in ``_fields``, stores each under that
    name in ``__init__`` (through ``object.__setattr__``) and implements ``__call__``.
    """

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def __call__(self, k: int) -> float:
        raise NotImplementedError

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={_plain_repr(value)}"
                           for name, value in zip(self._fields, self._values(), strict=True))
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Schedule)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; build a new schedule")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; build a new schedule")

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt through the constructor, which checks the parameters again.
        return (type(self), self._values())

    def to_dict(self) -> dict[str, Any]:
        """The schedule as plain data: ``{"type": class name, parameter: value, ...}``.

        Values are str, int, float, and lists and dicts of them (a schedule inside a
        ``Warmup`` or ``Join`` becomes its own dict). ``from_dict`` rebuilds the schedule.

        Raises
        ------
        TypeError
            If the schedule holds a callable that is not one of fastopt's schedules (in a
            ``Warmup`` or ``Join``): code cannot be stored as data.
        """
        data: dict[str, Any] = {"type": type(self).__name__}
        for name, value in zip(self._fields, self._values(), strict=True):
            data[name] = _to_plain(self, name, value)
        return data


def _plain_repr(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_plain_repr(item) for item in value) + "]"
    return repr(value)


def _to_plain(owner: Schedule, name: str, value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_plain(owner, f"{name}[{i}]", item) for i, item in enumerate(value)]
    if isinstance(value, Schedule):
        return value.to_dict()
    if callable(value):
        raise TypeError(f"{type(owner).__name__}.to_dict: {name} is {value!r}, not one of "
                        f"fastopt.schedules' classes; a callable cannot be stored as data, so "
                        f"pass it again after loading")
    return value


class Constant(Schedule):
    """The same value at every step: ``value``.

    Parameters
    ----------
    value : float
        The value, a finite real number.
    """

    __slots__ = ("value",)
    _fields = ("value",)
    value: float

    def __init__(self, value: float) -> None:
        object.__setattr__(self, "value", _real("Constant", "value", value))

    def __call__(self, k: int) -> float:
        _step(self, k)
        return self.value


class LinearRamp(Schedule):
    """Linear from ``start`` to ``end`` over ``n`` steps, then ``end``.

    For step ``k``::

        a = k/n; (1 - a)*start + a*end     if k < n
        end                                if k >= n

    The lecture notes' momentum coefficient, "small at first, then slowly larger", is
    ``LinearRamp(0.5, 0.9, n)``; ``end`` may also be smaller than ``start``.

    Parameters
    ----------
    start : float
        The value at step 0, a finite real number.
    end : float
        The value from step ``n`` on, a finite real number.
    n : int
        The number of steps the ramp takes, >= 1 and <= 2**53.
    """

    __slots__ = ("end", "n", "start")
    _fields = ("start", "end", "n")
    start: float
    end: float
    n: int

    def __init__(self, start: float, end: float, n: int) -> None:
        object.__setattr__(self, "start", _real("LinearRamp", "start", start))
        object.__setattr__(self, "end", _real("LinearRamp", "end", end))
        object.__setattr__(self, "n", _count("LinearRamp", "n", n))

    def __call__(self, k: int) -> float:
        k = _step(self, k)
        if k >= self.n:
            return self.end
        return _interpolate(self.start, self.end, k, self.n)


class LinearDecay(Schedule):
    """The lecture notes' linear learning-rate decay until step ``n``, then constant.

    For step ``k``::

        a = k/n; (1 - a)*start + a*end     if k < n
        end                                if k >= n

    with ``end = 0.01*start`` unless given ("about 1% of the start", as the notes advise).
    The same formula as ``LinearRamp``, with the notes' default end.

    Parameters
    ----------
    start : float
        The value at step 0 (the notes' lr_0), a finite real number.
    n : int
        The step from which the value stays ``end``, >= 1 and <= 2**53.
    end : float, optional
        The value from step ``n`` on (the notes' lr_n); default ``0.01*start``.
    """

    __slots__ = ("end", "n", "start")
    _fields = ("start", "n", "end")
    start: float
    n: int
    end: float

    def __init__(self, start: float, n: int, end: float | None = None) -> None:
        first = _real("LinearDecay", "start", start)
        object.__setattr__(self, "start", first)
        object.__setattr__(self, "n", _count("LinearDecay", "n", n))
        object.__setattr__(self, "end",
                           0.01 * first if end is None else _real("LinearDecay", "end", end))

    def __call__(self, k: int) -> float:
        k = _step(self, k)
        if k >= self.n:
            return self.end
        return _interpolate(self.start, self.end, k, self.n)


class ExponentialDecay(Schedule):
    """``start*rate**k``: multiplied by ``rate`` at every step.

    Parameters
    ----------
    start : float
        The value at step 0, a finite real number.
    rate : float
        The factor per step, 0 < rate <= 1.
    """

    __slots__ = ("rate", "start")
    _fields = ("start", "rate")
    start: float
    rate: float

    def __init__(self, start: float, rate: float) -> None:
        object.__setattr__(self, "start", _real("ExponentialDecay", "start", start))
        factor = _real("ExponentialDecay", "rate", rate)
        if not 0 < factor <= 1:
            raise ValueError(f"ExponentialDecay: rate must satisfy 0 < rate <= 1; got {rate!r}")
        object.__setattr__(self, "rate", factor)

    def __call__(self, k: int) -> float:
        k = _step(self, k)
        return self.start * self.rate**k


class StepDecay(Schedule):
    """``start*gamma**(k//step_size)``: multiplied by ``gamma`` every ``step_size`` steps.

    Parameters
    ----------
    start : float
        The value for steps 0 to ``step_size - 1``, a finite real number.
    step_size : int
        Steps between two decays, >= 1 and <= 2**53.
    gamma : float
        The factor at each decay, 0 < gamma <= 1.
    """

    __slots__ = ("gamma", "start", "step_size")
    _fields = ("start", "step_size", "gamma")
    start: float
    step_size: int
    gamma: float

    def __init__(self, start: float, step_size: int, gamma: float) -> None:
        object.__setattr__(self, "start", _real("StepDecay", "start", start))
        object.__setattr__(self, "step_size", _count("StepDecay", "step_size", step_size))
        factor = _real("StepDecay", "gamma", gamma)
        if not 0 < factor <= 1:
            raise ValueError(f"StepDecay: gamma must satisfy 0 < gamma <= 1; got {gamma!r}")
        object.__setattr__(self, "gamma", factor)

    def __call__(self, k: int) -> float:
        k = _step(self, k)
        return self.start * self.gamma ** (k // self.step_size)


class CosineDecay(Schedule):
    """Half a cosine from ``start`` down to ``end`` over ``n`` steps, then ``end``.

    For step ``k``::

        end + (start - end)*(1 + cos(pi*k/n))/2     if k < n
        end                                         if k >= n

    the closed form of torch's ``CosineAnnealingLR`` (``eta_min=end``, ``T_max=n``), which
    rises again after ``n``; this one stays at ``end``.

    Parameters
    ----------
    start : float
        The value at step 0, a finite real number.
    n : int
        The step from which the value stays ``end``, >= 1 and <= 2**53.
    end : float, default 0.0
        The final value, a finite real number.
    """

    __slots__ = ("end", "n", "start")
    _fields = ("start", "n", "end")
    start: float
    n: int
    end: float

    def __init__(self, start: float, n: int, end: float = 0.0) -> None:
        object.__setattr__(self, "start", _real("CosineDecay", "start", start))
        object.__setattr__(self, "n", _count("CosineDecay", "n", n))
        object.__setattr__(self, "end", _real("CosineDecay", "end", end))

    def __call__(self, k: int) -> float:
        k = _step(self, k)
        if k >= self.n:
            return self.end
        return self.end + (self.start - self.end) * (1 + math.cos(math.pi * k / self.n)) / 2


class InverseTimeDecay(Schedule):
    """``start/(1 + decay*k)``.

    Parameters
    ----------
    start : float
        The value at step 0, a finite real number.
    decay : float
        How fast the value falls, >= 0 (0: constant).
    """

    __slots__ = ("decay", "start")
    _fields = ("start", "decay")
    start: float
    decay: float

    def __init__(self, start: float, decay: float) -> None:
        object.__setattr__(self, "start", _real("InverseTimeDecay", "start", start))
        rate = _real("InverseTimeDecay", "decay", decay)
        if not rate >= 0:
            raise ValueError(f"InverseTimeDecay: decay must be >= 0; got {decay!r}")
        object.__setattr__(self, "decay", rate)

    def __call__(self, k: int) -> float:
        k = _step(self, k)
        return self.start / (1 + self.decay * k)


def _schedule_arg(owner: str, name: str, value: Any) -> ScheduleLike:
    if not callable(value):
        raise TypeError(f"{owner}: {name} must be a schedule (a callable of the step); got "
                        f"{value!r} ({type(value).__name__})")
    schedule: ScheduleLike = value
    return schedule


class Warmup(Schedule):
    """Linear warmup from ``start`` to ``schedule``'s first value, then ``schedule``.

    For step ``k``, with ``peak = schedule(0)``::

        a = k/steps; (1 - a)*start + a*peak     if k < steps
        schedule(k - steps)                     if k >= steps

    The wrapped schedule starts from its own step 0 when the warmup ends, so
    ``Warmup(CosineDecay(0.1, 900), 100)`` takes 1000 steps in all; it is the same as
    ``Join([LinearRamp(start, peak, steps), schedule], [steps])``. With the default
    ``start=0.0`` the first update has the value 0.

    Parameters
    ----------
    schedule : callable of the step
        What follows the warmup: one of these classes (then ``to_dict`` works) or any
        callable of the step returning a real number.
    steps : int
        The length of the warmup, >= 1 and <= 2**53.
    start : float, default 0.0
        The value at step 0, a finite real number.
    """

    __slots__ = ("schedule", "start", "steps")
    _fields = ("schedule", "steps", "start")
    schedule: ScheduleLike
    steps: int
    start: float

    def __init__(self, schedule: ScheduleLike, steps: int, start: float = 0.0) -> None:
        object.__setattr__(self, "schedule", _schedule_arg("Warmup", "schedule", schedule))
        _check_depth("Warmup", [schedule])
        object.__setattr__(self, "steps", _count("Warmup", "steps", steps))
        object.__setattr__(self, "start", _real("Warmup", "start", start))

    def __call__(self, k: int) -> float:
        k = _step(self, k)
        if k >= self.steps:
            return self.schedule(k - self.steps)
        peak = self.schedule(0)
        if isinstance(peak, bool) or not isinstance(peak, numbers.Real):
            raise TypeError(f"Warmup: the wrapped schedule's value at step 0 must be a real "
                            f"number; got {peak!r} ({type(peak).__name__})")
        return _interpolate(self.start, float(peak), k, self.steps)


class Join(Schedule):
    """Schedules one after another, each starting again from its own step 0.

    With ``boundaries = [b1, b2, ...]`` and ``schedules = [s0, s1, s2, ...]``, step ``k``
    gives::

        s0(k)          if k < b1
        s1(k - b1)     if b1 <= k < b2
        s2(k - b2)     if b2 <= k ...

    as optax's ``join_schedules`` does. For example ``Join([Constant(0.1), LinearDecay(0.1,
    900)], [100])`` holds 0.1 for 100 steps, then decays linearly over 900 more.

    Parameters
    ----------
    schedules : sequence of callables of the step
        At least one; each one of these classes (then ``to_dict`` works) or any callable of
        the step returning a real number.
    boundaries : sequence of int
        ``len(schedules) - 1`` steps, strictly increasing, each >= 1 and <= 2**53: where the
        next schedule takes over.
    """

    __slots__ = ("boundaries", "schedules")
    _fields = ("schedules", "boundaries")
    schedules: tuple[ScheduleLike, ...]
    boundaries: tuple[int, ...]

    def __init__(self, schedules: Iterable[ScheduleLike], boundaries: Iterable[int]) -> None:
        if (isinstance(schedules, (Mapping, str)) or callable(schedules)
                or not isinstance(schedules, Iterable)):
            raise TypeError(f"Join: schedules must be a sequence of schedules; got "
                            f"{schedules!r} ({type(schedules).__name__})")
        if not isinstance(boundaries, Iterable):
            raise TypeError(f"Join: boundaries must be a sequence of ints; got "
                            f"{boundaries!r} ({type(boundaries).__name__})")
        parts = tuple(_schedule_arg("Join", f"schedules[{i}]", schedule)
                      for i, schedule in enumerate(schedules))
        if not parts:
            raise ValueError("Join: schedules must hold at least one schedule; got none")
        steps = tuple(_count("Join", f"boundaries[{i}]", boundary)
                      for i, boundary in enumerate(boundaries))
        if len(steps) != len(parts) - 1:
            raise ValueError(f"Join: {len(parts)} schedules need {len(parts) - 1} "
                             f"boundaries; got {len(steps)}: {list(steps)}")
        for before, after in itertools.pairwise(steps):
            if not before < after:
                raise ValueError(f"Join: boundaries must be strictly increasing; got "
                                 f"{list(steps)}")
        _check_depth("Join", parts)
        object.__setattr__(self, "schedules", parts)
        object.__setattr__(self, "boundaries", steps)

    def __call__(self, k: int) -> float:
        k = _step(self, k)
        which = bisect.bisect_right(self.boundaries, k)
        offset = self.boundaries[which - 1] if which else 0
        return self.schedules[which](k - offset)


# --- from plain data ---------------------------------------------------------------------------

_CLASSES: dict[str, type[Schedule]] = {cls.__name__: cls for cls in (
    Constant, LinearRamp, LinearDecay, ExponentialDecay, StepDecay, CosineDecay,
    InverseTimeDecay, Warmup, Join)}


def from_dict(data: Mapping[str, Any]) -> Schedule:
    """Rebuild a schedule from ``Schedule.to_dict``'s plain data.

    Only fastopt's schedule classes are built, through their constructors (which check
    every parameter again); nothing is evaluated or unpickled.

    Parameters
    ----------
    data : mapping
        ``{"type": class name, parameter: value, ...}``, with a nested schedule (in a
        ``Warmup`` or ``Join``) as a mapping of its own.

    Returns
    -------
    Schedule
        A schedule equal to the one ``data`` came from.

    Raises
    ------
    TypeError
        If ``data`` is not a mapping, or a parameter has the wrong type.
    ValueError
        If the type is not one of fastopt's schedules, a parameter is missing or unknown,
        a parameter is out of range, or schedules are nested more than 32 levels deep (found
        before building the deeper ones).
    """
    return _from_dict(data, 1)


def _from_dict(data: Mapping[str, Any], depth: int) -> Schedule:
    if depth > _MAX_DEPTH:
        raise ValueError(f"from_dict: schedules nested more than {_MAX_DEPTH} deep; at most "
                         f"{_MAX_DEPTH} levels of Warmup and Join are allowed")
    if not isinstance(data, Mapping):
        raise TypeError(f"from_dict takes a dict from Schedule.to_dict; got {data!r} "
                        f"({type(data).__name__})")
    name = data.get("type")
    cls = _CLASSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"from_dict: 'type' must name one of fastopt's schedules "
                         f"({', '.join(sorted(_CLASSES))}); got {name!r}")
    given = set(data) - {"type"}
    missing = [field for field in cls._fields if field not in given]
    unknown = sorted(map(repr, given - set(cls._fields)))
    if missing or unknown:
        raise ValueError(f"from_dict: a {name} takes the keys {', '.join(cls._fields)}; "
                         + (f"missing {', '.join(missing)}" if missing else "")
                         + ("; " if missing and unknown else "")
                         + (f"unknown {', '.join(unknown)}" if unknown else ""))
    fields = {field: data[field] for field in cls._fields}
    if cls is Warmup:
        fields["schedule"] = _from_dict(fields["schedule"], depth + 1)
    elif cls is Join:
        parts = fields["schedules"]
        if not isinstance(parts, (list, tuple)):
            raise TypeError(f"from_dict: a Join's schedules must be a list of dicts; got "
                            f"{parts!r}")
        fields["schedules"] = [_from_dict(part, depth + 1) for part in parts]
    return cls(**fields)
