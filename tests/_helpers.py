"""Shared helpers: the optimizer configurations and parameter shapes the tests sweep."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import tracemalloc

import numpy as np

import fastopt
from fastopt import reference

import registry

# (class name, keyword options), and the learning rate the tests use, read off tests/registry.py:
# the book's six and every variant option (BOOK_CONFIGS), then the option sets beyond the book
# and the optimizers beyond the book.
BOOK_CONFIGS = registry.BOOK_CONFIGS
CONFIGS = registry.CONFIGS
LEARNING_RATES = registry.LEARNING_RATES

SHAPES = {
    "0-d": [()],
    "empty": [(0,), (3, 0)],
    "one": [(1,)],
    "odd": [(7,), (3, 5, 11), (1023,)],
    # The book's TwoLayerNet (784-50-10) and optimizer-comparison net (784-100x4-10).
    "two_layer_net": [(784, 50), (50,), (50, 10), (10,)],
    "five_layer_net": [(784, 100), (100,), (100, 100), (100,), (100, 100), (100,),
                       (100, 100), (100,), (100, 10), (10,)],
}


def param_shape(config, shape):
    """The shape a test gives a param of ``shape`` for the optimizer of ``config`` (a
    ``(name, options)`` pair or a name): ``shape`` itself, or for a rule of 2-D params only
    (Muon) a matrix of as many elements (tests/registry.py's ``param_shape``)."""
    name = config if isinstance(config, str) else config[0]
    entry = registry.BY_NAME.get(name)
    return tuple(shape) if entry is None else entry.param_shape(tuple(shape))


def param_shapes(config, shapes):
    """``param_shape`` of each of ``shapes``."""
    return [param_shape(config, shape) for shape in shapes]


def as_param(config, array):
    """``array`` (a view of it where it can be) in ``param_shape`` for ``config``."""
    return array.reshape(param_shape(config, array.shape))


def takes_scalars(config):
    """Whether the optimizer of ``config`` takes scalar params (a rule of 2-D params only,
    Muon, refuses them: tests/test_muon.py)."""
    name = config if isinstance(config, str) else config[0]
    entry = registry.BY_NAME.get(name)
    return entry is None or entry.takes(())


def matrices_only(config):
    """Whether the optimizer of ``config`` takes 2-D params only (Muon)."""
    name = config if isinstance(config, str) else config[0]
    entry = registry.BY_NAME.get(name)
    return entry is not None and entry.param_ndim == 2


def config_id(config):
    name, options = config
    return name + "".join(f"-{k}={v}" for k, v in options.items())


def make_pair(config, **extra):
    """The same optimizer from fastopt and from fastopt.reference."""
    name, options = config
    options = {"lr": LEARNING_RATES[name], **options, **extra}
    return getattr(fastopt, name)(**options), getattr(reference, name)(**options)


def random_params(shapes, dtype, rng, keys=None):
    keys = keys or [f"W{i}" for i in range(len(shapes))]
    return {key: rng.standard_normal(shape).astype(dtype)
            for key, shape in zip(keys, shapes, strict=True)}


def copy_params(params):
    return {key: value.copy() for key, value in params.items()}


def peak_allocated(call, times=1):
    """The most bytes Python's allocators (NumPy's arrays included) held at once above what
    they held before, over ``times`` calls of ``call()``, as tracemalloc sees it."""
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for _ in range(times):
            call()
        return tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()


def assert_same_bits(actual, expected):
    """Equal dtype, shape and bytes: stricter than array_equal (sees -0.0 and NaN payloads)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    if actual.tobytes() != expected.tobytes():
        width = actual.dtype.itemsize
        rows_a = np.frombuffer(actual.tobytes(), np.uint8).reshape(actual.size, width)
        rows_b = np.frombuffer(expected.tobytes(), np.uint8).reshape(expected.size, width)
        diff = np.flatnonzero((rows_a != rows_b).any(axis=1))
        raise AssertionError(f"{diff.size} of {actual.size} elements differ, first at flat "
                             f"index {diff[0]}: {actual.ravel()[diff[0]]!r} != "
                             f"{expected.ravel()[diff[0]]!r}")


def assert_same_values(actual, expected):
    """What fastopt promises where NaN and inf meet (README, "Numbers"): a NaN exactly where
    ``expected`` has one, and every other element bit for bit (±inf, ±0, subnormals). A NaN's
    sign and payload are not compared: where two NaNs meet, which one an addition returns
    depends on the order the compiler or NumPy's own loops (which differ between NumPy
    releases) put the operands in."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    nan_actual, nan_expected = np.isnan(actual), np.isnan(expected)
    if not np.array_equal(nan_actual, nan_expected):
        index = int(np.flatnonzero((nan_actual != nan_expected).ravel())[0])
        raise AssertionError(f"NaN in one and not the other at flat index {index}: "
                             f"{actual.ravel()[index]!r} != {expected.ravel()[index]!r}")
    assert_same_bits(np.where(nan_actual, 0, actual).astype(actual.dtype),
                     np.where(nan_expected, 0, expected).astype(expected.dtype))


def assert_same_state(fast, ref, same=assert_same_bits):
    for name in ref.state_names:
        a, b = getattr(fast, name), getattr(ref, name)
        assert (a is None) == (b is None)
        if a is None:
            continue
        keys = a.keys() if isinstance(a, dict) else range(len(a))
        assert list(keys) == list(b.keys() if isinstance(b, dict) else range(len(b)))
        for key in keys:
            same(a[key], b[key])
    assert getattr(fast, "iter", None) == getattr(ref, "iter", None)


# Odd lengths leave remainders after every vector width; 2**15 + 5 and 2**18 + 9 elements are
# split across threads (fastopt/_kernels.pyx); "special" and "tiny" are filled below.
LEVEL_SHAPES = {"special": (1023,), "tiny": (257,), "odd": (31, 33), "one": (1,),
                "net": (784, 50), "split_dividing": (2**15 + 5,),
                "split_streaming": (2**18 + 9,)}


def _grads_with_edge_cases(params, dtype, rng):
    grads = {key: rng.standard_normal(value.shape).astype(dtype)
             for key, value in params.items()}
    info = np.finfo(dtype)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, info.smallest_subnormal,
                        -info.smallest_subnormal, info.smallest_normal, info.max, -info.max,
                        info.eps, 1.0], dtype)
    grads["special"].ravel()[5:5 + special.size * 40:40] = special
    # Gradients whose squares underflow: AdaGrad's, RMSprop's and Adam's state goes subnormal.
    grads["tiny"] *= np.sqrt(info.smallest_normal) * dtype(0.25)
    return grads


def level_trajectory(module, config, dtype, steps=6):
    """``steps`` updates of ``module``'s optimizer (fastopt or fastopt.reference) over
    LEVEL_SHAPES with NaN, infinities, zeros, subnormals and extremes in the grads; returns
    every final param and state array by name, and Adam's step count."""
    rng = np.random.default_rng(7)
    name, options = config
    optimizer = getattr(module, name)(lr=LEARNING_RATES[name], **options)
    params = random_params(param_shapes(config, LEVEL_SHAPES.values()), dtype, rng,
                           keys=list(LEVEL_SHAPES))
    with np.errstate(all="ignore"):
        for _ in range(steps):
            optimizer.update(params, _grads_with_edge_cases(params, dtype, rng))
    arrays = {f"param {key}": value for key, value in params.items()}
    for state in optimizer.state_names:
        arrays.update({f"{state} {key}": value
                       for key, value in getattr(optimizer, state).items()})
    return arrays, getattr(optimizer, "iter", None)


def run_python(code, *args, timeout=600, **environment):
    """Run ``python -c code *args`` in a fresh process whose fastopt settings come only from
    ``environment`` (FASTOPT_SIMD, FASTOPT_SQRT, FASTOPT_NUM_THREADS, OMP_NUM_THREADS are
    cleared first)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("FASTOPT_SIMD", "FASTOPT_SQRT", "FASTOPT_NUM_THREADS",
                          "OMP_NUM_THREADS")}
    env.update(environment)
    # From a neutral directory: `python -c` puts the working directory on sys.path, and at the
    # repository root that is the uncompiled source folder.
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, cwd=tempfile.gettempdir(), timeout=timeout)


# --- peers loaded without their package's init ------------------------------------------------

def _bench_common():
    """bench/_common.py, loaded from its file as tests/test_sqrt.py loads bench/verify_sqrt.py
    (bench/ is beside tests/ in the repository and wherever the tests run from a wheel)."""
    name = "fastopt_bench_common"
    if name not in sys.modules:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "bench", "_common.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module          # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


#: timm's optimizer module ``timm/optim/<name>.py`` loaded without timm's init, or None without
#: timm or torch: bench/_common.py's loader, which the benchmark's peers use too.
timm_optim = _bench_common().timm_optim
