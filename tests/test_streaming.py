"""Streamed training learns what training from memory learns, in one process or two.

Streaming once shuffled only inside a row group of a split written in class order: its batches
held two classes where memory's held ten, and one epoch learned nothing (0.10 against 0.82 on
the data set here), while the resume tests, which compare weights only, passed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from helpers import free_port
from mlt_project.base.config import load_config, read_params
from mlt_project.data import preprocess as stage
from mlt_project.data.store import split_path, write_chunks
from mlt_project.training.callbacks import quiet_warnings
from mlt_project.training.factories import create_datamodule, create_model, create_trainer

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "template_configs" / "project" / "params.yaml"
CLASSES, SIZE, BATCH = 10, 16, 64
GROUP_ROWS = 400  # many row groups, as a large data set has (preprocess writes 32 MiB ones)


def config(root: Path, **runtime):
    cfg = load_config(PARAMS)
    paths = {field.name: str(root / field.name) for field in dataclasses.fields(cfg.paths)}
    return dataclasses.replace(
        cfg,
        paths=dataclasses.replace(cfg.paths, **paths),
        data=dataclasses.replace(
            cfg.data, image_size=[SIZE, SIZE], channels=3, num_classes=CLASSES
        ),
        training=dataclasses.replace(
            cfg.training,
            batch_size=BATCH,
            max_epochs=1,
            accelerator="cpu",
            devices=1,
            precision="32-true",
            optimization={**cfg.training.optimization, "scheduler": "none", "warmup_epochs": 0},
        ),
        runtime=dataclasses.replace(
            cfg.runtime,
            **{"preprocess_workers": 1, "streaming": False, "loader_workers": 0, **runtime},
        ),
    )


@pytest.fixture(scope="module")
def hard_data(tmp_path_factory) -> Path:
    """6,000 RGB images in 10 class folders, preprocessed into splits of many row groups.

    Each image is a class's pattern under 65% noise, and one in five shows another class's
    pattern: no model beats ~0.82, and one epoch from memory reaches it.
    """
    root = tmp_path_factory.mktemp("hard")
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, (CLASSES, SIZE, SIZE, 3))
    per_class = 600
    for label in range(CLASSES):
        folder = root / "raw" / f"class{label}"
        folder.mkdir(parents=True)
        shown = np.where(rng.random(per_class) < 0.2, rng.integers(0, CLASSES, per_class), label)
        noise = rng.integers(0, 256, (per_class, SIZE, SIZE, 3))
        pixels = (0.35 * patterns[shown] + 0.65 * noise).astype(np.uint8)
        for i, image in enumerate(pixels):
            Image.fromarray(image).save(folder / f"{i}.png")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stage, "rows_per_group", lambda shape: GROUP_ROWS)
        stage.preprocess(config(root))
    return root


def classes_per_batch(cfg, epochs: int = 2) -> float:
    datamodule = create_datamodule(cfg)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    mix = [
        len(set(labels.tolist()))
        for _ in range(epochs)
        for _, labels in loader
        if len(labels) == BATCH
    ]
    return float(np.mean(mix))


def test_streamed_batches_hold_as_many_classes_as_in_memory_ones(hard_data):
    memory = classes_per_batch(config(hard_data))
    streamed = classes_per_batch(config(hard_data, streaming=True, loader_workers=2))
    # 64 draws from 10 classes: an in-memory batch misses a class once in ~100 batches.
    assert memory > 9.9
    assert streamed >= memory - 0.05, (streamed, memory)
    train = pq.ParquetFile(split_path(hard_data / "processed", "train"))
    assert train.num_row_groups >= 10
    for group in range(train.num_row_groups):  # preprocess wrote each a sample of the split
        labels = train.read_row_group(group, columns=["label"]).column("label").to_numpy()
        assert len(set(labels)) == CLASSES


def val_accuracy(cfg) -> float:
    trainer = create_trainer(cfg, logger=False, enable_checkpointing=False)
    with quiet_warnings():
        trainer.fit(create_model(cfg), datamodule=create_datamodule(cfg))
    return float(trainer.callback_metrics["val/accuracy"])


def test_one_streamed_epoch_reaches_the_in_memory_accuracy(hard_data):
    memory = val_accuracy(config(hard_data))
    streamed = val_accuracy(config(hard_data, streaming=True, loader_workers=2))
    # One epoch from memory reaches the ceiling the noise sets (~0.82); on 900 validation
    # images, seeds and orders that train as well land within +-0.02 of it. 0.05 is over
    # three such spreads, and far below the 0.7 a badly mixed stream lost.
    assert memory > 0.75, memory
    assert abs(streamed - memory) <= 0.05, (streamed, memory)


# Each of two real processes (gloo), for each folder of splits given: reads two epochs of the
# streamed train split with two loader workers, then the second epoch again, resumed after 2
# batches, and writes the rows' ids (stored in the pixels) per epoch.
RANK = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np, torch.distributed as dist
    from mlt_project.training.datamodule import ImageDataModule
    dist.init_process_group("gloo")
    def loader(folder):
        data = ImageDataModule(folder, 8, 8, num_workers=2, streaming=True, seed=3)
        data.setup("fit")
        return data.train_dataloader()
    def ids(batches):
        return [np.frombuffer(images.numpy().tobytes(), "<u4").tolist() for images, _ in batches]
    for folder in sys.argv[1:]:
        first = loader(folder)
        epochs = [ids(first) for _ in range(2)]
        resumed = loader(folder)
        resumed.load_state_dict({"epoch": 1, "batches": 2})
        result = {"epochs": epochs, "resumed": ids(resumed), "len": len(first)}
        Path(folder, f"ids.{dist.get_rank()}").write_text(json.dumps(result))
    dist.destroy_process_group()
    """
)


def run_ranks(script: str, *args: str, world: int = 2) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src_templates"), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world)}  # fmt: skip
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args],
            env={**env, "RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    for rank in ranks:
        _, stderr = rank.communicate(timeout=120)
        assert rank.returncode == 0, stderr[-3000:]


def write_ids(folder: Path, group_sizes: list[int]) -> None:
    """Train and val splits whose images hold their row's id, a row group per size."""
    rows = sum(group_sizes)
    images = np.arange(rows, dtype="<u4").view(np.uint8).reshape(rows, 1, 2, 2)
    ends = np.cumsum(group_sizes)
    chunks = [(images[end - size : end], np.zeros(size, dtype=np.int64), ["x.png"] * size)
              for size, end in zip(group_sizes, ends, strict=True)]  # fmt: skip
    for split in ("train", "val"):
        write_chunks(split_path(folder, split), chunks, (1, 2, 2), ["a", "b"])


def test_two_processes_stream_equal_shares_that_cover_the_split_once(tmp_path):
    # Row groups of unequal size; and one row group, fewer than the processes.
    layouts = {tmp_path / "unequal": [40, 7, 33, 1, 20], tmp_path / "one": [100]}
    for folder, sizes in layouts.items():
        write_ids(folder, sizes)
    run_ranks(RANK, *map(str, layouts))
    for folder, sizes in layouts.items():
        ranks = [json.loads((folder / f"ids.{rank}").read_text()) for rank in range(2)]
        share = sum(sizes) // 2  # rows per process; the one left over changes with the epoch
        assert [rank["len"] for rank in ranks] == [-(-share // 8)] * 2
        for epoch in range(2):
            batches = [rank["epochs"][epoch] for rank in ranks]
            assert [len(b) for b in batches] == [ranks[0]["len"]] * 2  # none waits on another
            seen = [row for rank in batches for batch in rank for row in batch]
            assert len(seen) == len(set(seen)) == 2 * share  # no row twice, at most one left out
            assert all(len(batch) == 8 for rank in batches for batch in rank[:-1])
        assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]  # a new order each epoch
        for rank in ranks:  # resumed after 2 batches: the rest of that epoch, in the same order
            assert rank["resumed"] == rank["epochs"][1][2:]


def ddp_project(root: Path) -> list[str]:
    """Splits of unequal row groups (validation: one) and params for 2 CPU processes; the
    command that trains."""
    rng = np.random.default_rng(0)
    for split, sizes in {"train": [150, 9, 70, 1], "val": [45], "test": [45]}.items():
        labels = [rng.integers(0, CLASSES, size) for size in sizes]
        chunks = [(rng.integers(0, 256, (len(y), 1, 8, 8), dtype=np.uint8), y, ["x.png"] * len(y))
                  for y in labels]  # fmt: skip
        write_chunks(
            split_path(root / "processed", split),
            chunks, (1, 8, 8), [str(c) for c in range(CLASSES)],
        )  # fmt: skip
    params = read_params(PARAMS)  # DVC's form: 1e-05 is a number
    params["paths"] = {key: str(root / key) for key in params["paths"]}
    # 115 rows per process, 8 batches of 16: checkpoints every 3 steps fall inside epochs.
    params["training"].update(max_epochs=3, batch_size=16, accelerator="cpu", devices=2)
    params["training"].update(precision="32-true")
    params["runtime"].update(streaming=True, loader_workers=2, checkpoint_every_n_steps=3)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return [sys.executable, "-m", "mlt_project.training.train"]


def ddp_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO / "src_templates"),
        "MASTER_PORT": str(free_port()),
    }


def test_streamed_ddp_training_on_two_processes_finishes_and_resumes_exactly(tmp_path):
    """Over row groups of unequal size it once hung at the first validation."""
    train_killed_and_resumed(tmp_path, ddp_project(tmp_path), steps_per_epoch=8)


def test_ddp_with_the_recipe_on_two_processes_resumes_exactly(tmp_path):
    """EMA, class-balanced draws, accumulation, mixup and cutmix, early stopping under DDP (in
    memory: the balanced sampler needs it), killed mid-epoch: the same weights as uninterrupted."""
    import torch

    train = ddp_project(tmp_path)
    params = read_params(tmp_path / "params.yaml")
    params["training"].update(ema_decay=0.9, class_balance="sampler", accumulate_grad_batches=2,
                              label_smoothing=0.1, early_stopping_patience=2)  # fmt: skip
    params["augment"].update(mixup_alpha=0.2, cutmix_alpha=1.0)
    # 115 rows per process, 8 batches of 16, 4 optimizer steps an epoch: checkpoints every 3.
    params["runtime"].update(streaming=False, loader_workers=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    train_killed_and_resumed(tmp_path, train, steps_per_epoch=4)
    saved = torch.load(tmp_path / "model", weights_only=True)
    assert not [key for key in saved["state_dict"] if key.startswith("ema.")]
    assert saved["weights"]["ema_decay"] == 0.9


def train_killed_and_resumed(tmp_path: Path, train: list[str], steps_per_epoch: int) -> None:
    """Train on 2 processes; train again, both killed mid-epoch, and resume: the same weights."""
    import torch

    model, resume = tmp_path / "model", tmp_path / "checkpoints" / "last.ckpt"

    def run() -> str:
        result = subprocess.run(train, cwd=tmp_path, env=ddp_env(), capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stderr

    def weights() -> dict:
        return torch.load(model, map_location="cpu", weights_only=True)["state_dict"]

    run()
    epochs = len((tmp_path / "curves").read_text().splitlines()) - 1
    assert epochs == 3  # every epoch validated
    expected = weights()
    model.unlink()
    # Both processes killed at once (their session), as a lost machine is, mid-epoch.
    killed = subprocess.Popen(train, cwd=tmp_path, env=ddp_env(), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    while not resume.exists():
        assert killed.poll() is None, killed.communicate()[1][-3000:]
        time.sleep(0.01)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()
    step = torch.load(resume, map_location="cpu", weights_only=False)["global_step"]
    assert step % steps_per_epoch, "the checkpoint fell at an epoch's end"
    assert f"step {step}" in run()
    resumed = weights()
    assert resumed.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), f"{name} differs from the uninterrupted run"
