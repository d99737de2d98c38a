"""fastopt.Partition: param groups, each key routed to the first optimizer whose selector takes it.

Partition is not a rule (it has no loop of its own), so it is not in the registry: these tests
check what it adds to the optimizers it holds. Routing; per-group hyperparameters (the bits
of separate optimizers on each group's keys); one clip over all grads (the bits of one
optimizer on all keys with the same max_grad_norm); every error before anything is written,
in any group; checkpoints with exact resume in a new process; copies and pickles.
"""
from __future__ import annotations

import copy
import importlib.util
import io
import json
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt import SGD, Adam, AdamW, Lookahead, Momentum, Partition

from _helpers import assert_same_bits, run_python

SHAPES = {"W1": (7, 5), "b1": (5,), "W2": (5, 3), "b2": (3,), "s": ()}


def matrices(key, param):
    """The Muon-style selector: 2-D params."""
    return bool(np.ndim(param) == 2)


def params_and_grads(rng, dtype=np.float64, steps=6, scale=1.0):
    params = {key: np.array(rng.standard_normal(shape), dtype)
              for key, shape in SHAPES.items()}
    grads = [{key: np.array(scale * rng.standard_normal(shape), dtype)
              for key, shape in SHAPES.items()} for _ in range(steps)]
    return params, grads


def copied(params):
    return {key: value.copy() for key, value in params.items()}


def snapshot(partition, params):
    """Everything an update could change: params, every group's state and step count, the
    routes and the Partition's step count."""
    return (copy.deepcopy(params),
            [({name: copy.deepcopy(getattr(opt, name)) for name in opt.state_names}, opt.iter,
              opt.lr)
             for opt in partition.optimizers],
            copy.deepcopy(partition.routes), partition.iter)


def assert_unchanged(before, partition, params):
    old_params, old_states, old_routes, old_iter = before
    assert partition.iter == old_iter
    assert partition.routes == old_routes
    for key in old_params:
        assert_same_bits(params[key], old_params[key])
    for optimizer, (states, count, lr) in zip(partition.optimizers, old_states, strict=True):
        assert optimizer.iter == count and optimizer.lr == lr
        for name, container in states.items():
            now = getattr(optimizer, name)
            assert (container is None) == (now is None)
            assert list(container or ()) == list(now or ())
            for key in container or ():
                assert_same_bits(now[key], container[key])


# --- routing ---------------------------------------------------------------------------------

def test_each_key_goes_to_the_first_group_whose_selector_takes_it():
    asked = []

    def biases(key, param):
        asked.append(key)
        return key.startswith("b")

    first, second, rest = SGD(lr=0.1), SGD(lr=0.1), SGD(lr=0.1)
    partition = Partition([(biases, first), (matrices, second), (None, rest)])
    params, grads = params_and_grads(np.random.default_rng(0))
    partition.update(params, grads[0])
    assert partition.routes == {"W1": 1, "b1": 0, "W2": 1, "b2": 0, "s": 2}
    assert partition.iter == 1 and [opt.iter for opt in partition.optimizers] == [1, 1, 1]
    partition.update(params, grads[1])
    assert asked == list(SHAPES)   # asked once per key, at its first update


def test_a_key_is_routed_once_and_keeps_its_group():
    # The route is remembered (as torch's groups fix their params): a selector that would now
    # answer otherwise is not asked again, and the key's state stays in its group.
    flip = {"on": True}

    def fickle(key, param):
        return flip["on"]

    partition = Partition([(fickle, Momentum(lr=0.1)), (None, Momentum(lr=0.1))])
    params = {"w": np.ones(3)}
    partition.update(params, {"w": np.ones(3)})
    flip["on"] = False
    partition.update(params, {"w": np.ones(3)})
    partition.update({**params, "u": np.ones(2)}, {"w": np.ones(3), "u": np.ones(2)})
    assert partition.routes == {"w": 0, "u": 1}
    assert list(partition.optimizers[0].v) == ["w"] and list(partition.optimizers[1].v) == ["u"]


def test_per_group_hyperparameters_give_the_bits_of_separate_optimizers():
    # Muon-style routing with existing classes: AdamW for the matrices, Adam with other
    # hyperparameters for the rest; each group must be exactly its own optimizer.
    for dtype in (np.float64, np.float32):
        rng = np.random.default_rng(1)
        params, grads = params_and_grads(rng, dtype)
        alone = copied(params)
        partition = Partition([(matrices, AdamW(lr=3e-3, weight_decay=0.1)),
                               (None, Adam(lr=1e-2, beta1=0.8))])
        matrix_opt, rest_opt = AdamW(lr=3e-3, weight_decay=0.1), Adam(lr=1e-2, beta1=0.8)
        two_d = [key for key, value in params.items() if value.ndim == 2]
        for grad in grads:
            partition.update(params, grad)
            matrix_opt.update({k: alone[k] for k in two_d}, {k: grad[k] for k in two_d})
            rest = {k: alone[k] for k in alone if k not in two_d}
            rest_opt.update(rest, {k: grad[k] for k in rest})
            alone["s"] = rest["s"]   # a 0-d array param: updated in place, same object
        for key in params:
            assert_same_bits(params[key], alone[key])
        assert list(partition.optimizers[0].m) == two_d
        assert_same_bits(partition.optimizers[1].v["b1"], rest_opt.v["b1"])


def test_params_are_updated_in_place():
    params, grads = params_and_grads(np.random.default_rng(2))
    arrays = dict(params)
    Partition([(matrices, Adam()), (None, SGD())]).update(params, grads[0])
    assert all(params[key] is arrays[key] for key in params)


# --- one clip over all grads -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["Adam", "LAMB", "NAdam", "SGD"])   # LAMB: two passes
def test_one_clip_over_all_grads_gives_the_bits_of_one_optimizer_on_all_keys(dtype, name):
    rng = np.random.default_rng(3)
    params, grads = params_and_grads(rng, dtype, scale=5.0)
    single_params, per_group_params = copied(params), copied(params)
    limit = 1.0
    assert fastopt.clipping.global_norm(list(grads[0].values())) > 4 * limit   # it clips
    cls = getattr(fastopt, name)
    partition = Partition([(matrices, cls(lr=0.1)), (None, cls(lr=0.1))],
                          max_grad_norm=limit)
    single = cls(lr=0.1, max_grad_norm=limit)
    # What the test must tell apart: each group clipping by the norm of its own grads.
    per_group = [cls(lr=0.1, max_grad_norm=limit), cls(lr=0.1, max_grad_norm=limit)]
    for grad in grads:
        originals = copied(grad)
        partition.update(params, grad)
        single.update(single_params, grad)
        for optimizer, chosen in zip(per_group, (True, False), strict=True):
            keys = [k for k in per_group_params if matrices(k, per_group_params[k]) == chosen]
            optimizer.update({k: per_group_params[k] for k in keys}, {k: grad[k] for k in keys})
        for key in grad:   # the caller's grads are left as they were
            assert_same_bits(grad[key], originals[key])
    for key in params:
        assert_same_bits(params[key], single_params[key])
    assert any(params[k].tobytes() != per_group_params[k].tobytes() for k in params)


def test_a_groups_own_max_grad_norm_is_refused():
    with pytest.raises(ValueError, match=r"group 1's Adam has max_grad_norm=1\.0, which would "
                                         r"clip by the norm of its own grads only; a Partition "
                                         r"clips by the norm of all groups' grads"):
        Partition([(matrices, Adam()), (None, Adam(max_grad_norm=1.0))])
    # Set later, it is refused at the update, before anything changes.
    partition = Partition([(matrices, Adam()), (None, Adam())], max_grad_norm=1.0)
    params, grads = params_and_grads(np.random.default_rng(4))
    partition.update(params, grads[0])
    partition.optimizers[0].max_grad_norm = 2.0
    before = snapshot(partition, params)
    with pytest.raises(ValueError, match=r"group 0's Adam has max_grad_norm=2\.0"):
        partition.update(params, grads[1])
    assert_unchanged(before, partition, params)


def test_a_bad_max_grad_norm_is_refused():
    with pytest.raises(ValueError, match=r"max_grad_norm must be > 0 \(or None\); got -1.0"):
        Partition([(None, Adam())], max_grad_norm=-1.0)


# --- errors: clear, naming the key, nothing changed anywhere ---------------------------------

def trained_partition():
    partition = Partition([(matrices, Adam(lr=0.1)), (None, Momentum(lr=0.1))])
    params, grads = params_and_grads(np.random.default_rng(5))
    partition.update(params, grads[0])
    return partition, params, grads


def test_a_key_no_selector_takes_is_refused_by_name():
    partition = Partition([(matrices, Adam()), (lambda key, p: key == "b1", SGD())])
    params, grads = params_and_grads(np.random.default_rng(6))
    before = snapshot(partition, params)
    with pytest.raises(ValueError, match=r"param 'b2' is taken by no group: none of the "
                                         r"Partition's 2 selectors accepts it; add a last "
                                         r"group whose selector is None"):
        partition.update(params, grads[0])
    assert_unchanged(before, partition, params)
    assert partition.routes is None


def test_the_same_optimizer_in_two_groups_is_refused():
    shared = Adam()
    with pytest.raises(ValueError, match="groups 0 and 2 hold the same Adam instance; each "
                                         "group needs its own optimizer"):
        Partition([(matrices, shared), (None, SGD()), (None, shared)])


def test_a_selector_that_raises_changes_nothing_and_the_note_names_the_key():
    def broken(key, param):
        if key == "extra":
            raise RuntimeError("selector bug")
        return False

    partition = Partition([(matrices, Adam(lr=0.1)), (broken, SGD()), (None, Momentum())])
    params, grads = params_and_grads(np.random.default_rng(5))
    partition.update(params, grads[0])
    params["extra"] = np.ones(4)
    before = snapshot(partition, params)
    with pytest.raises(RuntimeError, match="selector bug") as caught:
        partition.update(params, {**grads[1], "extra": np.ones(4)})
    assert ("fastopt: raised by the selector of Partition group 1, asked about param 'extra'; "
            "nothing was changed") in caught.value.__notes__
    assert_unchanged(before, partition, params)


@pytest.mark.parametrize("answer", [1, None, "yes", np.array([True])])
def test_a_selector_that_returns_no_bool_is_refused(answer):
    partition = Partition([(lambda key, param: answer, SGD()), (None, SGD())])
    params, grads = params_and_grads(np.random.default_rng(7))
    before = snapshot(partition, params)
    with pytest.raises(TypeError, match=r"the selector of Partition group 0 returned .* for "
                                        r"param 'W1'; a selector must return True or False"):
        partition.update(params, grads[0])
    assert_unchanged(before, partition, params)


def test_numpy_bools_are_answers():
    partition = Partition([(lambda key, param: np.bool_(key == "W1"), SGD()), (None, SGD())])
    params, grads = params_and_grads(np.random.default_rng(7))
    partition.update(params, grads[0])
    assert partition.routes["W1"] == 0 and partition.routes["b1"] == 1


def test_an_error_in_a_later_group_changes_nothing_in_an_earlier_one():
    # The matrices' group (0) is checked and would be fine; a bad grad in group 1 (a shape
    # mismatch, a missing grad, a read-only param) must leave group 0 untouched too.
    partition, params, grads = trained_partition()
    cases = [
        ({**grads[1], "b2": np.ones(4)}, params, ValueError,
         r"grad 'b2' has shape \(4,\) but its param has shape \(3,\)"),
        ({key: value for key, value in grads[1].items() if key != "b1"}, params, KeyError,
         r"grads has no entry for param 'b1'"),
        (grads[1], {**params, "b1": np.ones(5).astype(np.int64)}, TypeError,
         r"param 'b1' has dtype int64"),
    ]
    for bad_grads, bad_params, kind, message in cases:
        before = snapshot(partition, bad_params)
        with pytest.raises(kind, match=message):
            partition.update(bad_params, bad_grads)
        assert_unchanged(before, partition, bad_params)


def test_a_bad_hyperparameter_in_a_later_group_changes_nothing():
    partition, params, grads = trained_partition()
    partition.optimizers[1].momentum = 1.5
    before = snapshot(partition, params)
    with pytest.raises(ValueError, match=r"momentum must satisfy 0 <= momentum < 1; got 1\.5"):
        partition.update(params, grads[1])
    assert_unchanged(before, partition, params)


def test_switching_between_dict_and_list_params_is_refused():
    partition, params, grads = trained_partition()
    before = snapshot(partition, params)
    with pytest.raises(TypeError, match=r"this Partition routes its params by key \(a dict\) "
                                        r"from earlier calls, but params is now a list"):
        partition.update(list(params.values()), list(grads[1].values()))
    assert_unchanged(before, partition, params)


@pytest.mark.parametrize("groups, kind, message", [
    ([], ValueError, "needs at least one"),
    ({"a": 1}, TypeError, "groups must be a list of"),
    ([(None,)], TypeError, "group 0 is a tuple; each group is a"),
    ([(3, Adam())], TypeError, "group 0's selector is an int 3; expected a callable"),
    ([(None, fastopt.reference.Adam())], TypeError,
     "group 0's optimizer is a fastopt.reference.Adam; expected one of fastopt's compiled"),
    ([(None, Partition([(None, Adam())]))], TypeError, "a Partition's groups are flat"),
])
def test_bad_groups_are_refused(groups, kind, message):
    with pytest.raises(kind, match=message):
        Partition(groups)


def test_optimizers_of_different_step_counts_are_refused():
    used = Adam()
    used.update({"w": np.ones(2)}, {"w": np.ones(2)})
    with pytest.raises(ValueError, match=r"different numbers of steps \(iter \[0, 1\]\)"):
        Partition([(matrices, Adam()), (None, used)])


# --- list params, scalar params --------------------------------------------------------------

def test_list_params_keep_state_by_position_in_the_whole_list():
    rng = np.random.default_rng(8)
    params, grads = params_and_grads(rng)
    as_list = [value.copy() for value in params.values()]
    partition = Partition([(matrices, Adam(lr=0.1)), (None, Adam(lr=0.1))])
    by_key = Partition([(matrices, Adam(lr=0.1)), (None, Adam(lr=0.1))])
    for grad in grads:
        partition.update(as_list, list(grad.values()))
        by_key.update(params, grad)
    assert partition.routes == [0, 1, 0, 1, 1]
    assert list(partition.optimizers[0].m) == [0, 2]
    for value, key in zip(as_list, params, strict=True):
        assert_same_bits(value, params[key])


def test_a_scalar_param_gets_its_new_value_stored_back():
    params = {"x": -7.0, "w": np.ones(2)}
    alone = {"x": -7.0}
    partition = Partition([(matrices, SGD()), (None, Adam(lr=0.1))])
    reference = Adam(lr=0.1)
    for _ in range(3):
        partition.update(params, {"x": 2.0, "w": np.ones(2)})
        reference.update(alone, {"x": 2.0})
    assert params["x"] == alone["x"] and params["x"] != -7.0
    listed = [-7.0]
    Partition([(None, SGD(lr=0.5))]).update(listed, [1.0])
    assert listed == [-7.5]
    with pytest.raises(TypeError, match=r"param 0 is a float -7.0 in a tuple, which cannot be "
                                        r"written"):
        Partition([(None, SGD())]).update((-7.0,), (1.0,))


# --- checkpoints, copies, pickles ------------------------------------------------------------

def make_partition():
    return Partition([(matrices, AdamW(lr=3e-3)), (None, Adam(lr=1e-2, beta1=0.8))],
                     max_grad_norm=2.0)


RESUME = """
import sys
import numpy as np
import fastopt
sys.path.insert(0, sys.argv[2])
import test_partition as here
folder = sys.argv[1]
partition = here.make_partition()
partition.load_state_dict(fastopt.load(folder + "/partition.npz"))
saved = np.load(folder + "/params.npz")
params = {key: saved[key].copy() for key in saved.files}
grads = np.load(folder + "/grads.npz")
for step in range(3):
    partition.update(params, {key: grads[f"{step}.{key}"] for key in params})
np.savez(folder + "/resumed.npz", **params)
print("resumed", partition.iter)
"""


def test_exact_resume_in_a_new_process(tmp_path):
    rng = np.random.default_rng(9)
    params, grads = params_and_grads(rng, steps=7, scale=3.0)
    partition = make_partition()
    for grad in grads[:4]:
        partition.update(params, grad)
    fastopt.save(tmp_path / "partition.npz", partition)
    np.savez(tmp_path / "params.npz", **params)
    np.savez(tmp_path / "grads.npz", **{f"{step}.{key}": grad[key]
                                        for step, grad in enumerate(grads[4:]) for key in grad})
    for grad in grads[4:]:
        partition.update(params, grad)
    result = run_python(RESUME, str(tmp_path), str(Path(__file__).parent))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["resumed", "7"]
    resumed = np.load(tmp_path / "resumed.npz")
    for key in params:
        assert_same_bits(resumed[key], params[key])


def test_a_checkpoint_holds_each_groups_own_and_the_routes(tmp_path):
    partition, params, grads = trained_partition()
    state = partition.state_dict()
    assert state["class"] == {"module": "fastopt.wrappers", "qualname": "Partition"}
    assert state["routes"] == {"W1": 0, "b1": 1, "W2": 0, "b2": 1, "s": 1}
    assert [part["class"]["qualname"] for part in state["parts"]] == ["Adam", "Momentum"]
    assert set(state["parts"][0]["state"]["m"]) == {"W1", "W2"}
    fastopt.save(tmp_path / "c.npz", partition)
    members = np.load(tmp_path / "c.npz", allow_pickle=False).files
    assert "parts.0.state.m.0" in members and "parts.1.state.v.2" in members
    loaded = fastopt.load(tmp_path / "c.npz")
    fresh = Partition([(matrices, Adam(lr=0.1)), (None, Momentum(lr=0.1))])
    fresh.load_state_dict(loaded)   # before its first update
    twin = copy.deepcopy(params)
    fresh.update(twin, grads[1])
    partition.update(params, grads[1])
    for key in params:
        assert_same_bits(twin[key], params[key])


def test_a_checkpoint_that_does_not_fit_changes_nothing():
    partition, params, grads = trained_partition()
    state = partition.state_dict()
    other = Partition([(matrices, Adam(lr=0.5)), (None, Momentum(lr=0.5))])
    other.update(copy.deepcopy(params), grads[2])
    cases = [
        (Partition([(None, Adam())]), ValueError,
         "the checkpoint has 2 groups, but this Partition has 1"),
        (Partition([(matrices, Adam()), (None, Adam())]), ValueError,
         "group 1 .Adam.: the checkpoint is of class fastopt.optimizers.Momentum, but this "
         "optimizer is a fastopt.optimizers.Adam"),
        (Adam(), ValueError, "the checkpoint is of class fastopt.wrappers.Partition, but this "
                             "optimizer is a fastopt.optimizers.Adam"),
    ]
    for target, kind, message in cases:
        with pytest.raises(kind, match=message):
            target.load_state_dict(state)
    spoiled = copy.deepcopy(state)
    spoiled["routes"]["W1"] = 1   # its state is in group 0
    before = snapshot(other, params)
    with pytest.raises(ValueError, match=r"group 0 \(Adam\) holds state m\['W1'\], but the "
                                         r"checkpoint routes 'W1' to group 1"):
        other.load_state_dict(spoiled)
    spoiled = copy.deepcopy(state)
    spoiled["parts"][1]["hyperparameters"]["momentum"] = 2.0   # the second part is bad
    with pytest.raises(ValueError, match="momentum must satisfy"):
        other.load_state_dict(spoiled)
    assert_unchanged(before, other, params)
    assert [optimizer.lr for optimizer in other.optimizers] == [0.5, 0.5]


def test_copies_and_pickles_have_the_same_future():
    partition, params, grads = trained_partition()
    copies = [copy.deepcopy(partition), pickle.loads(pickle.dumps(partition))]
    results = []
    for twin in copies:
        twin_params = copy.deepcopy(params)
        twin.update(twin_params, grads[1])
        results.append(twin_params)
    partition.update(params, grads[1])
    for result in results:
        for key in params:
            assert_same_bits(result[key], params[key])
    assert copies[0].optimizers[0] is not partition.optimizers[0]
    assert copies[0].optimizers[0].m["W1"] is not partition.optimizers[0].m["W1"]


def test_a_lambda_selector_does_not_pickle_but_copies():
    partition = Partition([(lambda key, param: True, SGD())])
    assert copy.deepcopy(partition).groups[0][0] is partition.groups[0][0]
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(partition)


def test_lookahead_wraps_a_partition():
    partition, params, grads = trained_partition()
    wrapped = Lookahead(partition, alpha=0.5, k=2)
    for grad in grads[1:5]:
        wrapped.update(params, grad)
    assert wrapped.iter == 4 and partition.iter == 5 and set(wrapped.slow) == set(params)
    state = wrapped.state_dict()
    assert state["parts"][0]["class"]["qualname"] == "Partition"


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="needs mpi4py")
def test_sharded_optimizer_refuses_a_partition_and_says_why():
    code = ("import numpy as np, fastopt\n"
            "from fastopt import distributed\n"
            "for wrapper in (fastopt.Partition([(None, fastopt.Adam())]),\n"
            "                fastopt.Lookahead(fastopt.Adam())):\n"
            "    try:\n"
            "        distributed.ShardedOptimizer(wrapper, {'w': np.ones(3)})\n"
            "    except TypeError as error:\n"
            "        print(error)\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=120, cwd=tempfile.gettempdir())
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("a Partition cannot be sharded: ShardedOptimizer splits one "
                               "optimizer's params into flat pieces"), lines
    assert lines[1].startswith("a Lookahead cannot be sharded"), lines
    assert "GradientAverager" in lines[0]


# --- the wrapper's file: tampered or truncated files are refused clearly ---------------------

def rewritten(source, target, change_members=None, change_metadata=None):
    """A copy of checkpoint ``source`` at ``target`` with its members or metadata changed."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    if change_metadata is not None:
        record = json.loads(str(np.load(io.BytesIO(members["metadata.npy"]))))
        change_metadata(record)
        buffer = io.BytesIO()
        np.save(buffer, np.array(json.dumps(record)))
        members["metadata.npy"] = buffer.getvalue()
    if change_members is not None:
        change_members(members)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_a_tampered_wrapper_file_is_refused_by_name(tmp_path):
    partition, _, _ = trained_partition()
    good = tmp_path / "good.npz"
    fastopt.save(good, Lookahead(partition))
    bad = tmp_path / "bad.npz"

    def drop(members):
        del members["parts.0.parts.0.state.m.1.npy"]

    def add(members):
        members["parts.0.state.m.0.npy"] = members["parts.0.parts.0.state.m.0.npy"]

    def deep(record):
        part = record
        for _ in range(9):
            part["parts"] = [{**part, "parts": []}]
            part = part["parts"][0]

    cases = [
        ({"change_members": drop}, r"is missing the arrays \['parts\.0\.parts\.0\.state\.m\.1'\]"),
        ({"change_members": add}, r"holds members its metadata does not name: "
                                  r"\['parts\.0\.state\.m\.0\.npy'\]"),
        ({"change_metadata": lambda record: record.update(parts={"a": 1})},
         r"'parts' must be a list of checkpoints"),
        ({"change_metadata": lambda record: record["parts"][0].pop("routes")},
         r"part 0: not a usable fastopt checkpoint: a wrapper's checkpoint: missing fields "
         r"\['routes'\]"),
        ({"change_metadata": deep}, "wrappers' checkpoints nest more than 8 deep"),
    ]
    for change, message in cases:
        rewritten(good, bad, **change)
        with pytest.raises(ValueError, match=message):
            fastopt.load(bad)
    assert fastopt.load(good)["parts"][0]["routes"] == partition.routes
