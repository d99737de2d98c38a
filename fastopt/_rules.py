"""The rules, each declared once: what fastopt's and fastopt.reference's classes are made of.

Each class here declares one rule (fastopt/_core.py says what a declaration holds): its
constructor with the names and defaults users see, its hyperparameters and their checks, its
options, its state, and ``_next_step``, the step's scalars by name with the NumPy rule and the
compiled loop that take them. ``fastopt.optimizers`` (compiled) and ``fastopt.reference``
(NumPy) each make their class of the same name from it; neither is the other's parent.
The scalars computed here in Python (bias corrections, step sizes) are float64, with
Python's ``**`` and ``math.sqrt``; fastopt/_kernels.pyx's call plan restates the few that
depend on the step count (``Step.form``) with the same IEEE operations.

This module carries code restated from *Deep Learning from Scratch* (Koki Saitoh, O'Reilly
Japan), MIT-licensed: see the notice in ``LICENSES/``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np

from . import _validation as v
from ._core import DecayFilter, Hyper, OptimizerCore, Params, State, Step
from ._validation import Check

__all__ = ["ADOPT", "LAMB", "LARS", "RULES", "SGD", "AdaGrad", "Adadelta", "Adafactor",
           "Adam", "AdamW", "Adamax", "Lion", "Momentum", "Muon", "NAdam", "Nesterov", "RAdam",
           "RMSprop", "ScheduleFreeAdamW", "ScheduleFreeSGD"]


class SGD(OptimizerCore):
    """``p -= lr*g``."""

    def __init__(self, lr: Hyper = 0.01, *, weight_decay: Hyper = 0.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def _next_step(self, values: dict[str, float]) -> Step:
        return Step("sgd", {"lr": values["lr"]}, {"iter": self.iter + 1}, "sgd")


class Momentum(OptimizerCore):
    """``v = momentum*v - lr*g; p += v``."""

    _states = ("v",)
    _hyperparameters = {"lr": v.check_learning_rate, "momentum": v.check_coefficient}
    momentum: Hyper
    v: State

    def __init__(self, lr: Hyper = 0.01, momentum: Hyper = 0.9, *, weight_decay: Hyper = 0.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.momentum = momentum
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def _next_step(self, values: dict[str, float]) -> Step:
        return Step("momentum", {"lr": values["lr"], "momentum": values["momentum"]},
                    {"iter": self.iter + 1}, "momentum")


class Nesterov(Momentum):
    """Nesterov momentum; ``velocity_first=True`` is the book's 2016 order."""

    _options = ("velocity_first",)
    velocity_first: bool

    def __init__(self, lr: Hyper = 0.01, momentum: Hyper = 0.9, *,
                 velocity_first: bool = False, weight_decay: Hyper = 0.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.velocity_first = velocity_first
        super().__init__(lr, momentum, weight_decay=weight_decay,
                         weight_decay_filter=weight_decay_filter, max_grad_norm=max_grad_norm)

    def _next_step(self, values: dict[str, float]) -> Step:
        return Step("nesterov", {"lr": values["lr"], "momentum": values["momentum"],
                                 "velocity_first": bool(self.velocity_first)},
                    {"iter": self.iter + 1}, "nesterov")


class AdaGrad(OptimizerCore):
    """``h += g*g; p -= lr*g / (sqrt(h) + eps)``."""

    _states = ("h",)
    _hyperparameters = {"lr": v.check_learning_rate, "eps": v.check_epsilon}
    _options = ("eps_inside_sqrt",)
    eps: Hyper
    eps_inside_sqrt: bool
    h: State

    def __init__(self, lr: Hyper = 0.01, *, eps: Hyper = 1e-7, eps_inside_sqrt: bool = False,
                 weight_decay: Hyper = 0.0, weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.eps = eps
        self.eps_inside_sqrt = eps_inside_sqrt
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def _next_step(self, values: dict[str, float]) -> Step:
        return Step("adagrad", {"lr": values["lr"], "eps": values["eps"],
                                "eps_inside_sqrt": bool(self.eps_inside_sqrt)},
                    {"iter": self.iter + 1}, "adagrad")


class RMSprop(OptimizerCore):
    """``h *= decay_rate; h += (1-decay_rate)*g*g; p -= lr*g / (sqrt(h) + eps)``, with torch's
    ``centered`` and ``momentum`` forms as options."""

    _hyperparameters = {"lr": v.check_learning_rate, "decay_rate": v.check_coefficient,
                        "eps": v.check_epsilon, "momentum": v.check_coefficient}
    _options = ("eps_inside_sqrt", "centered")
    decay_rate: Hyper
    eps: Hyper
    momentum: Hyper
    eps_inside_sqrt: bool
    centered: bool
    h: State
    grad_avg: State
    momentum_buffer: State

    def __init__(self, lr: Hyper = 0.01, decay_rate: Hyper = 0.99, *, eps: Hyper = 1e-7,
                 eps_inside_sqrt: bool = False, centered: bool = False, momentum: Hyper = 0.0,
                 weight_decay: Hyper = 0.0, weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.decay_rate = decay_rate
        self.eps = eps
        self.eps_inside_sqrt = eps_inside_sqrt
        self.centered = centered
        self.momentum = momentum
        self.grad_avg = self.momentum_buffer = None
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    @property
    def _uses_momentum(self) -> bool:
        """Momentum is used (with its buffer) when it is a schedule or nonzero."""
        return callable(self.momentum) or self.momentum != 0

    @property
    def state_names(self) -> tuple[str, ...]:
        return (("h",) + (("grad_avg",) if self.centered else ())
                + (("momentum_buffer",) if self._uses_momentum else ()))

    def _next_step(self, values: dict[str, float]) -> Step:
        return Step("rmsprop", {"lr": values["lr"], "decay_rate": values["decay_rate"],
                                "eps": values["eps"],
                                "eps_inside_sqrt": bool(self.eps_inside_sqrt),
                                "momentum": values["momentum"]},
                    {"iter": self.iter + 1}, "rmsprop")

    def _rule_state_names(self) -> list[str | None]:
        return ["h", "grad_avg" if self.centered else None,
                "momentum_buffer" if self._uses_momentum else None]



class Adam(OptimizerCore):
    """The book's Adam, or the paper's Algorithm 1 with ``paper_form=True``; ``amsgrad=True``
    keeps the running maximum of ``v`` and divides by it."""

    _hyperparameters = {"lr": v.check_learning_rate, "beta1": v.check_coefficient,
                        "beta2": v.check_coefficient, "eps": v.check_epsilon}
    _options = ("eps_inside_sqrt", "paper_form", "amsgrad")
    beta1: Hyper
    beta2: Hyper
    eps: Hyper
    eps_inside_sqrt: bool
    paper_form: bool
    amsgrad: bool
    m: State
    v: State
    v_max: State

    def __init__(self, lr: Hyper = 0.001, beta1: Hyper = 0.9, beta2: Hyper = 0.999, *,
                 eps: Hyper | None = None, eps_inside_sqrt: bool = False,
                 paper_form: bool = False, amsgrad: bool = False, weight_decay: Hyper = 0.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.paper_form = v.check_option("paper_form", paper_form)
        self.eps = (1e-8 if self.paper_form else 1e-7) if eps is None else eps
        self.eps_inside_sqrt = eps_inside_sqrt
        self.amsgrad = amsgrad
        self.v_max = None
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("m", "v", "v_max") if self.amsgrad else ("m", "v")

    def _rule_state_names(self) -> list[str | None]:
        return ["m", "v", "v_max" if self.amsgrad else None]

    def _next_step(self, values: dict[str, float]) -> Step:
        t = self.iter + 1
        lr, beta1, beta2 = values["lr"], values["beta1"], values["beta2"]
        inside = bool(self.eps_inside_sqrt)
        if self.paper_form:
            return Step("adam_paper", {"lr": lr, "beta1": beta1, "beta2": beta2,
                                       "bias_correction1": 1 - beta1**t,
                                       "bias_correction2": 1 - beta2**t,
                                       "eps": values["eps"], "eps_inside_sqrt": inside},
                        {"iter": t}, "adam_paper", "bias_corrections")
        # The book computes lr_t with np.sqrt, so it is a NumPy float64 (which makes NumPy
        # compute the last statement in float64 for float32 arrays); math.sqrt gives its bits.
        lr_t = np.float64(lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t))
        return Step("adam", {"lr_t": lr_t, "beta1": beta1, "beta2": beta2, "eps": values["eps"],
                             "eps_inside_sqrt": inside},
                    {"iter": t}, "adam_amsgrad" if self.amsgrad else "adam", "lr_t")



class AdamW(Adam):
    """torch's AdamW: decoupled weight decay ``p -= lr*weight_decay*p``, then Adam with the
    bias corrections of torch."""

    _decoupled = True

    def __init__(self, lr: Hyper = 0.001, beta1: Hyper = 0.9, beta2: Hyper = 0.999, *,
                 eps: Hyper = 1e-8, weight_decay: Hyper = 1e-2, amsgrad: bool = False,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        if eps is None:   # Adam reads None as "the default of its form"; AdamW has one default
            v.to_float("eps", eps)
        super().__init__(lr, beta1, beta2, eps=eps, amsgrad=amsgrad, paper_form=True,
                         weight_decay=weight_decay, weight_decay_filter=weight_decay_filter,
                         max_grad_norm=max_grad_norm)

    def _next_step(self, values: dict[str, float]) -> Step:
        t = self.iter + 1
        lr, beta1, beta2 = values["lr"], values["beta1"], values["beta2"]
        return Step("adamw", {"beta1": beta1, "beta2": beta2, "step_size": lr / (1 - beta1**t),
                              "bias_correction2_sqrt": math.sqrt(1 - beta2**t),
                              "eps": values["eps"],
                              "decoupled_decay": lr * values["weight_decay"]},
                    {"iter": t}, "adamw", "step_size_and_sqrt")


class NAdam(OptimizerCore):
    """torch's NAdam (Dozat 2016) with its momentum schedule
    ``mu_t = beta1*(1 - 0.5*0.96**(t*momentum_decay))``."""

    _states = ("m", "v")
    _hyperparameters = {"lr": v.check_learning_rate, "beta1": v.check_coefficient,
                        "beta2": v.check_coefficient, "eps": v.check_epsilon,
                        "momentum_decay": v.check_nonnegative}
    beta1: Hyper
    beta2: Hyper
    eps: Hyper
    momentum_decay: Hyper
    _scalar_state = {"mu_product": (1.0, v.check_unit_interval)}
    mu_product: float
    m: State
    v: State

    def __init__(self, lr: Hyper = 2e-3, beta1: Hyper = 0.9, beta2: Hyper = 0.999, *,
                 eps: Hyper = 1e-8, momentum_decay: Hyper = 4e-3, weight_decay: Hyper = 0.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.momentum_decay = momentum_decay
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def _next_step(self, values: dict[str, float]) -> Step:
        t = self.iter + 1
        lr, beta1, beta2 = values["lr"], values["beta1"], values["beta2"]
        decay = values["momentum_decay"]
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * decay))
        mu_product = self.mu_product * mu
        grad_step = lr * (1.0 - mu) / (1.0 - mu_product)
        momentum_step = lr * mu_next / (1.0 - mu_product * mu_next)
        return Step("nadam", {"beta1": beta1, "beta2": beta2, "bias_correction2": 1 - beta2**t,
                              "eps": values["eps"], "grad_step": grad_step,
                              "momentum_step": momentum_step},
                    {"iter": t, "mu_product": mu_product}, "nadam", None)


class RAdam(OptimizerCore):
    """torch's RAdam (Liu et al. 2020): rectified when ``rho_t > 5``."""

    _states = ("m", "v")
    _hyperparameters = {"lr": v.check_learning_rate, "beta1": v.check_coefficient,
                        "beta2": v.check_coefficient, "eps": v.check_epsilon}
    beta1: Hyper
    beta2: Hyper
    eps: Hyper
    m: State
    v: State

    def __init__(self, lr: Hyper = 1e-3, beta1: Hyper = 0.9, beta2: Hyper = 0.999, *,
                 eps: Hyper = 1e-8, weight_decay: Hyper = 0.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def _next_step(self, values: dict[str, float]) -> Step:
        t = self.iter + 1
        lr, beta1, beta2 = values["lr"], values["beta1"], values["beta2"]
        bias_correction1 = 1 - beta1**t
        bias_correction2 = 1 - beta2**t
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * t * (beta2**t) / bias_correction2
        rectified = rho_t > 5.0
        rectification = (math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                                   / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                         if rectified else 0.0)
        return Step("radam", {"lr": lr, "beta1": beta1, "beta2": beta2,
                              "bias_correction1": bias_correction1,
                              "bias_correction2_sqrt": math.sqrt(bias_correction2),
                              "eps": values["eps"], "rectified": rectified,
                              "rectification": rectification},
                    {"iter": t}, "radam", None)


class Adamax(OptimizerCore):
    """torch's Adamax: ``u = max(beta2*u, abs(g) + eps); p -= (lr/(1-beta1**t))*m/u``."""

    _states = ("m", "u")
    _hyperparameters = {"lr": v.check_learning_rate, "beta1": v.check_coefficient,
                        "beta2": v.check_coefficient, "eps": v.check_epsilon}
    beta1: Hyper
    beta2: Hyper
    eps: Hyper
    m: State
    u: State

    def __init__(self, lr: Hyper = 2e-3, beta1: Hyper = 0.9, beta2: Hyper = 0.999, *,
                 eps: Hyper = 1e-8, weight_decay: Hyper = 0.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def _next_step(self, values: dict[str, float]) -> Step:
        t = self.iter + 1
        lr, beta1 = values["lr"], values["beta1"]
        return Step("adamax", {"beta1": beta1, "beta2": values["beta2"],
                               "step_size": lr / (1 - beta1**t), "eps": values["eps"]},
                    {"iter": t}, "adamax", "step_size")


class Adadelta(OptimizerCore):
    """torch's Adadelta: ``v = rho*v + (1-rho)*g*g; d = sqrt(u + eps)/sqrt(v + eps)*g;
    u = rho*u + (1-rho)*d*d; p -= lr*d``."""

    _states = ("v", "u")
    _hyperparameters = {"lr": v.check_learning_rate, "rho": v.check_coefficient,
                        "eps": v.check_epsilon}
    rho: Hyper
    eps: Hyper
    v: State
    u: State

    def __init__(self, lr: Hyper = 1.0, rho: Hyper = 0.9, *, eps: Hyper = 1e-6,
                 weight_decay: Hyper = 0.0, weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.rho = rho
        self.eps = eps
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def _next_step(self, values: dict[str, float]) -> Step:
        return Step("adadelta", {"lr": values["lr"], "rho": values["rho"], "eps": values["eps"]},
                    {"iter": self.iter + 1}, "adadelta")


class Lion(OptimizerCore):
    """Lion (Chen et al. 2023): ``c = beta1*m + (1-beta1)*g;
    p -= lr*(sign(c) + weight_decay*p); m = beta2*m + (1-beta2)*g``."""

    _states = ("m",)
    _hyperparameters = {"lr": v.check_learning_rate, "beta1": v.check_coefficient,
                        "beta2": v.check_coefficient}
    _decoupled = True
    beta1: Hyper
    beta2: Hyper
    m: State

    def __init__(self, lr: Hyper = 1e-4, beta1: Hyper = 0.9, beta2: Hyper = 0.99, *,
                 weight_decay: Hyper = 0.0, weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def _next_step(self, values: dict[str, float]) -> Step:
        return Step("lion", {"lr": values["lr"], "beta1": values["beta1"],
                             "beta2": values["beta2"], "decoupled_decay": values["weight_decay"]},
                    {"iter": self.iter + 1}, "lion")


class ADOPT(OptimizerCore):
    """ADOPT (Taniguchi et al. 2024), as timm's Adopt: the grad normalised by the second
    moment of the steps before it, clipped, drives the momentum; the first update only
    measures the second moment."""

    _states = ("m", "v")
    _hyperparameters = {"lr": v.check_learning_rate, "beta1": v.check_coefficient,
                        "beta2": v.check_coefficient, "eps": v.check_epsilon,
                        "clip_exp": v.check_nonnegative}
    beta1: Hyper
    beta2: Hyper
    eps: Hyper
    clip_exp: Hyper
    m: State
    v: State

    def __init__(self, lr: Hyper = 1e-3, beta1: Hyper = 0.9, beta2: Hyper = 0.9999, *,
                 eps: Hyper = 1e-6, clip_exp: Hyper = 0.333, weight_decay: Hyper = 0.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.clip_exp = clip_exp
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def _next_step(self, values: dict[str, float]) -> Step:
        t = self.iter + 1
        return Step("adopt", {"lr": values["lr"], "beta1": values["beta1"],
                              "beta2": values["beta2"], "eps": values["eps"],
                              "clip": (t - 1) ** values["clip_exp"], "first": t == 1},
                    {"iter": t}, "adopt", None)


class LAMB(OptimizerCore):
    """LAMB (You et al. 2020), as timm's Lamb: Adam's bias-corrected direction plus decoupled
    weight decay, scaled per param by the trust ratio ``||p|| / ||direction||``."""

    _states = ("m", "v", "direction")
    _hyperparameters = {"lr": v.check_learning_rate, "beta1": v.check_coefficient,
                        "beta2": v.check_coefficient, "eps": v.check_epsilon}
    _options = ("trust_clip", "always_adapt")
    _decoupled = True
    _reduced = ("param", "direction")
    beta1: Hyper
    beta2: Hyper
    eps: Hyper
    trust_clip: bool
    always_adapt: bool
    m: State
    v: State
    direction: State

    def __init__(self, lr: Hyper = 1e-3, beta1: Hyper = 0.9, beta2: Hyper = 0.999, *,
                 eps: Hyper = 1e-6, weight_decay: Hyper = 0.01, trust_clip: bool = False,
                 always_adapt: bool = False, weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.trust_clip = trust_clip
        self.always_adapt = always_adapt
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def _next_step(self, values: dict[str, float]) -> Step:
        t = self.iter + 1
        beta1, beta2 = values["beta1"], values["beta2"]
        return Step("lamb", {"beta1": beta1, "beta2": beta2, "bias_correction1": 1 - beta1**t,
                             "bias_correction2_sqrt": math.sqrt(1 - beta2**t),
                             "eps": values["eps"], "decoupled_decay": values["weight_decay"]},
                    {"iter": t}, "lamb", None, second="lamb_apply")

    def _per_param(self, values: dict[str, float], sums: tuple[float, ...],
                   decays: bool, shape: tuple[int, ...]) -> dict[str, float]:
        """The trust ratio ``||p|| / ||direction||`` (1 where either norm is 0 or nan, and when
        the param does not adapt: no decay and not ``always_adapt``), at most 1 with
        ``trust_clip``."""
        ratio = 1.0
        if self.always_adapt or (decays and values["weight_decay"] != 0):
            weight_norm, direction_norm = math.sqrt(sums[0]), math.sqrt(sums[1])
            if weight_norm > 0 and direction_norm > 0:
                ratio = weight_norm / direction_norm
            if self.trust_clip:
                ratio = min(ratio, 1.0)
        return {"lr": values["lr"], "ratio": ratio}


class _ScheduleFree(OptimizerCore):
    """What the two Schedule-Free rules (Defazio et al. 2024) share, as schedulefree's
    ``*ScheduleFreeReference`` classes compute it: the averaging weight ``ckp1`` of each step
    from the float state ``weight_sum`` and ``lr_max``, the state ``z`` (the base sequence)
    and ``x`` (its weighted average), both copies of the param at its first update, and the
    params' two modes. While training (``train_mode`` 1.0) the params hold
    ``y = momentum*x + (1 - momentum)*z`` (AdamW's ``beta1``), where the grads are taken;
    ``eval(params)`` puts ``x`` into them (``train_mode`` 0.0), ``train(params)`` puts ``y``
    back, recomputed from ``x``, ``z`` and the last step's coefficient (``_y_state``) with the
    step's own statement, so it has the step's bits. No update runs in eval mode."""

    _scalar_state = {"weight_sum": (0.0, v.check_weight_sum),
                     "lr_max": (-1.0, v.check_running_max),
                     "train_mode": (1.0, v.check_flag)}
    _y_state = ""   # the float state that holds the last step's y coefficient
    warmup_steps: Hyper
    r: Hyper
    weight_lr_power: Hyper
    weight_sum: float
    lr_max: float
    train_mode: float
    z: State
    x: State

    def _new_state(self, name: str, param: Any) -> Any:
        """``z`` and ``x`` start as copies of the param (schedulefree's ``torch.clone``), other
        state at zero."""
        state = self._zeros(param)
        if name in ("z", "x"):
            state[...] = param
        return state

    @property
    def training(self) -> bool:
        """Whether the params hold ``y`` (the training point) rather than ``x``."""
        return bool(self.train_mode)

    def _averaging(self, values: dict[str, float]) -> tuple[float, float, dict[str, Any]]:
        """The step's learning rate (warmup applied), its averaging weight ``ckp1`` (0 while
        the weights sum to 0), and what it sets: ``iter``, ``weight_sum``, ``lr_max``, and
        ``train_mode`` (still 1.0: no step runs in eval mode)."""
        if not self.train_mode:
            raise RuntimeError(f"{type(self).__name__} is in eval mode (the params hold x, the "
                               f"average); call train(params) before update, as "
                               f"schedulefree requires")
        k = self.iter
        warmup = values["warmup_steps"]
        sched = (k + 1) / warmup if k < warmup else 1.0
        lr = values["lr"] * sched
        lr_max = max(lr, self.lr_max)
        try:
            weight = ((k + 1) ** values["r"]) * (lr_max ** values["weight_lr_power"])
        except OverflowError:
            raise ValueError(f"the averaging weight (k+1)**r * lr_max**weight_lr_power "
                             f"overflows at step {k} (r={values['r']!r}, "
                             f"weight_lr_power={values['weight_lr_power']!r}, "
                             f"lr_max={lr_max!r})") from None
        weight_sum = self.weight_sum + weight
        try:
            ckp1 = weight / weight_sum
        except ZeroDivisionError:
            ckp1 = 0.0
        return lr, ckp1, {"iter": k + 1, "weight_sum": weight_sum, "lr_max": lr_max,
                          "train_mode": 1.0}

    # --- the two modes ----------------------------------------------------------------------

    def eval(self, params: Params) -> None:
        """Put ``x`` (the average, the point to evaluate) into the params, in place; nothing
        if they hold it already. Params without state (never updated) are left as they are.

        Raises
        ------
        TypeError, ValueError, KeyError
            If ``params`` are not the params this optimizer updates (a key or position it
            keeps state for is missing, or of another shape or dtype, or read-only); nothing
            changes then.
        """
        self._switch(params, False)

    def train(self, params: Params) -> None:
        """Put ``y`` (the training point) back into the params, in place; nothing if they hold
        it already. Raises as ``eval``."""
        self._switch(params, True)

    def _switch(self, params: Params, training: bool) -> None:
        with self._lock:
            targets = self._switch_targets(params)
            if self.training == training:
                return
            # Every target is written whole before the mode changes: a switch stopped part way
            # (Ctrl-C) is finished by calling the same method again.
            keys = [key for key, _ in targets]
            xs = [self.x[key] for key in keys]   # type: ignore[index]
            if training:
                zs = [self.z[key] for key in keys]   # type: ignore[index]
                self._interpolate(params, keys, xs, zs, float(getattr(self, self._y_state)))
            else:
                for (key, param), x in zip(targets, xs, strict=True):
                    if isinstance(param, np.ndarray):
                        np.copyto(param, x)
                    else:
                        params[key] = x[()]   # type: ignore[index]
            self.train_mode = 1.0 if training else 0.0

    def _switch_targets(self, params: Params) -> list[tuple[Any, Any]]:
        """(key, param) of every param this optimizer keeps state for, checked."""
        by_key = isinstance(params, Mapping)
        if not by_key and not isinstance(params, (list, tuple)):
            raise TypeError(f"params must be a dict of arrays (or a list or tuple of arrays); "
                            f"got {type(params).__name__}")
        kept = self.x
        if kept is None:
            return []
        if isinstance(kept, dict) != by_key:
            how = "by key (a dict)" if isinstance(kept, dict) else "by position (a list)"
            raise TypeError(f"the state is kept {how}, but params is a "
                            f"{type(params).__name__}; pass the params given to update")
        writable = isinstance(params, (MutableMapping, list))
        targets = []
        for key in (kept if by_key else range(len(kept))):
            if (key not in params) if by_key else (key >= len(params)):
                raise KeyError(f"params has no entry for param {key!r}, whose state this "
                               f"optimizer keeps; pass the params given to update")
            param = params[key]
            x = kept[key]
            if isinstance(param, np.ndarray):
                if param.shape != x.shape or param.dtype != x.dtype:
                    raise ValueError(f"param {key!r} has shape {param.shape} and dtype "
                                     f"{param.dtype}, but its state has shape {x.shape} and "
                                     f"dtype {x.dtype}; pass the params given to update")
                if not param.flags.writeable:
                    raise ValueError(f"param {key!r} is read-only; eval and train write the "
                                     f"params in place")
            elif isinstance(param, (float, np.floating)) and x.shape == ():
                if not writable:
                    raise TypeError(f"param {key!r} is a scalar in a {type(params).__name__}, "
                                    f"which cannot be written; pass a list or dict")
            else:
                raise TypeError(f"param {key!r} is a {type(param).__name__}; expected the "
                                f"array (or float scalar) given to update, of shape {x.shape}")
            targets.append((key, param))
        return targets

    @staticmethod
    def _interpolate(params: Params, keys: list[Any], xs: list[Any], zs: list[Any],
                     momentum: float) -> None:
        """``params[key] = momentum*x + (1 - momentum)*z`` for each key, in place (a scalar's
        new value stored back): NumPy's (fastopt.reference) or the compiled loop's."""
        raise NotImplementedError


class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-Free AdamW (Defazio et al. 2024), as ``schedulefree.AdamWScheduleFreeReference``:
    Adam's normalised step on ``z``, ``x`` its weighted average, the params at
    ``y = beta1*x + (1 - beta1)*z``."""

    _states = ("z", "v", "x")
    _hyperparameters = {"lr": v.check_learning_rate, "beta1": v.check_coefficient,
                        "beta2": v.check_coefficient, "eps": v.check_epsilon,
                        "warmup_steps": v.check_nonnegative, "r": v.check_nonnegative,
                        "weight_lr_power": v.check_nonnegative}
    _scalar_state = {**_ScheduleFree._scalar_state, "last_beta1": (0.0, v.check_coefficient)}
    _y_state = "last_beta1"
    _decoupled = True
    beta1: Hyper
    beta2: Hyper
    eps: Hyper
    last_beta1: float
    v: State

    def __init__(self, lr: Hyper = 0.0025, beta1: Hyper = 0.9, beta2: Hyper = 0.999, *,
                 eps: Hyper = 1e-8, weight_decay: Hyper = 0.0, warmup_steps: Hyper = 0,
                 r: Hyper = 0.0, weight_lr_power: Hyper = 2.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.warmup_steps = warmup_steps
        self.r = r
        self.weight_lr_power = weight_lr_power
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def _next_step(self, values: dict[str, float]) -> Step:
        lr, ckp1, after = self._averaging(values)
        beta1, beta2 = values["beta1"], values["beta2"]
        return Step("schedulefree_adamw",
                    {"lr": lr, "beta1": beta1, "beta2": beta2,
                     "bias_correction2": 1 - beta2 ** after["iter"], "eps": values["eps"],
                     "ckp1": ckp1, "decoupled_decay": lr * values["weight_decay"]},
                    {**after, "last_beta1": beta1}, "schedulefree_adamw", None)


class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-Free SGD (Defazio et al. 2024), as ``schedulefree.SGDScheduleFreeReference``:
    SGD's step on ``z``, ``x`` its weighted average, the params at
    ``y = momentum*x + (1 - momentum)*z``."""

    _states = ("z", "x")
    _hyperparameters = {"lr": v.check_learning_rate, "momentum": v.check_coefficient,
                        "warmup_steps": v.check_nonnegative, "r": v.check_nonnegative,
                        "weight_lr_power": v.check_nonnegative}
    _scalar_state = {**_ScheduleFree._scalar_state, "last_momentum": (0.0, v.check_coefficient)}
    _y_state = "last_momentum"
    momentum: Hyper
    last_momentum: float

    def __init__(self, lr: Hyper = 1.0, momentum: Hyper = 0.9, *, weight_decay: Hyper = 0.0,
                 warmup_steps: Hyper = 0, r: Hyper = 0.0, weight_lr_power: Hyper = 2.0,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.momentum = momentum
        self.warmup_steps = warmup_steps
        self.r = r
        self.weight_lr_power = weight_lr_power
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def _next_step(self, values: dict[str, float]) -> Step:
        lr, ckp1, after = self._averaging(values)
        momentum = values["momentum"]
        return Step("schedulefree_sgd", {"lr": lr, "momentum": momentum, "ckp1": ckp1},
                    {**after, "last_momentum": momentum}, "schedulefree_sgd", None)


def _row_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Adafactor's ``row_var``: the mean square over the last axis (size 0 when not factored)."""
    return (*shape[:-1], 1) if len(shape) >= 2 else (0,)


def _col_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Adafactor's ``col_var``: the mean square over the axis before the last (size 0 when
    not factored)."""
    return (*shape[:-2], 1, shape[-1]) if len(shape) >= 2 else (0,)


def _variance_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Adafactor's ``variance``: the param's shape when not factored (size 0 when factored)."""
    return (0,) if len(shape) >= 2 else shape


class Adafactor(OptimizerCore):
    """torch's Adafactor (Shazeer and Stern 2018): for a param of 2 or more dims, the second
    moment as the product of a row and a column factor; a relative step size; the update
    clipped by its root mean square."""

    _states = ("row_var", "col_var", "variance")
    _state_shapes = {"row_var": _row_shape, "col_var": _col_shape, "variance": _variance_shape}
    _hyperparameters = {"lr": v.check_learning_rate, "beta2_decay": v.check_nonpositive,
                        "eps2": v.check_nonnegative, "d": v.check_at_least_one}
    _decoupled = True
    beta2_decay: Hyper
    eps1: Hyper | None
    eps2: Hyper
    d: Hyper
    row_var: State
    col_var: State
    variance: State

    def __init__(self, lr: Hyper = 1e-2, *, beta2_decay: Hyper = -0.8,
                 eps1: Hyper | None = None, eps2: Hyper = 1e-3, d: Hyper = 1.0,
                 weight_decay: Hyper = 0.0, weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.beta2_decay = beta2_decay
        self.eps1 = eps1
        self.eps2 = eps2
        self.d = d
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def _all_hyperparameters(self) -> dict[str, Check]:
        """``eps1`` is a hyperparameter (a number or a schedule, >= 0) unless it is None: then
        each param's dtype's machine epsilon."""
        if self.eps1 is None:
            return self._checks
        return {**self._checks, "eps1": v.check_nonnegative}

    def _param_shape(self, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...] | None:
        row, col = shapes.get("row_var"), shapes.get("col_var")
        variance = shapes.get("variance")
        if row is None or col is None or variance is None:
            return None
        if len(row) >= 2 and len(col) == len(row):
            return (*row[:-1], col[-1])
        if row == col == (0,) and len(variance) < 2:
            return variance
        return None

    def _next_step(self, values: dict[str, float]) -> Step:
        t = self.iter + 1
        lr = values["lr"]
        eps1 = values.get("eps1")
        return Step("adafactor", {"step_lr": min(lr, 1 / t**0.5),
                                  "lerp_weight": t ** values["beta2_decay"],
                                  "eps1": 0.0 if eps1 is None else eps1,
                                  "eps1_of_dtype": eps1 is None, "eps2": values["eps2"],
                                  "clip_threshold": values["d"],
                                  "decoupled_decay": lr * values["weight_decay"]},
                    {"iter": t}, "adafactor", None)


class LARS(OptimizerCore):
    """LARS (You et al. 2017), as timm's Lars: per param, the grad plus decoupled weight decay
    scaled by the trust ratio ``trust_coeff*||p|| / (||g|| + weight_decay*||p|| + eps)``,
    then SGD's momentum."""

    _hyperparameters = {"lr": v.check_learning_rate, "momentum": v.check_coefficient,
                        "dampening": v.check_coefficient, "trust_coeff": v.check_nonnegative,
                        "eps": v.check_epsilon}
    _options = ("nesterov", "trust_clip", "always_adapt")
    _decoupled = True
    _reduced = ("param", "grad")
    momentum: Hyper
    dampening: Hyper
    trust_coeff: Hyper
    eps: Hyper
    nesterov: bool
    trust_clip: bool
    always_adapt: bool
    momentum_buffer: State

    def __init__(self, lr: Hyper = 1.0, momentum: Hyper = 0.0, *, dampening: Hyper = 0.0,
                 weight_decay: Hyper = 0.0, nesterov: bool = False, trust_coeff: Hyper = 0.001,
                 eps: Hyper = 1e-8, trust_clip: bool = False, always_adapt: bool = False,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.momentum = momentum
        self.dampening = dampening
        self.nesterov = nesterov
        self.trust_coeff = trust_coeff
        self.eps = eps
        self.trust_clip = trust_clip
        self.always_adapt = always_adapt
        self.momentum_buffer = None
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    @property
    def _uses_momentum(self) -> bool:
        """Momentum is used (with its buffer) when it is a schedule or nonzero."""
        return callable(self.momentum) or self.momentum != 0

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self._uses_momentum else ()

    def _rule_state_names(self) -> list[str | None]:
        return ["momentum_buffer" if self._uses_momentum else None]

    def _next_step(self, values: dict[str, float]) -> Step:
        # Every statement follows the norms of the param and grad as they come: no first pass.
        return Step("none", {}, {"iter": self.iter + 1}, "none", None, second="lars")

    def _reads_sums(self, values: dict[str, float], decays: bool) -> bool:
        # timm's Lars takes no norm of a param that does not adapt (ratio 1)
        return bool(self.always_adapt) or (decays and values["weight_decay"] != 0)

    def _per_param(self, values: dict[str, float], sums: tuple[float, ...],
                   decays: bool, shape: tuple[int, ...]) -> dict[str, float]:
        """The trust ratio ``trust_coeff*||p|| / (||g|| + weight_decay*||p|| + eps)`` (1 where
        either norm is 0 or nan, and when the param does not adapt: no decay and not
        ``always_adapt``); with ``trust_clip``, ``ratio/lr`` at most 1."""
        lr, weight_decay = values["lr"], values["weight_decay"] if decays else 0.0
        ratio = 1.0
        if self.always_adapt or weight_decay != 0:
            weight_norm, grad_norm = math.sqrt(sums[0]), math.sqrt(sums[1])
            if weight_norm > 0 and grad_norm > 0:
                ratio = values["trust_coeff"] * weight_norm / (
                    grad_norm + weight_norm * weight_decay + values["eps"])
            if self.trust_clip:
                ratio = min(_divide(ratio, lr), 1.0)
        return {"lr": lr, "momentum": values["momentum"], "dampening": values["dampening"],
                "nesterov": bool(self.nesterov), "first": self.iter == 1,
                "decoupled_decay": weight_decay, "ratio": ratio}


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Muon's Newton-Schulz iterate: the update, transposed if it has more rows than columns
    (``(min, max)`` of its two sizes)."""
    rows, cols = shape
    return (cols, rows) if rows > cols else (rows, cols)


def _gram_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Muon's Gram matrices ``x@x.T``: square, of the smaller of the update's two sizes."""
    side = min(shape)
    return (side, side)


def _same_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape


class Muon(OptimizerCore):
    """torch's Muon (Jordan et al. 2024): SGD momentum (Nesterov's by default) whose update is
    orthogonalised by a Newton-Schulz iteration, for 2-D params only."""

    _states = ("momentum_buffer",)
    _hyperparameters = {"lr": v.check_learning_rate, "momentum": v.check_coefficient,
                        "eps": v.check_epsilon}
    _options = ("nesterov",)
    _settings = {"ns_coefficients": v.check_three_floats, "ns_steps": v.check_iteration_count,
                 "adjust_lr_fn": v.check_choice(None, "original", "match_rms_adamw")}
    _param_ndim = 2
    _decoupled = True
    # The update (written by the first pass, orthogonalised in place, read by the second) and
    # the Newton-Schulz iteration's matrices: x, A = x@x.T, A@A, B = b*A + c*(A@A), B@x.
    _workspace = {"update": _same_shape, "ns_x": _matrix_shape, "ns_gram": _gram_shape,
                  "ns_gram_squared": _gram_shape, "ns_gram_update": _gram_shape,
                  "ns_product": _matrix_shape}
    _reduced = ("update",)
    momentum: Hyper
    eps: Hyper
    nesterov: bool
    ns_coefficients: tuple[float, float, float]
    ns_steps: int
    adjust_lr_fn: str | None
    momentum_buffer: State

    def __init__(self, lr: Hyper = 1e-3, weight_decay: Hyper = 0.1, momentum: Hyper = 0.95, *,
                 nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
                 eps: Hyper = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None,
                 weight_decay_filter: DecayFilter | None = None,
                 max_grad_norm: float | None = None) -> None:
        self.lr = lr
        self.momentum = momentum
        self.nesterov = nesterov
        self.ns_coefficients = ns_coefficients
        self.eps = eps
        self.ns_steps = ns_steps
        self.adjust_lr_fn = adjust_lr_fn
        self._setup(weight_decay, weight_decay_filter, max_grad_norm)

    def _rule_state_names(self) -> list[str | None]:
        return ["momentum_buffer", "update"]

    def _next_step(self, values: dict[str, float]) -> Step:
        a, b, c = v.check_three_floats("ns_coefficients", self.ns_coefficients)
        steps = v.check_iteration_count("ns_steps", self.ns_steps)
        return Step("muon", {"momentum": values["momentum"], "nesterov": bool(self.nesterov)},
                    {"iter": self.iter + 1}, "muon", None, second="muon_apply",
                    transform=("newton_schulz", {"a": a, "b": b, "c": c, "steps": steps,
                                                 "eps": values["eps"]}))

    def _per_param(self, values: dict[str, float], sums: tuple[float, ...],
                   decays: bool, shape: tuple[int, ...]) -> dict[str, float]:
        """torch's ``_adjust_lr``: ``lr*sqrt(max(1, rows/cols))`` ("original", the default) or
        ``lr*0.2*sqrt(max(rows, cols))`` ("match_rms_adamw"); and the decoupled decay
        ``lr*weight_decay`` (0 for a param that does not decay)."""
        lr = values["lr"]
        rows, cols = shape
        if self.adjust_lr_fn == "match_rms_adamw":
            ratio = 0.2 * math.sqrt(max(rows, cols))
        else:
            ratio = math.sqrt(max(1, _divide(rows, cols)))
        return {"decoupled_decay": lr * values["weight_decay"] if decays else 0.0,
                "adjusted_lr": lr * ratio}


def _divide(x: float, y: float) -> float:
    """``x/y`` as IEEE (and torch) divide: inf or nan where ``y`` is 0, not an error."""
    if y != 0:
        return x / y
    if x == 0 or math.isnan(x):
        return math.nan
    return math.copysign(math.inf, x) * math.copysign(1.0, y)


#: Every rule, in the order the documentation and the benchmark list them.
RULES: tuple[type[OptimizerCore], ...] = (SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam, AdamW,
                                          NAdam, RAdam, Adamax, Adadelta, Lion, ADOPT,
                                          LAMB, LARS, Adafactor, Muon, ScheduleFreeAdamW,
                                          ScheduleFreeSGD)
