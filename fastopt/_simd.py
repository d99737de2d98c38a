"""Run-time SIMD dispatch: which build of the compiled loops this process runs.

setup.py builds fastopt/_kernels.pyx at up to three instruction-set levels, as separate
modules: ``fastopt._kernels`` (x86-64 baseline, SSE2; the only build on other CPUs and with
MSVC), ``fastopt._kernels_avx2`` (AVX2 and FMA) and ``fastopt._kernels_avx512`` (AVX-512).
At import, the baseline module asks the CPU which levels it (and the OS) can run, and the
widest of those that was built is imported and used for every update. The levels differ
only in vector width: each statement is the same IEEE operation in the same order, without
fused multiply-add, so every level gives the same bits (tests/test_simd.py).

``FASTOPT_SIMD=baseline|avx2|avx512`` forces a level, for comparison or to rule the wider
builds out; a level this CPU cannot run, or that was not built, is refused with an error
rather than run.

The AVX-512 build also has an exactly rounded software square root for the float64 loops
(fastopt/_soft_sqrt.h): faster than the hardware instruction on cores where that instruction
is slow, slower elsewhere, the same bits everywhere. Which one runs is decided at import,
the same way in every process on one machine (``decide_sqrt``, below, and docs/simd.md):
``FASTOPT_SQRT=hardware|software``; else a table of measured CPU models; else a measurement
made once per machine and kept in the user's cache directory; else the hardware root.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from . import _kernels

__all__ = ["simd_level", "simd_levels", "sqrt_method", "sqrt_reason"]

# Narrowest first; each needs all that comes before it.
LEVELS = ("baseline", "avx2", "avx512")


def _module_name(level: str) -> str:
    return "fastopt._kernels" if level == "baseline" else f"fastopt._kernels_{level}"


def _built() -> tuple[str, ...]:
    return tuple(level for level in LEVELS
                 if importlib.util.find_spec(_module_name(level)) is not None)


def _runnable(built: Sequence[str], cpu: str) -> tuple[str, ...]:
    return tuple(level for level in LEVELS
                 if level in built and LEVELS.index(level) <= LEVELS.index(cpu))


def choose(built: Sequence[str], cpu: str, forced: str | None) -> str:
    """The level to run: ``forced`` if given and usable, else the widest built level that
    the CPU's widest level ``cpu`` covers. Raises ValueError for an unusable ``forced``."""
    runnable = _runnable(built, cpu)
    if forced is None:
        return runnable[-1]
    level = forced.strip().lower()
    if level not in LEVELS:
        raise ValueError(f"FASTOPT_SIMD={forced!r}: expected one of {', '.join(LEVELS)}")
    if level not in runnable:
        why = ("was not built (this platform or compiler builds only "
               f"{', '.join(built)})" if level not in built
               else f"needs instructions this CPU lacks (it runs up to {cpu})")
        raise ValueError(f"FASTOPT_SIMD={forced!r}: that level {why}")
    return level


_built_levels = _built()
_cpu_level = _kernels.cpu_simd_level()
_available = _runnable(_built_levels, _cpu_level)
_level = choose(_built_levels, _cpu_level, os.environ.get("FASTOPT_SIMD") or None)

# The module every update runs; the others are never imported (an unsupported one could
# execute instructions this CPU lacks already while loading). All levels have the interface
# of fastopt/_kernels.pyi, which is what type checkers see.
if TYPE_CHECKING:
    kernels = _kernels
else:
    kernels = _kernels if _level == "baseline" else importlib.import_module(_module_name(_level))


# ---------------------------------------------------------------------------------------------
# The square-root method of the AVX-512 build
#
# Every process on one machine must take the same method (the bits are the same either way,
# the speed is not), so the decision is never a single timing at import, which a busy machine
# can tip either way. It is, in order:
#   1. FASTOPT_SQRT, if set;
#   2. 'hardware' where the running build has no software root (every build but AVX-512);
#   3. SQRT_TABLE: CPUs where the optimizers' float64 loops were measured both ways;
#   4. for other CPUs, the cached result of the first measurement on this machine: a file in
#      the user's cache directory, keyed by the CPU, fastopt's version and the running
#      module, written once (the first process to write it wins, and every later one reads it);
#   5. 'hardware' where no cache file can be read or written: the one default that cannot
#      differ between processes.
# decide_sqrt is that decision as a function of its inputs; the rest of this section gathers
# them for this process.

SQRT_METHODS = ("hardware", "software")
SOFT_SQRT_GAIN = 1.25   # least median speed-up (hardware / software time) that picks software
SQRT_ROUNDS = 7         # interleaved rounds of the measurement for a CPU not in SQRT_TABLE
SQRT_RUNS = 5           # runs of each root per round (the least of them counts)
CACHE_FORMAT = 1        # bumped when the cache file's layout or the measurement changes


class CpuIdentity(NamedTuple):
    """What names a CPU model: ``vendor_id``, ``cpu family``, ``model`` and ``model name`` of
    Linux's /proc/cpuinfo (CPUID's vendor string, family and model, with the extended bits
    added in), or only a name from ``platform`` elsewhere."""

    vendor: str
    family: int | None
    model: int | None
    name: str


class SqrtEntry(NamedTuple):
    """A row of SQRT_TABLE: ``model`` None covers the whole family."""

    vendor: str
    family: int
    model: int | None
    method: str
    measured: str


SQRT_TABLE = (
    # One model only: Intel's family 6 spans cores whose square-root units differ.
    SqrtEntry("GenuineIntel", 6, 207, "software",
              "Intel Xeon (Emerald Rapids): the software root 1.4-1.8x as fast on cache-resident "
              "float64 loops (TwoLayerNet, one thread: AdaGrad 71 -> 40 us, Adam 73 -> 50 us, "
              "AdamW 98 -> 56 us)"),
    # Zen 4 is the only family-25 (Zen 3 and Zen 4) core with AVX-512, so the whole family
    # is that core as far as this decision goes.
    SqrtEntry("AuthenticAMD", 25, None, "hardware",
              "AMD Zen 4: the software root 0.81-1.11x as fast in the float64 loops"),
)


def parse_cpuinfo(text: str) -> CpuIdentity | None:
    """The identity of the first processor in /proc/cpuinfo's ``text``, or None if it names
    no vendor (e.g. arm64's format)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break       # the end of the first processor's block
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    vendor = fields.get("vendor_id")
    if not vendor:
        return None

    def number(key: str) -> int | None:
        try:
            return int(fields.get(key, ""), 0)
        except ValueError:
            return None

    return CpuIdentity(vendor, number("cpu family"), number("model"),
                       " ".join(fields.get("model name", "").split()))


def cpu_identity(cpuinfo: str = "/proc/cpuinfo") -> CpuIdentity:
    """This machine's CPU: from ``cpuinfo`` where it exists (Linux), else ``platform``'s name
    for it, without family and model (no table row then matches it)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as file:
            found = parse_cpuinfo(file.read())
    except OSError:
        found = None
    if found is not None:
        return found
    return CpuIdentity("", None, None, platform.processor() or platform.machine())


def describe_cpu(cpu: CpuIdentity) -> str:
    if cpu.family is None:
        return cpu.name or "an unidentified CPU"
    return f"{cpu.name or 'CPU'} ({cpu.vendor} family {cpu.family} model {cpu.model})"


def table_entry(cpu: CpuIdentity, table: Sequence[SqrtEntry] = SQRT_TABLE) -> SqrtEntry | None:
    """The row of ``table`` for ``cpu``: its exact model, else its whole family, else None."""
    if cpu.family is None:
        return None
    rows = [row for row in table if (row.vendor, row.family) == (cpu.vendor, cpu.family)]
    return (next((row for row in rows if row.model == cpu.model), None)
            or next((row for row in rows if row.model is None), None))


def default_cache_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """Where fastopt keeps the measured method: ``$XDG_CACHE_HOME/fastopt`` (an absolute
    XDG_CACHE_HOME, on any platform), else ``%LOCALAPPDATA%\\fastopt`` on Windows,
    ``~/Library/Caches/fastopt`` on macOS and ``~/.cache/fastopt`` elsewhere; None without
    a home directory."""
    environ = os.environ if environ is None else environ
    xdg = environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return os.path.join(xdg, "fastopt")
    if sys.platform == "win32":
        local = environ.get("LOCALAPPDATA", "")
        return os.path.join(local, "fastopt") if os.path.isabs(local) else None
    home = environ.get("HOME", "")
    if not os.path.isabs(home):
        return None
    if sys.platform == "darwin":
        return os.path.join(home, "Library", "Caches", "fastopt")
    return os.path.join(home, ".cache", "fastopt")


class SqrtCache:
    """The measured method for one (CPU, fastopt version, module) in one JSON file of
    ``directory``, written once.

    ``load()`` returns the stored ``(method, ratio)``, or None if there is none or it is not
    a valid entry for this key; it raises OSError when there is none and the directory cannot
    be created or written (then nothing should be measured). ``store(method, ratio)`` writes
    the entry unless a valid one is already there, and returns the one in the file afterwards:
    of processes that measure at the same time, the first to store decides for all. It raises
    OSError when the file cannot be written.
    """

    def __init__(self, directory: str, cpu: CpuIdentity, version: str, module: str) -> None:
        self.key = {"format": CACHE_FORMAT, "fastopt": version, "module": module,
                    "cpu": {"vendor": cpu.vendor, "family": cpu.family, "model": cpu.model,
                            "name": cpu.name}}
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()
        self.path = os.path.join(directory, f"sqrt-{digest[:16]}.json")

    def _read(self) -> tuple[str, float] | None:
        try:
            with open(self.path, encoding="utf-8") as file:
                data = json.load(file)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):   # unreadable, or not JSON (UnicodeDecodeError included)
            return None
        if not isinstance(data, dict) or data.get("key") != self.key:
            return None
        method, ratio = data.get("method"), data.get("ratio")
        if method not in SQRT_METHODS or not isinstance(ratio, (int, float)):
            return None
        return method, float(ratio)

    def load(self) -> tuple[str, float] | None:
        found = self._read()
        if found is not None:
            return found
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(f"the cache directory {directory} is not writable")
        return None

    def store(self, method: str, ratio: float) -> tuple[str, float]:
        import tempfile  # only the first process on a machine writes

        directory = os.path.dirname(self.path)
        text = json.dumps({"key": self.key, "method": method, "ratio": ratio}, indent=1)
        handle, temporary = tempfile.mkstemp(prefix=".sqrt-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(text)
            try:
                os.link(temporary, self.path)     # atomic, and never over another's entry
            except FileExistsError:
                found = self._read()
                if found is not None:
                    return found                  # another process measured first
                os.replace(temporary, self.path)  # a corrupt or stale entry: ours replaces it
            return method, ratio
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


class SqrtCacheLike(Protocol):
    path: str

    def load(self) -> tuple[str, float] | None: ...
    def store(self, method: str, ratio: float) -> tuple[str, float]: ...


def _forced_sqrt(can_soft: bool, forced: str) -> str:
    method = forced.strip().lower()
    if method not in SQRT_METHODS:
        raise ValueError(f"FASTOPT_SQRT={forced!r}: expected one of {', '.join(SQRT_METHODS)}")
    if method == "software" and not can_soft:
        raise ValueError(f"FASTOPT_SQRT={forced!r}: the software square root is only in "
                         f"the AVX-512 build, and this process runs {_level}")
    return method


def choose_sqrt(can_soft: bool, forced: str | None,
                timings: Callable[[], tuple[float, float]]) -> str:
    """The rule for one measurement: ``forced`` if given and usable, else 'software' where
    the build has it and ``timings()`` (seconds with the hardware root, with the software one)
    shows it at least SOFT_SQRT_GAIN times as fast, else 'hardware'. Raises ValueError for an
    unusable ``forced``. ``decide_sqrt`` is what import uses."""
    if forced is not None:
        return _forced_sqrt(can_soft, forced)
    if not can_soft:
        return "hardware"
    hardware, software = timings()
    return "software" if hardware >= SOFT_SQRT_GAIN * software else "hardware"


def measure_sqrt(timer: Callable[[], tuple[float, float]], rounds: int = SQRT_ROUNDS) -> float:
    """The median over ``rounds`` calls of ``timer()`` (seconds with the hardware root, with
    the software one, timed back to back) of hardware / software: above 1, software is
    faster. One disturbed round moves the median little."""
    ratios = []
    for _ in range(rounds):
        hardware, software = timer()
        ratios.append(hardware / software if software > 0 else 1.0)
    ratios.sort()
    middle = len(ratios) // 2
    return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2


def decide_sqrt(cpu: CpuIdentity, can_soft: bool, forced: str | None,
                cache: SqrtCacheLike | None,
                timer: Callable[[], tuple[float, float]]) -> tuple[str, str]:
    """The square-root method and why: ``(method, reason)``.

    Parameters
    ----------
    cpu : CpuIdentity
        This machine's CPU (``cpu_identity()``).
    can_soft : bool
        Whether the running build has the software root (the AVX-512 build).
    forced : str or None
        ``FASTOPT_SQRT``, None if unset.
    cache : SqrtCache or None
        Where a measurement is kept for this CPU, version and module; None if there is no
        cache directory.
    timer : callable
        One round of the measurement: seconds with the hardware root, with the software one.
        Called only for a CPU not in SQRT_TABLE whose measurement is not cached yet.

    Returns
    -------
    tuple of str
        'hardware' or 'software', and a sentence saying what decided it.

    Raises
    ------
    ValueError
        If ``forced`` is not a method, or is 'software' where the build has no software root.
    """
    if forced is not None:
        return _forced_sqrt(can_soft, forced), f"FASTOPT_SQRT={forced!r}"
    if not can_soft:
        return "hardware", f"the {_level} build has no software square root"
    row = table_entry(cpu)
    if row is not None:
        return row.method, f"measured on this CPU model: {row.measured}"
    where = describe_cpu(cpu)
    if cache is None:
        return "hardware", (f"{where} is not in fastopt's table and there is no cache "
                            "directory to keep a measurement in: the hardware root, by default")
    try:
        found = cache.load()
        if found is not None:
            method, ratio = found
            return method, (f"{where} is not in fastopt's table; measured on this machine "
                            f"before (hardware/software {ratio:.2f}, software from "
                            f"{SOFT_SQRT_GAIN}), cached in {cache.path}")
        ratio = measure_sqrt(timer)
        method = "software" if ratio >= SOFT_SQRT_GAIN else "hardware"
        method, ratio = cache.store(method, ratio)
    except OSError as error:
        return "hardware", (f"{where} is not in fastopt's table and its measurement cannot "
                            f"be cached ({error}): the hardware root, by default")
    return method, (f"{where} is not in fastopt's table; measured on this machine "
                    f"(hardware/software {ratio:.2f}, software from {SOFT_SQRT_GAIN}), "
                    f"cached in {cache.path}")


def _timer() -> tuple[float, float]:
    result: tuple[float, float] = kernels.time_soft_sqrt(SQRT_RUNS)
    return result


def _decide_here() -> tuple[str, str]:
    from . import __version__

    forced = os.environ.get("FASTOPT_SQRT") or None
    can_soft = bool(kernels.can_soft_sqrt())
    if forced is not None or not can_soft:   # nothing to look up
        return decide_sqrt(CpuIdentity("", None, None, ""), can_soft, forced, None, _timer)
    cpu = cpu_identity()
    directory = default_cache_dir()
    cache = (None if directory is None
             else SqrtCache(directory, cpu, __version__, kernels.__name__))
    return decide_sqrt(cpu, can_soft, forced, cache, _timer)


_sqrt, _sqrt_reason = _decide_here()
kernels.set_soft_sqrt(_sqrt == "software")


def simd_level() -> str:
    """The instruction-set level of the compiled loops this process runs: 'baseline'
    (x86-64's SSE2, or the only build on other platforms), 'avx2' (AVX2 and FMA) or 'avx512'
    (AVX-512). Chosen at import: the widest this CPU runs, or ``FASTOPT_SIMD``."""
    return _level


def sqrt_method() -> str:
    """How the float64 loops take square roots in this process.

    Returns
    -------
    str
        'hardware' (the CPU's instruction) or 'software' (fastopt's exactly rounded
        sequence, AVX-512 builds only): the same bits either way. Decided at import, the same
        way in every process on one machine: ``FASTOPT_SQRT`` if set; else 'hardware' in
        builds without the software root; else fastopt's table of CPU models where both were
        measured; else, for another CPU, a measurement taken once on this machine and kept
        in the user's cache directory (``$XDG_CACHE_HOME/fastopt``, by default
        ``~/.cache/fastopt``), which every later process reads; 'hardware' where there is no
        writable cache. ``sqrt_reason()`` says which of these decided.
    """
    return _sqrt


def sqrt_reason() -> str:
    """Why this process takes the square root it does (``sqrt_method()``): the variable, the
    build, the table row of this CPU model, or the measurement and its cache file. Also in
    ``fastopt.show_config()`` as ``simd.sqrt_reason``."""
    return _sqrt_reason


def simd_levels() -> tuple[str, ...]:
    """The levels that were built and that this CPU runs: the values FASTOPT_SIMD may take."""
    return _available
