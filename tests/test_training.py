"""The training layer (training/): what the LightningModule keeps after fitting (the average,
the thresholds), the seeded and class-balanced loaders, and baked projects
trained with every option of the recipe on (label smoothing, mixup and cutmix, EMA, class
balance, early stopping), exported, resumed after SIGKILL."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from helpers import MODULE, project_env, run, set_params
from mlt_project.base.tasks import Multiclass
from mlt_project.model.build import build_network
from mlt_project.model.optim import Optimization
from mlt_project.model.tasks import Multilabel
from mlt_project.training.module import ImageClassifier
from mlt_project.training.resumable import BalancedDraws, SeededShuffle

# ---------------------------------------------------------------- the LightningModule after fitting


def classifier(task: str = "multiclass", ema_decay: float = 0.0) -> ImageClassifier:
    spec = {"name": "mlp", "options": {"hidden_size": 4, "dropout": 0.0},
            "input_shape": [1, 2, 2], "num_classes": 2}  # fmt: skip
    optimization = Optimization(1, "adamw", 0.1, 0.0, 0.0, "none", warmup_epochs=0)
    return ImageClassifier(build_network(spec), spec, task, optimization, ema_decay=ema_decay)


def no_validation():
    raise AssertionError("a task without thresholds needs no validation pass")


def test_finish_without_ema_or_keep_best_records_nothing_and_keeps_the_weights():
    module = classifier()
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    assert module.finish(None, no_validation) == {}
    after = module.net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["weights"] == {}
    assert "thresholds" not in checkpoint


def test_finish_with_ema_puts_the_average_into_the_network_and_saves_it_once():
    module = classifier(ema_decay=0.5)
    with torch.no_grad():
        for parameter in module.net.parameters():
            parameter.fill_(1.0)
        for parameter in module.ema.net.parameters():
            parameter.fill_(0.25)
    assert any(key.startswith("ema.") for key in module.state_dict())  # kept while training
    assert module.finish(None, no_validation) == {"ema_decay": 0.5}
    assert all(torch.all(p == 0.25) for p in module.net.parameters())
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    state = checkpoint["state_dict"]
    assert [key for key in state if key.startswith("ema.")] == []
    assert torch.all(state["net.body.layers.1.weight"] == 0.25)
    assert checkpoint["weights"] == {"ema_decay": 0.5}


def test_thresholds_are_chosen_on_validation_for_multilabel_only():
    module = classifier("multilabel")
    assert isinstance(module.task, Multilabel)
    probabilities = np.array([[0.9, 0.2], [0.8, 0.1], [0.3, 0.4], [0.1, 0.3]])
    logits = np.log(probabilities / (1 - probabilities))
    targets = np.array([[1, 0], [1, 0], [0, 0], [0, 0]], dtype=np.float32)
    assert module.finish(None, lambda: (logits, targets)) == {}
    # Class 0: midway between the lowest accepted (0.8) and the highest rejected (0.3); class 1
    # has no positive image: 0.5.
    assert module.thresholds == pytest.approx([0.55, 0.5])
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["thresholds"] == pytest.approx([0.55, 0.5])
    multiclass = classifier("multiclass")
    multiclass.finish(None, no_validation)
    assert multiclass.thresholds is None


# ---------------------------------------------------------------- class-balanced draws


def test_seeded_shuffle_shares_one_permutation_between_processes_and_reshuffles_each_epoch():
    # One process: the permutation of (seed, epoch), as before DDP sharding, so results stand.
    alone = SeededShuffle(10, seed=3)
    generator = torch.Generator().manual_seed(3 * 1_000_003)
    assert list(alone) == torch.randperm(10, generator=generator).tolist()
    first = list(alone)
    alone.set_epoch(1)
    assert list(alone) != first and sorted(alone) == list(range(10))
    # Two processes: disjoint halves of the same permutation; an odd count is padded.
    for n in (10, 7):
        shares = [list(SeededShuffle(n, seed=3, num_replicas=2, rank=rank)) for rank in (0, 1)]
        assert [len(share) for share in shares] == [(n + 1) // 2] * 2
        assert set(shares[0] + shares[1]) == set(range(n))
        assert len(set(shares[0]) & set(shares[1])) == (n % 2)  # the padding repeats one index
    # Lightning replaces any sampler that is no DistributedSampler by a wrapper that replays
    # the sampler's first epoch in every epoch; a DistributedSampler it leaves in place.
    assert isinstance(SeededShuffle(10, seed=3), DistributedSampler)


def test_balanced_draws_are_seeded_by_epoch_resume_and_balance_the_classes():
    labels = torch.tensor([0] * 90 + [1] * 10)
    counts = torch.bincount(labels).numpy()
    weights = torch.from_numpy(Multiclass().class_weights(counts, len(labels)))[labels]
    sampler = BalancedDraws(weights, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 100
    assert list(BalancedDraws(weights, seed=3)) == first  # the same draws in a new process
    rare = sum(labels[i] == 1 for i in first)
    assert 35 <= rare <= 65, rare  # ~half, from 10% of the images
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    sampler.skip = 40  # a resumed epoch leaves out what it had handed out
    assert list(sampler) == second[40:]


# ---------------------------------------------------------------- baked projects, every option on

# The acceptance settings of issue 21, on the cnn.
ALL_ON = {
    "model__name": "cnn",
    "training__label_smoothing": 0.1,
    "training__ema_decay": 0.99,
    "training__accumulate_grad_batches": 2,
    "training__gradient_clip_val": 1.0,
    "training__early_stopping_patience": 5,
    "training__max_time": "00:00:10:00",
    "training__class_balance": "loss",
    "augment__mixup_alpha": 0.2,
    "augment__cutmix_alpha": 1.0,
}


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def all_on(trained_project, tmp_path_factory) -> Path:
    """A copy of the trained project with every option on, through `dvc repro`."""
    root = tmp_path_factory.mktemp("recipe") / trained_project.root.name
    shutil.copytree(trained_project.root, root, symlinks=True)
    set_params(root, **ALL_ON)
    start = time.perf_counter()
    repro = run("dvc", "repro", cwd=root, **project_env(root))
    print(f"dvc repro with every option on: {time.perf_counter() - start:.0f} s")
    assert "Running stage 'preprocess'" not in repro.stdout
    return root


@pytest.mark.e2e
def test_every_option_at_once_trains_the_cnn_to_085_and_keeps_the_best_average(all_on):
    results = json.loads((all_on / "evaluation_results.json").read_text())
    print(f"test accuracy with every option on: {results['accuracy']:.4f}, {results}")
    assert results["accuracy"] >= 0.85
    assert results["ema_decay"] == 0.99
    # Early stopping ended the run before max_epochs (30), patience epochs after the best one.
    assert results["epochs_trained"] == results["best_epoch"] + 1 + 5 < 30
    curves = (all_on / "plots" / "curves.csv").read_text().splitlines()[1:]
    val_loss = {int(row.split(",")[0]): float(row.split(",")[2]) for row in curves}
    assert len(val_loss) == results["epochs_trained"]
    assert min(val_loss, key=val_loss.get) == results["best_epoch"]
    assert results["best_val_loss"] == pytest.approx(val_loss[results["best_epoch"]], abs=1e-6)
    checkpoint = torch.load(all_on / "models" / "model.ckpt", map_location="cpu", weights_only=True)
    assert not [key for key in checkpoint["state_dict"] if key.startswith("ema.")]
    assert checkpoint["weights"]["best_epoch"] == results["best_epoch"]


@pytest.mark.e2e
def test_every_option_at_once_exports_through_the_gate_and_predicts_as_eval(all_on, tmp_path):
    export = run(sys.executable, "-m", f"{MODULE}.release.export", cwd=all_on,
                 **project_env(all_on))  # fmt: skip
    assert "parity" in export.stderr, export.stderr[-2000:]
    info = json.loads((all_on / "releases" / "model_info.json").read_text())
    assert info["metrics"]["ema_decay"] == 0.99
    out = tmp_path / "predictions.csv"
    run(sys.executable, "-m", f"{MODULE}.serve.predict", "data/processed/test.parquet", "--out", out,
        cwd=all_on, **project_env(all_on))  # fmt: skip
    with out.open() as f:
        predicted = [row["predicted"] for row in csv.DictReader(f)]
    with (all_on / "plots" / "confusion.csv").open() as f:
        evaluated = [row["predicted"] for row in csv.DictReader(f)]
    assert predicted == evaluated


@pytest.mark.e2e
@pytest.mark.parametrize("every", [3, 10], ids=["mid-epoch", "epoch-end"])
def test_every_option_at_once_resumes_bit_identically_after_sigkill(all_on, tmp_path, every):
    """10 optimizer steps an epoch (20 batches, 2 per step): checkpoints every 3 steps fall
    mid-epoch; every 10, at epoch ends, where the checkpoint waits for the validation."""
    root = tmp_path / all_on.name
    shutil.copytree(all_on, root, symlinks=True)
    expected = weights_of(all_on / "models" / "model.ckpt")
    expected_record = torch.load(all_on / "models" / "model.ckpt", weights_only=True)["weights"]
    set_params(root, runtime__checkpoint_every_n_steps=every)
    resume = root / "checkpoints" / "last.ckpt"
    train = [sys.executable, "-m", f"{MODULE}.training.train"]
    training = subprocess.Popen(train, cwd=root, env=project_env(root),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    # A checkpoint after the first validation: the EMA, early stopping and best-so-far state.
    while not resume.exists() or torch.load(resume, weights_only=False)["global_step"] < 10:
        assert training.poll() is None, training.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    training.kill()
    training.communicate()
    assert training.returncode == -signal.SIGKILL, "training finished before the kill"
    saved = torch.load(resume, map_location="cpu", weights_only=False)
    assert any(key.startswith("ema.") for key in saved["state_dict"])
    assert (saved["global_step"] % 10 == 0) == (every == 10)
    result = run(*train, cwd=root, **project_env(root))
    assert f"step {saved['global_step']}" in result.stderr
    actual = weights_of(root / "models" / "model.ckpt")
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), f"{name} differs from the uninterrupted run"
    assert torch.load(root / "models" / "model.ckpt", weights_only=True)["weights"] == (
        expected_record
    )
