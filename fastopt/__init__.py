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

import numpy as np

from . import reference as reference  # fastopt.reference, not in __all__
from ._settings import get_flush_denormals as get_flush_denormals
from ._settings import get_num_threads as get_num_threads
from ._settings import set_flush_denormals as set_flush_denormals
from ._settings import set_num_threads as set_num_threads
from ._simd import simd_level as simd_level
from ._simd import simd_levels as simd_levels
from .optimizers import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSProp, RMSprop

# `from fastopt import *` gives every name `from common.optimizer import *` gives a script of
# the first book, `np` included (that file has no __all__ and its scripts use its `np`), plus
# fastopt's own public names. `from fastopt.book import *` gives the book's names and no more.
__all__ = ["SGD", "AdaGrad", "Adam", "Momentum", "Nesterov", "RMSProp", "RMSprop", "np"]
