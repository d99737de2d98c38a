"""Gradient clipping by global L2 norm, compiled: one reduction pass, one scaling pass.

The norm is summed in float64 for float32 and float64 grads alike, in the fixed blocking that
``fastopt.reference.sum_of_squares`` defines, so it has the same bits at every SIMD level and
thread count, within about 1e-13 relative of the exact sum. Grads the compiled loops cannot
read (non-contiguous views, float16, scalars) are summed by that NumPy definition, with the
same bits.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import reference
from ._core import clip_coefficient
from ._simd import kernels as _kernels
from ._validation import check_option, to_float

__all__ = ["clip_coefficient", "clip_grad_norm", "global_norm"]


def global_norm(grads: Sequence[Any]) -> float:
    """The L2 norm of all ``grads`` together (same bits as ``reference.global_norm``)."""
    total = 0.0
    for grad in grads:
        part = _kernels.sum_of_squares(grad)
        total += reference.sum_of_squares(grad) if part is None else part
    return math.sqrt(total)


def clip_grad_norm(grads: Mapping[Any, Any] | Sequence[Any], max_norm: float, *,
                   error_if_nonfinite: bool = False) -> float:
    """Scale ``grads`` in place so that their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the norm of all grads together is computed (in
    float64, see the module docstring); if it exceeds ``max_norm``, every grad is multiplied
    in place, in its own dtype, by ``max_norm / (norm + 1e-6)``. A nan or infinite norm
    scales the grads by nan or 0, as torch does, unless ``error_if_nonfinite``.

    Parameters
    ----------
    grads : dict or list of ndarray
        Floating-point arrays, updated in place (they must be writeable).
    max_norm : float
        The largest norm allowed, > 0.
    error_if_nonfinite : bool, default False, keyword-only
        Raise a ValueError, changing nothing, if the norm is nan or infinite.

    Returns
    -------
    float
        The global norm before clipping.
    """
    if isinstance(grads, Mapping):
        items = list(grads.items())
    elif isinstance(grads, (list, tuple)):
        items = list(enumerate(grads))
    else:
        raise TypeError(f"grads must be a dict, list or tuple of arrays; got "
                        f"{type(grads).__name__}")
    limit = to_float("max_norm", max_norm)
    if not limit > 0:
        raise ValueError(f"max_norm must be > 0; got {max_norm!r}")
    check_option("error_if_nonfinite", error_if_nonfinite)
    arrays = []
    for key, grad in items:
        if not isinstance(grad, np.ndarray) or grad.dtype.kind != "f":
            what = f"dtype {grad.dtype}" if isinstance(grad, np.ndarray) else type(grad).__name__
            raise TypeError(f"grad {key!r} is {what}; expected a floating-point ndarray")
        if not grad.flags.writeable:
            raise ValueError(f"grad {key!r} is read-only; clip_grad_norm scales grads in place")
        arrays.append(grad)
    norm = global_norm(arrays)
    if error_if_nonfinite and not math.isfinite(norm):
        raise ValueError(f"the total norm of the grads is {norm}, so they cannot be clipped; "
                         f"pass error_if_nonfinite=False to scale them anyway (as torch does)")
    factor = clip_coefficient(norm, limit)
    if factor is not None:
        if not _kernels.scale_in_place(arrays, factor):
            for grad in arrays:
                if not _kernels.scale_in_place([grad], factor):
                    grad *= factor
    return norm
