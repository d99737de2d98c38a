"""The package: compiled kernels or a loud failure, one version number, no stray state."""
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import fastopt
from fastopt import _kernels


def test_the_compiled_kernels_are_what_runs():
    assert Path(_kernels.__file__).suffix in (".so", ".pyd")
    assert fastopt.Adam.update is fastopt.SGD.update    # every class shares the one dispatch
    assert _kernels.compiled_simd()


def test_import_without_the_compiled_kernels_fails_loudly(tmp_path):
    # The classic trap: the source folder (no compiled module) shadowing the installed package.
    source = Path(fastopt.__file__).parent
    copy = tmp_path / "fastopt"
    copy.mkdir()
    for module in source.glob("*.py"):
        shutil.copy(module, copy / module.name)
    completed = subprocess.run([sys.executable, "-c", "import fastopt"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode != 0
    assert "ImportError: fastopt's compiled kernels (fastopt._kernels) could not be imported" \
        in completed.stderr
    assert "pip install ." in completed.stderr


def test_one_version_number():
    assert fastopt.__version__ == importlib.metadata.version("fastopt")
