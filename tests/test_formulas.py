"""The reference, and every variant option, against independent values.

``expected_trajectory`` restates each formula of SPEC section 2 element by element in plain
Python floats (IEEE double, the same rounding as float64 NumPy), independently of
fastopt.reference's NumPy statements; both fastopt and the reference must equal it exactly.
torch.optim, where it implements the same rule, is a second oracle (skipped without torch).
"""
import math

import numpy as np
import pytest

import fastopt
from fastopt import reference

from _helpers import BOOK_CONFIGS, LEARNING_RATES, config_id

START = [0.5, -1.25, 3.0, 1e-3, 0.0]
GRADS = [[0.3, -0.2, 1.5, -1e-4, 0.0], [-0.1, 0.4, 1.5, 2e-4, 0.0],
         [0.25, 0.05, -3.0, -1e-4, 0.0]]


def expected_trajectory(name, options, lr):
    """Each step's params, from the formulas, one element at a time."""
    momentum, decay_rate, beta1, beta2 = 0.9, 0.99, 0.9, 0.999
    paper = options.get("paper_form", False)
    eps = options.get("eps", 1e-8 if paper else 1e-7)
    inside = options.get("eps_inside_sqrt", False)

    def denominator(x):
        return math.sqrt(x + eps) if inside else math.sqrt(x) + eps

    params, steps = list(START), []
    s1 = [0.0] * len(START)   # v (Momentum, Nesterov), h (AdaGrad, RMSprop), m (Adam)
    s2 = [0.0] * len(START)   # v (Adam)
    for t, grads in enumerate(GRADS, start=1):
        for i, g in enumerate(grads):
            p = params[i]
            if name == "SGD":
                p = p - lr * g
            elif name == "Momentum":
                s1[i] = momentum * s1[i] - lr * g
                p = p + s1[i]
            elif name == "Nesterov" and options.get("velocity_first"):
                s1[i] = s1[i] * momentum - lr * g
                p = p + momentum * momentum * s1[i]
                p = p - (1 + momentum) * lr * g
            elif name == "Nesterov":
                p = p + momentum * momentum * s1[i]
                p = p - (1 + momentum) * lr * g
                s1[i] = s1[i] * momentum - lr * g
            elif name == "AdaGrad":
                s1[i] = s1[i] + g * g
                p = p - lr * g / denominator(s1[i])
            elif name == "RMSprop":
                s1[i] = s1[i] * decay_rate + (1 - decay_rate) * g * g
                p = p - lr * g / denominator(s1[i])
            elif name == "Adam" and paper:
                s1[i] = beta1 * s1[i] + (1 - beta1) * g
                s2[i] = beta2 * s2[i] + (1 - beta2) * g * g
                m_hat = s1[i] / (1 - beta1**t)
                v_hat = s2[i] / (1 - beta2**t)
                p = p - lr * m_hat / denominator(v_hat)
            elif name == "Adam":
                lr_t = lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
                s1[i] = s1[i] + (1 - beta1) * (g - s1[i])
                s2[i] = s2[i] + (1 - beta2) * (g * g - s2[i])
                p = p - lr_t * s1[i] / denominator(s2[i])
            params[i] = p
        steps.append(list(params))
    return steps


@pytest.mark.parametrize("module", [reference, fastopt], ids=["reference", "fastopt"])
@pytest.mark.parametrize("config", BOOK_CONFIGS,
                         ids=[config_id(c) for c in BOOK_CONFIGS])
def test_first_steps_equal_the_formulas(module, config):
    name, options = config
    lr = LEARNING_RATES[name]
    optimizer = getattr(module, name)(lr=lr, **options)
    params = {"w": np.array(START)}
    for grads, expected in zip(GRADS, expected_trajectory(name, options, lr), strict=True):
        optimizer.update(params, {"w": np.array(grads)})
        assert params["w"].tolist() == expected


def test_values_worked_by_hand():
    params = {"x": np.array([1.0])}
    fastopt.SGD(lr=0.5).update(params, {"x": np.array([0.5])})
    assert params["x"][0] == 0.75
    momentum = fastopt.Momentum(lr=0.5, momentum=0.5)
    params = {"x": np.array([1.0])}
    for _ in range(2):
        momentum.update(params, {"x": np.array([1.0])})
    # v1 = -0.5, p1 = 0.5; v2 = 0.5*-0.5 - 0.5 = -0.75, p2 = -0.25
    assert momentum.v["x"][0] == -0.75 and params["x"][0] == -0.25
    adagrad = fastopt.AdaGrad(lr=1.0, eps=1.0)
    params = {"x": np.array([0.0])}
    adagrad.update(params, {"x": np.array([3.0])})   # h = 9, p = -3/(3 + 1)
    assert params["x"][0] == -0.75
    adagrad = fastopt.AdaGrad(lr=1.0, eps=7.0, eps_inside_sqrt=True)
    params = {"x": np.array([0.0])}
    adagrad.update(params, {"x": np.array([3.0])})   # p = -3/sqrt(9 + 7)
    assert params["x"][0] == -0.75


@pytest.mark.parametrize("paper_form", [False, True])
def test_first_adam_step_is_lr_times_sign(paper_form):
    # With m = (1-b1)g and v = (1-b2)g^2 the bias corrections make the first step
    # lr*sign(g)*s/(s + eps), where s = |g| in the paper's form and s = sqrt(1-b2)|g| in the
    # book's (whose eps meets the uncorrected sqrt(v)).
    g = np.array([2.0, -3.0, 0.5, -0.1])
    params = {"w": np.zeros(4)}
    optimizer = fastopt.Adam(lr=0.1, paper_form=paper_form)
    optimizer.update(params, {"w": g})
    s = np.abs(g) if paper_form else np.sqrt(1 - 0.999) * np.abs(g)
    np.testing.assert_allclose(params["w"], -0.1 * np.sign(g) * s / (s + optimizer.eps),
                               rtol=1e-13)


# --- torch.optim as an oracle where its rule is the same ----------------------------------------

# (fastopt config, torch.optim class name, its options) for every rule torch shares with us.
TORCH_CASES = [
    (("SGD", {}), "SGD", {}),
    (("Momentum", {}), "SGD", {"momentum": 0.9}),
    (("Nesterov", {}), "SGD", {"momentum": 0.9, "nesterov": True}),
    (("AdaGrad", {}), "Adagrad", {"eps": 1e-7}),
    (("AdaGrad", {"eps": 1e-3}), "Adagrad", {"eps": 1e-3}),
    (("RMSprop", {}), "RMSprop", {"alpha": 0.99, "eps": 1e-7}),
    (("Adam", {"paper_form": True}), "Adam", {"betas": (0.9, 0.999), "eps": 1e-8}),
]


def run_against_torch(torch, config, torch_name, torch_options, steps=50):
    name, options = config
    lr = LEARNING_RATES[name]
    rng = np.random.default_rng(7)
    start = rng.standard_normal(257)
    tensor = torch.tensor(start.copy(), dtype=torch.float64)
    peer = getattr(torch.optim, torch_name)([tensor], lr=lr, **torch_options)
    ours = getattr(fastopt, name)(lr=lr, **options)
    params = {"w": start.copy()}
    for _ in range(steps):
        g = rng.standard_normal(257)
        ours.update(params, {"w": g})
        tensor.grad = torch.tensor(g)
        peer.step()
    return params["w"], tensor.numpy()


@pytest.mark.parametrize("config, torch_name, torch_options", TORCH_CASES,
                         ids=[config_id(case[0]) for case in TORCH_CASES])
def test_matches_torch_optim(config, torch_name, torch_options):
    torch = pytest.importorskip("torch")
    ours, theirs = run_against_torch(torch, config, torch_name, torch_options)
    # Same rule, different association: agreement to accumulated float64 rounding.
    np.testing.assert_allclose(ours, theirs, rtol=1e-11, atol=1e-13)


def test_torch_oracle_can_tell_eps_placement_apart():
    # The oracle's tolerance is tight enough to see where eps goes.
    torch = pytest.importorskip("torch")
    ours, theirs = run_against_torch(torch, ("RMSprop", {"eps_inside_sqrt": True}), "RMSprop",
                                     {"alpha": 0.99, "eps": 1e-7})
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(ours, theirs, rtol=1e-11, atol=1e-13)
