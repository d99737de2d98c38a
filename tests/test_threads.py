"""Threads for large params: bit-identical for any count, configurable, safe after fork."""
import multiprocessing
import os
import warnings

import numpy as np
import pytest

import fastopt
from fastopt import _kernels

from _helpers import assert_same_bits, assert_same_state, copy_params, make_pair, run_python

needs_openmp = pytest.mark.skipif(not _kernels.openmp(), reason="built without OpenMP")
# Large enough to be split for every rule, odd so the chunks are uneven; plus small keys.
SHAPES = [(300_001,), (513, 517), (7,), ()]


@pytest.fixture
def restore_threads():
    count = fastopt.get_num_threads()
    yield
    fastopt.set_num_threads(count)


def trajectory(config, threads, steps=4):
    fastopt.set_num_threads(threads)
    rng = np.random.default_rng(0)
    fast, ref = make_pair(config)
    start = {f"p{i}": rng.standard_normal(shape) for i, shape in enumerate(SHAPES)}
    ours, theirs = copy_params(start), copy_params(start)
    for _ in range(steps):
        grads = {key: rng.standard_normal(value.shape) for key, value in start.items()}
        fast.update(ours, grads)
        ref.update(theirs, grads)
    return fast, ours, ref, theirs


def test_any_thread_count_gives_the_same_bits(config, restore_threads):
    serial, serial_params, ref, ref_params = trajectory(config, 1)
    for threads in (2, 3):
        fast, params, _, _ = trajectory(config, threads)
        for key in params:
            assert_same_bits(params[key], serial_params[key])
        assert_same_state(fast, serial)
    for key in ref_params:
        assert_same_bits(serial_params[key], ref_params[key])
    assert_same_state(serial, ref)


@needs_openmp
def test_float32_chunks_line_up(restore_threads):
    # float32 splits on 16-element boundaries too; every element is updated exactly once.
    for threads in (1, 2, 3):
        fastopt.set_num_threads(threads)
        params = {"w": np.zeros(1_000_003, np.float32)}
        fastopt.SGD(lr=1.0).update(params, {"w": np.ones(1_000_003, np.float32)})
        assert np.all(params["w"] == -1.0)


def test_set_num_threads(restore_threads):
    fastopt.set_num_threads(3)
    assert fastopt.get_num_threads() == (3 if _kernels.openmp() else 1)
    fastopt.set_num_threads(1)
    assert fastopt.get_num_threads() == 1
    with pytest.raises(ValueError, match=">= 1"):
        fastopt.set_num_threads(0)
    with pytest.raises(TypeError, match="int"):
        fastopt.set_num_threads("2")
    with pytest.raises(TypeError, match="int"):
        fastopt.set_num_threads(True)
    assert fastopt.get_num_threads() == 1


def threads_in_fresh_process(**environment):
    return run_python("import fastopt; print(fastopt.get_num_threads())", timeout=60,
                      **environment)


@needs_openmp
def test_threads_from_the_environment():
    assert threads_in_fresh_process(FASTOPT_NUM_THREADS="3").stdout.strip() == "3"
    assert threads_in_fresh_process(OMP_NUM_THREADS="2,1").stdout.strip() == "2"
    assert threads_in_fresh_process(FASTOPT_NUM_THREADS="1",
                                    OMP_NUM_THREADS="4").stdout.strip() == "1"
    assert threads_in_fresh_process().stdout.strip() == "1"   # threads are opt-in


def test_a_bad_thread_variable_fails_loudly():
    completed = threads_in_fresh_process(FASTOPT_NUM_THREADS="many")
    assert completed.returncode != 0
    assert "FASTOPT_NUM_THREADS='many'" in completed.stderr


def _child_update(connection):
    params = {"w": np.full(400_000, 2.0)}
    optimizer = fastopt.Adam()
    for _ in range(3):
        optimizer.update(params, {"w": np.full(400_000, 0.5)})
    connection.send((fastopt.get_num_threads(), params["w"].tobytes()))
    connection.close()


@needs_openmp
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_after_threads_ran_finishes(restore_threads):
    fastopt.set_num_threads(2)
    params = {"w": np.full(400_000, 2.0)}
    optimizer = fastopt.Adam()
    for _ in range(3):   # the parent runs threads first
        optimizer.update(params, {"w": np.full(400_000, 0.5)})
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    with warnings.catch_warnings():
        # Python >= 3.12 warns that forking a multi-threaded process may deadlock: that is
        # exactly the situation this test checks fastopt survives.
        warnings.simplefilter("ignore", DeprecationWarning)
        child = context.Process(target=_child_update, args=(sender,))
        child.start()
    sender.close()
    try:
        assert receiver.poll(120), "the forked child did not finish its updates"
        threads, data = receiver.recv()
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert threads == 1
    assert data == params["w"].tobytes()
    assert fastopt.get_num_threads() == 2   # the parent keeps its threads
