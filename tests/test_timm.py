"""fastopt against timm's optimizers where fastopt has the same rule: LARS (timm's ``Lars``),
LAMB (``Lamb`` with ``max_grad_norm=None``: clipping is fastopt's own keyword) and ADOPT
(``Adopt``).

timm is an optional peer (``pip install --no-deps timm``: its optimizers need only torch); its
optimizer modules are loaded without timm's package init (``_helpers.timm_optim``), and the
whole module is skipped without timm or torch. Each case runs 100 float64 steps of random
grads of varying size over params of several shapes through ``fastopt.<Class>`` and through
timm's class on CPU (its single-tensor path, the default there), and compares every param
and state array after steps 1, 2, 10 and 100.

Tolerance. Not bits: torch's statements differ from the formulas fastopt follows (``lerp_``
for ADOPT's momentum, ``add_(x, alpha=a)`` and ``addcmul_`` that torch's vectorised kernels
may evaluate in another order than ``a*x`` then the sum), and the trust ratios' norms are
torch's reductions, fastopt's a blocked float64 sum. ``RTOL`` bounds each array's largest
difference relative to its largest element (normwise, as tests/test_torch_parity.py does);
measured over every case below: see ``RTOL``.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastopt

from _helpers import timm_optim

MODULES = {name: timm_optim(name) for name in ("lars", "lamb", "adopt")}
if None in MODULES.values():
    pytest.skip("timm and torch are not both installed (pip install --no-deps timm)",
                allow_module_level=True)

import torch  # noqa: E402  (only once timm's modules are known to load)

STEPS = 100
CHECKED = (1, 2, 10, STEPS)
SHAPES = {"W1": (50, 20), "b1": (20,), "odd": (7,), "cube": (3, 5, 11), "one": (1,)}

#: The largest normwise relative difference allowed, by class, measured over every case below:
#: LARS at most 4.4e-14 (with dampening: torch's ``add_(grad, alpha=1 - dampening)`` is fused,
#: NumPy's ``a*x + b*y`` is not, and at step 2 the 1-element param's buffer cancels to a few
#: hundred ulps of its terms), 5e-16 elsewhere; LAMB at most 1.1e-15; ADOPT at most 5.5e-16.
#: The bounds leave a margin of 20 to 100 and still see an lr off by one part in 10**6.
RTOL = {"LARS": 1e-12, "LAMB": 1e-13, "ADOPT": 1e-13}

# (fastopt class, its options); fastopt's ``beta1, beta2`` are timm's ``betas``.
CASES = [
    *[("LARS", options) for options in (
        {},
        {"momentum": 0.9},
        {"momentum": 0.9, "weight_decay": 1e-4},
        {"momentum": 0.9, "weight_decay": 1e-4, "nesterov": True},
        {"momentum": 0.9, "dampening": 0.1, "weight_decay": 5e-4},
        {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3, "trust_clip": True},
        {"momentum": 0.5, "always_adapt": True},
        {"lr": 0.5, "trust_coeff": 0.02, "eps": 1e-6, "weight_decay": 1e-2, "trust_clip": True,
         "always_adapt": True, "momentum": 0.8, "nesterov": True})],
    *[("LAMB", options) for options in (
        {},
        {"weight_decay": 0.0},
        {"trust_clip": True},
        {"weight_decay": 0.0, "always_adapt": True},
        {"lr": 1e-2, "beta1": 0.8, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1})],
    *[("ADOPT", options) for options in (
        {},
        {"weight_decay": 0.01},
        {"lr": 1e-2, "beta1": 0.8, "beta2": 0.99, "clip_exp": 0.5, "eps": 1e-8})],
]

TIMM_CLASSES = {"LARS": ("lars", "Lars"), "LAMB": ("lamb", "Lamb"), "ADOPT": ("adopt", "Adopt")}
# fastopt's state name -> timm's, by class
STATE = {"LARS": {"momentum_buffer": "momentum_buffer"},
         "LAMB": {"m": "exp_avg", "v": "exp_avg_sq"},
         "ADOPT": {"m": "exp_avg", "v": "exp_avg_sq"}}


def timm_options(name, options):
    """fastopt's keyword options as timm's class takes them."""
    options = dict(options)
    if "beta1" in options or "beta2" in options:
        defaults = {"LAMB": (0.9, 0.999), "ADOPT": (0.9, 0.9999)}[name]
        options["betas"] = (options.pop("beta1", defaults[0]), options.pop("beta2", defaults[1]))
    if name == "LAMB":
        options["max_grad_norm"] = None
    return options


def case_id(case):
    name, options = case
    return name + "".join(f"-{key}={value}" for key, value in options.items())


def grad_steps():
    rng = np.random.default_rng(31)
    return [{key: 0.5 * (1 + t % 3) * rng.standard_normal(shape)
             for key, shape in SHAPES.items()} for t in range(1, STEPS + 1)]


def run_both(name, options):
    """Both runs' params and state arrays after each CHECKED step: (fastopt's, timm's)."""
    rng = np.random.default_rng(5)
    start = {key: rng.standard_normal(shape) for key, shape in SHAPES.items()}
    ours = {key: value.copy() for key, value in start.items()}
    optimizer = getattr(fastopt, name)(**options)
    tensors = {key: torch.tensor(value.copy()) for key, value in start.items()}
    module, class_name = TIMM_CLASSES[name]
    theirs = getattr(MODULES[module], class_name)(list(tensors.values()),
                                                  **timm_options(name, options))
    seen_ours, seen_theirs = {}, {}
    for t, grads in enumerate(grad_steps(), start=1):
        optimizer.update(ours, grads)
        for key, tensor in tensors.items():
            tensor.grad = torch.tensor(grads[key])
        theirs.step()
        if t in CHECKED:
            seen_ours[t] = {f"param {key}": value.copy() for key, value in ours.items()}
            seen_theirs[t] = {f"param {key}": tensor.detach().numpy().copy()
                              for key, tensor in tensors.items()}
            for mine, timms in STATE[name].items():
                arrays = getattr(optimizer, mine)
                if arrays is None:   # LARS without momentum keeps no buffer; nor does timm
                    assert all(timms not in theirs.state[tensor] for tensor in tensors.values())
                    continue
                for key, tensor in tensors.items():
                    seen_ours[t][f"{mine} {key}"] = arrays[key].copy()
                    seen_theirs[t][f"{mine} {key}"] = theirs.state[tensor][timms].numpy().copy()
    return seen_ours, seen_theirs


def largest_difference(ours, theirs):
    """The largest normwise relative difference over every array at every checked step."""
    worst = 0.0
    for t in CHECKED:
        assert set(ours[t]) == set(theirs[t]), t
        for what, expected in theirs[t].items():
            actual = ours[t][what]
            assert actual.dtype == expected.dtype == np.float64 and actual.shape == expected.shape
            largest = np.max(np.abs(expected), initial=0.0)
            difference = np.max(np.abs(actual - expected), initial=0.0)
            if difference:
                worst = max(worst, difference / largest)
    return worst


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fastopt_follows_timm(case):
    name, options = case
    worst = largest_difference(*run_both(name, options))
    assert worst <= RTOL[name], f"{case_id(case)}: differs by {worst:.3g} of the largest element"


def test_the_tolerance_sees_a_learning_rate_off_by_one_part_in_a_million():
    # The comparison can fail: LARS with its lr changed by 1e-6 relative is caught.
    ours, theirs = run_both("LARS", {"momentum": 0.9, "weight_decay": 1e-4})
    optimizer = fastopt.LARS(lr=1.0 + 1e-6, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(5)
    params = {key: rng.standard_normal(shape) for key, shape in SHAPES.items()}
    for grads in grad_steps():
        optimizer.update(params, grads)
    largest = max(np.max(np.abs(theirs[STEPS][f"param {key}"])) for key in SHAPES)
    assert max(np.max(np.abs(params[key] - theirs[STEPS][f"param {key}"]))
               for key in SHAPES) > RTOL["LARS"] * largest
    assert largest_difference(ours, theirs) <= RTOL["LARS"]
