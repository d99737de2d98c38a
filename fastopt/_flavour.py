"""What the source-flavour modules (``fastopt.book``, ``fastopt.book2``, ``fastopt.notes``) share.

A flavour class is a subclass of one of fastopt's classes that changes only names and
defaults. Its ``__init__`` names what it changes and passes every other keyword through with
``**kwargs``, so each option fastopt's class takes works in every flavour too. The class's
``__signature__`` (what ``help``, ``inspect.signature`` and the repr show) is the base class's
own signature with those renames and defaults applied.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any


def signature(base: type, rename: Mapping[str, str] | None = None,
              **defaults: Any) -> inspect.Signature:
    """``base``'s constructor signature with parameters renamed (old name -> new name) and
    defaults replaced (by new name).

    Raises TypeError if ``rename`` or ``defaults`` names a parameter ``base`` does not take, so
    a flavour cannot silently drift from the class it adapts.
    """
    rename = dict(rename or {})
    defaults = dict(defaults)
    parameters = []
    for parameter in inspect.signature(base).parameters.values():
        name = rename.pop(parameter.name, parameter.name)
        parameters.append(parameter.replace(name=name,
                                            default=defaults.pop(name, parameter.default)))
    if rename or defaults:
        unknown = sorted([*rename, *defaults])
        raise TypeError(f"{base.__qualname__}() takes no parameter named {unknown}")
    return inspect.Signature(parameters)
