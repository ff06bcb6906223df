"""Data-parallel runs over ``torch.distributed`` (``torchrun``), and the one-process case.

    torchrun --standalone --nproc_per_node=2 Main.py <the same flags>

Every process draws the same batches, samples and random numbers as a single process
with the same seed would (they all hold the same generators and the same weights).
Each then takes a contiguous 1/N share of the batch's rows (BPR triples, the random
triples of the prediction-level KD, the anchors of the all-node terms) and computes its
share of every batch mean, Σ over its rows / the batch's row count; whole-table terms (the
weight decay) are counted once, by rank 0. The shares' gradients and loss parts are summed
over the processes (all-reduce), so each process takes the update one process would take,
up to float rounding. Evaluation splits the evaluated users the same way and sums
Recall and NDCG over the processes. Only rank 0 writes (logs, histories, checkpoints,
reports, plots).

A plain ``python Main.py ...`` is the group :data:`SOLO`: :meth:`Group.split` returns the
whole index and every collective is a no-op, so the numbers are those of the code
without this module.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

import torch

from Utils.runtime.Errors import ConfigError, PeerLost

#: How torch.distributed says that the other end of a collective is gone (gloo raises a plain
#: RuntimeError with these words; NCCL and the store raise torch.distributed.DistError).
_PEER_GONE = ("closed by peer", "connection reset", "broken pipe", "timed out", "timeout")


def _collective(call, *args) -> None:
    """Run the collective ``call(*args)``; a peer that ended (a Ctrl-C, an error only it met, e.g.
    an unwritable checkpoint that only rank 0 writes) raises :class:`PeerLost`, a one-line error
    that ranks other than 0 leave unprinted, instead of the backend's traceback."""
    try:
        call(*args)
    except RuntimeError as exc:
        text = str(exc)
        dist_error = getattr(torch.distributed, "DistError", ())
        if not (isinstance(exc, dist_error) or any(words in text.lower() for words in _PEER_GONE)):
            raise
        reason = text.splitlines()[0].split("] ", 1)[-1].split(". ")[0][:120] if text else type(exc).__name__
        raise PeerLost(f"another process of this data-parallel run ended while this one waited for it "
                       f"({reason}); only rank 0 prints errors: if this is rank 0, run one process "
                       "(plain python) to see the other's") from None


@dataclass(frozen=True)
class Group:
    """This process's place in a data-parallel run: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def lead(self) -> bool:
        """Rank 0: the one process that writes and counts whole-table terms."""
        return self.rank == 0

    def split(self, index: torch.Tensor) -> Tuple[torch.Tensor, Optional[int]]:
        """This process's contiguous share of ``index`` and the length of the whole index.

        Alone: ``(index, None)``, where None means "take a plain mean" (see ``Losses._mean``).
        """
        if self.world == 1:
            return index, None
        return torch.tensor_split(index, self.world)[self.rank], int(index.shape[0])

    def split_rows(self, *tensors: torch.Tensor) -> Tuple[List[torch.Tensor], Optional[int]]:
        """The shares of several equally long tensors (the columns of one batch, split alike)
        and the batch's length (None alone), as :meth:`split`."""
        shares = [self.split(t) for t in tensors]
        return [share for share, _ in shares], shares[0][1]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the processes, in place (every process gets the same bits)."""
        if self.world > 1:
            _collective(torch.distributed.all_reduce, tensor)
        return tensor

    def sum_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Sum the gradients of ``params`` over the processes with one all-reduce.

        Each process's loss is its share of the batch's loss, so the sum is the gradient of
        the whole batch's loss (a parameter without a gradient contributes zeros)."""
        if self.world == 1:
            return
        params = [p for p in params if p.requires_grad]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        _collective(torch.distributed.all_reduce, flat)
        offset = 0
        for p in params:
            share = flat[offset:offset + p.numel()].view_as(p)
            if p.grad is None:
                p.grad = share.clone()
            else:
                p.grad.copy_(share)
            offset += p.numel()

    def barrier(self) -> None:
        if self.world > 1:
            _collective(torch.distributed.barrier)

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


SOLO = Group()


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


def local_world() -> int:
    """How many processes of the run share this machine."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def join(device: torch.device) -> Group:
    """The group of this process: :data:`SOLO`, or, under torchrun, this rank in a process group
    initialised from torchrun's environment (gloo on CPU, NCCL on CUDA)."""
    if not launched():
        return SOLO
    import torch.distributed as dist  # (optional: only a torchrun launch needs it)

    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed: run one process (plain python)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Group(rank=dist.get_rank(), world=dist.get_world_size())
