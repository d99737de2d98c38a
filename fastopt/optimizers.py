"""fastopt's optimizers: the book's classes and the rules current papers use, compiled.

Each class joins its rule's declaration (fastopt/_rules.py: constructor, hyperparameter
checks, state, the step's scalars) to the compiled ``update`` of ``fastopt._base.Optimizer``;
the arithmetic is in ``fastopt/_kernels.pyx``. ``fastopt.reference`` makes its NumPy classes
from the same declarations.
"""
from __future__ import annotations

from typing import Any

from . import _rules, reference
from ._base import Optimizer as Optimizer  # the base of every class here, for annotations
from ._core import Params
from ._simd import kernels as _kernels

__all__ = ["ADOPT", "LAMB", "LARS", "SGD", "AdaGrad", "Adadelta", "Adafactor", "Adam",
           "AdamW", "Adamax", "Lion", "Momentum", "Muon", "NAdam", "Nesterov", "RAdam",
           "RMSProp", "RMSprop", "ScheduleFreeAdamW", "ScheduleFreeSGD"]

_SHARED = """
    Options every optimizer takes (keyword-only)
    ---------------------------------------------
    weight_decay : float or schedule, default 0 (AdamW: 0.01)
        Coupled (L2) weight decay: the loops use ``g + weight_decay*p`` in place of ``g``,
        without writing the caller's grads (AdamW and Lion: decoupled, see their formulas).
        0 gives exactly the bits of the optimizer without decay.
    weight_decay_filter : callable (key, param) -> bool, optional
        Which params decay (default: all). Asked once per key, when the key is first seen;
        for example ``lambda key, p: p.ndim > 1`` leaves the biases out.
    max_grad_norm : float, optional
        Clip the grads by their global L2 norm, as ``fastopt.clip_grad_norm`` would, on the
        fly inside the update; the caller's grads are left as they were.

    Every float hyperparameter is a plain attribute and may be a number or a schedule: a
    callable of the step count (``iter``, 0 at the first update) returning a float, evaluated
    once per ``update`` (``fastopt.schedules``). Values are checked when constructing and at
    every ``update`` (TypeError or ValueError naming the hyperparameter, and the step for a
    schedule; nothing changes) and converted to Python floats. ``iter`` counts updates. One
    optimizer may be stepped from several threads: its updates run one after another.
"""


class SGD(Optimizer, _rules.SGD):
    """Stochastic gradient descent: ``p -= lr*g``.

    Parameters
    ----------
    lr : float or schedule, default 0.01
        Learning rate, >= 0.
    """


class Momentum(Optimizer, _rules.Momentum):
    """SGD with momentum: ``v = momentum*v - lr*g; p += v``.

    Parameters
    ----------
    lr : float or schedule, default 0.01
        Learning rate, >= 0.
    momentum : float or schedule, default 0.9
        Momentum coefficient, 0 <= momentum < 1.

    Attributes
    ----------
    v : dict or list of ndarray, or None
        Velocity per param (zeros at a param's first update); None before the first update.
    """


class Nesterov(Optimizer, _rules.Nesterov):
    """Nesterov's accelerated gradient (Bengio et al. 2012 form), as the book since 2021::

        p += momentum*momentum*v
        p -= (1 + momentum)*lr*g
        v *= momentum
        v -= lr*g

    The same trajectory as ``torch.optim.SGD(momentum=m, nesterov=True)`` at constant lr.

    Parameters
    ----------
    lr : float or schedule, default 0.01
        Learning rate, >= 0.
    momentum : float or schedule, default 0.9
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


class AdaGrad(Optimizer, _rules.AdaGrad):
    """AdaGrad: ``h += g*g; p -= lr*g / (sqrt(h) + eps)``.

    Parameters
    ----------
    lr : float or schedule, default 0.01
        Learning rate, >= 0.
    eps : float or schedule, default 1e-7, keyword-only
        Added to the denominator, > 0 (the book hard-codes 1e-7; torch's default is 1e-10).
    eps_inside_sqrt : bool, default False, keyword-only
        Use ``p -= lr*g / sqrt(h + eps)`` (Keras, TensorFlow) instead.

    Attributes
    ----------
    h : dict or list of ndarray, or None
        Sum of squared gradients per param; None before the first update.
    """


class RMSprop(Optimizer, _rules.RMSprop):
    """RMSprop, as the book::

        h *= decay_rate
        h += (1 - decay_rate)*g*g
        p -= lr*g / (sqrt(h) + eps)

    With torch's options, ``centered`` and ``momentum``::

        h *= decay_rate
        h += (1 - decay_rate)*g*g
        grad_avg += (1 - decay_rate)*(g - grad_avg)           (centered)
        d = sqrt(h - grad_avg*grad_avg) + eps                 (centered; else sqrt(h) + eps)
        momentum_buffer = momentum*momentum_buffer + g/d      (momentum != 0)
        p -= lr*momentum_buffer                               (momentum != 0; else lr*g/d)

    Parameters
    ----------
    lr : float or schedule, default 0.01
        Learning rate, >= 0.
    decay_rate : float or schedule, default 0.99
        Decay of the squared-gradient average, 0 <= decay_rate < 1 (torch's ``alpha``).
    eps : float or schedule, default 1e-7, keyword-only
        Added to the denominator, > 0 (torch's default is 1e-8).
    eps_inside_sqrt : bool, default False, keyword-only
        Use ``sqrt(h + eps)`` (``sqrt(h - grad_avg**2 + eps)`` centered) as the denominator
        (the lecture notes' RMSProp, Keras, TensorFlow).
    centered : bool, default False, keyword-only
        Divide by the estimated standard deviation rather than the root mean square.
    momentum : float or schedule, default 0, keyword-only
        0 <= momentum < 1; nonzero (or a schedule) keeps a momentum buffer.

    Attributes
    ----------
    h : dict or list of ndarray, or None
        Running average of squared gradients per param; None before the first update.
    grad_avg : dict or list of ndarray, or None
        Running average of gradients (``centered`` only).
    momentum_buffer : dict or list of ndarray, or None
        The accumulated step (``momentum`` only).
    """


RMSProp = RMSprop


class Adam(Optimizer, _rules.Adam):
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
    lr : float or schedule, default 0.001
        Learning rate, >= 0.
    beta1, beta2 : float or schedule, default 0.9 and 0.999
        Decay rates of the first and second moment estimates, each in [0, 1).
    eps : float or schedule, optional, keyword-only
        Added to the denominator, > 0. Default 1e-7 (the book), or 1e-8 with ``paper_form``.
    eps_inside_sqrt : bool, default False, keyword-only
        Use ``sqrt(v + eps)`` (``sqrt(v_hat + eps)`` with ``paper_form``) as the denominator.
    paper_form : bool, default False, keyword-only
        Adam as in Kingma & Ba's Algorithm 1 and the lecture notes (what PyTorch and optax
        do), with bias-corrected moments, all in the array's dtype::

            m = beta1*m + (1 - beta1)*g
            v = beta2*v + (1 - beta2)*g*g
            m_hat = m / (1 - beta1**t)
            v_hat = v / (1 - beta2**t)
            p -= lr*m_hat / (sqrt(v_hat) + eps)
    amsgrad : bool, default False, keyword-only
        AMSGrad (Reddi et al. 2018): keep ``v_max = maximum(v_max, v)`` and use it in place of
        ``v`` in the denominator (torch: the maximum of the raw ``v``).

    Attributes
    ----------
    m, v : dict or list of ndarray, or None
        First and second moment estimates per param; None before the first update.
    v_max : dict or list of ndarray, or None
        Running maximum of ``v`` (``amsgrad`` only).
    iter : int
        Number of ``update`` calls so far.
    """


class AdamW(Optimizer, _rules.AdamW):
    """AdamW (Loshchilov & Hutter 2019), as torch.optim.AdamW::

        t += 1
        p -= lr*weight_decay*p                                (decoupled decay, first)
        m = beta1*m + (1 - beta1)*g
        v = beta2*v + (1 - beta2)*g*g
        p -= (lr/(1 - beta1**t)) * m / (sqrt(v)/sqrt(1 - beta2**t) + eps)

    ``lr*weight_decay``, ``lr/(1 - beta1**t)`` and ``sqrt(1 - beta2**t)`` are computed in
    Python (float64); the rest in the array's dtype.

    Parameters
    ----------
    lr : float or schedule, default 0.001
    beta1, beta2 : float or schedule, default 0.9 and 0.999
    eps : float or schedule, default 1e-8, keyword-only
    weight_decay : float or schedule, default 0.01, keyword-only
        Decoupled: applied to the param, not added to the grad. Params left out by
        ``weight_decay_filter`` do not decay.
    amsgrad : bool, default False, keyword-only
        Use ``v_max = maximum(v_max, v)`` in place of ``v`` in the denominator.

    Attributes
    ----------
    m, v, v_max : dict or list of ndarray, or None
        As in Adam.
    iter : int
        Number of ``update`` calls so far.
    """


class NAdam(Optimizer, _rules.NAdam):
    """NAdam (Dozat 2016), as torch.optim.NAdam::

        t += 1
        mu_t = beta1*(1 - 0.5*0.96**(t*momentum_decay))
        mu_next = beta1*(1 - 0.5*0.96**((t + 1)*momentum_decay))
        mu_product *= mu_t                                    (the attribute ``mu_product``)
        m = beta1*m + (1 - beta1)*g
        v = beta2*v + (1 - beta2)*g*g
        d = sqrt(v/(1 - beta2**t)) + eps
        p -= (lr*(1 - mu_t)/(1 - mu_product)) * g / d
        p -= (lr*mu_next/(1 - mu_product*mu_next)) * m / d

    The momentum schedule and both step sizes are computed in Python (float64).

    Parameters
    ----------
    lr : float or schedule, default 0.002
    beta1, beta2 : float or schedule, default 0.9 and 0.999
    eps : float or schedule, default 1e-8, keyword-only
    momentum_decay : float or schedule, default 0.004, keyword-only
        >= 0.

    Attributes
    ----------
    m, v : dict or list of ndarray, or None
        First and second moment estimates.
    mu_product : float
        Product of the momentum coefficients so far.
    iter : int
        Number of ``update`` calls so far.
    """


class RAdam(Optimizer, _rules.RAdam):
    """RAdam (Liu et al. 2020), as torch.optim.RAdam::

        t += 1
        m = beta1*m + (1 - beta1)*g
        v = beta2*v + (1 - beta2)*g*g
        m_hat = m/(1 - beta1**t)
        rho_inf = 2/(1 - beta2) - 1
        rho_t = rho_inf - 2*t*beta2**t/(1 - beta2**t)
        if rho_t > 5:
            r = sqrt((rho_t - 4)*(rho_t - 2)*rho_inf / ((rho_inf - 4)*(rho_inf - 2)*rho_t))
            p -= m_hat*lr*(sqrt(1 - beta2**t)/(sqrt(v) + eps))*r
        else:
            p -= m_hat*lr

    ``rho_t``, ``r`` and the bias corrections are computed in Python (float64); with the
    default beta2 the first five steps are unrectified.

    Parameters
    ----------
    lr : float or schedule, default 0.001
    beta1, beta2 : float or schedule, default 0.9 and 0.999
    eps : float or schedule, default 1e-8, keyword-only

    Attributes
    ----------
    m, v : dict or list of ndarray, or None
        First and second moment estimates.
    iter : int
        Number of ``update`` calls so far.
    """


class Adamax(Optimizer, _rules.Adamax):
    """Adamax (Kingma & Ba 2015, section 7), as torch.optim.Adamax::

        t += 1
        m = beta1*m + (1 - beta1)*g
        u = maximum(beta2*u, abs(g) + eps)
        p -= (lr/(1 - beta1**t)) * m / u

    ``maximum`` is NumPy's: a nan in either argument gives nan.

    Parameters
    ----------
    lr : float or schedule, default 0.002
    beta1, beta2 : float or schedule, default 0.9 and 0.999
    eps : float or schedule, default 1e-8, keyword-only

    Attributes
    ----------
    m : dict or list of ndarray, or None
        First moment estimate.
    u : dict or list of ndarray, or None
        Exponentially weighted infinity norm of the gradients.
    iter : int
        Number of ``update`` calls so far.
    """


class Adadelta(Optimizer, _rules.Adadelta):
    """Adadelta (Zeiler 2012), as torch.optim.Adadelta::

        v = rho*v + (1 - rho)*g*g
        d = sqrt(u + eps)/sqrt(v + eps)*g
        u = rho*u + (1 - rho)*d*d
        p -= lr*d

    Parameters
    ----------
    lr : float or schedule, default 1.0
    rho : float or schedule, default 0.9
        0 <= rho < 1.
    eps : float or schedule, default 1e-6, keyword-only

    Attributes
    ----------
    v : dict or list of ndarray, or None
        Running average of squared gradients.
    u : dict or list of ndarray, or None
        Running average of squared updates.
    """


class Lion(Optimizer, _rules.Lion):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms")::

        c = beta1*m + (1 - beta1)*g
        p -= lr*(sign(c) + weight_decay*p)      (p -= lr*sign(c) when weight_decay is 0)
        m = beta2*m + (1 - beta2)*g

    ``sign`` is NumPy's: sign(0) = 0 and sign(nan) = nan. The decay is decoupled.

    Parameters
    ----------
    lr : float or schedule, default 1e-4
    beta1, beta2 : float or schedule, default 0.9 and 0.99
    weight_decay : float or schedule, default 0, keyword-only

    Attributes
    ----------
    m : dict or list of ndarray, or None
        Momentum (the running average of gradients).
    """


class ADOPT(Optimizer, _rules.ADOPT):
    """ADOPT (Taniguchi et al. 2024, "ADOPT: Modified Adam Can Converge with Any beta2 with
    the Optimal Rate"), as timm.optim.Adopt::

        t += 1
        if t == 1:
            v = g*g                                     (no step: v measures the grad)
        else:
            n = clip(g / maximum(sqrt(v), eps), -(t - 1)**clip_exp, (t - 1)**clip_exp)
            m += (1 - beta1)*(n - m)
            p -= lr*m
            v = beta2*v + (1 - beta2)*g*g

    The second moment that normalises a grad is the one before that grad, so the two are
    independent; the clip keeps the first steps small. ``maximum`` and ``clip`` are NumPy's (a
    nan stays nan). A param first seen after the first update starts with ``v = 0``: its first
    step is a clipped one.

    Parameters
    ----------
    lr : float or schedule, default 0.001
    beta1, beta2 : float or schedule, default 0.9 and 0.9999
    eps : float or schedule, default 1e-6, keyword-only
        The least denominator, > 0.
    clip_exp : float or schedule, default 0.333, keyword-only
        The normalised grad is clipped to ``+-(t - 1)**clip_exp``, >= 0.

    Attributes
    ----------
    m, v : dict or list of ndarray, or None
        First and second moment estimates.
    iter : int
        Number of ``update`` calls so far.
    """


class LAMB(Optimizer, _rules.LAMB):
    """LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning"), as
    timm.optim.Lamb with ``max_grad_norm=None``::

        t += 1
        m = beta1*m + (1 - beta1)*g
        v = beta2*v + (1 - beta2)*g*g
        direction = (m/(1 - beta1**t)) / (sqrt(v)/sqrt(1 - beta2**t) + eps)
        direction += weight_decay*p                           (decoupled decay)
        ratio = ||p|| / ||direction||   (1 if either is 0; only for params that decay, or all
                                         with ``always_adapt``; at most 1 with ``trust_clip``)
        p -= lr*(ratio*direction)

    Two passes: the moments and ``direction`` for every param, then each param's norms (float64
    sums of squares in fastopt.reference's fixed blocking, so every thread count gives the
    same bits) and its step. ``1 - beta1**t``, ``sqrt(1 - beta2**t)`` and the ratio are
    computed in Python (float64). timm clips the grads to a global norm of 1 by default;
    here that is ``max_grad_norm=1.0``.

    Parameters
    ----------
    lr : float or schedule, default 0.001
    beta1, beta2 : float or schedule, default 0.9 and 0.999
    eps : float or schedule, default 1e-6, keyword-only
    weight_decay : float or schedule, default 0.01, keyword-only
        Decoupled: added to the direction, not to the grad. A param that does not decay
        (``weight_decay_filter``) keeps a ratio of 1 unless ``always_adapt``.
    trust_clip : bool, default False, keyword-only
        Clip the trust ratio at 1.
    always_adapt : bool, default False, keyword-only
        Scale every param by its trust ratio, even without weight decay.

    Attributes
    ----------
    m, v : dict or list of ndarray, or None
        First and second moment estimates.
    direction : dict or list of ndarray, or None
        The last step's direction, before its trust ratio.
    iter : int
        Number of ``update`` calls so far.

    ``fastopt.distributed.ShardedOptimizer`` shards it by whole params (each on one rank: a
    shard of a param's elements has no whole norm).
    """


def _schedulefree_interpolate(params: Params, keys: list[Any], xs: list[Any], zs: list[Any],
                              momentum: float) -> None:
    """Schedule-Free's ``train()``: ``y = momentum*x + (1 - momentum)*z`` into each param, by
    the compiled loop (all at once, else param by param), NumPy's rule for a param it
    declines."""
    scalars = {"momentum": momentum}
    arrays = [params[key] for key in keys]
    if _kernels.run("schedulefree_train", arrays, xs, zs, None, None, None, None, 0.0, scalars):
        return
    for key, param, x, z in zip(keys, arrays, xs, zs, strict=True):
        if not _kernels.run("schedulefree_train", [param], [x], [z], None, None, None, None,
                            0.0, scalars):
            reference.schedulefree_interpolate(params, [key], [x], [z], momentum)


_SCHEDULE_FREE_MODES = """
    Modes
    -----
    While training, the params hold ``y``, the point where the grads are taken.
    ``opt.eval(params)`` puts ``x``, the average, into them in place (to evaluate or save the
    model), ``opt.train(params)`` puts ``y`` back (recomputed from ``x`` and ``z`` with the
    last step's statement, so it has its bits); each does nothing when the params are already
    in its mode, and ``train_mode`` (1.0 or 0.0, in checkpoints) says which they hold.
    ``update`` in eval mode raises RuntimeError. Unlike schedulefree's AdamW, a new optimizer
    starts in train mode (its ``train()`` before the first step changes no param).
    ``fastopt.distributed.ShardedOptimizer`` has no ``eval``/``train`` of its own.

    The step's scalars depend on the float state (``weight_sum``, ``lr_max``), which a call
    plan does not restate: every update takes the checked path (with one compiled call for
    all params).
"""


class ScheduleFreeAdamW(Optimizer, _rules.ScheduleFreeAdamW):
    """Schedule-Free AdamW (Defazio et al. 2024, "The Road Less Scheduled"), as
    ``schedulefree.AdamWScheduleFreeReference`` (no learning-rate schedule needed)::

        k = iter (before this step);  t = k + 1
        lr_k = lr*(t/warmup_steps if k < warmup_steps else 1)
        lr_max = max(lr_k, lr_max)                      (lr_max = -1 before the first step)
        weight = t**r * lr_max**weight_lr_power;  weight_sum += weight
        ckp1 = weight/weight_sum                        (0 if weight_sum is 0)
        z -= lr_k*weight_decay*y                        (decoupled, at y; params that decay)
        v = beta2*v + (1 - beta2)*g*g
        z -= lr_k*(g/(sqrt(v/(1 - beta2**t)) + eps))
        x = (1 - ckp1)*x + ckp1*z
        y = beta1*x + (1 - beta1)*z                     (the params, while training)

    ``z`` and ``x`` start as copies of the param at its first update, ``v`` at zero. The
    scalars (``lr_k``, ``ckp1``, ``1 - beta2**t``, ``lr_k*weight_decay``) are computed in Python
    (float64) as schedulefree does; the arrays in the param's dtype, statement by statement.
    schedulefree's ``decay_at_z`` option is not offered (its default, decay at ``y``, is).

    Parameters
    ----------
    lr : float or schedule, default 0.0025
    beta1, beta2 : float or schedule, default 0.9 and 0.999
        ``beta1`` is the interpolation between ``x`` and ``z``; ``beta2`` the second moment's.
    eps : float or schedule, default 1e-8, keyword-only
    weight_decay : float or schedule, default 0, keyword-only
        Decoupled, as schedulefree's: ``z -= lr_k*weight_decay*y``; ``weight_decay_filter``
        chooses the params, as for every optimizer.
    warmup_steps : float or schedule, default 0, keyword-only
        Linear warmup of the learning rate over that many steps, >= 0.
    r : float or schedule, default 0, keyword-only
        Polynomial weighting of the average, ``t**r``, >= 0.
    weight_lr_power : float or schedule, default 2, keyword-only
        The average's weights grow as ``lr_max**weight_lr_power``, >= 0.

    Attributes
    ----------
    z, v, x : dict or list of ndarray, or None
        The base sequence, the second moment and the average.
    weight_sum, lr_max : float
        The sum of the averaging weights and the largest ``lr_k`` so far.
    last_beta1 : float
        The last step's ``beta1``, with which ``train()`` recomputes ``y``.
    train_mode : float
        1.0 while the params hold ``y``, 0.0 after ``eval``; ``training`` is it as a bool.
    iter : int
        Number of ``update`` calls so far.
    """

    _interpolate = staticmethod(_schedulefree_interpolate)


class ScheduleFreeSGD(Optimizer, _rules.ScheduleFreeSGD):
    """Schedule-Free SGD (Defazio et al. 2024, "The Road Less Scheduled"), as
    ``schedulefree.SGDScheduleFreeReference`` (no learning-rate schedule needed)::

        k = iter (before this step);  t = k + 1
        lr_k = lr*(t/warmup_steps if k < warmup_steps else 1)
        lr_max = max(lr_k, lr_max)                      (lr_max = -1 before the first step)
        weight = t**r * lr_max**weight_lr_power;  weight_sum += weight
        ckp1 = weight/weight_sum                        (0 if weight_sum is 0)
        z -= lr_k*g                                     (g + weight_decay*y with decay)
        x = (1 - ckp1)*x + ckp1*z
        y = momentum*x + (1 - momentum)*z               (the params, while training)

    ``z`` and ``x`` start as copies of the param at its first update. The scalars are computed
    in Python (float64) as schedulefree does; the arrays in the param's dtype, statement by
    statement. schedulefree refuses ``momentum=0``; here it is allowed (then ``y = z``).

    Parameters
    ----------
    lr : float or schedule, default 1.0
    momentum : float or schedule, default 0.9
        The interpolation between ``x`` and ``z``, 0 <= momentum < 1.
    weight_decay : float or schedule, default 0, keyword-only
        Coupled, as schedulefree's: ``g + weight_decay*y`` (the params hold ``y``), through
        the transform every optimizer has (``weight_decay_filter`` chooses the params).
    warmup_steps : float or schedule, default 0, keyword-only
        Linear warmup of the learning rate over that many steps, >= 0.
    r : float or schedule, default 0, keyword-only
        Polynomial weighting of the average, ``t**r``, >= 0.
    weight_lr_power : float or schedule, default 2, keyword-only
        The average's weights grow as ``lr_max**weight_lr_power``, >= 0.

    Attributes
    ----------
    z, x : dict or list of ndarray, or None
        The base sequence and the average.
    weight_sum, lr_max : float
        The sum of the averaging weights and the largest ``lr_k`` so far.
    last_momentum : float
        The last step's ``momentum``, with which ``train()`` recomputes ``y``.
    train_mode : float
        1.0 while the params hold ``y``, 0.0 after ``eval``; ``training`` is it as a bool.
    iter : int
        Number of ``update`` calls so far.
    """

    _interpolate = staticmethod(_schedulefree_interpolate)


for _cls in (ScheduleFreeAdamW, ScheduleFreeSGD):
    _cls.__doc__ = (_cls.__doc__ or "").rstrip() + "\n" + _SCHEDULE_FREE_MODES

class Adafactor(Optimizer, _rules.Adafactor):
    """Adafactor (Shazeer and Stern 2018), as torch.optim.Adafactor 2.13::

        t += 1
        beta2_t = t**beta2_decay;  rho = min(lr, 1/sqrt(t))
        alpha = max(eps2, ||p||/sqrt(p.size)) * rho           (p before its decay)
        p *= 1 - lr*weight_decay                               (decoupled decay)
        2 dims or more (factored over the last two):
            row_var = lerp(row_var, mean(g*g, axis=-1), beta2_t)
            col_var = lerp(col_var, mean(g*g, axis=-2), beta2_t)
            v = row_var*col_var / max(mean(row_var, axis=-2), eps1)
        fewer:
            variance = lerp(variance, g*g, beta2_t);  v = variance
        update = 1/sqrt(max(v, eps1*eps1)) * g
        p -= alpha/max(1, ||update||/(sqrt(p.size)*d)) * update

    ``lerp(a, b, w)`` is torch's: ``a + w*(b - a)`` when ``|w| < 0.5``, else
    ``b - (b - a)*(1 - w)``. The sums over rows and columns are added in index order, the
    norms are float64 sums of squares in fastopt.reference's fixed blocking, and ``update`` is
    computed element by element where it is needed, never stored (``row_var*col_var`` is one
    product per element, not a materialised outer product). A param with no elements is left
    as it is (torch divides by its size). A large param is shared out over threads pass by
    pass, split where no sum depends on the split (the norms by fixed blocks, the row sums by
    rows, the column sums by columns), so the bits are the same at every thread count; the
    only allocation of an update is a C scratch for the largest param's block sums, column
    sums and per-batch means.

    Parameters
    ----------
    lr : float or schedule, default 0.01
        The largest relative step: the step's rho is ``min(lr, 1/sqrt(t))``.
    beta2_decay : float or schedule, default -0.8, keyword-only
        The second moment's weight at step t is ``t**beta2_decay`` (<= 0).
    eps1 : float, schedule or None, default None, keyword-only
        Floor of the second moment's estimate (squared: ``eps1*eps1``) and of the rows'
        mean; None: the machine epsilon of each param's dtype (torch's ``eps=(None, 1e-3)``
        is spelled ``eps1=None, eps2=1e-3``). A checkpoint keeps eps1 only as a number: load
        one saved with ``eps1=None`` into an optimizer made with ``eps1=None``.
    eps2 : float or schedule, default 1e-3, keyword-only
        Floor of the param's root mean square in the step size.
    d : float or schedule, default 1.0, keyword-only
        Clipping threshold of the update's root mean square (>= 1).
    weight_decay : float or schedule, default 0, keyword-only
        Decoupled, as torch: ``p *= 1 - lr*weight_decay`` (lr, not rho).

    Attributes
    ----------
    row_var, col_var : dict or list of ndarray, or None
        For a param of 2 or more dims, the row and column factors of the second moment:
        shapes ``shape[:-1] + (1,)`` and ``shape[:-2] + (1, shape[-1])`` (size 0 for other
        params).
    variance : dict or list of ndarray, or None
        For a param of fewer than 2 dims, its second moment, of its shape (size 0 for other
        params).
    iter : int
        Number of ``update`` calls so far.

    ``fastopt.distributed.ShardedOptimizer`` shards it by whole params (a shard of a param's
    elements has no whole rows and columns). torch's ``maximize`` has no counterpart (negate
    the grads).
    """


class Muon(Optimizer, _rules.Muon):
    """Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"),
    as torch.optim.Muon 2.13, for 2-D params::

        buf = lerp(buf, g, 1 - momentum)                       (momentum buffer)
        u = lerp(g, buf, momentum) if nesterov else buf
        x = u.T if rows > cols else u                          (a copy: rows <= cols)
        x = x / max(||u||, eps)
        ns_steps times:
            A = x @ x.T
            B = b*A + c*(A @ A)
            x = a*x + B @ x
        O = x.T if rows > cols else x
        p *= 1 - lr*weight_decay                               (decoupled decay)
        p -= adjusted_lr * O
        adjusted_lr = lr*sqrt(max(1, rows/cols))               (adjust_lr_fn None, "original")
                    = lr*0.2*sqrt(max(rows, cols))             ("match_rms_adamw")

    ``lerp(a, b, w)`` is torch's: ``a + w*(b - a)`` when ``|w| < 0.5``, else
    ``b - (b - a)*(1 - w)``. ``(a, b, c)`` is ``ns_coefficients``. Unlike torch, which casts
    the update to bfloat16 for the Newton-Schulz iteration, fastopt computes it in the param's
    dtype (float32 or float64): its results are those of torch's formula without the cast
    (tests/test_muon.py compares both). The elementwise statements (the momentum, the decay
    and the step) are compiled loops; the matrix products are NumPy's ``matmul`` (its BLAS)
    into buffers kept per param (``x``, ``A``, ``A@A``, ``B``, ``B@x`` and ``u``), made at a
    param's first update and reused: an update allocates nothing after the first. Those
    buffers are scratch, not state: they are in no checkpoint, copy or pickle. The norm is
    a float64 sum of squares in fastopt.reference's fixed blocking; ``fastopt.reference.Muon``
    runs the same matrix products, so both give the same bits.

    Only 2-D params are taken: any other (a bias, a scalar) is refused with a ValueError
    naming its key, and nothing changes. Train the others with another optimizer through
    ``fastopt.Partition``, as torch's documentation advises::

        fastopt.Partition([(lambda key, p: p.ndim == 2, fastopt.Muon()),
                           (None, fastopt.AdamW())])

    Parameters
    ----------
    lr : float or schedule, default 1e-3
    weight_decay : float or schedule, default 0.1
        Decoupled, as torch: ``p *= 1 - lr*weight_decay`` (lr, not the adjusted lr).
    momentum : float or schedule, default 0.95
        In [0, 1).
    nesterov : bool, default True, keyword-only
    ns_coefficients : tuple of three floats, default (3.4445, -4.775, 2.0315), keyword-only
        The quintic's coefficients ``(a, b, c)``; finite numbers.
    eps : float or schedule, default 1e-7, keyword-only
        The floor of the update's norm.
    ns_steps : int, default 5, keyword-only
        Newton-Schulz iterations per update, ``0 <= ns_steps < 100`` (torch's bound).
    adjust_lr_fn : None, "original" or "match_rms_adamw", default None, keyword-only
        How the learning rate follows the param's shape (see the formula).

    Attributes
    ----------
    momentum_buffer : dict or list of ndarray, or None
        The momentum buffer of each param, of its shape.
    iter : int
        Number of ``update`` calls so far.

    ``fastopt.distributed.ShardedOptimizer`` shards it by whole params (a shard of a param's
    elements is no whole matrix). ``ns_coefficients``, ``ns_steps`` and ``adjust_lr_fn`` are
    checked like the hyperparameters (TypeError or ValueError naming them) and saved in
    checkpoints (their ``settings``); they are not schedules.
    """


class LARS(Optimizer, _rules.LARS):
    """LARS (You et al. 2017, "Large Batch Training of Convolutional Networks"), as
    timm.optim.Lars::

        t += 1
        if weight_decay != 0 or always_adapt:                 (per param)
            ratio = trust_coeff*||p|| / (||g|| + ||p||*weight_decay + eps)
                                                  (1 if either norm is 0)
            ratio = min(ratio/lr, 1)                           (with trust_clip)
            g = (g + weight_decay*p)*ratio                     (decoupled decay)
        if momentum != 0:
            b = g                                              (t == 1)
            b = momentum*b + (1 - dampening)*g                 (t > 1)
            g = g + momentum*b if nesterov else b
        p -= lr*g

    The norms are of the param and its grad before the step (the grad clipped first with
    ``max_grad_norm``): float64 sums of squares in fastopt.reference's fixed blocking, so every
    thread count gives the same bits, and the ratio is computed in Python (float64). Without
    decay and ``always_adapt`` it is SGD with torch's momentum. The buffer is the grad itself
    at the first update (timm's clone); a param first seen later, or momentum that starts at
    0, begins from a zero buffer. The term ``weight_decay*p`` is left out where the decay is 0.
    timm refuses ``nesterov`` without momentum or with dampening; here the formula runs
    as written.

    Parameters
    ----------
    lr : float or schedule, default 1.0
    momentum : float or schedule, default 0
        In [0, 1); 0 keeps no buffer.
    dampening : float or schedule, default 0, keyword-only
        In [0, 1).
    weight_decay : float or schedule, default 0, keyword-only
        Decoupled: added to the grad inside the trust ratio. A param that does not decay
        (``weight_decay_filter``) keeps a ratio of 1 unless ``always_adapt``.
    nesterov : bool, default False, keyword-only
    trust_coeff : float or schedule, default 0.001, keyword-only
    eps : float or schedule, default 1e-8, keyword-only
    trust_clip : bool, default False, keyword-only
        LARC: the ratio divided by lr, at most 1.
    always_adapt : bool, default False, keyword-only
        Scale every param by its trust ratio, even without weight decay.

    Attributes
    ----------
    momentum_buffer : dict or list of ndarray, or None
        The momentum buffer (kept while momentum is a schedule or nonzero).
    iter : int
        Number of ``update`` calls so far.

    ``fastopt.distributed.ShardedOptimizer`` shards it by whole params (each on one rank: a
    shard of a param's elements has no whole norm).
    """


for _cls in {globals()[_name] for _name in __all__}:   # RMSProp is RMSprop: once each
    _cls.__doc__ = (_cls.__doc__ or "").rstrip() + "\n" + _SHARED
del _cls
