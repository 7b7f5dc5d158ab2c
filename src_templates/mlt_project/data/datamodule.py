"""Parquet splits -> batches: from in-memory tensors, or streamed row group by row group.

In memory is the fast path: a batch is one indexing operation. Streaming keeps one row group
per DataLoader worker in memory, for data sets larger than RAM (`training.streaming`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ..errors import PipelineError
from .resumable import ResumableLoader, SeededShuffle
from .store import open_split, read_row_group, read_split, split_info, split_path

Batch = tuple[torch.Tensor, torch.Tensor]
log = logging.getLogger(__name__)


class TensorBatches(Dataset):
    """Images and labels held as two tensors; a batch is one indexing operation.

    The DataLoader's fetcher calls `__getitems__` with a whole batch of indices, so there is no
    per-sample `__getitem__` and no collate of N small tensors. Samplers still work as usual
    (shuffling, and the DistributedSampler Lightning injects under DDP).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_rows(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Batch:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> Batch:
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


class ParquetBatches(IterableDataset):
    """Batches read one Parquet row group at a time; shuffled within and across row groups.

    Row groups are split between DDP processes and DataLoader workers. When shuffling (training),
    every process gets the same number of row groups, so none waits on another at the end of an
    epoch; the few left over change each epoch. Without shuffling, rows come in file order.
    """

    def __init__(self, path: Path, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.path = path
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        # Set by the main process (StreamLoader) and read by DataLoader workers: shared memory,
        # so that persistent workers, which keep their own copy of the dataset, see it too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        parquet = open_split(path)
        self.shape, self.class_names = split_info(parquet, path)
        self.num_row_groups = parquet.num_row_groups
        self.num_rows = parquet.metadata.num_rows
        self.group_rows = [
            parquet.metadata.row_group(i).num_rows for i in range(self.num_row_groups)
        ]

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @property
    def labels(self) -> torch.Tensor:
        """All labels, in file order (one small column)."""
        table = open_split(self.path).read(columns=["label"])
        return torch.from_numpy(table.column("label").to_numpy().astype(np.int64))

    def __len__(self) -> int:
        """Batches per epoch (per process under DDP): what progress bars count to."""
        return self.batches(torch.distributed.get_world_size() if _distributed() else 1)

    def batches(self, world_size: int) -> int:
        """Batches each of `world_size` processes reads per epoch."""
        return sum(-(-rows // self.batch_size) for rows in self.group_rows) // world_size

    def __iter__(self) -> Iterator[Batch]:
        rank, world = (
            (torch.distributed.get_rank(), torch.distributed.get_world_size())
            if _distributed()
            else (0, 1)
        )
        worker = get_worker_info() or _OneWorker()
        epoch = self.epoch
        groups = np.arange(self.num_row_groups)
        if self.shuffle:
            # The same permutation in every process, so their shares never overlap.
            groups = np.random.default_rng((self.seed, epoch)).permutation(groups)
            groups = groups[: len(groups) - len(groups) % world]
        rng = np.random.default_rng((self.seed, epoch, rank, worker.id))
        parquet = open_split(self.path)  # a reader per worker: never shared between threads
        for group in groups[rank::world][worker.id :: worker.num_workers]:
            images, labels = read_row_group(parquet, int(group), self.shape)
            order = rng.permutation(len(labels)) if self.shuffle else np.arange(len(labels))
            for start in range(0, len(order), self.batch_size):
                index = order[start : start + self.batch_size]
                yield torch.from_numpy(images[index]), torch.from_numpy(labels[index])


class StreamLoader(DataLoader):
    """The training loader over ParquetBatches: a new order each epoch, and an exact resume.

    The epoch is counted here, in the main process, and handed to the dataset before its workers
    start. Lightning saves `state_dict` in every checkpoint; a resumed epoch reads its batches in
    the same order again and drops the ones the interrupted run had trained on.
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
                "resuming streamed epoch %d at batch %d: reading its row groups again in the "
                "same order and skipping the batches already trained on",
                self.epoch, skip,
            )  # fmt: skip
        self._state = {"epoch": self.epoch, "batches": skip}
        self.dataset.set_epoch(self.epoch)
        self.epoch += 1
        for index, batch in enumerate(super().__iter__()):
            if index >= skip:
                self._state["batches"] += 1  # counted as handed out, not as prefetched
                yield batch

    def state_dict(self) -> dict[str, int]:
        return dict(self._state)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)


class _OneWorker:
    id, num_workers = 0, 1


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def fits_in_memory(paths: list[Path], fraction: float = 0.25) -> bool:
    """Whether the splits' decoded images take less than `fraction` of this machine's RAM."""
    total = 0
    for path in paths:
        parquet = open_split(path)
        shape, _ = split_info(parquet, path)
        total += parquet.metadata.num_rows * int(np.prod(shape))
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): assume it fits
        return True
    return total < fraction * ram


def keep_batch(batch: Batch) -> Batch:
    """collate_fn for TensorBatches: the batch is already assembled."""
    return batch


class ImageDataModule(L.LightningDataModule):
    def __init__(
        self,
        processed_dir: str | Path,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        streaming: bool | str = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.processed_dir = Path(processed_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.streaming = streaming
        self.seed = seed
        self.datasets: dict[str, TensorBatches | ParquetBatches] = {}
        self.class_names: list[str] = []
        self.input_shape: tuple[int, ...] = ()

    def setup(self, stage: str) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",)}.get(stage, ("test",))
        if self.streaming == "auto":
            paths = [split_path(self.processed_dir, split) for split in needed]
            self.streaming = not fits_in_memory(paths)
        for split in needed:
            if split not in self.datasets:
                self.datasets[split] = self._load(split)
        if stage == "fit" and self.batch_size > self.datasets["train"].num_rows:
            raise PipelineError(
                f"training.batch_size {self.batch_size} is larger than the training split "
                f"({self.datasets['train'].num_rows} images): lower it or add images"
            )

    def batches_per_epoch(self, world_size: int = 1) -> int:
        """Training batches each process takes per epoch (after setup("fit"))."""
        dataset = self.datasets["train"]
        if isinstance(dataset, ParquetBatches):
            return dataset.batches(world_size)
        # Under DDP, Lightning's DistributedSampler gives each process ceil(n / world) rows.
        return math.ceil(math.ceil(dataset.num_rows / world_size) / self.batch_size)

    def _load(self, split: str) -> TensorBatches | ParquetBatches:
        path = split_path(self.processed_dir, split)
        if self.streaming:
            batch_size = self.batch_size if split == "train" else self.eval_batch_size
            dataset = ParquetBatches(path, batch_size, shuffle=split == "train", seed=self.seed)
            self.class_names, self.input_shape = dataset.class_names, tuple(dataset.shape)
            return dataset
        images, labels, class_names = read_split(path)
        self.class_names = class_names
        self.input_shape = tuple(images.shape[1:])
        return TensorBatches(torch.from_numpy(images), torch.from_numpy(labels))

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        workers = self.num_workers
        if isinstance(dataset, ParquetBatches):
            # The dataset yields whole batches, row groups read in parallel by the workers.
            # Evaluation reads in this process, so that predictions come in file order (workers
            # would interleave their row groups).
            batch_size, workers = None, workers if shuffle else 0
        options = {
            "batch_size": batch_size,
            "collate_fn": keep_batch,
            "num_workers": workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers and workers > 0,
            # Its own generator: making an iterator draws a seed from it, and a draw from the
            # global one would shift dropout's random numbers (a resumed run would differ).
            "generator": torch.Generator().manual_seed(self.seed),
        }
        if isinstance(dataset, ParquetBatches):
            return StreamLoader(dataset, **options) if shuffle else DataLoader(dataset, **options)
        if shuffle:
            # The order depends only on (seed, epoch), and the loader resumes mid-epoch.
            sampler = SeededShuffle(len(dataset), self.seed)
            return ResumableLoader(dataset, sampler=sampler, **options)
        return DataLoader(dataset, shuffle=shuffle, **options)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
