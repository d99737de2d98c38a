"""Introspection (fastopt.show_config, python -m fastopt info), fastopt's pool under
threadpoolctl, and thread counts from the environment."""
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import fastopt
from fastopt import _config, _settings, _simd

from _helpers import run_python

needs_threads = pytest.mark.skipif(not _simd.kernels.threads_supported(),
                                   reason="built without threads")
needs_mpi4py = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None,
                                  reason="needs mpi4py")
x86_64 = platform.machine().lower() in ("x86_64", "amd64")

try:
    import threadpoolctl
except ImportError:   # pragma: no cover - threadpoolctl is optional
    threadpoolctl = None
needs_threadpoolctl = pytest.mark.skipif(
    threadpoolctl is None or not hasattr(threadpoolctl, "register"),
    reason="needs threadpoolctl >= 3.5")

DEFAULT_THREADS = min(_settings.available_cpus(), _settings.DEFAULT_MAX_THREADS)


@pytest.fixture
def restore_threads():
    count = fastopt.get_num_threads()
    yield
    fastopt.set_num_threads(count)


def run_module(*args, **environment):
    """``python -m fastopt *args`` in a fresh process, settings only from ``environment``."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("FASTOPT_SIMD", "FASTOPT_SQRT", "FASTOPT_NUM_THREADS",
                          "OMP_NUM_THREADS")}
    env.update(environment)
    return subprocess.run([sys.executable, "-m", "fastopt", *args], capture_output=True,
                          text=True, env=env, cwd=tempfile.gettempdir(), timeout=120)


def config_in_fresh_process(before="", **environment):
    """show_config("dicts") of a fresh process, after running ``before`` there."""
    code = (f"{before}\nimport json, fastopt\n"
            "print(json.dumps(fastopt.show_config('dicts')))")
    completed = run_python(code, timeout=120, **environment)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# show_config

def test_show_config_reports_the_running_build():
    config = fastopt.show_config("dicts")
    assert config["fastopt"] == {"version": fastopt.__version__,
                                 "path": os.path.dirname(os.path.abspath(fastopt.__file__))}
    assert config["numpy"] == {"version": np.__version__}
    assert config["python"]["version"] == platform.python_version()
    simd = config["simd"]
    assert simd["level"] == fastopt.simd_level()
    assert simd["available"] == list(fastopt.simd_levels())
    assert simd["module"] == _simd.kernels.__file__
    assert config["sqrt_method"] == fastopt.sqrt_method()
    assert config["flush_denormals"] is fastopt.get_flush_denormals()
    assert config["slow_path_warning"] is fastopt.get_slow_path_warning()
    assert set(config) == {"fastopt", "python", "numpy", "simd", "sqrt_method", "threads",
                           "flush_denormals", "slow_path_warning", "mpi", "thread_pools"}
    json.dumps(config)   # plain data


# The CPU features each of fastopt's levels is compiled for, by NumPy's names for them.
LEVEL_FEATURES = {"baseline": ["SSE2"], "avx2": ["AVX2", "FMA3"],
                  "avx512": ["AVX512F", "AVX512CD", "AVX512BW", "AVX512DQ", "AVX512VL"]}


@pytest.mark.skipif(not x86_64, reason="NumPy's x86 names")
@pytest.mark.parametrize("level", _simd.LEVELS)
def test_the_simd_level_has_numpys_name(level):
    from numpy._core._multiarray_umath import __cpu_features__ as numpy_features

    name = _config.NUMPY_SIMD_NAMES[level]
    if not any(feature.startswith("X86_V") for feature in numpy_features):
        pytest.skip(f"NumPy {np.__version__} names no x86-64 levels (X86_V2, X86_V3, ...) among "
                    f"its CPU features: newer NumPy versions do")
    assert name in numpy_features, f"NumPy has no CPU feature (group) named {name}"
    if level in fastopt.simd_levels():
        # NumPy sees on this CPU what the level needs, and its name for the group.
        assert all(numpy_features[feature] for feature in LEVEL_FEATURES[level])
        if level == "avx512":
            assert numpy_features["X86_V4"]
        config = config_in_fresh_process(FASTOPT_SIMD=level)
        assert config["simd"]["level"] == level
        assert config["simd"]["numpy_name"] == name
        assert os.path.basename(config["simd"]["module"]).startswith(
            "_kernels" if level == "baseline" else f"_kernels_{level}")
    else:
        assert not all(numpy_features[feature] for feature in LEVEL_FEATURES[level])


def test_x86_v4_is_exactly_the_avx512_builds_instruction_set():
    # numpy's own group (numpy/_core/tests/test_cpu_features.py) beyond X86_V3.
    numpy_x86_v4_beyond_v3 = ["AVX512F", "AVX512CD", "AVX512BW", "AVX512DQ", "AVX512VL"]
    assert LEVEL_FEATURES["avx512"] == numpy_x86_v4_beyond_v3
    assert _config.NUMPY_SIMD_NAMES == {"baseline": "SSE2", "avx2": "X86_V3",
                                        "avx512": "X86_V4"}


def test_show_config_reports_the_square_root_method_chosen():
    assert config_in_fresh_process(FASTOPT_SQRT="hardware")["sqrt_method"] == "hardware"


def test_show_config_follows_the_thread_and_flush_settings(restore_threads):
    fastopt.set_num_threads(3)
    threads = fastopt.show_config("dicts")["threads"]
    assert threads["num_threads"] == fastopt.get_num_threads()
    assert threads["num_threads"] == (3 if _simd.kernels.threads_supported() else 1)
    assert threads["max_threads"] == 256
    assert threads["available_cpus"] == _settings.available_cpus()
    assert threads["supported"] is bool(_simd.kernels.threads_supported())
    assert threads["at_import"] == _settings.threads_origin
    saved = fastopt.get_flush_denormals()
    try:
        for enabled in (True, False):
            fastopt.set_flush_denormals(enabled)
            assert fastopt.show_config("dicts")["flush_denormals"] is enabled
    finally:
        fastopt.set_flush_denormals(saved)


DEFAULT_ORIGIN = "the default (the CPUs this process may run on, at most 8)"


@needs_threads
@pytest.mark.parametrize("environment, count, origin", [
    ({"FASTOPT_NUM_THREADS": "3"}, 3, "FASTOPT_NUM_THREADS='3'"),
    ({"OMP_NUM_THREADS": "2,1"}, 2, "OMP_NUM_THREADS='2,1'"),
    ({}, DEFAULT_THREADS, DEFAULT_ORIGIN),
    ({"OMP_NUM_THREADS": "auto"}, DEFAULT_THREADS,
     DEFAULT_ORIGIN + "; OMP_NUM_THREADS='auto' ignored: not a whole number >= 1"),
])
def test_show_config_says_where_the_thread_count_came_from(environment, count, origin):
    threads = config_in_fresh_process(**environment)["threads"]
    assert (threads["num_threads"], threads["at_import"]) == (count, origin)


def test_show_config_prints_like_numpy(capsys):
    assert fastopt.show_config() is None
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert f"  version: {fastopt.__version__}" in lines
    assert f"  level: {fastopt.simd_level()}" in lines
    if x86_64:
        assert f"  numpy_name: {_config.NUMPY_SIMD_NAMES[fastopt.simd_level()]}" in lines
    assert f"sqrt_method: {fastopt.sqrt_method()}" in lines
    assert f"  num_threads: {fastopt.get_num_threads()}" in lines
    assert f"flush_denormals: {'yes' if fastopt.get_flush_denormals() else 'no'}" in lines
    assert out == _config.format_config(fastopt.show_config("dicts")) + "\n"


def test_show_config_refuses_an_unknown_mode(capsys):
    with pytest.raises(ValueError, match=r"mode must be 'stdout' or 'dicts'; got 'dict'"):
        fastopt.show_config("dict")
    assert capsys.readouterr().out == ""


def test_without_mpi4py_and_threadpoolctl_those_fields_are_none():
    config = config_in_fresh_process(
        "import sys; sys.modules['mpi4py'] = None; sys.modules['threadpoolctl'] = None")
    assert config["mpi"] is None
    assert config["thread_pools"] is None


@needs_mpi4py
def test_show_config_does_not_start_mpi():
    # A program that has not imported mpi4py.MPI: show_config must not import it (which would
    # start MPI), so it names mpi4py only.
    code = ("import sys, json, fastopt\n"
            "config = fastopt.show_config('dicts')\n"
            "print(json.dumps(config['mpi']))\n"
            "print('mpi4py.MPI' in sys.modules)")
    completed = run_python(code, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    mpi, imported = completed.stdout.splitlines()[-2:]
    import mpi4py
    assert json.loads(mpi) == {"mpi4py": mpi4py.__version__, "loaded": False, "library": None,
                               "standard": None, "initialized": False}
    assert imported == "False"


LIBRARY = r"""
import mpi4py
mpi4py.rc.initialize = False
from mpi4py import MPI
print(" ".join(MPI.Get_library_version().strip().splitlines()[0].split()))
print("{}.{}".format(*MPI.Get_version()))
"""


@needs_mpi4py
def test_show_config_names_the_mpi_library_of_a_program_using_mpi():
    completed = run_python(LIBRARY, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    library, standard = completed.stdout.splitlines()[-2:]
    assert library
    mpi = config_in_fresh_process("from mpi4py import MPI")["mpi"]
    assert mpi["loaded"] is True and mpi["initialized"] is True
    assert (mpi["library"], mpi["standard"]) == (library, standard)
    # `python -m fastopt info` names it too, without starting MPI.
    completed = run_module("info", "--json")
    assert completed.returncode == 0, completed.stderr[-3000:]
    mpi = json.loads(completed.stdout)["mpi"]
    assert (mpi["library"], mpi["standard"]) == (library, standard)
    assert mpi["loaded"] is True and mpi["initialized"] is False


@needs_threadpoolctl
def test_show_config_lists_the_blas_pools_threadpoolctl_finds():
    pools = fastopt.show_config("dicts")["thread_pools"]
    theirs = [info for info in threadpoolctl.threadpool_info() if info["user_api"] != "fastopt"]
    assert pools == [{key: info.get(key) for key in ("user_api", "internal_api", "num_threads",
                                                     "version", "filepath")}
                     for info in theirs]
    assert any(pool["user_api"] == "blas" for pool in pools)   # NumPy's BLAS is loaded


# ---------------------------------------------------------------------------------------------
# python -m fastopt info

def test_python_m_fastopt_info():
    completed = run_module("info", FASTOPT_NUM_THREADS="1")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stderr == ""
    lines = completed.stdout.splitlines()
    assert lines[:2] == ["fastopt:", f"  version: {fastopt.__version__}"]
    assert f"  level: {fastopt.simd_level()}" in lines
    assert "  num_threads: 1" in lines
    assert "  at_import: FASTOPT_NUM_THREADS='1'" in lines
    assert f"sqrt_method: {fastopt.sqrt_method()}" in lines


def test_python_m_fastopt_info_json():
    completed = run_module("info", "--json")
    assert completed.returncode == 0, completed.stderr[-3000:]
    config = json.loads(completed.stdout)
    ours = fastopt.show_config("dicts")
    assert set(config) == set(ours)
    for key in ("fastopt", "numpy", "python", "simd"):
        assert config[key] == ours[key], key
    assert config["threads"]["num_threads"] == DEFAULT_THREADS


def test_python_m_fastopt_needs_a_command():
    completed = run_module()
    assert completed.returncode == 2
    assert "info" in completed.stderr and "required" in completed.stderr
    completed = run_module("--help")
    assert completed.returncode == 0 and "info" in completed.stdout


# ---------------------------------------------------------------------------------------------
# threadpoolctl

def fastopt_pools(info):
    return [pool for pool in info if pool["user_api"] == "fastopt"]


@needs_threadpoolctl
def test_threadpool_info_lists_fastopts_pool(restore_threads):
    fastopt.set_num_threads(2)
    pools = fastopt_pools(threadpoolctl.threadpool_info())
    assert len(pools) == 1, pools   # the running module only, not the baseline beside it
    pool = pools[0]
    assert pool["internal_api"] == "fastopt"
    assert pool["num_threads"] == fastopt.get_num_threads()
    assert pool["version"] == fastopt.__version__
    assert pool["simd_level"] == fastopt.simd_level()
    assert os.path.samefile(pool["filepath"], _simd.kernels.__file__)


@needs_threadpoolctl
@pytest.mark.parametrize("user_api", [None, "fastopt"])
def test_threadpool_limits_limits_fastopt_and_restores_it(restore_threads, user_api):
    fastopt.set_num_threads(3)
    before = fastopt.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=1, user_api=user_api):
        assert fastopt.get_num_threads() == 1
        assert fastopt_pools(threadpoolctl.threadpool_info())[0]["num_threads"] == 1
    assert fastopt.get_num_threads() == before


@needs_threadpoolctl
def test_threadpool_limits_of_other_apis_leave_fastopt_alone(restore_threads):
    fastopt.set_num_threads(2)
    before = fastopt.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        assert fastopt.get_num_threads() == before
    with threadpoolctl.ThreadpoolController().select(internal_api="fastopt").limit(limits=1):
        assert fastopt.get_num_threads() == 1
    assert fastopt.get_num_threads() == before


@needs_threadpoolctl
@needs_threads
def test_a_limit_above_fastopts_most_is_capped(restore_threads):
    fastopt.set_num_threads(2)
    with threadpoolctl.threadpool_limits(limits=100_000):
        assert fastopt.get_num_threads() == 256
    assert fastopt.get_num_threads() == 2


LIMITED_UPDATE = r"""
import numpy as np
import threadpoolctl
import fastopt
from fastopt import _simd, reference

grads = {"w": np.linspace(-1, 1, 2**20)}
ours, theirs = {"w": np.ones(2**20)}, {"w": np.ones(2**20)}
with threadpoolctl.threadpool_limits(1):
    print(fastopt.get_num_threads())
    fastopt.Adam().update(ours, grads)
    print(_simd.kernels.pool_workers())   # a worker would have started for a second thread
print(fastopt.get_num_threads())
reference.Adam().update(theirs, grads)
print(ours["w"].tobytes() == theirs["w"].tobytes())
"""


@needs_threadpoolctl
@needs_threads
def test_an_update_inside_threadpool_limits_1_runs_on_one_thread():
    completed = run_python(LIMITED_UPDATE, timeout=120, FASTOPT_NUM_THREADS="2")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.split() == ["1", "0", "2", "True"]


OTHER_KERNELS = r"""
import ctypes, os, shutil, sys, tempfile
import threadpoolctl
import fastopt
from fastopt import _kernels, _simd

# Another package's modules named like fastopt's, loaded into the process: not fastopt's pool.
folder = tempfile.mkdtemp()
for module in {_kernels, _simd.kernels}:
    copy = os.path.join(folder, os.path.basename(module.__file__))
    shutil.copy(module.__file__, copy)
    ctypes.CDLL(copy)
pools = [pool for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "fastopt"]
print(len(pools), os.path.samefile(pools[0]["filepath"], _simd.kernels.__file__))
shutil.rmtree(folder)
"""


@needs_threadpoolctl
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="loads a copied module")
def test_only_fastopts_running_module_is_its_pool():
    completed = run_python(OTHER_KERNELS, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.split() == ["1", "True"]


@needs_threadpoolctl
def test_fastopt_registers_once():
    assert _config.register_with_threadpoolctl() is True
    assert len(fastopt_pools(threadpoolctl.threadpool_info())) == 1


def test_fastopt_imports_without_threadpoolctl():
    completed = run_python("import sys; sys.modules['threadpoolctl'] = None\n"
                           "import fastopt; print(fastopt.get_num_threads())", timeout=60,
                           FASTOPT_NUM_THREADS="1")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.split() == ["1"]


# ---------------------------------------------------------------------------------------------
# Thread counts from the environment

@needs_threads
@pytest.mark.parametrize("value", ["0", "auto", "1.5", "-1", "4:2"])
def test_any_omp_num_threads_value_is_accepted_at_import(value):
    # OMP_NUM_THREADS belongs to OpenMP and the BLAS as well, whose imports never fail on these
    # (GNU's OpenMP ignores them): fastopt ignores them too, quietly, and takes its default.
    code = ("import warnings; warnings.simplefilter('error')\n"
            "import fastopt; print(fastopt.get_num_threads())")
    completed = run_python(code, timeout=60, OMP_NUM_THREADS=value)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stderr == ""
    assert completed.stdout.split() == [str(DEFAULT_THREADS)]


@pytest.mark.parametrize("value", ["0", "auto", "1.5", "-1", "4:2", "-", "+2", " , ", "2 3",
                                   "\u0663", "true", "0x4", "1e2", ",4"])
def test_omp_num_threads_that_is_not_a_count_is_ignored(value):
    count, origin = _settings.threads_from_environment({"OMP_NUM_THREADS": value})
    assert count == DEFAULT_THREADS
    assert f"OMP_NUM_THREADS={value.strip()!r} ignored" in origin


@pytest.mark.parametrize("value, expected", [("3", 3), (" 2 ", 2), ("4,2", 4), ("5, 1", 5),
                                             ("007", 7), ("256", 256), ("257", 256),
                                             ("99999999999999999999", 256)])
def test_omp_num_threads_counts(value, expected):
    assert _settings.threads_from_environment({"OMP_NUM_THREADS": value}) == (
        expected, f"OMP_NUM_THREADS={value.strip()!r}")


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_variable_is_unset(value):
    assert _settings.threads_from_environment(
        {"FASTOPT_NUM_THREADS": value, "OMP_NUM_THREADS": value}) == (
        DEFAULT_THREADS, DEFAULT_ORIGIN)


@pytest.mark.parametrize("value", ["0", "auto", "1.5", "-1", "4:2", "4,2", "many", "\u0663"])
def test_fastopt_num_threads_that_is_not_a_count_is_an_error(value):
    # fastopt's own variable: a mistake in it is reported, not ignored.
    with pytest.raises(ValueError, match=r"FASTOPT_NUM_THREADS=.*: expected a whole number of "
                                         r"threads >= 1 and <= 256"):
        _settings.threads_from_environment({"FASTOPT_NUM_THREADS": value,
                                            "OMP_NUM_THREADS": "2"})


def test_fastopt_num_threads_comes_first():
    assert _settings.threads_from_environment(
        {"FASTOPT_NUM_THREADS": "3", "OMP_NUM_THREADS": "auto"}) == (3, "FASTOPT_NUM_THREADS='3'")
    with pytest.raises(ValueError, match="at most 256"):
        _settings.threads_from_environment({"FASTOPT_NUM_THREADS": "257"})
