"""Cost and the kernels' own guards: no allocation, GIL released, memory safe."""
import threading
import time

import numpy as np
import pytest

import fastopt
from fastopt import _kernels

from _helpers import (
    CONFIGS,
    as_param,
    assert_same_bits,
    config_id,
    make_pair,
    matrices_only,
    peak_allocated,
)


@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_update_allocates_no_arrays_after_the_first_call(config):
    # 3M float32 elements: one NumPy temporary would be 12 MB, far over the 64 KiB bound.
    rng = np.random.default_rng(0)
    params = {"W1": rng.standard_normal((1000, 2000), dtype=np.float32),
              "b1": rng.standard_normal(2000, dtype=np.float32),
              "W2": rng.standard_normal((500, 1996), dtype=np.float32)}
    if matrices_only(config):
        # Muon: the same elements as matrices of one row (the bound does not depend on the
        # shape, and a 1000x2000 matrix's Newton-Schulz products take seconds per update;
        # tests/test_muon.py checks square-ish ones)
        params = {key: value.reshape(1, -1) for key, value in params.items()}
    grads = {key: rng.standard_normal(value.shape, dtype=np.float32)
             for key, value in params.items()}
    assert sum(value.size for value in params.values()) == 3_000_000
    optimizer, _ = make_pair(config)
    optimizer.update(params, grads)          # allocates the state
    peak = peak_allocated(lambda: optimizer.update(params, grads), times=3)
    assert peak < 64 * 1024


def test_the_allocation_check_would_see_a_numpy_temporary():
    # The same measurement catches the reference's temporaries: the bound above is not vacuous.
    params = {"w": np.ones(3_000_000, np.float32)}
    grads = {"w": np.ones(3_000_000, np.float32)}
    optimizer = fastopt.reference.Adam()
    optimizer.update(params, grads)
    peak = peak_allocated(lambda: optimizer.update(params, grads))
    assert peak > 12_000_000


@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_two_threads_give_the_same_bits_as_serial(config):
    rng = np.random.default_rng(1)
    starts = [{"w": as_param(config, rng.standard_normal(400_000)),
               "b": as_param(config, rng.standard_normal(1000))} for _ in range(2)]
    grads = [[{key: rng.standard_normal(value.shape) for key, value in start.items()}
              for _ in range(5)] for start in starts]

    def train(params, optimizer, steps):
        for g in steps:
            optimizer.update(params, g)

    serial = [{key: value.copy() for key, value in start.items()} for start in starts]
    serial_optimizers = [make_pair(config)[0] for _ in starts]
    for params, optimizer, steps in zip(serial, serial_optimizers, grads, strict=True):
        train(params, optimizer, steps)
    threaded = [{key: value.copy() for key, value in start.items()} for start in starts]
    threaded_optimizers = [make_pair(config)[0] for _ in starts]
    threads = [threading.Thread(target=train, args=args)
               for args in zip(threaded, threaded_optimizers, grads, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ours, theirs in zip(threaded, serial, strict=True):
        for key in ours:
            assert_same_bits(ours[key], theirs[key])


def test_kernels_release_the_gil():
    # While another thread is inside one long kernel call, this thread keeps running Python.
    # Holding the GIL would freeze it for the whole call. The call must be long next to the
    # pauses a busy 2-core machine gives any thread (a scheduler slice, a GIL handoff: up to
    # about 8 ms seen): 32M float64 elements of Adam take about 40 ms on an AMD EPYC.
    size = 32_000_000
    params = {"w": np.zeros(size)}
    grads = {"w": np.ones(size)}
    optimizer = fastopt.Adam()
    optimizer.update(params, grads)
    started = time.perf_counter()
    optimizer.update(params, grads)
    call = time.perf_counter() - started

    done = threading.Event()
    worker = threading.Thread(target=lambda: (optimizer.update(params, grads), done.set()))
    gaps = []
    last = time.perf_counter()
    worker.start()
    while not done.is_set():
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    worker.join()
    assert len(gaps) > 100
    assert max(gaps) < call / 2, (max(gaps), call)


# --- the kernels guard memory on their own, whatever the Python layer passes -------------------

def test_ready_accepts_only_what_the_loops_can_take():
    a = np.ones(10)
    assert _kernels.ready(a, np.ones(10), np.zeros(10), np.zeros(10))
    assert _kernels.ready(np.ones(10, np.float32), np.ones(10, np.float32))
    assert not _kernels.ready(a, np.ones(10, np.float32))                # mixed dtypes
    assert not _kernels.ready(np.ones(10, np.float16), np.ones(10, np.float16))
    assert not _kernels.ready(np.ones((4, 4)).T, np.ones((4, 4)))       # not C-contiguous
    assert not _kernels.ready(np.ones(10, ">f8"), np.ones(10, ">f8"))   # byte-swapped
    assert not _kernels.ready(a, a)                                      # overlap
    assert not _kernels.ready(a, np.ones(10), a)                         # state is the param
    assert not _kernels.ready(a, np.ones(10), np.zeros(9))               # wrong size
    read_only = np.zeros(10)
    read_only.flags.writeable = False
    assert _kernels.ready(a, read_only)                                  # a grad may be
    assert not _kernels.ready(a, np.ones(10), read_only)                 # a state may not
    assert not _kernels.ready(np.ma.ones(10), np.ones(10))               # a subclass
    unaligned = np.zeros(10 * 8 + 1, np.uint8)[1:].view(np.float64)
    assert not _kernels.ready(unaligned, np.ones(10))


# The kernel entry takes a loop by name, three state slots, which params decay, and the grad
# transform before the rule's scalars by name; these wrappers pass "no decay filter, no
# clipping, no coupled decay" and each loop's scalars in fastopt.reference's order.
def sgd(params, grads, lr):
    return _kernels.run("sgd", params, grads, None, None, None, None, None, 0.0, {"lr": lr})


def momentum(params, grads, v, lr, momentum):
    return _kernels.run("momentum", params, grads, v, None, None, None, None, 0.0,
                        {"lr": lr, "momentum": momentum})


def adagrad(params, grads, h, lr, eps, eps_inside_sqrt):
    return _kernels.run("adagrad", params, grads, h, None, None, None, None, 0.0,
                        {"lr": lr, "eps": eps, "eps_inside_sqrt": eps_inside_sqrt})


def adam_scalars(lr_t, beta1, beta2, eps, eps_inside_sqrt):
    return {"lr_t": lr_t, "beta1": beta1, "beta2": beta2, "eps": eps,
            "eps_inside_sqrt": eps_inside_sqrt}


def adam(params, grads, m, v, *scalars):
    return _kernels.run("adam", params, grads, m, v, None, None, None, 0.0,
                        adam_scalars(*scalars))


def test_kernel_entries_decline_arrays_they_cannot_take_and_touch_nothing():
    p, q = np.ones(10), np.ones(10)
    m = np.zeros(10)
    declined = [
        ([p, q], [np.ones(10), np.ones(9)]),               # the last param's grad is short
        ([p, q], [np.ones(10), np.ones((2, 5))]),          # same size, other shape
        ([p, q], [np.ones(10), np.ones(10, np.float32)]),  # mixed dtypes
        ([p, [1.0] * 10], [np.ones(10), np.ones(10)]),     # not an array
        ([p, np.ones(10, np.float16)], [np.ones(10), np.ones(10, np.float16)]),
        ([p, q], [np.ones(10), q]),                        # grad is the param
    ]
    for params, grads in declined:
        assert sgd(params, grads, 0.1) is False
        assert np.all(p == 1.0) and np.all(q == 1.0)
    assert adam([p], [np.ones(10)], [m], [np.zeros(5)], 0.1, 0.9, 0.999, 1e-7,
                False) is False
    assert adam([p], [np.ones(10)], [m], [m], 0.1, 0.9, 0.999, 1e-7,
                False) is False                  # two states share memory
    assert _kernels.run("adam_amsgrad", [p], [np.ones(10)], [m], [np.zeros(10)], [m], None,
                        None, 0.0, adam_scalars(0.1, 0.9, 0.999, 1e-7, False)
                        ) is False   # v_max is m
    assert np.all(p == 1.0) and np.all(m == 0.0)
    with pytest.raises(ValueError, match="same length"):
        momentum([p], [np.ones(10)], [], 0.1, 0.9)
    with pytest.raises(TypeError):
        sgd((p,), [np.ones(10)], 0.1)
    assert sgd([p, q], [np.ones(10), np.ones(10)], 0.5) is True
    assert np.all(p == 0.5) and np.all(q == 0.5)


def test_many_params_beyond_the_stack_buffer():
    # More params than the kernel plans on its stack: the heap path must give the same bits.
    rng = np.random.default_rng(5)
    params = {f"p{i}": rng.standard_normal(7) for i in range(100)}
    expected = {key: value.copy() for key, value in params.items()}
    grads = {key: rng.standard_normal(7) for key in params}
    fast, ref = fastopt.Adam(), fastopt.reference.Adam()
    for _ in range(3):
        fast.update(params, grads)
        ref.update(expected, grads)
    for key in params:
        assert_same_bits(params[key], expected[key])


@pytest.mark.parametrize("entry, arguments", [
    (momentum, (0.1, 0.9)),
    (adagrad, (0.1, 1e-7, False)),
])
def test_kernel_entries_refuse_none_for_a_state_list(entry, arguments):
    # A None state list would leave the loop without a state buffer: refused before planning.
    p = np.ones(3)
    with pytest.raises(TypeError, match="needs"):
        entry([p], [np.ones(3)], None, *arguments)
    with pytest.raises(TypeError, match="needs 2"):
        adam([p], [np.ones(3)], [np.zeros(3)], None, 0.1, 0.9, 0.999, 1e-7, False)
    with pytest.raises(TypeError, match="needs 2"):
        _kernels.run("adadelta", [p], [np.ones(3)], [np.zeros(3)], None, None, None, None, 0.0,
                     {"lr": 1.0, "rho": 0.9, "eps": 1e-6})
    assert np.all(p == 1.0)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bandwidth_probe_adds_the_source_to_each_target(count, dtype):
    size = 300_001   # split across threads when there are several
    targets = [np.full(size, float(i), dtype) for i in range(count)]
    _kernels.bandwidth_probe(targets, np.full(size, 0.5, dtype))
    for i, target in enumerate(targets):
        assert np.all(target == i + 0.5)
    for wrong in ([], [np.ones(3, dtype) for _ in range(5)]):
        with pytest.raises(ValueError, match="1 to 4"):
            _kernels.bandwidth_probe(wrong, np.ones(3, dtype))
    with pytest.raises(ValueError, match="C-contiguous"):
        _kernels.bandwidth_probe([np.ones(3, dtype)], np.ones(4, dtype))


def test_kernel_entries_take_the_books_dicts():
    params = {"W": np.ones(10), "b": np.ones(3)}
    grads = {"W": np.ones(10), "b": np.ones(3), "unused": None}
    m = {"W": np.zeros(10), "b": np.zeros(3)}
    v = {"W": np.zeros(10), "b": np.zeros(3)}
    declined = [
        ({"W": np.ones(10), "b": np.ones(3)}, {"W": np.ones(10)}, m, v),    # a grad missing
        (params, grads, m, {"W": np.zeros(10)}),                            # a state missing
        ({1: np.ones(10)}, {1: np.ones(10)}, {1: np.zeros(10)}, {1: np.zeros(10)}),  # not str
    ]
    for p, g, m_, v_ in declined:
        before = [value.copy() for value in p.values()]
        assert adam(p, g, m_, v_, 0.1, 0.9, 0.999, 1e-7, False) is False
        assert all(np.array_equal(a, b) for a, b in zip(p.values(), before, strict=True))
    assert np.all(m["W"] == 0)
    assert adam(params, grads, m, v, 0.1, 0.9, 0.999, 1e-7, False) is True
    assert np.all(params["W"] < 1) and np.all(m["b"] != 0)
    with pytest.raises(TypeError, match="must be too"):
        adam(params, list(grads.values()), m, v, 0.1, 0.9, 0.999, 1e-7, False)
    with pytest.raises(TypeError, match="must be a list or a dict"):
        sgd(tuple(params.values()), [np.ones(10), np.ones(3)], 0.1)


def test_dict_params_swapped_during_planning_are_declined():
    # A foreign key in grads whose __eq__ deletes a planned key and adds a new one keeps the
    # dict's size, so dict iteration does not notice; the planner must still never plan more
    # params than it made room for, and must touch nothing.
    params = {"a": np.ones(4), "b": np.ones(4)}
    planned_a = params["a"]

    class Foreign:
        armed = False

        def __hash__(self):
            return hash("b")   # looking up "b" in grads compares against this key

        def __eq__(self, other):
            if Foreign.armed:
                Foreign.armed = False
                del params["a"]
                params["c"] = np.ones(4)
            return False

    grads = {Foreign(): None, "a": np.ones(4), "b": np.ones(4), "c": np.ones(4)}
    Foreign.armed = True
    assert sgd(params, grads, 0.5) is False
    assert not Foreign.armed                       # the swap did happen during planning
    assert list(params) == ["b", "c"]
    assert np.all(planned_a == 1) and all(np.all(v == 1) for v in params.values())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_sits_at_its_params_offset_in_the_cache_line(dtype):
    # The loops peel a head up to the param's first 64-byte boundary; state allocated at the
    # param's address mod 64 then lines up too (bench/investigations/alignment.py: up to 1.8x
    # on Adam).
    def at(offset):   # 4000 bytes of params at ``offset`` mod 64
        buffer = np.zeros(4000 + 128, np.uint8)
        start = (offset - buffer.ctypes.data) % 64
        return buffer[start:start + 4000].view(dtype)
    params = {f"p{offset}": at(offset) for offset in (0, 8, 16, 40, 56)}
    optimizer = fastopt.AdamW(amsgrad=True)
    optimizer.update(params, {key: np.ones_like(value) for key, value in params.items()})
    for name in optimizer.state_names:
        for key, state in getattr(optimizer, name).items():
            assert state.ctypes.data % 64 == params[key].ctypes.data % 64, (name, key)
            assert state.flags.c_contiguous and state.flags.writeable and state.dtype == dtype
            assert not np.shares_memory(state, params[key])
