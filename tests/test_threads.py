"""Threads for large params: bit-identical for any count, configurable, safe after fork, and
the caller never waits for a worker that has not started."""
import multiprocessing
import os
import time
import warnings

import numpy as np
import pytest

import fastopt
from fastopt import _kernels
from fastopt._simd import kernels as active

import registry
from _helpers import (
    as_param,
    assert_same_bits,
    assert_same_state,
    copy_params,
    make_pair,
    param_shapes,
    run_python,
)

needs_threads = pytest.mark.skipif(not _kernels.threads_supported(), reason="built without threads")
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
    start = {f"p{i}": rng.standard_normal(shape)   # matrices for Muon
             for i, shape in enumerate(param_shapes(config, SHAPES))}
    ours, theirs = copy_params(start), copy_params(start)
    for _ in range(steps):
        grads = {key: rng.standard_normal(value.shape) for key, value in start.items()}
        fast.update(ours, grads)
        ref.update(theirs, grads)
    return fast, ours, ref, theirs


def assert_the_worker_takes_a_chunk(update):
    """Call ``update()`` until the pool's worker has run a chunk of it (it may start late:
    for up to 20 s), and fail if it never does."""
    before = active.pool_worker_chunks()
    deadline = time.monotonic() + 20
    while active.pool_worker_chunks() == before and time.monotonic() < deadline:
        update()
    assert active.pool_worker_chunks() > before, "the worker never took a chunk"


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


@needs_threads
def test_float32_chunks_line_up(restore_threads):
    # float32 splits on 16-element boundaries too; every element is updated exactly once.
    for threads in (1, 2, 3):
        fastopt.set_num_threads(threads)
        params = {"w": np.zeros(1_000_003, np.float32)}
        fastopt.SGD(lr=1.0).update(params, {"w": np.ones(1_000_003, np.float32)})
        assert np.all(params["w"] == -1.0)


def test_set_num_threads(restore_threads):
    fastopt.set_num_threads(3)
    assert fastopt.get_num_threads() == (3 if _kernels.threads_supported() else 1)
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


@needs_threads
def test_threads_from_the_environment():
    assert threads_in_fresh_process(FASTOPT_NUM_THREADS="3").stdout.strip() == "3"
    assert threads_in_fresh_process(OMP_NUM_THREADS="2,1").stdout.strip() == "2"
    assert threads_in_fresh_process(FASTOPT_NUM_THREADS="1",
                                    OMP_NUM_THREADS="4").stdout.strip() == "1"
    # By default, the CPUs this process may run on, at most 8.
    expected = min(len(os.sched_getaffinity(0)), 8) if hasattr(os, "sched_getaffinity") else (
        min(os.cpu_count() or 1, 8))
    assert threads_in_fresh_process().stdout.strip() == str(expected)


@needs_threads
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_the_default_follows_the_cpus_the_process_may_use():
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "import fastopt; print(fastopt.get_num_threads())")
    assert run_python(code, timeout=60).stdout.strip() == "1"


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


@needs_threads
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
    assert threads == 2   # the child starts a pool of its own
    assert data == params["w"].tobytes()
    assert fastopt.get_num_threads() == 2   # the parent keeps its threads


# The calling thread never waits for a worker that has not started: with every worker held
# (as if it could not get a core), threaded updates still finish, on the caller alone. With a
# team barrier (OpenMP's static split) they would wait for the held worker's share forever.
HELD_WORKERS = r"""
import sys, time
import numpy as np
import fastopt
from fastopt._simd import kernels

def run(threads, dtype, name):
    fastopt.set_num_threads(threads)
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(2**20 + 7).astype(dtype)]
    optimizer = getattr(fastopt, name)()
    for _ in range(3):
        optimizer.update(params, [rng.standard_normal(2**20 + 7).astype(dtype)])
    return params[0].tobytes()

cases = [(dtype, name) for dtype in (np.float32, np.float64) for name in ("SGD", "Adam")]
expected = {case: run(1, *case) for case in cases}
run(2, np.float64, "Adam")   # the pool starts
assert kernels.pool_workers() == 1, kernels.pool_workers()
kernels.hold_pool_workers(True)
time.sleep(0.2)   # the worker is asleep or held, not in a chunk
before = kernels.pool_worker_chunks()
for case in cases:
    assert run(2, *case) == expected[case], f"held: {case}"
    assert kernels.sum_of_squares(np.ones(2**20)) == 2.0**20
assert kernels.pool_worker_chunks() == before, "a held worker ran a chunk"
# Released, the worker wakes late, for jobs that are long finished: it must claim nothing of
# theirs, and take part in new ones.
kernels.hold_pool_workers(False)
deadline = time.monotonic() + 20
while kernels.pool_worker_chunks() == before and time.monotonic() < deadline:
    for case in cases:
        assert run(2, *case) == expected[case], f"released: {case}"
print(kernels.pool_worker_chunks() > before)
"""


@needs_threads
def test_the_caller_never_waits_for_a_worker_that_has_not_started():
    completed = run_python(HELD_WORKERS, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.split() == ["True"], "the released worker never took part"


# The same with real scheduling: the only worker shares one CPU with two busy processes, and
# the caller has a CPU of its own. The caller's update must not wait for the worker's share.
WORKER_WITHOUT_A_CORE = r"""
import os, subprocess, sys, time
import numpy as np
import fastopt

first, second = sorted(os.sched_getaffinity(0))[:2]
os.sched_setaffinity(0, {first})   # this thread; the pool's worker, started now, inherits it
fastopt.set_num_threads(2)
params, grads = [np.ones(2**20, np.float32)], [np.full(2**20, 0.5, np.float32)]
optimizer = fastopt.Adam()
optimizer.update(params, grads)
os.sched_setaffinity(0, {second})
spin = "import os; os.sched_setaffinity(0, {%d}); print(flush=True)\nwhile True: pass" % first
busy = [subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE)
        for _ in range(2)]
try:
    for process in busy:
        process.stdout.readline()   # spinning on the worker's CPU
    times = {1: [], 2: []}
    for _ in range(40):
        for threads in times:
            fastopt.set_num_threads(threads)
            start = time.perf_counter()
            optimizer.update(params, grads)
            times[threads].append(time.perf_counter() - start)
finally:
    for process in busy:
        process.kill()
        process.wait()
print(np.median(times[2]) / np.median(times[1]))
"""


@needs_threads
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(getattr(
    os, "sched_getaffinity", lambda _: ())(0)) < 2, reason="needs 2 CPUs and CPU affinity")
def test_an_update_does_not_wait_for_a_worker_without_a_core():
    completed = run_python(WORKER_WITHOUT_A_CORE, timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ratio = float(completed.stdout)
    # The worker gets a third of a CPU, so it may add little; what it must not do is make the
    # caller wait for a share it has not run. Medians of interleaved calls; 3x leaves room
    # for a noisy machine, a barrier that waits for the worker costs far more.
    assert ratio < 3.0, f"2 threads took {ratio:.1f}x the time of 1"


CONCURRENT_CONFIGS = [(name, {}) for name in registry.BY_NAME]


def concurrent_run(seed, threads=None, barrier=None):
    """Each optimizer of CONCURRENT_CONFIGS on a large float32 and a large float64 param,
    4 steps; returns the params' bytes. With ``barrier``, starts with the other threads."""
    if threads is not None:
        fastopt.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    results = []
    runs = []
    for name, options in CONCURRENT_CONFIGS:
        params = {"a": as_param(name, rng.standard_normal(300_017).astype(np.float32)),
                  "b": as_param(name, rng.standard_normal(200_003))}
        grads = [{key: rng.standard_normal(value.shape).astype(value.dtype)
                  for key, value in params.items()} for _ in range(4)]
        runs.append((getattr(fastopt, name)(**options), params, grads))
    if barrier is not None:
        barrier.wait()
    for step in range(4):
        for optimizer, params, grads in runs:
            optimizer.update(params, grads[step])
    for _, params, _ in runs:
        results.extend(value.tobytes() for value in params.values())
    return results


@needs_threads
def test_optimizers_in_several_python_threads_at_once_keep_their_bits(restore_threads):
    import threading
    seeds = range(4)
    expected = [concurrent_run(seed, threads=1) for seed in seeds]
    fastopt.set_num_threads(2)
    for _ in range(3):
        barrier = threading.Barrier(len(seeds))
        results = [None] * len(seeds)

        def work(i, barrier=barrier, results=results):
            results[i] = concurrent_run(seeds[i], barrier=barrier)

        workers = [threading.Thread(target=work, args=(i,)) for i in range(len(seeds))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert not any(worker.is_alive() for worker in workers), "an update hung"
        for i in range(len(seeds)):
            assert results[i] == expected[i], f"thread {i} got other bits"


# One region per update: a network of many mid-size params, none large enough to be split on
# its own (below 2**15 elements), shares one parallel region whose chunks span params; the
# whole is large enough to wake a sleeping worker (over 4 * 2**18 elements).
MANY_MID_SIZE = [(13_313,)] * 80 + [(1_031, 3), (5,), ()]


@needs_threads
@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_many_mid_size_params_share_one_region_over_the_threads(name, restore_threads):
    rng = np.random.default_rng(3)
    start = {f"p{i}": rng.standard_normal(shape) for i, shape in enumerate(MANY_MID_SIZE)}
    grads = {key: rng.standard_normal(value.shape) for key, value in start.items()}
    serial, threaded = copy_params(start), copy_params(start)
    fastopt.set_num_threads(1)
    one = getattr(fastopt, name)()
    for _ in range(3):
        one.update(serial, grads)
    fastopt.set_num_threads(2)
    two = getattr(fastopt, name)()
    for _ in range(3):
        two.update(threaded, grads)
    for key in start:
        assert_same_bits(threaded[key], serial[key])
    assert_same_state(two, one)
    # Each param alone is below the size from which a param was ever split; together they
    # are not, so the pool's worker must take part.
    assert_the_worker_takes_a_chunk(lambda: two.update(threaded, grads))


@needs_threads
@pytest.mark.parametrize("name, small, large", [("SGD", 2**19 - 16, 2**19),
                                                ("Adam", 2**16, 2**17)])
def test_a_sleeping_worker_is_woken_only_for_an_update_that_repays_it(name, small, large,
                                                                      restore_threads):
    # Between the updates of a training loop (the forward and backward passes) the pool's
    # workers go to sleep; waking one costs the caller more than the second thread saves on an
    # update of a few times the split size (bench/investigations/results/wake.txt), so an
    # update below 4 times the size from which its loop splits, and below 2**19 elements (SGD
    # splits from 2**18: 2**19 repays a wake-up), runs on the caller alone while the workers
    # sleep, and a larger one wakes them.
    # (A worker that was late lately makes the next few updates, up to 64, run on the caller
    # alone whatever their size: the large update gets that many tries to wake it.)
    fastopt.set_num_threads(2)
    rng = np.random.default_rng(4)
    for size, wakes, tries in ((small, False, 5), (large, True, 80)):
        params = {"w": rng.standard_normal(size)}
        grads = {"w": rng.standard_normal(size)}
        optimizer = getattr(fastopt, name)()
        optimizer.update(params, grads)         # starts the pool if it has not started
        woken = asleep = 0
        for _ in range(tries):
            for _ in range(50):                 # until the workers are seen asleep
                time.sleep(0.01)
                if active.pool_sleeping_workers():
                    break
            else:
                continue
            asleep += 1
            before = active.pool_wakes()
            optimizer.update(params, grads)
            woken += active.pool_wakes() > before
            if wakes and woken:
                break
        if not asleep:
            pytest.skip("the pool's worker never went to sleep (no core of its own?)")
        assert bool(woken) == wakes, (name, size, woken, asleep)


@needs_threads
def test_params_that_share_memory_keep_the_books_order(restore_threads):
    # The same array under two keys, a view that overlaps another param, and a grad that is
    # another key's param: the book updates them one key after another, so an update whose
    # params share memory runs them one after the other (each split alone), never as one
    # region. (A race would only show when two threads happen to meet on the same elements.)
    rng = np.random.default_rng(4)
    base = rng.standard_normal(900_000)

    def network():
        shared = base[:300_000].copy()
        tail = base[300_000:].copy()
        params = {"a": shared, "b": shared, "d": tail, "e": tail[100_000:],
                  "f": base[:400_000].copy()}
        grads = {key: np.full(value.shape, 0.5) for key, value in params.items()}
        grads["f"] = params["d"][:400_000]
        return params, grads

    ref_params, ref_grads = network()
    for _ in range(3):
        fastopt.reference.SGD(lr=0.1).update(ref_params, ref_grads)
    for threads in (1, 2):
        fastopt.set_num_threads(threads)
        params, grads = network()
        for _ in range(3):
            fastopt.SGD(lr=0.1).update(params, grads)
        for key in params:
            assert_same_bits(params[key], ref_params[key])


# Adafactor's own driver splits each large param pass by pass: the norms by NORM_BLOCK blocks,
# row_var by rows, col_var by columns, the rest by elements. Params from which every pass is
# shared out and wakes the workers (2**20 elements and more, uneven in every dim; the batch of
# matrices has column chunks that cross from one matrix to the next), tall columns and wide
# rows (split by rows only, by columns only), and a param below every split size.
ADAFACTOR_SHAPES = [(2**20 + 9,), (1030, 1031), (3, 600, 601), (70_001, 5), (5, 70_001),
                    (33, 257)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adafactor_gives_the_references_bits_at_any_thread_count(dtype, restore_threads):
    options = {"lr": 0.1, "weight_decay": 0.05}
    rng = np.random.default_rng(5)
    start = {f"p{i}": rng.standard_normal(shape).astype(dtype)
             for i, shape in enumerate(ADAFACTOR_SHAPES)}
    grads = [{key: rng.standard_normal(value.shape).astype(dtype)
              for key, value in start.items()} for _ in range(3)]
    theirs, expected = fastopt.reference.Adafactor(**options), copy_params(start)
    for step in grads:
        theirs.update(expected, step)
    for threads in (1, 2, 3):
        fastopt.set_num_threads(threads)
        ours, params = fastopt.Adafactor(**options), copy_params(start)
        for step in grads:
            ours.update(params, step)
        for key in params:
            assert_same_bits(params[key], expected[key])
        assert_same_state(ours, theirs)


@needs_threads
@pytest.mark.parametrize("shape", [(2**20 + 9,), (1030, 1031)], ids=["vector", "matrix"])
def test_adafactor_shares_a_large_param_over_the_threads(shape, restore_threads):
    fastopt.set_num_threads(2)
    rng = np.random.default_rng(6)
    params = {"w": rng.standard_normal(shape).astype(np.float32)}
    grads = {"w": rng.standard_normal(shape).astype(np.float32)}
    optimizer = fastopt.Adafactor()
    assert_the_worker_takes_a_chunk(lambda: optimizer.update(params, grads))


@needs_threads
def test_adafactor_keeps_a_small_param_on_the_calling_thread(restore_threads):
    # Below 2**15 elements (the size from which the loops with a square root and a division
    # are split) no pass of the update is shared out: the worker never runs a chunk of it.
    fastopt.set_num_threads(2)
    rng = np.random.default_rng(7)
    params = {"w": rng.standard_normal((127, 257)), "b": rng.standard_normal(2**15 - 1)}
    grads = {key: rng.standard_normal(value.shape) for key, value in params.items()}
    optimizer = fastopt.Adafactor()
    before = active.pool_worker_chunks()
    for _ in range(20):
        optimizer.update(params, grads)
    assert active.pool_worker_chunks() == before
