"""Benchmark the generated project against its bare baselines, side by side in one run.

    python benchmarks/run.py [--only P1,P4] [--root DIR] [--out bench-results/latest.json]
                             [--rounds 6]

P1  Lightning epoch (train + validation) / a bare PyTorch loop: same model, tensors, batch size
    and optimizer; median of steady-state epochs after warm-up; logging and progress bar on.
P2  DataModule.setup("fit") / pyarrow read_table + to_numpy of the same files; and the peak
    memory that training on the larger set adds, in copies of that data.
P2b images/s through the training DataLoader alone, 3x64x64: streamed (loader_workers: auto) /
    in memory, epochs of each in turn, the spread of the ratio over the turns.
P2c the same at 3x224x224.   P2m peak RSS rise of two streamed epochs at 2 split sizes (flat).
P3  preprocess (PNG class folders -> Parquet) with 2 workers / with 1; images per second.
P3m peak RSS of preprocess (main process + workers) on 4,000 RGB images at 64, 128, 224 px.
P4  PyTorch eager p50 latency / ONNX Runtime p50 latency at batch 1, default model, CPU.
P5  a no-op `dvc repro` in a baked project.   P6  the whole default pipeline on the sample data.
P7  ResNet-18 on 3x32x32 synthetic images: Lightning epoch as train() runs it (its callbacks and
    the resume checkpoint) / a bare loop doing the same work; ABBA rounds, median and spread.
P7r the same Lightning epoch with issue 21's recipe (EMA, mixup, accumulation) / without;
    skipped while params.yaml lacks those keys.
P7g ResNet-50 3x224x224 bf16 on a GPU, contiguous and channels-last: Lightning / bare, images/s;
    skipped without CUDA.
P8  `import lightning` (and torch) without .pyc / after the Dockerfile's compileall, alternating.
P9  the model server (python -m <module>.serve) on loopback: 2,000 requests (ResNet-18 at 224 px:
    500) from 1 and from 8 keep-alive clients, one image each; p50/p99 latency, requests/s,
    errors; requests/s over predict's images/s on the same images, ABBA rounds; the server's peak
    RSS; ONNX Runtime's images/s at batch 8 over 8 concurrent runs of 1 (what a micro-batcher
    would add to what the server does now); the serving environment's installed size against the
    training one's (no Docker engine here to build the images).

`--root` measures another checkout of this repository (e.g. a copy taken before a change):
its templates are imported and baked instead of this one's. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import platform
import pty
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
LARGE = {"train": 60_000, "val": 10_000, "size": 28}
TARGETS = {  # id -> (comparison, bound); ratios are "ours / baseline" unless named otherwise
    "P1 digits": ("<=", 1.05),
    "P1 synthetic-60k": ("<=", 1.05),
    "P2 setup": ("<=", 1.3),
    "P2 peak memory (copies)": ("<=", 2.0),
    "P2b streamed/in-memory img/s": (">=", 0.5),  # 0.9 on 16 cores
    "P2c streamed/in-memory img/s": (">=", 0.5),
    "P2m streamed RSS growth": ("<=", 1.1),  # peak RSS at 3x the split / at 1x: flat
    "P3 2 workers speed-up": (">=", 1.6),
    "P3m RSS at 224 px (MB)": ("<=", 1024.0),
    "P3m rise / row group": ("<=", 2.0),
    "P4 eager/ORT p50": (">=", 2.0),
    "P5 no-op repro (s)": ("<=", 3.0),
    "P6 pipeline / import lightning": ("<=", 2.0),  # seconds drift with the day; a ratio less
    "P7 resnet18": ("<=", 1.05),
    "P7r recipe/plain": ("<=", 1.10),
    "P7g resnet50 bf16 GPU": ("<=", 1.05),  # channels-last, Lightning / bare
    "P7g channels-last speed-up": (">=", 1.0),  # no target in issue 21: above 1 = it helps
    "P8 import lightning no-pyc/pyc": (">=", 1.5),
    "P8c image cold start / warm": ("<=", 1.1),
    "P9 errors": ("<=", 0.0),
    "P9 default c8 req/s / predict img/s": (">=", 0.05),  # per-request HTTP + decode vs batched
    "P9 resnet18 c8 req/s / predict img/s": (">=", 0.8),  # compute-bound: the server keeps pace
    "P9 micro-batching bound": ("<=", 1.1),  # above: a micro-batcher of 8 would pay
    "P9 serve/train env size": ("<=", 0.2),
}


# ---------------------------------------------------------------- shared helpers


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def quiet(log: Path) -> Iterator[None]:
    """Send what the code under test prints (progress bars, logs) to `log`, not the table."""
    with log.open("a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


@contextlib.contextmanager
def terminal() -> Iterator[None]:
    """Print into a pseudo-terminal, as under `dvc repro` in a shell: progress bars render for
    real (they draw less, or nothing, into a file). A thread reads and drops the output."""
    master, slave = pty.openpty()
    reader = threading.Thread(target=_drain, args=(master,), daemon=True)
    reader.start()
    tty = os.fdopen(slave, "w", buffering=1)
    try:
        with contextlib.redirect_stdout(tty), contextlib.redirect_stderr(tty):
            yield
    finally:
        tty.close()
        reader.join()
        os.close(master)


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError):  # EIO once the terminal's other end is closed
        while os.read(fd, 1 << 16):
            pass


def base_config(root: Path, tmp: Path, **sections: dict):
    """The project's params.yaml, paths inside `tmp`, sections updated with `sections`."""
    from mlt_project.base.config import load_config

    cfg = load_config(root / "template_configs" / "project" / "params.yaml")
    paths = {f.name: str(tmp / f.name) for f in dataclasses.fields(cfg.paths)}
    changes = {"paths": dataclasses.replace(cfg.paths, **paths)}
    for name, values in sections.items():
        section = getattr(cfg, name)
        if isinstance(section, dict):  # augment: the options of its classes
            changes[name] = {**section, **values}
            continue
        known = {f.name for f in dataclasses.fields(section)}
        fields = {k: v for k, v in values.items() if k in known}
        if name == "training":  # the optimizer's keys are its options, not fields
            options = {k: v for k, v in values.items() if k in section.optimization}
            fields["optimization"] = {**section.optimization, **options}
        changes[name] = dataclasses.replace(section, **fields)
    return dataclasses.replace(cfg, **changes)


def factories():
    """The factories module, which builds what train() builds."""
    from mlt_project.training import factories as module

    return module


def write_params(cfg, path: Path) -> None:
    """A config as a params.yaml, for a fresh process to read with load_config (as a project
    does): the keys a section gathers for a signature (networks, the optimizer's) go back to
    where params.yaml has them."""
    import yaml

    plain = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, for YAML
    plain["model"] |= plain["model"].pop("networks")
    plain["training"] |= plain["training"].pop("optimization")
    path.write_text(yaml.safe_dump(plain, sort_keys=False))


def write_split(path: Path, images, labels, class_names: list[str]) -> None:
    """One split in one go, with made-up source names."""
    from mlt_project.data import store

    names = [f"{i}.png" for i in range(len(labels))]
    store.write_chunks(path, [(images, labels, names)], tuple(images.shape[1:]), class_names)


def write_synthetic(
    processed: Path, splits: dict[str, int], size: int, classes: int = 10, channels: int = 1
) -> int:
    """Random uint8 images with learnable class offsets as Parquet splits; returns data bytes."""
    from mlt_project.data.store import split_path

    rng = np.random.default_rng(0)
    total = 0
    for split, count in splits.items():
        labels = rng.integers(0, classes, count)
        images = rng.integers(0, 128, (count, channels, size, size), dtype=np.uint8)
        images += (labels * 12).astype(np.uint8)[:, None, None, None]
        class_names = [str(c) for c in range(classes)]
        write_split(split_path(processed, split), images, labels, class_names)
        total += images.nbytes
    return total


def write_pngs(raw: Path, count: int, size: int, classes: int = 10, coarse: bool = False) -> None:
    """RGB PNGs at `size`: noise (decoding is real work), or with `coarse` 16x16 noise upscaled
    and lightly compressed (quick to write and read, for memory figures)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = raw / str(i % classes)
        folder.mkdir(parents=True, exist_ok=True)
        side = 16 if coarse else size
        image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        if coarse:
            image.resize((size, size)).save(folder / f"{i:06d}.png", compress_level=1)
        else:
            image.save(folder / f"{i:06d}.png")


# ---------------------------------------------------------------- P1: training loop


def bare_epoch(
    model, optimizer, train, val, batch_size: int, eval_batch_size: int, train_acc=None
) -> None:
    """One epoch the way a hand-written loop does it: index, forward, backward, step; validate.

    With `train_acc` (a torchmetrics metric) it also accumulates the training accuracy, as the
    project's LightningModule does, and reads it once at the end of the epoch.
    """
    import torch
    import torch.nn.functional as F

    images, labels = train
    model.train()
    for index in torch.randperm(len(labels)).split(batch_size):
        logits = model(images[index])
        loss = F.cross_entropy(logits, labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if train_acc is not None:
            train_acc.update(logits, labels[index])
    if train_acc is not None:
        float(train_acc.compute())
        train_acc.reset()
    model.eval()
    correct = torch.zeros(())
    with torch.inference_mode():
        for start in range(0, len(val[1]), eval_batch_size):
            logits = model(val[0][start : start + eval_batch_size])
            F.cross_entropy(logits, val[1][start : start + eval_batch_size])
            correct += (logits.argmax(1) == val[1][start : start + eval_batch_size]).sum()
    float(correct)  # the one host sync a loop that reports val accuracy needs


def epoch_clock():
    """A Lightning callback noting the time at each train epoch's start and at the end, and the
    list it notes them in."""
    import lightning as L

    starts: list[float] = []

    class EpochStarts(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            starts.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module) -> None:
            starts.append(time.perf_counter())

    return EpochStarts(), starts


def lightning_epochs(cfg, epochs: int) -> list[float]:
    """Seconds per epoch of the generated project's trainer, from one train epoch to the next."""
    import lightning as L

    create_datamodule, create_model = factories().create_datamodule, factories().create_model
    create_trainer = factories().create_trainer

    clock, starts = epoch_clock()
    L.seed_everything(0)
    trainer = create_trainer(cfg, max_epochs=epochs)
    trainer.callbacks.append(clock)
    trainer.fit(create_model(cfg), datamodule=create_datamodule(cfg))
    return [b - a for a, b in itertools.pairwise(starts)]


def bare_epochs(cfg, epochs: int, train_acc: bool = False) -> list[float]:
    import torch
    from torchmetrics.classification import MulticlassAccuracy

    create_datamodule, create_model = factories().create_datamodule, factories().create_model

    torch.manual_seed(0)
    datamodule = create_datamodule(cfg)
    datamodule.setup("fit")
    train, val = datamodule.datasets["train"], datamodule.datasets["val"]
    model = create_model(cfg)
    # The project's optimizer (AdamW, the config's weight decay), built directly:
    # configure_optimizers needs a Trainer.
    settings = cfg.training.optimization
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"]
    )
    metric = MulticlassAccuracy(cfg.data.num_classes, validate_args=False) if train_acc else None
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        bare_epoch(
            model,
            optimizer,
            (train.images, train.labels),
            (val.images, val.labels),
            cfg.training.batch_size,
            cfg.evaluation.batch_size,
            metric,
        )
        times.append(time.perf_counter() - start)
    return times


def p1_case(
    cfg, warmup: int, measured: int, rounds: int, log: Path, train_acc: bool = False
) -> dict:
    """Alternate bare and Lightning runs; per side, the best of the rounds' medians."""
    bare, lightning = [], []
    for _ in range(rounds):
        epochs = bare_epochs(cfg, warmup + measured, train_acc)
        bare.append(statistics.median(epochs[warmup:]))
        with terminal():
            lightning.append(statistics.median(lightning_epochs(cfg, warmup + measured)[warmup:]))
    steps = -(-int(cfg_train_size(cfg)) // cfg.training.batch_size)
    return {
        "bare_epoch_s": min(bare),
        "lightning_epoch_s": min(lightning),
        "ratio": min(lightning) / min(bare),
        "all_rounds": {"bare": bare, "lightning": lightning},
        "steps_per_epoch": steps,
        "overhead_ms_per_step": (min(lightning) - min(bare)) / steps * 1000,
        "batch_size": cfg.training.batch_size,
        "epochs": {"warmup": warmup, "measured": measured, "rounds": rounds},
    }


def cfg_train_size(cfg) -> int:
    import pyarrow.parquet as pq

    from mlt_project.data.store import split_path

    return pq.ParquetFile(split_path(cfg.paths.processed, "train")).metadata.num_rows


def p1(root: Path, tmp: Path, log: Path) -> dict:
    from mlt_project.data.preprocess import preprocess
    from mlt_project.data.sample_data import write_digits

    digits = base_config(root, tmp / "digits", training={"accelerator": "cpu", "devices": 1})
    write_digits(Path(digits.paths.raw))
    with quiet(log):
        preprocess(digits)
    large = base_config(
        root,
        tmp / "large",
        data={"image_size": [LARGE["size"]] * 2},
        training={"accelerator": "cpu", "devices": 1, "batch_size": 256},
    )
    write_synthetic(Path(large.paths.processed), {"train": LARGE["train"], "val": LARGE["val"]}, 28)
    return {
        "digits": p1_case(digits, warmup=3, measured=12, rounds=3, log=log),
        "synthetic-60k": p1_case(large, warmup=1, measured=4, rounds=3, log=log),
    }


# ---------------------------------------------------------------- P7: a compute-bound network

P7_ROUNDS = 6  # ABBA: each side goes first in half of the rounds
P7_EPOCHS = {"warmup": 1, "measured": 3}
# The fine-tuning recipe of issue 21 (EMA weights, mixup, gradient accumulation): P7r measures
# the project's epoch with it on / without. The keys are the issue's; until params.yaml has them
# P7r is skipped, saying which are missing.
P7_RECIPE = {
    "training": {"ema_decay": 0.99, "accumulate_grad_batches": 2},
    "augment": {"mixup_alpha": 0.2},
}


def missing_keys(root: Path, sections: dict) -> list[str]:
    """The `section.key`s of `sections` that the checkout's params.yaml does not have
    (base_config would drop them silently)."""
    import yaml

    params = yaml.safe_load((root / "template_configs" / "project" / "params.yaml").read_text())
    return [
        f"{name}.{key}"
        for name, values in sections.items()
        for key in values
        if key not in params.get(name, {})
    ]


def p7_cfg(root: Path, tmp: Path, overrides: dict | None = None, size: int = 32, train=2048):
    """ResNet-18 on `train` synthetic 3 x `size` x `size` images, batch 128; `overrides`
    ({section: {key: value}}) on top: the one place a P7 variant differs."""
    sections = {
        "data": {"image_size": [size, size], "channels": 3},
        "model": {"name": "resnet18"},
        "training": {"accelerator": "cpu", "devices": 1, "batch_size": 128},
    }
    for name, values in (overrides or {}).items():
        sections[name] = {**sections.get(name, {}), **values}
    cfg = base_config(root, tmp, **sections)
    processed = Path(cfg.paths.processed)
    if not processed.exists():
        splits = {"train": train, "val": train // 8, "test": train // 8}
        write_synthetic(processed, splits, size, channels=3)
    return cfg


def train_like_epochs(cfg, epochs: int, channels_last: bool = False) -> list[float]:
    """Seconds per epoch of the Trainer train() runs: create_trainer's callbacks (TensorBoard,
    learning-rate monitor, training curves, progress bar) plus the resume checkpoint.
    `channels_last`: the network's weights in that memory format (cuDNN then keeps it)."""
    import signal

    import lightning as L

    from mlt_project.training.callbacks import quiet_warnings
    from mlt_project.training.resume import run_fingerprint

    module = factories()
    cfg = dataclasses.replace(
        cfg, runtime=dataclasses.replace(cfg.runtime, channels_last=channels_last)
    )
    clock, starts = epoch_clock()
    L.seed_everything(0)
    trainer = module.create_trainer(cfg, fingerprint=run_fingerprint(cfg), max_epochs=epochs)
    trainer.callbacks.append(clock)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        model = module.create_model(cfg)
        with quiet_warnings():
            trainer.fit(model, datamodule=module.create_datamodule(cfg))
    finally:
        signal.signal(signal.SIGTERM, handler)
    return [b - a for a, b in itertools.pairwise(starts)]


def bare_train_epochs(cfg, epochs: int, channels_last: bool = False) -> list[float]:
    """Seconds per epoch of a hand-written loop doing what train()'s Trainer does: the same
    network, batch and optimizer (its weight decay included); a progress bar, the loss and
    learning rate to TensorBoard every LOG_EVERY_N_STEPS steps, the loss checked for NaN there,
    the epoch's mean loss and validation loss and accuracy (to TensorBoard and the curves CSV),
    training accuracy accumulated, and the resume checkpoint (weights, optimizer, random state)
    every runtime.checkpoint_every_n_steps steps. On a GPU: pinned batches copied non-blocking,
    bf16 autocast for bf16-mixed, as Lightning's precision plugin does."""
    import csv

    import torch
    import torch.nn.functional as F
    from torch.utils.tensorboard import SummaryWriter
    from torchmetrics.classification import MulticlassAccuracy
    from tqdm import tqdm

    module = factories()
    every = getattr(module, "LOG_EVERY_N_STEPS", 10)
    torch.manual_seed(0)
    datamodule = module.create_datamodule(cfg)
    datamodule.setup("fit")
    train, val = datamodule.datasets["train"], datamodule.datasets["val"]
    device = torch.device("cuda" if cfg.training.accelerator in ("gpu", "cuda") else "cpu")
    bf16 = cfg.training.precision == "bf16-mixed"
    images_of, labels_of = train.images, train.labels
    if device.type == "cuda":
        images_of, labels_of = images_of.pin_memory(), labels_of.pin_memory()
    model = module.create_model(cfg).to(device)
    net = model.net
    if channels_last:
        net.to(memory_format=torch.channels_last)
    settings = model.optimization
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    assert settings.optimizer == "adamw" and settings.scheduler == "none", vars(settings)
    train_acc = MulticlassAccuracy(cfg.data.num_classes, validate_args=False).to(device)
    val_acc = MulticlassAccuracy(cfg.data.num_classes).to(device)
    writer = SummaryWriter(str(Path(cfg.paths.logs) / "bare"))
    checkpoint = Path(cfg.paths.checkpoints) / "bare.ckpt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    batch = cfg.training.batch_size
    rows, times, step = [], [], 0
    for epoch in range(epochs):
        start = time.perf_counter()
        net.train()
        loss_sum, batches = torch.zeros((), device=device), 0
        order = torch.randperm(len(labels_of)).split(batch)
        bar = tqdm(total=len(order), desc=f"Epoch {epoch}", mininterval=0)
        for i, index in enumerate(order):
            images = images_of[index].to(device, non_blocking=True)
            labels = labels_of[index].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = net(model.augment(images))
                loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            train_acc.update(logits, labels)
            loss_sum += loss.detach().float()
            batches += 1
            if step % every == 0 or i == len(order) - 1:
                value = float(loss)
                if not math.isfinite(value):
                    raise RuntimeError(f"loss {value} at step {step}")
                writer.add_scalar("train/loss", value, step)
                writer.add_scalar("lr-AdamW", optimizer.param_groups[0]["lr"], step)
                bar.set_postfix(loss=f"{value:.3f}", refresh=False)
                bar.update(i + 1 - bar.n)
            if step % cfg.runtime.checkpoint_every_n_steps == 0:
                state = {"net": net.state_dict(), "optimizer": optimizer.state_dict()}
                state["rng"] = torch.get_rng_state()
                tmp = checkpoint.with_name(f".{checkpoint.name}.tmp")
                torch.save(state, tmp)
                os.replace(tmp, checkpoint)
        bar.close()
        writer.add_scalar("train/accuracy", float(train_acc.compute()), step)
        train_acc.reset()
        net.eval()
        val_loss = torch.zeros((), device=device)
        with torch.inference_mode():
            for begin in tqdm(range(0, len(val.labels), cfg.evaluation.batch_size), leave=False):
                end = begin + cfg.evaluation.batch_size
                images = val.images[begin:end].to(device, non_blocking=True)
                labels = val.labels[begin:end].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = net(images)
                val_loss += F.cross_entropy(logits.float(), labels, reduction="sum")
                val_acc.update(logits, labels)
        row = {"epoch": epoch, "train_loss": float(loss_sum) / batches}
        row |= {"val_loss": float(val_loss) / len(val.labels), "val_acc": float(val_acc.compute())}
        val_acc.reset()
        writer.add_scalar("val/loss", row["val_loss"], step)
        writer.add_scalar("val/accuracy", row["val_acc"], step)
        rows.append(row)
        times.append(time.perf_counter() - start)
    writer.close()
    with (Path(cfg.paths.logs) / "bare_curves.csv").open("w", newline="") as f:
        table = csv.DictWriter(f, fieldnames=list(rows[0]))
        table.writeheader()
        table.writerows(rows)
    checkpoint.unlink(missing_ok=True)
    return times


def abba(sides: dict[str, Callable[[], list[float]]], rounds: int, label: str) -> dict:
    """Run two sides (each: seconds per epoch of one fresh run) in ABBA order for `rounds`
    rounds; per round the median of the measured epochs, and first side / second side."""
    (a, run_a), (b, run_b) = sides.items()
    warmup = P7_EPOCHS["warmup"]
    seconds: dict[str, list[float]] = {a: [], b: []}
    ratios = []
    for number in range(rounds):
        order = [(a, run_a), (b, run_b)] if number % 2 == 0 else [(b, run_b), (a, run_a)]
        for name, side in order:
            with terminal():  # progress bars drawn for real, as in a shell, on both sides
                seconds[name].append(statistics.median(side()[warmup:]))
        ratios.append(seconds[a][-1] / seconds[b][-1])
        print(
            f"{label} round {number + 1}/{rounds} ({order[0][0]} first): {a} "
            f"{seconds[a][-1]:.3f} s/epoch, {b} {seconds[b][-1]:.3f} s/epoch, "
            f"ratio {ratios[-1]:.3f}",
            file=sys.__stderr__,  # the console, even inside quiet()
            flush=True,
        )
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "ratio_iqr": [quartiles[0], quartiles[2]],
        "round_ratios": ratios,
        "epoch_s": {name: statistics.median(values) for name, values in seconds.items()},
        "round_epoch_s": seconds,
        "sides": [a, b],
        "epochs": {**P7_EPOCHS, "rounds": rounds, "order": "ABBA"},
    }


def p7(root: Path, tmp: Path, log: Path, rounds: int = P7_ROUNDS) -> dict:
    """ResNet-18 on synthetic 3x32x32 images: the project's Lightning epoch as train() runs it /
    a bare loop doing the same work (bare_train_epochs), in ABBA rounds."""
    cfg = p7_cfg(root, tmp / "p7")
    with quiet(log):
        result = abba(
            {
                "lightning": lambda: train_like_epochs(cfg, sum(P7_EPOCHS.values())),
                "bare": lambda: bare_train_epochs(cfg, sum(P7_EPOCHS.values())),
            },
            rounds,
            "P7",
        )
    return {"resnet18-3x32x32": result}


def p7r(root: Path, tmp: Path, log: Path, rounds: int = P7_ROUNDS) -> dict:
    """P7's Lightning epoch with the recipe on (P7_RECIPE) / without, in ABBA rounds."""
    missing = missing_keys(root, P7_RECIPE)
    if missing:
        message = f"skipped: params.yaml has no {', '.join(missing)} yet (issue 21's recipe keys)"
        print(f"P7r {message}", file=sys.stderr)
        return {"skipped": message}
    plain, recipe = p7_cfg(root, tmp / "p7"), p7_cfg(root, tmp / "p7r", P7_RECIPE)
    epochs = sum(P7_EPOCHS.values())
    with quiet(log):
        result = abba(
            {
                "recipe": lambda: train_like_epochs(recipe, epochs),
                "plain": lambda: train_like_epochs(plain, epochs),
            },
            rounds,
            "P7r",
        )
    return {"resnet18-3x32x32": result | {"recipe": P7_RECIPE}}


# The GPU variant: the issue-21 figure a lent GPU machine gives (benchmarks/gpu.py's `resnet` is
# ResNet-18 at 32 px). 4,096 images a side-run: a few seconds an epoch on an H200.
P7G = {
    "overrides": {
        "model": {"name": "resnet50"},
        "training": {"accelerator": "gpu", "precision": "bf16-mixed", "batch_size": 128},
    },
    "size": 224,
    "train": 4096,
}


def p7g(root: Path, tmp: Path, log: Path, rounds: int = P7_ROUNDS) -> dict:
    """ResNet-50, 3x224x224, bf16-mixed on a GPU: Lightning / bare loop, contiguous and
    channels-last, ABBA rounds each; images/s. Skipped (with a message) without CUDA."""
    import torch

    if not torch.cuda.is_available():
        message = "skipped: no CUDA device here (runs on a machine with a GPU)"
        print(f"P7g {message}", file=sys.stderr)
        return {"skipped": message}
    cfg = p7_cfg(root, tmp / "p7g", P7G["overrides"], size=P7G["size"], train=P7G["train"])
    epochs = sum(P7_EPOCHS.values())
    results = {}
    with quiet(log):
        for layout, last in (("contiguous", False), ("channels_last", True)):
            result = abba(
                {
                    "lightning": lambda last=last: train_like_epochs(cfg, epochs, last),
                    "bare": lambda last=last: bare_train_epochs(cfg, epochs, last),
                },
                rounds,
                f"P7g {layout}",
            )
            result["images_per_s"] = {k: P7G["train"] / v for k, v in result["epoch_s"].items()}
            results[layout] = result
    results["channels_last_speedup"] = (
        results["contiguous"]["epoch_s"]["lightning"]
        / results["channels_last"]["epoch_s"]["lightning"]
    )
    results["device"] = torch.cuda.get_device_name()
    return results


# ---------------------------------------------------------------- P8: bytecode at image build


def distributions(names: list[str]) -> list:
    """The installed distributions `names` need, dependencies and their extras included (torch
    takes the CUDA libraries through cuda-toolkit's extras)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    pending = [(name, "") for name in names]
    while pending:
        name, extra = pending.pop()
        name = canonicalize_name(name)
        if (name, extra) in done:
            continue
        done.add((name, extra))
        try:
            dist = found.get(name) or metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency this venv does not have
        found[name] = dist
        for spec in dist.requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                pending += [(requirement.name, "")]
                pending += [(requirement.name, wanted) for wanted in requirement.extras]
    return list(found.values())


def venv_without_bytecode(dest: Path, names: list[str]) -> Path:
    """A fresh venv holding `names` as this one has them, without one .pyc (the state Poetry's
    installer leaves in the image); the files are hard links. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", dest], check=True)
    python = dest / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    for dist in distributions(names):
        for file in dist.files or []:
            if "__pycache__" in file.parts or file.suffix == ".pyc" or ".." in file.parts:
                continue
            source, target = Path(dist.locate_file(file)), Path(purelib, file)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
    return python


def dockerfile_compileall(root: Path, venv: Path, python: Path) -> list[str]:
    """The builder's compileall command for /app/.venv, from the template's Dockerfile."""
    dockerfile = (root / "template_configs" / "project" / "Dockerfile").read_text()
    (command,) = re.findall(r"python3 -m compileall [^\n]*?/app/\.venv\b", dockerfile)
    argv = command.split()
    assert argv[:3] == ["python3", "-m", "compileall"], command
    return [str(python), *argv[1:-1], str(venv)]


def p8(root: Path, tmp: Path, log: Path, rounds: int = 5) -> dict:
    """`import lightning` / `import torch` in a fresh venv without .pyc (PYTHONDONTWRITEBYTECODE,
    as the image's runtime) against a copy compiled by the Dockerfile's compileall command; the
    two sides alternate, each round starting with the other one, after one warm-up each."""
    sides = {
        "no_pyc": venv_without_bytecode(tmp / "p8" / "no-pyc", ["lightning"]),
        "pyc": venv_without_bytecode(tmp / "p8" / "pyc", ["lightning"]),
    }
    command = dockerfile_compileall(root, tmp / "p8" / "pyc", sides["pyc"])
    start = time.perf_counter()
    with log.open("a") as out:  # exits 1 on files for other Pythons, as in the image (|| true)
        failed = subprocess.run(command, stdout=out, stderr=out).returncode != 0
    compile_s = time.perf_counter() - start
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"

    def seconds(python: Path, module: str) -> float:
        start = time.perf_counter()
        subprocess.run([python, "-c", f"import {module}"], env=env, check=True)
        return time.perf_counter() - start

    results = {}
    for module in ("torch", "lightning"):
        times: dict[str, list[float]] = {side: [] for side in sides}
        for python in sides.values():  # warm-up: the page cache, for both alike
            seconds(python, module)
        for round_ in range(rounds):
            order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
            for side in order:
                times[side].append(seconds(sides[side], module))
        medians = {side: statistics.median(v) for side, v in times.items()}
        results[module] = {
            "seconds": times,
            "median_s": medians,
            "spread_s": {side: [min(v), max(v)] for side, v in times.items()},
            "ratio": medians["no_pyc"] / medians["pyc"],
        }
    left = list((tmp / "p8" / "no-pyc").rglob("*.pyc"))
    assert not left, f"the no-pyc side wrote bytecode: {left[:3]}"
    compiled = sum(1 for _ in (tmp / "p8" / "pyc").rglob("*.pyc"))
    return {
        **results,
        "compileall_s": compile_s,
        "compileall_reported_errors": failed,
        "pyc_files": compiled,
        "rounds": rounds,
        "command": command[1:-1],
    }


def stdlib_without_bytecode(dest: Path) -> Path:
    """This interpreter's standard library as the Python images ship it (their build deletes
    every .pyc under /usr/local, and their tests): hard links, no .pyc. Returns the folder to
    give as PYTHONHOME."""
    import sysconfig

    stdlib = Path(sysconfig.get_path("stdlib"))
    target = dest / stdlib.relative_to(sys.base_prefix)
    skipped = {"__pycache__", "site-packages", "test", "tests", "idle_test"}
    for folder, folders, files in os.walk(stdlib):
        folders[:] = [name for name in folders if name not in skipped]
        into = target / Path(folder).relative_to(stdlib)
        into.mkdir(parents=True, exist_ok=True)
        for name in files:
            if not name.endswith((".pyc", ".pyo")):
                os.link(Path(folder, name), into / name)
    return dest


def dockerfile_stdlib_compileall(root: Path) -> list[str] | None:
    """The options of the base stage's compileall of the standard library (`sysconfig`'s stdlib
    path), or None where the template's Dockerfile has none."""
    dockerfile = (root / "template_configs" / "project" / "Dockerfile").read_text()
    found = re.search(
        r"python3 -m compileall ((?:\S+ )*?)\"\$\(python3 -c [^\n]*stdlib", dockerfile
    )
    return found[1].split() if found else None


def uncompiled_modules(python: Path, env: dict, module: str) -> list[str]:
    """The modules that importing `module` compiles from source in a fresh interpreter under
    `env`: those without a valid .pyc to load (PYTHONDONTWRITEBYTECODE: compiled every time)."""
    code = (
        f"import sys, importlib.util, {module}\n"
        "for name, m in sorted(sys.modules.items()):\n"
        "    spec = getattr(m, '__spec__', None)\n"
        "    cached = getattr(spec, 'cached', None)\n"
        "    import os\n"
        "    if cached and spec.origin.endswith('.py') and not os.path.exists(cached):\n"
        "        print(name)\n"
    )
    found = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True)
    found.check_returncode()
    return found.stdout.split()


P8C_ROUNDS = 7


def p8c(root: Path, tmp: Path, log: Path, rounds: int = P8C_ROUNDS) -> dict:
    """Cold start in the image: `import lightning` in a fresh interpreter with the bytecode the
    Dockerfile's compileall commands make (the dependencies compiled as the builder does, the
    standard library as the Python images ship it, compiled by the base stage's command where
    there is one), PYTHONDONTWRITEBYTECODE=1 / the same environment with all its bytecode (the
    host interpreter's standard library). A third side, the standard library left as the Python
    images ship it (no base-stage compileall), shows what that command is worth. Page cache
    warm on every side (a warm-up each), the order rotating each round. Also: how many modules
    each side compiles at every start."""
    venv = tmp / "p8" / "pyc"  # P8's compiled environment, when P8 ran first
    python = venv / "bin" / "python"
    if not python.exists():
        python = venv_without_bytecode(venv, ["lightning"])
        with log.open("a") as out:  # exits 1 on files for other Pythons, as in the image
            subprocess.run(dockerfile_compileall(root, venv, python), stdout=out, stderr=out)
    shipped = stdlib_without_bytecode(tmp / "p8c" / "shipped")
    home = stdlib_without_bytecode(tmp / "p8c" / "home")
    options = dockerfile_stdlib_compileall(root)
    if options is not None:
        stdlib = next(home.glob("lib/python3*"))
        with log.open("a") as out:
            subprocess.run([sys.executable, "-m", "compileall", *options, str(stdlib)],
                           stdout=out, stderr=out, check=True)  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    envs = {
        "image": clean | {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONHOME": str(home)},
        "warm": clean | {"PYTHONDONTWRITEBYTECODE": "1"},
        "stdlib_as_shipped": clean | {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONHOME": str(shipped)},
    }

    def seconds(side: str) -> float:
        start = time.perf_counter()
        subprocess.run([python, "-c", "import lightning"], env=envs[side], check=True)
        return time.perf_counter() - start

    sides = list(envs)
    for side in sides:  # warm-up: the page cache, for every side alike
        seconds(side)
    times: dict[str, list[float]] = {side: [] for side in sides}
    for number in range(rounds):
        for side in sides[number % len(sides) :] + sides[: number % len(sides)]:
            times[side].append(seconds(side))

    def over_warm(side: str) -> list[float]:
        return [a / b for a, b in zip(times[side], times["warm"], strict=True)]

    ratios, shipped_ratios = over_warm("image"), over_warm("stdlib_as_shipped")
    compiled = {side: uncompiled_modules(python, env, "lightning") for side, env in envs.items()}
    return {
        "seconds": times,
        "median_s": {side: statistics.median(v) for side, v in times.items()},
        "spread_s": {side: [min(v), max(v)] for side, v in times.items()},
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "round_ratios": ratios,
        "stdlib_as_shipped_ratio": statistics.median(shipped_ratios),
        "stdlib_as_shipped_ratio_range": [min(shipped_ratios), max(shipped_ratios)],
        "compiled_each_start": {side: len(names) for side, names in compiled.items()},
        "compiled_examples": {side: names[:10] for side, names in compiled.items()},
        "stdlib_compileall": options,
        "rounds": rounds,
    }


# ---------------------------------------------------------------- P2: data loading


def p2(root: Path, tmp: Path, log: Path) -> dict:
    import pyarrow.parquet as pq

    from mlt_project.data.store import split_path

    create_datamodule = factories().create_datamodule

    training = {"accelerator": "cpu", "devices": 1, "batch_size": 256}
    cfg = base_config(
        root, tmp / "large", data={"image_size": [LARGE["size"]] * 2}, training=training
    )
    processed = Path(cfg.paths.processed)
    if not processed.exists():
        write_synthetic(processed, {"train": LARGE["train"], "val": LARGE["val"]}, LARGE["size"])
    files = [split_path(processed, split) for split in ("train", "val")]

    def arrow() -> None:
        for path in files:
            table = pq.read_table(path)
            pixels = table.column("image").combine_chunks()
            if hasattr(pixels, "flatten"):  # a list<uint8> column, as before format 2
                pixels.flatten().to_numpy()
            else:  # fixed_size_binary: its data buffer is the pixels
                np.frombuffer(pixels.buffers()[1], dtype=np.uint8)
            table.column("label").to_numpy()

    def setup() -> None:
        create_datamodule(cfg).setup("fit")

    arrow_s, setup_s = [], []
    for _ in range(5):
        arrow_s.append(median_time(arrow, 1))
        setup_s.append(median_time(setup, 1))
    data_bytes = LARGE["train"] * LARGE["size"] ** 2 + LARGE["val"] * LARGE["size"] ** 2

    small = base_config(
        root, tmp / "small", data={"image_size": [LARGE["size"]] * 2}, training=training
    )
    write_synthetic(Path(small.paths.processed), {"train": 1000, "val": 200}, LARGE["size"])
    peaks = {name: peak_rss(root, c, log) for name, c in (("large", cfg), ("small", small))}
    return {
        "arrow_s": statistics.median(arrow_s),
        "setup_s": statistics.median(setup_s),
        "ratio": statistics.median(setup_s) / statistics.median(arrow_s),
        "data_mb": data_bytes / 2**20,
        "rss_rise_mb": {k: v / 2**20 for k, v in peaks.items()},
        "peak_memory_copies": (peaks["large"] - peaks["small"]) / data_bytes,
    }


def peak_rss(root: Path, cfg, log: Path) -> int:
    """How much a fresh process's RSS rises while it trains one epoch on `cfg`'s data."""
    cfg_file = Path(cfg.paths.logs).parent / "params.yaml"
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    write_params(cfg, cfg_file)
    with log.open("a") as out:
        result = subprocess.run(
            [sys.executable, __file__, "--root", str(root), "--memprobe", str(cfg_file)],
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
            check=True,
        )
    return int(result.stdout.strip().splitlines()[-1])


def memprobe(cfg_file: Path) -> None:
    """(subprocess) train one epoch; print how far RSS rose above where it was before, in bytes."""
    import psutil

    from mlt_project.base.config import load_config

    create_datamodule, create_model = factories().create_datamodule, factories().create_model
    create_trainer = factories().create_trainer

    cfg = load_config(cfg_file)
    trainer = create_trainer(cfg, max_epochs=1, accelerator="cpu", devices=1)
    model, datamodule = create_model(cfg), create_datamodule(cfg)
    process = psutil.Process()
    before, peak, done = process.memory_info().rss, [0], threading.Event()

    def sample() -> None:  # ru_maxrss would include the peak of importing torch and friends
        while not done.wait(0.002):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    trainer.fit(model, datamodule=datamodule)
    done.set()
    sampler.join()
    print(max(peak[0], process.memory_info().rss) - before)


def p2b(root: Path, tmp: Path, log: Path) -> dict:
    return loader_rates(root, tmp, "p2b", count=20_000, size=64)


def p2c(root: Path, tmp: Path, log: Path) -> dict:
    return loader_rates(root, tmp, "p2c", count=3_000, size=224)


def run_probe(root: Path, flag: str, cfg, cfg_file: Path, log: Path) -> dict:
    """This script as `--root ROOT FLAG CFG_FILE` in a fresh process (its memory its own): the
    JSON of its last line. `cfg` goes to CFG_FILE; what the probe prints otherwise, to `log`."""
    write_params(cfg, cfg_file)
    with log.open("a") as err:
        result = subprocess.run(
            [sys.executable, __file__, "--root", str(root), flag, str(cfg_file)],
            stdout=subprocess.PIPE, stderr=err, text=True, check=True,
        )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def streamed_runtime(root: Path, tmp: Path) -> dict:
    """Streaming with `loader_workers: auto`; 2 workers in checkouts from before `auto`."""
    try:
        base_config(root, tmp, runtime={"streaming": True, "loader_workers": "auto"})
    except (TypeError, ValueError):  # the config's check of an int
        return {"streaming": True, "loader_workers": 2, "persistent_workers": True}
    return {"streaming": True, "loader_workers": "auto", "persistent_workers": True}


def loader_cfg(root: Path, tmp: Path, size: int, runtime: dict):
    cfg = base_config(root, tmp, **{"data": {"image_size": [size, size], "channels": 3},
                      "training": {"batch_size": 256}, "runtime": runtime})  # fmt: skip
    if "runtime" not in {f.name for f in dataclasses.fields(cfg)}:  # before the runtime section
        training = {"num_workers": 2, "streaming": runtime["streaming"]}
        cfg = base_config(root, tmp, data={"image_size": [size, size], "channels": 3},
                          training={"batch_size": 256, **training})  # fmt: skip
    return cfg


def loader_rates(root: Path, tmp: Path, name: str, count: int, size: int, rounds: int = 5) -> dict:
    """Images/s through train_dataloader alone, streamed and in memory, an epoch of each in
    turn (the side that goes first alternates), after a round that starts the workers."""
    sides = {"in_memory": {"streaming": False, "loader_workers": 0}}
    sides["streamed"] = streamed_runtime(root, tmp / name)
    cfgs = {side: loader_cfg(root, tmp / name, size, rt) for side, rt in sides.items()}
    write_synthetic(
        Path(cfgs["streamed"].paths.processed), {"train": count, "val": 500}, size, 10, 3
    )
    loaders = {}
    for side, cfg in cfgs.items():
        datamodule = factories().create_datamodule(cfg)
        datamodule.setup("fit")
        loaders[side] = datamodule.train_dataloader()
    rates: dict[str, list[float]] = {side: [] for side in sides}
    cpu: dict[str, list[float]] = {side: [] for side in sides}  # CPU-us per image, workers too
    for turn in range(rounds + 1):
        for side in list(sides)[:: 1 if turn % 2 else -1]:
            start, seen, cpu_start = time.perf_counter(), 0, family_cpu()
            for _images, labels in loaders[side]:
                seen += len(labels)
            if turn:
                rates[side].append(seen / (time.perf_counter() - start))
                cpu[side].append((family_cpu() - cpu_start) / seen * 1e6)
    workers = loaders["streamed"].num_workers
    del loaders
    median = {side: statistics.median(r) for side, r in rates.items()}
    ratios = [s / m for s, m in zip(rates["streamed"], rates["in_memory"], strict=True)]
    return {
        "images": count,
        "shape": [3, size, size],
        "streamed_workers": workers,
        "images_per_s": median,
        "ratio": median["streamed"] / median["in_memory"],
        "ratio_spread": [min(ratios), max(ratios)],
        "rates": rates,
        # On a busy machine the rates follow the share of the cores each side gets (more
        # processes, more share); the CPU time an image costs does not.
        "cpu_us_per_image": {side: statistics.median(c) for side, c in cpu.items()},
    }


def family_cpu() -> float:
    """CPU seconds of this process and its live children (the loader's persistent workers)."""
    import psutil

    process = psutil.Process()
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


P2M_ROUNDS = 3


def p2m(
    root: Path,
    tmp: Path,
    log: Path,
    sizes: tuple[int, int] = (80_000, 240_000),
    rounds: int = P2M_ROUNDS,
) -> dict:
    """Peak RSS (process and loader workers) of two streamed epochs at 3x64x64, at 2 split
    sizes, each in a fresh process; the sizes alternate which goes first, `rounds` rounds."""
    from mlt_project.data.store import split_path, write_chunks

    cfgs = {}
    for count in sizes:
        cfg = loader_cfg(root, tmp / f"p2m-{count}", 64, streamed_runtime(root, tmp))
        processed = Path(cfg.paths.processed)
        rng = np.random.default_rng(0)
        processed.mkdir(parents=True)
        for split, rows in (("train", count), ("val", 500)):
            chunks = (  # in pieces: the writer never holds the whole split
                (
                    rng.integers(0, 256, (n, 3, 64, 64), dtype=np.uint8),
                    rng.integers(0, 10, n),
                    [f"{i}.png" for i in range(n)],
                )
                for n in [10_000] * (rows // 10_000) + [rows % 10_000]
                if n
            )
            write_chunks(split_path(processed, split), chunks, (3, 64, 64), list("0123456789"))
        cfgs[count] = cfg
    probes: dict[int, list[dict]] = {count: [] for count in sizes}
    for number in range(rounds):
        for count in sizes if number % 2 == 0 else sizes[::-1]:
            probe = run_probe(root, "--streamprobe", cfgs[count], tmp / f"p2m-{count}.yaml", log)
            probes[count].append(probe)
    for cfg in cfgs.values():
        shutil.rmtree(cfg.paths.processed)
    small, large = sizes
    ratios = [
        b["peak_mb"] / a["peak_mb"] for a, b in zip(probes[small], probes[large], strict=True)
    ]
    out: dict = {
        str(count): {
            "split_mb": count * 3 * 64 * 64 / 2**20,
            "peak_mb": statistics.median(p["peak_mb"] for p in probes[count]),
            "rounds": probes[count],
            **{
                key: statistics.median(p[key] for p in probes[count])
                for key in ("rise_mb", "processes", "arrow_max_mb")
                if key in probes[count][0]
            },
        }
        for count in sizes
    }
    out["ratio"] = statistics.median(ratios)
    out["ratio_range"] = [min(ratios), max(ratios)]
    return out


def streamprobe(cfg_file: Path) -> None:
    """(subprocess) two streamed epochs; print the peak RSS of this process and its loader
    workers, its rise over this process before, and the most Arrow's memory pool held, in MB, as
    JSON."""
    import psutil
    import pyarrow as pa

    from mlt_project.base.config import load_config

    cfg = load_config(cfg_file)
    datamodule = factories().create_datamodule(cfg)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = {"total": 0, "processes": 1}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            with contextlib.suppress(psutil.Error):
                family = [process, *process.children(recursive=True)]
                peak["total"] = max(peak["total"], sum(p.memory_info().rss for p in family))
                peak["processes"] = max(peak["processes"], len(family))

    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(2):
        for _batch in loader:
            pass
    done.set()
    sampler.join()
    # Each worker starts as a copy of this process (shared pages counted in each): its baseline.
    rise = peak["total"] - baseline * peak["processes"]
    mb = 2**20
    print(json.dumps({"peak_mb": peak["total"] / mb, "rise_mb": rise / mb,
                      "processes": peak["processes"],
                      "arrow_max_mb": pa.default_memory_pool().max_memory() / mb}))  # fmt: skip


# ---------------------------------------------------------------- P3: preprocess


P3_ROUNDS = 4


def p3(
    root: Path, tmp: Path, log: Path, count: int = 1500, size: int = 256, rounds: int = P3_ROUNDS
) -> dict:
    """preprocess with 2 workers / with 1, a run of each per round, the side going first
    alternating, after a warm-up run of each (the page cache); per round the ratio, and the CPU
    seconds of each side (this process and its workers)."""
    from mlt_project.data.preprocess import preprocess

    raw = tmp / "pngs"
    write_pngs(raw, count, size)
    # Photo-sized RGB PNGs (noise: they compress badly, so decoding is real work) to 64x64.
    cfg = base_config(root, tmp / "p3", data={"image_size": [64, 64], "channels": 3})
    cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, raw=str(raw)))
    configs = {
        n: dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, preprocess_workers=n))
        for n in (1, 2)
    }
    seconds: dict[int, list[float]] = {n: [] for n in configs}
    cpu: dict[int, list[float]] = {n: [] for n in configs}
    for number in range(rounds + 1):
        for n in (1, 2) if number % 2 else (2, 1):
            before, start = os.times(), time.perf_counter()
            with quiet(log):
                preprocess(configs[n])
            wall, after = time.perf_counter() - start, os.times()
            if number:  # round 0 is the warm-up
                seconds[n].append(wall)
                cpu[n].append(sum(after[:4]) - sum(before[:4]))  # process and its workers
    ratios = [one / two for one, two in zip(seconds[1], seconds[2], strict=True)]
    medians = {n: statistics.median(s) for n, s in seconds.items()}
    return {
        "images": count,
        "png_size": size,
        "seconds": {str(n): s for n, s in medians.items()},
        "images_per_s": {str(n): count / s for n, s in medians.items()},
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "round_ratios": ratios,
        "round_seconds": {str(n): s for n, s in seconds.items()},
        "cpu_s": {str(n): statistics.median(c) for n, c in cpu.items()},
    }


def p3m(root: Path, tmp: Path, log: Path, count: int = 4000) -> dict:
    """Peak RSS of preprocess in a fresh process with 2 workers, at three image sizes."""
    out = {}
    for size in (64, 128, 224):
        raw = tmp / f"rss-{size}"
        write_pngs(raw, count, size, coarse=True)
        cfg = base_config(
            root, tmp / f"p3m-{size}", data={"image_size": [size, size], "channels": 3}
        )
        cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, raw=str(raw)))
        if "runtime" in {f.name for f in dataclasses.fields(cfg)}:
            cfg = dataclasses.replace(
                cfg, runtime=dataclasses.replace(cfg.runtime, preprocess_workers=2)
            )
        out[str(size)] = run_probe(root, "--rssprobe", cfg, tmp / f"p3m-{size}.yaml", log)
        shutil.rmtree(raw)
    return out


def rssprobe(cfg_file: Path) -> None:
    """(subprocess) preprocess; print peak RSS of this process and its workers, in MB, as JSON."""
    import psutil

    from mlt_project.base.config import load_config
    from mlt_project.data import preprocess as stage
    from mlt_project.data import store

    cfg = load_config(cfg_file)
    image_bytes = int(np.prod(cfg.data.input_shape))
    if hasattr(store, "rows_per_group"):
        group_bytes = store.rows_per_group(cfg.data.input_shape) * image_bytes
    else:
        group_bytes = store.ROW_GROUP_SIZE * image_bytes
    process = psutil.Process()
    baseline = process.memory_info().rss  # the interpreter with the stage imported
    peak = {"total": 0, "main": 0, "processes": 1}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            with contextlib.suppress(psutil.Error):
                family = [process, *process.children(recursive=True)]
                rss = [p.memory_info().rss for p in family]
                peak["total"] = max(peak["total"], sum(rss))
                peak["main"] = max(peak["main"], rss[0])
                peak["processes"] = max(peak["processes"], len(family))

    sampler = threading.Thread(target=sample)
    sampler.start()
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):  # the progress bar
        stage.preprocess(cfg)
    done.set()
    sampler.join()
    mb = 2**20
    # Each worker starts as a copy of this interpreter: the baseline of the process family.
    rise = peak["total"] - baseline * peak["processes"]
    print(json.dumps({
        "peak_total_mb": peak["total"] / mb, "peak_main_mb": peak["main"] / mb,
        "baseline_mb": baseline / mb, "processes": peak["processes"],
        "row_group_mb": group_bytes / mb, "rise_mb": rise / mb,
        "main_rise_mb": (peak["main"] - baseline) / mb,
        "rise_per_row_group": rise / group_bytes,
    }))  # fmt: skip


# ---------------------------------------------------------------- P4: inference latency


def p4(root: Path, tmp: Path, log: Path) -> dict:
    import torch

    create_model = factories().create_model

    cfg = base_config(root, tmp / "p4")
    model = create_model(cfg).eval()
    onnx_file = tmp / "model.onnx"
    try:  # the project's own export (issue 3), when this checkout has it
        from mlt_project.serve.onnx_export import export_onnx, onnx_session, run_onnx, run_torch

        with quiet(log):
            export_onnx(model, onnx_file, cfg.data.input_shape, cfg.release.onnx_opset)
        session, source = onnx_session(onnx_file), "mlt_project.serve.onnx_export"
    except ImportError:
        import onnxruntime as ort

        with quiet(log):
            torch.onnx.export(
                model, (torch.zeros((2, *cfg.data.input_shape), dtype=torch.uint8),), onnx_file,
                input_names=["images"], output_names=["logits"], dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            )  # fmt: skip
        session, source = ort.InferenceSession(str(onnx_file)), "self-contained export"

        def run_onnx(s, x):
            return s.run(["logits"], {"images": x})[0]

        def run_torch(m, x):
            with torch.inference_mode():
                return m(torch.from_numpy(x)).numpy()

    image = np.zeros((1, *cfg.data.input_shape), dtype=np.uint8)
    runners = {
        "pytorch": lambda: run_torch(model, image),
        "onnxruntime": lambda: run_onnx(session, image),
    }
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for fn in runners.values():  # warm-up
        for _ in range(200):
            fn()
    for _ in range(10):  # interleaved blocks, so a burst of load hits both sides
        for name, fn in runners.items():
            for _ in range(200):
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    p50 = {name: float(np.percentile(s, 50)) * 1e6 for name, s in samples.items()}
    return {
        "p50_us": p50,
        "ratio": p50["pytorch"] / p50["onnxruntime"],
        "export": source,
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- P9: the model server

P9_MODELS = {  # name -> params changes, requests per concurrency level, copies of each image for predict
    "default": ({}, 2000, 16),
    "resnet18-224": (
        {"data": {"image_size": [224, 224], "channels": 3}, "model": {"name": "resnet18"}},
        500,
        1,
    ),
}
P9_CLIENTS = (1, 8)
P9_ROUNDS = 2  # ABBA: predict first in one round, the server first in the other
P9_IMAGES = 64  # distinct PNGs at the model's size, cycled through


def p9_release(root: Path, cfg, folder: Path) -> Path:
    """model.onnx of the params' network (untrained: the time is the same) and the
    model_info.json keys predict and the server read."""
    from mlt_project.serve.onnx_export import export_onnx

    folder.mkdir(parents=True)
    model = folder / "model.onnx"
    net = factories().create_model(cfg).net.eval()
    export_onnx(net, model, cfg.data.input_shape, cfg.release.onnx_opset)
    info = {
        "version": "bench",
        "task": cfg.data.task,
        "class_names": [str(c) for c in range(cfg.data.num_classes)],
        "input": {"shape": ["batch", *cfg.data.input_shape]},
        "metrics": {},
        "params": {"data": dataclasses.asdict(cfg.data)},
    }
    (folder / "model_info.json").write_text(json.dumps(info))
    return model


def p9_images(folder: Path, cfg, copies: int) -> list[bytes]:
    """PNGs of noise at the model's input size and channels (noise: decoding is real work), each
    written `copies` times, so that predict's start (its session) weighs little in its rate."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    height, width = cfg.data.image_size
    shape = (height, width) if cfg.data.channels == 1 else (height, width, 3)
    bodies = []
    for i in range(P9_IMAGES):
        path = folder / f"{i:03d}-0.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        bodies.append(path.read_bytes())
        for copy in range(1, copies):
            (folder / f"{i:03d}-{copy}.png").write_bytes(bodies[-1])
    return bodies


def p9_load(port: int, bodies: list[bytes], clients: int, requests: int) -> dict:
    """`requests` POSTs from `clients` threads, each on one keep-alive connection."""
    import http.client

    counter = itertools.count()
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine = []
        while (i := next(counter)) < requests:
            start = time.perf_counter()
            connection.request(
                "POST", "/invocations", bodies[i % len(bodies)], {"Content-Type": "image/png"}
            )
            response = connection.getresponse()
            response.read()
            mine.append(time.perf_counter() - start)
            if response.status != 200:
                with lock:
                    errors[0] += 1
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def p9_predict_rate(model: Path, folder: Path, log: Path) -> float:
    """predict's images/s on the folder (decode + ONNX Runtime, 256 a batch), best of 2."""
    from mlt_project.serve.predict import predict

    count = sum(1 for _ in folder.glob("*.png"))
    times = []
    for _ in range(2):
        start = time.perf_counter()
        with quiet(log):
            predict(model, folder, folder.parent / "predictions.csv")
        times.append(time.perf_counter() - start)
    return count / min(times)


def p9_batching(model: Path, cfg, seconds: float = 3.0, rounds: int = 3) -> dict:
    """What a micro-batcher could add, in ONNX Runtime alone: images/s of one run of 8 images /
    8 runs of 1 at once from 8 threads (what the server does with 8 requests in flight), and of
    runs of 1 in turn; alternating, median of the rounds."""
    from mlt_project.serve.onnx_runtime import onnx_session, run_onnx

    session = onnx_session(model)
    one = np.zeros((1, *cfg.data.input_shape), dtype=np.uint8)
    eight = np.zeros((8, *cfg.data.input_shape), dtype=np.uint8)

    def rate(threads: int, batch: np.ndarray) -> float:
        done = [0] * threads
        stop = time.perf_counter() + seconds

        def work(i: int) -> None:
            while time.perf_counter() < stop:
                run_onnx(session, batch)
                done[i] += len(batch)

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return sum(done) / (time.perf_counter() - start)

    run_onnx(session, eight)
    rates: dict[str, list[float]] = {"batch8": [], "concurrent8x1": [], "sequential1": []}
    for number in range(rounds):
        sides = [("batch8", 1, eight), ("concurrent8x1", 8, one), ("sequential1", 1, one)]
        for name, threads, batch in sides if number % 2 == 0 else sides[::-1]:
            rates[name].append(rate(threads, batch))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "images_per_s": medians,
        "batch8_over_concurrent": medians["batch8"] / medians["concurrent8x1"],
        "batch8_over_sequential": medians["batch8"] / medians["sequential1"],
        "spread": {name: [min(v), max(v)] for name, v in rates.items()},
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def p9_case(
    root: Path, tmp: Path, log: Path, name: str, changes: dict, requests: int, copies: int
) -> dict:
    cfg = base_config(root, tmp / name, **changes)
    with quiet(log):
        model = p9_release(root, cfg, tmp / name / "release")
    bodies = p9_images(tmp / name / "images", cfg, copies)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(root / "src_templates"))
    with log.open("a") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlt_project.serve", "--model", str(model.parent), "--port", str(port)],
            env=env, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        wait_for_ping(port, server)
        p9_load(port, bodies, 8, 64)  # warm-up: threads, sessions, caches
        load: dict[int, list[dict]] = {c: [] for c in P9_CLIENTS}
        predict_rates = []
        per_round = requests // P9_ROUNDS
        for number in range(P9_ROUNDS):
            sides = ["predict", "server"] if number % 2 == 0 else ["server", "predict"]
            for side in sides:
                if side == "predict":
                    predict_rates.append(p9_predict_rate(model, tmp / name / "images", log))
                    continue
                for clients in P9_CLIENTS:
                    load[clients].append(p9_load(port, bodies, clients, per_round))
            print(
                f"P9 {name} round {number + 1}/{P9_ROUNDS} ({sides[0]} first): predict "
                f"{predict_rates[-1]:.0f} img/s, server "
                + ", ".join(f"c{c} {load[c][-1]['requests_per_s']:.0f} req/s" for c in P9_CLIENTS),
                file=sys.__stderr__,
                flush=True,
            )
        rss = peak_rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    levels = {}
    for clients, runs in load.items():
        ms = {
            k: statistics.median(r[k] for r in runs) for k in ("p50_ms", "p99_ms", "requests_per_s")
        }
        levels[str(clients)] = {
            **ms,
            "requests": sum(r["requests"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "requests_per_s_spread": [
                min(r["requests_per_s"] for r in runs),
                max(r["requests_per_s"] for r in runs),
            ],
        }
    predict_rate = statistics.median(predict_rates)
    return {
        "levels": levels,
        "predict_images_per_s": predict_rate,
        "predict_spread": [min(predict_rates), max(predict_rates)],
        "ratio": {c: levels[c]["requests_per_s"] / predict_rate for c in levels},
        "server_peak_rss_mb": rss,
        "exit_code": code,
        "batching": p9_batching(model, cfg),
        "input_shape": list(cfg.data.input_shape),
        "png_kb": statistics.mean(len(b) for b in bodies) / 1024,
    }


def wait_for_ping(port: int, server: subprocess.Popen, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not answer /ping (exit {server.poll()})")
        time.sleep(0.1)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_size_mb(names: list[str]) -> float:
    """Installed bytes of the distributions `names` need, as this venv has them."""
    total = 0
    for dist in distributions(names):
        for file in dist.files or []:
            path = Path(dist.locate_file(file))
            if path.is_file():
                total += path.stat().st_size
    return total / 2**20


def p9_sizes(root: Path) -> dict:
    """The serving image's environment against the training image's, by the installed size of
    their packages here: no Docker engine builds either image on this machine."""
    import tomllib
    from packaging.requirements import Requirement

    variant = root / "template_configs" / "torch-cpu"
    serve = [
        line.split("==")[0]
        for line in (variant / "requirements-serve.txt").read_text().splitlines()
        if "==" in line
    ]
    project = tomllib.loads((variant / "pyproject.toml").read_text())["project"]
    train = [
        Requirement(spec).name
        for spec in project["dependencies"]
        if Requirement(spec).marker is None
    ]
    import torch

    return {
        "serve_env_mb": env_size_mb(serve),
        "train_env_mb": env_size_mb(train),
        "torch_build": torch.__version__,
    }


def p9(root: Path, tmp: Path, log: Path) -> dict:
    results = {
        name: p9_case(root, tmp, log, name, changes, requests, copies)
        for name, (changes, requests, copies) in P9_MODELS.items()
    }
    return {"models": results, "sizes": p9_sizes(root)}


# ---------------------------------------------------------------- P5, P6: the baked project

P6_ROUNDS = 3  # each: a fresh `dvc repro` and `import lightning`, the side going first alternating
# Stands in for `python` in the stage commands (first on PATH): the wall and CPU seconds of each,
# so DVC's own share is the rest. With P6_IMPORTTIME (a folder) the stage runs under
# `-X importtime`, its stderr to a file there.
P6_SHIM = """#!/bin/bash
start=$(date +%s.%N)
if [ -n "$P6_IMPORTTIME" ]; then
    "$P6_PYTHON" -X importtime "$@" 2>"$P6_IMPORTTIME/$$.txt"
else
    "$P6_PYTHON" "$@"
fi
code=$?
end=$(date +%s.%N)
# `times` in this shell, not in a $(...) subshell (which has no children: it read 0 s).
times > "$P6_LOG.$$"
echo "$$ $start $end $(tail -n 1 "$P6_LOG.$$") $*" >> "$P6_LOG"
rm -f "$P6_LOG.$$"
exit $code
"""


def timed(
    cmd: list, cwd: Path, env: dict, log: Path, cores: list[int] | None
) -> tuple[float, float]:
    """(wall, CPU) seconds of a command and everything it ran (its waited-for descendants)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("a") as out:
        subprocess.run(
            [str(c) for c in cmd], cwd=cwd, env=env, stdout=out, stderr=out, check=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
        )  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def fresh_pipeline(host: Path) -> None:
    """The project as before its first `dvc repro`: no outputs, lock, DVC cache or state (so the
    raw images are hashed again); the code's bytecode stays, as after any run of it."""
    import yaml

    paths = yaml.safe_load((host / "params.yaml").read_text())["paths"]
    made = [value for key, value in paths.items() if key not in ("raw", "weights")]
    for name in [*made, "dvc.lock", ".dvc/cache", ".dvc/tmp"]:
        target = host / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def seconds_of(times: str) -> float:
    """bash `times`' '1m2.500s' -> 62.5."""
    minutes, _, rest = times.partition("m")
    return int(minutes) * 60 + float(rest.rstrip("s"))


def stage_breakdown(lines: list[str], start: float, end: float) -> tuple[dict, dict]:
    """Wall and CPU seconds of each stage command, and DVC's own wall time before, between and
    after them, from the shim's log lines of one `dvc repro` (wall clock `start`..`end`)."""
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    previous = start
    for line in lines:
        _pid, begin, finish, user, system, *argv = line.split()
        stage = argv[-1].rsplit(".", 1)[-1]  # `-m bench_project.training.train` -> train
        wall[f"dvc before {stage}"] = float(begin) - previous
        wall[stage] = float(finish) - float(begin)
        cpu[stage] = seconds_of(user) + seconds_of(system)
        previous = float(finish)
    wall["dvc after"] = end - previous
    return wall, cpu


def import_summary(text: str) -> dict:
    """Modules imported and their seconds (top-level cumulative), from `-X importtime` output;
    the packages that took longest (their modules' own time)."""
    own: dict[str, int] = {}
    total = modules = 0
    for line in text.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not found:
            continue
        modules += 1
        package = found[4].split(".")[0]
        own[package] = own.get(package, 0) + int(found[1])
        if len(found[3]) == 1:  # imported by the program itself, not by another module
            total += int(found[2])
    top = sorted(own.items(), key=lambda item: -item[1])[:6]
    return {"modules": modules, "seconds": total / 1e6, "top_s": {k: v / 1e6 for k, v in top}}


def p5_p6(root: Path, tmp: Path, log: Path, rounds: int = P6_ROUNDS) -> dict:
    """P5: a no-op `dvc repro`. P6: `dvc repro` of the default pipeline from fresh (no outputs,
    lock, cache or DVC state) / `python -c "import lightning"`, pinned to 2 cores, alternating
    which goes first, after a warm-up of each; per round the ratio, each stage's seconds (wall and
    CPU) and DVC's own; then one more repro with `-X importtime` per stage."""
    name, module = "bench-project", "bench_project"
    host = tmp / name
    host.mkdir()
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_CONFIG_NOSYSTEM="1")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    # As a developer's shell: Python writes the project's bytecode on its first run (the caller's
    # PYTHONDONTWRITEBYTECODE would have every stage compile the project's modules each time).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    # The budget is "on 2 cores": pin to two where the machine has more.
    cores = sorted(os.sched_getaffinity(0))[:2]

    def run(*cmd: str | Path, pinned: bool = False) -> tuple[float, float]:
        return timed(list(cmd), host, env, log, cores if pinned else None)

    shim = tmp / "p6-shim"
    shim.mkdir()
    (shim / "python").write_text(P6_SHIM)
    (shim / "python").chmod(0o755)
    stages_log = tmp / "p6-stages.log"
    piped = dict(env, PATH=f"{shim}{os.pathsep}{env['PATH']}", P6_LOG=str(stages_log))
    piped["P6_PYTHON"] = str(VENV_BIN / "python")

    def repro(extra: dict | None = None) -> dict:
        fresh_pipeline(host)
        stages_log.write_text("")
        start = time.time()
        wall, cpu = timed(["dvc", "repro"], host, piped | (extra or {}), log, cores)
        parts, stage_cpu = stage_breakdown(stages_log.read_text().splitlines(), start, time.time())
        stage_cpu["dvc"] = cpu - sum(stage_cpu.values())
        return {"wall_s": wall, "cpu_s": cpu, "parts_s": parts, "cpu_parts_s": stage_cpu}

    run("git", "init", "--quiet")
    run("python3", root / "bootstrap.py", "--target", host, "--name", name, "--torch", "cpu")
    run(*pip, "install", "--no-build-isolation", "-e", host)
    try:
        run(sys.executable, "-m", f"{module}.data.sample_data")
        sides = {
            "pipeline": repro,
            "import": lambda: dict(zip(("wall_s", "cpu_s"), run(
                sys.executable, "-c", "import lightning", pinned=True), strict=True)),
        }  # fmt: skip
        for side in sides.values():  # warm-up: the page cache and the project's bytecode
            side()
        results: dict[str, list[dict]] = {side: [] for side in sides}
        for number in range(rounds):
            for side in list(sides) if number % 2 == 0 else list(sides)[::-1]:
                results[side].append(sides[side]())
            pipeline, reference = results["pipeline"][-1], results["import"][-1]
            print(
                f"P6 round {number + 1}/{rounds}: pipeline {pipeline['wall_s']:.2f} s, import "
                f"lightning {reference['wall_s']:.2f} s, ratio "
                f"{pipeline['wall_s'] / reference['wall_s']:.2f}; load {os.getloadavg()[0]:.1f}",
                file=sys.stderr,
            )
        metrics = json.loads((host / "evaluation_results.json").read_text())
        noop = [run("dvc", "repro", pinned=True)[0] for _ in range(3)]
        # Which modules each stage imports, in a run of its own (importtime slows imports).
        profiles = tmp / "p6-importtime"
        profiles.mkdir()
        repro({"P6_IMPORTTIME": str(profiles)})
        imports = {}
        for line in stages_log.read_text().splitlines():
            pid, *_, stage = line.split()
            imports[stage.rsplit(".", 1)[-1]] = import_summary(
                (profiles / f"{pid}.txt").read_text(errors="replace")
            )
        reference = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import lightning"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        imports["import lightning"] = import_summary(reference.stderr)
    finally:
        subprocess.run([*pip, "uninstall", "--yes", name], cwd=tmp, env=env, check=False)
    ratios = [
        p["wall_s"] / i["wall_s"]
        for p, i in zip(results["pipeline"], results["import"], strict=True)
    ]
    cpu_ratios = [
        p["cpu_s"] / i["cpu_s"] for p, i in zip(results["pipeline"], results["import"], strict=True)
    ]
    parts = results["pipeline"][0]["parts_s"]
    return {
        "pipeline_s": statistics.median(r["wall_s"] for r in results["pipeline"]),
        "import_lightning_s": statistics.median(r["wall_s"] for r in results["import"]),
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "round_ratios": ratios,
        "cpu_ratio": statistics.median(cpu_ratios),
        "cpu_ratio_range": [min(cpu_ratios), max(cpu_ratios)],
        "breakdown_s": {
            part: statistics.median(r["parts_s"][part] for r in results["pipeline"])
            for part in parts
        },
        "cpu_breakdown_s": {
            part: statistics.median(r["cpu_parts_s"][part] for r in results["pipeline"])
            for part in results["pipeline"][0]["cpu_parts_s"]
        },
        "rounds": results,
        "imports": imports,
        "noop_repro_s": statistics.median(noop),
        "accuracy": metrics["accuracy"],
    }


# ---------------------------------------------------------------- report


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    import lightning
    import torch

    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "platform": platform.platform(),
    }


def rows(results: dict) -> list[tuple[str, float | None, str]]:
    """(target id, value, detail) for the table."""
    out: list[tuple[str, float | None, str]] = []
    if "P1" in results:
        for case, r in results["P1"].items():
            detail = (
                f"{r['lightning_epoch_s'] * 1000:.1f} vs {r['bare_epoch_s'] * 1000:.1f} ms/epoch, "
                f"{r['overhead_ms_per_step']:+.3f} ms/step"
            )
            out.append((f"P1 {case}", r["ratio"], detail))
    for key, target in (("P7", "P7 resnet18"), ("P7r", "P7r recipe/plain")):
        for case, r in results.get(key, {}).items():
            if case == "skipped":
                out.append((target, None, r))
                continue
            (a, b), seconds = r["sides"], r["epoch_s"]
            low, high = r["ratio_range"]
            q1, q3 = r["ratio_iqr"]
            detail = (
                f"{case}: {a} {seconds[a]:.2f} vs {b} {seconds[b]:.2f} s/epoch; "
                f"{r['epochs']['rounds']} ABBA rounds, ratio {low:.3f}-{high:.3f} "
                f"(IQR {q1:.3f}-{q3:.3f})"
            )
            out.append((target, r["ratio"], detail))
    if "P7g" in results:
        r = results["P7g"]
        if "skipped" in r:
            out.append(("P7g resnet50 bf16 GPU", None, r["skipped"]))
        else:
            parts = []
            for layout in ("channels_last", "contiguous"):
                x, rates = r[layout], r[layout]["images_per_s"]
                low, high = x["ratio_range"]
                parts.append(
                    f"{layout}: ratio {x['ratio']:.3f} ({low:.3f}-{high:.3f}), "
                    f"{rates['lightning']:,.0f} vs {rates['bare']:,.0f} img/s"
                )
            detail = f"{r['device']}; " + "; ".join(parts)
            out.append(("P7g resnet50 bf16 GPU", r["channels_last"]["ratio"], detail))
            out.append(("P7g channels-last speed-up", r["channels_last_speedup"], "Lightning"))
    if "P8" in results:
        r = results["P8"]
        detail = "; ".join(
            f"{m} {r[m]['median_s']['no_pyc']:.2f} vs {r[m]['median_s']['pyc']:.2f} s "
            f"(ranges {r[m]['spread_s']['no_pyc'][0]:.2f}-{r[m]['spread_s']['no_pyc'][1]:.2f}, "
            f"{r[m]['spread_s']['pyc'][0]:.2f}-{r[m]['spread_s']['pyc'][1]:.2f}; x{r[m]['ratio']:.2f})"
            for m in ("lightning", "torch")
        )
        out.append(("P8 import lightning no-pyc/pyc", r["lightning"]["ratio"], detail))
    if "P8c" in results:
        r = results["P8c"]
        low, high = r["ratio_range"]
        low2, high2 = r["stdlib_as_shipped_ratio_range"]
        seconds, compiled = r["median_s"], r["compiled_each_start"]
        detail = (
            f"{seconds['image']:.2f} vs {seconds['warm']:.2f} s, {len(r['round_ratios'])} rounds, "
            f"ratio {low:.2f}-{high:.2f}; modules compiled at every start: image "
            f"{compiled['image']}, warm {compiled['warm']}; the standard library "
            + (
                "compiled by the Dockerfile"
                if r["stdlib_compileall"] is not None
                else "left without bytecode (no compileall of it in the Dockerfile)"
            )
            + f"; as the Python images ship it: {seconds['stdlib_as_shipped']:.2f} s, "
            f"{r['stdlib_as_shipped_ratio']:.2f} ({low2:.2f}-{high2:.2f}), "
            f"{compiled['stdlib_as_shipped']} modules compiled at every start"
        )
        out.append(("P8c image cold start / warm", r["ratio"], detail))
    if "P9" in results:
        r = results["P9"]
        errors = sum(
            level["errors"] for model in r["models"].values() for level in model["levels"].values()
        )
        requests = sum(
            level["requests"]
            for model in r["models"].values()
            for level in model["levels"].values()
        )
        out.append(("P9 errors", float(errors), f"of {requests:,} requests"))
        for name, key in (
            ("default", "P9 default c8 req/s / predict img/s"),
            ("resnet18-224", "P9 resnet18 c8 req/s / predict img/s"),
        ):
            m = r["models"].get(name)
            if m is None:
                continue
            levels = "; ".join(
                f"c{c}: {v['requests_per_s']:,.0f} req/s ({v['requests_per_s_spread'][0]:,.0f}-"
                f"{v['requests_per_s_spread'][1]:,.0f}), p50 {v['p50_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms"
                for c, v in m["levels"].items()
            )
            detail = (
                f"{levels}; predict {m['predict_images_per_s']:,.0f} img/s; c1 ratio "
                f"{m['ratio']['1']:.2f}; peak RSS {m['server_peak_rss_mb']:.0f} MB"
            )
            out.append((key, m["ratio"]["8"], detail))
        bounds, parts = [], []
        for name, m in r["models"].items():
            rates = m["batching"]["images_per_s"]
            # Amdahl: a batcher of 8 saves at most what ONNX Runtime spends on 8 concurrent runs
            # of 1 beyond one run of 8, out of the whole request the server spends now.
            per_request = 1 / m["levels"]["8"]["requests_per_s"]
            saved = 1 / rates["concurrent8x1"] - 1 / rates["batch8"]
            bounds.append(per_request / (per_request - saved))
            parts.append(
                f"{name}: ORT batch8 {rates['batch8']:,.0f} vs 8 concurrent "
                f"{rates['concurrent8x1']:,.0f} img/s, server {per_request * 1000:.2f} ms/request "
                f"-> at most x{bounds[-1]:.3f}"
            )
        out.append(("P9 micro-batching bound", max(bounds), "; ".join(parts)))
        s = r["sizes"]
        out.append(
            (
                "P9 serve/train env size",
                s["serve_env_mb"] / s["train_env_mb"],
                f"{s['serve_env_mb']:.0f} vs {s['train_env_mb']:.0f} MB installed (torch {s['torch_build']})",
            )
        )
    if "P2" in results:
        r = results["P2"]
        out.append(("P2 setup", r["ratio"], f"{r['setup_s']:.3f} vs {r['arrow_s']:.3f} s"))
        out.append(
            (
                "P2 peak memory (copies)",
                r["peak_memory_copies"],
                f"of {r['data_mb']:.0f} MB; RSS rose {r['rss_rise_mb']['large']:.0f} MB "
                f"(1.2k images: {r['rss_rise_mb']['small']:.0f} MB)",
            )
        )
    for key in ("P2b", "P2c"):
        if key in results:
            r = results[key]
            rates = ", ".join(f"{k} {v:,.0f}" for k, v in r["images_per_s"].items())
            low, high = r["ratio_spread"]
            detail = f"{rates} img/s, {r['streamed_workers']} workers; ratio {low:.2f}-{high:.2f}"
            if "cpu_us_per_image" in r:
                costs = r["cpu_us_per_image"]
                detail += f"; CPU {costs['streamed']:.0f} vs {costs['in_memory']:.0f} us/img"
            out.append((f"{key} streamed/in-memory img/s", r["ratio"], detail))
    if "P2m" in results:
        r = results["P2m"]
        # The peak of the process family: a rise over "baseline x processes" misleads, as a
        # forked worker's RSS counts pages it shares with the main process.
        sizes = [v for v in r.values() if isinstance(v, dict)]
        detail = ", ".join(
            f"{v['split_mb']:.0f} MB split: {v['peak_mb']:.0f} MB ({v['processes']:.0f} proc, "
            f"Arrow's pool at most {v.get('arrow_max_mb', float('nan')):.0f} MB)"
            for v in sizes
        )
        if "ratio_range" in r:
            low, high = r["ratio_range"]
            detail += f"; {len(sizes[0]['rounds'])} rounds, ratio {low:.3f}-{high:.3f}"
            value = r["ratio"]
        else:
            value = sizes[1]["peak_mb"] / sizes[0]["peak_mb"]
        out.append(("P2m streamed RSS growth", value, detail))
    if "P3m" in results:
        r = results["P3m"]
        detail = ", ".join(
            f"{px}px {v['peak_total_mb']:.0f} MB ({v['processes']} proc, +{v['rise_mb']:.0f} MB, "
            f"group {v['row_group_mb']:.0f} MB)"
            for px, v in r.items()
        )
        out.append(("P3m RSS at 224 px (MB)", r["224"]["peak_total_mb"], detail))
        worst = max(v["rise_per_row_group"] for v in r.values())
        out.append(("P3m rise / row group", worst, "largest of 64/128/224 px"))
    if "P3" in results:
        r = results["P3"]
        rates = ", ".join(f"{n} worker(s) {v:,.0f} img/s" for n, v in r["images_per_s"].items())
        if "ratio_range" in r:
            low, high = r["ratio_range"]
            cpu = r["cpu_s"]
            rates += (
                f"; {len(r['round_ratios'])} rounds, ratio {low:.2f}-{high:.2f}; CPU "
                f"{cpu['1']:.2f} vs {cpu['2']:.2f} s"
            )
        out.append(("P3 2 workers speed-up", r["ratio"], rates))
    if "P4" in results:
        r = results["P4"]
        out.append(
            (
                "P4 eager/ORT p50",
                r["ratio"],
                f"{r['p50_us']['pytorch']:.1f} vs {r['p50_us']['onnxruntime']:.1f} us",
            )
        )
    if "P5" in results:
        r = results["P5"]
        out.append(("P5 no-op repro (s)", r["noop_repro_s"], ""))
        low, high = r["ratio_range"]
        total = r["pipeline_s"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["breakdown_s"].items())
        detail = (
            f"{total:.2f} vs {r['import_lightning_s']:.2f} s (median of "
            f"{len(r['round_ratios'])} rounds, ratio {low:.2f}-{high:.2f}; CPU ratio "
            f"{r['cpu_ratio']:.2f}); {parts}; accuracy {r['accuracy']:.3f}"
        )
        out.append(("P6 pipeline / import lightning", r["ratio"], detail))
    return out


def table(results: dict) -> str:
    lines = [f"{'target':<26} {'value':>8} {'goal':>8}  ok  detail", "-" * 90]
    for key, value, detail in rows(results):
        op, bound = TARGETS[key]
        if value is None:
            lines.append(f"{key:<26} {'n/a':>8} {op + str(bound):>8}  --  {detail}")
            continue
        ok = value <= bound if op == "<=" else value >= bound
        mark = "yes" if ok else "NO"
        lines.append(f"{key:<26} {value:>8.3f} {op + str(bound):>8}  {mark:<3} {detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=HERE.parent, help="checkout to measure")
    parser.add_argument(
        "--only",
        default="P1,P2,P2b,P2c,P2m,P3,P3m,P4,P5,P7,P7r,P7g,P8,P8c,P9",
        help="comma-separated (P5 runs P6; P6 names it too)",
    )
    parser.add_argument("--out", type=Path, default=HERE.parent / "bench-results" / "latest.json")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"rounds of the benchmarks measured side by side in rounds (default: each its own: "
        f"P7, P7r, P7g {P7_ROUNDS} ABBA, P6 {P6_ROUNDS}, P3 {P3_ROUNDS}, P2m {P2M_ROUNDS}, "
        f"P8c {P8C_ROUNDS})",
    )
    parser.add_argument("--memprobe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rssprobe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--streamprobe", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1 (ABBA wants an even count, 6 by default)")
    rounds = {} if args.rounds is None else {"rounds": args.rounds}
    sys.path.insert(0, str(args.root.resolve() / "src_templates"))
    for name in ("lightning.pytorch", "lightning.fabric"):  # "GPU available: ..." per run
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.memprobe:
        memprobe(args.memprobe)
        return 0
    if args.rssprobe:
        rssprobe(args.rssprobe)
        return 0
    if args.streamprobe:
        streamprobe(args.streamprobe)
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    benches = {
        "P1": p1,
        "P2": p2,
        "P2b": p2b,
        "P2c": p2c,
        "P2m": functools.partial(p2m, **rounds),
        "P3": functools.partial(p3, **rounds),
        "P3m": p3m,
        "P4": p4,
        "P5": functools.partial(p5_p6, **rounds),
        "P7": functools.partial(p7, **rounds),
        "P7r": functools.partial(p7r, **rounds),
        "P7g": functools.partial(p7g, **rounds),
        "P8": p8,
        "P8c": functools.partial(p8c, **rounds),
        "P9": p9,
    }
    names = {name.upper(): name for name in benches} | {"P6": "P5"}
    wanted = list(dict.fromkeys(names[b.strip().upper()] for b in args.only.split(",")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".log")
    log.write_text("")
    results: dict = {}
    report = {"machine": machine(), "root": str(args.root.resolve()), "results": results}
    report["torch_threads"] = args.threads or "default"
    report["load_before"] = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mlt-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        for name in wanted:
            start = time.perf_counter()
            results[name] = benches[name](args.root.resolve(), tmp, log)
            print(f"{name} done in {time.perf_counter() - start:.0f}s", file=sys.stderr)
            shutil.rmtree(tmp / "p3", ignore_errors=True)
    report["load_after"] = os.getloadavg()
    report["table"] = [
        {"target": k, "value": v, "goal": " ".join(map(str, TARGETS[k])), "detail": d}
        for k, v, d in rows(results)
    ]
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    print(
        f"load average {report['load_before'][0]:.2f} -> {report['load_after'][0]:.2f} on "
        f"{report['machine']['cores']} cores ({report['machine']['cpu']}); wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
