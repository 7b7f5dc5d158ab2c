"""A training DataLoader whose order depends only on (seed, epoch), and that resumes mid-epoch.

A shuffling DataLoader draws its order from the global random state, which depends on how many
epochs this process has run: after a resume the order would differ from an uninterrupted run.
Here each epoch's order is a permutation seeded by (seed, epoch); Lightning saves the loader's
`state_dict` (epoch, batches handed out) in every checkpoint and loads it on resume, and the
loader then skips the batches the interrupted run had already trained on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler


class SeededShuffle(DistributedSampler):
    """A permutation of range(n) seeded by (seed, epoch); Lightning calls set_epoch.

    Under DDP every process draws the same permutation and takes every world-th index of it
    (padded to a multiple of the world size, as DistributedSampler pads), so the shares never
    overlap and each gets ceil(n / world). A DistributedSampler, so that Lightning leaves it in
    place: its wrapper for other samplers would replay epoch 0's order in every epoch.
    """

    def __init__(self, n: int, seed: int, num_replicas: int | None = None, rank: int | None = None):
        if num_replicas is None or rank is None:
            distributed = dist.is_available() and dist.is_initialized()
            num_replicas, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.n = n
        self.seed = seed
        self.skip = 0  # indices to leave out at the start of the next pass (a resumed epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        if self.total_size > self.n:
            order = torch.cat([order, order[: self.total_size - self.n]])
        mine = order[self.rank : self.total_size : self.num_replicas]
        skip, self.skip = self.skip, 0
        yield from mine[skip:].tolist()


class BalancedDraws(DistributedSampler):
    """`training.class_balance: sampler`: each epoch draws len(weights) indices with replacement,
    image i with probability proportional to weights[i] (its class's), seeded by (seed, epoch).

    A DistributedSampler, so Lightning leaves it in place under DDP (a wrapper would draw the same
    indices every epoch): every process draws the same sequence and takes every world-th index,
    so the processes' shares never overlap and each gets ceil(n / world) of them.
    """

    def __init__(self, weights: torch.Tensor, seed: int) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        super().__init__(range(len(weights)), num_replicas=world, rank=rank, shuffle=False)
        self.weights = weights.double()
        self.seed = seed
        self.skip = 0  # as SeededShuffle's: indices to leave out of the next pass

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        drawn = torch.multinomial(self.weights, self.total_size, True, generator=generator)
        mine = drawn[self.rank : self.total_size : self.num_replicas]
        skip, self.skip = self.skip, 0
        yield from mine[skip:].tolist()


class ResumableLoader(DataLoader):
    """A DataLoader over a SeededShuffle that Lightning can checkpoint and restore mid-epoch."""

    sampler: SeededShuffle | BalancedDraws

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handed_out = 0  # batches of the current epoch given to the training loop
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        self._handed_out = 0
        resume, self._resume = self._resume, None
        # Lightning sets the epoch before the first batch; a resume applies to its own epoch only.
        if resume and resume["epoch"] == self.sampler.epoch:
            self.sampler.skip = resume["batches"] * self.batch_size
            self._handed_out = resume["batches"]
        for batch in super().__iter__():
            self._handed_out += 1  # counted as handed out, not as prefetched by workers
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self._handed_out}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)
