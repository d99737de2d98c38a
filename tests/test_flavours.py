"""fastopt.book, fastopt.book2 and fastopt.notes against the sources they stand in for.

Each source's optimizer code is restated below as the small NumPy classes it has (the two books'
``common/optimizer.py``, MIT-licensed, see LICENSES/; the Japanese lecture notes' classes with
their two slips fixed). Scripts written like the books' run twice in fresh processes, once
importing the source's module and once fastopt's flavour, with nothing else changed, and must
print the same bits.
"""
import hashlib
import inspect
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import fastopt
from fastopt import book, book2, notes

from _helpers import assert_same_bits
from registry import BOOK_NAMES

# ---------------------------------------------------------------------------------------------
# The first book's common/optimizer.py (oreilly-japan/deep-learning-from-scratch): dict params,
# Nesterov in the form the book has had since 2021. No __all__: a star import also gives `np`.
BOOK1_OPTIMIZER = '''
import numpy as np


class SGD:
    def __init__(self, lr=0.01):
        self.lr = lr

    def update(self, params, grads):
        for key in params.keys():
            params[key] -= self.lr * grads[key]


class Momentum:
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr = lr
        self.momentum = momentum
        self.v = None

    def update(self, params, grads):
        if self.v is None:
            self.v = {}
            for key, val in params.items():
                self.v[key] = np.zeros_like(val)
        for key in params.keys():
            self.v[key] = self.momentum*self.v[key] - self.lr*grads[key]
            params[key] += self.v[key]


class Nesterov:
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr = lr
        self.momentum = momentum
        self.v = None

    def update(self, params, grads):
        if self.v is None:
            self.v = {}
            for key, val in params.items():
                self.v[key] = np.zeros_like(val)
        for key in params.keys():
            params[key] += self.momentum * self.momentum * self.v[key]
            params[key] -= (1 + self.momentum) * self.lr * grads[key]
            self.v[key] *= self.momentum
            self.v[key] -= self.lr * grads[key]


class AdaGrad:
    def __init__(self, lr=0.01):
        self.lr = lr
        self.h = None

    def update(self, params, grads):
        if self.h is None:
            self.h = {}
            for key, val in params.items():
                self.h[key] = np.zeros_like(val)
        for key in params.keys():
            self.h[key] += grads[key] * grads[key]
            params[key] -= self.lr * grads[key] / (np.sqrt(self.h[key]) + 1e-7)


class RMSprop:
    def __init__(self, lr=0.01, decay_rate = 0.99):
        self.lr = lr
        self.decay_rate = decay_rate
        self.h = None

    def update(self, params, grads):
        if self.h is None:
            self.h = {}
            for key, val in params.items():
                self.h[key] = np.zeros_like(val)
        for key in params.keys():
            self.h[key] *= self.decay_rate
            self.h[key] += (1 - self.decay_rate) * grads[key] * grads[key]
            params[key] -= self.lr * grads[key] / (np.sqrt(self.h[key]) + 1e-7)


class Adam:
    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.iter = 0
        self.m = None
        self.v = None

    def update(self, params, grads):
        if self.m is None:
            self.m, self.v = {}, {}
            for key, val in params.items():
                self.m[key] = np.zeros_like(val)
                self.v[key] = np.zeros_like(val)
        self.iter += 1
        lr_t = self.lr * np.sqrt(1.0 - self.beta2**self.iter) / (1.0 - self.beta1**self.iter)
        for key in params.keys():
            self.m[key] += (1 - self.beta1) * (grads[key] - self.m[key])
            self.v[key] += (1 - self.beta2) * (grads[key]**2 - self.v[key])
            params[key] -= lr_t * self.m[key] / (np.sqrt(self.v[key]) + 1e-7)
'''

# The second book's common/optimizer.py (oreilly-japan/deep-learning-from-scratch-2): list
# params, Nesterov velocity first; it gets `np` (and GPU) from `from common.np import *`.
BOOK2_NP = "from common.config import GPU\nimport numpy as np\n"
BOOK2_CONFIG = "GPU = False\n"
BOOK2_OPTIMIZER = '''
import sys, os
sys.path.append(os.pardir)
from common.np import *


class SGD:
    def __init__(self, lr=0.01):
        self.lr = lr

    def update(self, params, grads):
        for i in range(len(params)):
            params[i] -= self.lr * grads[i]


class Momentum:
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr = lr
        self.momentum = momentum
        self.v = None

    def update(self, params, grads):
        if self.v is None:
            self.v = []
            for param in params:
                self.v.append(np.zeros_like(param))
        for i in range(len(params)):
            self.v[i] = self.momentum * self.v[i] - self.lr * grads[i]
            params[i] += self.v[i]


class Nesterov:
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr = lr
        self.momentum = momentum
        self.v = None

    def update(self, params, grads):
        if self.v is None:
            self.v = []
            for param in params:
                self.v.append(np.zeros_like(param))
        for i in range(len(params)):
            self.v[i] *= self.momentum
            self.v[i] -= self.lr * grads[i]
            params[i] += self.momentum * self.momentum * self.v[i]
            params[i] -= (1 + self.momentum) * self.lr * grads[i]


class AdaGrad:
    def __init__(self, lr=0.01):
        self.lr = lr
        self.h = None

    def update(self, params, grads):
        if self.h is None:
            self.h = []
            for param in params:
                self.h.append(np.zeros_like(param))
        for i in range(len(params)):
            self.h[i] += grads[i] * grads[i]
            params[i] -= self.lr * grads[i] / (np.sqrt(self.h[i]) + 1e-7)


class RMSprop:
    def __init__(self, lr=0.01, decay_rate = 0.99):
        self.lr = lr
        self.decay_rate = decay_rate
        self.h = None

    def update(self, params, grads):
        if self.h is None:
            self.h = []
            for param in params:
                self.h.append(np.zeros_like(param))
        for i in range(len(params)):
            self.h[i] *= self.decay_rate
            self.h[i] += (1 - self.decay_rate) * grads[i] * grads[i]
            params[i] -= self.lr * grads[i] / (np.sqrt(self.h[i]) + 1e-7)


class Adam:
    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.iter = 0
        self.m = None
        self.v = None

    def update(self, params, grads):
        if self.m is None:
            self.m, self.v = [], []
            for param in params:
                self.m.append(np.zeros_like(param))
                self.v.append(np.zeros_like(param))
        self.iter += 1
        lr_t = self.lr * np.sqrt(1.0 - self.beta2**self.iter) / (1.0 - self.beta1**self.iter)
        for i in range(len(params)):
            self.m[i] += (1 - self.beta1) * (grads[i] - self.m[i])
            self.v[i] += (1 - self.beta2) * (grads[i]**2 - self.v[i])
            params[i] -= lr_t * self.m[i] / (np.sqrt(self.v[i]) + 1e-7)
'''

# A script written like the first book's ch06 scripts: the star import is its only import, and
# `np` comes from it (ch06/optimizer_compare_mnist.py calls np.random.choice and np.arange).
# A linear least-squares net on arrays, and the book's f(x, y) = x**2/20 + y**2 on float params.
BOOK1_SCRIPT = '''
{import_line}
import hashlib

names = sorted(name for name in dir() if not name.startswith("_"))
print("names", " ".join(name for name in names if name != "hashlib"))
np.random.seed(0)
x_train = np.random.randn(200, 30)
t_train = np.random.randn(200, 5)
for name in ("SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam"):
    optimizer = globals()[name]()
    params = {{"W": np.random.randn(30, 5) * 0.1, "b": np.zeros(5), "x": -7.0, "y": 2.0}}
    for i in range(40):
        batch_mask = np.random.choice(200, 32)
        x, t = x_train[batch_mask], t_train[batch_mask]
        dy = (x @ params["W"] + params["b"] - t) / 32
        grads = {{"W": x.T @ dy, "b": dy.sum(axis=0), "x": params["x"] / 10.0,
                 "y": 2.0 * params["y"]}}
        optimizer.update(params, grads)
    digest = hashlib.sha256()
    for key in ("W", "b", "x", "y"):
        digest.update(np.asarray(params[key], dtype=np.float64).tobytes())
    print(name, digest.hexdigest())
'''

# A script written like the second book's: float32 weights in lists (model.params), and a new
# list of the same arrays every step, as its Trainer's remove_duplicate(params, grads) gives.
BOOK2_SCRIPT = '''
import hashlib
from common.np import *
{import_line}

rng = np.random.RandomState(0)
x_train = rng.randn(200, 30).astype("f")
t_train = rng.randn(200, 5).astype("f")
for name in ("SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam"):
    optimizer = globals()[name]()
    W = (0.01 * rng.randn(30, 5)).astype("f")
    b = np.zeros(5).astype("f")
    model_params = [W, b]
    for i in range(40):
        batch_mask = rng.choice(200, 32)
        x, t = x_train[batch_mask], t_train[batch_mask]
        dy = (x @ W + b - t) / 32
        model_grads = [x.T @ dy, dy.sum(axis=0)]
        optimizer.update(list(model_params), list(model_grads))
    print(name, hashlib.sha256(W.tobytes() + b.tobytes()).hexdigest())
'''


def run_script(tmp_path, script, **files):
    """Run ``script`` as a file in ``tmp_path`` beside a ``common`` package made of ``files``
    (module name -> source), the way the books' scripts find their ``common/``; return stdout."""
    common = tmp_path / "common"
    common.mkdir(exist_ok=True)
    (common / "__init__.py").write_text("")
    for module, source in files.items():
        (common / f"{module}.py").write_text(source)
    path = tmp_path / "script.py"
    path.write_text(script)
    completed = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True,
                               text=True, timeout=300, env=dict(os.environ))
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


BOOK1_CLASSES = set(BOOK_NAMES)


@pytest.fixture(scope="module")
def book1_output(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("book1")
    script = BOOK1_SCRIPT.format(import_line="from common.optimizer import *")
    return run_script(tmp_path, script, optimizer=BOOK1_OPTIMIZER)


@pytest.mark.parametrize("import_line", ["from fastopt.book import *", "from fastopt import *"])
def test_the_first_books_script_runs_unchanged(book1_output, tmp_path, import_line):
    output = run_script(tmp_path, BOOK1_SCRIPT.format(import_line=import_line))
    book_names, *book_digests = book1_output.splitlines()
    names, *digests = output.splitlines()
    assert digests == book_digests
    # every name the book's star import gave, `np` included (fastopt's own may be more)
    assert set(book_names.split()[1:]) <= set(names.split()[1:])


def test_book_gives_exactly_the_first_books_names(book1_output):
    namespace = {}
    exec("from fastopt.book import *", namespace)
    del namespace["__builtins__"]
    assert set(namespace) == set(book1_output.splitlines()[0].split()[1:]) == BOOK1_CLASSES | {
        "np"}
    assert namespace["np"] is np
    assert all(namespace[name] is getattr(book, name) is getattr(fastopt, name)
               for name in BOOK1_CLASSES)


def test_fastopt_star_import_gives_np_and_the_books_classes():
    namespace = {}
    exec("from fastopt import *", namespace)
    assert namespace["np"] is np
    assert BOOK1_CLASSES | {"RMSProp"} <= set(namespace)


BOOK2_FILES = {"optimizer": BOOK2_OPTIMIZER, "np": BOOK2_NP, "config": BOOK2_CONFIG}


@pytest.fixture(scope="module")
def book2_output(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("book2")
    script = BOOK2_SCRIPT.format(import_line="from common.optimizer import *")
    return run_script(tmp_path, script, **BOOK2_FILES)


@pytest.mark.parametrize("import_line", [
    "from fastopt.book2 import *",
    "from fastopt.book2 import SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam",
])
def test_the_second_books_script_runs_unchanged(book2_output, tmp_path, import_line):
    script = BOOK2_SCRIPT.format(import_line=import_line)
    assert run_script(tmp_path, script, np=BOOK2_NP, config=BOOK2_CONFIG) == book2_output


def test_only_nesterov_tells_the_second_book_from_the_first(book2_output, tmp_path):
    # fastopt's default Nesterov is the first book's: swapping in `fastopt` changes exactly the
    # Nesterov line of the second book's script, which is what fastopt.book2 is for.
    script = BOOK2_SCRIPT.format(import_line="from fastopt import *")
    output = run_script(tmp_path, script, np=BOOK2_NP, config=BOOK2_CONFIG)
    differing = [a.split()[0] for a, b in zip(output.splitlines(), book2_output.splitlines(),
                                              strict=True) if a != b]
    assert differing == ["Nesterov"]


def test_book2_names_and_nesterov():
    namespace = {}
    exec("from fastopt.book2 import *", namespace)
    del namespace["__builtins__"]
    # the second book's file also leaks sys, os and GPU; fastopt.book2 leaves those out
    assert set(namespace) == BOOK1_CLASSES | {"np"}
    assert namespace["np"] is np
    for name in BOOK1_CLASSES - {"Nesterov"}:
        assert namespace[name] is getattr(fastopt, name)
    nesterov = book2.Nesterov()
    assert isinstance(nesterov, fastopt.Nesterov)
    assert (nesterov.lr, nesterov.momentum, nesterov.velocity_first) == (0.01, 0.9, True)
    assert book2.Nesterov(0.1, 0.5, velocity_first=False).velocity_first is False
    # Keyword-only options appear in the repr only where they differ from the flavour's defaults.
    assert repr(book2.Nesterov(0.1)) == "Nesterov(lr=0.1, momentum=0.9)"
    assert (repr(book2.Nesterov(0.1, velocity_first=False))
            == "Nesterov(lr=0.1, momentum=0.9, velocity_first=False)")


# ---------------------------------------------------------------------------------------------
# The Japanese lecture notes' classes that differ from the book, as the notes write them, with
# their two slips fixed: Adam's state is one array per key (the notes assign
# `self.m = np.zeros_like(val)`), and epsilon is added (the notes have `np.sqrt(v) * eps`).

class NotesMestrov:
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr = lr
        self.momentum = momentum
        self.v = None

    def update(self, params, grads):
        if self.v is None:
            self.v = {}
            for key, val in params.items():
                self.v[key] = np.zeros_like(val)
        for key in params.keys():
            params[key] += self.momentum * self.momentum * self.v[key]
            params[key] -= (1 + self.momentum) * self.lr * grads[key]
            self.v[key] *= self.momentum
            self.v[key] -= self.lr * grads[key]


class NotesRMSProp:
    def __init__(self, lr=0.01, decay_rate=0.99):
        self.lr = lr
        self.decay_rate = decay_rate
        self.h = None

    def update(self, params, grads):
        if self.h is None:
            self.h = {}
            for key, val in params.items():
                self.h[key] = np.zeros_like(val)
        for key in params.keys():
            self.h[key] *= self.decay_rate
            self.h[key] += (1 - self.decay_rate) * grads[key] * grads[key]
            params[key] -= self.lr * grads[key] / (np.sqrt(self.h[key] + 1e-7))


class NotesAdam:
    def __init__(self, lr=0.001, rho1=0.9, rho2=0.999):
        self.lr = lr
        self.rho1 = rho1
        self.rho2 = rho2
        self.iter = 0
        self.m = None
        self.v = None
        self.epsilon = 1e-8

    def update(self, params, grads):
        if self.m is None:
            self.m, self.v = {}, {}
            for key, val in params.items():
                self.m[key] = np.zeros_like(val)
                self.v[key] = np.zeros_like(val)
        self.iter += 1
        for key in params.keys():
            self.m[key] = self.rho1*self.m[key] + (1 - self.rho1)*grads[key]
            self.v[key] = self.rho2*self.v[key] + self.term2(grads[key])
            m = self.m[key] / (1 - self.rho1**self.iter)
            v = self.v[key] / (1 - self.rho2**self.iter)
            params[key] -= self.lr * m / (np.sqrt(v) + self.epsilon)

    def term2(self, grad):
        return (1 - self.rho2)*(grad**2)


class NotesAdamLeftToRight(NotesAdam):
    """The notes' Adam with its one product associated as fastopt's paper form does."""

    def term2(self, grad):
        return (1 - self.rho2)*grad*grad


SHAPES = [(784, 50), (50,), (7,), ()]


def trajectory(optimizer, dtype, steps=50, seed=3):
    rng = np.random.default_rng(seed)
    params = {f"W{i}": rng.standard_normal(shape).astype(dtype)
              for i, shape in enumerate(SHAPES)}
    for _ in range(steps):
        grads = {key: np.asarray(rng.standard_normal(value.shape) * 10.0 ** rng.integers(-3, 2),
                                 dtype=dtype) for key, value in params.items()}
        optimizer.update(params, grads)
    return params


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("ours", "theirs"), [
    (lambda: notes.SGD(lr=0.1), lambda: book_class("SGD")(lr=0.1)),
    (lambda: notes.Momentum(lr=0.05), lambda: book_class("Momentum")(lr=0.05)),
    (lambda: notes.AdaGrad(lr=0.1), lambda: book_class("AdaGrad")(lr=0.1)),
    (lambda: notes.Mestrov(lr=0.05), lambda: NotesMestrov(lr=0.05)),
    (lambda: notes.RMSProp(), lambda: NotesRMSProp()),
    (lambda: notes.RMSProp(lr=0.001, decay_rate=0.9), lambda: NotesRMSProp(0.001, 0.9)),
    (lambda: notes.Adam(lr=0.01), lambda: NotesAdamLeftToRight(lr=0.01)),
    (lambda: notes.Adam(0.01, 0.8, 0.99), lambda: NotesAdamLeftToRight(0.01, 0.8, 0.99)),
], ids=["SGD", "Momentum", "AdaGrad", "Mestrov", "RMSProp", "RMSProp-args", "Adam",
        "Adam-args"])
def test_notes_classes_give_the_notes_bits(ours, theirs, dtype):
    fast, slow = ours(), theirs()
    expected = trajectory(slow, dtype)
    actual = trajectory(fast, dtype)
    for key in expected:
        assert_same_bits(actual[key], expected[key])
    for name in ("v", "h", "m"):
        if hasattr(slow, name):
            for key, value in getattr(slow, name).items():
                assert_same_bits(getattr(fast, name)[key], value)
    # fastopt counts updates on every optimizer; the sources only in Adam
    if hasattr(slow, "iter"):
        assert fast.iter == slow.iter


def book_class(name):
    namespace = {}
    exec(BOOK1_OPTIMIZER, namespace)
    return namespace[name]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_notes_adam_is_one_rounding_from_the_notes_statement(dtype):
    # The notes write `(1 - rho2)*(g**2)`; fastopt's paper form computes `(1 - rho2)*g*g`, left
    # to right (the test above: bit for bit). From the same state, one step then differs only by
    # that product's rounding: m is identical, and the step s = lr*m_hat/(sqrt(v_hat) + eps)
    # stays within 3 units in the last place (an ulp of v, halved by the root, then rounding of
    # the root, the sum and the division), so the new param within 3 ulp(s) + 1 ulp(p).
    rng = np.random.default_rng(0)
    fast, slow = notes.Adam(lr=0.01), NotesAdam(lr=0.01)
    params = {"W": rng.standard_normal(20_000).astype(dtype)}
    differing = 0
    for _ in range(40):
        grads = {"W": (rng.standard_normal(20_000) * 10.0 ** rng.integers(-3, 2)).astype(dtype)}
        theirs = {"W": params["W"].copy()}
        if fast.m is not None:
            slow.m, slow.v = {"W": fast.m["W"].copy()}, {"W": fast.v["W"].copy()}
        slow.iter = fast.iter
        fast.update(params, grads)
        slow.update(theirs, grads)
        assert_same_bits(fast.m["W"], slow.m["W"])
        step = np.abs(slow.lr * (slow.m["W"] / (1 - slow.rho1**slow.iter))
                      / (np.sqrt(slow.v["W"] / (1 - slow.rho2**slow.iter)) + slow.epsilon))
        bound = 3 * np.spacing(step) + np.spacing(np.abs(theirs["W"]))
        assert np.all(np.abs(params["W"] - theirs["W"]) <= bound)
        differing += np.count_nonzero(params["W"] != theirs["W"])
    assert differing > 0   # the association does matter: the two are not the same bits


def test_notes_names_signatures_and_defaults():
    namespace = {}
    exec("from fastopt.notes import *", namespace)
    del namespace["__builtins__"]
    assert set(namespace) == {"SGD", "Momentum", "Mestrov", "AdaGrad", "RMSProp", "Adam", "np"}
    expected = {
        "SGD": [("lr", 0.01)],
        "Momentum": [("lr", 0.01), ("momentum", 0.9)],
        "Mestrov": [("lr", 0.01), ("momentum", 0.9)],
        "AdaGrad": [("lr", 0.01)],
        "RMSProp": [("lr", 0.01), ("decay_rate", 0.99)],
        "Adam": [("lr", 0.001), ("rho1", 0.9), ("rho2", 0.999)],
    }
    for name, positional in expected.items():
        parameters = list(inspect.signature(namespace[name]).parameters.values())
        assert [(p.name, p.default) for p in parameters[:len(positional)]] == positional
        assert all(p.kind is p.KEYWORD_ONLY for p in parameters[len(positional):])
        optimizer = namespace[name]()
        for attribute, default in positional:
            assert getattr(optimizer, attribute) == default
    adam, rmsprop = notes.Adam(), notes.RMSProp()
    assert (adam.epsilon, adam.paper_form, adam.eps_inside_sqrt) == (1e-8, True, False)
    assert (rmsprop.eps, rmsprop.eps_inside_sqrt) == (1e-7, True)
    assert isinstance(notes.Mestrov(), fastopt.Nesterov)
    assert notes.Mestrov().velocity_first is False
    assert repr(adam) == "Adam(lr=0.001, rho1=0.9, rho2=0.999, eps=1e-08)"   # eps: default None
    assert (repr(notes.Adam(amsgrad=True))
            == "Adam(lr=0.001, rho1=0.9, rho2=0.999, eps=1e-08, amsgrad=True)")
    assert repr(notes.Mestrov(0.1)) == "Mestrov(lr=0.1, momentum=0.9)"


def test_notes_adam_names_are_its_hyperparameters():
    adam = notes.Adam(0.01, 0.8, 0.99, eps=1e-6)
    assert (adam.rho1, adam.rho2, adam.epsilon) == (0.8, 0.99, 1e-6)
    assert (adam.beta1, adam.beta2, adam.eps) == (0.8, 0.99, 1e-6)
    theirs = NotesAdamLeftToRight(0.01, 0.8, 0.99)
    theirs.epsilon = 1e-6
    ours_params, theirs_params = {"W": np.linspace(-1, 1, 11)}, {"W": np.linspace(-1, 1, 11)}
    for step in range(4):
        if step == 2:   # a change under the notes' names takes effect on the next step
            for optimizer in (adam, theirs):
                optimizer.rho1, optimizer.rho2, optimizer.epsilon = 0.5, 0.9, 1e-3
        grads = {"W": np.cos(np.arange(11.0) * (step + 1))}
        adam.update(ours_params, grads)
        theirs.update(theirs_params, grads)
    assert (adam.beta1, adam.beta2, adam.eps) == (0.5, 0.9, 1e-3)
    assert_same_bits(ours_params["W"], theirs_params["W"])
    with pytest.raises(ValueError, match="beta1"):
        notes.Adam(rho1=1.5)


@pytest.mark.parametrize("make", [
    lambda: notes.Adam(eps=1e-6, eps_inside_sqrt=True, paper_form=False),
    lambda: notes.RMSProp(eps=1e-3, eps_inside_sqrt=False),
    lambda: book2.Nesterov(velocity_first=False),
], ids=["notes.Adam", "notes.RMSProp", "book2.Nesterov"])
def test_every_other_keyword_passes_through(make):
    optimizer = make()
    base = type(optimizer).__mro__[1]
    arguments = {name: getattr(optimizer, name)
                 for name in inspect.signature(base).parameters}
    twin = base(**arguments)
    a, b = trajectory(optimizer, np.float64, steps=5), trajectory(twin, np.float64, steps=5)
    for key in a:
        assert_same_bits(a[key], b[key])


@pytest.mark.parametrize("cls", [notes.Adam, notes.RMSProp, book2.Nesterov])
def test_unknown_keywords_are_rejected(cls):
    with pytest.raises(TypeError, match="no_such_option"):
        cls(no_such_option=1)


@pytest.mark.parametrize("make", [notes.Adam, notes.RMSProp, notes.Mestrov, book2.Nesterov])
def test_flavours_pickle(make):
    optimizer = make()
    trajectory(optimizer, np.float32, steps=2)
    copy = pickle.loads(pickle.dumps(optimizer))
    assert type(copy) is type(optimizer) and repr(copy) == repr(optimizer)
    a, b = trajectory(optimizer, np.float32, steps=3), trajectory(copy, np.float32, steps=3)
    for key in a:
        assert_same_bits(a[key], b[key])


def test_the_notes_differ_from_the_book_where_the_tests_say():
    # So that the comparisons above can fail: the notes' RMSProp and Adam are not the book's
    # numbers, while Mestrov is the book's Nesterov under another name.
    def digest(optimizer):
        params = trajectory(optimizer, np.float64, steps=5)
        return hashlib.sha256(b"".join(v.tobytes() for v in params.values())).hexdigest()

    assert digest(NotesMestrov()) == digest(book_class("Nesterov")())
    assert digest(NotesRMSProp()) != digest(book_class("RMSprop")())
    assert digest(NotesAdam()) != digest(book_class("Adam")())
    assert digest(NotesAdamLeftToRight()) != digest(NotesAdam())
