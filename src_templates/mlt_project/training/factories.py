"""Factories: the DataModule, the model and the Trainer, with every callback of a training run.

Everything training runs is built here from the config, so train.py, lr_find.py and the tests
build the same things the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from ..base import schema
from ..base.config import Config, TrainingConfig
from ..base.errors import PipelineError
from ..model.augment import BatchAugment
from ..model.build import build_network, check_sections, network_spec
from ..model.inference import device_for
from ..model.mix import BatchMix
from ..model.optim import Optimization
from .callbacks import MONITOR, KeepBest, NanLossStop, TrainingCurves
from .datamodule import ImageDataModule
from .module import ImageClassifier
from .resume import ResumeCheckpoint

# Steps between TensorBoard points, loss logs and progress-bar redraws. Drawing the bar (and
# reading the metrics it shows) every step costs more than a step of a small model.
LOG_EVERY_N_STEPS = 10
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK")


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
    """A new model: the network `model.name` names, with its pretrained weights if asked for, and
    what trains it, each checked against its own signature (base/schema.py)."""
    check_sections(cfg.model)
    spec = network_spec(cfg.model, cfg.data.input_shape, cfg.data.num_classes)
    net = build_network(spec, cfg.model.pretrained, cfg.model.weights_file)
    training = cfg.training
    declared = tuple(f.name for f in fields(TrainingConfig) if f.name != TrainingConfig.EXTRA)
    optimization = schema.build(
        "training", training.optimization, Optimization, training.max_epochs, also=declared
    )
    augment_options, mix_options = schema.split(
        "augment", cfg.augment, {BatchAugment: 0, BatchMix: 1}
    )
    return ImageClassifier(
        net=net,
        network=spec,
        task=cfg.data.task,
        optimization=optimization,
        augment=schema.build("augment", augment_options, BatchAugment),
        mix=schema.build("augment", mix_options, BatchMix, cfg.data.num_classes),
        freeze_backbone_epochs=cfg.model.freeze_backbone_epochs,
        backbone_lr_factor=cfg.model.backbone_lr_factor,
        label_smoothing=training.label_smoothing,
        class_balance=training.class_balance,
        ema_decay=training.ema_decay,
        channels_last=use_channels_last(cfg.runtime.channels_last, training.accelerator, net),
        compile=cfg.runtime.compile,
    )


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto` -> bf16-mixed on a GPU that supports it, full precision elsewhere."""
    if precision != "auto":
        return precision
    on_gpu = device_for(accelerator).type == "cuda"
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def use_channels_last(setting: bool | str, accelerator: str, net: torch.nn.Module) -> bool:
    """runtime.channels_last, `auto` resolved: on for a convolutional network on a CUDA GPU
    (cuDNN's faster kernels take NHWC), off elsewhere (on the CPU it gains nothing measured)."""
    if setting != "auto":
        return bool(setting)
    on_gpu = device_for(accelerator).type == "cuda"
    return on_gpu and any(isinstance(m, torch.nn.Conv2d) for m in net.modules())


def create_trainer(
    cfg: Config, *, fingerprint: str | None = None, logger: bool = True, **overrides: Any
) -> L.Trainer:
    """A Trainer from `training` params, with every callback of a run; keyword overrides win
    (tests use fast_dev_run). A training run passes the `fingerprint` its resume checkpoints
    carry (resume.py): it gets the resume and NaN-loss callbacks; lr_find and tests pass none."""
    training = cfg.training
    callbacks: list[L.Callback] = [TQDMProgressBar(refresh_rate=LOG_EVERY_N_STEPS)]
    if logger:
        callbacks += [
            LearningRateMonitor(logging_interval="step"),
            TrainingCurves(cfg.paths.curves),
        ]
    if training.early_stopping_patience:
        callbacks.append(
            EarlyStopping(MONITOR, patience=training.early_stopping_patience, mode="min")
        )
    if training.keeps_best:
        callbacks.append(KeepBest(MONITOR))
    if fingerprint is not None:
        resume = ResumeCheckpoint(
            cfg.paths.resume_checkpoint, fingerprint, cfg.runtime.checkpoint_every_n_steps
        )
        # Before the resume callback: the loss is checked before a checkpoint keeps the weights.
        callbacks += [NanLossStop(LOG_EVERY_N_STEPS, saves=resume.due), resume]
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
        "callbacks": callbacks,
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


def require_rendezvous(num_nodes: int, environ: Mapping[str, str] = os.environ) -> None:
    """Fail at once, instead of waiting for nodes that were never started."""
    missing = [name for name in RENDEZVOUS if name not in environ]
    if num_nodes > 1 and missing:
        raise PipelineError(
            f"training.num_nodes is {num_nodes} but {', '.join(missing)} not set: train through "
            "docker/entrypoint.sh on a multi-node Batch job (`python -m "
            "mlt_project.scripts.batch submit`), or set training.num_nodes: 1 in params.yaml"
        )
