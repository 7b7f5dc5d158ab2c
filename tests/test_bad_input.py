"""Bad input to the generated project's commands: each case must exit 1 with one line that names
the problem and the fix, print no traceback, and leave every file of the user's as it was."""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import MODULE, run

pytestmark = pytest.mark.e2e

SKIP_PARTS = {".dvc", "__pycache__", ".pytest_cache"}


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root, except DVC's and Python's own scratch folders."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not SKIP_PARTS.intersection(path.relative_to(root).parts)
    }


def edit_params(old: str, new: str) -> Callable[[Path], None]:
    def edit(project: Path) -> None:
        params = project / "params.yaml"
        text = params.read_text()
        assert old in text, f"{old!r} is no longer in params.yaml"
        params.write_text(text.replace(old, new, 1))

    return edit


def remove(relative: str) -> Callable[[Path], None]:
    def delete(project: Path) -> None:
        path = project / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return delete


def empty_raw(project: Path) -> None:
    shutil.rmtree(project / "data" / "raw")
    (project / "data" / "raw").mkdir()


def class_without_images(project: Path) -> None:
    (project / "data" / "raw" / "7" / "notes.txt").parent.mkdir(exist_ok=True)
    for image in (project / "data" / "raw" / "7").glob("*.png"):
        image.unlink()
    (project / "data" / "raw" / "7" / "notes.txt").write_text("no images here")


def corrupt_image(project: Path) -> None:
    (project / "data" / "raw" / "3" / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")


@dataclass(frozen=True)
class Case:
    id: str
    stage: str  # module under the package: data.preprocess, train, eval
    setup: Callable[[Path], None]
    message: str  # must appear in the one-line error


CASES = [
    Case("params missing", "train", remove("params.yaml"), "params.yaml not found"),
    Case("params unparsable", "train", edit_params("model:\n", "model: [\n"), "is not valid YAML at line"),
    Case("unknown key", "train", edit_params("  lr:", "  learning_rate:"), "unknown key 'training.learning_rate'"),
    Case("missing key", "train", edit_params("  dropout: 0.1\n", ""), "missing key 'model.dropout'"),
    Case("wrong type", "train", edit_params("  max_epochs: 30", "  max_epochs: '30'"), "key 'training.max_epochs' is '30' (str), expected an integer"),
    Case("invalid value", "data.preprocess", edit_params("  channels: 1 ", "  channels: 2 "), "channels must be 1 (grayscale) or 3 (RGB)"),
    Case("raw missing", "data.preprocess", remove("data/raw"), "sample_data"),
    Case("raw empty", "data.preprocess", empty_raw, "has no class folders"),
    Case("class without images", "data.preprocess", class_without_images, "class folder data/raw/7 has no images"),
    Case("corrupt image", "data.preprocess", corrupt_image, "cannot read image data/raw/3/0003.png"),
    Case("class count differs", "data.preprocess", edit_params("  num_classes: 10", "  num_classes: 9"), "set data.num_classes: 10"),
    Case("image size differs from checkpoint", "eval", edit_params("  image_size: [8, 8]", "  image_size: [16, 16]"), "was trained with input_shape (1, 8, 8) but params.yaml gives (1, 16, 16)"),
    Case("channels differ from checkpoint", "eval", edit_params("  channels: 1 ", "  channels: 3 "), "retrain with `dvc repro`"),
    Case("no checkpoint", "eval", remove("models/model.ckpt"), "no checkpoint at models/model.ckpt"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_with_one_line_and_loses_nothing(project_copy, case):
    case.setup(project_copy)
    before = snapshot(project_copy)
    result = run(sys.executable, "-m", f"{MODULE}.{case.stage}", cwd=project_copy, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, lines
    assert case.message in errors[0], errors[0]
    assert snapshot(project_copy) == before
