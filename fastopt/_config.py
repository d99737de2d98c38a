"""What this process's fastopt runs, and fastopt's thread pool as threadpoolctl sees it.

``show_config()`` (``python -m fastopt info``) reports the build and the run-time settings in
one place, as ``numpy.show_config()`` does for NumPy: the version, the SIMD level (with the
name NumPy gives the same instruction set), the square-root method, threads, flushing of
subnormals, the MPI library when mpi4py is installed and the BLAS and OpenMP thread pools
threadpoolctl finds.

threadpoolctl (``threadpool_info()``, ``threadpool_limits()``) finds thread pools among the
shared libraries a process has loaded, through one controller class per library. fastopt
does not depend on threadpoolctl; when it is installed, importing fastopt registers a
controller for fastopt's loaded kernel module (``register_with_threadpoolctl``), so that
``threadpool_limits(1)`` limits fastopt's pool as it limits OpenBLAS's and OpenMP's.
threadpoolctl has no other way to learn of a library (no plugin entry point), and fastopt's
pool exists from its import on, so its import is the one moment to register. The cost is
importing threadpoolctl (pure Python, no library loaded) where it is installed.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import sys
from typing import Any, Literal, overload

import numpy as np

from . import _settings, _simd

__all__ = ["show_config"]

# The name NumPy gives (np.show_config(), numpy's __cpu_features__) to the instruction set of
# each of fastopt's x86-64 levels. fastopt's baseline is x86-64's SSE2, below NumPy's own
# baseline (X86_V2); its AVX2 build needs only AVX2 and FMA of X86_V3, its AVX-512 build
# exactly X86_V4's AVX-512 F, CD, BW, DQ and VL.
NUMPY_SIMD_NAMES = {"baseline": "SSE2", "avx2": "X86_V3", "avx512": "X86_V4"}

USER_API = "fastopt"   # threadpoolctl's user_api and internal_api for fastopt's pool


def _is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def _importable(name: str) -> bool:
    # Without importing it; None in sys.modules (a blocked import) counts as not importable.
    return importlib.util.find_spec(name) is not None


def _simd_section() -> dict[str, Any]:
    level = _simd.simd_level()
    return {
        "level": level,
        "numpy_name": NUMPY_SIMD_NAMES[level] if _is_x86_64() else None,
        "available": list(_simd.simd_levels()),
        "module": _simd.kernels.__file__,
        "sqrt_reason": _simd.sqrt_reason(),
    }


def _threads_section() -> dict[str, Any]:
    return {
        "num_threads": _settings.get_num_threads(),
        "at_import": _settings.threads_origin,
        "max_threads": _settings.MAX_THREADS,
        "available_cpus": _settings.available_cpus(),
        "supported": bool(_simd.kernels.threads_supported()),
    }


def _mpi_section(load: bool) -> dict[str, Any] | None:
    """mpi4py's version and, when ``mpi4py.MPI`` is loaded (or ``load``), the MPI library's.

    Importing ``mpi4py.MPI`` starts MPI, and a library must not start it in someone else's
    program just to report it: the library is named only when the program has already
    imported ``mpi4py.MPI``. With ``load`` (``python -m fastopt info``, whose process does
    nothing else) it is imported with ``mpi4py.rc.initialize = False``: the library is asked
    for its version, which MPI allows before MPI_Init, and MPI is never started.
    """
    if not _importable("mpi4py"):
        return None
    import mpi4py

    section: dict[str, Any] = {"mpi4py": getattr(mpi4py, "__version__", None), "loaded": False,
                               "library": None, "standard": None, "initialized": False}
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None and load:
        mpi4py.rc.initialize = False
        try:
            from mpi4py import MPI as mpi
        except (ImportError, RuntimeError, OSError) as error:   # e.g. no MPI library found
            section["error"] = f"{type(error).__name__}: {error}"
            return section
    if mpi is None:
        return section
    library = mpi.Get_library_version().strip()
    section["loaded"] = True
    section["library"] = " ".join(library.splitlines()[0].split()) if library else None
    section["standard"] = "{}.{}".format(*mpi.Get_version())
    section["initialized"] = bool(mpi.Is_initialized()) and not mpi.Is_finalized()
    return section


def _thread_pools_section() -> list[dict[str, Any]] | None:
    """Every thread pool but fastopt's that threadpoolctl finds (BLAS, OpenMP), or None
    without threadpoolctl."""
    if not _importable("threadpoolctl"):
        return None
    threadpoolctl = importlib.import_module("threadpoolctl")   # untyped, and optional
    keys = ("user_api", "internal_api", "num_threads", "version", "filepath")
    return [{key: pool.get(key) for key in keys} for pool in threadpoolctl.threadpool_info()
            if pool.get("user_api") != USER_API]


def collect(load_mpi: bool = False) -> dict[str, Any]:
    """The report ``show_config`` prints, as a dict (see show_config)."""
    from . import __version__

    return {
        "fastopt": {"version": __version__, "path": os.path.dirname(os.path.abspath(__file__))},
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "numpy": {"version": np.__version__},
        "simd": _simd_section(),
        "sqrt_method": _simd.sqrt_method(),
        "threads": _threads_section(),
        "flush_denormals": _settings.get_flush_denormals(),
        "slow_path_warning": _settings.get_slow_path_warning(),
        "mpi": _mpi_section(load_mpi),
        "thread_pools": _thread_pools_section(),
    }


def format_config(config: dict[str, Any]) -> str:
    """``config`` as indented ``key: value`` lines, one per value."""
    lines: list[str] = []

    def add(value: Any, indent: str) -> None:
        for key, item in value.items():
            if isinstance(item, dict):
                lines.append(f"{indent}{key}:")
                add(item, indent + "  ")
            elif isinstance(item, list) and item and isinstance(item[0], dict):
                lines.append(f"{indent}{key}:")
                for entry in item:
                    lines.append(f"{indent}  -")
                    add(entry, indent + "    ")
            else:
                lines.append(f"{indent}{key}: {_text(item)}")

    add(config, "")
    return "\n".join(lines)


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(map(str, value)) if value else "none found"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@overload
def show_config(mode: Literal["stdout"] = "stdout") -> None: ...
@overload
def show_config(mode: Literal["dicts"]) -> dict[str, Any]: ...
def show_config(mode: str = "stdout") -> dict[str, Any] | None:
    """Show what this process's fastopt runs: build, SIMD level, threads, MPI, BLAS.

    Like ``numpy.show_config``, and what ``python -m fastopt info`` prints.

    Parameters
    ----------
    mode : {"stdout", "dicts"}
        "stdout" prints the report and returns None, as ``numpy.show_config`` does (an
        interactive session would otherwise show it twice); "dicts" returns it instead.

    Returns
    -------
    dict or None
        With ``mode="dicts"``, a dict of:

        - ``fastopt``: ``version``, ``path`` (the package's folder).
        - ``python``: ``version``, ``executable``; ``numpy``: ``version``.
        - ``simd``: ``level`` (``fastopt.simd_level()``), ``numpy_name`` (NumPy's name for that
          instruction set: ``SSE2``, ``X86_V3``, ``X86_V4``; None off x86-64), ``available``
          (``fastopt.simd_levels()``, what FASTOPT_SIMD may choose), ``module`` (the file
          that runs) and ``sqrt_reason`` (``fastopt._simd.sqrt_reason()``: why the
          square-root method below was chosen).
        - ``sqrt_method``: ``fastopt.sqrt_method()``.
        - ``threads``: ``num_threads`` (``fastopt.get_num_threads()``), ``at_import`` (what
          set it at import: FASTOPT_NUM_THREADS, OMP_NUM_THREADS or the default),
          ``max_threads``, ``available_cpus``, ``supported`` (False in builds without
          threads).
        - ``flush_denormals``, ``slow_path_warning``: the current settings.
        - ``mpi``: None without mpi4py; else ``mpi4py`` (its version), ``loaded`` (whether
          ``mpi4py.MPI`` is imported), ``library`` (the first line of
          ``MPI.Get_library_version()``), ``standard`` (the MPI version) and ``initialized``.
          MPI is not started to fill it in: the library is named only when the program has
          imported ``mpi4py.MPI``, else it is None (``python -m fastopt info`` imports it
          without starting MPI, and reports in ``error`` why it could not).
        - ``thread_pools``: None without threadpoolctl; else the BLAS and OpenMP pools
          ``threadpoolctl.threadpool_info()`` finds (``user_api``, ``internal_api``,
          ``num_threads``, ``version``, ``filepath``). fastopt's own pool is ``threads``.

    Raises
    ------
    ValueError
        If ``mode`` is neither "stdout" nor "dicts".
    """
    if mode not in ("stdout", "dicts"):
        raise ValueError(f"mode must be 'stdout' or 'dicts'; got {mode!r}")
    config = collect()
    if mode == "dicts":
        return config
    print(format_config(config))
    return None


def to_json(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2)


# ---------------------------------------------------------------------------------------------
# threadpoolctl

_registered = False


def _same_file(a: str, b: str) -> bool:
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _controller_class(base: Any) -> Any:
    """A threadpoolctl LibController subclass for fastopt's kernel module in this process."""
    module_file = _simd.kernels.__file__
    assert module_file is not None
    # Every level's module file name starts with "_kernels"; the module that runs is the one
    # with the init symbol of its own name. Other packages may ship a "_kernels" module too,
    # and fastopt's baseline module is loaded beside a wider level's: the file must be the
    # very one fastopt runs (checked in get_version below).
    module_name = _simd.kernels.__name__.rpartition(".")[2]

    class FastoptController(base):  # type: ignore[misc]
        """fastopt's pool of threads for large params (fastopt.set_num_threads)."""

        user_api = USER_API
        internal_api = USER_API
        filename_prefixes = ("_kernels",)
        check_symbols = (f"PyInit_{module_name}",)

        def get_num_threads(self) -> int:
            return _settings.get_num_threads()

        def set_num_threads(self, num_threads: int) -> None:
            # threadpoolctl passes any limit >= 1 (e.g. the CPU count); fastopt's setter refuses
            # more than its most, so the limit is capped, as OpenBLAS caps it.
            _settings.set_num_threads(max(1, min(int(num_threads), _settings.MAX_THREADS)))

        def get_version(self) -> str:
            # Called while threadpoolctl builds the controller for a loaded library whose file
            # name starts with "_kernels". threadpoolctl skips a library whose controller
            # raises OSError (as for one it cannot load), which keeps out every such file but
            # fastopt's running module.
            if not _same_file(self.filepath, module_file):
                raise OSError(f"{self.filepath} is not fastopt's kernel module {module_file}")
            from . import __version__
            return __version__

        def set_additional_attributes(self) -> None:
            self.simd_level = _simd.simd_level()

    return FastoptController


def register_with_threadpoolctl() -> bool:
    """Register fastopt's pool with threadpoolctl if it is installed (3.5 or later, which has
    ``threadpoolctl.register``); once per process. Returns whether fastopt is registered."""
    global _registered
    if _registered:
        return True
    if not _importable("threadpoolctl"):
        return False
    threadpoolctl = importlib.import_module("threadpoolctl")   # untyped, and optional
    register = getattr(threadpoolctl, "register", None)
    if register is None:
        return False
    register(_controller_class(threadpoolctl.LibController))
    _registered = True
    return True
