"""Factories: the DataModule, the model and the Trainer (with the callbacks of callbacks.py) are
built here."""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from .callbacks import MONITOR, KeepBest, TrainingCurves
from .cluster import require_rendezvous
from .config import Config
from .data.datamodule import ImageDataModule
from .model.build import build_network, check_sections, network_spec
from .model.classifier import ImageClassifier

# Steps between TensorBoard points, loss logs and progress-bar redraws. Drawing the bar (and
# reading the metrics it shows) every step costs more than a step of a small model.
LOG_EVERY_N_STEPS = 10


def create_datamodule(cfg: Config) -> ImageDataModule:
    return ImageDataModule(
        processed_dir=cfg.paths.processed,
        batch_size=cfg.training.batch_size,
        eval_batch_size=cfg.evaluation.batch_size,
        num_workers=cfg.runtime.loader_workers,
        pin_memory=cfg.runtime.pin_memory and torch.cuda.is_available(),
        persistent_workers=cfg.runtime.persistent_workers,
        streaming=cfg.runtime.streaming,
        seed=cfg.training.seed,
        task=cfg.data.task,
        class_balance=cfg.training.class_balance,
    )


def create_model(cfg: Config) -> ImageClassifier:
    """A new model: the network `model.name` names, with its pretrained weights if asked for."""
    check_sections(cfg.model)
    spec = network_spec(cfg.model, cfg.data.input_shape, cfg.data.num_classes)
    net = build_network(spec, cfg.model.pretrained, cfg.model.weights_file)
    training = cfg.training
    return ImageClassifier(
        net=net,
        network=spec,
        optimizer={
            "name": training.optimizer,
            "lr": training.lr,
            "momentum": training.momentum,
            "weight_decay": training.weight_decay,
            "scheduler": training.scheduler,
            "warmup_epochs": training.warmup_epochs,
            "backbone_lr_factor": cfg.model.backbone_lr_factor,
        },
        augment=dataclasses.asdict(cfg.augment),
        freeze_backbone_epochs=cfg.model.freeze_backbone_epochs,
        task=cfg.data.task,
        label_smoothing=training.label_smoothing,
        class_balance=training.class_balance,
        ema_decay=training.ema_decay,
    )


def training_callbacks(cfg: Config) -> list[L.Callback]:
    """Early stopping on the val loss, and keeping the best weights when a run may stop early."""
    training = cfg.training
    callbacks: list[L.Callback] = []
    if training.early_stopping_patience:
        callbacks.append(
            EarlyStopping(MONITOR, patience=training.early_stopping_patience, mode="min")
        )
    if training.keeps_best:
        callbacks.append(KeepBest(MONITOR))
    return callbacks


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto` -> bf16-mixed on a GPU that supports it, full precision elsewhere."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def use_channels_last(setting: bool | str, accelerator: str, net: torch.nn.Module) -> bool:
    """runtime.channels_last, `auto` resolved: on for a convolutional network on a CUDA GPU
    (cuDNN's faster kernels take NHWC), off elsewhere (on the CPU it gains nothing measured)."""
    if setting != "auto":
        return bool(setting)
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return on_gpu and any(isinstance(m, torch.nn.Conv2d) for m in net.modules())


def create_trainer(cfg: Config, *, logger: bool = True, **overrides: Any) -> L.Trainer:
    """A Trainer from `training` params; keyword overrides win (tests use fast_dev_run)."""
    training = cfg.training
    options: dict[str, Any] = {
        "accelerator": training.accelerator,
        "devices": training.devices,
        "num_nodes": training.num_nodes,
        "precision": resolve_precision(training.precision, training.accelerator),
        "max_epochs": training.max_epochs,
        "max_time": training.max_time,
        "accumulate_grad_batches": training.accumulate_grad_batches,
        "gradient_clip_val": training.gradient_clip_val or None,
        # One folder, not version_N per run: train.py clears it when a run starts afresh. No
        # hp_metric: TensorBoard would show a placeholder -1 for every run.
        "logger": TensorBoardLogger(
            cfg.paths.logs, name="", version="train", default_hp_metric=False
        )
        if logger
        else False,
        "enable_checkpointing": False,  # train.py writes the one checkpoint DVC tracks
        "log_every_n_steps": LOG_EVERY_N_STEPS,
        "callbacks": [TQDMProgressBar(refresh_rate=LOG_EVERY_N_STEPS)]
        + (
            [LearningRateMonitor(logging_interval="step"), TrainingCurves(cfg.paths.curves)]
            if logger
            else []
        )
        + training_callbacks(cfg),
        "enable_model_summary": logger,
    }
    options.update(overrides)
    devices, num_nodes = options["devices"], options["num_nodes"]
    if num_nodes > 1 or (isinstance(devices, int) and devices > 1):
        require_rendezvous(num_nodes)
        # One process per device and node; DDP talks over NCCL on GPUs and gloo on the CPU.
        # A frozen backbone leaves parameters without gradients, which DDP must be told about.
        frozen = cfg.model.freeze_backbone_epochs > 0
        options.setdefault("strategy", "ddp_find_unused_parameters_true" if frozen else "ddp")
    return L.Trainer(**options)
