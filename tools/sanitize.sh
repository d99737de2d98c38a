#!/usr/bin/env bash
# Sanitizer job: build fastopt with AddressSanitizer and UndefinedBehaviorSanitizer
# (FASTOPT_SANITIZE=1, setup.py) in a virtual environment of its own, then run, against that
# build, the tests that exercise the compiled code and its memory, and, longer, the
# concurrency stress tests (tests/test_stress.py, tests/test_freethreaded.py). A memory error
# or undefined behaviour in the compiled loops, the planner or the thread pool fails the job.
# GCC or clang, Linux. About 10 minutes on 2 cores that other work keeps busy (the build
# about 5 of them, the longer stress tests 2); less on idle ones.
#
# Python itself is not instrumented, so the ASan runtime is preloaded (LD_PRELOAD) into every
# Python process, including the tests' subprocesses (they inherit the environment).
# detect_leaks=0: CPython's allocator keeps memory until exit by design, which LeakSanitizer
# would report on every run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
started=$SECONDS

step() { printf '\n== sanitize: %s (%d s so far)\n' "$*" "$((SECONDS - started))"; }

compiler="${CC:-gcc}"
libasan="$("$compiler" -print-file-name=libasan.so)"
if [ ! -e "$libasan" ]; then
    echo "no libasan.so next to $compiler (got '$libasan'): install the compiler's ASan runtime"
    exit 1
fi

step "a virtual environment with the build and test requirements"
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet "setuptools>=77" "Cython>=3.1" "numpy>=2.0" "pytest>=8" \
    "hypothesis>=6.100"

step "build with FASTOPT_SANITIZE=1 (from a copy of the sources: no stale objects reused)"
mkdir "$work/src"
(cd "$root" && tar --exclude=./.git --exclude=./build --exclude=./dist --exclude='*.so' \
    --exclude='*.egg-info' --exclude=./fastopt/_kernels.c -cf - .) | tar -xf - -C "$work/src"
FASTOPT_SANITIZE=1 "$py" -m pip install --quiet --no-build-isolation --no-deps "$work/src"
# (found without importing fastopt: an instrumented module loads only after the ASan runtime)
package="$(cd "$work" && "$py" -c \
    'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("fastopt").origin))')"
modules="$(ls "$package"/_kernels*.so)"
for module in $modules; do
    # The job is only worth running if every kernel module really carries the sanitizers.
    libraries="$(ldd "$module")"   # (not piped into grep -q: pipefail and SIGPIPE)
    grep -q libasan <<<"$libraries" || { echo "$module is not built with ASan"; exit 1; }
    grep -q libubsan <<<"$libraries" || { echo "$module is not built with UBSan"; exit 1; }
done
echo "instrumented: $(echo "$modules" | wc -w) kernel modules"

# The tests run from a copy of tests/, bench/ (tests/test_sqrt.py imports its verifier) and
# the pytest configuration, so that only the instrumented installed package can be imported.
mkdir "$work/tree"
cp -r "$root/tests" "$root/bench" "$root/pyproject.toml" "$work/tree/"
cd "$work/tree"

# --capture=sys below: pytest's default capture of file descriptor 2 would swallow the
# sanitizer's report when it aborts the process.
export LD_PRELOAD="$libasan"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

# What runs here: the tests whose calls reach the compiled code with arrays and containers of
# every kind it must take or refuse, each loop at each dtype, width and thread split:
# - test_exactness.py: every loop, float32 and float64, on empty, 0-d, one-element and odd
#   shapes (every vector tail) and the book's two-layer net (a param split across threads),
#   views, read-only grads, other dtypes, NaN and infinities. Its five-layer net adds only more
#   elements of the same kinds (-k below).
# - test_simd.py, test_sqrt.py: each SIMD level's module and the software square root, at one
#   and two threads, on params split across the pool.
# - test_reliability.py, test_errors.py, test_cost.py: the planner's checks that keep the loops
#   inside memory (every rejected array and container, overlaps, the heap buffer for many
#   params, dicts changed during planning, state placement), and the memory-safety findings.
# - test_callpath.py, test_clipping.py, test_weight_decay.py, test_denormals.py,
#   test_threads.py, test_properties.py: the call path's plans, the norm and scaling loops,
#   the decay flags, flush-to-zero, the pool, and random shapes and values.
# - test_stress.py, test_freethreaded.py (-m stress): threads racing updates, container
#   changes and setting changes, run once, for FASTOPT_STRESS_SECONDS each.
# Left out, and why:
# - test_bench.py, test_formulas.py, test_torch_parity.py: import torch, whose own allocator
#   and libraries do not run under a preloaded ASan runtime (and are not what this job
#   checks); test_bench.py also times things.
# - test_examples.py, test_distributed.py: train the examples' networks (minutes under ASan;
#   matplotlib, scikit-learn, MPI), through the loops the tests above cover.
# - test_contract.py, test_flavours.py, test_schedules.py, test_checkpoint.py,
#   test_packaging.py: the drop-in contract, the flavour classes, the schedules' formulas,
#   checkpoint files and packaging are Python and NumPy code; the compiled calls they make
#   take the same kinds of arrays as the tests above.
# - In test_reliability.py, the hyperparameter type checks (wrong, accepted and too-large
#   floats, numpy scalars, bool options: about 1,200 cases): Python's checks; whatever its
#   Python type, a value reaches the loops as a C double. And one optimizer from two threads:
#   the stress phase runs that race, per configuration, with grads churning under it.
# - In test_weight_decay.py, zero decay against no decay (600 cases: a property of the
#   numbers, over the loops test_exactness.py covers) and NumPy's path (no compiled code).
# - test_cost.py::test_kernels_release_the_gil: compares timings, which ASan distorts.
# - test_simd.py::test_the_baseline_module_is_baseline_code: reads the modules' machine code
#   for AVX registers; ASan's checks keep the compiler from vectorising the instrumented loops.
step "the compiled code's tests under ASan and UBSan"
"$py" -m pytest -q -p no:cacheprovider --capture=sys -k "not five_layer_net" \
    tests/test_exactness.py tests/test_simd.py tests/test_sqrt.py tests/test_reliability.py \
    tests/test_errors.py tests/test_cost.py tests/test_callpath.py tests/test_clipping.py \
    tests/test_weight_decay.py tests/test_denormals.py tests/test_threads.py \
    tests/test_properties.py \
    --deselect tests/test_reliability.py::test_float_hyperparameter_of_a_wrong_type \
    --deselect tests/test_reliability.py::test_float_hyperparameter_of_an_accepted_type \
    --deselect tests/test_reliability.py::test_float_hyperparameter_too_large_for_a_float \
    --deselect tests/test_reliability.py::test_numpy_scalar_hyperparameters_match_the_reference \
    --deselect tests/test_reliability.py::test_boolean_option_of_a_wrong_type \
    --deselect tests/test_reliability.py::test_one_optimizer_from_two_threads_loses_no_update \
    --deselect tests/test_weight_decay.py::test_zero_decay_is_no_decay \
    --deselect tests/test_weight_decay.py::test_grads_are_not_written_numpy_path \
    --deselect tests/test_cost.py::test_kernels_release_the_gil \
    --deselect tests/test_simd.py::test_the_baseline_module_is_baseline_code

step "the concurrency stress tests, longer"
FASTOPT_STRESS_SECONDS="${FASTOPT_STRESS_SECONDS:-10}" \
    "$py" -m pytest -q -p no:cacheprovider --capture=sys -m stress tests/test_stress.py \
    tests/test_freethreaded.py

echo "sanitize: passed in $((SECONDS - started)) s"
