"""The package: compiled kernels or a loud failure, one version number, no stray state."""
import importlib.machinery
import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastopt
from fastopt import _kernels


def test_the_compiled_kernels_are_what_runs():
    assert Path(_kernels.__file__).suffix in (".so", ".pyd")
    assert fastopt.Adam.update is fastopt.SGD.update    # every class shares the one dispatch
    assert _kernels.compiled_simd()


def _source_copy(tmp_path):
    """A copy of the package's Python files, without any compiled module."""
    source = Path(fastopt.__file__).parent
    copy = tmp_path / "fastopt"
    copy.mkdir()
    for module in source.glob("*.py"):
        shutil.copy(module, copy / module.name)
    return copy


def _import_fails(tmp_path):
    completed = subprocess.run([sys.executable, "-c", "import fastopt"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode != 0
    assert "pip install ." in completed.stderr
    return completed.stderr


def test_import_of_an_unbuilt_source_tree_says_it_is_not_built(tmp_path):
    # The classic trap: the source folder (no compiled module) shadowing the installed package.
    copy = _source_copy(tmp_path)
    stderr = _import_fails(tmp_path)
    assert (f"ImportError: fastopt is not built: {str(copy)!r} holds fastopt's Python files but "
            f"no compiled module fastopt._kernels") in stderr
    assert "circular import" not in stderr   # what Python alone would blame


def test_import_of_a_broken_build_names_the_file_and_the_error(tmp_path):
    copy = _source_copy(tmp_path)
    name = "_kernels" + importlib.machinery.EXTENSION_SUFFIXES[0]
    (copy / name).write_bytes(b"not a shared library")
    stderr = _import_fails(tmp_path)
    assert ("ImportError: fastopt's compiled kernels (fastopt._kernels) could not be imported "
            f"from {str(copy)!r}, which holds {name}: ") in stderr


def test_one_version_number():
    try:
        installed = importlib.metadata.version("fastopt")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fastopt is not installed (an in-place build): no metadata to compare; "
                    "CI and tools/dist.sh run this against the installed package")
    assert fastopt.__version__ == installed


# The books' MIT notices, which must travel with every copy of the code restating theirs.
BOOK_NOTICES = {"deep-learning-from-scratch.txt": "Copyright (c) 2016 Koki Saitoh",
                "deep-learning-from-scratch-2.txt": "Copyright (c) 2018 Koki Saitoh",
                "deep-learning-from-scratch-3.txt": "Copyright (c) 2019 Koki Saitoh"}


def test_the_installed_package_carries_the_books_licence_notices():
    try:
        distribution = importlib.metadata.distribution("fastopt")
    except importlib.metadata.PackageNotFoundError:
        distribution = None
    if distribution is None or distribution.read_text("RECORD") is None:
        pytest.skip("fastopt is not installed from a wheel (an in-place build): no wheel "
                    "metadata to check; tools/dist.sh checks the sdist and the wheel")
    files = {str(path): path for path in distribution.files or []}
    for name, copyright_line in BOOK_NOTICES.items():
        matches = [path for key, path in files.items()
                   if key.endswith(f".dist-info/licenses/LICENSES/{name}")]
        assert len(matches) == 1, f"{name} is not in the installed metadata"
        text = matches[0].read_text(encoding="utf-8")
        assert copyright_line in text and "Permission is hereby granted" in text


def test_the_kernels_c_is_in_headers_beside_the_cython_source():
    # The module's C lives in C headers next to _kernels.pyx (shipped with it in the sdist and
    # the wheel), each included by a ``cdef extern from`` block; none is a string in the .pyx.
    source = Path(fastopt.__file__).parent
    pyx = source / "_kernels.pyx"
    if not pyx.is_file():
        pytest.skip(f"no {pyx}: this installation does not carry the Cython source")
    text = pyx.read_text(encoding="utf-8")
    assert "cdef extern from *" not in text
    headers = set(re.findall(r'^cdef extern from "(_\w+\.h)":', text, re.MULTILINE))
    assert headers == {"_pool.h", "_soft_sqrt.h", "_fpflags.h", "_settings.h", "_simd.h"}
    for name in sorted(headers):
        header = source / name
        assert header.is_file(), f"{name}, which _kernels.pyx includes, is not beside it"
        guard = "FASTOPT_" + name.removeprefix("_").removesuffix(".h").upper() + "_H"
        assert f"#ifndef {guard}\n#define {guard}\n" in header.read_text(encoding="utf-8")
