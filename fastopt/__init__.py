"""fastopt: the optimizers of *Deep Learning from Scratch*, compiled, exact and in place.

Replace ``from common.optimizer import *`` with ``from fastopt import *``: same constructors,
same state, same numbers (bit for bit in float64), no temporary arrays.
"""
__version__ = "0.1.0"

try:
    from . import _kernels  # noqa: F401
except ImportError as error:   # pragma: no cover - exercised only without a build
    import importlib.machinery as _machinery
    import os as _os

    _folder = __path__[0]
    _how = ("Install fastopt with `pip install .` and import it from outside the source tree "
            "(run `pytest`, not `python -m pytest`, at the repository root), or build in place "
            "with `python setup.py build_ext --inplace`.")
    _built = [name for name in sorted(_os.listdir(_folder)) if name.startswith("_kernels")
              and name.endswith(tuple(_machinery.EXTENSION_SUFFIXES))]
    if not _built:
        # Not chained: Python's own message blames "a circular import", which is not the cause.
        raise ImportError(
            f"fastopt is not built: {_folder!r} holds fastopt's Python files but no compiled "
            f"module fastopt._kernels (a file such as "
            f"_kernels{_machinery.EXTENSION_SUFFIXES[0]}); it is an uncompiled source folder, "
            f"not an installed fastopt. {_how}") from None
    raise ImportError(
        f"fastopt's compiled kernels (fastopt._kernels) could not be imported from "
        f"{_folder!r}, which holds {', '.join(_built)}: {error}. {_how}") from error

import numpy as np

from . import optimizers as _optimizers
from . import reference as reference  # fastopt.reference, not in __all__
from . import schedules as schedules  # fastopt.schedules, not in __all__
from ._base import SlowPathWarning as SlowPathWarning
from ._config import register_with_threadpoolctl as _register_with_threadpoolctl
from ._config import show_config as show_config
from ._settings import get_flush_denormals as get_flush_denormals
from ._settings import get_num_threads as get_num_threads
from ._settings import get_slow_path_warning as get_slow_path_warning
from ._settings import set_flush_denormals as set_flush_denormals
from ._settings import set_num_threads as set_num_threads
from ._settings import set_slow_path_warning as set_slow_path_warning
from ._simd import simd_level as simd_level
from ._simd import simd_levels as simd_levels
from ._simd import sqrt_method as sqrt_method
from .checkpoint import load as load
from .checkpoint import save as save
from .clipping import clip_grad_norm as clip_grad_norm
from .optimizers import *  # noqa: F403 - every optimizer class
from .wrappers import Lookahead as Lookahead
from .wrappers import Partition as Partition

# `from fastopt import *` gives every name `from common.optimizer import *` gives a script of
# the first book, `np` included (that file has no __all__ and its scripts use its `np`), plus
# the optimizers beyond the book. `from fastopt.book import *` gives the book's names and no more.
__all__ = ["np"]
__all__ += _optimizers.__all__
__all__ += ["Lookahead", "Partition"]   # fastopt.wrappers: optimizers made of optimizers

# With threadpoolctl installed, threadpool_info() lists fastopt's pool and threadpool_limits()
# limits it (fastopt/_config.py); fastopt does not need threadpoolctl.
_register_with_threadpoolctl()
