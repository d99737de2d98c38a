"""fastopt's optimizers: the book's classes, updated by compiled loops.

Each class takes its constructor, hyperparameter checks and per-step scalars from the
``fastopt.reference`` class of the same name (the book's code) and its ``update`` from
``fastopt._base.Optimizer``; the arithmetic is in ``fastopt/_kernels.pyx``.
"""
from __future__ import annotations

from . import reference
from ._base import Optimizer

__all__ = ["SGD", "AdaGrad", "Adam", "Momentum", "Nesterov", "RMSProp", "RMSprop"]

_SHARED = """
    Every hyperparameter is a plain attribute; a change takes effect on the next ``update``.
    Hyperparameters are checked when constructing and at every ``update`` (ValueError or
    TypeError naming the parameter).
"""


class SGD(Optimizer, reference.SGD):
    """Stochastic gradient descent: ``p -= lr*g``.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, >= 0.
    """


class Momentum(Optimizer, reference.Momentum):
    """SGD with momentum: ``v = momentum*v - lr*g; p += v``.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, >= 0.
    momentum : float, default 0.9
        Momentum coefficient, 0 <= momentum < 1.

    Attributes
    ----------
    v : dict or list of ndarray, or None
        Velocity per param (zeros at a param's first update); None before the first update.
    """


class Nesterov(Optimizer, reference.Nesterov):
    """Nesterov's accelerated gradient (Bengio et al. 2012 form), as the book since 2021::

        p += momentum*momentum*v
        p -= (1 + momentum)*lr*g
        v *= momentum
        v -= lr*g

    The same trajectory as ``torch.optim.SGD(momentum=m, nesterov=True)`` at constant lr.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, >= 0.
    momentum : float, default 0.9
        Momentum coefficient, 0 <= momentum < 1.
    velocity_first : bool, default False, keyword-only
        Update the velocity first, then the param with the new velocity (the book's 2016 code,
        the second book, Chainer)::

            v *= momentum
            v -= lr*g
            p += momentum*momentum*v
            p -= (1 + momentum)*lr*g

    Attributes
    ----------
    v : dict or list of ndarray, or None
        Velocity per param; None before the first update.
    """


class AdaGrad(Optimizer, reference.AdaGrad):
    """AdaGrad: ``h += g*g; p -= lr*g / (sqrt(h) + eps)``.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, >= 0.
    eps : float, default 1e-7, keyword-only
        Added to the denominator, > 0 (the book hard-codes 1e-7).
    eps_inside_sqrt : bool, default False, keyword-only
        Use ``p -= lr*g / sqrt(h + eps)`` (Keras, TensorFlow) instead.

    Attributes
    ----------
    h : dict or list of ndarray, or None
        Sum of squared gradients per param; None before the first update.
    """


class RMSprop(Optimizer, reference.RMSprop):
    """RMSprop::

        h *= decay_rate
        h += (1 - decay_rate)*g*g
        p -= lr*g / (sqrt(h) + eps)

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, >= 0.
    decay_rate : float, default 0.99
        Decay of the squared-gradient average, 0 <= decay_rate < 1.
    eps : float, default 1e-7, keyword-only
        Added to the denominator, > 0.
    eps_inside_sqrt : bool, default False, keyword-only
        Use ``p -= lr*g / sqrt(h + eps)`` (the seed notes' RMSProp, Keras, TensorFlow).

    Attributes
    ----------
    h : dict or list of ndarray, or None
        Running average of squared gradients per param; None before the first update.
    """


RMSProp = RMSprop


class Adam(Optimizer, reference.Adam):
    """Adam as in the book: bias correction folded into the step size::

        t += 1                                            (the attribute ``iter``)
        lr_t = lr*sqrt(1 - beta2**t) / (1 - beta1**t)     (a float64, computed in Python)
        m += (1 - beta1)*(g - m)
        v += (1 - beta2)*(g**2 - v)
        p -= lr_t*m / (sqrt(v) + eps)

    For float32 arrays the first two statements are float32 arithmetic and the last one is
    computed in float64 and rounded once to float32, exactly as NumPy >= 2 evaluates the book's
    code (``lr_t`` is a NumPy float64 there).

    Parameters
    ----------
    lr : float, default 0.001
        Learning rate, >= 0.
    beta1, beta2 : float, default 0.9 and 0.999
        Decay rates of the first and second moment estimates, each in [0, 1).
    eps : float, optional, keyword-only
        Added to the denominator, > 0. Default 1e-7 (the book), or 1e-8 with ``paper_form``.
    eps_inside_sqrt : bool, default False, keyword-only
        Use ``sqrt(v + eps)`` (``sqrt(v_hat + eps)`` with ``paper_form``) as the denominator.
    paper_form : bool, default False, keyword-only
        Adam as in Kingma & Ba's Algorithm 1 and the seed notes (what PyTorch and optax do),
        with bias-corrected moments, all in the array's dtype::

            m = beta1*m + (1 - beta1)*g
            v = beta2*v + (1 - beta2)*g*g
            m_hat = m / (1 - beta1**t)
            v_hat = v / (1 - beta2**t)
            p -= lr*m_hat / (sqrt(v_hat) + eps)

    Attributes
    ----------
    m, v : dict or list of ndarray, or None
        First and second moment estimates per param; None before the first update.
    iter : int
        Number of ``update`` calls so far.
    """


for _cls in (SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam):
    _cls.__doc__ = (_cls.__doc__ or "").rstrip() + "\n" + _SHARED
del _cls
