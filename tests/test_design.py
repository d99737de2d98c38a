"""The design: every rule declared once, and the modules' dependencies in one direction.

Each optimizer's rule is declared in fastopt/_rules.py; the compiled classes
(``fastopt.optimizers``) and the NumPy ones (``fastopt.reference``) are both made from that
declaration, neither from the other. The checkpoint file format knows nothing of optimizers.
"""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt import _rules, optimizers, reference
from fastopt._simd import kernels

import registry

PACKAGE = Path(fastopt.__file__).parent
RULE_NAMES = [rule.__name__ for rule in _rules.RULES]


def _imports(path: Path) -> set[str]:
    """The fastopt modules ``path`` imports, at any depth of its code, leaving out imports
    made only for type checkers (under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"):
            skipped.update(id(inner) for inner in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("fastopt."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names
                         if alias.name.startswith("fastopt."))
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    return found & modules


def _graph() -> dict[str, set[str]]:
    return {path.stem: _imports(path) for path in PACKAGE.glob("*.py")}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    stack = list(graph[start])
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(graph.get(name, ()))
    return seen


def test_no_module_of_fastopt_imports_one_that_imports_it():
    graph = _graph()
    cycles = sorted(name for name in graph if name in _reachable(graph, name))
    assert cycles == [], f"import cycles through {cycles}"


def test_the_graph_finds_a_cycle_where_there_is_one():
    # The check above, on a graph with a cycle, so that it cannot pass by reading nothing.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert [name for name in graph if name in _reachable(graph, name)] == ["a", "b", "c"]
    assert "_core" in _graph()["reference"] and "_rules" in _graph()["optimizers"]


def test_the_checkpoint_file_format_imports_no_optimizer_code():
    assert _reachable(_graph(), "checkpoint") <= {"_validation"}


@pytest.mark.parametrize("name", RULE_NAMES)
def test_no_compiled_class_is_made_from_a_reference_class(name):
    compiled = getattr(optimizers, name)
    assert [klass for klass in compiled.__mro__ if klass.__module__ == "fastopt.reference"] == []
    rule = getattr(_rules, name)
    assert issubclass(compiled, rule) and issubclass(getattr(reference, name), rule)
    assert not issubclass(getattr(reference, name), compiled)


def test_every_optimizer_fastopt_exports_is_declared_once():
    exported = {name for name in optimizers.__all__
                if getattr(optimizers, name).__name__ == name}   # RMSProp is RMSprop
    assert set(RULE_NAMES) == exported
    assert len(RULE_NAMES) == len(set(RULE_NAMES))
    for name in RULE_NAMES:
        assert getattr(fastopt, name) is getattr(optimizers, name)
        assert name in fastopt.__all__ and name in reference.__all__


@pytest.mark.parametrize("name", RULE_NAMES)
def test_each_step_names_a_loop_and_numpy_rule_that_take_its_scalars(name):
    # A scalar that the loop does not read, or a NumPy rule parameter no scalar fills, would
    # make the two paths compute different things. (A rule of 2-D params only, Muon, takes
    # a (1, 3) matrix: tests/registry.py's param_shape.)
    optimizer = getattr(fastopt, name)()
    shape = registry.BY_NAME[name].param_shape((3,))
    optimizer.update({"w": np.ones(shape)}, {"w": np.ones(shape)})
    step = optimizer._next_step(optimizer.hyperparameter_values())
    assert step.loop in kernels.loops()
    assert set(step.scalars) <= set(kernels.step_fields())
    rule = getattr(reference, step.rule + "_rule")
    parameters = list(inspect.signature(rule).parameters)
    states = len(optimizer._rule_state_names())
    assert parameters[:2] == ["p", "g"]
    assert set(parameters[2 + states:]) == set(step.scalars)
    assert set(step.after) == {"iter", *optimizer._scalar_state}
    if step.second is not None:   # a second pass: its loop and NumPy rule take its scalars
        assert step.second in kernels.loops()
        second = list(inspect.signature(getattr(reference, step.second + "_rule")).parameters)
        scalars = optimizer._per_param(optimizer.hyperparameter_values(),
                                       (1.0,) * len(optimizer._reduced), True, shape)
        assert set(second[2 + states:]) == set(scalars) <= set(kernels.step_fields())
        # (the workspace, scratch arrays the rule declares beside its state, may be reduced)
        assert set(optimizer._reduced) <= {"param", "grad", *optimizer.state_names,
                                           *optimizer._workspace}
        if "grad" in optimizer._reduced:   # the grad as the loops read it: the decay is its own
            assert optimizer._decoupled
    if step.transform is not None:   # its NumPy function takes the workspace, sums, arguments
        assert step.second is not None
        transform, arguments = step.transform
        parameters = list(inspect.signature(getattr(reference, transform + "_transform"))
                          .parameters)
        workspace = len(optimizer._workspace)
        assert workspace > 0 and len(parameters) == workspace + 1 + len(arguments)
        assert set(parameters[workspace:]) == {"sums", *arguments}


def test_a_scalar_the_loops_do_not_take_is_refused_by_name():
    p = np.ones(3)
    with pytest.raises(ValueError, match="no scalar named 'learning_rate'"):
        kernels.run("sgd", [p], [np.ones(3)], None, None, None, None, None, 0.0,
                    {"learning_rate": 0.1})
    with pytest.raises(ValueError, match="no compiled loop is named 'sdg'"):
        kernels.run("sdg", [p], [np.ones(3)], None, None, None, None, None, 0.0, {"lr": 0.1})
    assert np.all(p == 1.0)


@pytest.mark.parametrize("module", [fastopt, reference], ids=["compiled", "reference"])
def test_a_rule_takes_the_norms_only_of_a_param_whose_step_reads_them(module, monkeypatch):
    """LARS's trust ratio is 1 for a param without decay (unless ``always_adapt``), as in
    timm's Lars: neither path then sums the squares of its param and grad (two passes over
    memory for nothing); the params' bits are the other path's either way."""
    import fastopt._base as base
    counted = []
    for owner, name in ((base, "_sum_of_squares"), (reference, "sum_of_squares")):
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda array, scale=None, original=original: (
            counted.append(array.shape), original(array, scale))[1])
    rng = np.random.default_rng(0)
    shapes = {"W": (30, 20), "b": (20,)}
    for options, norms in [({}, 0), ({"weight_decay": 1e-4}, 4),
                           ({"weight_decay": 1e-4, "weight_decay_filter":
                             lambda key, param: param.ndim > 1}, 2),
                           ({"always_adapt": True}, 4)]:
        params = {key: rng.standard_normal(shape) for key, shape in shapes.items()}
        grads = {key: rng.standard_normal(shape) for key, shape in shapes.items()}
        other = {key: value.copy() for key, value in params.items()}
        counted.clear()
        module.LARS(lr=0.1, momentum=0.9, **options).update(params, grads)
        assert len(counted) == norms, options
        (reference if module is fastopt else fastopt).LARS(
            lr=0.1, momentum=0.9, **options).update(other, grads)
        for key in params:
            np.testing.assert_array_equal(params[key], other[key])
