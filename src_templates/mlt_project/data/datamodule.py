"""Parquet splits -> in-memory tensors -> batches."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import PipelineError
from .store import read_split, split_path

Batch = tuple[torch.Tensor, torch.Tensor]


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

    def __getitem__(self, index: int) -> Batch:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> Batch:
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


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
    ) -> None:
        super().__init__()
        self.processed_dir = Path(processed_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.datasets: dict[str, TensorBatches] = {}
        self.class_names: list[str] = []
        self.input_shape: tuple[int, ...] = ()

    def setup(self, stage: str) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",)}.get(stage, ("test",))
        for split in needed:
            if split not in self.datasets:
                self.datasets[split] = self._load(split)
        if stage == "fit" and self.batch_size > len(self.datasets["train"]):
            raise PipelineError(
                f"training.batch_size {self.batch_size} is larger than the training split "
                f"({len(self.datasets['train'])} images): lower it or add images"
            )

    def _load(self, split: str) -> TensorBatches:
        images, labels, class_names = read_split(split_path(self.processed_dir, split))
        self.class_names = class_names
        self.input_shape = tuple(images.shape[1:])
        return TensorBatches(torch.from_numpy(images), torch.from_numpy(labels))

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
