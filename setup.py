"""Build the compiled kernels; everything else about the package is in pyproject.toml.

Flags: -O3 with -fno-math-errno (lets the compiler vectorise sqrt) and -ffp-contract=off (no
fused multiply-add, so results stay bit-identical to NumPy). No fast-math flags of any kind and
no tuning for the build machine's CPU: a wheel must give NumPy's bits on any x86-64.

Run-time SIMD dispatch. The same fastopt/_kernels.pyx is built up to three times:

- ``fastopt._kernels``: the x86-64 baseline (SSE2), no instruction-set flag at all. Every
  machine can run it, and it is the only build on other CPUs (arm64) and with MSVC.
- ``fastopt._kernels_avx2``: AVX2 and FMA (FMA stays unused: nothing is contracted).
- ``fastopt._kernels_avx512``: AVX-512 F, CD, BW, DQ and VL, 512-bit vectors preferred.

The two wider modules are built only where a probe shows the compiler targets x86-64, takes
their flags and has ``__builtin_cpu_supports`` (GCC and clang). ``import fastopt`` asks the
baseline module what the CPU supports and imports the widest of them that it can run
(fastopt/_simd.py); FASTOPT_SIMD=baseline|avx2|avx512 forces one. Every level computes each
statement with the same IEEE operations in the same order, so all give the same bits.

Release builds carry no debug information: ``-g0`` comes after Python's own CFLAGS (which
often hold ``-g``), so the shipped modules are a fifth of the size; tools/dist.sh checks the
wheel's modules for a .debug_info section. FASTOPT_DEBUG_BUILD=1 turns Cython's bounds,
wraparound and initialisation checks back on, and keeps debug information.
FASTOPT_SANITIZE=1 (GCC or clang, not for shipping) builds with AddressSanitizer and
UndefinedBehaviorSanitizer, with debug information for their reports; tools/sanitize.sh builds
it in its own environment and runs the tests under it.

The modules compile in parallel (``build_ext --parallel``, one process per module up to the
number of CPUs this process may use) unless ``-j``/``--parallel`` says otherwise.
Threads for large params come from a small pool of POSIX threads in the module itself (no
OpenMP): -pthread with GCC and clang on Linux and macOS; MSVC builds run on one thread.
"""
import glob
import os
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

debug = os.environ.get("FASTOPT_DEBUG_BUILD", "") == "1"
sanitized = os.environ.get("FASTOPT_SANITIZE", "") == "1"
directives = {"boundscheck": debug, "wraparound": debug, "initializedcheck": debug}

link_args = []
if sys.platform == "win32":
    # MSVC: /fp:precise does not contract a*b+c into an FMA unless /fp:contract is given.
    compile_args = ["/O2", "/fp:precise"]
else:
    compile_args = ["-O3", "-fno-math-errno", "-ffp-contract=off"]
    if debug:
        compile_args += ["-O0", "-g"]
    if sanitized:
        sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
        compile_args += sanitize
        link_args += sanitize
    if not (debug or sanitized):
        # After Python's CFLAGS on the command line, so it wins over their -g.
        compile_args.append("-g0")
    compile_args.append("-pthread")
    link_args.append("-pthread")

# Module name suffix -> the flags of that instruction-set level (GCC and clang spelling).
SIMD_LEVELS = {
    "avx2": ["-mavx2", "-mfma"],
    "avx512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512cd", "-mavx512bw", "-mavx512dq",
               "-mavx512vl", "-mprefer-vector-width=512"],
}

# What a dispatched build needs: an x86-64 target, the level's flags, and the builtins the
# baseline module uses to ask the CPU (and the OS, for the wider registers) what it can run.
# MSVC, clang-cl and non-x86 targets stop at the #error: they build the baseline only.
PROBE = r"""
#if !defined(__x86_64__) || !(defined(__GNUC__) || defined(__clang__))
#error "run-time dispatch is built for x86-64 with GCC or clang only"
#endif
#include <immintrin.h>
int fastopt_probe(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") + __builtin_cpu_supports("fma")
        + __builtin_cpu_supports("avx512f") + __builtin_cpu_supports("avx512cd")
        + __builtin_cpu_supports("avx512bw") + __builtin_cpu_supports("avx512dq")
        + __builtin_cpu_supports("avx512vl");
}
"""


# The module's own C: headers next to the .pyx (the thread pool, the software square root,
# flush-to-zero, the run-time settings, the SIMD probes), each included by a ``cdef extern
# from`` block. Each level's generated C lives in its own build directory, so fastopt/ is on
# every level's include path; a changed header rebuilds every module.
HEADERS = sorted(glob.glob(os.path.join("fastopt", "*.h")))


def kernels_extension(suffix="", flags=(), build_dir=None):
    """Cython's C for the module ``fastopt._kernels<suffix>``, as an extension built with
    ``flags`` on top of the shared ones."""
    name = "fastopt._kernels" + suffix
    # Cython only writes the C here. The flags go on a fresh Extension afterwards, because
    # cythonize merges the options of extensions made from one .pyx file into each other.
    (generated,) = cythonize([Extension(name, ["fastopt/_kernels.pyx"])], build_dir=build_dir,
                             compiler_directives=directives)
    return Extension(
        name,
        generated.sources,
        include_dirs=["fastopt", numpy.get_include()],
        depends=HEADERS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args + list(flags),
        extra_link_args=link_args,
    )


class BuildKernels(build_ext):
    """Build the baseline module, and each wider level the probe says the compiler can build."""

    def _compiles(self, flags):
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "fastopt_probe.c")
            with open(source, "w") as file:
                file.write(PROBE)
            try:
                self.compiler.compile([source], output_dir=tmp, extra_postargs=flags)
            except CompileError:
                return False
        return True

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            # The three modules are independent: one compiler per module and CPU.
            try:
                cpus = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                cpus = os.cpu_count() or 1
            self.parallel = min(cpus, len(SIMD_LEVELS) + 1)
            if self.parallel < 2:
                self.parallel = None

    def build_extensions(self):
        kept = []
        for ext in self.extensions:
            level = ext.name.removeprefix("fastopt._kernels_")
            if level in SIMD_LEVELS and not self._compiles(SIMD_LEVELS[level]):
                print(f"fastopt: not building {ext.name}: this compiler or target cannot "
                      f"(the baseline module runs everywhere)", file=sys.stderr)
                continue
            kept.append(ext)
        if len(kept) > 1:
            # The baseline module asks the CPU which level to import only where one was built.
            baseline = next(ext for ext in kept if ext.name == "fastopt._kernels")
            baseline.define_macros.append(("FASTOPT_DISPATCH", "1"))
        self.extensions = kept
        super().build_extensions()


# The baseline's C goes next to the source; each level's copy of the same source gets its own
# build directory, because Cython names the C file after the .pyx (and the module's init
# function after the extension).
extensions = [kernels_extension()] + [
    kernels_extension("_" + level, flags, os.path.join("build", "cython", level))
    for level, flags in SIMD_LEVELS.items()]

setup(ext_modules=extensions, cmdclass={"build_ext": BuildKernels})
