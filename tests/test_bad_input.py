"""Bad input to the generated project's commands: each case must exit 1 with one line that names
the problem and the fix, print no traceback, and leave every file of the user's as it was."""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import MODULE, REPO, one_error_line, run
from mlt_project.base.config import load_config
from mlt_project.data.preprocess import preprocess
from mlt_project.data.store import read_split, split_path

# git's, DVC's and Python's scratch folders, and what a failed training run leaves for the next one:
# TensorBoard logs and the resume checkpoint (not files of the user's).
SKIP_PARTS = {".git", ".dvc", "__pycache__", ".pytest_cache", "logs", "checkpoints"}


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


def invalid_label(project: Path) -> None:
    (project / "data" / "raw" / "7").rename(project / "data" / "raw" / "7?")


def disk_full(relative: str) -> Callable[[Path], None]:
    """Writes to `relative` fail with ENOSPC from the kernel: its temporary file is /dev/full."""

    def fill(project: Path) -> None:
        target = project / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.with_name(f".{target.name}.tmp").symlink_to("/dev/full")

    return fill


def edit_checkpoint(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(project: Path) -> None:
        path = project / "models" / "model.ckpt"
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # data, no code
        change(checkpoint)
        torch.save(checkpoint, path)

    return edit


def newer_format(checkpoint: dict) -> None:
    checkpoint["ml_template"]["format"] = 99


def other_shape(checkpoint: dict) -> None:
    # The hparams say 64 hidden units, the weights were trained with 128.
    checkpoint["hyper_parameters"]["network"]["options"]["hidden_size"] = 64


def sampler_streamed(project: Path) -> None:
    edit_params("  class_balance: none ", "  class_balance: sampler ")(project)
    edit_params("  streaming: auto ", "  streaming: true ")(project)


def sampler_multilabel(project: Path) -> None:
    edit_params("  class_balance: none ", "  class_balance: sampler ")(project)
    edit_params("  task: multiclass", "  task: multilabel")(project)


def no_setup(project: Path) -> None:
    pass


def duplicate_in_two_splits(project: Path) -> None:
    raw = project / "data" / "raw"
    shutil.copy(raw / "3" / "0003.png", raw / "3" / "copy.png")
    rows = [f"{p.relative_to(raw).as_posix()},{p.parent.name}," for p in sorted(raw.rglob("*.png"))]
    rows = [
        row + {"3/0003.png": "train", "3/copy.png": "test"}.get(row.split(",")[0], "")
        for row in rows
    ]
    (raw / "metadata.csv").write_text("\n".join(["file_name,label,split", *rows]) + "\n")


def write(relative: str, text: str) -> Callable[[Path], None]:
    def put(project: Path) -> None:
        (project / relative).parent.mkdir(parents=True, exist_ok=True)
        (project / relative).write_text(text)

    return put


def multilabel_csv(labels: list[str], task: str = "multiclass") -> Callable[[Path], None]:
    """A metadata.csv giving the sample digits' first images `labels`, and data.task `task`."""

    def put(project: Path) -> None:
        raw = project / "data" / "raw"
        files = sorted(raw.rglob("*.png"))[: len(labels)]
        rows = [
            f"{p.relative_to(raw).as_posix()},{label}"
            for p, label in zip(files, labels, strict=True)
        ]
        (raw / "metadata.csv").write_text("\n".join(["file_name,label", *rows]) + "\n")
        if task != "multiclass":
            edit_params("  task: multiclass", f"  task: {task}")(project)

    return put


@dataclass(frozen=True)
class Case:
    id: str
    stage: str  # module under the package (data.preprocess, training.train, ...), or "bootstrap"
    setup: Callable[[Path], None]
    message: str  # must appear in the one-line error
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # variables for the command


CASES = [
    Case("params missing", "training.train", remove("params.yaml"), "params.yaml not found"),
    Case("params unparsable", "training.train", edit_params("model:\n", "model: [\n"), "is not valid YAML at line"),
    Case("unknown key", "training.train", edit_params("  lr:", "  learning_rate:"), "unknown key 'training.learning_rate'"),
    Case("missing key", "training.train", edit_params("    hidden_size: 128\n", ""), "missing key 'model.mlp.hidden_size'"),
    Case("network option typo", "training.train", edit_params("    hidden_size:", "    hiden_size:"), "unknown key 'model.mlp.hiden_size'"),
    Case("unknown network", "training.train", edit_params("  name: mlp", "  name: resnet_18"), "did you mean resnet18"),
    Case("pretrained weights for an own network", "training.train", edit_params("  pretrained: none", "  pretrained: DEFAULT"), "mlp is defined in model/nets.py and has no published weights"),
    Case("wrong type", "training.train", edit_params("  max_epochs: 30", "  max_epochs: '30'"), "key 'training.max_epochs' is '30' (str), expected an integer"),
    Case("invalid value", "data.preprocess", edit_params("  channels: 1 ", "  channels: 2 "), "channels must be 1 (grayscale) or 3 (RGB)"),
    Case("raw missing", "data.preprocess", remove("data/raw"), "sample_data"),
    Case("raw empty", "data.preprocess", empty_raw, "has no class folders"),
    Case("class without images", "data.preprocess", class_without_images, "class folder data/raw/7 has no images"),
    Case("corrupt image", "data.preprocess", corrupt_image, "cannot read image data/raw/3/0003.png"),
    Case("corrupt image: the switch to skip it", "data.preprocess", corrupt_image, "replace or remove the file, or set data.skip_corrupt: true"),
    Case("class count differs", "data.preprocess", edit_params("  num_classes: 10", "  num_classes: 9"), "set data.num_classes: 10"),
    Case("image size differs from checkpoint", "training.evaluate", edit_params("  - 8\n  - 8\n", "  - 16\n  - 16\n"), "was trained with input_shape (1, 8, 8) but params.yaml gives (1, 16, 16)"),
    Case("channels differ from checkpoint", "training.evaluate", edit_params("  channels: 1 ", "  channels: 3 "), "retrain with `dvc repro`"),
    Case("no checkpoint", "training.evaluate", remove("models/model.ckpt"), "no checkpoint at models/model.ckpt"),
    Case("bootstrap: bad name", "bootstrap", no_setup, "project name '1bad' is not usable", ("--name", "1bad")),
    Case("bootstrap: file changed", "bootstrap", edit_params("  hidden_size: 128", "  hidden_size: 256"), "exist and differ: params.yaml; nothing was written", ("--torch", "cpu")),
    Case("bootstrap: update of uncommitted changes", "bootstrap", edit_params("  hidden_size: 128", "  hidden_size: 256"), "the project has uncommitted changes (", ("--update",)),
    Case("invalid class label", "data.preprocess", invalid_label, "class folder '7?' is not a valid label"),
    # Splits come from the images' bytes: no digit's score (seed 42) falls in [0.15, 0.15 + 1e-6).
    Case("split left empty", "data.preprocess", edit_params("  val_fraction: 0.15", "  val_fraction: 1.0e-6"), "the val split is empty with 1797 images: raise data.val_fraction"),
    Case("metadata.csv: missing file", "data.preprocess", write("data/raw/metadata.csv", "file_name,label\n3/0003.png,three\n3/gone.png,three\n"), "data/raw/metadata.csv line 3: 3/gone.png not found in data/raw: fix the rows, or set data.skip_corrupt: true"),
    Case("metadata.csv: no label column", "data.preprocess", write("data/raw/metadata.csv", "file_name,class\n3/0003.png,three\n"), "data/raw/metadata.csv has no label column"),
    Case("metadata.csv: duplicates in two splits", "data.preprocess", duplicate_in_two_splits, "are the same image but metadata.csv puts them in test and train"),
    Case("task unknown", "data.preprocess", edit_params("  task: multiclass", "  task: multi-label"), "task must be one of multiclass, multilabel, not 'multi-label'"),
    Case("multilabel from class folders", "data.preprocess", edit_params("  task: multiclass", "  task: multilabel"), "data.task: multilabel needs data/raw/metadata.csv (class folders give one label an image)"),
    Case("several labels under multiclass", "data.preprocess", multilabel_csv(["cat", "dog", "cat dog"]), "label 'cat dog' looks like several labels (cat, dog) but data.task is multiclass: set data.task: multilabel"),
    Case("multilabel: invalid name", "data.preprocess", multilabel_csv(["cat", "dog", "cat d?g"], "multilabel"), "label 'd?g' is not valid: use up to 64 letters, digits or '_.+-'"),
    Case("multilabel: processed as multiclass", "training.train", edit_params("  task: multiclass", "  task: multilabel"), "data/processed/train.parquet holds multiclass labels but data.task is multilabel: rerun `dvc repro preprocess`"),
    Case("multilabel: checkpoint is multiclass", "training.evaluate", edit_params("  task: multiclass", "  task: multilabel"), "was trained with task multiclass but params.yaml gives multilabel: retrain"),
    Case("disk full: Parquet", "data.preprocess", disk_full("data/processed/train.parquet"), "no space left on the device while writing data/processed/train.parquet"),
    Case("mixup alpha below 0", "training.train", edit_params("  mixup_alpha: 0 ", "  mixup_alpha: -1 "), "section 'augment': mixup_alpha must be 0 (off) or more"),
    Case("unknown class balance", "training.train", edit_params("  class_balance: none ", "  class_balance: foo "), "class_balance must be one of none, loss, sampler"),
    Case("max_time not DD:HH:MM:SS", "training.train", edit_params("  max_time: ", "  max_time: '10 minutes' "), "max_time '10 minutes' is not DD:HH:MM:SS"),
    Case("max_time unquoted", "training.train", edit_params("  max_time: ", "  max_time: 10:00:00:00 "), 'max_time must be quoted, e.g. "00:12:00:00"'),
    Case("ema decay of 1", "training.train", edit_params("  ema_decay: 0 ", "  ema_decay: 1.0 "), "ema_decay must be in [0, 1)"),
    Case("label smoothing of 1", "training.train", edit_params("  label_smoothing: 0.0 ", "  label_smoothing: 1.0 "), "label_smoothing must be in [0, 1)"),
    Case("accumulation of 0", "training.train", edit_params("  accumulate_grad_batches: 1 ", "  accumulate_grad_batches: 0 "), "accumulate_grad_batches must be at least 1"),
    Case("backbone lr factor without pretrained weights", "training.train", edit_params("  backbone_lr_factor: 1.0 ", "  backbone_lr_factor: 0.1 "), "backbone_lr_factor below 1 needs a pretrained backbone"),
    Case("channels_last not a switch", "training.train", edit_params("  channels_last: auto ", "  channels_last: yes-please "), 'channels_last must be true, false or "auto"'),
    Case("class-balanced sampler on streamed splits", "training.train", sampler_streamed, "training.class_balance: sampler needs the splits in memory, and they are streamed (runtime.streaming: true)"),
    Case("class-balanced sampler for multilabel", "training.train", sampler_multilabel, "training.class_balance: sampler draws each image by its one class, and data.task: multilabel images have several: use training.class_balance: loss"),
    Case("batch larger than data", "training.train", edit_params("  batch_size: 64", "  batch_size: 5000"), "training.batch_size 5000 is larger than the training split"),
    Case("NaN loss", "training.train", edit_params("  lr: 0.003", "  lr: 1.0e+30"), "training loss became nan at epoch 0"),
    Case("lr finder: range upside down", "training.lr_find", no_setup, "--min-lr 1 and --max-lr 0.01: need 0 < --min-lr < --max-lr", ("--min-lr", "1", "--max-lr", "0.01")),
    Case("disk full: metrics", "training.evaluate", disk_full("evaluation_results.json"), "no space left on the device while writing evaluation_results.json"),
    Case("checkpoint from a newer template", "training.evaluate", edit_checkpoint(newer_format), "written by a newer template (checkpoint format 99; this project reads up to 3)"),
    Case("checkpoint of another shape", "training.evaluate", edit_checkpoint(other_shape), "does not fit the mlp network as the code builds it now (size mismatch for body.layers.1.weight"),
    Case("release: bad version", "scripts.release", no_setup, "release version 'v 1' is not usable", ("export-onnx", "--version", "v 1")),
    Case("release: not evaluated", "scripts.release", remove("evaluation_results.json"), "evaluation_results.json not found: run `dvc repro`", ("export-onnx",)),
    Case("predict: no released model", "serve.predict", no_setup, "releases/model_info.json not found", ("data/raw/3",)),
    Case("predict: corrupt model_info.json", "serve.predict", write("releases/model_info.json", '{"version": '), "releases/model_info.json is not valid JSON (Expecting value at line 1)", ("data/raw/3",)),
    Case("release: corrupt metrics", "scripts.release", write("evaluation_results.json", "{"), "evaluation_results.json is not valid JSON", ("export-onnx",)),
    Case("serve: no model there", "serve", no_setup, "no model at nowhere: pass --model a folder holding model.onnx", ("--model", "nowhere")),
    Case("serve requirements: corrupt lock", "scripts.serve_requirements", write("poetry.lock", "x = ["), "poetry.lock is not valid TOML (Invalid value", ("--check",)),
    Case("export: metrics missing", "release.export", remove("evaluation_results.json"), "evaluation_results.json not found: run `dvc repro`"),
    Case("sample data: raw not empty", "data.sample_data", no_setup, "data/raw is not empty: pass --force"),
    Case("distributed: Batch variables partly set", "scripts.distributed", no_setup, "AWS_BATCH_JOB_NUM_NODES", env=(("AWS_BATCH_JOB_NODE_INDEX", "0"),)),
    Case("register model: bad tag", "scripts.register_model", no_setup, "--tag 'a b' cannot be part of a git tag", ("--tag", "a b")),
    Case("benchmark: bad batch size", "scripts.export_and_benchmark", no_setup, "batch sizes and --iterations must be at least 1", ("--batch-sizes", "0")),
    Case("dvc remote: not an s3 URI", "scripts.dvc_remote", no_setup, "DVC_S3_URI='my-bucket/data' is not s3://bucket[/prefix]", env=(("DVC_S3_URI", "my-bucket/data"),)),
    Case("batch: no image", "scripts.batch", no_setup, "no image URI: pass --image or set BATCH_IMAGE_URI", ("register",), env=(("BATCH_IMAGE_URI", ""),)),
    Case("sweep: more experiments than allowed", "scripts.sweep", no_setup, "1000 experiments is more than --max-experiments 32", ("submit", "-S", "training.lr=range(0,1,0.001)")),
    Case("checkpoint sync: not an s3 URI", "scripts.checkpoint_sync", no_setup, "CHECKPOINT_S3_URI='https://bucket/x' is not s3://bucket[/prefix]", ("pull",), env=(("CHECKPOINT_S3_URI", "https://bucket/x"),)),
]  # fmt: skip


@pytest.mark.e2e
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_with_one_line_and_loses_nothing(project_copy, case):
    case.setup(project_copy)
    before = snapshot(project_copy)
    if case.stage == "bootstrap":
        command = ["python3", ".ml-aws-template/bootstrap.py", *case.args]
    else:
        command = [sys.executable, "-m", f"{MODULE}.{case.stage}", *case.args]
    # PYTHONPATH: the copy's own code, whatever other sessions install meanwhile.
    result = run(
        *command,
        cwd=project_copy,
        check=False,
        PYTHONPATH=str(project_copy / "src"),
        **dict(case.env),
    )
    one_error_line(result, case.message, among_output=True)  # progress bars may come first
    assert snapshot(project_copy) == before


def test_the_suite_covers_every_command():
    """Every `python -m` entry point of the package (a module that runs main()), and bootstrap;
    cli.py's docstring lists the same commands."""
    package = REPO / "src_templates" / "mlt_project"
    commands = {  # serve/__main__.py runs as `python -m <module>.serve`
        ".".join(path.relative_to(package).with_suffix("").parts).removesuffix(".__main__")
        for path in package.rglob("*.py")
        if 'if __name__ == "__main__":' in path.read_text()
    }
    assert len(commands) >= 13, commands
    listed = (package / "base" / "cli.py").read_text().split('"""')[1].split("\n\n")[2]
    assert set(listed.split()) == commands
    assert {case.stage for case in CASES} == commands | {"bootstrap"}


MODES = {
    # mode -> a pixel value of that mode that is "white" (or nearly) in 8-bit grayscale
    "RGBA": (250, 250, 250, 255),
    "LA": (250, 255),
    "L": 250,
    "P": 1,  # palette index 1, set to white below
    "I;16": 64250,  # 16-bit: must be scaled to 8 bits (250), not clipped at 255
    "1": 1,
}
SIZES = [(8, 8), (5, 13), (40, 30)]


def write_mixed(raw: Path) -> None:
    """Two classes, each with every mode and size: black images and white images."""
    for label, bright in (("dark", False), ("light", True)):
        (raw / label).mkdir(parents=True)
        for i, (mode, white) in enumerate(MODES.items()):
            for j, size in enumerate(SIZES):
                image = Image.new(mode, size, white if bright else 0)
                if mode == "P":
                    image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
                suffix = "tif" if mode == "I;16" and j == 2 else "png"
                image.save(raw / label / f"{i}-{j}.{suffix}")


@pytest.mark.parametrize("channels", [1, 3])
def test_images_of_any_mode_and_size_are_converted(tmp_path, channels):
    """RGBA, grayscale (+alpha), palette, 16-bit and 1-bit images of any size, converted per params."""
    base = load_config(REPO / "template_configs" / "project" / "params.yaml")
    cfg = replace(
        base,
        paths=replace(
            base.paths,
            raw=str(tmp_path / "raw"),
            processed=str(tmp_path / "out"),
            data_report=str(tmp_path / "data.json"),
        ),
        data=replace(base.data, channels=channels, num_classes=2),
        runtime=replace(base.runtime, preprocess_workers=1),
    )
    write_mixed(tmp_path / "raw")
    counts = preprocess(cfg)
    assert sum(counts.values()) == 2 * len(MODES) * len(SIZES)
    for split in counts:
        images, labels, class_names = read_split(split_path(cfg.paths.processed, split))
        assert class_names == ["dark", "light"]
        assert images.shape[1:] == (channels, 8, 8)
        # Dark images stay black and light ones come out white, in every mode (16-bit too).
        means = images.reshape(len(images), -1).mean(axis=1)
        assert np.all(means[labels == 0] < 5), means
        assert np.all(means[labels == 1] > 240), means


def test_corrupt_images_are_skipped_and_counted_when_asked(tmp_path, caplog):
    base = load_config(REPO / "template_configs" / "project" / "params.yaml")
    cfg = replace(
        base,
        paths=replace(
            base.paths,
            raw=str(tmp_path / "raw"),
            processed=str(tmp_path / "out"),
            data_report=str(tmp_path / "data.json"),
        ),
        data=replace(base.data, num_classes=2, skip_corrupt=True),
        runtime=replace(base.runtime, preprocess_workers=1),
    )
    write_mixed(tmp_path / "raw")
    broken = tmp_path / "raw" / "light" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with caplog.at_level("WARNING"):
        counts = preprocess(cfg)
    assert sum(counts.values()) == 2 * len(MODES) * len(SIZES)  # every image but the broken one
    assert f"skipped 1 unreadable image(s) (data.skip_corrupt: true): {broken}" in caplog.text
