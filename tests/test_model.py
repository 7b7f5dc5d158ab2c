"""The model layer (model/): real image networks, torchvision backbones, weights from a file or
torch's cache (never downloaded here), frozen backbones, augmentation and mixing, the weights'
average, optimizers and schedules."""

from __future__ import annotations

import dataclasses
import itertools
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms.v2 import functional as F

from helpers import MODULE, REPO, env, project_env, run, set_params
from mlt_project.base.config import Config, load_config
from mlt_project.base.errors import PipelineError
from mlt_project.base.tasks import TASKS
from mlt_project.data.preprocess import preprocess
from mlt_project.data.store import read_split, split_path, write_chunks
from mlt_project.model.augment import BatchAugment
from mlt_project.model.build import build_network
from mlt_project.model.checkpoint import load_trained
from mlt_project.model.ema import ExponentialAverage
from mlt_project.model.inference import device_for, predict_split
from mlt_project.model.mix import BatchMix
from mlt_project.model.optim import Optimization, parameter_groups
from mlt_project.training.evaluate import evaluate
from mlt_project.training.factories import create_model
from mlt_project.training.train import train

PARAMS = REPO / "template_configs" / "project" / "params.yaml"
RESNET18_FILE = "resnet18-f37072fd.pth"  # the name torchvision's IMAGENET1K_V1 weights have
# The normalisation torchvision's ImageNet weights were trained with, written out.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def config(tmp_path: Path, *, model=None, training=None, augment=None, data=None) -> Config:
    """The template's params with paths in tmp_path, CPU-sized, and `section` changes."""
    base = load_config(PARAMS)
    paths = {field.name: str(tmp_path / field.name) for field in dataclasses.fields(base.paths)}
    data = {"num_classes": 3, "val_fraction": 0.2, "test_fraction": 0.2, **(data or {})}
    training = {
        "batch_size": 8,
        "max_epochs": 2,
        "accelerator": "cpu",
        "devices": 1,
        "precision": "32-true",
        **(training or {}),
    }
    # The optimizer's keys of `training:` are its options (model/optim.py), not fields.
    options = {k: training.pop(k) for k in list(training) if k in base.training.optimization}
    training["optimization"] = {**base.training.optimization, **options}
    return dataclasses.replace(
        base,
        paths=dataclasses.replace(base.paths, **paths),
        data=dataclasses.replace(base.data, **data),
        model=dataclasses.replace(base.model, **(model or {})),
        training=dataclasses.replace(base.training, **training),
        augment={**base.augment, **(augment or {})},
        runtime=dataclasses.replace(base.runtime, preprocess_workers=1),
    )


def saved_resnet18(path: Path) -> dict[str, torch.Tensor]:
    """A 1000-class resnet18 state_dict, as an ImageNet checkpoint is shaped, saved to `path`."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, path)
    return state


def write_images(raw: Path, classes: int = 3, per_class: int = 12, size: int = 16) -> None:
    """RGB images whose colour depends on the class, so a network can learn them."""
    rng = np.random.default_rng(0)
    for label in range(classes):
        (raw / f"c{label}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 70, (size, size, 3))
            pixels[..., label % 3] += 150
            Image.fromarray(pixels.astype(np.uint8)).save(raw / f"c{label}" / f"{i}.png")


def test_weights_file_initialises_the_backbone_and_the_head_fits_the_classes(tmp_path):
    state = saved_resnet18(tmp_path / "weights.pt")
    cfg = config(
        tmp_path,
        model={"name": "resnet18", "weights_file": str(tmp_path / "weights.pt")},
        data={"image_size": [32, 32], "channels": 3},
    )
    net = create_model(cfg).net
    assert torch.equal(net.body.conv1.weight, state["conv1.weight"])
    assert torch.equal(net.body.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert (net.body.fc.in_features, net.body.fc.out_features) == (512, 3)
    logits = net(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert logits.shape == (2, 3)


def test_grayscale_images_go_through_an_rgb_network(tmp_path):
    saved_resnet18(tmp_path / "weights.pt")
    cfg = config(
        tmp_path,
        model={"name": "resnet18", "weights_file": str(tmp_path / "weights.pt")},
        data={"image_size": [32, 32], "channels": 1},
    )
    net = create_model(cfg).net.eval()
    gray = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    # The reference: torchvision's own resnet18 with the same weights, fed the RGB image whose
    # three channels are that gray, prepared as torchvision prepares ImageNet inputs.
    reference = torchvision.models.resnet18(num_classes=3).eval()
    reference.load_state_dict(net.body.state_dict())
    rgb = F.to_dtype(F.grayscale_to_rgb(gray), torch.float32, scale=True)
    expected = reference(F.normalize(rgb, mean=IMAGENET_MEAN, std=IMAGENET_STD))
    torch.testing.assert_close(net(gray), expected)


def test_pretrained_weights_are_read_from_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    state = saved_resnet18(cache / RESNET18_FILE)
    cfg = config(
        tmp_path,
        model={"name": "resnet18", "pretrained": "IMAGENET1K_V1"},
        data={"image_size": [32, 32], "channels": 3},
    )
    net = create_model(cfg).net
    assert torch.equal(net.body.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_pretrained_weights_without_network_name_the_file_to_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # urlopen builds its opener, with the proxies of that moment, once per process: start from
    # none, and put back the one before, so the proxy below reaches no other test.
    monkeypatch.setattr(urllib.request, "_opener", None)
    # Every download goes to a proxy on a loopback port nothing listens on: refused at once,
    # and no request leaves this machine.
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    cfg = config(
        tmp_path,
        model={"name": "resnet18", "pretrained": "DEFAULT"},
        data={"image_size": [32, 32], "channels": 3},
    )
    with pytest.raises(PipelineError) as error:
        create_model(cfg)
    message = str(error.value)
    assert "\n" not in message
    assert "cannot download the resnet18 DEFAULT weights" in message
    assert f"{tmp_path / 'torch' / 'hub' / 'checkpoints' / RESNET18_FILE}" in message
    assert "model.weights_file" in message


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ({"name": "resnet_18"}, {}, "did you mean resnet18"),
        ({"name": "resnet18", "pretrained": "IMAGENET9K"}, {}, "use one of DEFAULT, IMAGENET1K_V1"),
        (
            {"name": "vit_b_16"},
            {"image_size": [32, 32]},
            "vit_b_16 needs images of at least 224x224",
        ),
        (
            {"name": "mlp", "weights_file": "missing.pt"},
            {},
            "model.weights_file missing.pt not found",
        ),
    ],
)
def test_model_choices_that_cannot_work_are_one_line_errors(tmp_path, model, data, message):
    cfg = config(tmp_path, model=model, data={"channels": 3, **data})
    with pytest.raises(PipelineError, match=message):
        create_model(cfg)


def test_the_backbone_trains_only_after_the_frozen_epochs(tmp_path):
    weights = tmp_path / "cnn.pt"
    options = {"width": 4, "blocks": 2, "dropout": 0.0}
    cfg = config(
        tmp_path,
        model={"name": "cnn", "networks": {"cnn": options}},
        data={"image_size": [16, 16], "channels": 3},
    )
    torch.save(create_model(cfg).net.body.state_dict(), weights)
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, weights_file=str(weights), freeze_backbone_epochs=1),
        training=dataclasses.replace(cfg.training, max_epochs=2),
    )
    write_images(Path(cfg.paths.raw))
    preprocess(cfg)

    import lightning as L

    from mlt_project.training.factories import create_datamodule, create_trainer

    seen: list[dict[str, bool]] = []

    class Record(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            body = pl_module.net.body
            seen.append(
                {
                    "backbone_trains": body.features[0].weight.requires_grad,
                    "head_trains": body.head[-1].weight.requires_grad,
                    "backbone_as_loaded": torch.equal(
                        body.features[0].weight, torch.load(weights)["features.0.weight"]
                    ),
                }
            )

    model = create_model(cfg)
    trainer = create_trainer(cfg, logger=False, callbacks=[Record()])
    trainer.fit(model, datamodule=create_datamodule(cfg))
    assert seen == [
        {"backbone_trains": False, "head_trains": True, "backbone_as_loaded": True},
        {"backbone_trains": True, "head_trains": True, "backbone_as_loaded": False},
    ]


def test_augmentation_off_leaves_batches_untouched():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert BatchAugment()(images) is images


def test_augmentation_draws_parameters_per_image():
    torch.manual_seed(0)
    image = torch.arange(3 * 16 * 16, dtype=torch.float32).reshape(1, 3, 16, 16) % 256
    batch = image.expand(8, -1, -1, -1).contiguous()
    out = BatchAugment(crop_scale=(0.3, 0.9), rotation=20, color_jitter=0.3)(batch)
    assert out.shape == batch.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255
    distinct = {tuple(o.flatten()[:64].round().tolist()) for o in out}
    assert len(distinct) == 8, "images of one batch got the same augmentation"


def test_horizontal_flip_alone_mirrors_about_half_of_the_images():
    torch.manual_seed(0)
    batch = torch.rand(64, 1, 8, 8) * 255
    out = BatchAugment(horizontal_flip=True)(batch)
    same = [torch.allclose(o, b, atol=1e-3) for o, b in zip(out, batch, strict=True)]
    mirrored = [torch.allclose(o, b.flip(-1), atol=1e-3) for o, b in zip(out, batch, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 16 < sum(mirrored) < 48


def test_evaluation_and_export_ignore_augmentation_settings(tmp_path):
    """One fixed checkpoint, evaluated and exported under params with and without augment."""
    from mlt_project.serve.onnx_export import export_onnx

    plain = config(tmp_path, model={"name": "cnn"}, data={"image_size": [16, 16], "channels": 3})
    write_images(Path(plain.paths.raw))
    preprocess(plain)
    train(plain)
    augmented = dataclasses.replace(
        plain,
        augment={
            **plain.augment,
            "crop_scale": [0.5, 1.0],
            "horizontal_flip": True,
            "rotation": 30.0,
            "color_jitter": 0.4,
        },
    )
    images, _, _ = read_split(split_path(plain.paths.processed, "test"))
    results, outputs = [], []
    for cfg in (plain, augmented):
        results.append(evaluate(cfg))
        torch.manual_seed(123)  # a different random state must not matter either
        net = load_trained(cfg).net
        outputs.append(net(torch.from_numpy(images)).detach())
        onnx_file = tmp_path / f"model-{len(outputs)}.onnx"
        export_onnx(net, onnx_file, cfg.data.input_shape, cfg.release.onnx_opset)
    assert results[0] == results[1]
    assert torch.equal(outputs[0], outputs[1])
    import onnxruntime as ort

    runs = [
        ort.InferenceSession(str(tmp_path / f"model-{i}.onnx")).run(None, {"images": images})[0]
        for i in (1, 2)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    metrics = json.loads(Path(plain.paths.metrics).read_text())
    assert metrics["num_samples"] == len(images)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    # 10 epochs of 10 steps, the first one warm-up.
    settings = Optimization(10, "sgd", 0.1, 0.0, 0.0, "cosine", warmup_epochs=1)
    scheduler = settings.make_scheduler(optimizer, total=100)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.01)  # 1/10 of the way up
    assert rates[9] == pytest.approx(0.1)  # warm-up done
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert rates[-1] < 0.001


def test_onecycle_peaks_at_the_learning_rate():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=0.1)
    settings = Optimization(5, "adamw", 0.1, 0.0, 0.0, "onecycle", warmup_epochs=1)
    scheduler = settings.make_scheduler(optimizer, total=50)
    rates = []
    for _ in range(50):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert max(rates) == pytest.approx(0.1, rel=1e-3)
    assert rates.index(max(rates)) in (8, 9, 10)


# ---------------------------------------------------------------- mixup, cutmix, EMA


def test_mixup_mixes_multi_hot_targets_by_the_images_weights():
    images = torch.stack([torch.full((1, 4, 4), 10.0), torch.full((1, 4, 4), 110.0)])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    torch.manual_seed(0)
    mixed, targets = BatchMix(3, mixup_alpha=0.4)(images, labels)
    lam = (110.0 - mixed[:, 0, 0, 0]) / 100.0  # image 0 = 10 * lam + 110 * (1 - lam)
    torch.testing.assert_close(targets[0], labels[0] * lam[0] + labels[1] * (1 - lam[0]))
    assert targets.shape == (2, 3)


# ---------------------------------------------------------------- mixup and cutmix


def constant_batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is all pixels of value 10 * (i + 1); labels 0..n-1."""
    values = torch.arange(1, n + 1).float() * 10
    return values.view(n, 1, 1, 1).expand(n, 1, 16, 16).clone(), torch.arange(n)


def test_mixup_blends_each_image_with_its_partner_by_its_own_weight():
    torch.manual_seed(0)
    images, labels = constant_batch()
    mixed, targets = BatchMix(8, mixup_alpha=0.4)(images, labels)
    assert torch.allclose(targets.sum(dim=1), torch.ones(8))
    lam = targets[torch.arange(8), labels]  # the share of each image's own label
    partner = images.flip(0)[:, 0, 0, 0]
    expected = lam * images[:, 0, 0, 0] + (1 - lam) * partner
    torch.testing.assert_close(mixed[:, 0, 0, 0], expected)
    assert len(set(lam.tolist())) == 8  # a weight per image, not one per batch


def test_cutmix_labels_are_the_pixel_shares_of_the_two_images():
    torch.manual_seed(1)
    images, labels = constant_batch()
    mixed, targets = BatchMix(8, cutmix_alpha=1.0)(images, labels)
    own = (mixed == images).float().mean(dim=(1, 2, 3))
    torch.testing.assert_close(targets[torch.arange(8), labels], own)
    torch.testing.assert_close(targets[torch.arange(8), labels.flip(0)], 1 - own)
    assert ((own > 0) & (own < 1)).any()  # boxes were pasted


def test_with_both_on_each_batch_gets_one_of_them_about_half_the_time():
    torch.manual_seed(2)
    mix = BatchMix(8, mixup_alpha=0.4, cutmix_alpha=1.0)
    images, labels = constant_batch()
    kinds = []
    for _ in range(200):
        mixed, _ = mix(images, labels)
        # cutmix keeps every pixel of one image or the other; mixup blends every pixel.
        pure = ((mixed == images) | (mixed == images.flip(0))).all()
        kinds.append(bool(pure))
    assert 70 < sum(kinds) < 130, sum(kinds)


def test_mixing_off_passes_the_batch_untouched():
    images, labels = constant_batch()
    mixed, targets = BatchMix(8)(images, labels)
    assert mixed is images and targets is labels


# ---------------------------------------------------------------- EMA


def test_the_average_follows_the_steps_and_averages_batchnorm_statistics():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = ExponentialAverage(net, decay=0.5)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(1.0)
        net[1].num_batches_tracked.fill_(7)
    average.update(net)  # first update: decay min(0.5, 1/10) = 0.1
    state = average.net.state_dict()
    for name in ("0.weight", "1.running_mean", "1.running_var"):
        torch.testing.assert_close(state[name], start[name] + 0.9)
    assert int(state["1.num_batches_tracked"]) == 7  # counters are copied, not averaged
    assert int(average.updates) == 1
    average.update(net)  # decay min(0.5, 2/11) = 2/11
    torch.testing.assert_close(state["0.weight"], start["0.weight"] + 0.9 + 0.1 * 9 / 11)
    assert not any(p.requires_grad for p in average.net.parameters())


# ---------------------------------------------------------------- backbone learning rate


def test_backbone_lr_factor_splits_the_parameters_and_the_schedule_scales_both():
    spec = {"name": "cnn", "options": {"width": 4, "blocks": 2, "dropout": 0.0},
            "input_shape": [1, 8, 8], "num_classes": 3}  # fmt: skip
    net = build_network(spec)
    assert len(list(parameter_groups(net, 0.1))) == len(list(net.parameters()))  # one group
    settings = Optimization(4, "adamw", 0.1, 0.0, 0.0, "onecycle", warmup_epochs=1)
    optimizer = settings.make_optimizer(net, backbone_lr_factor=0.25)
    backbone, head = optimizer.param_groups
    head_names = {
        name for name, _ in net.named_parameters() if name.startswith(f"body.{net.head}.")
    }
    assert len(head["params"]) == len(head_names) == 2  # the classifier's weight and bias
    assert len(backbone["params"]) + 2 == len(list(net.parameters()))
    scheduler = settings.make_scheduler(optimizer, total=20)
    peaks = [0.0, 0.0]
    for _ in range(20):
        optimizer.step()
        scheduler.step()
        peaks = [max(p, g["lr"]) for p, g in zip(peaks, optimizer.param_groups, strict=True)]
    assert peaks == pytest.approx([0.025, 0.1], rel=1e-3)


# ---------------------------------------------------------------- a network over a split


class FirstPixels(torch.nn.Module):
    """Logits that show which image went in: its first two pixels, as float64."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8 and images.device.type == "cpu"
        return images.flatten(1)[:, :2].double()


def test_predict_split_returns_logits_and_labels_in_file_order(tmp_path):
    # Seven 1x2x2 images whose pixels are i, 10 + i, ...; 12-byte row groups hold 3 images, so
    # chunks of 4 and 3 make row groups of 3, 1 and 3, read in batches of 2, 1, 1, 2, 1.
    images = np.array([[[[i, 10 + i], [20 + i, 30 + i]]] for i in range(7)], dtype=np.uint8)
    labels = np.array([2, 0, 1, 1, 0, 2, 1])
    path = tmp_path / "val.parquet"
    names = [f"{i}.png" for i in range(7)]
    chunks = [(images[:4], labels[:4], names[:4]), (images[4:], labels[4:], names[4:])]
    write_chunks(path, chunks, (1, 2, 2), ["a", "b", "c"], row_group_bytes=12)
    logits, targets, class_names = predict_split(FirstPixels(), path, 2, torch.device("cpu"))
    assert logits.dtype == torch.float32
    assert logits.tolist() == [
        [0.0, 10.0], [1.0, 11.0], [2.0, 12.0], [3.0, 13.0], [4.0, 14.0], [5.0, 15.0], [6.0, 16.0]
    ]  # fmt: skip
    assert targets.tolist() == [2, 0, 1, 1, 0, 2, 1]
    assert class_names == ["a", "b", "c"]


def test_predict_split_returns_multi_hot_labels_of_a_multilabel_split(tmp_path):
    images = np.array([[[[i, 2 * i]]] for i in range(3)], dtype=np.uint8)  # 1x1x2
    hot = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 1]], dtype=np.uint8)
    path = tmp_path / "test.parquet"
    chunks = [(images, hot, ["x.png", "y.png", "z.png"])]
    write_chunks(path, chunks, (1, 1, 2), ["sun", "tree", "wave"], task=TASKS["multilabel"])
    logits, targets, class_names = predict_split(FirstPixels(), path, 8, torch.device("cpu"))
    assert logits.tolist() == [[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]]
    assert targets.dtype == torch.float32
    assert targets.tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]]
    assert class_names == ["sun", "tree", "wave"]


def test_device_for_takes_the_gpu_only_where_the_accelerator_allows_one_and_there_is_one(
    monkeypatch,
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [device_for(a) for a in ("auto", "gpu", "cpu")] == [torch.device("cpu")] * 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [device_for(a) for a in ("auto", "gpu", "cuda", "cpu", "mps")] == [
        torch.device("cuda"), torch.device("cuda"), torch.device("cuda"),
        torch.device("cpu"), torch.device("cpu"),
    ]  # fmt: skip


# ---------------------------------------------------------------- in a baked project


@pytest.mark.e2e
def test_cnn_beats_the_mlp_on_the_digits(project_copy, trained_project):
    mlp = json.loads((trained_project.root / "evaluation_results.json").read_text())["accuracy"]
    set_params(project_copy, model__name="cnn")
    repro = run("dvc", "repro", cwd=project_copy)
    assert "Running stage 'preprocess'" not in repro.stdout  # a model change keeps the data
    cnn = json.loads((project_copy / "evaluation_results.json").read_text())["accuracy"]
    print(f"test accuracy on the digits: cnn {cnn:.4f}, mlp {mlp:.4f}")
    assert cnn > mlp


@pytest.mark.e2e
def test_a_new_network_is_one_class_in_nets_py(project_copy):
    """What PROJECT.md's "Add a network" says: one file of code touched (nets.py); the new
    network trains, and its export passes the parity gate."""
    nets = project_copy / "src" / MODULE / "model" / "nets.py"  # the copy's own code runs
    nets.write_text(
        nets.read_text()
        + '''

@network("tiny")
class Tiny(nn.Module):
    """Average pooling to 4x4, then one linear layer."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, pool: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.AdaptiveAvgPool2d(pool), nn.Flatten(), nn.Linear(input_shape[0] * pool * pool, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
'''
    )
    params = project_copy / "params.yaml"
    params.write_text(params.read_text().replace("  mlp:", "  tiny:\n    pool: 4\n  mlp:", 1))
    set_params(project_copy, model__name="tiny", training__max_epochs=2)
    env = project_env(project_copy)
    run("dvc", "repro", cwd=project_copy, **env)
    export = run(
        sys.executable, "-m", f"{MODULE}.scripts.release", "export-onnx", cwd=project_copy, **env
    )
    assert "classes identical" in export.stderr
    checkpoint = torch.load(project_copy / "models" / "model.ckpt", weights_only=False)
    assert checkpoint["hyper_parameters"]["network"]["name"] == "tiny"
    assert checkpoint["state_dict"]["net.body.layers.2.weight"].shape == (10, 16)


@pytest.mark.e2e
def test_resume_is_exact_with_augmentation_a_schedule_and_a_cnn(project_copy):
    """SIGKILL mid-run, then resume: the same weights as a run that was never interrupted,
    with random augmentation, a warm-up + cosine schedule and BatchNorm in play."""
    set_params(
        project_copy,
        model__name="cnn",
        training__max_epochs=3,
        training__scheduler="cosine",
        training__warmup_epochs=1,
        augment__crop_scale=[0.6, 1.0],
        augment__horizontal_flip=True,
        augment__rotation=15,
        augment__color_jitter=0.2,
        runtime__checkpoint_every_n_steps=7,
    )
    params = project_copy / "params.yaml"
    params.write_text(
        params.read_text().replace("width: 32", "width: 8").replace("blocks: 3", "blocks: 2")
    )
    train_cmd = (sys.executable, "-m", f"{MODULE}.training.train")
    run(*train_cmd, cwd=project_copy)
    model = project_copy / "models" / "model.ckpt"
    expected = torch.load(model, map_location="cpu", weights_only=False)["state_dict"]
    model.unlink()

    resume = project_copy / "checkpoints" / "last.ckpt"
    training = subprocess.Popen(
        [str(c) for c in train_cmd], cwd=project_copy, env=env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not resume.exists():
        assert training.poll() is None, training.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no resume checkpoint appeared"
        time.sleep(0.02)
    training.kill()
    training.communicate()
    assert training.returncode == -signal.SIGKILL, "training finished before the kill"
    step = torch.load(resume, map_location="cpu", weights_only=False)["global_step"]
    again = run(*train_cmd, cwd=project_copy)
    assert f"step {step}" in again.stderr
    actual = torch.load(model, map_location="cpu", weights_only=False)["state_dict"]
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), f"{name} differs from the uninterrupted run"
