import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from mlt_project.base.config import ConfigError
from mlt_project.training.evaluate import evaluate
from mlt_project.training.factories import create_datamodule, create_model, create_trainer
from mlt_project.training.resume import run_fingerprint
from mlt_project.training.train import train


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_fast_dev_run(processed):
    trainer = create_trainer(processed, logger=False, fast_dev_run=True)
    trainer.fit(create_model(processed), datamodule=create_datamodule(processed))
    assert trainer.state.finished


def test_train_then_evaluate_writes_checkpoint_curves_and_metrics(processed):
    cfg = processed
    metrics = train(cfg)
    assert Path(cfg.paths.model).is_file()
    assert "val/accuracy" in metrics
    curves = read_csv(cfg.paths.curves)
    assert [int(row["epoch"]) for row in curves] == list(range(cfg.training.max_epochs))
    for row in curves:
        assert all(math.isfinite(float(row[key])) for key in ("train_loss", "val_loss"))
        assert 0 <= float(row["val_acc"]) <= 1
    assert float(curves[-1]["val_acc"]) == pytest.approx(metrics["val/accuracy"], abs=1e-6)

    results = evaluate(cfg)
    summary = json.loads(Path(cfg.paths.metrics).read_text())
    # What must be there, as the evaluation computed it; a metric you add may join them.
    for key in ("loss", "accuracy", "macro_f1", "num_samples"):
        assert summary[key] == results[key], key
    per_class = read_csv(cfg.paths.per_class)
    assert [row["class"] for row in per_class] == ["circle", "square", "stripes"]
    assert sum(int(row["support"]) for row in per_class) == summary["num_samples"]
    f1 = [float(row["f1"]) for row in per_class]
    assert summary["macro_f1"] == pytest.approx(sum(f1) / len(f1), abs=1e-5)
    # The mistakes file lists exactly the confusion matrix's off-diagonal test images, by name.
    confusion = read_csv(cfg.paths.plots)
    mistakes = read_csv(cfg.paths.mistakes)
    assert len(mistakes) == sum(row["actual"] != row["predicted"] for row in confusion)
    for row in mistakes:
        assert row["file_name"].split("/")[0] == row["label"] != row["predicted"]
        assert (Path(cfg.paths.raw) / row["file_name"]).is_file()
    scores = [float(row["score"]) for row in mistakes]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
    reason="needs a GPU that supports bf16",
)
def test_bf16_mixed_precision_trains_on_the_gpu(processed):
    cfg = dataclasses.replace(
        processed,
        training=dataclasses.replace(
            processed.training, accelerator="cuda", precision="bf16-mixed"
        ),
    )
    trainer = create_trainer(
        cfg,
        logger=False,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        log_every_n_steps=1,  # the classifier logs train/loss on logging steps only
    )
    trainer.fit(create_model(cfg), datamodule=create_datamodule(cfg))
    assert trainer.global_step == 2
    for name in ("train/loss", "val/loss"):
        assert torch.isfinite(trainer.callback_metrics[name]), name


def with_weights_file(cfg, path):
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights_file=str(path)))


def test_a_weights_file_outside_paths_weights_is_refused(processed, tmp_path):
    # dvc.yaml makes paths.weights a dependency of train: a file elsewhere would not retrain.
    with pytest.raises(ConfigError, match=r"is outside paths\.weights"):
        train(with_weights_file(processed, tmp_path / "elsewhere.pt"))


def test_the_resume_fingerprint_follows_the_weights_files_bytes(processed):
    weights = Path(processed.paths.weights) / "start.pt"
    weights.parent.mkdir(parents=True)
    cfg = with_weights_file(processed, weights)
    weights.write_bytes(b"one")
    first = run_fingerprint(cfg)
    assert run_fingerprint(cfg) == first
    weights.write_bytes(b"two")  # replaced at the same path: an old checkpoint must not resume
    assert run_fingerprint(cfg) != first


def test_the_recipe_keeps_the_best_epochs_average_and_says_so(processed):
    """Every option of PROJECT.md's Recipes on at once: the checkpoint holds the best epoch's
    EMA weights as the network, and the metrics say which epoch and that they are an average."""
    cfg = dataclasses.replace(
        processed,
        training=dataclasses.replace(
            processed.training,
            max_epochs=3,
            label_smoothing=0.1,
            gradient_clip_val=1.0,
            accumulate_grad_batches=2,
            ema_decay=0.9,
            early_stopping_patience=1,
            max_time="00:01:00:00",
            class_balance="loss",
        ),
        augment={**processed.augment, "mixup_alpha": 0.2, "cutmix_alpha": 1.0},
    )
    metrics = train(cfg)
    curves = read_csv(cfg.paths.curves)
    val_loss = [float(row["val_loss"]) for row in curves]
    assert metrics["best_epoch"] == val_loss.index(min(val_loss))
    assert metrics["ema_decay"] == 0.9
    saved = torch.load(cfg.paths.model, map_location="cpu", weights_only=True)
    assert not [key for key in saved["state_dict"] if key.startswith("ema.")]
    summary = evaluate(cfg)
    written = json.loads(Path(cfg.paths.metrics).read_text())
    assert written["best_epoch"] == metrics["best_epoch"] and written["ema_decay"] == 0.9
    assert 0 <= summary["accuracy"] <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_channels_last_is_on_by_default_for_a_conv_network_on_the_gpu(processed):
    from mlt_project.training.factories import use_channels_last

    cfg = dataclasses.replace(processed, model=dataclasses.replace(processed.model, name="cnn"))
    net = create_model(cfg).net
    assert use_channels_last("auto", "auto", net)
    assert not use_channels_last("auto", "cpu", net)
