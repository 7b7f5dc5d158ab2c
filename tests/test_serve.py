"""The template's ONNX export and inference, on a tiny network: the files a release ships work in
an empty folder, a failed export changes nothing, and inference never imports PyTorch."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from helpers import REPO
from mlt_project.base.config import DataConfig
from mlt_project.base.errors import PipelineError
from mlt_project.base.tasks import Multiclass
from mlt_project.serve.onnx_export import check_parity, export_onnx, onnx_files, staged_export
from mlt_project.serve.onnx_runtime import onnx_session, run_onnx
from mlt_project.serve.predict import image_batches

MULTICLASS = Multiclass()

SHAPE = (1, 8, 8)


class Pixels(torch.nn.Module):
    """What checkpoint.load_network returns: uint8 (N, C, H, W) in, logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float() / 255)


def seeded() -> Pixels:
    torch.manual_seed(0)
    return Pixels().eval()


@pytest.fixture
def model() -> Pixels:
    return seeded()


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (32, *SHAPE), dtype=np.uint8)


def logits(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(images)).numpy()


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, hidden ones included, by relative name."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def external_tensors(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return sum(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_small_model_is_one_self_contained_file(model, images, tmp_path):
    path = tmp_path / "releases" / "model.onnx"
    assert export_onnx(model, path, SHAPE, 18) == [path]
    assert sorted(contents(path.parent)) == ["model.onnx"]
    assert external_tensors(path) == 0
    # Moved away from where it was written, it still loads and gives the same logits.
    moved = tmp_path / "elsewhere" / "model.onnx"
    moved.parent.mkdir()
    path.rename(moved)
    actual = run_onnx(onnx_session(moved), images)
    np.testing.assert_allclose(actual, logits(model, images), atol=1e-5)


def test_weights_over_the_limit_go_to_content_named_data_files_that_travel(model, images, tmp_path):
    path = tmp_path / "releases" / "model.onnx"
    files = export_onnx(model, path, SHAPE, 18, max_inline_bytes=1000)
    assert len(files) == 2 and files[0] == path
    data = files[1]
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    assert data.name == f"model.{digest[:12]}.onnx.data"
    assert sorted(contents(path.parent)) == sorted(f.name for f in files), "no temporary left"
    assert external_tensors(path) >= 1
    assert data.stat().st_size >= 64 * 16 * 4, "the weights are in the data file"
    # The files onnx_files names, copied to an empty folder, are the whole model.
    copy = tmp_path / "download"
    copy.mkdir()
    for file in onnx_files(path):
        shutil.copy(file, copy / file.name)
    shutil.rmtree(path.parent)
    parity = check_parity(model, copy / "model.onnx", images, rtol=0, atol=1e-5, task=MULTICLASS)
    assert parity["classes_identical"] and parity["max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("limit", [1000, 10**9], ids=["external", "inline"])
def test_a_failed_gate_changes_no_file_and_leaves_no_temporary(model, images, tmp_path, limit):
    path = tmp_path / "releases" / "model.onnx"
    export_onnx(model, path, SHAPE, 18, max_inline_bytes=limit)
    before = contents(path.parent)
    with torch.no_grad():
        model.net[1].weight.add_(0.5)
    original = seeded()
    with (
        pytest.raises(PipelineError, match="parity gate failed") as failure,
        staged_export(model, path, SHAPE, 18, max_inline_bytes=limit) as staged,
    ):
        assert staged != path
        # The new export holds the changed weights: against the original ones the gate fails.
        check_parity(original, staged, images, rtol=1e-3, atol=1e-5, task=MULTICLASS, shown_as=path)
    assert str(path) in str(failure.value)
    assert str(staged) not in str(failure.value)
    assert contents(path.parent) == before
    np.testing.assert_allclose(
        run_onnx(onnx_session(path), images), logits(original, images), atol=1e-5
    )


def with_head(model: Pixels, scale: float = 1.0, bias: dict[int, float] | None = None) -> Pixels:
    """A copy of `model` whose logits are `scale` times as large; the classes in `bias` get class
    0's weights and the bias given, so their logits differ by their biases alone."""
    copy = seeded()
    copy.load_state_dict(model.state_dict())
    head = copy.net[1]
    with torch.no_grad():
        for label, value in (bias or {}).items():
            head.weight[label] = head.weight[0]
            head.bias[label] = value
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    return copy.eval()


def test_the_gate_scales_with_the_logits_and_names_its_settings(model, images, tmp_path):
    """Logits in the hundreds, as a trained ResNet's: float32 rounding then moves each by ~1e-4,
    which the old absolute bound (1e-4) rejected."""
    exported = with_head(model, scale=400)
    path = tmp_path / "model.onnx"
    export_onnx(exported, path, SHAPE, 18)
    # Rounding, as reassociation makes it: every weight off by a few parts in ten million.
    rounded = with_head(model, scale=400 * (1 + 3e-7))
    parity = check_parity(rounded, path, images, rtol=1e-3, atol=1e-5, task=MULTICLASS)
    assert parity["max_logit"] > 100 and parity["max_abs_diff"] > 1e-5
    assert parity["tolerance_used"] < 0.01 and parity["classes_identical"]
    with pytest.raises(PipelineError) as failure:
        check_parity(rounded, path, images, rtol=0, atol=1e-5, task=MULTICLASS)
    message = str(failure.value)
    assert "release.parity_rtol 0 and release.parity_atol 1e-05" in message
    assert "raise release.parity_rtol" in message and "\n" not in message


def test_a_tie_may_break_either_way_but_a_clear_class_may_not(model, images, tmp_path):
    path = tmp_path / "model.onnx"
    # Classes 0 and 1 lead every image by far, with equal logits in the exported model.
    export_onnx(with_head(model, bias={0: 20.0, 1: 20.0}), path, SHAPE, 18)
    tie = with_head(model, bias={0: 20.0, 1: 20.0 + 1e-6})  # PyTorch picks 1, ONNX Runtime 0
    parity = check_parity(tie, path, images, rtol=1e-3, atol=1e-5, task=MULTICLASS)
    assert parity["ties"] == parity["ties_flipped"] == len(images)
    flipped = with_head(model, bias={0: 20.0, 1: 20.1})  # the same, outside the tolerance
    with pytest.raises(PipelineError, match="predicts another class for 32 image") as failure:
        check_parity(flipped, path, images, rtol=1e-3, atol=1e-5, task=MULTICLASS)
    assert "raising the tolerances would hide a real difference" in str(failure.value)


def test_a_new_export_removes_the_data_files_only_its_predecessor_read(model, tmp_path):
    path = tmp_path / "model.onnx"
    first = export_onnx(model, path, SHAPE, 18, max_inline_bytes=1000)[1]
    (tmp_path / "model.keep.data").write_text("not ours")
    with torch.no_grad():
        model.net[1].weight.mul_(2)
    second = export_onnx(model, path, SHAPE, 18, max_inline_bytes=1000)[1]
    assert first.name != second.name
    assert sorted(contents(tmp_path)) == sorted(["model.onnx", second.name, "model.keep.data"])
    assert export_onnx(model, path, SHAPE, 18) == [path]
    assert sorted(contents(tmp_path)) == ["model.keep.data", "model.onnx"]


def test_predict_imports_neither_torch_nor_lightning():
    heavy = ("torch", "lightning", "pytorch_lightning", "torchmetrics", "torchvision")
    code = (
        "import sys\n"
        "import mlt_project.serve.predict\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO / "src_templates")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout[:2000]


def data_config() -> DataConfig:
    return DataConfig(
        image_size=[8, 8],
        channels=1,
        num_classes=10,
        val_fraction=0.15,
        test_fraction=0.15,
        seed=0,
        skip_corrupt=False,
    )


def write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for i in range(count):
        path = folder / f"{i:03d}.png"
        Image.fromarray(np.full((8, 8), i * 20, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_images_are_decoded_in_bounded_batches_in_order(tmp_path):
    paths = write_images(tmp_path / "images", 10)
    batches = list(image_batches(paths, data_config(), 4, None))
    assert [len(names) for names, _ in batches] == [4, 4, 2]
    assert [n for names, _ in batches for n in names] == [str(p) for p in paths]
    assert [int(images[0, 0, 0, 0]) for _, images in batches] == [0, 80, 160]


def test_unreadable_images_stop_or_are_skipped_and_counted(tmp_path):
    paths = write_images(tmp_path / "images", 5)
    paths[1].write_bytes(b"not a png")
    with pytest.raises(PipelineError, match="--skip-corrupt") as failure:
        list(image_batches(paths, data_config(), 4, None))
    assert str(paths[1]) in str(failure.value)
    assert "data.skip_corrupt" not in str(failure.value), "a switch predict does not read"
    skipped: list[Path] = []
    batches = list(image_batches(paths, data_config(), 4, skipped))
    assert [n for names, _ in batches for n in names] == [str(p) for p in paths if p != paths[1]]
    assert [len(names) for names, _ in batches] == [4]
    assert skipped == [paths[1]]
