"""The second book's names: ``from fastopt.book2 import *`` for ``from common.optimizer import *``.

*Deep Learning from Scratch 2* (Koki Saitoh, O'Reilly Japan, 2018; code at
https://github.com/oreilly-japan/deep-learning-from-scratch-2). Its ``common/optimizer.py``
has the first book's six classes, signatures and defaults, and keeps params and state in lists
(``model.params``), which every fastopt optimizer takes. One rule differs: its ``Nesterov``
updates the velocity first, then the param with the new velocity (the order the first book
used until 2021)::

    v *= momentum
    v -= lr*g
    p += momentum*momentum*v
    p -= (1 + momentum)*lr*g

so ``Nesterov`` here defaults to ``velocity_first=True``; the other five are fastopt's own
classes. A star import gives the six classes and ``np`` (the book's file has it from
``from common.np import *``), but not the ``sys``, ``os`` and ``GPU`` that the book's file
also leaks: fastopt runs on NumPy arrays only, never CuPy.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _flavour, optimizers
from .optimizers import SGD, AdaGrad, Adam, Momentum, RMSprop

__all__ = ["SGD", "AdaGrad", "Adam", "Momentum", "Nesterov", "RMSprop", "np"]


class Nesterov(optimizers.Nesterov):
    """Nesterov momentum as in the second book: ``fastopt.Nesterov(velocity_first=True)``.

    ::

        v *= momentum
        v -= lr*g
        p += momentum*momentum*v
        p -= (1 + momentum)*lr*g

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, >= 0.
    momentum : float, default 0.9
        Momentum coefficient, 0 <= momentum < 1.
    velocity_first : bool, default True, keyword-only
        False gives ``fastopt.Nesterov``'s order (the first book's since 2021).
    **kwargs
        Every other keyword of ``fastopt.Nesterov``.

    Attributes
    ----------
    v : list (or dict) of ndarray, or None
        Velocity per param; None before the first update.
    """

    __signature__ = _flavour.signature(optimizers.Nesterov, velocity_first=True)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9, *,
                 velocity_first: bool = True, **kwargs: Any) -> None:
        super().__init__(lr, momentum, velocity_first=velocity_first, **kwargs)
