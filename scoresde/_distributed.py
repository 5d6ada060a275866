"""Rank and world of a ``torch.distributed`` run, and collective checks that end every rank with a clear error.

The library never initialises or destroys a process group itself (the command line does, under
``torchrun``); these helpers read the group that the user initialised and fall back to a single
process (rank 0 of 1) when there is none.

* :func:`rank`, :func:`world_size`, :func:`is_main`: where this process stands;
* :func:`barrier`: wait for every rank, turning a failed or timed-out wait into :class:`DistributedError`;
* :func:`raise_if_any`: every rank passes its own error (or ``None``); if any rank has one, every rank
  raises, so that a failure on one rank (e.g. rank 0 writing a checkpoint) stops the others instead of
  leaving them waiting;
* :func:`check_agree`: every rank passes a value that must be the same on all of them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistributedError",
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "raise_if_any",
    "check_agree",
    "all_gather_rows",
    "collective_failed",
    "rank_failed",
    "row_bounds",
]


class DistributedError(RuntimeError):
    """A distributed run that cannot go on: another rank failed or left, a wait timed out, or the ranks disagree."""


def is_distributed(group: Any = None) -> bool:
    """Whether a process group is initialised and has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank(group: Any = None) -> int:
    """This process's rank in ``group`` (default: the default group); 0 without a process group."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def world_size(group: Any = None) -> int:
    """The number of ranks in ``group`` (default: the default group); 1 without a process group."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def is_main(group: Any = None) -> bool:
    """Whether this process is rank 0 (the one that writes files and prints); true without a process group."""
    return rank(group) == 0


def collective_failed(what: str, err: BaseException) -> DistributedError:
    """The :class:`DistributedError` for a collective operation (named by ``what``) that raised ``err``."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DistributedError(
        f"rank {rank()} of {world_size()}: {what}: waiting for the other ranks failed ({first}); another rank has "
        "probably failed or exited (see its error message), or it did not answer within the process group's timeout"
    )


def rank_failed(what: str, err: BaseException) -> DistributedError:
    """The :class:`DistributedError` for ``what`` (e.g. a training step) that raised ``err`` on this rank, where
    ``err`` may come from a collective operation (another rank failed) or from this rank's own work."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DistributedError(
        f"rank {rank()} of {world_size()}: {what} failed ({type(err).__name__}: {first}); if another rank failed or "
        "exited first, its own error message says why (a collective operation then fails on this rank)"
    )


def barrier(what: str, group: Any = None) -> None:
    """Wait until every rank of ``group`` gets here; a no-op without a process group.

    Raises :class:`DistributedError` naming ``what`` (where this rank waited) if another rank
    failed, exited or did not arrive within the process group's timeout.
    """
    if not is_distributed(group):
        return
    try:
        dist.barrier(group)
    except RuntimeError as err:
        raise collective_failed(what, err) from err


def raise_if_any(error: BaseException | None, what: str, group: Any = None) -> None:
    """Collective: every rank passes its own error (or ``None``); if any rank has one, every rank raises.

    The rank that failed raises its own ``error``; the others raise :class:`DistributedError`
    naming the failed ranks and their messages. Without a process group this raises ``error`` if
    it is not ``None``. Every rank of ``group`` must call it at the same point.
    """
    if not is_distributed(group):
        if error is not None:
            raise error
        return
    mine = None if error is None else f"{type(error).__name__}: {error}"
    gathered: list[Any] = [None] * world_size(group)
    try:
        dist.all_gather_object(gathered, mine, group=group)
    except RuntimeError as err:
        if error is not None:
            raise error from None
        raise collective_failed(what, err) from err
    if error is not None:
        raise error
    failed = [(r, msg) for r, msg in enumerate(gathered) if msg is not None]
    if failed:
        detail = "; ".join(f"rank {r}: {msg}" for r, msg in failed)
        raise DistributedError(f"rank {rank(group)} stops: {what} failed on {detail}")


def check_agree(value: Any, what: str, group: Any = None) -> None:
    """Collective: raise :class:`DistributedError` on every rank unless all ranks pass equal ``value``.

    ``value`` must be picklable and comparable with ``==`` (numbers, strings, tuples); ``what`` names
    it in the message. A no-op without a process group.
    """
    if not is_distributed(group):
        return
    gathered: list[Any] = [None] * world_size(group)
    try:
        dist.all_gather_object(gathered, value, group=group)
    except RuntimeError as err:
        raise collective_failed(f"comparing {what}", err) from err
    if any(v != gathered[0] for v in gathered):
        differ = [r for r, v in enumerate(gathered) if v != gathered[0]]
        raise DistributedError(
            f"the ranks disagree on {what}: rank 0 has {gathered[0]!r}, rank(s) {differ} have "
            f"{[gathered[r] for r in differ]!r}; start every rank with the same settings (and the same checkpoint)"
        )


def row_bounds(n: int, world: int) -> list[int]:
    """Where the ranks' rows of a batch of ``n`` start: rank ``r`` of ``world`` has rows
    ``[b[r], b[r + 1])`` with ``b[r] = r n // world`` (consecutive blocks whose sizes differ by at most one)."""
    return [r * n // world for r in range(world + 1)]


def all_gather_rows(own: torch.Tensor, sizes: list[int], what: str, group: Any = None) -> list[torch.Tensor]:
    """Gather every rank's block of rows (rank ``r`` has ``sizes[r]`` rows, the same trailing shape).

    Blocks are padded to the largest size for the collective and cut back; returns the list of
    blocks in rank order (detached). Raises :class:`DistributedError` if the collective fails.
    """
    width = max(sizes)
    own = own.detach()
    if own.shape[0] < width:
        own = torch.cat([own, own.new_zeros((width - own.shape[0], *own.shape[1:]))])
    blocks = [torch.empty_like(own) for _ in sizes]
    try:
        dist.all_gather(blocks, own.contiguous(), group=group)
    except RuntimeError as err:
        raise collective_failed(what, err) from err
    return [b[:n] for b, n in zip(blocks, sizes, strict=True)]
