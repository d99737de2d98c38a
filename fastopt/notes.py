"""The Japanese lecture notes' names: ``from fastopt.notes import *`` for their classes.

Lecture notes written from *Deep Learning from Scratch* and *Deep Learning* (Goodfellow et
al.) define ``SGD``, ``Momentum`` and ``AdaGrad`` as the book does, and three classes that
differ from it:

- ``Mestrov(lr=0.01, momentum=0.9)``: Nesterov momentum under the notes' name, in the book's
  (and fastopt's default) order.
- ``RMSProp(lr=0.01, decay_rate=0.99)``: epsilon (1e-7) inside the square root,
  ``p -= lr*g / sqrt(h + 1e-7)``.
- ``Adam(lr=0.001, rho1=0.9, rho2=0.999)``: the paper's form with ``epsilon = 1e-8``,
  bias-corrected moments ``m_hat``, ``v_hat`` and ``p -= lr*m_hat / (sqrt(v_hat) + epsilon)``.

Implemented are the notes' formulas. Their Adam code has two slips that no formula in them
supports, and fastopt does not reproduce them: it allocates the state as one array instead of
one per key (``self.m = np.zeros_like(val)``), and multiplies by epsilon instead of adding
it (``np.sqrt(v) * self.epsilon``).

Each class is a fastopt class with the notes' names and defaults; every other keyword of
fastopt's class (``eps``, ``eps_inside_sqrt`` and the rest) passes through. A star import
also gives ``np``, as the notes' code uses it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _flavour, optimizers
from .optimizers import SGD, AdaGrad, Momentum
from .reference import Hyper

__all__ = ["SGD", "AdaGrad", "Adam", "Mestrov", "Momentum", "RMSProp", "np"]


class Mestrov(optimizers.Nesterov):
    """Nesterov momentum under the lecture notes' name; the same class as ``fastopt.Nesterov``.

    ::

        p += momentum*momentum*v
        p -= (1 + momentum)*lr*g
        v *= momentum
        v -= lr*g

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, >= 0.
    momentum : float, default 0.9
        Momentum coefficient, 0 <= momentum < 1.
    **kwargs
        Every other keyword of ``fastopt.Nesterov``.
    """


class RMSProp(optimizers.RMSprop):
    """RMSprop as in the lecture notes, epsilon inside the square root::

        h *= decay_rate
        h += (1 - decay_rate)*g*g
        p -= lr*g / sqrt(h + eps)

    ``fastopt.RMSprop(eps_inside_sqrt=True)``, as in Keras and TensorFlow.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, >= 0.
    decay_rate : float, default 0.99
        Decay of the squared-gradient average, 0 <= decay_rate < 1.
    eps_inside_sqrt : bool, default True, keyword-only
        False puts ``eps`` outside the root, as the book does.
    **kwargs
        Every other keyword of ``fastopt.RMSprop``, such as ``eps`` (default 1e-7).

    Attributes
    ----------
    h : dict or list of ndarray, or None
        Running average of squared gradients per param; None before the first update.
    """

    __signature__ = _flavour.signature(optimizers.RMSprop, eps_inside_sqrt=True)

    def __init__(self, lr: float = 0.01, decay_rate: float = 0.99, *,
                 eps_inside_sqrt: bool = True, **kwargs: Any) -> None:
        super().__init__(lr, decay_rate, eps_inside_sqrt=eps_inside_sqrt, **kwargs)


class Adam(optimizers.Adam):
    """Adam as in the lecture notes and Kingma & Ba's Algorithm 1::

        t += 1                                   (the attribute ``iter``)
        m = rho1*m + (1 - rho1)*g
        v = rho2*v + (1 - rho2)*g*g
        m_hat = m / (1 - rho1**t)
        v_hat = v / (1 - rho2**t)
        p -= lr*m_hat / (sqrt(v_hat) + epsilon)

    ``fastopt.Adam(lr, beta1=rho1, beta2=rho2, paper_form=True)``, all in the array's dtype.
    ``rho1``, ``rho2`` and ``epsilon`` are the attributes ``beta1``, ``beta2`` and ``eps``
    under the notes' names: setting either name changes both, and error messages use
    fastopt's names.

    Parameters
    ----------
    lr : float, default 0.001
        Learning rate, >= 0.
    rho1, rho2 : float, default 0.9 and 0.999
        Decay rates of the first and second moment estimates, each in [0, 1).
    paper_form : bool, default True, keyword-only
        False gives the book's Adam (bias correction folded into the step size).
    **kwargs
        Every other keyword of ``fastopt.Adam``, such as ``eps`` (the notes' ``epsilon``,
        default 1e-8 in this form) and ``eps_inside_sqrt``.

    Attributes
    ----------
    m, v : dict or list of ndarray, or None
        First and second moment estimates per param; None before the first update.
    iter : int
        Number of ``update`` calls so far.
    """

    __signature__ = _flavour.signature(optimizers.Adam, {"beta1": "rho1", "beta2": "rho2"},
                                       paper_form=True)

    def __init__(self, lr: float = 0.001, rho1: float = 0.9, rho2: float = 0.999, *,
                 paper_form: bool = True, **kwargs: Any) -> None:
        super().__init__(lr, rho1, rho2, paper_form=paper_form, **kwargs)

    @property
    def rho1(self) -> Hyper:
        """The notes' name for ``beta1``."""
        return self.beta1

    @rho1.setter
    def rho1(self, value: Hyper) -> None:
        self.beta1 = value

    @property
    def rho2(self) -> Hyper:
        """The notes' name for ``beta2``."""
        return self.beta2

    @rho2.setter
    def rho2(self, value: Hyper) -> None:
        self.beta2 = value

    @property
    def epsilon(self) -> Hyper:
        """The notes' name for ``eps``."""
        return self.eps

    @epsilon.setter
    def epsilon(self, value: Hyper) -> None:
        self.eps = value
