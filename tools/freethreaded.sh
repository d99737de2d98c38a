#!/usr/bin/env bash
# Free-threaded run: build fastopt for a free-threaded CPython 3.13 (no GIL) in a virtual
# environment of its own and run the tests of threads, the compiled module and its state there
# (the selection and why: below) WITHOUT PYTHON_GIL=0, so that the run fails if importing
# fastopt re-enables the GIL (a module that does not declare itself safe without the GIL makes
# CPython re-enable it, with a RuntimeWarning).
#
# The interpreter lives at a fixed prefix, $FASTOPT_FT_PREFIX (default
# /opt/fastopt-python3.13t), and is reused whenever the one found there runs without the GIL.
# Where there is none, it is built from the upstream sources that Debian's python3.13 source
# package carries (trixie; `apt-get source --download-only`, its .orig tarball, without
# Debian's layout patches) with `./configure --disable-gil`: about 12 minutes on 2 cores,
# once per machine. Building needs root (apt-get) and Debian or a derivative.
#
# NumPy comes as a cp313t wheel ("numpy<2.5": the last series with 3.13t wheels is 2.4), and
# so does everything else: nothing is built from source but fastopt. They are installed with
# the interpreter, once, so that a run only builds fastopt and tests it. The optional test
# peers (torch, mpi4py, matplotlib, scikit-learn) are not installed: the tests that need them
# skip, as they do wherever those are missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${FASTOPT_FT_PREFIX:-/opt/fastopt-python3.13t}"
python="$prefix/bin/python3.13t"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
started=$SECONDS

step() { printf '\n== free-threaded: %s (%d s so far)\n' "$*" "$((SECONDS - started))"; }

free_threaded() {
    "$python" -c 'import sys; assert not sys._is_gil_enabled()' >/dev/null 2>&1
}

build_interpreter() {
    step "no free-threaded interpreter at $prefix: building one from Debian's python3.13 source"
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "building the interpreter needs root and apt-get; or point FASTOPT_FT_PREFIX at a"
        echo "free-threaded CPython 3.13 (configure --disable-gil) whose bin/ has python3.13t"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Only source packages come from trixie: nothing installed on this machine changes suite.
    local sources=/etc/apt/sources.list.d/fastopt-trixie-src.sources
    if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ \
            || ! grep -rqs 'trixie' /etc/apt/sources.list.d/; then
        cat > "$sources" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    apt-get update -qq
    # What configure and make need for the standard library's extension modules that matter
    # here (ssl for pip, zlib, ctypes, bz2, lzma, sqlite3, readline, curses, dbm, uuid).
    apt-get install -y -qq --no-install-recommends dpkg-dev build-essential pkg-config \
        libssl-dev zlib1g-dev libffi-dev libbz2-dev liblzma-dev libsqlite3-dev \
        libreadline-dev libncurses-dev libgdbm-dev uuid-dev xz-utils >/dev/null
    # (readable by apt's unprivileged download user, so the download can be sandboxed)
    mkdir "$work/cpython"
    chmod a+x "$work"
    chmod a+rwx "$work/cpython"
    (cd "$work/cpython" && apt-get source --download-only -qq python3.13)
    local orig
    orig="$(ls "$work"/cpython/python3.13_*.orig.tar.xz)"
    echo "source: $(basename "$orig")"
    tar -xf "$orig" -C "$work/cpython"
    local src
    src="$(find "$work/cpython" -mindepth 1 -maxdepth 1 -type d -name 'Python-*' | head -n 1)"
    rm -rf "$prefix"
    (
        cd "$src"
        ./configure --quiet --disable-gil --prefix="$prefix" --with-ensurepip=install
        make -s -j"$(nproc)"
        make -s install
    ) > "$work/cpython/build.log" 2>&1 || { tail -n 60 "$work/cpython/build.log"; exit 1; }
    free_threaded || { echo "the interpreter built at $prefix runs with the GIL"; exit 1; }
}

if free_threaded; then
    step "reusing the free-threaded interpreter at $prefix"
else
    build_interpreter
fi
"$python" -VV

# The test requirements live in the interpreter's own site-packages, installed once with it
# (wheels only: a package without a cp313t or pure-Python wheel would otherwise be built from
# its sdist, which for some needs a toolchain or network this run does not have). Each run's
# virtual environment sees them (--system-site-packages) and holds only fastopt.
requirements=("numpy>=2.0,<2.5" "setuptools>=77" "Cython>=3.1" "pytest>=8" "hypothesis>=6.100")
if ! "$python" -c 'import numpy, setuptools, Cython, pytest, hypothesis' 2>/dev/null; then
    step "the test requirements, into the interpreter's site-packages (once)"
    "$python" -m pip install --quiet --only-binary=:all: "${requirements[@]}"
fi

step "a virtual environment for fastopt"
# (--without-pip: the interpreter's own pip installs into it)
"$python" -m venv --without-pip --system-site-packages "$work/venv"
py="$work/venv/bin/python"
"$py" -c 'import numpy; print("numpy", numpy.__version__)'

step "build fastopt from a copy of the checkout"
mkdir "$work/src"
(cd "$root" && tar --exclude=./.git --exclude=./build --exclude=./dist --exclude='*.so' \
    --exclude='*.egg-info' --exclude=./fastopt/_kernels.c -cf - .) | tar -xf - -C "$work/src"
"$py" -m pip install --quiet --no-build-isolation --no-deps "$work/src"

# The tests run from a copy of tests/, bench/, examples/ and the pytest configuration, so that
# only the installed package can be imported. PYTHON_GIL is removed from the environment:
# whether the GIL stays off is exactly what this run checks.
mkdir "$work/tree"
cp -r "$root/tests" "$root/bench" "$root/examples" "$root/pyproject.toml" "$work/tree/"
cd "$work/tree"
unset PYTHON_GIL

step "importing fastopt (every SIMD level this CPU runs) leaves the GIL disabled, no warning"
# -W error: the RuntimeWarning that comes with re-enabling the GIL fails the import.
levels="$("$py" -W error -c 'import fastopt; print(*fastopt.simd_levels())')"
for level in $levels; do
    FASTOPT_SIMD="$level" "$py" -W error - <<'PY'
import sys

import fastopt

assert "site-packages" in fastopt.__file__, fastopt.__file__
assert not sys._is_gil_enabled(), "importing fastopt re-enabled the GIL"
print(f"ok: the {fastopt.simd_level()} kernels, GIL disabled")
PY
done

# What runs without the GIL: the tests of what free-threading changes. Python code runs as it
# does with the GIL except where threads meet, so the selection is the tests that run threads,
# that go through the compiled module (whose Cython-generated code is built differently for a
# free-threaded interpreter: reference counts, critical sections), and that read and change the
# module's state:
# - test_freethreaded.py, test_stress.py, test_threads.py, test_cost.py: the GIL stays off,
#   threads racing updates, containers and settings, the pool, the kernels releasing the GIL,
#   two threads' bits against serial ones.
# - test_config.py, test_simd.py, test_sqrt.py, test_packaging.py: the settings, show_config,
#   every SIMD level's module (built with this interpreter's flags) and the square-root choice.
# - test_reliability.py: crashes, forks and the pool, one optimizer from two threads, and
#   every kind of container and value the compiled calls take or refuse.
# - test_exactness.py, test_errors.py, test_callpath.py, test_clipping.py,
#   test_weight_decay.py, test_denormals.py, test_properties.py: every loop and every config
#   against the reference, the planner's checks and the call path's plans. Their five-layer
#   net (-k below) adds only more elements of the kinds the two-layer net has.
# Left out: test_contract.py, test_flavours.py, test_schedules.py, test_checkpoint.py,
# test_dezero.py (single-threaded Python layers over the compiled calls tested above: the
# drop-in contract, the flavours, the schedules, checkpoint files, DeZero's classes);
# test_formulas.py, test_torch_parity.py, test_distributed.py, test_examples.py and
# test_bench.py need torch, MPI or the examples' packages, which are not installed here (they
# would skip), and are Python over the same calls.
step "the tests of threads, the compiled module and its state on the free-threaded interpreter"
"$py" -m pytest -q -p no:cacheprovider -k "not five_layer_net" \
    tests/test_freethreaded.py tests/test_stress.py tests/test_threads.py tests/test_cost.py \
    tests/test_config.py tests/test_simd.py tests/test_sqrt.py tests/test_packaging.py \
    tests/test_reliability.py tests/test_exactness.py tests/test_errors.py \
    tests/test_callpath.py tests/test_clipping.py tests/test_weight_decay.py \
    tests/test_denormals.py tests/test_properties.py 2>&1 | tee "$work/pytest.log"
if grep -q 'global interpreter lock' "$work/pytest.log"; then
    echo "the GIL was re-enabled during the test run"
    exit 1
fi

echo "free-threaded: passed in $((SECONDS - started)) s"
