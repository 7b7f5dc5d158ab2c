"""The classifier: a 2-layer MLP over raw pixels, as a LightningModule."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


class ImageClassifier(L.LightningModule):
    """Takes images as stored by preprocess: (N, C, H, W) pixel values in 0..255, any dtype."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        hidden_size: int,
        dropout: float,
        lr: float,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        channels, height, width = input_shape
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * height * width, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_classes),
        )
        # No input checks in the training hot path: they cost a host sync per step on a GPU.
        self.train_acc = MulticlassAccuracy(num_classes, validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Scaling lives in the model, so the exported ONNX graph takes the same uint8 pixels
        # that preprocess writes and predict reads: one preprocessing path, not two.
        return self.net(images.float() / 255.0)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        # The hot path: every call to self.log, metric forward and host sync here costs each
        # step more than this model's whole forward pass on small images. So accuracy only
        # accumulates (on the device) and is logged per epoch; the loss is logged on the steps
        # the logger writes anyway (every log_every_n_steps) and shows in the progress bar.
        self.train_acc.update(logits, labels)
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/acc", self.train_acc)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.val_acc(logits, labels)
        # sync_dist: under DDP the epoch value averages every process's share of the val set.
        self.log("val/loss", F.cross_entropy(logits, labels), prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        return self(batch[0]).float()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
