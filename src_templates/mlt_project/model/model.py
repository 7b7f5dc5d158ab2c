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
        self.train_acc = MulticlassAccuracy(num_classes)
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
        self.train_acc(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.val_acc(logits, labels)
        self.log("val/loss", F.cross_entropy(logits, labels), prog_bar=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        return self(batch[0]).float()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
