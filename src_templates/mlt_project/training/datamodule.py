"""Parquet splits -> batches: from in-memory tensors, or streamed row group by row group.

In memory is the fast path: a batch is one indexing operation. Streaming (`runtime.streaming`,
stream.py), for data sets larger than RAM, keeps a row group or two per stream in memory and
feeds batches shuffled as in memory: the same classes per batch, the same accuracy.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..base.errors import PipelineError
from ..base.tasks import OLDEST_TASK
from ..base.tasks import task as task_named
from ..data.store import (
    class_counts,
    open_split,
    read_split,
    require_task,
    split_info,
    split_path,
)
from .resumable import BalancedDraws, ResumableLoader, SeededShuffle
from .stream import Batch, ParquetBatches, StreamLoader, auto_workers, stream_workers

BALANCE_FIX = "set runtime.streaming: false, or use training.class_balance: loss"


class TensorBatches(Dataset):
    """Images and labels held as two tensors; a batch is one indexing operation. Labels are
    class indices (N,) int64, or multi-hot rows (N, classes) float32 for multilabel.

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
        num_workers: int | str = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        streaming: bool | str = "auto",
        seed: int = 0,
        task: str = OLDEST_TASK,
        class_balance: str = "none",
    ) -> None:
        super().__init__()
        self.task = task_named(task)
        self.processed_dir = Path(processed_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.streaming = streaming
        self.streaming_setting = streaming  # as params.yaml says it, before `auto` is resolved
        self.seed = seed
        self.class_balance = class_balance  # none | loss | sampler (training.class_balance)
        # Per class, from the training split's counts (setup): the loss's or the sampler's.
        self.class_weights: list[float] | None = None
        self.datasets: dict[str, TensorBatches | ParquetBatches] = {}

    def setup(self, stage: str) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",)}.get(stage, ("test",))
        if self.streaming == "auto":
            paths = [split_path(self.processed_dir, split) for split in needed]
            self.streaming = not fits_in_memory(paths)
        if self.task.multi_hot and self.class_balance == "sampler":
            raise PipelineError(
                "training.class_balance: sampler draws each image by its one class, and "
                f"data.task: {self.task.name} images have several: use training.class_balance: "
                "loss (a positive weight per class)"
            )
        if self.streaming and self.class_balance == "sampler":
            raise PipelineError(
                "training.class_balance: sampler needs the splits in memory, and they are "
                f"streamed (runtime.streaming: {str(self.streaming_setting).lower()}): {BALANCE_FIX}"
            )
        for split in needed:
            path = split_path(self.processed_dir, split)
            require_task(open_split(path), path, self.task.name)
            if split not in self.datasets:
                self.datasets[split] = self._load(split)
        if stage == "fit" and self.class_balance != "none":
            counts, images = class_counts(split_path(self.processed_dir, "train"))
            self.class_weights = self.task.class_weights(counts, images).tolist()
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
        # Under DDP, Lightning's DistributedSampler (or BalancedDraws) gives each process
        # ceil(n / world) rows.
        return math.ceil(math.ceil(dataset.num_rows / world_size) / self.batch_size)

    def _load(self, split: str) -> TensorBatches | ParquetBatches:
        path = split_path(self.processed_dir, split)
        if self.streaming:
            batch_size = self.batch_size if split == "train" else self.eval_batch_size
            return ParquetBatches(path, batch_size, shuffle=split == "train", seed=self.seed)
        images, labels, _ = read_split(path)
        return TensorBatches(torch.from_numpy(images), torch.from_numpy(labels))

    def loader_workers(self, streamed: bool) -> int:
        """runtime.loader_workers, `auto` resolved: none in memory (a batch is one indexing
        operation, which a worker would only copy), per core streamed (stream.auto_workers)."""
        if self.num_workers != "auto":
            return int(self.num_workers)
        if not streamed:
            return 0
        trainer = self.trainer  # the processes on this machine share its cores
        return auto_workers(trainer.num_devices if trainer is not None else 1)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        workers = self.loader_workers(streamed=isinstance(dataset, ParquetBatches))
        if isinstance(dataset, ParquetBatches):
            # The dataset yields whole batches, row groups read in parallel by the workers.
            # Evaluation reads in this process: it is a fraction of an epoch's reading.
            batch_size, workers = None, stream_workers(workers) if shuffle else 0
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
        if shuffle and self.class_balance == "sampler":
            labels = dataset.labels
            weights = torch.tensor(self.class_weights)[labels]
            sampler = BalancedDraws(weights, self.seed)
            return ResumableLoader(dataset, sampler=sampler, **options)
        if shuffle:
            # The order depends only on (seed, epoch), and the loader resumes mid-epoch.
            sampler = SeededShuffle(len(dataset), self.seed)
            return ResumableLoader(dataset, sampler=sampler, **options)
        return DataLoader(dataset, shuffle=shuffle, **options)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)
