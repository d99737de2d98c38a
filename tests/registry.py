"""The one list of fastopt's optimizers that the generic tests read (as torch's ``optim_db``).

One ``Entry`` per optimizer class of ``fastopt.optimizers`` (and of ``fastopt.reference``, which
has the same classes): its name, the learning rate the tests use, the option sets worth sweeping,
its state attributes, a second value for each hyperparameter, and its formula oracle from
``tests/oracles.py``. ``_helpers.CONFIGS``, ``BOOK_CONFIGS`` and ``LEARNING_RATES`` are read off
it, and so is every test that runs "every optimizer". ``tests/test_oracles.py`` fails while
fastopt exports an optimizer that has no entry here.

Adding an optimizer to the tests: write its oracle in ``tests/oracles.py`` (the formula, from
scratch, statement by statement in the order the formula gives) and add its ``Entry`` below.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import oracles


@dataclass(frozen=True)
class Entry:
    """One optimizer class, as the tests see it.

    Attributes
    ----------
    name : str
        The class name in ``fastopt`` and ``fastopt.reference``.
    oracle : callable
        Its rule restated from the formula (``tests/oracles.py``).
    lr : float
        The learning rate the tests use: larger than the default, so that 50 steps and more
        move every param a lot.
    configs : tuple of dict
        Keyword options worth sweeping, beyond the book's (see ``book_configs``).
    book_configs : tuple of dict
        For the book's six: the book's form and its variant options (the first is ``{}``);
        empty for an optimizer beyond the book.
    state : tuple of str
        The state attributes it always keeps, in order (the book's names first).
    option_state : mapping of str to str
        State attributes kept only with an option: attribute -> the option that adds it.
    scalar_state : tuple of str
        Scalar state attributes (beside ``iter``), such as NAdam's ``mu_product``.
    param_state : tuple of str
        State arrays that start as copies of the param (Schedule-Free's ``z`` and ``x``), not at
        zero: tests/test_weight_decay.py's check that the state never sees the params' inf and
        nan does not apply to such a rule (tests/test_schedulefree.py makes it after the first
        update instead).
    param_norm_step : bool
        Its step size reads the whole param's norm, with or without decay (Adafactor's
        relative step ``max(eps2, RMS(p))*rho``, as torch's): an inf or nan in a param then
        reaches every element of that param, so tests/test_weight_decay.py's check that the
        params' inf and nan stay in their places does not apply to it. tests/test_adafactor.py
        checks what does hold: the state never depends on the params, and a param's inf or
        nan reaches no other param.
    other_values : mapping of str to float
        A second value for each of its float hyperparameters, set between two steps by
        ``test_changing_a_hyperparameter_takes_effect_on_the_next_step``.
    other_values_setup : mapping of str to dict
        For a hyperparameter of ``other_values`` that acts only in some setting, whatever its
        value: options (over each config's) with which that test makes all three of its
        optimizers (the one changed, its reference twin and the unchanged control) when it
        changes that hyperparameter. The reason goes beside the entry.
    floors : mapping of str to float
        Hyperparameters whose range has a floor other than 0 (Adafactor's ``d`` >= 1, as
        torch's): a test that derives a value by taking a valid one toward 0
        (tests/test_callpath.py halves it, or decays it linearly to 1%) takes its distance
        from the floor there instead.
    rtol : float, or mapping of dtype to float
        How close fastopt comes to the oracle: ``oracles.EXACT`` (bits) when the oracle
        follows the formula's statements; otherwise the normwise relative bound, and why, in
        the oracle's docstring.
    decay_scales_param : bool
        Its decoupled decay multiplies the param, ``p *= 1 - lr*weight_decay`` (Muon's, as
        torch's), which keeps an inf or nan param where it is: tests/test_weight_decay.py's
        proof that a nonzero decay brings the params' inf and nan in does not apply to it.
    param_ndim : int or None
        The number of dims every param must have (Muon's 2: its Newton-Schulz iteration
        orthogonalises a matrix, and other params are refused, pointing to
        ``fastopt.Partition``); None: any shape. The generic tests give such a rule their
        shapes through ``param_shape``; tests/test_muon.py checks the refusal.
    """

    name: str
    oracle: Callable[..., Any]
    lr: float
    configs: tuple[dict[str, Any], ...] = ()
    book_configs: tuple[dict[str, Any], ...] = ()
    state: tuple[str, ...] = ()
    option_state: Mapping[str, str] = field(default_factory=dict)
    scalar_state: tuple[str, ...] = ()
    param_state: tuple[str, ...] = ()
    param_norm_step: bool = False
    other_values: Mapping[str, float] = field(default_factory=dict)
    other_values_setup: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    floors: Mapping[str, float] = field(default_factory=dict)
    rtol: float | Mapping[Any, float] = oracles.EXACT
    decay_scales_param: bool = False
    param_ndim: int | None = None

    @property
    def book(self) -> bool:
        """Whether it is one of the book's six (*Deep Learning from Scratch*)."""
        return bool(self.book_configs)

    def takes(self, shape: tuple[int, ...]) -> bool:
        """Whether it takes a param of ``shape``."""
        return self.param_ndim is None or len(shape) == self.param_ndim

    def param_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """``shape`` if it takes it; else, for a rule of 2-D params only, a matrix of as
        many elements: ``()`` as ``(1, 1)``, ``(n,)`` as ``(1, n)``, ``(a, b, ...)`` as
        ``(a, b*...)``."""
        if self.takes(shape):
            return tuple(shape)
        assert self.param_ndim == 2, "only 2-D rules are mapped"
        if len(shape) == 0:
            return (1, 1)
        if len(shape) == 1:
            return (1, shape[0])
        rest = 1
        for size in shape[1:]:
            rest *= size
        return (shape[0], rest)

    def param_shapes(self, shapes: Any) -> list[tuple[int, ...]]:
        """``param_shape`` of each of ``shapes``."""
        return [self.param_shape(tuple(shape)) for shape in shapes]

    def state_names(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        """The state attributes it keeps with ``options``, in order."""
        return self.state + tuple(name for name, option in self.option_state.items()
                                  if options.get(option))


REGISTRY = (
    Entry("SGD", oracles.sgd, lr=0.1,
          book_configs=({},),
          configs=({"weight_decay": 0.01},),
          other_values={"lr": 0.3, "weight_decay": 0.5}),
    Entry("Momentum", oracles.momentum, lr=0.05,
          book_configs=({},),
          state=("v",),
          other_values={"lr": 0.3, "momentum": 0.5}),
    Entry("Nesterov", oracles.nesterov, lr=0.05,
          book_configs=({}, {"velocity_first": True}),
          state=("v",),
          other_values={"lr": 0.3, "momentum": 0.5}),
    Entry("AdaGrad", oracles.adagrad, lr=0.1,
          book_configs=({}, {"eps_inside_sqrt": True}, {"eps": 1e-3}),
          state=("h",),
          other_values={"lr": 0.3, "eps": 0.1}),
    Entry("RMSprop", oracles.rmsprop, lr=0.01,
          book_configs=({}, {"eps_inside_sqrt": True}),
          configs=({"centered": True}, {"momentum": 0.9},
                   {"centered": True, "momentum": 0.5, "eps_inside_sqrt": True}),
          state=("h",), option_state={"grad_avg": "centered", "momentum_buffer": "momentum"},
          other_values={"lr": 0.3, "decay_rate": 0.5, "eps": 0.1, "momentum": 0.7}),
    Entry("Adam", oracles.adam, lr=0.01,
          book_configs=({}, {"eps_inside_sqrt": True}, {"paper_form": True},
                        {"paper_form": True, "eps_inside_sqrt": True, "eps": 1e-6}),
          configs=({"amsgrad": True}, {"paper_form": True, "amsgrad": True},
                   {"weight_decay": 0.01, "max_grad_norm": 1.0}),
          state=("m", "v"), option_state={"v_max": "amsgrad"},
          other_values={"lr": 0.3, "beta1": 0.5, "beta2": 0.6, "eps": 0.1}),
    Entry("AdamW", oracles.adamw, lr=0.01,
          configs=({}, {"amsgrad": True}),
          state=("m", "v"), option_state={"v_max": "amsgrad"},
          other_values={"lr": 0.3, "beta1": 0.5, "beta2": 0.6, "eps": 0.1,
                        "weight_decay": 0.5}),
    Entry("NAdam", oracles.nadam, lr=0.01,
          configs=({},),
          state=("m", "v"), scalar_state=("mu_product",),
          other_values={"lr": 0.3, "beta1": 0.5, "beta2": 0.6, "eps": 0.1,
                        "momentum_decay": 0.5}),
    Entry("RAdam", oracles.radam, lr=0.01,
          configs=({},),
          state=("m", "v"),
          # beta2 and eps act only once rho_t > 5, after that test's six steps
          other_values={"lr": 0.3, "beta1": 0.5}),
    Entry("Adamax", oracles.adamax, lr=0.01,
          configs=({},),
          state=("m", "u"),
          other_values={"lr": 0.3, "beta1": 0.5, "beta2": 0.6, "eps": 0.1}),
    Entry("Adadelta", oracles.adadelta, lr=1.0,
          configs=({},),
          state=("v", "u"),
          other_values={"lr": 0.3, "rho": 0.5, "eps": 0.1}),
    Entry("Lion", oracles.lion, lr=0.001,
          configs=({}, {"weight_decay": 0.1}),
          state=("m",),
          other_values={"lr": 0.3, "beta1": 0.5, "beta2": 0.6, "weight_decay": 0.5}),
    Entry("ADOPT", oracles.adopt, lr=0.01,
          configs=({}, {"clip_exp": 0.5}),
          state=("m", "v"),
          other_values={"lr": 0.3, "beta1": 0.5, "beta2": 0.6, "eps": 10.0, "clip_exp": 0.25}),
    Entry("LAMB", oracles.lamb, lr=0.01,
          configs=({}, {"trust_clip": True}, {"weight_decay": 0.0},
                   {"weight_decay": 0.0, "always_adapt": True}),
          state=("m", "v", "direction"),
          other_values={"lr": 0.3, "beta1": 0.5, "beta2": 0.6, "eps": 0.1, "weight_decay": 0.5},
          rtol=oracles.LAMB_RTOL),
    # Every option set keeps momentum and adapts (decay or always_adapt), so that each
    # hyperparameter changes the step; trust_coeff=2 with trust_clip puts ratio/lr near 1.
    Entry("LARS", oracles.lars, lr=2.0,
          configs=({"momentum": 0.9, "weight_decay": 0.01},
                   {"momentum": 0.9, "weight_decay": 0.01, "nesterov": True},
                   {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01, "trust_clip": True,
                    "trust_coeff": 2.0},
                   {"momentum": 0.5, "weight_decay": 0.0, "always_adapt": True}),
          option_state={"momentum_buffer": "momentum"},
          other_values={"lr": 0.3, "momentum": 0.7, "dampening": 0.5, "weight_decay": 0.5,
                        "trust_coeff": 0.01, "eps": 1000.0},
          rtol=oracles.LARS_RTOL),
    Entry("Adafactor", oracles.adafactor, lr=0.1,
          configs=({}, {"weight_decay": 0.1}, {"eps1": 1e-20, "beta2_decay": -0.5, "d": 1.5}),
          state=("row_var", "col_var", "variance"), param_norm_step=True,
          # eps2 acts where it exceeds the params' root mean square (about 1). d (>= 1, as
          # torch's) clips the update only where the update's RMS exceeds it, and lr has no
          # part in that RMS: with the test's (9,) param and grads, at the default beta2_decay
          # it is 0.83-0.93 at the steps after the change (below every allowed d). With
          # beta2_decay=-3 the second moment keeps mostly the first steps' g*g, and the RMS is
          # 1.43, 1.81, 1.35 there: d=1.3 changes the step from d=1 and from d=1.5 alike.
          other_values={"lr": 0.3, "beta2_decay": -0.3, "eps2": 10.0, "d": 1.3,
                        "weight_decay": 0.5},
          other_values_setup={"d": {"beta2_decay": -3.0}},
          floors={"d": 1.0},
          rtol=oracles.ADAFACTOR_RTOL),
    # 2-D params only (torch's Muon): the generic tests map their shapes (param_shape).
    # ns_steps 0 leaves the update as normalised; momentum 0.3 takes lerp's other form.
    Entry("Muon", oracles.muon, lr=0.02,
          configs=({}, {"nesterov": False}, {"adjust_lr_fn": "match_rms_adamw"},
                   {"momentum": 0.3, "weight_decay": 0.0, "ns_steps": 2,
                    "ns_coefficients": (2.0, -1.5, 0.5)}),
          state=("momentum_buffer",),
          other_values={"lr": 0.3, "weight_decay": 0.5, "momentum": 0.5, "eps": 1e3},
          rtol=oracles.MUON_RTOL, decay_scales_param=True, param_ndim=2),
    Entry("ScheduleFreeAdamW", oracles.schedulefree_adamw, lr=0.01,
          configs=({}, {"warmup_steps": 5, "r": 0.5, "weight_decay": 0.01}),
          state=("z", "v", "x"),
          scalar_state=("weight_sum", "lr_max", "train_mode", "last_beta1"),
          param_state=("z", "x"),
          other_values={"lr": 0.3, "beta1": 0.5, "beta2": 0.6, "eps": 0.1, "weight_decay": 0.5,
                        "warmup_steps": 10, "r": 1.0, "weight_lr_power": 0.5}),
    Entry("ScheduleFreeSGD", oracles.schedulefree_sgd, lr=0.1,
          configs=({}, {"warmup_steps": 5, "r": 0.5, "weight_decay": 0.01}),
          state=("z", "x"),
          scalar_state=("weight_sum", "lr_max", "train_mode", "last_momentum"),
          param_state=("z", "x"),
          other_values={"lr": 0.3, "momentum": 0.5, "weight_decay": 0.5, "warmup_steps": 10,
                        "r": 1.0, "weight_lr_power": 0.5}),
)

BY_NAME = {entry.name: entry for entry in REGISTRY}

#: The book's six and their variant options, as (class name, options), in registry order.
BOOK_CONFIGS = [(entry.name, options) for entry in REGISTRY for options in entry.book_configs]
#: BOOK_CONFIGS, then every other option set of every optimizer, in registry order.
CONFIGS = [*BOOK_CONFIGS,
           *[(entry.name, options) for entry in REGISTRY for options in entry.configs]]
#: The learning rate the tests use, by class name.
LEARNING_RATES = {entry.name: entry.lr for entry in REGISTRY}
#: The names of the book's six, in the book's order.
BOOK_NAMES = [entry.name for entry in REGISTRY if entry.book]
