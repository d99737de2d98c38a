"""fastopt's optimizers in pure NumPy: the definition fastopt is checked and measured against.

Each ``*_rule`` function is one param's update, the body of the book's ``for key in
params.keys():`` loop statement for statement (``common/optimizer.py`` of *Deep Learning from
Scratch*; the rules beyond the book follow torch.optim 2.13's formulas). A rule takes the
param ``p``, its grad ``g``, the param's state arrays and the step's scalars, updates ``p`` and
the state in place and returns ``p`` (a new value only for a scalar param, which the caller
stores back). fastopt calls these same rules for the inputs its compiled loops do not take
(non-contiguous views, float16, scalar params, a grad that shares memory with its param), so
both give the same numbers by construction.

Each class joins a rule's declaration (fastopt/_rules.py: constructor, hyperparameters and
their checks, state, the step's scalars) to ``ReferenceOptimizer``'s update, which runs those
rules param after param. What every optimizer shares (fastopt/_core.py): hyperparameters
that are numbers or schedules (callables of the step count), checked and converted to Python
floats once per ``update``; the step count ``iter``; the grad transform (gradient clipping by
global norm, then coupled weight decay ``g + weight_decay*p``), applied on the fly without
writing the caller's grads; and which params decay (``weight_decay_filter``). fastopt's
compiled classes are made from the same declarations, not from these classes.

Differences from the book, none of which changes a number the book computes: ``params`` may be
a list or tuple (state is then kept by position, as in the second book); a key that first
appears in a later call gets zero state instead of a KeyError; state arrays are updated in
place and never rebound (``v[key][...] = momentum*v[key] - lr*g`` computes the book's
right-hand side, then writes it into the same array); an array param is never stored back
(only a scalar param's new value is); hyperparameters are converted to Python floats.

This module carries code restated from *Deep Learning from Scratch* (Koki Saitoh, O'Reilly
Japan), MIT-licensed: see the notice in ``LICENSES/``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from . import _rules

# Names fastopt.reference has always had, now defined with the declarations and checks.
from ._core import DecayFilter as DecayFilter
from ._core import Grads as Grads
from ._core import Hyper as Hyper
from ._core import OptimizerCore as OptimizerCore
from ._core import Params as Params
from ._core import State as State
from ._core import Step as Step
from ._core import _free_locks_in_child as _free_locks_in_child
from ._core import clip_coefficient as clip_coefficient
from ._validation import Check as Check
from ._validation import check_coefficient as check_coefficient
from ._validation import check_epsilon as check_epsilon
from ._validation import check_learning_rate as check_learning_rate
from ._validation import check_nonnegative as check_nonnegative
from ._validation import check_option as check_option
from ._validation import to_float as to_float

__all__ = ["ADOPT", "LAMB", "LARS", "SGD", "AdaGrad", "Adadelta", "Adafactor", "Adam",
           "AdamW", "Adamax", "Lion", "Momentum", "Muon", "NAdam", "Nesterov", "RAdam", "RMSProp",
           "RMSprop", "ScheduleFreeAdamW", "ScheduleFreeSGD"]


# ---------------------------------------------------------------------------------------------
# The rules: one param's update. ``p`` is updated in place (an array) or rebound (a scalar) and
# returned; every state array is written in place.

def _denominator(h: Any, eps: float, eps_inside_sqrt: bool) -> Any:
    if eps_inside_sqrt:
        return np.sqrt(h + eps)
    return np.sqrt(h) + eps


def _square(g: Any) -> Any:
    """``g**2`` as the book computes it (for a Python float, C's ``pow``, which is not always
    ``g*g`` to the bit); where Python raises OverflowError for a finite square beyond the
    float range, inf, the IEEE (and NumPy) result, so an update never fails half-way."""
    try:
        return g**2
    except OverflowError:
        return math.inf


def sgd_rule(p: Any, g: Any, lr: float) -> Any:
    p -= lr * g
    return p


def momentum_rule(p: Any, g: Any, v: Any, lr: float, momentum: float) -> Any:
    v[...] = momentum * v - lr * g
    p += v
    return p


def nesterov_rule(p: Any, g: Any, v: Any, lr: float, momentum: float,
                  velocity_first: bool) -> Any:
    if velocity_first:
        v *= momentum
        v -= lr * g
        p += momentum * momentum * v
        p -= (1 + momentum) * lr * g
    else:
        p += momentum * momentum * v
        p -= (1 + momentum) * lr * g
        v *= momentum
        v -= lr * g
    return p


def adagrad_rule(p: Any, g: Any, h: Any, lr: float, eps: float, eps_inside_sqrt: bool) -> Any:
    h += g * g
    p -= lr * g / _denominator(h, eps, eps_inside_sqrt)
    return p


def rmsprop_rule(p: Any, g: Any, h: Any, grad_avg: Any, momentum_buffer: Any, lr: float,
                 decay_rate: float, eps: float, eps_inside_sqrt: bool, momentum: float) -> Any:
    """The book's RMSprop (``grad_avg`` and ``momentum_buffer`` None), with torch's options:
    a ``grad_avg`` centers ``h`` by the squared mean gradient; a ``momentum_buffer``
    accumulates the step."""
    h *= decay_rate
    h += (1 - decay_rate) * g * g
    if grad_avg is None and momentum_buffer is None:
        p -= lr * g / _denominator(h, eps, eps_inside_sqrt)
        return p
    if grad_avg is not None:
        grad_avg += (1 - decay_rate) * (g - grad_avg)
        denominator = _denominator(h - grad_avg * grad_avg, eps, eps_inside_sqrt)
    else:
        denominator = _denominator(h, eps, eps_inside_sqrt)
    if momentum_buffer is not None:
        momentum_buffer[...] = momentum * momentum_buffer + g / denominator
        p -= lr * momentum_buffer
    else:
        p -= lr * g / denominator
    return p


def adam_rule(p: Any, g: Any, m: Any, v: Any, v_max: Any, lr_t: Any, beta1: float,
              beta2: float, eps: float, eps_inside_sqrt: bool) -> Any:
    m += (1 - beta1) * (g - m)
    v += (1 - beta2) * (_square(g) - v)
    if v_max is not None:
        v_max[...] = np.maximum(v_max, v)
        v = v_max
    p -= lr_t * m / _denominator(v, eps, eps_inside_sqrt)
    return p


def adam_paper_rule(p: Any, g: Any, m: Any, v: Any, v_max: Any, lr: float, beta1: float,
                    beta2: float, bias_correction1: float, bias_correction2: float,
                    eps: float, eps_inside_sqrt: bool) -> Any:
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    if v_max is not None:
        v_max[...] = np.maximum(v_max, v)
        v = v_max
    m_hat = m / bias_correction1
    v_hat = v / bias_correction2
    p -= lr * m_hat / _denominator(v_hat, eps, eps_inside_sqrt)
    return p


def adamw_rule(p: Any, g: Any, m: Any, v: Any, v_max: Any, beta1: float, beta2: float,
               step_size: float, bias_correction2_sqrt: float, eps: float,
               decoupled_decay: float) -> Any:
    """torch's AdamW: decoupled decay first, then Adam with the bias corrections folded into
    ``step_size = lr/(1 - beta1**t)`` and ``bias_correction2_sqrt = sqrt(1 - beta2**t)``."""
    if decoupled_decay:
        p -= decoupled_decay * p
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    if v_max is not None:
        v_max[...] = np.maximum(v_max, v)
        v = v_max
    p -= step_size * m / (np.sqrt(v) / bias_correction2_sqrt + eps)
    return p


def nadam_rule(p: Any, g: Any, m: Any, v: Any, beta1: float, beta2: float,
               bias_correction2: float, eps: float, grad_step: float,
               momentum_step: float) -> Any:
    """torch's NAdam: ``grad_step = lr*(1 - mu_t)/(1 - prod mu_1..t)`` and
    ``momentum_step = lr*mu_t+1/(1 - prod mu_1..t+1)``."""
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    denominator = np.sqrt(v / bias_correction2) + eps
    p -= grad_step * g / denominator
    p -= momentum_step * m / denominator
    return p


def radam_rule(p: Any, g: Any, m: Any, v: Any, lr: float, beta1: float, beta2: float,
               bias_correction1: float, bias_correction2_sqrt: float, eps: float,
               rectified: bool, rectification: float) -> Any:
    """torch's RAdam: the rectified adaptive step when ``rho_t > 5``, else the bias-corrected
    momentum step."""
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    m_hat = m / bias_correction1
    if rectified:
        p -= m_hat * lr * (bias_correction2_sqrt / (np.sqrt(v) + eps)) * rectification
    else:
        p -= m_hat * lr
    return p


def adamax_rule(p: Any, g: Any, m: Any, u: Any, beta1: float, beta2: float, step_size: float,
                eps: float) -> Any:
    m[...] = beta1 * m + (1 - beta1) * g
    u[...] = np.maximum(beta2 * u, np.abs(g) + eps)
    p -= step_size * m / u
    return p


def adadelta_rule(p: Any, g: Any, v: Any, u: Any, lr: float, rho: float, eps: float) -> Any:
    v[...] = rho * v + (1 - rho) * g * g
    d = np.sqrt(u + eps) / np.sqrt(v + eps) * g
    u[...] = rho * u + (1 - rho) * d * d
    p -= lr * d
    return p


def lion_rule(p: Any, g: Any, m: Any, lr: float, beta1: float, beta2: float,
              decoupled_decay: float) -> Any:
    c = beta1 * m + (1 - beta1) * g
    if decoupled_decay:
        p -= lr * (np.sign(c) + decoupled_decay * p)
    else:
        p -= lr * np.sign(c)
    m[...] = beta2 * m + (1 - beta2) * g
    return p


def adopt_rule(p: Any, g: Any, m: Any, v: Any, lr: float, beta1: float, beta2: float,
               eps: float, clip: float, first: bool) -> Any:
    """timm's ADOPT: at the first step ``v = g*g`` and nothing else; then the grad divided by
    ``max(sqrt(v), eps)`` and clipped to ``[-clip, clip]`` (``clip = (t - 1)**clip_exp``)
    drives the momentum, and ``v`` takes this step's grad only after."""
    if first:
        v += g * g
        return p
    normed = g / np.maximum(np.sqrt(v), eps)
    normed = np.minimum(np.maximum(normed, -clip), clip)
    m += (1 - beta1) * (normed - m)
    p -= lr * m
    v[...] = beta2 * v + (1 - beta2) * g * g
    return p


def lamb_rule(p: Any, g: Any, m: Any, v: Any, direction: Any, beta1: float, beta2: float,
              bias_correction1: float, bias_correction2_sqrt: float, eps: float,
              decoupled_decay: float) -> Any:
    """timm's LAMB, its first pass: the moments, then the ``direction`` (Adam's
    bias-corrected step plus the decoupled decay), which ``lamb_apply_rule`` scales by the
    param's trust ratio."""
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    direction[...] = (m / bias_correction1) / (np.sqrt(v) / bias_correction2_sqrt + eps)
    if decoupled_decay:
        direction += decoupled_decay * p
    return p


def lamb_apply_rule(p: Any, g: Any, m: Any, v: Any, direction: Any, lr: float,
                    ratio: float) -> Any:
    """LAMB's second pass: ``p -= lr*(ratio*direction)``, ``ratio`` the param's trust ratio."""
    p -= lr * (ratio * direction)
    return p


def schedulefree_y_rule(p: Any, x: Any, z: Any, momentum: float) -> Any:
    """Schedule-Free's training point ``y = momentum*x + (1 - momentum)*z`` into ``p`` (the
    last statement of both Schedule-Free rules, and ``train()``)."""
    y = momentum * x + (1 - momentum) * z
    if isinstance(p, np.ndarray):
        p[...] = y
        return p
    return y


def schedulefree_adamw_rule(p: Any, g: Any, z: Any, v: Any, x: Any, lr: float, beta1: float,
                            beta2: float, bias_correction2: float, eps: float, ckp1: float,
                            decoupled_decay: float) -> Any:
    """schedulefree's ``AdamWScheduleFreeReference``: ``p`` holds ``y``, ``lr`` is the step's
    (warmup applied), ``decoupled_decay = lr*weight_decay`` (decay at ``y``, applied to
    ``z``), ``ckp1`` the step's averaging weight."""
    if decoupled_decay:
        z -= decoupled_decay * p
    v[...] = beta2 * v + (1 - beta2) * g * g
    z -= lr * (g / (np.sqrt(v / bias_correction2) + eps))
    x[...] = (1 - ckp1) * x + ckp1 * z
    return schedulefree_y_rule(p, x, z, beta1)


def schedulefree_sgd_rule(p: Any, g: Any, z: Any, x: Any, lr: float, momentum: float,
                          ckp1: float) -> Any:
    """schedulefree's ``SGDScheduleFreeReference``: ``p`` holds ``y`` (where its weight decay
    is coupled: ``g + weight_decay*y``), ``lr`` is the step's (warmup applied), ``ckp1`` the
    step's averaging weight."""
    z -= lr * g
    x[...] = (1 - ckp1) * x + ckp1 * z
    return schedulefree_y_rule(p, x, z, momentum)


def schedulefree_interpolate(params: Params, keys: list[Any], xs: list[Any], zs: list[Any],
                             momentum: float) -> None:
    """``schedulefree_y_rule`` for each key (a scalar param's new value stored back)."""
    for key, x, z in zip(keys, xs, zs, strict=True):
        param = params[key]
        new = schedulefree_y_rule(param, x, z, momentum)
        if not isinstance(param, np.ndarray):
            params[key] = new   # type: ignore[index]


def lookahead_rule(p: Any, g: Any, slow: Any, lookahead_alpha: float) -> Any:
    """Lookahead's sync (Zhang et al. 2019, timm's ``Lookahead``; ``fastopt.Lookahead``): the
    slow weights move toward the fast ones, ``slow += alpha*(p - slow)``, then the param takes
    their value. Not an update rule: ``g`` is not read (the compiled loop's signature has it)."""
    slow += lookahead_alpha * (p - slow)
    if isinstance(p, np.ndarray):
        p[...] = slow
        return p
    return slow[()]


def _lerp(start: Any, end: Any, weight: float) -> Any:
    """torch's ``start.lerp_(end, weight)``, its two forms by the weight's size."""
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


def _sequential_sum(x: Any, axis: int) -> Any:
    """The sum of ``x`` over ``axis`` (kept, of size 1), added from 0 in index order (the
    order of the compiled loop, where NumPy's own sum is pairwise)."""
    shape = list(x.shape)
    shape[axis] = 1
    total = np.zeros(shape, x.dtype)
    for index in range(x.shape[axis]):
        total += np.take(x, [index], axis=axis)
    return total


def adafactor_rule(p: Any, g: Any, row_var: Any, col_var: Any, variance: Any, step_lr: float,
                   lerp_weight: float, eps1: float, eps1_of_dtype: bool, eps2: float,
                   clip_threshold: float, decoupled_decay: float) -> Any:
    """torch's Adafactor (its single-tensor path), for one param: ``step_lr`` is
    ``min(lr, 1/sqrt(t))``, ``lerp_weight`` is ``t**beta2_decay``, ``eps1`` the dtype's
    machine epsilon if ``eps1_of_dtype``. Sums over rows and columns are added in index order,
    norms are ``sum_of_squares``'s; a param with no elements is left as it is (torch divides
    by its size)."""
    size = np.size(p)
    if size == 0:
        return p
    if eps1_of_dtype:
        eps1 = float(np.finfo(np.asarray(p).dtype).eps)
    alpha = max(eps2, math.sqrt(sum_of_squares(p)) / size**0.5) * step_lr
    if decoupled_decay:
        p *= 1 - decoupled_decay
    squared = g * g
    if np.ndim(p) >= 2:
        rows, cols = np.shape(p)[-2:]
        row_var[...] = _lerp(row_var, _sequential_sum(squared, -1) / cols, lerp_weight)
        col_var[...] = _lerp(col_var, _sequential_sum(squared, -2) / rows, lerp_weight)
        row_mean = np.maximum(_sequential_sum(row_var, -2) / rows, eps1)
        estimate = row_var * col_var / row_mean
    else:
        variance[...] = _lerp(variance, squared, lerp_weight)
        estimate = variance
    update = 1 / np.sqrt(np.maximum(estimate, eps1 * eps1)) * g
    denominator = max(1.0, math.sqrt(sum_of_squares(update)) / (size**0.5 * clip_threshold))
    p -= alpha / denominator * update
    return p


def muon_rule(p: Any, g: Any, momentum_buffer: Any, update: Any, momentum: float,
              nesterov: bool) -> Any:
    """torch's Muon, its first pass: the momentum buffer ``buf.lerp_(g, 1 - momentum)``, then
    the update to orthogonalise, ``g.lerp(buf, momentum)`` (Nesterov) or the buffer, into the
    workspace array ``update`` (torch's lerp: two forms by the weight's size, ``_lerp``)."""
    momentum_buffer[...] = _lerp(momentum_buffer, g, 1 - momentum)
    update[...] = _lerp(g, momentum_buffer, momentum) if nesterov else momentum_buffer
    return p


def newton_schulz_transform(update: Any, x: Any, gram: Any, gram_squared: Any,
                            gram_update: Any, product: Any, *, sums: tuple[float, ...],
                            a: float, b: float, c: float, steps: int, eps: float) -> None:
    """torch's ``_zeropower_via_newtonschulz`` on one 2-D ``update``, in place, in the param's
    dtype (torch computes in bfloat16), every array a workspace buffer: ``x`` (the update,
    transposed if it has more rows than columns) divided by ``max(||update||, eps)``
    (``sums[0]``: the update's sum of squares, in ``sum_of_squares``'s blocking), then
    ``steps`` times ``A = x@x.T; B = b*A + c*(A@A); x = a*x + B@x``; the result (transposed
    back) into ``update``. Products are NumPy's ``matmul`` (its BLAS) into the buffers,
    elementwise statements NumPy's ufuncs into them: nothing is allocated."""
    transposed = update.shape[0] > update.shape[1]
    np.copyto(x, update.T if transposed else update)
    np.divide(x, max(math.sqrt(sums[0]), eps), out=x)
    for _ in range(steps):
        np.matmul(x, x.T, out=gram)
        np.matmul(gram, gram, out=gram_squared)
        np.multiply(gram, b, out=gram_update)
        np.multiply(gram_squared, c, out=gram_squared)
        np.add(gram_update, gram_squared, out=gram_update)   # B = b*A + c*(A@A)
        np.matmul(gram_update, x, out=product)
        np.multiply(x, a, out=x)
        np.add(x, product, out=x)                             # x = a*x + B@x
    np.copyto(update, x.T if transposed else x)


def muon_apply_rule(p: Any, g: Any, momentum_buffer: Any, update: Any,
                    decoupled_decay: float, adjusted_lr: float) -> Any:
    """Muon's second pass, after the Newton-Schulz transform of ``update``: the decoupled
    decay ``p *= 1 - lr*weight_decay`` (left out where it is 0), then
    ``p -= adjusted_lr*update``."""
    if decoupled_decay:
        p *= 1 - decoupled_decay
    p -= adjusted_lr * update
    return p


def none_rule(p: Any, g: Any, *states: Any) -> Any:
    """The first pass of a rule whose every statement follows its per-param reductions
    (LARS): nothing."""
    return p


def lars_rule(p: Any, g: Any, momentum_buffer: Any, lr: float, momentum: float,
              dampening: float, nesterov: bool, first: bool, decoupled_decay: float,
              ratio: float) -> Any:
    """timm's LARS, one param (its only pass, after the norms of ``p`` and ``g``): the grad
    with decoupled decay scaled by the trust ratio, then SGD's momentum (the buffer is the
    grad itself at the first step; not used while ``momentum`` is 0), then the step."""
    if decoupled_decay:
        g = g + decoupled_decay * p
    g = g * ratio
    if momentum_buffer is not None and momentum != 0:
        if first:
            momentum_buffer[...] = g
        else:
            momentum_buffer[...] = momentum * momentum_buffer + (1 - dampening) * g
        if nesterov:
            g = g + momentum * momentum_buffer
        else:
            g = momentum_buffer
    p -= lr * g
    return p


# ---------------------------------------------------------------------------------------------
# Gradient clipping by global norm. The sum of squares has a fixed blocking, so that the
# compiled version (fastopt/_kernels.pyx) gives the same bits at every SIMD width and thread
# count: each grad's elements, as float64, are squared into blocks of NORM_BLOCK; inside a
# block element i goes to lane i % NORM_LANES, in order; the lanes are combined as
# ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)); a grad's block sums pairwise (first half + second
# half, recursively); the grads' sums in order, from 0.

NORM_BLOCK = 4096
NORM_LANES = 8


def _pairwise(sums: list[float]) -> float:
    if not sums:
        return 0.0
    if len(sums) == 1:
        return sums[0]
    half = len(sums) // 2
    return _pairwise(sums[:half]) + _pairwise(sums[half:])


def sum_of_squares(grad: Any, scale: float | None = None) -> float:
    """The blocked float64 sum of squares of one grad (an array or a real scalar), multiplied
    by ``scale`` first (in its own dtype, as ``transform_grad`` scales it) if given."""
    x = np.asarray(grad)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"a grad of dtype {x.dtype} has no real norm")
    if scale is not None:
        x = np.asarray(x * scale)
    x = x.astype(np.float64).reshape(-1)
    if x.size == 0:
        return 0.0
    blocks = -(-x.size // NORM_BLOCK)
    padded = np.zeros(blocks * NORM_BLOCK)   # zeros add nothing to a sum of squares
    padded[:x.size] = x
    squares = (padded * padded).reshape(blocks, NORM_BLOCK // NORM_LANES, NORM_LANES)
    lanes = squares[:, 0, :].copy()
    for row in range(1, NORM_BLOCK // NORM_LANES):
        lanes += squares[:, row, :]
    block_sums = (((lanes[:, 0] + lanes[:, 1]) + (lanes[:, 2] + lanes[:, 3]))
                  + ((lanes[:, 4] + lanes[:, 5]) + (lanes[:, 6] + lanes[:, 7])))
    return _pairwise([float(value) for value in block_sums])


def global_norm(grads: Sequence[Any]) -> float:
    """The L2 norm of all ``grads`` together, as a float (NumPy; the definition)."""
    total = 0.0
    for grad in grads:
        total += sum_of_squares(grad)
    return math.sqrt(total)


# ---------------------------------------------------------------------------------------------
# The classes.

def _keys(params: Params) -> Any:
    return params.keys() if isinstance(params, Mapping) else range(len(params))


def transform_grad(g: Any, p: Any, grad_scale: float | None, weight_decay: float) -> Any:
    """The grad a rule sees: clipped (``g*grad_scale``), then with coupled decay
    (``+ weight_decay*p``). Never writes ``g``; a term that is off is left out entirely."""
    if grad_scale is not None:
        g = g * grad_scale
    if weight_decay:
        g = g + weight_decay * p
    return g



def rule_of(step: Step) -> Callable[..., Any]:
    """The NumPy rule a step runs: ``<step.rule>_rule`` of this module."""
    rule: Callable[..., Any] = globals()[step.rule + "_rule"]
    return rule


def apply(optimizer: OptimizerCore, step: Step, values: dict[str, float],
          grad_scale: float | None, decays: State, params: Params, grads: Grads,
          states: list[Any], keys: list[Any], read: list[Any] | None = None) -> None:
    """Run ``step``'s NumPy rule on each key of ``keys``: the grad (``read``, or
    ``grads[key]``) transformed, the step's scalars without the decay term for a param that
    does not decay. ``states``: the rule's state containers, in its order."""
    rule = rule_of(step)
    decay = optimizer._coupled_decay(values)
    scalars = step.scalars
    undecayed = optimizer._scalars_without_decay(scalars)
    for index, key in enumerate(keys):
        param = params[key]
        grad = grads[key] if read is None else read[index]
        decays_here = decays is None or decays[key]
        grad = transform_grad(grad, param, grad_scale, decay if decays_here else 0.0)
        new = rule(param, grad, *[state[key] if state is not None else None
                                  for state in states],
                   **(scalars if decays_here else undecayed))
        if not isinstance(param, np.ndarray):
            params[key] = new   # type: ignore[index]


def apply_second(optimizer: OptimizerCore, step: Step, values: dict[str, float],
                 grad_scale: float | None, decays: State, params: Params, grads: Grads,
                 states: list[Any], keys: list[Any], read: list[Any] | None = None) -> None:
    """Run ``step``'s second pass, NumPy's, on each key of ``keys``: the sums of squares of
    the arrays the rule's ``_reduced`` names, its ``_per_param`` scalars from them, its
    transform (``Step.transform``) if any, then the rule ``<step.second>_rule`` with the grad
    (``read``, or ``grads[key]``) clipped: the decay is the rule's own."""
    assert step.second is not None
    for index, key in enumerate(keys):
        param = params[key]
        grad = grads[key] if read is None else read[index]
        decay = decays is None or bool(decays[key])
        sums = tuple(sum_of_squares(array, scale) for array, scale in optimizer._reductions(
            key, param, grad, grad_scale)) if optimizer._reads_sums(values, decay) else ()
        scalars = optimizer._per_param(values, sums, decay, np.shape(param))
        if step.transform is not None:
            transform(optimizer, step, key, sums)
        second_rule(optimizer, step, scalars, grad_scale, params, states, key, grad)


def second_rule(optimizer: OptimizerCore, step: Step, scalars: dict[str, Any],
                grad_scale: float | None, params: Params, states: list[Any], key: Any,
                grad: Any) -> None:
    """The rule of ``step``'s second pass, ``<step.second>_rule``, on the param of ``key``
    with its ``scalars`` (``_per_param``'s) and its grad clipped."""
    assert step.second is not None
    rule: Callable[..., Any] = globals()[step.second + "_rule"]
    param = params[key]
    new = rule(param, transform_grad(grad, param, grad_scale, 0.0),
               *[state[key] if state is not None else None for state in states], **scalars)
    if not isinstance(param, np.ndarray):
        params[key] = new   # type: ignore[index]


def transform(optimizer: OptimizerCore, step: Step, key: Any, sums: tuple[float, ...]) -> None:
    """``step``'s per-param transform (``<name>_transform`` of this module) on the workspace
    of the param of ``key``, with its sums of squares: what fastopt's compiled updates run
    too, between a param's reduction and its second pass."""
    assert step.transform is not None
    name, arguments = step.transform
    function: Callable[..., None] = globals()[name + "_transform"]
    function(*optimizer._workspace_of(key), sums=sums, **arguments)


class ReferenceOptimizer(OptimizerCore):
    """An optimizer whose every update is NumPy's: the rule's statements, one param after
    another, as the book's ``update`` loop runs them."""

    _global_norm = staticmethod(global_norm)

    def update(self, params: Params, grads: Grads) -> None:
        """Update ``params`` in place from ``grads``, as the book's code does."""
        with self._lock:
            values = self._checked_values()
            step = self._next_step(values)
            for key in _keys(params):
                self._check_param_shape(key, params[key])
            grad_scale = self._clip_factor([grads[key] for key in _keys(params)])
            decays = self._key_decays(params)
            self._add_zero_state(params)
            self._decays = decays
            for name, value in step.after.items():
                setattr(self, name, value)
            apply(self, step, values, grad_scale, decays, params, grads, self._rule_states(),
                  list(_keys(params)))
            if step.second is not None:
                apply_second(self, step, values, grad_scale, decays, params, grads,
                             self._rule_states(), list(_keys(params)))


class SGD(ReferenceOptimizer, _rules.SGD):
    """``p -= lr*g``."""


class Momentum(ReferenceOptimizer, _rules.Momentum):
    """``v = momentum*v - lr*g; p += v``."""


class Nesterov(ReferenceOptimizer, _rules.Nesterov):
    """Nesterov momentum; ``velocity_first=True`` is the book's 2016 order."""


class AdaGrad(ReferenceOptimizer, _rules.AdaGrad):
    """``h += g*g; p -= lr*g / (sqrt(h) + eps)``."""


class RMSprop(ReferenceOptimizer, _rules.RMSprop):
    """``h *= decay_rate; h += (1-decay_rate)*g*g; p -= lr*g / (sqrt(h) + eps)``, with torch's
    ``centered`` and ``momentum`` forms as options."""


RMSProp = RMSprop


class Adam(ReferenceOptimizer, _rules.Adam):
    """The book's Adam, or the paper's Algorithm 1 with ``paper_form=True``; ``amsgrad=True``
    keeps the running maximum of ``v`` and divides by it."""


class AdamW(ReferenceOptimizer, _rules.AdamW):
    """torch's AdamW: decoupled weight decay ``p -= lr*weight_decay*p``, then Adam with the
    bias corrections of torch."""


class NAdam(ReferenceOptimizer, _rules.NAdam):
    """torch's NAdam (Dozat 2016) with its momentum schedule
    ``mu_t = beta1*(1 - 0.5*0.96**(t*momentum_decay))``."""


class RAdam(ReferenceOptimizer, _rules.RAdam):
    """torch's RAdam (Liu et al. 2020): rectified when ``rho_t > 5``."""


class Adamax(ReferenceOptimizer, _rules.Adamax):
    """torch's Adamax: ``u = max(beta2*u, abs(g) + eps); p -= (lr/(1-beta1**t))*m/u``."""


class Adadelta(ReferenceOptimizer, _rules.Adadelta):
    """torch's Adadelta: ``v = rho*v + (1-rho)*g*g; d = sqrt(u + eps)/sqrt(v + eps)*g;
    u = rho*u + (1-rho)*d*d; p -= lr*d``."""


class ADOPT(ReferenceOptimizer, _rules.ADOPT):
    """timm's ADOPT: ``m += (1-beta1)*(clip(g/max(sqrt(v), eps)) - m); p -= lr*m;
    v = beta2*v + (1-beta2)*g*g``, the first update only ``v = g*g``."""


class LAMB(ReferenceOptimizer, _rules.LAMB):
    """timm's LAMB: Adam's bias-corrected direction plus decoupled decay, scaled per param by
    the trust ratio ``||p|| / ||direction||``."""


class LARS(ReferenceOptimizer, _rules.LARS):
    """timm's LARS: SGD with momentum on the grad plus decoupled decay, scaled per param by
    the trust ratio ``trust_coeff*||p|| / (||g|| + weight_decay*||p|| + eps)``."""


class Lion(ReferenceOptimizer, _rules.Lion):
    """Lion (Chen et al. 2023): ``c = beta1*m + (1-beta1)*g;
    p -= lr*(sign(c) + weight_decay*p); m = beta2*m + (1-beta2)*g``."""


class ScheduleFreeAdamW(ReferenceOptimizer, _rules.ScheduleFreeAdamW):
    """schedulefree's ``AdamWScheduleFreeReference``: ``z -= lr*weight_decay*y;
    v = beta2*v + (1-beta2)*g*g; z -= lr*(g/(sqrt(v/(1-beta2**t)) + eps));
    x = (1-ckp1)*x + ckp1*z; y = beta1*x + (1-beta1)*z``."""

    _interpolate = staticmethod(schedulefree_interpolate)


class ScheduleFreeSGD(ReferenceOptimizer, _rules.ScheduleFreeSGD):
    """schedulefree's ``SGDScheduleFreeReference``: ``z -= lr*g; x = (1-ckp1)*x + ckp1*z;
    y = momentum*x + (1-momentum)*z``."""

    _interpolate = staticmethod(schedulefree_interpolate)


class Muon(ReferenceOptimizer, _rules.Muon):
    """torch's Muon: momentum, Newton-Schulz orthogonalisation of each 2-D param's update (in
    the param's dtype, not bfloat16), decoupled decay, ``p -= adjusted_lr*O``."""


class Adafactor(ReferenceOptimizer, _rules.Adafactor):
    """torch's Adafactor: factored row and column second moments for params of 2 or more
    dims, a full one otherwise; a relative step size; the update clipped by its RMS."""
