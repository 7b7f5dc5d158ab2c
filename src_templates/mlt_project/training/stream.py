"""Parquet splits streamed row group by row group, for data larger than RAM, shuffled like memory.

Preprocess writes each split's rows in a seeded random order, so any run of rows in the file is
a sample of the whole split. A training epoch then reads:

1. the row groups in an order drawn from (seed, epoch), as one sequence of rows that starts at a
   random row: the few rows no process gets (fewer than the processes) change each epoch;
2. an equal, contiguous share of that sequence per DDP process: every process takes the same
   number of batches whatever the row groups' sizes, and reads only its own row groups (a split
   of one row group feeds every process); one partial batch per process, at its end;
3. that share as STREAMS runs of whole batches, a batch from each in turn;
4. each stream a window of a row group's worth of rows at a time, rows permuted in the window:
   a batch mixes the rows of one or two row groups, and consecutive batches come from far
   apart in the file.

Memory per process: a window and a row group or two per stream, whatever the size of the split.
Every random draw is seeded by (training.seed, epoch, rank, stream, window), so an epoch is the
same whatever the number of workers, and a resumed one reads only what is left of it.
Evaluation reads in file order, in equal shares padded as Lightning's DistributedSampler pads
in-memory splits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..data.store import open_split, read_row_group, split_info

Batch = tuple[torch.Tensor, torch.Tensor]
# A process's share is read as this many streams, taken in turn: consecutive batches come from
# different parts of the file, and workers (a divisor of STREAMS) each read whole streams, so
# the order is the same whatever their number: loader_workers changes speed only, and a run
# resumed on a machine with other cores resumes exactly.
STREAMS = 8
log = logging.getLogger(__name__)


class ParquetBatches(IterableDataset):
    """Batches of one split, read a window of rows at a time; see the module's docstring."""

    def __init__(self, path: Path, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.path = path
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        # Set by the main process (StreamLoader) and read by DataLoader workers: shared memory,
        # so that persistent workers, which keep their own copy of the dataset, see it too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._skip = torch.zeros((), dtype=torch.int64).share_memory_()
        self._placement = (0, 1)  # (rank, world size), set in the main process for the workers
        parquet = open_split(path)
        self.shape, _ = split_info(parquet, path)
        self.num_rows = parquet.metadata.num_rows
        self.group_rows = np.array(
            [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
        )
        # Evaluation reads one stream: file order.
        self.streams = STREAMS if shuffle else 1
        # A window is the size of the file's row groups (32 MiB as preprocess writes them).
        self.window_batches = max(1, int(self.group_rows.max(initial=0)) // batch_size)

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        """Read `epoch` next, leaving out its first `skip` batches (trained on before a resume)."""
        self._epoch.fill_(epoch)
        self._skip.fill_(skip)
        self._placement = _placement()

    def __len__(self) -> int:
        """Batches per epoch (per process under DDP): what progress bars count to."""
        return self.batches(_placement()[1])

    def batches(self, world_size: int) -> int:
        """Batches each of `world_size` processes reads per epoch."""
        return -(-self.share(world_size) // self.batch_size)

    def share(self, world_size: int) -> int:
        """Rows per process: training drops the remainder, evaluation pads to equal shares."""
        if self.shuffle:
            return self.num_rows // world_size
        return -(-self.num_rows // world_size)

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, int]:
        """The row groups in reading order and the row the sequence starts at: the same in every
        process and worker, so that their shares never overlap."""
        if not self.shuffle:
            return np.arange(len(self.group_rows)), 0
        rng = np.random.default_rng((self.seed, epoch))
        return rng.permutation(len(self.group_rows)), int(rng.integers(self.num_rows))

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        rank, world = self._placement if info else _placement()
        workers, loader_id = (info.num_workers, info.id) if info else (1, 0)
        assert self.streams % workers == 0, "stream_workers() picks a divisor of STREAMS"
        epoch, skip = int(self._epoch), int(self._skip)
        order, offset = self.epoch_order(epoch)
        batches, share = self.batches(world), self.share(world)
        sizes, start = self.group_rows[order], rank * share
        reader = _Reader(open_split(self.path), self.shape)
        windows: dict[int, tuple[int, list, np.ndarray]] = {}  # stream -> its window in memory
        size = self.batch_size
        # Batch i of the epoch is the (i // streams)-th of stream i % streams. The DataLoader
        # takes a batch from each worker in turn, from worker 0: worker w reads batches
        # skip + w, skip + w + workers, ... (whole streams, as workers divide STREAMS).
        for i in range(skip + loader_id, batches, workers):
            stream, j = i % self.streams, i // self.streams
            low, count = worker_batches(batches, self.streams, stream)
            window = j // self.window_batches
            if windows.get(stream, (None,))[0] != window:
                windows.pop(stream, None)  # let go of the last window before reading the next
                begin = (low + window * self.window_batches) * size
                end = min((low + min(count, (window + 1) * self.window_batches)) * size, share)
                pieces = spans(sizes, start + begin, start + end, offset)
                parts = [reader.rows(stream, int(order[g]), a, b) for g, a, b in pieces]
                if self.shuffle:
                    key = (self.seed, epoch, rank, stream, window)
                    index = np.random.default_rng(key).permutation(end - begin)
                else:
                    index = np.arange(end - begin)
                windows[stream] = window, parts, index
            _, parts, index = windows[stream]
            at = (j - window * self.window_batches) * size
            yield gather(parts, index[at : at + size], info is not None)


def stream_workers(requested: int) -> int:
    """The loader workers a streamed split uses: a divisor of STREAMS, so that each reads whole
    streams and the order of batches does not depend on how many there are. None: this process
    reads (as one worker would)."""
    if requested <= 0:
        return 0
    workers = max(w for w in range(1, STREAMS + 1) if STREAMS % w == 0 and w <= requested)
    if workers != requested:
        log.info(
            "runtime.loader_workers %d: streaming with %d, a divisor of its %d streams",
            requested, workers, STREAMS,
        )  # fmt: skip
    return workers


def worker_batches(batches: int, parts: int, part: int) -> tuple[int, int]:
    """(first batch, number of batches) of `part` of a process's `batches`, cut in `parts` runs
    of equal length, the first ones a batch longer: taken in turn, the runs then end in order."""
    base, extra = divmod(batches, parts)
    return part * base + min(part, extra), base + (part < extra)


def spans(sizes: np.ndarray, start: int, stop: int, offset: int) -> list[tuple[int, int, int]]:
    """Positions [start, stop) of the row groups of `sizes` laid end to end, starting at row
    `offset` and wrapping around, as (group index, first row, end row) pieces."""
    total = int(sizes.sum())
    ends = np.cumsum(sizes)
    pieces = []
    position = start
    while position < stop:
        row = (position + offset) % total
        group = int(np.searchsorted(ends, row, side="right"))
        begin = row - int(ends[group] - sizes[group])
        take = min(stop - position, int(ends[group]) - row)
        pieces.append((group, begin, begin + take))
        position += take
    return pieces


class _Reader:
    """Rows of row groups, keeping each stream's last group: its next window often starts there."""

    def __init__(self, parquet: Any, shape: list[int]) -> None:
        self.parquet, self.shape = parquet, shape  # a reader per worker: never shared
        self.cached: dict[int, tuple[int, tuple[np.ndarray, np.ndarray]]] = {}

    def rows(self, stream: int, group: int, begin: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cached.get(stream, (None,))[0] != group:
            self.cached.pop(stream, None)  # let go of the last group before reading the next
            # Arrow's allocator (mimalloc) keeps freed row groups mapped for a while: handed
            # back before the next is read, the peak holds the streams' groups, not also those
            # let go of. Without it the peak grew with the split: +150 MB (10%) at 2.8 GB against
            # 0.9 GB (P2m); with it flat, for ~1% of the epoch's time.
            pa.default_memory_pool().release_unused()
            self.cached[stream] = group, read_row_group(self.parquet, group, self.shape)
        images, labels = self.cached[stream][1]
        return images[begin:end], labels[begin:end]


def gather(parts: list[tuple[np.ndarray, np.ndarray]], index: np.ndarray, shared: bool) -> Batch:
    """The rows `index` of `parts` laid end to end, as one batch (images, labels): labels as the
    parts hold them, class indices or multi-hot rows.

    Sorted, so the rows of a part are copied in one operation: a batch is a set, its order
    within plays no part in training.
    """
    index = np.sort(index)
    shape = (len(index), *parts[0][0].shape[1:])
    images = _shared_images(shape) if shared else torch.empty(shape, dtype=torch.uint8)
    first = parts[0][1]
    out = images.numpy()
    labels = np.empty((len(index), *first.shape[1:]), dtype=first.dtype)
    starts = np.cumsum([0] + [len(part[1]) for part in parts])
    cuts = np.searchsorted(index, starts)
    for (pixels, part_labels), first, low, high in zip(parts, starts, cuts, cuts[1:], strict=False):
        if high > low:
            rows = index[low:high] - first
            # mode="clip": the rows are in range, and the default ("raise") copies through a
            # buffer, 3x slower.
            np.take(pixels, rows, axis=0, out=out[low:high], mode="clip")
            labels[low:high] = part_labels[rows]
    return images, torch.from_numpy(labels)


def _shared_images(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty uint8 tensor in shared memory, where a worker's batch must go to reach the main
    process: allocated there, as torch's default_collate does, it is not copied there (3 MB
    batches: 2.5 ms against 16 ms for share_memory_() of an ordinary tensor)."""
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


class StreamLoader(DataLoader):
    """The training loader over ParquetBatches: a new order each epoch, and an exact resume.

    The epoch is counted here, in the main process, and handed to the dataset before its workers
    start. Lightning saves `state_dict` in every checkpoint; a resumed epoch draws the same order
    again, and its workers leave out the batches the interrupted run had trained on, unread.
    """

    dataset: ParquetBatches

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch = 0  # the epoch the next __iter__ reads
        self._state = {"epoch": 0, "batches": 0}
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Batch]:
        skip = 0
        if (resume := self._resume) is not None:
            self._resume = None
            finished = resume["batches"] >= len(self)
            self.epoch = resume["epoch"] + finished
            skip = 0 if finished else resume["batches"]
        if skip:
            log.info(
                "resuming streamed epoch %d at batch %d: the same order, the batches already "
                "trained on left out", self.epoch, skip,
            )  # fmt: skip
        self._state = {"epoch": self.epoch, "batches": skip}
        self.dataset.start_epoch(self.epoch, skip)
        self.epoch += 1
        for batch in super().__iter__():
            self._state["batches"] += 1  # counted as handed out, not as prefetched
            yield batch

    def state_dict(self) -> dict[str, int]:
        return dict(self._state)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)


def auto_workers(processes: int = 1) -> int:
    """`loader_workers: auto` when streaming: this process's share of the cores it may run on,
    less two for training itself, at most STREAMS (a worker more would have no stream).

    None on a machine of 2 cores a process: a worker then competes with training for a core, and
    handing its batches over costs more than reading them here (P2b on 2 cores: 10 us of CPU an
    image read in this process, 38-42 us through a worker).
    """
    if hasattr(os, "sched_getaffinity"):  # Linux; not on macOS or Windows
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    return max(0, min(STREAMS, cores // max(1, processes) - 2))


def _placement() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside DDP."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
