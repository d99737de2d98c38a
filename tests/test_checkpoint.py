"""Checkpoints (SPEC §11): state_dict, load_state_dict, fastopt.save and fastopt.load.

Exact resume is checked across processes, for every optimizer and option of _helpers.CONFIGS
and the flavour classes, dict and list params, float32 and float64, with and without
clipping, in one subprocess for the whole batch. Every bad file must give a ValueError that
says what is wrong and leave the optimizer as it was; a pickle in a file must never run.
"""
import ast
import builtins
import copy
import functools
import io
import json
import os
import pickle
import re
import sys
import tracemalloc
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt import book2, checkpoint, notes, reference

import registry
from _helpers import (
    CONFIGS,
    LEARNING_RATES,
    assert_same_bits,
    config_id,
    param_shapes,
    run_python,
)

# Shared by this process and the subprocess that resumes: how a case builds its optimizer,
# params and grads. Grads depend only on (case, step), so both sides see the same ones.
COMMON = '''
import importlib
import numpy as np

SHAPES = [(3, 5), (5,), (), (0,), (17,)]
KEYS = ["W1", "b1", "s", "e", "W2"]


def user_schedule(step):
    return 0.02 / (1 + 0.5 * step)


def decay_filter(key, param):
    return np.ndim(param) > 1


def make_optimizer(case, resumed=False):
    cls = getattr(importlib.import_module(case["module"]), case["name"])
    options = dict(case["options"])
    options["lr"] = user_schedule if case["user_schedule"] else case["lr"]
    if case["clip"]:
        options["max_grad_norm"] = 1.0
    if case["filter"]:
        options["weight_decay_filter"] = decay_filter
        options.setdefault("weight_decay", 0.05)
    return cls(**options)


def make_params(case):
    rng = np.random.default_rng([case["seed"], 99])
    shapes = [tuple(shape) for shape in case.get("shapes", SHAPES)]   # Muon's: matrices
    arrays = [np.array(rng.standard_normal(shape), dtype=case["dtype"]) for shape in shapes]
    return dict(zip(KEYS, arrays)) if case["container"] == "dict" else arrays


def make_grads(case, params, step):
    rng = np.random.default_rng([case["seed"], step])
    keys = list(params) if isinstance(params, dict) else range(len(params))
    grads = {key: np.array(rng.standard_normal(np.shape(params[key])) * 0.7,
                           dtype=case["dtype"]) for key in keys}
    return grads if isinstance(params, dict) else [grads[key] for key in keys]


def arrays_of(params):
    return params.values() if isinstance(params, dict) else params


def run(case, optimizer, params, start, stop):
    for step in range(start, stop):
        optimizer.update(params, make_grads(case, params, step))


def dump(path, optimizer, params):
    """Params, state and iter with plain numpy, not with the code under test."""
    arrays = {f"param.{i}": value for i, value in enumerate(arrays_of(params))}
    keys = {}
    for name in optimizer.state_names:
        state = getattr(optimizer, name)
        entries = list(state.items()) if isinstance(state, dict) else list(enumerate(state))
        keys[name] = [key for key, _ in entries]
        arrays.update({f"{name}.{i}": value for i, (_, value) in enumerate(entries)})
    arrays["info"] = np.array(repr({"iter": optimizer.iter, "keys": keys}))
    np.savez(path, **arrays)
'''

RESUME = COMMON + '''
import ast, json, sys
import fastopt

folder = sys.argv[1]
cases = json.load(open(f"{folder}/cases.json"))
for index, case in enumerate(cases):
    optimizer = make_optimizer(case, resumed=True)
    optimizer.load_state_dict(fastopt.load(f"{folder}/{index}.ckpt"))
    saved = np.load(f"{folder}/{index}.params.npz", allow_pickle=False)
    arrays = [saved[f"param.{i}"] for i in range(len(SHAPES))]
    params = dict(zip(KEYS, arrays)) if case["container"] == "dict" else arrays
    run(case, optimizer, params, case["n"], case["n"] + case["m"])
    dump(f"{folder}/{index}.resumed.npz", optimizer, params)
print("resumed", len(cases))
'''

common: dict = {}
exec(COMMON, common)   # the same helper code the subprocess runs


def _cases():
    cases = []
    for (name, options) in CONFIGS:
        for container in ("dict", "list"):
            for dtype in ("float32", "float64"):
                for clip in (False, True):
                    cases.append({"module": "fastopt", "name": name, "options": options,
                                  "lr": LEARNING_RATES[name], "container": container,
                                  "dtype": dtype, "clip": clip, "user_schedule": False,
                                  "filter": False})
    for module, name in [("fastopt.notes", "Adam"), ("fastopt.notes", "Mestrov"),
                         ("fastopt.notes", "RMSProp"), ("fastopt.book2", "Nesterov"),
                         ("fastopt.reference", "NAdam")]:
        for container in ("dict", "list"):
            cases.append({"module": module, "name": name, "options": {}, "lr": 0.01,
                          "container": container, "dtype": "float64", "clip": False,
                          "user_schedule": False, "filter": False})
    for name in registry.BY_NAME:    # every optimizer: a schedule, a filter and clipping at once
        for container in ("dict", "list"):
            cases.append({"module": "fastopt", "name": name, "options": {}, "lr": 0.01,
                          "container": container, "dtype": "float32", "clip": True,
                          "user_schedule": True, "filter": True})
    for seed, case in enumerate(cases):
        case.update(seed=seed, n=4, m=3)
        _shape_for(case)
    return cases


def _shape_for(case):
    """Give a rule of 2-D params only (Muon) matrices of as many elements as SHAPES's
    (tests/registry.py's ``param_shape``); every other case keeps SHAPES."""
    shapes = param_shapes(case["name"], common["SHAPES"])
    if shapes != common["SHAPES"]:
        case["shapes"] = [list(shape) for shape in shapes]


def _read_dump(path):
    with np.load(path, allow_pickle=False) as saved:
        arrays = {name: saved[name] for name in saved.files if name != "info"}
        info = ast.literal_eval(str(saved["info"]))
    return arrays, info


def _prepare_resume(cases, folder):
    """For each case: N updates and a checkpoint, and separately N+M uninterrupted."""
    for index, case in enumerate(cases):
        optimizer = common["make_optimizer"](case)
        params = common["make_params"](case)
        common["run"](case, optimizer, params, 0, case["n"])
        fastopt.save(folder / f"{index}.ckpt", optimizer)
        np.savez(folder / f"{index}.params.npz",
                 **{f"param.{i}": v for i, v in enumerate(common["arrays_of"](params))})
        twin = common["make_optimizer"](case)
        params = common["make_params"](case)
        common["run"](case, twin, params, 0, case["n"] + case["m"])
        common["dump"](folder / f"{index}.expected.npz", twin, params)
    (folder / "cases.json").write_text(json.dumps(cases))


def _assert_resumed(cases, folder):
    for index, case in enumerate(cases):
        expected, expected_info = _read_dump(folder / f"{index}.expected.npz")
        resumed, resumed_info = _read_dump(folder / f"{index}.resumed.npz")
        label = f"case {index}: {case}"
        assert resumed_info == expected_info, label
        assert expected_info["iter"] == case["n"] + case["m"], label
        assert sorted(resumed) == sorted(expected), label
        for name, value in expected.items():
            try:
                assert_same_bits(resumed[name], value)
            except AssertionError as error:
                raise AssertionError(f"{label}, {name}: {error}") from None


def test_exact_resume_in_a_new_process(tmp_path):
    cases = _cases()
    _prepare_resume(cases, tmp_path)
    result = run_python(RESUME, str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["resumed", str(len(cases))]
    _assert_resumed(cases, tmp_path)


def test_the_resume_comparison_can_fail(tmp_path):
    # The comparison above would see a resumed run that lost the state, or the step count.
    case = {**_cases()[0], "name": "Adam", "lr": 0.01, "options": {}}
    optimizer = common["make_optimizer"](case)
    params = common["make_params"](case)
    common["run"](case, optimizer, params, 0, case["n"])
    saved = optimizer.state_dict()
    for spoil in ("state", "iter"):
        fresh = common["make_optimizer"](case)
        state = copy.deepcopy(saved)
        if spoil == "state":
            for array in state["state"]["m"].values():
                array[...] = 0
        else:
            state["iter"] -= 1
        fresh.load_state_dict(state)
        resumed, twin = copy.deepcopy(params), copy.deepcopy(params)
        common["run"](case, fresh, resumed, case["n"], case["n"] + 1)
        common["run"](case, copy.deepcopy(optimizer), twin, case["n"], case["n"] + 1)
        assert resumed["W1"].tobytes() != twin["W1"].tobytes(), spoil


def test_exact_resume_with_a_builtin_schedule_in_a_new_process(tmp_path):
    schedules = pytest.importorskip("fastopt.schedules")
    if not hasattr(schedules, "LinearDecay"):
        pytest.skip("fastopt.schedules has no LinearDecay yet")
    # Resumed without the schedule: the checkpoint brings it back.
    cases = []
    for name in registry.BY_NAME:
        for container in ("dict", "list"):
            cases.append({"module": "fastopt", "name": name, "options": {}, "lr": 0.01,
                          "container": container, "dtype": "float64", "clip": False,
                          "user_schedule": False, "filter": False, "seed": len(cases),
                          "n": 4, "m": 5})
            _shape_for(cases[-1])
    for index, case in enumerate(cases):
        def scheduled(case=case):
            optimizer = common["make_optimizer"](case)
            optimizer.lr = schedules.LinearDecay(0.05, 6)
            return optimizer
        optimizer, params = scheduled(), common["make_params"](case)
        common["run"](case, optimizer, params, 0, case["n"])
        fastopt.save(tmp_path / f"{index}.ckpt", optimizer)
        assert "schedule" in fastopt.load(tmp_path / f"{index}.ckpt")["hyperparameters"]["lr"]
        np.savez(tmp_path / f"{index}.params.npz",
                 **{f"param.{i}": v for i, v in enumerate(common["arrays_of"](params))})
        twin, params = scheduled(), common["make_params"](case)
        common["run"](case, twin, params, 0, case["n"] + case["m"])
        common["dump"](tmp_path / f"{index}.expected.npz", twin, params)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    result = run_python(RESUME, str(tmp_path))
    assert result.returncode == 0, result.stderr
    _assert_resumed(cases, tmp_path)


# ---------------------------------------------------------------------------------------------
# In one process: copies, pickles, loading before the first update, new keys.

def _trained(config, steps=3, container=dict, dtype=np.float64, **extra):
    name, options = config
    optimizer = getattr(fastopt, name)(lr=LEARNING_RATES[name], **{**options, **extra})
    rng = np.random.default_rng(5)
    shapes = param_shapes(config, [(4, 3), (3,), (), (6,)])
    params = [np.array(rng.standard_normal(shape), dtype=dtype) for shape in shapes]
    if container is dict:
        params = dict(zip(["W", "b", "s", "c"], params, strict=True))
    for _ in range(steps):
        optimizer.update(params, _grads(params, rng))
    return optimizer, params, rng


def _grads(params, rng):
    def grad(param):
        return np.array(rng.standard_normal(np.shape(param)), dtype=np.asarray(param).dtype)

    if isinstance(params, dict):
        return {key: grad(value) for key, value in params.items()}
    return [grad(value) for value in params]


def _continue(optimizer, params, seed, steps=3):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        optimizer.update(params, _grads(params, rng))
    return params


def _everything(optimizer, params):
    """Params, state and step count, for bit comparisons."""
    out = {f"param {k}": v for k, v in (params.items() if isinstance(params, dict)
                                        else enumerate(params))}
    for name in optimizer.state_names:
        state = getattr(optimizer, name)
        for key, value in (state.items() if isinstance(state, dict) else enumerate(state)):
            out[f"{name} {key!r}"] = value
    out["iter"] = np.array(optimizer.iter)
    return out


def _assert_same_future(a, params_a, b, params_b):
    first = _everything(a, _continue(a, params_a, 11))
    second = _everything(b, _continue(b, params_b, 11))
    assert list(first) == list(second)
    for key in first:
        assert_same_bits(second[key], first[key])


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "state_dict"])
def test_copies_are_independent_with_the_same_future(config, how):
    optimizer, params, _ = _trained(config)
    if how == "deepcopy":
        twin = copy.deepcopy(optimizer)
    elif how == "pickle":
        twin = pickle.loads(pickle.dumps(optimizer))
    else:
        twin = getattr(fastopt, config[0])(**config[1])
        twin.load_state_dict(optimizer.state_dict())
    assert twin._lock is not optimizer._lock
    for name in optimizer.state_names:
        for key, value in getattr(twin, name).items():
            assert not np.shares_memory(value, getattr(optimizer, name)[key])
    twin_params = copy.deepcopy(params)
    # The original moves on first; the copy must not notice.
    _continue(optimizer, copy.deepcopy(params), 3, steps=2)
    original, _, _ = _trained(config)
    _assert_same_future(original, params, twin, twin_params)


@pytest.mark.parametrize("container", [dict, list])
def test_loading_before_the_first_update(container):
    fresh = fastopt.Adam(lr=0.01, amsgrad=True)
    saved = fresh.state_dict()
    assert saved["iter"] == 0 and saved["state"] == {"m": None, "v": None, "v_max": None}
    target = fastopt.Adam()
    target.load_state_dict(saved)
    assert target.lr == 0.01 and target.amsgrad and target.m is None and target.iter == 0
    _, params, _ = _trained(("Adam", {}), steps=0, container=container)
    _assert_same_future(fastopt.Adam(lr=0.01, amsgrad=True), copy.deepcopy(params),
                        target, params)


@pytest.mark.parametrize("container", [dict, list])
def test_keys_added_after_the_checkpoint_get_zero_state(tmp_path, container):
    optimizer, params, _ = _trained(("RMSprop", {"centered": True}), container=container)
    fastopt.save(tmp_path / "c", optimizer)
    resumed = fastopt.RMSprop()
    resumed.load_state_dict(fastopt.load(tmp_path / "c"))
    grown, grown_twin = copy.deepcopy(params), copy.deepcopy(params)
    for grown_params in (grown, grown_twin):
        if container is dict:
            grown_params["new"] = np.full((2, 2), 0.5)
        else:
            grown_params.append(np.full((2, 2), 0.5))
    _assert_same_future(optimizer, grown_twin, resumed, grown)
    new = "new" if container is dict else 4
    assert resumed.h[new].shape == (2, 2)


def test_scalar_params_resume_exactly(tmp_path):
    # The book's ch06/optimizer_compare_naive.py: params['x'] = -7.0, a float.
    def run(optimizer, params, steps, start):
        for step in range(start, start + steps):
            optimizer.update(params, {"x": params["x"] / 10.0 + step, "y": 2.0 * params["y"]})

    optimizer, params = fastopt.Adam(lr=0.3), {"x": -7.0, "y": 2.0}
    run(optimizer, params, 5, 0)
    fastopt.save(tmp_path / "c", optimizer)
    resumed = fastopt.Adam()
    resumed.load_state_dict(fastopt.load(tmp_path / "c"))
    twin = copy.deepcopy(optimizer)
    twin_params = dict(params)
    run(resumed, params, 5, 5)
    run(twin, twin_params, 5, 5)
    assert type(params["x"]) is type(twin_params["x"])
    assert params == twin_params and resumed.iter == twin.iter == 10


def test_reference_classes_have_checkpoints_and_keep_their_class(tmp_path):
    optimizer = reference.AdamW(lr=0.01)
    params = {"W": np.ones((2, 3))}
    optimizer.update(params, {"W": np.full((2, 3), 0.25)})
    fastopt.save(tmp_path / "c", optimizer)
    loaded = fastopt.load(tmp_path / "c")
    assert loaded["class"] == {"module": "fastopt.reference", "qualname": "AdamW"}
    twin = reference.AdamW()
    twin.load_state_dict(loaded)
    assert_same_bits(twin.v["W"], optimizer.v["W"])
    with pytest.raises(ValueError, match=r"class fastopt\.reference\.AdamW, but this "
                                         r"optimizer is a fastopt\.optimizers\.AdamW"):
        fastopt.AdamW().load_state_dict(loaded)


@pytest.mark.parametrize("saver, loader", [
    (fastopt.Nesterov, notes.Mestrov), (notes.Mestrov, fastopt.Nesterov),
    (fastopt.Nesterov, book2.Nesterov), (notes.Adam, fastopt.Adam),
    (fastopt.RMSprop, notes.RMSProp)])
def test_flavour_classes_are_told_apart(saver, loader):
    saved = saver().state_dict()
    target = loader()
    before = pickle.dumps(target)
    with pytest.raises(ValueError, match=f"class {saver.__module__}.{saver.__qualname__}, "
                                         f"but this optimizer is a {loader.__module__}"):
        target.load_state_dict(saved)
    assert pickle.dumps(target) == before


def test_state_dict_is_plain_data_and_copies():
    optimizer, _, _ = _trained(("NAdam", {}), weight_decay=0.01,
                                    weight_decay_filter=lambda key, p: np.ndim(p) > 0)
    saved = optimizer.state_dict()
    assert saved["class"] == {"module": "fastopt.optimizers", "qualname": "NAdam"}
    assert saved["hyperparameters"] == {"lr": 0.01, "beta1": 0.9, "beta2": 0.999,
                                        "eps": 1e-8, "momentum_decay": 4e-3,
                                        "weight_decay": 0.01}
    assert saved["iter"] == 3 and saved["mu_product"] == optimizer.mu_product
    assert saved["weight_decay_filter"] is True
    assert saved["decays"] == {"W": True, "b": True, "s": False, "c": True}
    assert list(saved["state"]["m"]) == ["W", "b", "s", "c"]
    before = pickle.dumps(optimizer.m)
    for array in saved["state"]["m"].values():
        array[...] = 42.0
    assert pickle.dumps(optimizer.m) == before
    # load_state_dict copies too: changing the dict afterwards changes nothing.
    target = fastopt.NAdam(weight_decay_filter=lambda key, p: True)
    target.load_state_dict(saved)
    saved["state"]["m"]["W"][...] = 7.0
    assert (target.m["W"] == 42.0).all()


def test_every_attribute_is_in_the_checkpoint(config):
    # An attribute added to an optimizer but not to the checkpoint would break exact resume.
    optimizer, _, _ = _trained(config)
    saved = optimizer.state_dict()
    covered = {*saved["hyperparameters"], *saved["options"], *saved.get("settings", {}),
               *saved["state"], "iter",
               "max_grad_norm", "weight_decay_filter", "_decays", "_lock",
               *type(optimizer)._scalar_state}
    left = [name for name, value in vars(optimizer).items()
            if name not in covered and value is not None]
    assert left == []


def test_the_checkpoint_settings_replace_the_optimizers():
    source, params, _ = _trained(("Adam", {"amsgrad": True, "paper_form": True}),
                                 max_grad_norm=2.0)
    target = fastopt.Adam(lr=lambda step: 1.0, amsgrad=False, max_grad_norm=None,
                          weight_decay_filter=lambda key, p: True)
    target.load_state_dict(source.state_dict())
    assert (target.lr, target.amsgrad, target.paper_form, target.eps) == (0.01, True, True, 1e-8)
    assert target.max_grad_norm == 2.0 and target.weight_decay_filter is None
    _assert_same_future(source, copy.deepcopy(params), target, params)
    # And back: state the options no longer use is dropped, as the constructor has it.
    plain = fastopt.Adam().state_dict()
    target.load_state_dict(plain)
    assert not target.amsgrad and target.v_max is None and target.m is None


def test_rmsprop_state_follows_its_momentum():
    source, params, _ = _trained(("RMSprop", {"momentum": 0.5}))
    target = fastopt.RMSprop(centered=True)
    target.load_state_dict(source.state_dict())
    assert target.state_names == ("h", "momentum_buffer") and target.grad_avg is None
    _assert_same_future(source, copy.deepcopy(params), target, params)


# ---------------------------------------------------------------------------------------------
# Schedules: fastopt's own are saved, a user's callable is marked and must be passed again.
# fastopt.schedules is replaced, for these tests only, by a stand-in with the same protocol.

class _Halving:
    """lr halves every ``every`` steps: a stand-in for a built-in schedule."""

    def __init__(self, start, every):
        self.start, self.every = start, every

    def __call__(self, step):
        return self.start * 0.5 ** (step // self.every)

    def to_dict(self):
        return {"type": "Halving", "start": self.start, "every": self.every}


@pytest.fixture
def stand_in_schedules(monkeypatch):
    module = types.ModuleType("fastopt.schedules")
    halving = type("Halving", (_Halving,), {"__module__": "fastopt.schedules"})

    def from_dict(described):
        if described.get("type") != "Halving":
            raise ValueError(f"unknown schedule type {described.get('type')!r}")
        return halving(described["start"], described["every"])

    module.Halving, module.from_dict = halving, from_dict
    monkeypatch.setitem(sys.modules, "fastopt.schedules", module)
    return module


def test_fastopt_schedules_are_saved_and_rebuilt(tmp_path, stand_in_schedules):
    optimizer, params, _ = _trained(("Momentum", {}))
    optimizer.lr = stand_in_schedules.Halving(0.05, 2)
    optimizer.momentum = stand_in_schedules.Halving(0.8, 3)
    _continue(optimizer, params, 4, steps=1)
    fastopt.save(tmp_path / "c", optimizer)
    loaded = fastopt.load(tmp_path / "c")
    assert loaded["hyperparameters"]["lr"] == {
        "schedule": {"type": "Halving", "start": 0.05, "every": 2}}
    resumed = fastopt.Momentum()
    resumed.load_state_dict(loaded)
    assert type(resumed.lr) is stand_in_schedules.Halving
    assert (resumed.lr.start, resumed.lr.every) == (0.05, 2)
    assert resumed.lr is not optimizer.lr
    _assert_same_future(optimizer, copy.deepcopy(params), resumed, params)


def test_an_unknown_schedule_type_is_refused(tmp_path, stand_in_schedules):
    optimizer = fastopt.Adam(lr=stand_in_schedules.Halving(0.1, 2))
    saved = optimizer.state_dict()
    saved["hyperparameters"]["lr"]["schedule"]["type"] = "Mystery"
    target = fastopt.Adam()
    before = pickle.dumps(target)
    with pytest.raises(ValueError, match=r"lr's schedule .* cannot be rebuilt: unknown "
                                         r"schedule type 'Mystery'"):
        target.load_state_dict(saved)
    assert pickle.dumps(target) == before


def test_a_schedule_outside_fastopt_schedules_is_the_users(stand_in_schedules):
    # A subclass defined elsewhere may behave differently: it is not fastopt's to rebuild.
    mine = type("Mine", (stand_in_schedules.Halving,), {"__module__": __name__})
    assert fastopt.SGD(lr=mine(0.1, 2)).state_dict()["hyperparameters"]["lr"] == {
        "user_schedule": True}


def test_a_schedule_that_is_not_plain_data_is_refused_at_save(stand_in_schedules):
    schedule = stand_in_schedules.Halving(0.1, 2)
    schedule.to_dict = lambda: {"type": "Halving", "start": object()}
    with pytest.raises(TypeError, match=r"lr's schedule .* is not plain data"):
        fastopt.SGD(lr=schedule).state_dict()


def test_without_fastopt_schedules_a_saved_schedule_is_refused(monkeypatch):
    saved = fastopt.SGD().state_dict()
    saved["hyperparameters"]["lr"] = {"schedule": {"type": "LinearDecay", "start": 0.1}}
    monkeypatch.setitem(sys.modules, "fastopt.schedules", None)   # import raises ImportError
    with pytest.raises(ValueError, match=r"'LinearDecay' schedule of fastopt\.schedules"):
        fastopt.SGD().load_state_dict(saved)


def test_a_users_schedule_must_be_passed_again(tmp_path):
    def schedule(step):
        return 0.1 / (1 + step)

    optimizer, params, _ = _trained(("Adam", {}))
    optimizer.lr = schedule
    fastopt.save(tmp_path / "c", optimizer)
    loaded = fastopt.load(tmp_path / "c")
    assert loaded["hyperparameters"]["lr"] == {"user_schedule": True}
    target = fastopt.Adam()
    before = pickle.dumps(target)
    with pytest.raises(ValueError) as error:
        target.load_state_dict(loaded)
    assert str(error.value) == ("lr was a schedule of your own when saved; pass it again: "
                                "Adam(lr=your_schedule) before load_state_dict")
    assert pickle.dumps(target) == before
    target = fastopt.Adam(lr=schedule)
    target.load_state_dict(loaded)
    assert target.lr is schedule
    _assert_same_future(optimizer, copy.deepcopy(params), target, params)


@pytest.mark.parametrize("container", [dict, list])
def test_the_filters_answers_are_state(tmp_path, container):
    # weight_decay_filter is asked once per key, when the key is first seen: after a resume
    # it is asked only about keys the checkpoint does not have.
    asked = []

    def chooser(key, param):
        asked.append(key)
        return np.ndim(param) > 1

    optimizer, params, _ = _trained(("AdamW", {}), container=container,
                                    weight_decay_filter=chooser)
    assert asked == (["W", "b", "s", "c"] if container is dict else [0, 1, 2, 3])
    fastopt.save(tmp_path / "c", optimizer)
    resumed = fastopt.AdamW(weight_decay_filter=chooser)
    resumed.load_state_dict(fastopt.load(tmp_path / "c"))
    asked.clear()
    if container is dict:
        params["new"] = np.ones((2, 2))
    else:
        params.append(np.ones((2, 2)))
    _continue(resumed, params, 1, steps=2)
    assert asked == ["new" if container is dict else 4]
    assert resumed._decays == ({"W": True, "b": False, "s": False, "c": False, "new": True}
                               if container is dict else [True, False, False, False, True])


def test_a_users_weight_decay_filter_must_be_passed_again():
    saved = fastopt.SGD(weight_decay_filter=lambda key, p: True).state_dict()
    target = fastopt.SGD()
    with pytest.raises(ValueError, match=r"weight_decay_filter was a callable of your own "
                                         r"when saved; pass it again: SGD\(weight_decay_"
                                         r"filter=your_filter\)"):
        target.load_state_dict(saved)
    assert target.weight_decay_filter is None


# ---------------------------------------------------------------------------------------------
# The file: what np.load sees, bad files, interrupted saves, and no pickle anywhere.

@pytest.fixture
def good(tmp_path):
    """(path, optimizer) for an AMSGrad Adam with dict params after 3 updates."""
    optimizer, _, _ = _trained(("Adam", {"amsgrad": True}), dtype=np.float32)
    path = tmp_path / "good.npz"
    fastopt.save(path, optimizer)
    return path, optimizer


def test_numpy_reads_the_file_without_pickle(good):
    path, optimizer = good
    with np.load(path, allow_pickle=False) as saved:
        files = sorted(saved.files)
        metadata = json.loads(str(saved["metadata"]))
        array = saved["state.v_max.1"]
    assert files == sorted(["metadata"] + [f"state.{n}.{i}" for n in ("m", "v", "v_max")
                                           for i in range(4)])
    assert metadata["state"]["m"] == {"container": "dict", "keys": ["W", "b", "s", "c"]}
    assert metadata["class"] == {"module": "fastopt.optimizers", "qualname": "Adam"}
    assert_same_bits(array, optimizer.v_max["b"])


def test_compressed_and_big_endian_members_load(good, tmp_path):
    # What np.savez_compressed or another machine might write: the same numbers.
    path, optimizer = good
    members = _members(path)
    members["state.m.0.npy"] = _npy(optimizer.m["W"].astype(">f4"))
    with zipfile.ZipFile(tmp_path / "other.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    loaded = fastopt.load(tmp_path / "other.npz")
    assert loaded["state"]["m"]["W"].dtype == np.float32   # native order again
    assert_same_bits(loaded["state"]["m"]["W"], optimizer.m["W"])
    assert_same_bits(loaded["state"]["v_max"]["c"], optimizer.v_max["c"])


def test_save_writes_the_path_as_named(tmp_path):
    fastopt.save(str(tmp_path / "checkpoint"), fastopt.SGD())
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]
    with pytest.raises(TypeError, match="writes to a path"):
        fastopt.save(io.BytesIO(), fastopt.SGD())


def test_load_takes_a_file_object(good):
    path, optimizer = good
    with open(path, "rb") as stream:
        loaded = fastopt.load(stream)
    assert loaded["iter"] == optimizer.iter


def test_keys_other_than_str_or_int_are_refused_at_save(tmp_path):
    optimizer = fastopt.Momentum()
    optimizer.update({("layer", 1): np.ones(2)}, {("layer", 1): np.ones(2)})
    optimizer.load_state_dict(optimizer.state_dict())   # in memory any key is fine
    with pytest.raises(TypeError, match=r"key \('layer', 1\) \(tuple\) cannot be saved; a "
                                        r"checkpoint file keeps params by str or int keys"):
        fastopt.save(tmp_path / "c", optimizer)
    assert os.listdir(tmp_path) == []


def test_int_keys_stay_ints(tmp_path):
    optimizer = fastopt.Momentum()
    optimizer.update({0: np.ones(2), "0": np.ones(3), np.int64(5): np.ones(1)},
                     {0: np.ones(2), "0": np.ones(3), 5: np.ones(1)})
    fastopt.save(tmp_path / "c", optimizer)
    assert list(fastopt.load(tmp_path / "c")["state"]["v"]) == [0, "0", 5]


def _members(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write_members(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _npy(array, allow_pickle=False):
    stream = io.BytesIO()
    np.lib.format.write_array(stream, np.asarray(array), allow_pickle=allow_pickle)
    return stream.getvalue()


def _metadata(path):
    with np.load(path, allow_pickle=False) as saved:
        return json.loads(str(saved["metadata"]))


def _with_metadata(source, target, change):
    """``source``'s members, with ``change`` applied to its metadata, written to ``target``."""
    members = _members(source)
    record = _metadata(source)
    change(record)
    members["metadata.npy"] = _npy(np.array(json.dumps(record)))
    _write_members(target, members)


class _Pwned:
    """Unpickling this runs ``exec``: evidence that a pickle was loaded."""

    def __reduce__(self):
        return (exec, ("import builtins; builtins.fastopt_pickle_ran = True",))


def _object_array():
    array = np.empty(2, dtype=object)
    array[0], array[1] = _Pwned(), 1.0
    return array


def _bad_files(path):
    """(name, make(path) -> None, expected message) for every kind of bad file."""
    size = path.stat().st_size
    members = _members(path)

    def truncate(length):
        return lambda p: p.write_bytes(path.read_bytes()[:length])

    def replace(name, data):
        return lambda p: _write_members(p, {**members, name: data})

    def drop(name):
        return lambda p: _write_members(p, {k: v for k, v in members.items() if k != name})

    def flip(offset):
        def make(p):
            data = bytearray(path.read_bytes())
            data[offset] ^= 0xFF
            p.write_bytes(bytes(data))
        return make

    first_array = members["state.m.0.npy"]
    data_offset = path.read_bytes().index(first_array) + len(first_array) - 1
    cases = [(f"truncated-{n}", truncate(n), "it is empty" if n == 0 else "truncated")
             for n in (0, 1, 3, 30, 200, size // 2, size - 100, size - 22, size - 1)]
    cases += [
        ("random-bytes", lambda p: p.write_bytes(np.random.default_rng(0).bytes(500)),
         "not an .npz file"),
        ("zip-random-bytes", lambda p: p.write_bytes(b"PK\x03\x04" + bytes(300)),
         "damaged or truncated"),
        ("flipped-byte-in-an-array", flip(data_offset), "damaged or truncated.*CRC"),
        ("npy-file", lambda p: p.write_bytes(_npy(np.ones(3))), r"a \.npy file"),
        ("raw-pickle", lambda p: p.write_bytes(pickle.dumps(_Pwned())), "it is a pickle"),
        ("foreign-npz", lambda p: np.savez(p, weights=np.ones(3)), "no 'metadata' record"),
        ("metadata-not-json", replace("metadata.npy", _npy(np.array("{nope"))),
         "not valid JSON"),
        ("metadata-a-list", replace("metadata.npy", _npy(np.array("[1]"))),
         "not a JSON object"),
        ("metadata-duplicate-field", replace("metadata.npy", _npy(np.array(
            '{"format": "fastopt-checkpoint", "format": "x"}'))), "same field twice"),
        ("metadata-float", replace("metadata.npy", _npy(np.ones(()))),
         "expected a 0-d unicode array"),
        ("metadata-pickled", replace("metadata.npy", _npy(_object_array(), True)),
         "holds pickled Python objects"),
        ("array-pickled", replace("state.v.2.npy", _npy(_object_array(), True)),
         "'state.v.2' holds pickled Python objects"),
        ("array-int", replace("state.m.1.npy", _npy(np.ones(3, np.int32))),
         "'state.m.1' has dtype int32"),
        ("array-complex", replace("state.m.1.npy", _npy(np.ones(3, complex))),
         "has dtype complex128"),
        ("array-longdouble", replace("state.m.1.npy", _npy(np.ones(3, np.longdouble))),
         "has dtype float128|has dtype float64.*but state"),
        ("array-shape-differs-from-its-other-state",
         replace("state.v.0.npy", _npy(np.ones((3, 4), np.float32))),
         r"state v\['W'\] has shape \(3, 4\).*but state m\['W'\] has shape \(4, 3\)"),
        ("array-dtype-differs-from-its-other-state",
         replace("state.v.0.npy", _npy(np.ones((4, 3)))),
         r"state v\['W'\] has shape \(4, 3\) and dtype float64, but state m\['W'\]"),
        ("array-header-lies", replace("state.m.0.npy", members["state.m.0.npy"][:-4]),
         "header says"),
        ("array-missing", drop("state.v_max.3.npy"), r"missing the arrays \['state.v_max.3'\]"),
        ("array-extra", replace("state.m.4.npy", _npy(np.ones(2, np.float32))),
         r"does not name: \['state.m.4.npy'\]"),
        ("member-extra", replace("notes.txt", b"hello"), r"does not name: \['notes.txt'\]"),
        ("array-npy-version-3", replace("state.m.0.npy", b"\x93NUMPY\x03\x00" + bytes(8)),
         r"\.npy format version \(3, 0\)"),
    ]
    metadata_cases = [
        ("another-version", lambda r: r.update(version=2),
         r"another-version.npz': fastopt checkpoint of version 2; this fastopt reads version "
         r"1 \(the file is from a newer fastopt\)"),
        ("version-true", lambda r: r.update(version=True), "version True"),
        ("another-format", lambda r: r.update(format="torch"), "its 'format' is 'torch'"),
        ("another-class", lambda r: r["class"].update(qualname="Momentum"),
         "class fastopt.optimizers.Momentum, but this optimizer is a fastopt.optimizers.Adam"),
        ("key-missing", lambda r: r["state"]["m"]["keys"].pop(),
         r"does not name: \['state.m.3.npy'\]"),
        ("key-extra", lambda r: r["state"]["m"]["keys"].append("extra"),
         r"missing the arrays \['state.m.4'\]"),
        ("key-duplicate", lambda r: r["state"]["m"]["keys"].__setitem__(1, "W"),
         "distinct str or int keys"),
        ("key-float", lambda r: r["state"]["m"]["keys"].__setitem__(1, 1.5),
         "distinct str or int keys"),
        ("state-missing", lambda r: r["state"].pop("v_max"),
         r"does not name: \['state.v_max.0.npy'"),
        ("state-unknown", lambda r: r["state"].update(z=None), r"holds state \['m', 'v', "
                                                              r"'v_max', 'z'\]"),
        ("state-kinds-mixed", lambda r: r["state"].update(
            v_max={"container": "list", "length": 4}), "partly by key and partly by position"),
        ("field-missing", lambda r: r.pop("iter"), r"checkpoint: missing fields \['iter'\]$"),
        ("field-unknown", lambda r: r.update(code="import os"),
         r"checkpoint: unknown fields \['code'\]$"),
        ("iter-negative", lambda r: r.update(iter=-1), "'iter' must be an int >= 0"),
        ("iter-float", lambda r: r.update(iter=3.0), "'iter' must be an int >= 0"),
        ("lr-negative", lambda r: r["hyperparameters"].update(lr=-1.0),
         r"lr must be finite and >= 0; got -1.0 \(in the checkpoint\)"),
        ("beta1-out-of-range", lambda r: r["hyperparameters"].update(beta1=1.0),
         "beta1 must satisfy 0 <= beta1 < 1"),
        ("lr-huge-int", lambda r: r["hyperparameters"].update(lr=10**400),
         "lr is an int too large for a float$"),
        ("lr-string", lambda r: r["hyperparameters"].update(lr="0.1"),
         "hyperparameter 'lr' is '0.1'"),
        ("hyperparameter-missing", lambda r: r["hyperparameters"].pop("eps"),
         r"its hyperparameters are not those of a fastopt.optimizers.Adam: missing "
         r"hyperparameters \['eps'\]$"),
        ("option-not-bool", lambda r: r["options"].update(amsgrad=1),
         "'options' must map names to True or False"),
        ("option-unknown", lambda r: r["options"].update(nesterov=True),
         r"its options are not those of a fastopt.optimizers.Adam: unknown options "
         r"\['nesterov'\]$"),
        ("max-grad-norm-zero", lambda r: r.update(max_grad_norm=0),
         "max_grad_norm must be > 0"),
        ("mu-product-on-adam", lambda r: r.update(mu_product=0.5),
         "it has 'mu_product', which a fastopt.optimizers.Adam does not keep"),
        ("decays-not-bool", lambda r: r.update(decays={"container": "list", "values": [1]}),
         "'decays' must hold True or False"),
        ("decays-malformed", lambda r: r.update(decays={"container": "dict", "keys": ["W"]}),
         "'decays' is described as"),
    ]
    cases += [(name, functools.partial(_with_metadata, path, change=change), message)
              for name, change, message in metadata_cases]
    return cases


def test_every_kind_of_bad_file_is_refused_and_changes_nothing(good, tmp_path, monkeypatch):
    path, _ = good
    # The optimizer that loads: already trained on the same shapes, so every check runs.
    target, _, _ = _trained(("Adam", {"amsgrad": True}), steps=1, dtype=np.float32)
    monkeypatch.delattr(builtins, "fastopt_pickle_ran", raising=False)
    names = set()
    for name, make, message in _bad_files(path):
        names.add(name)
        bad = tmp_path / f"{name}.npz"
        make(bad)
        assert bad.read_bytes() != path.read_bytes(), name
        before = pickle.dumps(target)
        with pytest.raises(ValueError, match=message) as error:
            target.load_state_dict(fastopt.load(bad))
        assert pickle.dumps(target) == before, name
        assert "\n" not in str(error.value), name
        assert not hasattr(builtins, "fastopt_pickle_ran"), name
    assert len(names) == len(_bad_files(path))
    # The good file does load, into the same optimizer.
    target.load_state_dict(fastopt.load(path))
    assert target.iter == 3


def test_the_pickles_above_would_run_if_loaded(tmp_path, monkeypatch):
    # So that "never executed" above can fail: np.load with allow_pickle=True runs them.
    monkeypatch.delattr(builtins, "fastopt_pickle_ran", raising=False)
    np.savez(tmp_path / "p.npz", a=_object_array())
    np.load(tmp_path / "p.npz", allow_pickle=True)["a"]
    assert builtins.fastopt_pickle_ran is True


def test_state_that_does_not_fit_the_optimizer_is_refused(good):
    path, _ = good
    loaded = fastopt.load(path)
    other_shapes = fastopt.Adam(amsgrad=True)
    other_shapes.update({"W": np.ones(5, np.float32)}, {"W": np.ones(5, np.float32)})
    other_dtype, _, _ = _trained(("Adam", {"amsgrad": True}), steps=1, dtype=np.float64)
    by_position, _, _ = _trained(("Adam", {"amsgrad": True}), steps=1, dtype=np.float32,
                                 container=list)
    for target, message in [
            (other_shapes, r"state m\['W'\] has shape \(4, 3\) and dtype float32, but this "
                           r"optimizer's has shape \(5,\) and dtype float32"),
            (other_dtype, r"state m\['W'\] has shape \(4, 3\) and dtype float32, but this "
                          r"optimizer's has shape \(4, 3\) and dtype float64"),
            (by_position, r"keeps state 'm' by position \(a list\), but the checkpoint")]:
        before = pickle.dumps(target)
        with pytest.raises(ValueError, match=message):
            target.load_state_dict(loaded)
        assert pickle.dumps(target) == before


def test_params_that_do_not_fit_the_loaded_state_are_refused_at_the_update(good):
    path, _ = good
    optimizer = fastopt.Adam()
    optimizer.load_state_dict(fastopt.load(path))
    params = {"W": np.ones(5, np.float32), "b": np.ones(3, np.float32)}
    before = pickle.dumps(optimizer)
    with pytest.raises(ValueError, match=r"state m\['W'\] has shape \(4, 3\) but param 'W' "
                                         r"has shape \(5,\)"):
        optimizer.update(params, {"W": np.ones(5, np.float32), "b": np.ones(3, np.float32)})
    assert pickle.dumps(optimizer) == before


def test_load_state_dict_takes_a_mapping():
    with pytest.raises(TypeError, match="takes the dict that state_dict"):
        fastopt.SGD().load_state_dict([("format", "fastopt-checkpoint")])


def test_hand_made_state_dicts_are_checked_too():
    # load_state_dict trusts a dict no more than a file.
    optimizer, _, _ = _trained(("Momentum", {}))
    good = optimizer.state_dict()
    target = fastopt.Momentum()
    for change, message in [
            (lambda d: d["hyperparameters"].update(lr=np.ones(2)), "hyperparameter 'lr' is"),
            (lambda d: d["state"]["v"].update(W=[[1.0]]), r"state v\['W'\] is a list"),
            (lambda d: d["state"]["v"].update(W=np.ones((4, 3), object)), "dtype object"),
            (lambda d: d["state"].update(v=(np.ones(2),)), "state 'v' is a tuple"),
            (lambda d: d.update(decays={"W": 1}), "'decays' must hold True or False"),
            (lambda d: d["class"].update(module=None), "'class' must be")]:
        state = copy.deepcopy(good)
        change(state)
        before = pickle.dumps(target)
        with pytest.raises(ValueError, match=message):
            target.load_state_dict(state)
        assert pickle.dumps(target) == before


def test_big_endian_state_in_memory_fits_native_state():
    optimizer, params, _ = _trained(("Momentum", {}))
    state = optimizer.state_dict()
    state["state"]["v"] = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in
                           state["state"]["v"].items()}
    twin = copy.deepcopy(optimizer)
    twin.load_state_dict(state)   # its existing state is native float64 of the same shapes
    assert twin.v["W"].dtype.isnative
    _assert_same_future(optimizer, copy.deepcopy(params), twin, params)


def test_an_unusable_optimizer_is_not_saved(tmp_path):
    optimizer = fastopt.Adam()
    optimizer.beta1 = 1.5
    with pytest.raises(ValueError, match="beta1 must satisfy"):
        fastopt.save(tmp_path / "c", optimizer)
    assert os.listdir(tmp_path) == []


def test_missing_files_raise_os_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastopt.load(tmp_path / "nothing.npz")
    with pytest.raises(FileNotFoundError):
        fastopt.save(tmp_path / "no" / "such" / "dir.npz", fastopt.SGD())


def test_a_save_that_fails_midway_leaves_the_previous_file(good, monkeypatch):
    path, optimizer = good
    previous = path.read_bytes()
    moved_on = copy.deepcopy(optimizer)
    _continue(moved_on, _trained(("Adam", {}), steps=0, dtype=np.float32)[1], 1)

    def fails_midway(stream, **members):
        stream.write(b"PK\x03\x04" + bytes(1000))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", fails_midway)
    with pytest.raises(OSError, match="No space left"):
        fastopt.save(path, moved_on)
    monkeypatch.undo()
    assert path.read_bytes() == previous
    assert os.listdir(path.parent) == [path.name]   # no temporary file left behind
    assert fastopt.load(path)["iter"] == optimizer.iter
    # And a save that works replaces it: the failure above was the patched write.
    fastopt.save(path, moved_on)
    assert fastopt.load(path)["iter"] == optimizer.iter + 3


def test_a_failed_rename_leaves_the_previous_file(good, monkeypatch):
    path, _ = good
    previous = path.read_bytes()
    renames = []

    def refuse(source, destination):
        renames.append((source, destination))
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        fastopt.save(path, fastopt.SGD())
    monkeypatch.undo()
    [(source, destination)] = renames
    # The temporary file was beside the target (one file system: the rename is atomic).
    assert Path(source).parent == path.parent and destination == str(path)
    assert path.read_bytes() == previous and os.listdir(path.parent) == [path.name]


def test_the_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append(("fsync", os.fstat(descriptor).st_ino))
        real_fsync(descriptor)

    def replace(source, destination):
        events.append(("replace", os.stat(source).st_ino))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    fastopt.save(tmp_path / "c", fastopt.SGD())
    renamed = [inode for event, inode in events if event == "replace"]
    assert len(renamed) == 1
    assert events.index(("fsync", renamed[0])) < events.index(("replace", renamed[0]))
    if os.name == "posix":   # and the directory, so that the rename itself survives a crash
        assert events[-1] == ("fsync", os.stat(tmp_path).st_ino)


CRASH = '''
import os, sys
import numpy as np
import fastopt

def crash(stream, **members):
    stream.write(b"PK\\x03\\x04" + bytes(1000))
    stream.flush()
    os._exit(3)   # no cleanup, no exception handlers: as if the process were killed

np.savez = crash
fastopt.save(sys.argv[1], fastopt.Adam(lr=0.5))
'''


def test_a_save_killed_midway_leaves_the_previous_file(good):
    path, optimizer = good
    previous = path.read_bytes()
    result = run_python(CRASH, str(path))
    assert result.returncode == 3, result.stderr
    assert path.read_bytes() == previous
    leftovers = [name for name in os.listdir(path.parent) if name != path.name]
    assert len(leftovers) == 1 and leftovers[0].startswith(".fastopt-")   # the temporary
    assert fastopt.load(path)["hyperparameters"]["lr"] == optimizer.lr


def test_no_checkpoint_code_path_unpickles(good, tmp_path, monkeypatch):
    path, optimizer = good

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle was called")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    target = fastopt.Adam()
    target.load_state_dict(fastopt.load(path))
    assert target.iter == optimizer.iter
    for name, make, message in _bad_files(path):
        if "pickle" in name:
            make(tmp_path / name)
            with pytest.raises(ValueError, match=message):
                fastopt.load(tmp_path / name)
    # And in the source: no pickle import, and np.load (if ever used) only without pickles.
    source = Path(checkpoint.__file__).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + [getattr(node, "module", "")]
            assert not any(n and "pickle" in n for n in names), ast.dump(node)
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("np.load", "numpy.load"):
            assert any(k.arg == "allow_pickle" and ast.unparse(k.value) == "False"
                       for k in node.keywords), ast.unparse(node)


@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_files_hold_the_exact_bits(tmp_path, config):
    optimizer, _, _ = _trained(config, dtype=np.float32, container=list)
    fastopt.save(tmp_path / "c", optimizer)
    loaded = fastopt.load(tmp_path / "c")
    saved = optimizer.state_dict()
    for name, container in saved["state"].items():
        assert len(loaded["state"][name]) == len(container)
        for a, b in zip(loaded["state"][name], container, strict=True):
            assert_same_bits(a, b)
            assert a.flags.c_contiguous and a.flags.writeable and a.dtype.isnative
    loaded["state"] = saved["state"] = None
    assert loaded == saved


# --- found in review ---------------------------------------------------------------------------

def test_a_warmup_around_a_callable_of_your_own_is_saved_as_your_own(tmp_path):
    # Warmup/Join cannot describe a user callable in plain data: the checkpoint marks the
    # hyperparameter as a schedule of the user's own, to pass again, instead of failing.
    schedules = pytest.importorskip("fastopt.schedules")

    def my_lr(step):
        return 0.01 / (1 + step)

    optimizer = fastopt.Adam(lr=schedules.Warmup(my_lr, 3))
    params = {"W": np.ones(4)}
    for _ in range(2):
        optimizer.update(params, {"W": np.full(4, 0.5)})
    fastopt.save(tmp_path / "c.npz", optimizer)
    assert fastopt.load(tmp_path / "c.npz")["hyperparameters"]["lr"] == {"user_schedule": True}
    with pytest.raises(ValueError, match="lr was a schedule of your own"):
        fastopt.Adam().load_state_dict(fastopt.load(tmp_path / "c.npz"))
    again = fastopt.Adam(lr=schedules.Warmup(my_lr, 3))
    again.load_state_dict(fastopt.load(tmp_path / "c.npz"))
    ours, theirs = {"W": params["W"].copy()}, {"W": params["W"].copy()}
    for _ in range(3):
        optimizer.update(ours, {"W": np.full(4, 0.5)})
        again.update(theirs, {"W": np.full(4, 0.5)})
    assert ours["W"].tobytes() == theirs["W"].tobytes()


@pytest.mark.parametrize("field, value", [("iter", 10**400), ("iter", 2**53),
                                          ("mu_product", float("nan")), ("mu_product", 2.0),
                                          ("mu_product", -0.5)])
def test_out_of_range_step_state_is_refused_at_load(field, value):
    source = fastopt.NAdam()
    source.update({"W": np.ones(3)}, {"W": np.ones(3)})
    state = source.state_dict()
    state[field] = value
    target = fastopt.NAdam()
    before = pickle.dumps(target)
    with pytest.raises(ValueError, match=repr(field)):
        target.load_state_dict(state)
    assert pickle.dumps(target) == before


def test_a_long_file_name_saves(tmp_path):
    path = tmp_path / ("c" * 240 + ".npz")   # 244 characters: within the usual 255
    optimizer = fastopt.SGD()
    fastopt.save(path, optimizer)
    assert fastopt.load(path)["class"]["qualname"] == "SGD"


# ---------------------------------------------------------------------------------------------
# Any file is read in memory and time bounded by the file: every member's zip entry and .npy
# header are checked before its data is decompressed, and sizes against the file's.

def _patch_entry(path, member, *, flag=0, compressed=None, size=None):
    """Rewrite ``member``'s zip entry in place (its local header and its central directory
    record): set the zip ``flag`` bits, claim ``compressed`` and ``size`` bytes."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        local = archive.getinfo(member).header_offset
    central = data.index(b"PK\x01\x02")
    while data[central + 46:central + 46 + len(member)] != member.encode():
        central = data.index(b"PK\x01\x02", central + 4)
    for start, flags, sizes in ((local, 6, 18), (central, 8, 20)):
        bits = int.from_bytes(data[start + flags:start + flags + 2], "little") | flag
        data[start + flags:start + flags + 2] = bits.to_bytes(2, "little")
        for offset, value in ((sizes, compressed), (sizes + 4, size)):
            if value is not None:
                data[start + offset:start + offset + 4] = value.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def _npy_header(shape, descr="<f4", fortran=False):
    """A .npy version 1.0 header (the first bytes of a member) saying ``shape``, as given."""
    text = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    text += " " * (63 - (10 + len(text)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


def _peak_bytes(function):
    """(the exception ``function()`` raised, the peak of memory traced while it ran)."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as error:
            function()
        return error.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_bzip2_bomb_is_refused_unread(tmp_path):
    # A metadata member that declares 16 MiB of text and really holds it, bzip2'ed to a few
    # hundred bytes: it used to be decompressed whole before anything was checked.
    size = 16 << 20
    member = _npy_header("()", descr=f"<U{size // 4}") + bytes(size)
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("metadata.npy", member)
    del member
    assert path.stat().st_size < 1000
    error, peak = _peak_bytes(lambda: fastopt.load(path))
    assert str(error) == (f"{str(path)!r}: member 'metadata.npy' is compressed with bzip2; "
                          f"fastopt reads members stored or deflated, as np.savez and "
                          f"np.savez_compressed write them")
    assert peak < 256 << 10


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_member_cannot_claim_more_than_its_bytes_in_the_file_hold(good, tmp_path, method):
    # The header and the zip entry both say 256 MiB; the file has a few hundred bytes. The
    # array must not be allocated: stored data must lie in the file, deflated data expands
    # at most 1032-fold.
    path, _ = good
    members = _members(path)
    members["state.m.0.npy"] = _npy_header("(8192, 8192)") + bytes(64)
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(bad, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with zipfile.ZipFile(bad) as archive:
        info = archive.getinfo("state.m.0.npy")
    header = len(_npy_header("(8192, 8192)"))
    claimed = header + 4 * 8192 * 8192
    _patch_entry(bad, "state.m.0.npy", size=claimed,
                 compressed=claimed if method == zipfile.ZIP_STORED else None)
    error, peak = _peak_bytes(lambda: fastopt.load(bad))
    if method == zipfile.ZIP_STORED:
        assert re.fullmatch(rf"'.*bad\.npz': member 'state\.m\.0\.npy' says it has {claimed} "
                            rf"bytes from offset {info.header_offset}, past the end of the "
                            rf"file \(\d+ bytes\): truncated or tampered with", str(error))
    else:
        assert str(error).endswith(f"member 'state.m.0.npy' says it holds {claimed} bytes, "
                                   f"more than its {info.compress_size} deflated bytes can: "
                                   f"tampered with")
    assert peak < 256 << 10


def test_a_deflated_member_near_deflates_largest_expansion_loads(tmp_path):
    # The bound is deflate's own: real zeros, compressed about a thousandfold, still load.
    zeros = np.zeros((1000, 1000), np.float32)
    optimizer = fastopt.Adam()
    optimizer.update({"W": zeros}, {"W": zeros})
    fastopt.save(tmp_path / "stored.npz", optimizer)
    with zipfile.ZipFile(tmp_path / "deflated.npz", "w", zipfile.ZIP_DEFLATED,
                         compresslevel=9) as archive:
        for name, data in _members(tmp_path / "stored.npz").items():
            archive.writestr(name, data)
        info = archive.getinfo("state.v.0.npy")
    assert info.file_size > 900 * info.compress_size
    loaded = fastopt.load(tmp_path / "deflated.npz")
    assert_same_bits(loaded["state"]["v"]["W"], optimizer.v["W"])


@pytest.mark.parametrize("length", [10**7, 10**11, 2**64])
def test_a_list_longer_than_the_file_is_refused_before_anything_is_built(tmp_path, length):
    optimizer, _, _ = _trained(("Adam", {}), container=list, dtype=np.float32)
    fastopt.save(tmp_path / "good.npz", optimizer)
    bad = tmp_path / "bad.npz"
    _with_metadata(tmp_path / "good.npz", bad,
                   lambda record: record["state"]["m"].update(length=length))
    error, peak = _peak_bytes(lambda: fastopt.load(bad))
    assert str(error) == (f"{str(bad)!r}: not a usable fastopt checkpoint: state 'm' is "
                          f"described as a list of {length} arrays, but the file holds 8 "
                          f"arrays in all")
    assert peak < 1 << 20


# ---------------------------------------------------------------------------------------------
# A member that is not a usable .npy array: a ValueError naming the file and the member.

@pytest.mark.parametrize(("shape", "data", "message"), [
    ("(True, 3)", 12, r"has the shape \(True, 3\) in its \.npy header; expected a tuple of "
                      r"at most 64 ints >= 0"),
    ("(-1, -1)", 4, r"has the shape \(-1, -1\) in its \.npy header"),
    ("(2, -2)", 0, r"has the shape \(2, -2\) in its \.npy header"),
    (str((1,) * 65), 4, r"has the shape \(1, 1, .*\) in its \.npy header; expected a tuple of "
                     r"at most 64 ints"),
    ("(2.0, 2)", 16, r"is not a readable \.npy array \(shape is not valid"),
    ("[4, 3]", 48, r"is not a readable \.npy array"),
])
def test_a_bad_shape_names_the_file_and_the_member(good, tmp_path, shape, data, message):
    path, _ = good
    members = _members(path)
    members["state.m.0.npy"] = _npy_header(shape) + bytes(data)
    bad = tmp_path / "bad.npz"
    _write_members(bad, members)
    with pytest.raises(ValueError, match=rf"^'.*bad\.npz': member 'state\.m\.0' {message}"):
        fastopt.load(bad)


def test_an_oversized_npy_header_is_refused_unread(good, tmp_path):
    path, _ = good
    members = _members(path)
    members["state.m.0.npy"] = b"\x93NUMPY\x02\x00" + (10**9).to_bytes(4, "little")
    _write_members(tmp_path / "bad.npz", members)
    with pytest.raises(ValueError, match=r"member 'state\.m\.0' is not a readable \.npy "
                                         r"array \(its header is 1000000000 bytes; at most "
                                         r"10000 are read\)"):
        fastopt.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("member", ["metadata.npy", "state.v.2.npy"])
def test_an_encrypted_member_names_the_file_and_the_member(good, tmp_path, member):
    path, _ = good
    bad = tmp_path / "bad.npz"
    bad.write_bytes(path.read_bytes())
    _patch_entry(bad, member, flag=0x1)
    with pytest.raises(ValueError) as error:
        fastopt.load(bad)
    assert str(error.value) == (f"{str(bad)!r}: member {member!r} is encrypted; a fastopt "
                                f"checkpoint has no encrypted members")


def test_an_lzma_member_names_the_file_and_the_member(good, tmp_path):
    path, _ = good
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(bad, "w") as archive:
        for name, data in _members(path).items():
            archive.writestr(name, data, zipfile.ZIP_LZMA if name == "state.v.1.npy"
                             else zipfile.ZIP_STORED)
    with pytest.raises(ValueError, match=r"^'.*bad\.npz': member 'state\.v\.1\.npy' is "
                                         r"compressed with LZMA; fastopt reads members stored "
                                         r"or deflated"):
        fastopt.load(bad)


def test_every_array_header_is_checked_before_any_array_is_read(good, tmp_path, monkeypatch):
    # The last member's shape disagrees with the first state's: refused with no array read.
    path, _ = good
    members = _members(path)
    members["state.v_max.3.npy"] = _npy(np.ones(5, np.float32))
    _write_members(tmp_path / "bad.npz", members)
    reads = []
    original = checkpoint._read_member

    def counting(archive, member, name, header_only=False):
        if not header_only:
            reads.append(member)
        return original(archive, member, name, header_only)

    monkeypatch.setattr(checkpoint, "_read_member", counting)
    with pytest.raises(ValueError, match=r"state v_max\['c'\] has shape \(5,\) and dtype "
                                         r"float32, but state m\['c'\] has shape"):
        fastopt.load(tmp_path / "bad.npz")
    assert reads == ["metadata"]


# ---------------------------------------------------------------------------------------------
# Schedules from a checkpoint are rebuilt and evaluated at its step when it is loaded: one that
# would fail at the next update is refused then, and the optimizer is unchanged.

def _nested_warmups(depth):
    described = {"type": "Constant", "value": 0.01}
    for _ in range(depth - 1):
        described = {"type": "Warmup", "schedule": described, "steps": 2, "start": 0.0}
    return described


@pytest.mark.parametrize(("described", "message"), [
    (_nested_warmups(500), r"lr's schedule \{'type': 'Warmup', .*\.\.\.\(cut\) cannot be "
                           r"rebuilt: from_dict: schedules nested more than 32 deep"),
    ({"type": "CosineDecay", "start": 0.1, "n": 10**400, "end": 0.0},
     r"lr's schedule .* cannot be rebuilt: CosineDecay: n must be at most 2\*\*53 \(a step "
     r"count a float holds exactly\); got an int of 1329 bits$"),
    ({"type": "LinearRamp", "start": 0.1, "end": -0.1, "n": 2},
     r"lr must be finite and >= 0; got -0.1 \(the schedule's value at step 3, in the "
     r"checkpoint\)$"),
    ({"type": "Join", "schedules": [{"type": "Constant", "value": 0.1},
                                    {"type": "Constant", "value": 2.0}], "boundaries": [3]},
     r"beta1 must satisfy 0 <= beta1 < 1; got 2.0 \(the schedule's value at step 3, in the "
     r"checkpoint\)$"),
], ids=["warmup-500-deep", "cosine-n-10**400", "lr-negative-at-step-3", "beta1-2-at-step-3"])
def test_a_schedule_that_would_fail_is_refused_at_load(tmp_path, described, message):
    optimizer, params, _ = _trained(("Adam", {}))
    assert optimizer.iter == 3
    name = "beta1" if "beta1" in message else "lr"
    path = tmp_path / "c.npz"
    fastopt.save(path, optimizer)
    _with_metadata(path, path, lambda record: record["hyperparameters"].update(
        {name: {"schedule": described}}))
    state = optimizer.state_dict()
    state["hyperparameters"][name] = {"schedule": described}
    target, _, _ = _trained(("Adam", {}), steps=1)
    before = pickle.dumps(target)
    # fastopt.load refuses what no optimizer could use; load_state_dict, with the checks of
    # the optimizer's own hyperparameter, the rest.
    for load in (lambda: target.load_state_dict(fastopt.load(path)),
                 lambda: target.load_state_dict(state)):
        with pytest.raises(ValueError, match=message):
            load()
        assert pickle.dumps(target) == before
    _continue(target, params, 7)   # still usable


def test_a_schedule_at_the_deepest_nesting_loads_and_works(tmp_path):
    optimizer, params, _ = _trained(("Adam", {}))
    optimizer.lr = fastopt.schedules.from_dict(_nested_warmups(32))
    fastopt.save(tmp_path / "c.npz", optimizer)
    target = fastopt.Adam()
    target.load_state_dict(fastopt.load(tmp_path / "c.npz"))
    assert target.lr == optimizer.lr
    _assert_same_future(optimizer, copy.deepcopy(params), target, params)


# ---------------------------------------------------------------------------------------------
# Saving replaces the file a symbolic link names (the link stays) and keeps a replaced file's
# permission bits.

posix_only = pytest.mark.skipif(os.name != "posix", reason="symbolic links and modes: POSIX")


@posix_only
@pytest.mark.parametrize("relative", [False, True], ids=["absolute-link", "relative-link"])
def test_saving_through_a_symbolic_link_keeps_the_link(tmp_path, relative):
    store, links = tmp_path / "store", tmp_path / "links"
    store.mkdir()
    links.mkdir()
    fastopt.save(store / "target.npz", fastopt.SGD())
    link = links / "latest.npz"
    link.symlink_to(os.path.relpath(store / "target.npz", links) if relative
                    else store / "target.npz")
    optimizer, _, _ = _trained(("Adam", {}))
    fastopt.save(link, optimizer)
    assert link.is_symlink()
    assert link.resolve() == (store / "target.npz").resolve()
    assert fastopt.load(store / "target.npz")["iter"] == 3 == fastopt.load(link)["iter"]
    assert sorted(os.listdir(links)) == ["latest.npz"]   # no temporary left anywhere
    assert sorted(os.listdir(store)) == ["target.npz"]


@posix_only
def test_saving_through_a_link_to_a_link_and_a_dangling_link(tmp_path):
    fastopt.save(tmp_path / "target.npz", fastopt.SGD())
    (tmp_path / "one").symlink_to("target.npz")
    (tmp_path / "two").symlink_to("one")
    fastopt.save(tmp_path / "two", fastopt.Momentum())
    assert (tmp_path / "two").is_symlink() and (tmp_path / "one").is_symlink()
    assert fastopt.load(tmp_path / "target.npz")["class"]["qualname"] == "Momentum"
    (tmp_path / "dangling").symlink_to("new.npz")
    fastopt.save(tmp_path / "dangling", fastopt.Momentum())
    assert (tmp_path / "dangling").is_symlink()
    assert fastopt.load(tmp_path / "new.npz")["class"]["qualname"] == "Momentum"


@posix_only
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444, 0o755], ids=oct)
def test_saving_keeps_the_replaced_files_mode(tmp_path, mode):
    path = tmp_path / "c.npz"
    fastopt.save(path, fastopt.SGD())
    path.chmod(mode)
    fastopt.save(path, fastopt.Momentum())
    assert path.stat().st_mode & 0o7777 == mode
    assert fastopt.load(path)["class"]["qualname"] == "Momentum"
    (tmp_path / "link").symlink_to("c.npz")   # through a link: the target's mode
    fastopt.save(tmp_path / "link", fastopt.SGD())
    assert path.stat().st_mode & 0o7777 == mode


@posix_only
def test_a_new_file_gets_the_umasks_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        fastopt.save(tmp_path / "c.npz", fastopt.SGD())
    finally:
        os.umask(previous)
    assert (tmp_path / "c.npz").stat().st_mode & 0o7777 == 0o640
