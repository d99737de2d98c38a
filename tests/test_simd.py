"""Run-time SIMD dispatch (fastopt/_simd.py): every level the machine runs gives the book's
bits at any thread count, the widest one is chosen, and the baseline module is x86-64 baseline
code, which is what a CPU without AVX2 imports."""
import importlib
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt import _kernels, _simd

from _helpers import CONFIGS, assert_same_values, config_id, run_python

LEVELS = ("baseline", "avx2", "avx512")
DTYPES = ("float64", "float32")
ON_X86_64_LINUX = sys.platform.startswith("linux") and platform.machine() == "x86_64"

# One process per forced level: it imports fastopt with FASTOPT_SIMD set, runs every optimizer
# configuration, and saves each final param and state array; the reference's arrays come from
# a process of the same kind (Muon's matrix products are NumPy's BLAS on both sides, whose
# bits may depend on its thread count, which a test in this process may have changed).
WORKER = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import fastopt
from fastopt import _simd, reference
from _helpers import CONFIGS, level_trajectory
module = reference if sys.argv[3] == "reference" else fastopt
arrays = {}
for index, config in enumerate(CONFIGS):
    for dtype in sys.argv[4:]:
        final, steps = level_trajectory(module, config, np.dtype(dtype).type)
        arrays.update({f"{index} {dtype} {name}": value for name, value in final.items()})
        arrays[f"{index} {dtype} iter"] = np.array(-1 if steps is None else steps)
np.savez(sys.argv[2], **arrays)
print(fastopt.simd_level(), _simd.kernels.compiled_simd(), fastopt.get_num_threads(),
      fastopt.sqrt_method(), sep="|")
"""


@pytest.fixture(scope="module")
def reference_results(tmp_path_factory):
    output = tmp_path_factory.mktemp("reference") / "arrays.npz"
    completed = run_python(WORKER, str(Path(__file__).parent), str(output), "reference",
                           *DTYPES)
    assert completed.returncode == 0, completed.stderr
    results = {}
    with np.load(output) as arrays:
        for index in range(len(CONFIGS)):
            for dtype in DTYPES:
                names = [name.split(" ", 2)[2] for name in arrays.files
                         if name.startswith(f"{index} {dtype} ") and not name.endswith(" iter")]
                assert any(name.startswith("param ") for name in names)
                steps = int(arrays[f"{index} {dtype} iter"])
                results[index, dtype] = ({name: arrays[f"{index} {dtype} {name}"]
                                          for name in names}, None if steps == -1 else steps)
    return results


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize(("level", "sqrt"), [("baseline", "hardware"), ("avx2", "hardware"),
                                             ("avx512", "hardware"), ("avx512", "software")])
def test_every_level_gives_the_references_bits(level, sqrt, threads, reference_results,
                                               tmp_path):
    if level not in fastopt.simd_levels():
        pytest.skip(f"this machine or build does not run {level}")
    output = tmp_path / "arrays.npz"
    completed = run_python(WORKER, str(Path(__file__).parent), str(output), "fastopt", *DTYPES,
                           FASTOPT_SIMD=level, FASTOPT_NUM_THREADS=threads, FASTOPT_SQRT=sqrt)
    assert completed.returncode == 0, completed.stderr
    chosen, compiled, thread_count, method = completed.stdout.strip().split("|")
    assert chosen == level
    assert method == sqrt
    assert compiled == {"baseline": "SSE2 (x86-64 baseline)", "avx2": "AVX2",
                        "avx512": "AVX-512F"}[level]
    assert thread_count == (threads if _kernels.threads_supported() else "1")
    with np.load(output) as arrays:
        for (index, dtype), (expected, steps) in reference_results.items():
            where = f"{config_id(CONFIGS[index])} {dtype}"
            assert int(arrays[f"{index} {dtype} iter"]) == (-1 if steps is None else steps)
            for name, value in expected.items():
                try:
                    # bit for bit, but for a NaN's sign where two NaNs meet (the README's
                    # contract; its "special" param holds NaN and inf)
                    assert_same_values(arrays[f"{index} {dtype} {name}"], value)
                except AssertionError as error:
                    raise AssertionError(f"{level}, {sqrt} sqrt, {threads} threads, {where}, "
                                         f"{name}: {error}") from None


def test_the_widest_level_the_cpu_runs_is_chosen():
    forced = os.environ.get("FASTOPT_SIMD")
    expected = forced.strip().lower() if forced else fastopt.simd_levels()[-1]
    assert fastopt.simd_level() == expected
    assert _simd.kernels.__name__ == _simd._module_name(expected)
    # Every update goes through the chosen module.
    assert fastopt._base._run_loop is _simd.kernels.run


@pytest.mark.skipif(not ON_X86_64_LINUX, reason="the wide levels are checked on x86-64 Linux")
def test_an_x86_64_build_has_every_level_and_asks_the_cpu():
    # A compiler that silently failed the probe in setup.py would leave only the baseline.
    assert _simd._built_levels == LEVELS
    with open("/proc/cpuinfo") as cpuinfo:
        flags = set(next(line for line in cpuinfo if line.startswith("flags")).split())
    widest = "baseline"
    if {"avx2", "fma"} <= flags:
        widest = "avx2"
        if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags:
            widest = "avx512"
    assert _kernels.cpu_simd_level() == widest
    assert fastopt.simd_levels() == LEVELS[:LEVELS.index(widest) + 1]


def test_choose_on_machines_other_than_this_one():
    choose = _simd.choose
    # A CPU without AVX2 runs the baseline module whatever was built.
    assert choose(LEVELS, "baseline", None) == "baseline"
    assert choose(LEVELS, "avx2", None) == "avx2"
    assert choose(LEVELS, "avx512", None) == "avx512"
    # Builds without dispatch (arm64, MSVC) have only the baseline.
    assert choose(("baseline",), "baseline", None) == "baseline"
    assert choose(("baseline", "avx2"), "avx512", None) == "avx2"
    assert choose(LEVELS, "avx512", " AVX2 ") == "avx2"
    with pytest.raises(ValueError, match="needs instructions this CPU lacks"):
        choose(LEVELS, "baseline", "avx2")
    with pytest.raises(ValueError, match="was not built"):
        choose(("baseline",), "avx512", "avx512")
    with pytest.raises(ValueError, match="expected one of baseline, avx2, avx512"):
        choose(LEVELS, "avx512", "sse4")


def test_a_bad_simd_variable_fails_loudly():
    completed = run_python("import fastopt", FASTOPT_SIMD="avx1024")
    assert completed.returncode != 0
    assert "FASTOPT_SIMD='avx1024': expected one of baseline, avx2, avx512" in completed.stderr


def vector_registers(path):
    """The SIMD register names and the VEX/EVEX-only mnemonics in a module's machine code."""
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)],
                             capture_output=True, text=True, check=True, timeout=120).stdout
    registers = set(re.findall(r"%([xyz]mm)\d+", listing))
    vex = {line.split("\t")[1].split()[0] for line in listing.splitlines()
           if line.count("\t") >= 1 and re.match(r"\s*[0-9a-f]+:\t+v", line)}
    return registers, vex


@pytest.mark.skipif(not ON_X86_64_LINUX or shutil.which("objdump") is None,
                    reason="reads x86-64 ELF machine code with objdump")
def test_the_baseline_module_is_baseline_code():
    # A CPU without AVX2 imports fastopt._kernels and nothing else; it must not hold a single
    # AVX instruction (each is VEX-encoded, mnemonic v...). The wider modules must really be
    # wider, or dispatch would buy nothing.
    registers, vex = vector_registers(_kernels.__file__)
    assert registers == {"xmm"}
    assert not vex, f"AVX instructions in the baseline module: {sorted(vex)[:10]}"
    avx2, avx512 = (importlib.util.find_spec(_simd._module_name(level)).origin
                    for level in ("avx2", "avx512"))
    registers, vex = vector_registers(avx2)
    assert "ymm" in registers and "zmm" not in registers and vex
    registers, _ = vector_registers(avx512)
    assert "zmm" in registers


def test_every_level_has_the_baseline_interface():
    # stubtest checks fastopt._kernels against _kernels.pyi; the other levels are the same
    # source, and must stay so.
    def interface(module):
        return {name: getattr(module, name).__doc__ for name in dir(module)
                if not name.startswith("_") and callable(getattr(module, name))}
    for level in fastopt.simd_levels():
        module = importlib.import_module(_simd._module_name(level))
        assert interface(module) == interface(_kernels), level
        assert module.cpu_simd_level() == ("baseline" if level != "baseline"
                                           else _kernels.cpu_simd_level())
