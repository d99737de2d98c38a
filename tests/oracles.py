"""Every update rule restated from its formula, in NumPy, for the tests to check fastopt against.

Each oracle is one function ``rule(params, grads, state, t, **hyperparameters)`` that takes a
dict of param arrays, a dict of grads with the same keys, the state of the steps before (a dict
that maps each state name to a dict of arrays, plus any scalar state; empty before the first
step) and the step count ``t`` (1 at the first update), and returns the new params and the new
state. It works on copies and changes none of its arguments. Its keyword defaults are the class
defaults that the docstrings and SPEC state.

Where the formulas come from: SPEC section 2 (the book's six, statement by statement as *Deep
Learning from Scratch* writes them), SPEC section 7 and torch.optim 2.13's documented
algorithms (the rules beyond the book), SPEC sections 8 and 10 (weight decay, clipping), and the
formulas in fastopt's class docstrings. Nothing here is imported from fastopt or taken from
``fastopt.reference``: the point is a second, independent reading of the same formulas.

Tolerance. fastopt promises the bits of the formulas evaluated as written (SPEC section 3):
each statement in the order given, each product associated left to right, scalars that the
formula computes in Python (``1 - beta1``, ``lr/(1 - beta1**t)``) as Python floats, and
array arithmetic in the array's dtype (a Python float meeting a float32 array is rounded to
float32 first, as NumPy >= 2 does; the book's Adam's ``lr_t`` is a NumPy float64, so its last
statement is float64 arithmetic rounded once to float32). Every oracle below follows its
formula's statements in that order, so it agrees with fastopt to the bit, in float64 and in
float32, for 100 steps: the tests compare bits (``EXACT``). Rounding differently in a single
statement, by one ulp, is already a failure; so is any change to a rule.

The one exception is clipping by global norm (``max_grad_norm``): fastopt sums the squares in a
fixed blocking (the same bits at every SIMD level), the oracle with NumPy's pairwise sum; both
are within a few ulps of the exact sum (SPEC section 10 bounds fastopt's at 1e-12 relative), so
the clip factor, and everything after it, differs by rounding: ``CLIPPED`` is the tolerance for
those runs (see there).
"""
from __future__ import annotations

import copy
import inspect
import math

import numpy as np

#: Bits: every param and state array equal byte for byte, every scalar equal.
EXACT = 0.0
#: With clipping by global norm: the largest difference between the oracle's and fastopt's
#: arrays, relative to the array's largest element (normwise, as tests/test_torch_parity.py
#: measures, so an element passing near zero does not turn a last-bit difference into a large
#: relative one). Measured over the clipped runs of tests/test_oracles.py (Adam, SGD, AdamW;
#: 100 steps): at most 5e-16 in float64, where the two clip factors differ in the last bit at
#: some steps; 1e-13 leaves a margin of 200 and still sees a learning rate off by one part in
#: 10**9, or the clip factor without its ``+ 1e-6``. float32: bits. The factor is a float64 that
#: meets the float32 grads as a float32, and the two factors, within 1e-15 of each other, round
#: to the same float32 unless one lies within 1e-15 of a rounding boundary (odds of about 1e-8
#: a step).
CLIPPED = {np.dtype(np.float64): 1e-13, np.dtype(np.float32): EXACT}


# ---------------------------------------------------------------------------------------------
# What every rule shares: copies, zero state at a param's first step, and the grad a rule sees.

def _copied(params, state):
    return ({key: np.array(value, copy=True) for key, value in params.items()},
            copy.deepcopy(state))


def _zeros(state, name, params):
    """State ``name``: a dict of arrays, zeros of each param's shape and dtype where new."""
    arrays = state.setdefault(name, {})
    for key, p in params.items():
        if key not in arrays:
            arrays[key] = np.zeros_like(p)
    return arrays


def global_norm(grads):
    """The L2 norm of all grads together: the root of the sum of their float64 squares (NumPy's
    pairwise sums, then the grads' sums in order)."""
    total = 0.0
    for g in grads.values():
        x = np.asarray(g, dtype=np.float64)
        total += float(np.sum(x * x))
    return math.sqrt(total)


def grads_seen(params, grads, weight_decay=0.0, weight_decay_filter=None, max_grad_norm=None):
    """The grads a rule sees (SPEC sections 8 and 10): scaled by ``max_norm/(norm + 1e-6)``
    when the global norm exceeds ``max_grad_norm`` (torch's clip factor), then with coupled
    decay ``g + weight_decay*p`` for the params ``weight_decay_filter(key, p)`` accepts (all
    when None). A term that is off is not there at all (no ``0*p``). New arrays."""
    seen = {key: np.array(g, copy=True) for key, g in grads.items()}
    if max_grad_norm is not None:
        norm = global_norm(grads)
        if norm > max_grad_norm:
            factor = max_grad_norm / (norm + 1e-6)
            seen = {key: g * factor for key, g in seen.items()}
    if weight_decay:
        for key, p in params.items():
            if weight_decay_filter is None or weight_decay_filter(key, p):
                seen[key] = seen[key] + weight_decay * p
    return seen


def decoupled(oracle):
    """Whether ``oracle`` applies weight decay itself (to the param, not the grad)."""
    return "weight_decay" in inspect.signature(oracle).parameters


def step(oracle, params, grads, state, t, options):
    """One update by ``oracle`` with the options every fastopt optimizer takes
    (``weight_decay``, ``weight_decay_filter``, ``max_grad_norm``) applied around it: the
    grads are clipped and (for a coupled rule) decayed first; a decoupled rule gets
    ``weight_decay`` and the filter itself."""
    options = dict(options)
    clip = options.pop("max_grad_norm", None)
    decays = options.pop("weight_decay_filter", None)
    if decoupled(oracle):
        seen = grads_seen(params, grads, max_grad_norm=clip)
        return oracle(params, seen, state, t, weight_decay_filter=decays, **options)
    seen = grads_seen(params, grads, options.pop("weight_decay", 0.0), decays, clip)
    return oracle(params, seen, state, t, **options)


def _decay_of(weight_decay, weight_decay_filter, key, p):
    if weight_decay_filter is None or weight_decay_filter(key, p):
        return weight_decay
    return 0.0


# ---------------------------------------------------------------------------------------------
# The book's six (SPEC section 2), as the book's statements, with the documented options.

def sgd(params, grads, state, t, lr=0.01):
    """``p -= lr*g``. Bits."""
    params, state = _copied(params, state)
    for key, p in params.items():
        p -= lr * grads[key]
    return params, state


def momentum(params, grads, state, t, lr=0.01, momentum=0.9):
    """``v = momentum*v - lr*g; p += v``. Bits."""
    params, state = _copied(params, state)
    v = _zeros(state, "v", params)
    for key, p in params.items():
        v[key] = momentum * v[key] - lr * grads[key]
        p += v[key]
    return params, state


def nesterov(params, grads, state, t, lr=0.01, momentum=0.9, velocity_first=False):
    """Bengio et al. 2012's form, as the book since 2021::

        p += momentum*momentum*v;  p -= (1 + momentum)*lr*g;  v *= momentum;  v -= lr*g

    and with ``velocity_first`` (the book's 2016 code, Chainer) the two velocity statements
    first. Bits."""
    params, state = _copied(params, state)
    v = _zeros(state, "v", params)
    for key, p in params.items():
        g = grads[key]
        if velocity_first:
            v[key] *= momentum
            v[key] -= lr * g
        p += momentum * momentum * v[key]
        p -= (1 + momentum) * lr * g
        if not velocity_first:
            v[key] *= momentum
            v[key] -= lr * g
    return params, state


def adagrad(params, grads, state, t, lr=0.01, eps=1e-7, eps_inside_sqrt=False):
    """``h += g*g; p -= lr*g / (sqrt(h) + eps)`` (``sqrt(h + eps)`` with
    ``eps_inside_sqrt``). Bits."""
    params, state = _copied(params, state)
    h = _zeros(state, "h", params)
    for key, p in params.items():
        g = grads[key]
        h[key] += g * g
        if eps_inside_sqrt:
            p -= lr * g / np.sqrt(h[key] + eps)
        else:
            p -= lr * g / (np.sqrt(h[key]) + eps)
    return params, state


def rmsprop(params, grads, state, t, lr=0.01, decay_rate=0.99, eps=1e-7, eps_inside_sqrt=False,
            centered=False, momentum=0.0):
    """The book's ``h *= decay_rate; h += (1 - decay_rate)*g*g; p -= lr*g / (sqrt(h) + eps)``;
    with torch's ``centered`` the root of ``h - grad_avg*grad_avg`` where ``grad_avg +=
    (1 - decay_rate)*(g - grad_avg)``; with a nonzero ``momentum`` the step goes through
    ``momentum_buffer = momentum*momentum_buffer + g/d; p -= lr*momentum_buffer``. Bits."""
    params, state = _copied(params, state)
    h = _zeros(state, "h", params)
    grad_avg = _zeros(state, "grad_avg", params) if centered else None
    buffer = _zeros(state, "momentum_buffer", params) if momentum else None
    for key, p in params.items():
        g = grads[key]
        h[key] *= decay_rate
        h[key] += (1 - decay_rate) * g * g
        square = h[key]
        if centered:
            grad_avg[key] += (1 - decay_rate) * (g - grad_avg[key])
            square = h[key] - grad_avg[key] * grad_avg[key]
        d = np.sqrt(square + eps) if eps_inside_sqrt else np.sqrt(square) + eps
        if momentum:
            buffer[key] = momentum * buffer[key] + g / d
            p -= lr * buffer[key]
        else:
            p -= lr * g / d
    return params, state


def adam(params, grads, state, t, lr=0.001, beta1=0.9, beta2=0.999, eps=None,
         eps_inside_sqrt=False, paper_form=False, amsgrad=False):
    """The book's Adam::

        lr_t = lr * np.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)     (a NumPy float64)
        m += (1 - beta1)*(g - m)
        v += (1 - beta2)*(g**2 - v)
        p -= lr_t*m / (sqrt(v) + eps)                              (eps = 1e-7)

    or with ``paper_form`` Kingma & Ba's Algorithm 1 (eps = 1e-8), all in the array's dtype::

        m = beta1*m + (1 - beta1)*g;  v = beta2*v + (1 - beta2)*g*g
        m_hat = m/(1 - beta1**t);  v_hat = v/(1 - beta2**t);  p -= lr*m_hat/(sqrt(v_hat) + eps)

    ``eps_inside_sqrt`` moves eps under the root; ``amsgrad`` divides by the running maximum
    ``v_max = maximum(v_max, v)`` in place of ``v``. Bits.
    """
    if eps is None:
        eps = 1e-8 if paper_form else 1e-7
    params, state = _copied(params, state)
    m, v = _zeros(state, "m", params), _zeros(state, "v", params)
    v_max = _zeros(state, "v_max", params) if amsgrad else None
    if not paper_form:
        lr_t = lr * np.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
    for key, p in params.items():
        g = grads[key]
        if paper_form:
            m[key] = beta1 * m[key] + (1 - beta1) * g
            v[key] = beta2 * v[key] + (1 - beta2) * g * g
        else:
            m[key] += (1 - beta1) * (g - m[key])
            v[key] += (1 - beta2) * (g**2 - v[key])
        second = v[key]
        if amsgrad:
            v_max[key] = np.maximum(v_max[key], v[key])
            second = v_max[key]
        if paper_form:
            m_hat = m[key] / (1 - beta1**t)
            v_hat = second / (1 - beta2**t)
            root = np.sqrt(v_hat + eps) if eps_inside_sqrt else np.sqrt(v_hat) + eps
            p -= lr * m_hat / root
        else:
            root = np.sqrt(second + eps) if eps_inside_sqrt else np.sqrt(second) + eps
            p -= lr_t * m[key] / root
    return params, state


# ---------------------------------------------------------------------------------------------
# The rules beyond the book (SPEC section 7), as torch.optim 2.13 documents them, with the
# per-step scalars computed in Python (float64) as the class docstrings say.

def adamw(params, grads, state, t, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8,
          weight_decay=0.01, amsgrad=False, weight_decay_filter=None):
    """Loshchilov & Hutter 2019, torch's form::

        p -= lr*weight_decay*p               (decoupled, first; only for params that decay)
        m = beta1*m + (1 - beta1)*g;  v = beta2*v + (1 - beta2)*g*g
        p -= (lr/(1 - beta1**t)) * m / (sqrt(v)/sqrt(1 - beta2**t) + eps)

    ``amsgrad``: ``v_max = maximum(v_max, v)`` in the denominator. Bits.
    """
    params, state = _copied(params, state)
    m, v = _zeros(state, "m", params), _zeros(state, "v", params)
    v_max = _zeros(state, "v_max", params) if amsgrad else None
    step_size = lr / (1 - beta1**t)
    root_correction = math.sqrt(1 - beta2**t)
    for key, p in params.items():
        g = grads[key]
        decay = lr * _decay_of(weight_decay, weight_decay_filter, key, p)
        if decay:
            p -= decay * p
        m[key] = beta1 * m[key] + (1 - beta1) * g
        v[key] = beta2 * v[key] + (1 - beta2) * g * g
        second = v[key]
        if amsgrad:
            v_max[key] = np.maximum(v_max[key], v[key])
            second = v_max[key]
        p -= step_size * m[key] / (np.sqrt(second) / root_correction + eps)
    return params, state


def nadam(params, grads, state, t, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8,
          momentum_decay=4e-3):
    """Dozat 2016, torch's form, with the scalar state ``mu_product`` (1 before the first
    step)::

        mu_t = beta1*(1 - 0.5*0.96**(t*momentum_decay))
        mu_next = beta1*(1 - 0.5*0.96**((t + 1)*momentum_decay))
        mu_product *= mu_t
        m = beta1*m + (1 - beta1)*g;  v = beta2*v + (1 - beta2)*g*g
        d = sqrt(v/(1 - beta2**t)) + eps
        p -= (lr*(1 - mu_t)/(1 - mu_product)) * g / d
        p -= (lr*mu_next/(1 - mu_product*mu_next)) * m / d

    Bits.
    """
    params, state = _copied(params, state)
    m, v = _zeros(state, "m", params), _zeros(state, "v", params)
    mu_t = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay))
    mu_next = beta1 * (1 - 0.5 * 0.96**((t + 1) * momentum_decay))
    state["mu_product"] = state.get("mu_product", 1.0) * mu_t
    mu_product = state["mu_product"]
    grad_weight = lr * (1 - mu_t) / (1 - mu_product)
    momentum_weight = lr * mu_next / (1 - mu_product * mu_next)
    for key, p in params.items():
        g = grads[key]
        m[key] = beta1 * m[key] + (1 - beta1) * g
        v[key] = beta2 * v[key] + (1 - beta2) * g * g
        d = np.sqrt(v[key] / (1 - beta2**t)) + eps
        p -= grad_weight * g / d
        p -= momentum_weight * m[key] / d
    return params, state


def radam(params, grads, state, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """Liu et al. 2020, torch's form::

        m = beta1*m + (1 - beta1)*g;  v = beta2*v + (1 - beta2)*g*g;  m_hat = m/(1 - beta1**t)
        rho_inf = 2/(1 - beta2) - 1;  rho_t = rho_inf - 2*t*beta2**t/(1 - beta2**t)
        rho_t > 5:  r = sqrt((rho_t - 4)*(rho_t - 2)*rho_inf/((rho_inf - 4)*(rho_inf - 2)*rho_t))
                    p -= m_hat*lr*(sqrt(1 - beta2**t)/(sqrt(v) + eps))*r
        else:       p -= m_hat*lr

    Bits.
    """
    params, state = _copied(params, state)
    m, v = _zeros(state, "m", params), _zeros(state, "v", params)
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
    if rho_t > 5:
        r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                      / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    for key, p in params.items():
        g = grads[key]
        m[key] = beta1 * m[key] + (1 - beta1) * g
        v[key] = beta2 * v[key] + (1 - beta2) * g * g
        m_hat = m[key] / (1 - beta1**t)
        if rho_t > 5:
            p -= m_hat * lr * (math.sqrt(1 - beta2**t) / (np.sqrt(v[key]) + eps)) * r
        else:
            p -= m_hat * lr
    return params, state


def adamax(params, grads, state, t, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """Kingma & Ba 2015 section 7, torch's form::

        m = beta1*m + (1 - beta1)*g;  u = maximum(beta2*u, abs(g) + eps)
        p -= (lr/(1 - beta1**t)) * m / u

    Bits.
    """
    params, state = _copied(params, state)
    m, u = _zeros(state, "m", params), _zeros(state, "u", params)
    for key, p in params.items():
        g = grads[key]
        m[key] = beta1 * m[key] + (1 - beta1) * g
        u[key] = np.maximum(beta2 * u[key], np.abs(g) + eps)
        p -= (lr / (1 - beta1**t)) * m[key] / u[key]
    return params, state


def adadelta(params, grads, state, t, lr=1.0, rho=0.9, eps=1e-6):
    """Zeiler 2012, torch's form::

        v = rho*v + (1 - rho)*g*g;  d = sqrt(u + eps)/sqrt(v + eps)*g
        u = rho*u + (1 - rho)*d*d;  p -= lr*d

    Bits.
    """
    params, state = _copied(params, state)
    v, u = _zeros(state, "v", params), _zeros(state, "u", params)
    for key, p in params.items():
        g = grads[key]
        v[key] = rho * v[key] + (1 - rho) * g * g
        d = np.sqrt(u[key] + eps) / np.sqrt(v[key] + eps) * g
        u[key] = rho * u[key] + (1 - rho) * d * d
        p -= lr * d
    return params, state


def adopt(params, grads, state, t, lr=1e-3, beta1=0.9, beta2=0.9999, eps=1e-6, clip_exp=0.333):
    """Taniguchi et al. 2024, timm's ``Adopt`` (coupled decay)::

        t = 1:  v = g*g                            (the param does not move)
        t > 1:  n = clip(g / max(sqrt(v), eps), -(t-1)**clip_exp, (t-1)**clip_exp)
                m = m + (1 - beta1)*(n - m);  p -= lr*m;  v = beta2*v + (1 - beta2)*g*g

    Bits.
    """
    params, state = _copied(params, state)
    m, v = _zeros(state, "m", params), _zeros(state, "v", params)
    for key, p in params.items():
        g = grads[key]
        if t == 1:
            v[key] = v[key] + g * g
            continue
        bound = (t - 1) ** clip_exp
        n = np.clip(g / np.maximum(np.sqrt(v[key]), eps), -bound, bound)
        m[key] = m[key] + (1 - beta1) * (n - m[key])
        p -= lr * m[key]
        v[key] = beta2 * v[key] + (1 - beta2) * g * g
    return params, state


def _norm(x):
    """The L2 norm of ``x`` in float64, as NumPy computes it."""
    return float(np.linalg.norm(np.asarray(x, dtype=np.float64).ravel()))


def lamb(params, grads, state, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01,
         trust_clip=False, always_adapt=False, weight_decay_filter=None):
    """You et al. 2020, timm's ``Lamb`` with ``max_grad_norm=None`` (decoupled decay)::

        m = beta1*m + (1 - beta1)*g;  v = beta2*v + (1 - beta2)*g*g
        d = (m/(1 - beta1**t)) / (sqrt(v)/sqrt(1 - beta2**t) + eps)  (+ weight_decay*p)
        r = ||p||/||d||  (1 where either is 0; only where the param decays or always_adapt;
                          at most 1 with trust_clip)
        p -= lr*(r*d)

    The norms are NumPy's (``np.linalg.norm`` in float64), fastopt's a float64 sum in a fixed
    blocking, so the two trust ratios can differ in their last bit: in float64 the params then
    differ by a few units in the last place (``LAMB_RTOL``); in float32 both ratios round to
    the same float32 unless one lies within 1e-16 of a rounding boundary.
    """
    params, state = _copied(params, state)
    m, v = _zeros(state, "m", params), _zeros(state, "v", params)
    d = _zeros(state, "direction", params)
    for key, p in params.items():
        g = grads[key]
        m[key] = beta1 * m[key] + (1 - beta1) * g
        v[key] = beta2 * v[key] + (1 - beta2) * g * g
        d[key] = (m[key] / (1 - beta1**t)) / (np.sqrt(v[key]) / math.sqrt(1 - beta2**t) + eps)
        decay = _decay_of(weight_decay, weight_decay_filter, key, p)
        if decay:
            d[key] = d[key] + decay * p
        ratio = 1.0
        if always_adapt or decay:
            weight_norm, direction_norm = _norm(p), _norm(d[key])
            if weight_norm > 0 and direction_norm > 0:
                ratio = weight_norm / direction_norm
            if trust_clip:
                ratio = min(ratio, 1.0)
        p -= lr * (ratio * d[key])
    return params, state


#: LAMB against its oracle: the params' largest difference relative to each array's largest
#: element, where the two trust ratios differ in their last bit (see the oracle's docstring).
#: Measured over tests/test_oracles.py's 100-step runs of every LAMB case: at most 4e-16 in
#: float64; 1e-13 leaves a margin of 250. float32: bits.
LAMB_RTOL = {np.dtype(np.float64): 1e-13, np.dtype(np.float32): EXACT}


def lars(params, grads, state, t, lr=1.0, momentum=0.0, dampening=0.0, weight_decay=0.0,
         nesterov=False, trust_coeff=0.001, eps=1e-8, trust_clip=False, always_adapt=False,
         weight_decay_filter=None):
    """You et al. 2017, timm's ``Lars`` (decoupled decay), per param::

        if weight_decay or always_adapt:
            r = trust_coeff*||p|| / (||g|| + ||p||*weight_decay + eps)  (1 where a norm is 0)
            r = min(r/lr, 1)                                  (trust_clip)
            g = (g + weight_decay*p)*r
        if momentum:  b = g (t = 1), else b = momentum*b + (1 - dampening)*g
                      g = g + momentum*b (nesterov), else g = b
        p -= lr*g

    The norms are NumPy's (``np.linalg.norm`` in float64), fastopt's a float64 sum in a fixed
    blocking, so the two trust ratios can differ in their last bit, and so the params by a
    few units in the last place in float64 (``LARS_RTOL``); in float32 both ratios round to
    the same float32 unless one lies within 1e-16 of a rounding boundary.
    """
    params, state = _copied(params, state)
    b = _zeros(state, "momentum_buffer", params) if momentum else None
    for key, p in params.items():
        g = grads[key]
        decay = _decay_of(weight_decay, weight_decay_filter, key, p)
        if always_adapt or decay:
            weight_norm, grad_norm = _norm(p), _norm(g)
            ratio = 1.0
            if weight_norm > 0 and grad_norm > 0:
                ratio = trust_coeff * weight_norm / (grad_norm + weight_norm * decay + eps)
            if trust_clip:
                ratio = min(ratio / lr, 1.0)
            if decay:
                g = g + decay * p
            g = g * ratio
        if momentum:
            if t == 1:
                b[key] = np.array(g, copy=True)
            else:
                b[key] = momentum * b[key] + (1 - dampening) * g
            g = g + momentum * b[key] if nesterov else b[key]
        p -= lr * g
    return params, state


#: LARS against its oracle, as LAMB_RTOL (the trust ratios' norms; see the oracle's docstring).
#: Measured over tests/test_oracles.py's 100-step runs of every LARS case: at most 4e-16 in
#: float64; 1e-13 leaves a margin of 250. float32: bits.
LARS_RTOL = {np.dtype(np.float64): 1e-13, np.dtype(np.float32): EXACT}


def lion(params, grads, state, t, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0,
         weight_decay_filter=None):
    """Chen et al. 2023, Algorithm 2 (decoupled decay)::

        c = beta1*m + (1 - beta1)*g
        p -= lr*(sign(c) + weight_decay*p)        (p -= lr*sign(c) without decay)
        m = beta2*m + (1 - beta2)*g

    Bits.
    """
    params, state = _copied(params, state)
    m = _zeros(state, "m", params)
    for key, p in params.items():
        g = grads[key]
        c = beta1 * m[key] + (1 - beta1) * g
        decay = _decay_of(weight_decay, weight_decay_filter, key, p)
        if decay:
            p -= lr * (np.sign(c) + decay * p)
        else:
            p -= lr * np.sign(c)
        m[key] = beta2 * m[key] + (1 - beta2) * g
    return params, state


# ---------------------------------------------------------------------------------------------
# Schedule-Free (Defazio et al. 2024, "The Road Less Scheduled"), as the schedulefree package's
# reference classes state it (``AdamWScheduleFreeReference.step``,
# ``SGDScheduleFreeReference.step``): each torch statement here in NumPy, in its order, with
# its scalars as Python floats (``addcdiv_(g, d, value=-lr)`` is ``z + (-lr)*(g/d)``,
# ``mul_(a).add_(b, alpha=c)`` is ``x*a + c*b``).

def _schedule_free_weight(state, t, lr, warmup_steps, r, weight_lr_power):
    """The step's learning rate and averaging weight ``ckp1``; updates the scalar state
    ``lr_max`` (-1 before the first step) and ``weight_sum``."""
    k = t - 1
    sched = (k + 1) / warmup_steps if k < warmup_steps else 1.0
    lr = lr * sched
    lr_max = state["lr_max"] = max(lr, state.get("lr_max", -1.0))
    weight = ((k + 1)**r) * (lr_max**weight_lr_power)
    weight_sum = state["weight_sum"] = state.get("weight_sum", 0.0) + weight
    try:
        ckp1 = weight / weight_sum
    except ZeroDivisionError:
        ckp1 = 0
    state["train_mode"] = 1.0
    return lr, ckp1


def _clones(state, name, params):
    """State ``name``: copies of each param where new (schedulefree's ``torch.clone(p)``)."""
    arrays = state.setdefault(name, {})
    for key, p in params.items():
        if key not in arrays:
            arrays[key] = np.array(p, copy=True)
    return arrays


def schedulefree_adamw(params, grads, state, t, lr=0.0025, beta1=0.9, beta2=0.999, eps=1e-8,
                       weight_decay=0.0, warmup_steps=0, r=0.0, weight_lr_power=2.0,
                       weight_decay_filter=None):
    """Schedule-Free AdamW (decoupled decay, at y: the params)::

        lr_k = lr*sched;  lr_max = max(lr_k, lr_max);  weight = t**r * lr_max**weight_lr_power
        weight_sum += weight;  ckp1 = weight/weight_sum
        z -= lr_k*weight_decay*y;  v = v*beta2 + (1 - beta2)*g*g
        z += -lr_k*(g/(sqrt(v/(1 - beta2**t)) + eps))
        x = x*(1 - ckp1) + ckp1*z;  y = x*beta1 + (1 - beta1)*z

    Bits.
    """
    params, state = _copied(params, state)
    lr, ckp1 = _schedule_free_weight(state, t, lr, warmup_steps, r, weight_lr_power)
    z, x = _clones(state, "z", params), _clones(state, "x", params)
    v = _zeros(state, "v", params)
    bias_correction2 = 1 - beta2**t
    for key, y in params.items():
        g = grads[key]
        decay = _decay_of(weight_decay, weight_decay_filter, key, y)
        if decay != 0:
            z[key] = z[key] - (lr * decay) * y
        v[key] = v[key] * beta2 + (1 - beta2) * g * g
        denom = np.sqrt(v[key] / bias_correction2) + eps
        z[key] = z[key] + (-lr) * (g / denom)
        x[key] = x[key] * (1 - ckp1) + ckp1 * z[key]
        y[...] = x[key] * beta1 + (1 - beta1) * z[key]
    state["last_beta1"] = beta1
    return params, state


def schedulefree_sgd(params, grads, state, t, lr=1.0, momentum=0.9, warmup_steps=0, r=0.0,
                     weight_lr_power=2.0):
    """Schedule-Free SGD (coupled decay ``g + weight_decay*y``, in the grads it is given)::

        lr_k, ckp1 as Schedule-Free AdamW's
        z -= lr_k*g;  x = x*(1 - ckp1) + ckp1*z;  y = x*momentum + (1 - momentum)*z

    Bits.
    """
    params, state = _copied(params, state)
    lr, ckp1 = _schedule_free_weight(state, t, lr, warmup_steps, r, weight_lr_power)
    z, x = _clones(state, "z", params), _clones(state, "x", params)
    for key, y in params.items():
        z[key] = z[key] - lr * grads[key]
        x[key] = x[key] * (1 - ckp1) + ckp1 * z[key]
        y[...] = x[key] * momentum + (1 - momentum) * z[key]
    state["last_momentum"] = momentum
    return params, state


def adafactor(params, grads, state, t, lr=1e-2, beta2_decay=-0.8, eps1=None, eps2=1e-3, d=1.0,
              weight_decay=0.0, weight_decay_filter=None):
    """Shazeer and Stern 2018 as torch.optim.Adafactor documents it (decoupled decay)::

        beta2_t = t**beta2_decay;  rho = min(lr, 1/sqrt(t))
        alpha = max(eps2, RMS(p))*rho;  p *= 1 - lr*weight_decay
        2+ dims: R = lerp(R, mean(g*g, -1), beta2_t);  C = lerp(C, mean(g*g, -2), beta2_t)
                 v = R@C / max(mean(R, -2), eps1)
        else:    V = lerp(V, g*g, beta2_t);  v = V
        u = g/sqrt(max(v, eps1**2));  p -= alpha/max(1, RMS(u)/d)*u

    ``eps1=None`` is the dtype's machine epsilon; a param with no elements is left alone. The
    means are NumPy's (pairwise sums), the outer product NumPy's matmul and the norms
    ``np.linalg.norm``, where fastopt adds in index order and in a fixed blocking: the two
    differ by rounding (``ADAFACTOR_RTOL``).
    """
    params, state = _copied(params, state)
    arrays = {name: state.setdefault(name, {}) for name in ("row_var", "col_var", "variance")}
    weight = t**beta2_decay

    def lerp(start, end):
        if abs(weight) < 0.5:
            return start + weight * (end - start)
        return end - (end - start) * (1 - weight)

    for key, p in params.items():
        g = grads[key]
        factored = p.ndim >= 2
        if key not in arrays["row_var"]:
            zeros = np.zeros((0,), p.dtype)
            arrays["row_var"][key] = (np.zeros((*p.shape[:-1], 1), p.dtype) if factored
                                      else zeros)
            arrays["col_var"][key] = (np.zeros((*p.shape[:-2], 1, p.shape[-1]), p.dtype)
                                      if factored else zeros)
            arrays["variance"][key] = zeros if factored else np.zeros(p.shape, p.dtype)
        if p.size == 0:
            continue
        floor = float(np.finfo(p.dtype).eps) if eps1 is None else eps1
        alpha = max(eps2, _norm(p) / math.sqrt(p.size)) * min(lr, 1 / math.sqrt(t))
        decay = _decay_of(weight_decay, weight_decay_filter, key, p)
        if decay:
            p *= 1 - lr * decay
        if factored:
            row = arrays["row_var"][key] = lerp(arrays["row_var"][key],
                                                np.mean(g * g, axis=-1, keepdims=True))
            col = arrays["col_var"][key] = lerp(arrays["col_var"][key],
                                                np.mean(g * g, axis=-2, keepdims=True))
            v = (row @ col) / np.maximum(np.mean(row, axis=-2, keepdims=True), floor)
        else:
            v = arrays["variance"][key] = lerp(arrays["variance"][key], g * g)
        u = g / np.sqrt(np.maximum(v, floor * floor))
        p -= alpha / max(1.0, _norm(u) / (math.sqrt(p.size) * d)) * u
    return params, state


#: Adafactor against its oracle: the largest difference relative to each array's largest
#: element, where NumPy's pairwise means, matmul and norms round differently from fastopt's
#: sums in index order and fixed blocking. Measured over tests/test_oracles.py's 100-step
#: runs of every Adafactor case (params and state): at most 7.5e-16 in float64, 4e-7 in
#: float32 (a few float32 ulps: the means' pairwise sums). 1e-13 and 4e-6 leave margins of
#: about 130 and 10, and still see lr off by one part in 10**9 (float64).
ADAFACTOR_RTOL = {np.dtype(np.float64): 1e-13, np.dtype(np.float32): 4e-6}


def muon(params, grads, state, t, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
         ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None,
         weight_decay_filter=None):
    """Jordan et al. 2024, torch.optim.Muon 2.13's documented algorithm, for 2-D params,
    without torch's bfloat16 cast (decoupled decay)::

        B = lerp(B, g, 1 - momentum);  U = lerp(g, B, momentum) if nesterov else B
        X = U.T if rows > cols else U;  X = X/max(||X||, eps)
        ns_steps times: A = X@X.T;  X = a*X + (b*A + c*A@A)@X
        O = X.T if rows > cols else X
        p *= 1 - lr*weight_decay
        p -= lr*sqrt(max(1, rows/cols))*O   ("match_rms_adamw": lr*0.2*sqrt(max(rows, cols)))

    ``lerp`` is torch's two forms by the weight's size. The norm is ``np.linalg.norm`` (in
    float64), fastopt's a float64 sum in a fixed blocking: the two can differ in their last
    bit, and the Newton-Schulz iteration, whose slope at small singular values is ``a`` per
    iteration, carries that into the params (``MUON_RTOL``); in float32 both norms round to
    the same float32 unless one lies within 1e-16 of a rounding boundary. The matrix
    products are NumPy's ``@`` on the oracle's own arrays (fastopt's into its buffers).
    """
    params, state = _copied(params, state)
    buffers = _zeros(state, "momentum_buffer", params)
    a, b, c = ns_coefficients

    def lerp(start, end, weight):
        if abs(weight) < 0.5:
            return start + weight * (end - start)
        return end - (end - start) * (1 - weight)

    for key, p in params.items():
        g = grads[key]
        buffers[key] = lerp(buffers[key], g, 1 - momentum)
        u = lerp(g, buffers[key], momentum) if nesterov else buffers[key]
        rows, cols = p.shape
        x = u.T if rows > cols else u
        x = x / max(_norm(x), eps)
        for _ in range(ns_steps):
            gram = x @ x.T
            x = a * x + (b * gram + c * (gram @ gram)) @ x
        o = x.T if rows > cols else x
        decay = _decay_of(weight_decay, weight_decay_filter, key, p)
        if decay:
            p *= 1 - lr * decay
        if adjust_lr_fn == "match_rms_adamw":
            adjusted = lr * (0.2 * math.sqrt(max(rows, cols)))
        else:
            adjusted = lr * math.sqrt(max(1, rows / cols))
        p -= adjusted * o
    return params, state


#: Muon against its oracle: the largest difference relative to each array's largest element,
#: where the norms differ in their last bit (see the oracle's docstring). Measured over
#: tests/test_oracles.py's 100-step runs of every Muon case (params and momentum buffers): at
#: most 3.5e-16 in float64; 1e-13 leaves a margin of about 300. float32: bits.
MUON_RTOL = {np.dtype(np.float64): 1e-13, np.dtype(np.float32): EXACT}
