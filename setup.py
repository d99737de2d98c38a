"""Build the compiled kernels; everything else about the package is in pyproject.toml.

Flags: -O3 with -fno-math-errno (lets GCC vectorise sqrt) and -ffp-contract=off (no fused
multiply-add, so results stay bit-identical to NumPy). No fast-math flags of any kind and no
tuning for the build machine's CPU: the extension must give NumPy's bits on any x86-64.

FASTOPT_DEBUG_BUILD=1 turns Cython's bounds, wraparound and initialisation checks back on.
OpenMP (threads for large params) is used with GCC on Linux and MSVC on Windows; Apple's clang
has no OpenMP, so macOS builds run single-threaded. FASTOPT_NO_OPENMP=1 leaves it out.
"""
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("FASTOPT_DEBUG_BUILD", "") == "1"
openmp = os.environ.get("FASTOPT_NO_OPENMP", "") != "1"

link_args = []
if sys.platform == "win32":
    # MSVC: /fp:precise does not contract a*b+c into an FMA unless /fp:contract is given.
    compile_args = ["/O2", "/fp:precise"] + (["/openmp"] if openmp else [])
else:
    compile_args = ["-O3", "-fno-math-errno", "-ffp-contract=off"]
    if debug:
        compile_args += ["-O0", "-g"]
    if openmp and sys.platform.startswith("linux"):
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")

extensions = [
    Extension(
        "fastopt._kernels",
        ["fastopt/_kernels.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "boundscheck": debug,
            "wraparound": debug,
            "initializedcheck": debug,
        },
    )
)
