"""Running across processes with ``torch.distributed``: the ranks of a process group and the
few collectives the estimates need.

When a process group is initialised (``torch.distributed.init_process_group``, e.g. under
``torchrun``), each rank passes its own shard of the data, as with a ``DistributedSampler``;
m is the total over ranks and each rank takes m / world_size samples from its shard. Sums
(Fisher diagonals, dense Gram blocks, K-FAC factors, evaluation totals) are all-reduced;
gradient rows that the Woodbury recursion holds are all-gathered in rank order. Low-rank
blocks are shared out: each rank owns a contiguous share of the blocks and receives, by
all-to-all, the columns of every rank's rows that its blocks need (into memory, or window by
window into its own gradient file on disk); a question about a block is answered by its owner
and broadcast, one about the whole vector (diag C⁻¹, C⁻¹v) is answered by every rank for its
blocks and all-reduced. Every rank then answers as one process given the ranks' samples
concatenated in rank order, so every later step — saliencies, global selection, masks,
updates — is the same on every rank. Collectives run on the group's device (CPU tensors for
gloo, CUDA for NCCL) and time out with the group's timeout, so that a failing rank cannot hang
the others.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """The ranks of a process group taking part in one computation."""

    group: object
    rank: int
    size: int

    @classmethod
    def active(cls, distributed: bool = True, process_group=None) -> Ranks | None:
        """The ranks of ``process_group`` (default: the world) when one is initialised and has
        more than one rank; None to run in this process alone (or with ``distributed=False``)."""
        if not distributed or not (dist.is_available() and dist.is_initialized()):
            return None
        group = process_group if process_group is not None else dist.group.WORLD
        size = dist.get_world_size(group)
        if size == 1:
            return None
        return cls(group, dist.get_rank(group), size)

    def share(self, count: int, name: str = "num_samples") -> int:
        """This rank's part of ``count`` (count / size), refusing a count the ranks cannot split."""
        if count % self.size:
            raise ValueError(
                f"{name}={count} cannot be split evenly over {self.size} ranks; use a multiple "
                f"of {self.size} (each rank takes {name} / world_size from its own data)"
            )
        return count // self.size

    def _device(self) -> torch.device:
        backend = dist.get_backend(self.group)
        return (
            torch.device("cuda", torch.cuda.current_device())
            if backend == "nccl"
            else (torch.device("cpu"))
        )

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce ``tensor`` in place (sum over ranks) and return it."""
        work = tensor.to(self._device())
        dist.all_reduce(work, op=dist.ReduceOp.SUM, group=self.group)
        if work is not tensor:
            tensor.copy_(work)
        return tensor

    def sum_numbers(self, *values: float) -> list[float]:
        """Σ over ranks of each number (in float64)."""
        out = self.sum_(torch.tensor(values, dtype=torch.float64))
        return out.tolist()

    def together(self, work: Callable[[], T], what: str) -> T:
        """``work()`` on this rank, then agree that it succeeded everywhere: a rank whose work
        raised re-raises its error, the others raise one naming it, so that no rank is left
        waiting in a collective the failing one will never join."""
        try:
            result, failed = work(), 0.0
        except Exception as err:  # noqa: BLE001 - re-raised below, after the others know
            result, failed, error = None, 1.0, err
        flags = torch.zeros(self.size, dtype=torch.float64)
        flags[self.rank] = failed
        self.sum_(flags)
        if failed:
            raise error
        if flags.any():
            others = [r for r in range(self.size) if flags[r]]
            raise RuntimeError(f"{what}: rank {others[0]} failed (see its error); stopped here")
        return result

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (the same shape on every rank), in rank order, on the
        device of ``tensor``."""
        work = tensor.contiguous().to(self._device())
        parts = [torch.empty_like(work) for _ in range(self.size)]
        dist.all_gather(parts, work, group=self.group)
        return [part.to(tensor.device) for part in parts]

    def exchange(self, parts: list[torch.Tensor], shape: tuple[int, ...]) -> list[torch.Tensor]:
        """All-to-all: ``parts[r]`` goes to rank r; returns what each rank sent to this one (a
        ``shape`` tensor from every rank, in rank order), on the device of ``parts``."""
        device, dtype = parts[0].device, parts[0].dtype
        send = torch.cat([p.reshape(-1) for p in parts]).to(self._device())
        each = math.prod(shape)
        received = torch.empty(each * self.size, dtype=dtype, device=self._device())
        dist.all_to_all_single(
            received, send, [each] * self.size, [p.numel() for p in parts], group=self.group
        )
        return [r.to(device) for r in received.view(self.size, *shape).unbind(0)]

    def broadcast_(self, tensor: torch.Tensor, owner: int) -> torch.Tensor:
        """``tensor`` of rank ``owner`` (a rank of the group) written into every rank's."""
        work = tensor.contiguous().to(self._device())
        dist.broadcast(work, src=dist.get_global_rank(self.group, owner), group=self.group)
        if work is not tensor:
            tensor.copy_(work)
        return tensor

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The ranks' ``(n, …)`` row blocks stacked in rank order (every rank the same n)."""
        return torch.cat(self.gather(rows))

    def agree(self, what: str, **settings) -> None:
        """Refuse, on every rank, settings that differ between ranks (compared by hash)."""
        text = repr(sorted(settings.items()))
        digest = hashlib.sha256(text.encode()).hexdigest()
        digests: list = [None] * self.size
        dist.all_gather_object(digests, (digest, text), group=self.group)
        if len({d for d, _ in digests}) > 1:
            mine = dict(settings)
            others = [t for d, t in digests if d != digest]
            raise ValueError(
                f"{what}: the ranks of the process group were given different settings; rank "
                f"{self.rank} has {mine}, another has {others[0] if others else '?'} — every "
                "rank must pass the same model, selection and settings (only the data differ)"
            )


def model_signature(model: torch.nn.Module) -> str:
    """A short hash of the model's parameter names, shapes and values (ranks must agree)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(p.detach().to(torch.float64).cpu().sum().numpy().tobytes())
    return h.hexdigest()[:16]
