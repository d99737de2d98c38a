"""fastopt: the optimizers of *Deep Learning from Scratch*, compiled, exact and in place.

Replace ``from common.optimizer import *`` with ``from fastopt import *``: same constructors,
same state, same numbers (bit for bit in float64), no temporary arrays.
"""
__version__ = "0.1.0"

try:
    from . import _kernels  # noqa: F401
except ImportError as error:   # pragma: no cover - exercised only without a build
    raise ImportError(
        f"fastopt's compiled kernels (fastopt._kernels) could not be imported from "
        f"{__path__[0]!r}: {error}. Install fastopt with `pip install .` and import it from "
        f"outside the source tree (run `pytest`, not `python -m pytest`, at the repository "
        f"root), or build in place with `python setup.py build_ext --inplace`."
    ) from error

from . import reference as reference  # fastopt.reference, not in __all__
from ._base import SlowPathWarning as SlowPathWarning
from ._settings import get_flush_denormals as get_flush_denormals
from ._settings import get_num_threads as get_num_threads
from ._settings import get_slow_path_warning as get_slow_path_warning
from ._settings import set_flush_denormals as set_flush_denormals
from ._settings import set_num_threads as set_num_threads
from ._settings import set_slow_path_warning as set_slow_path_warning
from ._simd import simd_level as simd_level
from ._simd import simd_levels as simd_levels
from .clipping import clip_grad_norm as clip_grad_norm
from .optimizers import (
    SGD,
    AdaGrad,
    Adadelta,
    Adam,
    AdamW,
    Adamax,
    Lion,
    Momentum,
    NAdam,
    Nesterov,
    RAdam,
    RMSProp,
    RMSprop,
)

# `from fastopt import *` brings the book's class names, like `from common.optimizer import *`,
# and the optimizers beyond the book.
__all__ = ["SGD", "AdaGrad", "Adadelta", "Adam", "AdamW", "Adamax", "Lion", "Momentum", "NAdam",
           "Nesterov", "RAdam", "RMSProp", "RMSprop"]
