"""Data-parallel training on MPI: fused gradient averaging and sharded optimizer state.

Install the extra (``pip install "fastopt[mpi]"``: mpi4py and MPICH from wheels) and launch
the usual way, ``mpiexec -n 4 python train.py``. ``import fastopt`` never imports this module
or mpi4py; importing it without mpi4py raises an ImportError that says what to install.
Importing it installs the safety net described under "A rank that leaves" below.

Two tools, both collective (every rank of the communicator calls them, with the same keys,
shapes and dtypes, in the same order):

``GradientAverager``
    ``averager.average(grads)`` replaces every grad, in place, by its mean over the ranks:
    the grads are packed into one contiguous buffer per dtype (kept and reused across calls),
    summed with one ``comm.Allreduce`` per dtype, divided by the number of ranks and copied
    back (a grad of 1 MiB or more is reduced in place on its own: packing it only costs).
    Each rank then runs an ordinary fastopt optimizer on the whole model.

``ShardedOptimizer``
    ZeRO stage 1 (Rajbhandari et al. 2020): wraps a fastopt optimizer so that each rank keeps
    the optimizer state of only its share of the params. How they are split depends on the
    rule (``OptimizerCore._elementwise()``):

    - an elementwise rule (each element's step reads only that element: SGD, Adam, NAdam,
      ADOPT, the Schedule-Free rules, ...) is split by elements. Per dtype, the params are
      seen as one virtual concatenation in key order, padded to W equal blocks; rank r owns
      block r. Its part of each param is the 1-D view ``param.reshape(-1)[a:b]``, and the
      wrapped optimizer updates the list of those views in place with the compiled loops, so
      its state arrays are share-sized. One step: pack the grads into the dtype's flat
      buffer, ``Reduce_scatter_block`` (sum) so each rank receives the summed grads of its
      block, divide by W, clip by the global norm if asked, update the share, pack the
      share's params into its block, ``Allgather`` the blocks in place and copy them out
      into every param.
    - any other rule (LAMB and LARS: trust ratios from norms of the whole param; Adafactor:
      row and column moments; Muon: Newton-Schulz on whole matrices) is split by whole
      params. Per dtype, in key order, param i goes to the rank whose equal block
      ``[r*N/W, (r+1)*N/W)`` of the N elements holds its middle element, so each rank owns a
      contiguous run of whole params (possibly none). The wrapped optimizer updates the
      rank's own params themselves, from views of the averaged grads in the params' shapes:
      each param's step is a single process's on the same grads, bit for bit. One step is as
      above with ``Reduce_scatter`` and ``Allgatherv`` on the runs (their element counts, no
      padding). The balance is by whole params: one param larger than N/W puts its whole
      state and update on one rank.

Only buffer-protocol collectives (the uppercase methods) are used: nothing is pickled.

Bits and bounds
---------------
- Every rank ends every ``ShardedOptimizer`` step with bit-identical params by construction:
  each element (each whole param, for a rule split by whole params) is computed by its owner
  only and copied to the others.
- For a fixed number of ranks, runs repeat bit for bit: MPI's reductions for a given rank
  count and message size follow a fixed order (MPICH's do), and everything else is the
  compiled loops.
- Against one process on the same global batch: each averaged grad is
  ``(g_0 + ... + g_{W-1}) / W``, summed in MPI's order rather than NumPy's left to right.
  Addition is commutative in IEEE arithmetic, so with two ranks the sum, and so the whole
  step, is the same bits. With W > 2 ranks the two sums of W terms differ by at most
  ``2*gamma_{W-1}*sum_i |g_i|`` (``gamma_n = n*u/(1 - n*u)``, u the unit roundoff: 2**-53
  for float64, 2**-24 for float32), and after the division the averages by at most
  ``2*u*sum_i |g_i|`` to first order: two units of the last place of the sum of the
  magnitudes. The step is then exactly the single-process step on those averaged grads:
  the same compiled loops, bit for bit. Clipping adds one difference: the global norm sums
  the blocked squares of each rank's pieces (or params) and then the ranks' sums in rank
  order, a different association of the same float64 sum than one process's (both within
  1e-12 relative of the exact sum, ``fastopt.clipping``), so its bits may differ from one
  process's, with either split.
  How far whole trajectories drift apart from such differences depends on the optimizer and
  the problem, not on fastopt (docs/distributed.md gives measured figures).

Errors
------
Each rank validates its inputs before any collective on data, then the ranks agree on the
outcome with one small ``Allreduce`` of nine integers: the lowest failing rank, a
fingerprint of the keys, shapes and dtypes, a digest of the sharded optimizer's
configuration (class, hyperparameters and schedules, options and settings,
``max_grad_norm``, the ``weight_decay_filter``'s answers, ``set_flush_denormals``) and its
step count, and whether a rank is leaving (below). If any rank failed, or the ranks' layouts
or configurations differ, every rank raises and nothing changes anywhere (a failing rank
raises its own error, the others a RuntimeError naming it; a configuration mismatch is a
ValueError on every rank that names each setting that differs and its value on each rank,
exchanged as text only then), instead of the others waiting forever or each rank stepping
with its own settings. The digest is recomputed only when a setting is no longer the same
object or an equal value, so the check adds no collective, and per step only a comparison of
the settings with the last step's. An error after that point (none is expected: everything
was checked) would leave the ranks' params inconsistent, so it aborts the job with
``comm.Abort``.

A rank that leaves
------------------
A collective waits for every rank, and so does ``MPI_Finalize`` at exit: one rank that stops
while the others train would hang the whole job. Importing this module therefore installs:

- a ``sys.excepthook`` that, after printing the traceback as usual, aborts the job
  (``MPI_Abort``) when a rank of a job of several ranks ends with an uncaught exception;
  ``python -m mpi4py train.py`` does the same, and is not needed;
- an exit handler: a rank whose program ends any other way (it returns, or calls
  ``sys.exit`` with any status) takes part in one last agreement on each communicator this
  module has used, marked "leaving". At a normal end every rank does the same, the last
  agreement completes when the last rank gets there (as ``MPI_Finalize`` would) and the job
  exits as usual, however long a rank works on alone. A rank still training is waiting in,
  or will next call, the agreement that starts every collective operation here, so it meets
  the leaving rank's: both see that one rank left while another did not, print which, and
  abort the job with status 1.

Not covered (the job hangs, as it would without fastopt): a rank that leaves before any
collective operation of this module, or while the others wait in a collective of the
program's own (``comm.Barrier()``, ``comm.gather``...), or while they train on a
communicator this module first used after another one (the exit agreements go in that
order).
"""
from __future__ import annotations

import atexit
import copy
import hashlib
import itertools
import json
import math
import numbers
import os
import re
import sys
import time
import traceback
import types
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import reference
from ._base import Optimizer
from ._core import OptimizerCore
from ._settings import get_flush_denormals
from ._simd import kernels as _kernels
from ._validation import decision
from .clipping import clip_coefficient
from .schedules import Schedule
from .wrappers import Lookahead, Partition

try:
    # mpi4py ships its own stubs; the ignore is for type-checking without the extra.
    from mpi4py import MPI  # type: ignore[import-not-found, unused-ignore]
except ImportError as error:   # pragma: no cover - tested in a subprocess without mpi4py
    raise ImportError(
        "fastopt.distributed needs mpi4py and an MPI library, which fastopt itself does not "
        "require: install them with `pip install \"fastopt[mpi]\"` (mpi4py and MPICH from "
        f"wheels) or `pip install mpi4py mpich`. ({error})") from error

__all__ = ["GradientAverager", "ShardedOptimizer", "gather_state", "load_gathered_state",
           "scatter_state"]

# An mpi4py communicator (``MPI.COMM_WORLD``, a ``Split`` of it), or an object with the same
# uppercase methods: Get_rank, Get_size, Allreduce, Reduce_scatter_block, Allgather, Abort;
# Reduce_scatter and Allgatherv for a rule split by whole params (Allgatherv also to describe
# a configuration mismatch).
Comm = Any

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _items(container: Any, what: str) -> list[tuple[Any, Any]]:
    """``(key, value)`` of a dict in its order, or ``(position, value)`` of a list/tuple."""
    if isinstance(container, Mapping):
        return list(container.items())
    if isinstance(container, (list, tuple)):
        return list(enumerate(container))
    raise TypeError(f"{what} must be a dict of arrays (or a list or tuple of arrays); got "
                    f"{type(container).__name__}")


def _fingerprint(layout: Sequence[tuple[Any, tuple[int, ...], np.dtype[Any]]]) -> int:
    """A 31-bit digest of keys, shapes and dtypes, the same in every process (``hash`` of a
    str is salted per process)."""
    text = repr([(key, shape, dtype.str) for key, shape, dtype in layout])
    return zlib.crc32(text.encode("utf-8", "backslashreplace")) & 0x7FFFFFFF


# --- the agreement before every collective operation ---------------------------------------
#
# Every collective operation of this module (constructing a ShardedOptimizer, its update and
# state_dict, GradientAverager.average) starts with one Allreduce (MIN) of these int64 flags,
# before any data is exchanged. A pair (x, -x) gives the minimum and the maximum of x over the
# ranks in the same reduction, so "every rank has the same x" is min == -min(-x).
_FAILED = 0              # the lowest rank whose local checks failed, else the size
_LAYOUT = 1              # fingerprint of keys, shapes and dtypes; 2: its negative
_CONFIG = 3              # digest of the optimizer's configuration (0 for the averager); 4: -
_STEP = 5                # the wrapped optimizer's ``iter`` (0 for the averager); 6: -
_LEFT = 7                # the lowest rank whose program is ending (see _leave), else the size
_WORKING = 8             # -1 from a rank that is working, 0 from one that is ending
_FLAGS = 9


def _agree(comm: Comm, failure: BaseException | None, fingerprint: int, what: str,
           config: ShardedOptimizer | None = None) -> None:
    """Make every rank raise if any rank failed its local checks, the layouts differ or the
    sharded optimizers are configured differently; abort the job if a rank's program ended.

    One ``Allreduce`` (MIN) of ``_FLAGS`` int64. Every rank sees the same reduced flags, so
    every rank takes the same branch below (only the configurations' details, on a mismatch,
    need a second exchange).
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    digest = step = 0
    if config is not None:
        try:
            digest, step = config._config_digest(), min(int(config.optimizer.iter), 1 << 62)
        except Exception as error:   # an unusable setting: this rank fails, the others wait
            failure = failure or error
    flags = np.array([rank if failure is not None else size, fingerprint, -fingerprint,
                      digest, -digest, step, -step, size, -1], dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.MIN)
    _remember(comm)
    if flags[_LEFT] < size:
        _abort(comm, f"rank {flags[_LEFT]} of {size} ended (its program returned or called "
                     f"sys.exit) while rank {rank} waits for it in a collective operation of "
                     f"fastopt.distributed; aborting the MPI job so that it does not wait "
                     f"forever")
        raise RuntimeError(f"rank {flags[_LEFT]} has ended; the other ranks cannot continue")
    if failure is not None:
        raise failure
    if flags[_FAILED] < size:
        raise RuntimeError(f"rank {flags[_FAILED]} rejected its {what} (its own error says "
                           f"why), so every rank stopped before exchanging data; nothing was "
                           f"changed")
    if flags[_LAYOUT] != -flags[_LAYOUT + 1]:
        raise ValueError(f"the ranks passed different {what}: the keys, their order, shapes or "
                         f"dtypes differ between ranks; every rank must pass the same layout")
    if config is not None and (flags[_CONFIG] != -flags[_CONFIG + 1]
                               or flags[_STEP] != -flags[_STEP + 1]):
        raise ValueError(_differences(comm, config._describe()))


def _differences(comm: Comm, fields: dict[str, str]) -> str:
    """What differs between the ranks' configurations (collective: every rank calls it).

    Each rank's ``fields`` travel as UTF-8 JSON text, with one ``Allgather`` of the lengths
    and one ``Allgatherv`` of the bytes (nothing is pickled).
    """
    data = np.frombuffer(json.dumps(list(fields.items())).encode("utf-8"), dtype=np.uint8)
    lengths = np.zeros(comm.Get_size(), dtype=np.int64)
    comm.Allgather(np.array([data.size], dtype=np.int64), lengths)
    received = np.empty(int(lengths.sum()), dtype=np.uint8)
    comm.Allgatherv(data, [received, lengths.tolist()])
    everyone = []
    offset = 0
    for length in lengths.tolist():
        everyone.append(dict(json.loads(received[offset:offset + length].tobytes())))
        offset += length
    names = list(dict.fromkeys(name for each in everyone for name in each))
    if len({each["class"] for each in everyone}) > 1:
        # Other classes have other hyperparameters: name the class, and what they share.
        names = [name for name in names if name == "class"
                 or all(name in each for each in everyone)]
    parts = []
    for name in names:
        ranks: dict[str, list[int]] = {}
        for rank, each in enumerate(everyone):
            ranks.setdefault(each.get(name, "(none)"), []).append(rank)
        if len(ranks) > 1:
            parts.append(f"{name}: " + ", ".join(
                f"{_shorten(text)} on {_rank_list(members)}" for text, members in ranks.items()))
    return (f"the ranks' sharded optimizers are configured differently, so a step would mix "
            f"their updates: {'; '.join(parts)}. Every rank must wrap the same optimizer class "
            f"with the same hyperparameters, schedules, options, settings, max_grad_norm and "
            f"weight_decay_filter answers, at the same step, with the same "
            f"set_flush_denormals setting; nothing was changed on any rank")


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _rank_list(ranks: list[int]) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    shown = ", ".join(map(str, ranks[:8])) + (", ..." if len(ranks) > 8 else "")
    return f"ranks {shown}"


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _text(value: Any) -> str:
    """A setting as text that is the same in every process for the same setting: numbers as
    their float's repr, fastopt's schedules as their repr, a function as its module, name and
    line, any other object as its repr without memory addresses."""
    try:
        if value is None or isinstance(value, (bool, np.bool_)):
            return repr(None if value is None else bool(value))
        if isinstance(value, numbers.Real):
            try:
                return repr(float(value))
            except OverflowError:
                return repr(value)
        if isinstance(value, types.FunctionType):
            return (f"{value.__module__}.{value.__qualname__} (line "
                    f"{value.__code__.co_firstlineno})")
        if isinstance(value, Schedule):
            return repr(value)
        return _ADDRESS.sub("", repr(value))
    except Exception:   # a repr that fails (or recurses too deep): its type is what is left
        return f"a {type(value).__module__}.{type(value).__qualname__}"


# --- the safety net: a rank that leaves ends the job (the module docstring says how) ------
_comms: list[Comm] = []
_aborting = False


def _remember(comm: Comm) -> None:
    """Record a communicator on which every rank has taken part in an agreement."""
    if not any(known is comm for known in _comms):
        _comms.append(comm)


def _abort(comm: Comm, message: str, status: int = 1) -> None:
    """Print ``message`` and abort the MPI job with ``status``."""
    global _aborting
    _aborting = True
    print(f"fastopt.distributed: {message}", file=sys.stderr, flush=True)
    time.sleep(0.2)   # so that the launcher can forward the message before it ends the job
    comm.Abort(status)
    if isinstance(comm, MPI.Comm):
        # MPICH's MPI_Abort can return before the launcher ends the process; run no more
        # Python code here (a process that exits without MPI_Finalize ends the job too).
        os._exit(status)
    _aborting = False   # only reached with a communicator object whose Abort returns


def _mpi_running() -> bool:
    return bool(MPI.Is_initialized() and not MPI.Is_finalized())


def _leave() -> None:
    """At exit: the last agreement on every communicator used, marked "ending" (see above)."""
    if _aborting or not _mpi_running():
        return
    for comm in list(_comms):
        try:
            if isinstance(comm, MPI.Comm) and comm == MPI.COMM_NULL:   # freed
                continue
            rank, size = comm.Get_rank(), comm.Get_size()
            flags = np.zeros(_FLAGS, dtype=np.int64)
            flags[_FAILED] = size
            flags[_LEFT] = rank
            comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.MIN)
        except Exception as error:   # an MPI error at exit: nothing left to protect
            print(f"fastopt.distributed: the exit agreement failed ({error})", file=sys.stderr)
            continue
        if flags[_WORKING] < 0:
            _abort(comm, f"rank {rank} of {size} ended (its program returned or called "
                         f"sys.exit) while other ranks still wait for it in a collective "
                         f"operation of fastopt.distributed; aborting the MPI job so that they "
                         f"do not wait forever")
            return


_previous_excepthook = sys.excepthook


def _excepthook(kind: type[BaseException], value: BaseException, trace: Any) -> None:
    """Print the exception as usual; then, in a job of several ranks, abort it."""
    _previous_excepthook(kind, value, trace)
    if _aborting or not _mpi_running():
        return
    world = MPI.COMM_WORLD
    if world.Get_size() > 1:
        _abort(world, f"rank {world.Get_rank()} of {world.Get_size()} ended with an uncaught "
                      f"{kind.__name__}; aborting the MPI job so that the other ranks do not "
                      f"wait for it forever", 130 if issubclass(kind, KeyboardInterrupt) else 1)


sys.excepthook = _excepthook
atexit.register(_leave)


def _check_grads_layout(grads: Any) -> list[tuple[Any, np.ndarray[Any, Any]]]:
    items = _items(grads, "grads")
    for key, grad in items:
        if not isinstance(grad, np.ndarray):
            raise TypeError(f"grad {key!r} is a {type(grad).__name__}; expected a float32 or "
                            f"float64 ndarray")
        if grad.dtype not in _DTYPES:
            raise TypeError(f"grad {key!r} has dtype {grad.dtype}; expected float32 or float64 "
                            f"(native byte order)")
        if not grad.flags.writeable:
            raise ValueError(f"grad {key!r} is read-only; its mean is written into it in place")
    return items


class GradientAverager:
    """Average grads over the ranks, in place, with a few fused ``Allreduce`` calls.

    Parameters
    ----------
    comm : mpi4py communicator, optional
        The ranks to average over; default ``MPI.COMM_WORLD``.
    direct_bytes : int, default 1 MiB, keyword-only
        A C-contiguous grad of at least this many bytes is reduced in place by its own
        ``Allreduce``: it is a large contiguous buffer already, and packing it would only add
        two copies (bench/investigations/mpi.py: 4x slower for 1e7 params in 10 arrays). All
        other grads are packed per dtype into one buffer each.

    Notes
    -----
    The small grads of each dtype are packed, in key order, into one contiguous buffer that is
    allocated at the first call and reused (grown only if a later call needs more), summed with
    ``comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)``, divided by the number of ranks in
    the grads' dtype and copied back. Each mean is ``(g_0 + ... + g_{W-1}) / W`` with the sum
    in MPI's order; see the module docstring for how it compares with NumPy's.

    Examples
    --------
    >>> averager = GradientAverager()                      # doctest: +SKIP
    >>> loss, grads = network.loss_and_gradient(x, t)      # doctest: +SKIP
    >>> averager.average(grads)                            # doctest: +SKIP
    >>> optimizer.update(network.params, grads)            # doctest: +SKIP
    """

    def __init__(self, comm: Comm = None, *, direct_bytes: int = 1 << 20) -> None:
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.direct_bytes = direct_bytes
        self._buffers: dict[np.dtype[Any], np.ndarray[Any, Any]] = {}

    def average(self, grads: Mapping[Any, Any] | Sequence[Any]) -> None:
        """Replace each grad, in place, by its mean over the ranks (collective).

        Parameters
        ----------
        grads : dict or list of ndarray
            Writeable float32 or float64 arrays of any layout; every rank passes the same
            keys in the same order, with the same shapes and dtypes.

        Raises
        ------
        TypeError, ValueError
            On the rank whose grads are not usable; RuntimeError on the others; ValueError on
            all ranks if their layouts differ. No grad is changed on any rank.
        """
        failure: BaseException | None = None
        fingerprint = 0
        items: list[tuple[Any, np.ndarray[Any, Any]]] = []
        try:
            items = _check_grads_layout(grads)
            fingerprint = _fingerprint([(key, grad.shape, grad.dtype) for key, grad in items])
        except (TypeError, ValueError) as error:
            failure = error
        _agree(self.comm, failure, fingerprint, "grads")
        size = self.comm.Get_size()
        packed = []
        for _, grad in items:
            # Which call reduces a grad depends on its size only, the same on every rank (the
            # layouts agree); a large grad that is not C-contiguous goes through a copy.
            if grad.nbytes >= self.direct_bytes:
                if grad.flags.c_contiguous:
                    self.comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
                    np.divide(grad, size, out=grad)
                else:
                    copy = np.ascontiguousarray(grad)
                    self.comm.Allreduce(MPI.IN_PLACE, copy, op=MPI.SUM)
                    np.divide(copy, size, out=grad)
            else:
                packed.append(grad)
        for dtype in _DTYPES:
            group = [grad for grad in packed if grad.dtype == dtype]
            total = sum(grad.size for grad in group)
            if total == 0:
                continue
            buffer = self._buffers.get(dtype)
            if buffer is None or buffer.size < total:
                buffer = self._buffers[dtype] = np.empty(total, dtype)
            flat = buffer[:total]
            offset = 0
            for grad in group:
                np.copyto(flat[offset:offset + grad.size].reshape(grad.shape), grad)
                offset += grad.size
            self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
            np.divide(flat, size, out=flat)
            offset = 0
            for grad in group:
                np.copyto(grad, flat[offset:offset + grad.size].reshape(grad.shape))
                offset += grad.size


def _offsets(sizes: list[int]) -> list[int]:
    """Where each of consecutive runs of ``sizes`` starts: 0, sizes[0], sizes[0] + sizes[1]..."""
    return list(itertools.accumulate(sizes, initial=0))[:-1]


class _Group:
    """The params of one dtype as one virtual concatenation in key order, and each rank's part
    of it: an equal block of elements (padded to ``size`` blocks) for an elementwise rule, a
    contiguous run of whole params (``owners``) for any other."""

    def __init__(self, dtype: np.dtype[Any], members: list[tuple[int, int]], sizes: list[int],
                 size: int, rank: int, whole: bool) -> None:
        self.dtype = dtype
        self.members = members             # (position in the key order, offset) per param
        self.total = total = sum(sizes)    # elements, without padding
        self.whole = whole
        if whole:
            # Param i goes to the rank whose equal block [r*total/W, (r+1)*total/W) holds its
            # middle element: the owners never decrease in key order, so each rank's params
            # are one contiguous run of ``flat``, and each run is within half a param of the
            # ideal cut (an empty param goes with the element at its offset).
            self.owners = [min(size - 1, (2 * offset + count) * size // (2 * total))
                           if total else 0
                           for (_, offset), count in zip(members, sizes, strict=True)]
            self.counts = [0] * size
            for owner, count in zip(self.owners, sizes, strict=True):
                self.counts[owner] += count
            self.displs = _offsets(self.counts)
            self.low = self.displs[rank]
            self.flat = np.zeros(total, dtype)
            self.grads = np.zeros(self.counts[rank], dtype)
        else:
            self.block = -(-total // size)     # elements per rank: ceil(total / size)
            self.owners = []
            self.low = rank * self.block
            self.flat = np.zeros(self.block * size, dtype)   # grads in, params out; reused
            self.grads = np.zeros(self.block, dtype)          # this rank's averaged grads
        # (index in the wrapped optimizer's list, start, stop in ``flat``) of this rank's
        # pieces of this group, which tile its block (its run).
        self.pieces: list[tuple[int, int, int]] = []

    def reduce_scatter(self, comm: Comm) -> None:
        """Sum ``flat`` over the ranks into this rank's ``grads`` (collective)."""
        if self.whole:
            if self.total:   # every rank skips alike: the layouts agree
                comm.Reduce_scatter(self.flat, self.grads, self.counts, op=MPI.SUM)
        else:
            comm.Reduce_scatter_block(self.flat, self.grads, op=MPI.SUM)

    def allgather(self, comm: Comm, flat: np.ndarray[Any, Any],
                  counts: list[int] | None = None) -> None:
        """Give every rank every rank's part of ``flat``, in place (collective); ``counts``:
        the parts' sizes for whole params, if not those of the params' elements."""
        if not self.whole:
            comm.Allgather(MPI.IN_PLACE, flat)
            return
        if flat.size:
            layout = (self.counts, self.displs) if counts is None else (counts,
                                                                        _offsets(counts))
            comm.Allgatherv(MPI.IN_PLACE, [flat, layout])


class ShardedOptimizer:
    """A fastopt optimizer whose state is split across the ranks (ZeRO stage 1).

    Parameters
    ----------
    optimizer : fastopt optimizer
        Any of fastopt's optimizers (``fastopt.Adam(...)``, ...) but ``Partition`` and
        ``Lookahead``, not yet used: it becomes this rank's optimizer of its share
        (``self.optimizer``), keeping the share's state by position: share-sized 1-D pieces
        for an elementwise rule, the whole state of each of the rank's own params for any
        other (see Notes). Its hyperparameters, schedules and options apply unchanged; its
        ``weight_decay_filter`` is asked here, once per param with the param's own key and
        whole array; its ``max_grad_norm`` clips by the global norm of all ranks' averaged
        grads (see Notes).
    params : dict or list of ndarray
        The model's params, as later passed to ``update``: writeable, C-contiguous float32 or
        float64 arrays, the same keys, shapes and dtypes on every rank (the values are
        overwritten by every step, so they may differ before the first one).
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``.

    Attributes
    ----------
    optimizer : fastopt optimizer
        The wrapped optimizer; ``optimizer.iter`` counts steps, the same on every rank.
    comm : mpi4py communicator
    grad_norm : float or None
        The global norm of the averaged grads at the last step (with ``max_grad_norm`` only).

    Notes
    -----
    The split: a rule whose ``_elementwise()`` is true is split by elements, W equal blocks of
    each dtype's elements, each rank updating 1-D views of its block's parts of the params. Any
    other rule (LAMB, LARS, Adafactor, Muon) is split by whole params: within each dtype, in
    key order, a param goes to the rank whose equal block of elements holds its middle
    element, so the owners never decrease and each rank's params are contiguous in the flat
    buffer (a rank may own none; it still takes part in every collective). The wrapped
    optimizer then gets the rank's params themselves and the averaged grads in the params'
    shapes: Adafactor factors the same rows and columns, Muon orthogonalises the same
    matrices, and each param's step is a single process's on the same grads, bit for bit. A
    rank's share is then whole params: one very large param puts all its state and its update
    on one rank. A param the rule does not take (Muon's 1-D ones) is refused here, on every
    rank, rather than by its owner's update.

    Clipping: the wrapped optimizer's own ``max_grad_norm`` would see only this rank's share.
    So each rank sums the blocked squares (``fastopt.clipping``) of its averaged share grads,
    piece (or param) by piece in the params' key order; the ranks ``Allgather`` those partial
    sums (one float64 each) and every rank adds them in rank order, so every rank has the same
    norm: within 1e-12 relative of the exact norm, as one process's, but not necessarily its
    bits (another association of the sum), with either split. If it exceeds
    ``max_grad_norm``, the averaged share grads (this wrapper's own buffer, never the caller's
    grads) are scaled in place by ``max_grad_norm / (norm + 1e-6)`` with the same float
    multiplication the fused path uses, and the wrapped optimizer runs that step with
    ``max_grad_norm`` set to None (restored afterwards).

    Construction is collective: the ranks check that they passed the same layout, and that
    their optimizers are configured the same (class, hyperparameters and schedules, options
    and settings, ``max_grad_norm``, the ``weight_decay_filter``'s answers,
    ``set_flush_denormals``). Every ``update`` and ``state_dict`` checks the configuration and
    the step count again, in the Allreduce that starts it; a setting changed on some ranks
    only makes every rank raise a ValueError naming it, before anything changes. A schedule
    of your own is compared by its module, name and line (fastopt's schedules by their
    parameters), any other object by its repr.
    """

    def __init__(self, optimizer: Optimizer, params: Mapping[Any, Any] | Sequence[Any],
                 comm: Comm = None) -> None:
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.optimizer = optimizer
        self.grad_norm: float | None = None
        self._rank = self.comm.Get_rank()
        self._size = self.comm.Get_size()
        self._config_values: tuple[Any, ...] | None = None
        self._digest = 0
        failure: BaseException | None = None
        fingerprint = 0
        try:
            self._plan(optimizer, params)
            fingerprint = _fingerprint([(key, array.shape, array.dtype)
                                        for key, array in zip(self._keys, self._arrays,
                                                              strict=True)])
        except (TypeError, ValueError) as error:
            failure = error
        _agree(self.comm, failure, fingerprint, "params", self if failure is None else None)
        self._fingerprint = fingerprint
        if self._decisions is not None:
            optimizer._decays = [self._decisions[position] for position, _, _ in self._pieces]
        self._norm_order = sorted(range(len(self._pieces)), key=lambda i: self._pieces[i][0])
        self._norm_part = np.zeros(1)
        self._norm_parts = np.zeros(self._size)

    # --- layout ------------------------------------------------------------------------------

    def _plan(self, optimizer: Optimizer, params: Any) -> None:
        """Check the optimizer and params; lay out the groups and this rank's pieces."""
        if isinstance(optimizer, (Partition, Lookahead)):
            name = type(optimizer).__name__
            raise TypeError(f"a {name} cannot be sharded: ShardedOptimizer splits one "
                            f"optimizer's params into flat pieces across the ranks, but a "
                            f"Partition routes whole params by key (and clips over all of "
                            f"them) and a Lookahead keeps whole slow copies; average the grads "
                            f"with GradientAverager and step the {name} on every rank instead")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be one of fastopt's optimizers (fastopt.Adam(...), "
                            f"...); got {type(optimizer).__name__}")
        if optimizer.iter != 0 or any(state is not None for state in optimizer._used_states()):
            raise ValueError("the optimizer has already been used; wrap a new one, and give it "
                             "a single-process optimizer's state with scatter_state")
        items = _items(params, "params")
        for key, param in items:
            if not isinstance(param, np.ndarray):
                raise TypeError(f"param {key!r} is a {type(param).__name__}; the sharded "
                                f"optimizer takes float32 or float64 ndarrays")
            if param.dtype not in _DTYPES:
                raise TypeError(f"param {key!r} has dtype {param.dtype}; expected float32 or "
                                f"float64 (native byte order)")
            if not param.flags.c_contiguous:
                raise ValueError(f"param {key!r} is not C-contiguous; the sharded optimizer "
                                 f"copies each param's memory to and from one flat buffer per "
                                 f"dtype, so params must be C-contiguous arrays "
                                 f"(np.ascontiguousarray, then update the model to use the "
                                 f"copy)")
            if not param.flags.writeable:
                raise ValueError(f"param {key!r} is read-only; params are updated in place")
            # Here, not at the owner's update: every rank raises, before anything changes.
            optimizer._check_param_shape(key, param)
        self._by_key = isinstance(params, Mapping)
        self._keys = [key for key, _ in items]
        self._arrays: list[np.ndarray[Any, Any]] = [param for _, param in items]
        chooser = optimizer.weight_decay_filter
        self._decisions = None if chooser is None else [
            decision(chooser, key, param) for key, param in items]
        # An elementwise rule is split by elements; any other rule (a norm of the whole param,
        # state of rows and columns, whole matrices) by whole params, in their shapes.
        self._whole = not optimizer._elementwise()
        self._groups: list[_Group] = []
        # (position in the key order, start, stop) of this rank's part of each param, group
        # by group: the wrapped optimizer's list positions (0, size for a whole param).
        self._pieces: list[tuple[int, int, int]] = []
        self._param_views: list[np.ndarray[Any, Any]] = []
        self._grad_views: list[np.ndarray[Any, Any]] = []
        self._grad_pieces: list[np.ndarray[Any, Any]] = []   # the same grads, 1-D
        for dtype in _DTYPES:
            positions = [position for position, param in enumerate(self._arrays)
                         if param.dtype == dtype]
            sizes = [self._arrays[position].size for position in positions]
            members = list(zip(positions, _offsets(sizes), strict=True))
            if not members or (sum(sizes) == 0 and not self._whole):
                continue
            group = _Group(dtype, members, sizes, self._size, self._rank, self._whole)
            self._groups.append(group)
            for i, (position, offset) in enumerate(members):
                array = self._arrays[position]
                if self._whole:
                    if group.owners[i] != self._rank:
                        continue
                    start, stop = 0, array.size
                else:
                    start = max(group.low, offset) - offset
                    stop = min(group.low + group.block, group.total, offset + array.size) \
                        - offset
                    if start >= stop:
                        continue
                group.pieces.append((len(self._pieces), offset + start, offset + stop))
                self._pieces.append((position, start, stop))
                grad = group.grads[offset + start - group.low:offset + stop - group.low]
                self._grad_pieces.append(grad)
                if self._whole:
                    self._param_views.append(array)
                    self._grad_views.append(grad.reshape(array.shape))
                else:
                    self._param_views.append(array.reshape(-1)[start:stop])
                    self._grad_views.append(grad)

    def _check(self, params: Any, grads: Any) -> None:
        """Raise if ``params`` are not this optimizer's arrays or ``grads`` do not match."""
        items = _items(params, "params")
        if isinstance(params, Mapping) != self._by_key or len(items) != len(self._arrays):
            raise ValueError(f"params must be the {len(self._arrays)} arrays given when "
                             f"constructing the sharded optimizer, in the same container")
        for (key, param), own_key, array in zip(items, self._keys, self._arrays, strict=True):
            if key != own_key or param is not array:
                raise ValueError(f"param {key!r} is not the array the sharded optimizer was "
                                 f"constructed with (expected the same keys, in the same order, "
                                 f"holding the same arrays: params are updated in place, never "
                                 f"replaced)")
            try:
                grad = grads[key]
            except (KeyError, IndexError, TypeError):
                raise KeyError(f"grads has no entry for param {key!r}; expected a grad for "
                               f"every param") from None
            if not isinstance(grad, np.ndarray):
                raise TypeError(f"grad {key!r} is a {type(grad).__name__}; expected an ndarray "
                                f"of its param's dtype {array.dtype} and shape {array.shape}")
            if grad.dtype != array.dtype:
                raise TypeError(f"grad {key!r} has dtype {grad.dtype} but its param has "
                                f"{array.dtype}; the sharded optimizer needs them equal")
            if grad.shape != array.shape:
                raise ValueError(f"grad {key!r} has shape {grad.shape} but its param has shape "
                                 f"{array.shape}; they must be equal (no broadcasting)")
        self.optimizer.check_hyperparameters()

    # --- the step ----------------------------------------------------------------------------

    def update(self, params: Mapping[Any, Any] | Sequence[Any],
               grads: Mapping[Any, Any] | Sequence[Any]) -> None:
        """One data-parallel step (collective): average the grads over the ranks, update this
        rank's share, and gather every param; return None.

        Parameters
        ----------
        params : dict or list of ndarray
            The params given at construction (the same arrays), updated in place.
        grads : dict or list of ndarray
            This rank's grads (of its part of the global batch): same keys, shapes and dtypes
            as the params, any memory layout. Never written.

        Raises
        ------
        TypeError, ValueError, KeyError
            On a rank whose inputs are not usable (RuntimeError on the others). Every rank
            raises, and nothing changes on any rank.
        ValueError
            On every rank, if the ranks' optimizers are configured differently or are at
            different steps: the message names each setting that differs and its value on each
            rank. Nothing changes on any rank.
        """
        failure: BaseException | None = None
        try:
            self._check(params, grads)
        except (TypeError, ValueError, KeyError) as error:
            failure = error
        _agree(self.comm, failure, self._fingerprint, "grads", self)
        try:
            self._step(grads)
        except BaseException:   # the ranks agreed to go ahead; a failure now would hang them
            traceback.print_exc()
            _abort(self.comm, f"rank {self._rank} failed during a step after every rank's "
                              f"inputs were checked (the ranks' params would differ); aborting "
                              f"the MPI job")
            raise   # only reached with a communicator whose Abort returns

    def _step(self, grads: Any) -> None:
        comm = self.comm
        for group in self._groups:
            for position, offset in group.members:
                array = self._arrays[position]
                np.copyto(group.flat[offset:offset + array.size].reshape(array.shape),
                          grads[self._keys[position]])
            group.reduce_scatter(comm)
            np.divide(group.grads, self._size, out=group.grads)
        limit = self.optimizer.max_grad_norm
        if limit is not None:
            self._clip(float(limit))
        try:
            self.optimizer.max_grad_norm = None
            self.optimizer.update(self._param_views, self._grad_views)
        finally:
            self.optimizer.max_grad_norm = limit
        for group in self._groups:
            for index, start, stop in group.pieces:
                group.flat[start:stop] = self._param_views[index].reshape(-1)
            group.allgather(comm, group.flat)
            for position, offset in group.members:
                array = self._arrays[position]
                np.copyto(array.reshape(-1), group.flat[offset:offset + array.size])

    def _clip(self, limit: float) -> None:
        """Scale the averaged share grads by the clip factor of the global norm."""
        part = 0.0
        for index in self._norm_order:   # key order, as a single process sums (W=1: its bits)
            grad = self._grad_pieces[index]
            value = _kernels.sum_of_squares(grad)
            part += reference.sum_of_squares(grad) if value is None else value
        self._norm_part[0] = part
        self.comm.Allgather(self._norm_part, self._norm_parts)
        total = 0.0
        for value in self._norm_parts.tolist():   # rank order, on every rank
            total += value
        self.grad_norm = norm = math.sqrt(total)
        factor = clip_coefficient(norm, limit)
        if factor is not None and not _kernels.scale_in_place(self._grad_pieces, factor):
            raise AssertionError("the share grads are always C-contiguous float arrays")

    # --- the configuration the ranks must share ----------------------------------------------

    def _config_digest(self) -> int:
        """A 62-bit digest of ``_describe()`` without the step count, recomputed only when a
        setting is no longer the same object or an equal value of the same type."""
        inner = self.optimizer
        values = (type(inner), get_flush_denormals(), inner.max_grad_norm, self._decisions,
                  *[getattr(inner, name) for name in inner._all_hyperparameters()],
                  *[getattr(inner, name) for name in (*inner._options, *inner._settings)])
        if not _same_values(values, self._config_values):
            fields = self._describe()
            del fields["iter"]   # compared on its own (two flags): it changes every step
            text = json.dumps(list(fields.items())).encode("utf-8")
            self._digest = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(),
                                          "little") >> 2
            self._config_values = values
        return self._digest

    def _describe(self) -> dict[str, str]:
        """Every setting that changes what a step computes, as text (``_text``)."""
        inner = self.optimizer
        kind = type(inner)
        fields = {"class": kind.__qualname__ if kind.__module__.startswith("fastopt.")
                  else f"{kind.__module__}.{kind.__qualname__}"}
        for name in (*inner._all_hyperparameters(), *inner._options, *inner._settings,
                     "max_grad_norm"):
            fields[name] = _text(getattr(inner, name))
        if self._decisions is None:
            fields["weight_decay_filter"] = "None"
        else:
            fields["weight_decay_filter"] = "set"
            for key, decision in zip(self._keys, self._decisions, strict=True):
                fields[f"weight_decay_filter({key!r}, param)"] = repr(decision)
        fields["set_flush_denormals"] = repr(get_flush_denormals())
        fields["iter"] = repr(inner.iter)
        return fields

    # --- introspection -----------------------------------------------------------------------

    def state_nbytes(self) -> int:
        """Bytes of optimizer state this rank holds (the wrapped optimizer's state arrays)."""
        return _state_nbytes(self.optimizer)

    # --- checkpoints ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """An ordinary checkpoint of the whole optimizer (collective: every rank calls it).

        The shares are gathered into the state a single-process optimizer of the wrapped class
        would have, and returned as its ``state_dict()``: ``fastopt.save`` writes it (from one
        rank), and a single process loads it with ``load_state_dict``, or a sharded optimizer
        of any rank count with ``ShardedOptimizer.load_state_dict``. Raises ValueError on
        every rank if the ranks' configurations or step counts differ (see ``update``).
        """
        full = self._unsharded()
        load_gathered_state(full, gather_state(self))
        return full.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take this rank's share of an ordinary checkpoint (``fastopt.load`` or any
        optimizer's ``state_dict()``); every rank calls it with the same checkpoint, and no
        data is exchanged. Raises, changing nothing, if the checkpoint does not fit."""
        full = self._unsharded()
        full.load_state_dict(state)
        scatter_state(self, full)

    def _unsharded(self) -> OptimizerCore:
        """A copy of the wrapped optimizer without its (share-sized) state."""
        full = copy.copy(self.optimizer)
        for name in full.state_names:
            setattr(full, name, None)
        full._decays = None
        full.__setstate__(full.__getstate__())   # its own lock
        return full

    def __repr__(self) -> str:
        return (f"ShardedOptimizer({self.optimizer!r}, rank {self._rank} of {self._size}, "
                f"{sum(stop - start for _, start, stop in self._pieces)} of "
                f"{sum(group.total for group in self._groups)} elements)")


def _same_values(values: tuple[Any, ...], known: tuple[Any, ...] | None) -> bool:
    """Whether each setting is the same object, or an equal value of the same type."""
    if known is None or len(values) != len(known):
        return False
    try:
        return all(value is old or (type(value) is type(old) and bool(value == old))
                   for value, old in zip(values, known, strict=True))
    except Exception:   # an __eq__ that raises or gives no truth value: compare by digest
        return False


def _state_nbytes(optimizer: OptimizerCore) -> int:
    total = 0
    for name in optimizer.state_names:
        state = getattr(optimizer, name)
        if state is not None:
            values = state.values() if isinstance(state, dict) else state
            total += sum(np.asarray(value).nbytes for value in values)
    return total


# --- checkpoints -------------------------------------------------------------------------------

def _step_attributes(optimizer: OptimizerCore) -> tuple[str, ...]:
    """The attributes a step sets: ``iter`` and the rule's float state (NAdam's
    ``mu_product``), as its declaration names them."""
    return ("iter", *optimizer._scalar_state)


def gather_state(sharded: ShardedOptimizer) -> dict[str, Any]:
    """The whole optimizer state, gathered from every rank (collective).

    Returns the state a single-process optimizer of the same class would have after the same
    steps on the same params, as an in-memory dict (every array a new copy)::

        {"class": "Adam",                       # the wrapped optimizer's class name
         "hyperparameters": {"lr": ..., ...},   # values or schedules, as set on it
         "options": {"amsgrad": False, ...},
         "settings": {},                        # Muon's ns_steps, ns_coefficients, ...
         "max_grad_norm": None,
         "weight_decay_filter": None,           # the callable, if one was given
         "step": {"iter": 10},                  # what a step counts (NAdam: mu_product too)
         "state": {"m": {"W1": array, ...}, "v": ...},   # by the params' keys (a list
                                                         # by position for list params);
                                                         # None before the first step;
                                                         # each of the shape the rule
                                                         # keeps (Adafactor: row_var...)
         "decays": None}                        # or the filter's answer per key

    Every rank receives all of it (one ``Allgather`` per state attribute and dtype, an
    ``Allgatherv`` of the owners' arrays for a rule split by whole params, after the
    agreement ``update`` starts with: every rank raises ValueError if the ranks' configurations
    or step counts differ, instead of waiting for a state another class does not have). Load it
    into a single-process optimizer with ``load_gathered_state``, then save it as any other
    (``fastopt.save``, where available).
    """
    _agree(sharded.comm, None, sharded._fingerprint, "params", sharded)
    inner = sharded.optimizer
    state: dict[str, Any] = {}
    for name in inner.state_names:
        shares = getattr(inner, name)
        if shares is None:
            state[name] = None
            continue
        full: list[Any] = [None] * len(sharded._arrays)
        for group in sharded._groups:
            if group.whole:
                _gather_whole(sharded, group, name, shares, full)
                continue
            group.flat[group.low:group.low + group.block] = 0   # the padding, if any
            for index, start, stop in group.pieces:
                group.flat[start:stop] = shares[index]
            group.allgather(sharded.comm, group.flat)
            for position, offset in group.members:
                array = sharded._arrays[position]
                full[position] = group.flat[offset:offset + array.size].reshape(
                    array.shape).copy()
        state[name] = dict(zip(sharded._keys, full, strict=True)) if sharded._by_key else full
    decays = None
    if sharded._decisions is not None:
        decays = (dict(zip(sharded._keys, sharded._decisions, strict=True)) if sharded._by_key
                  else list(sharded._decisions))
    return {"class": type(inner).__name__,
            "hyperparameters": {name: getattr(inner, name)
                                for name in inner._all_hyperparameters()},
            "options": {name: getattr(inner, name) for name in inner._options},
            "settings": {name: getattr(inner, name) for name in inner._settings},
            "max_grad_norm": inner.max_grad_norm,
            "weight_decay_filter": inner.weight_decay_filter,
            "step": {name: getattr(inner, name) for name in _step_attributes(inner)},
            "state": state,
            "decays": decays}


def _gather_whole(sharded: ShardedOptimizer, group: _Group, name: str, shares: list[Any],
                  full: list[Any]) -> None:
    """Every param's state ``name`` of a group of whole params, into ``full`` by position
    (collective: one ``Allgatherv`` of the owners' arrays, packed in key order). The state's
    shape is the rule's for the param's (Adafactor's rows and columns: not the param's)."""
    inner = sharded.optimizer
    shapes = [inner._state_shape(name, sharded._arrays[position].shape)
              for position, _ in group.members]
    sizes = [math.prod(shape) for shape in shapes]
    counts = [0] * sharded._size
    for owner, count in zip(group.owners, sizes, strict=True):
        counts[owner] += count
    flat = np.zeros(sum(sizes), group.dtype)
    offsets = _offsets(sizes)
    index = {position: index for index, (position, _, _) in enumerate(sharded._pieces)}
    for (position, _), offset, count in zip(group.members, offsets, sizes, strict=True):
        if position in index:
            flat[offset:offset + count] = shares[index[position]].reshape(-1)
    group.allgather(sharded.comm, flat, counts)
    for (position, _), offset, count, shape in zip(group.members, offsets, sizes, shapes,
                                                   strict=True):
        full[position] = flat[offset:offset + count].reshape(shape).copy()


def load_gathered_state(optimizer: OptimizerCore,
                        gathered: Mapping[str, Any]) -> None:
    """Give a single-process ``optimizer`` the state ``gather_state`` returned.

    Everything in ``gathered`` replaces what ``optimizer`` had (hyperparameters, options,
    settings, ``max_grad_norm``, the decay filter, step count and state arrays, copied); its
    next ``update`` on the same params continues the sharded run. Raises TypeError, changing
    nothing, if ``optimizer`` is not of the gathered class.
    """
    if type(optimizer).__name__ != gathered["class"]:
        raise TypeError(f"the gathered state is of a {gathered['class']}; cannot load it into "
                        f"a {type(optimizer).__name__}")
    for name, value in gathered["hyperparameters"].items():
        setattr(optimizer, name, value)
    for name, value in gathered["options"].items():
        setattr(optimizer, name, value)
    for name, value in gathered["settings"].items():
        setattr(optimizer, name, value)
    optimizer.max_grad_norm = gathered["max_grad_norm"]
    optimizer.weight_decay_filter = gathered["weight_decay_filter"]
    for name, value in gathered["step"].items():
        setattr(optimizer, name, value)
    for name, container in gathered["state"].items():
        setattr(optimizer, name, copy.deepcopy(container))
    optimizer._decays = copy.copy(gathered["decays"])
    optimizer._workspace_arrays = None   # scratch of the state replaced (Muon's): made anew


def scatter_state(sharded: ShardedOptimizer, optimizer: OptimizerCore) -> None:
    """Give ``sharded`` this rank's share of a single-process ``optimizer``'s state.

    Every rank calls it with the same single-process state (for example each loads the same
    checkpoint); no data is exchanged. ``optimizer`` must be of the wrapped optimizer's
    class, with state for every param under the same keys (or positions), of the params'
    dtypes and of the shapes the rule keeps for them (the params' own, but Adafactor's rows
    and columns), or none yet. Its hyperparameters, options, settings, ``max_grad_norm``,
    decay filter, step count and state are copied (a rule split by whole params keeps its
    own params' whole arrays, any other its pieces); the decay filter's answers are taken
    from ``optimizer`` where it has them, else asked again. Raises TypeError, ValueError or
    KeyError, changing nothing, if the state does not fit.
    """
    inner = sharded.optimizer
    if type(optimizer) is not type(inner):
        raise TypeError(f"cannot scatter a {type(optimizer).__name__}'s state into a sharded "
                        f"{type(inner).__name__}")
    shares: dict[str, Any] = {}
    for name in inner.state_names:
        container = getattr(optimizer, name)
        if container is None:
            shares[name] = None
            continue
        if isinstance(container, dict) != sharded._by_key:
            raise TypeError(f"state {name!r} is kept by "
                            f"{'key' if isinstance(container, dict) else 'position'}, but the "
                            f"sharded optimizer's params are a "
                            f"{'dict' if sharded._by_key else 'list'}")
        pieces = []
        for position, start, stop in sharded._pieces:
            key = sharded._keys[position]
            array = sharded._arrays[position]
            try:
                full = container[key]
            except (KeyError, IndexError):
                raise KeyError(f"state {name!r} has no entry for param {key!r}") from None
            shape = inner._state_shape(name, array.shape)
            if not isinstance(full, np.ndarray) or full.shape != shape \
                    or full.dtype != array.dtype:
                raise ValueError(f"state {name}[{key!r}] is not an array of shape {shape} (its "
                                 f"param's {array.shape}) and dtype {array.dtype}")
            if sharded._whole:
                pieces.append(np.array(full, order="C"))   # a copy, in its shape
            else:
                pieces.append(np.ascontiguousarray(full).reshape(-1)[start:stop].copy())
        shares[name] = pieces
    decisions = sharded._decisions
    source = getattr(optimizer, "_decays", None)
    if optimizer.weight_decay_filter is None:
        decisions = None
    elif source is not None:
        decisions = [bool(source[key]) for key in sharded._keys]
    elif optimizer.weight_decay_filter is not inner.weight_decay_filter or decisions is None:
        decisions = [decision(optimizer.weight_decay_filter, key, array)
                     for key, array in zip(sharded._keys, sharded._arrays, strict=True)]
    step = {name: getattr(optimizer, name) for name in _step_attributes(optimizer)}
    # --- apply: nothing above changed anything ----------------------------------------------
    for name in inner._all_hyperparameters():
        setattr(inner, name, getattr(optimizer, name))
    for name in (*inner._options, *inner._settings):
        setattr(inner, name, getattr(optimizer, name))
    inner.max_grad_norm = optimizer.max_grad_norm
    inner.weight_decay_filter = optimizer.weight_decay_filter
    for name, value in step.items():
        setattr(inner, name, value)
    for name, pieces in shares.items():
        setattr(inner, name, pieces)
    sharded._decisions = decisions
    inner._workspace_arrays = None   # scratch of the state replaced (Muon's): made anew
    inner._decays = None if decisions is None else [decisions[position]
                                                    for position, _, _ in sharded._pieces]
