"""A checkpoint is data: a file that would run code when unpickled is refused wherever the project
reads one, nothing runs, the file is kept, and each kind of unreadable file says what it is."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from helpers import MODULE, REPO, one_error_line, sh
from mlt_project.base.config import load_config
from mlt_project.base.errors import PipelineError
from mlt_project.model.tensor_files import load_tensors
from mlt_project.training.factories import create_model

FIX = "move it away (or delete it) to start training afresh"


class RunsCode:
    """Unpickled, runs `touch marker`: what a planted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path) -> bytes:
    """A Lightning-looking checkpoint at `path` that runs code if loaded as a pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "x": RunsCode(marker)}, path)
    return path.read_bytes()


def test_the_planted_file_runs_code_when_unpickled(tmp_path):
    """The check below is real: the same file, loaded as a pickle, runs the command."""
    marker = tmp_path / "ran"
    plant(tmp_path / "model.ckpt", marker)
    torch.load(tmp_path / "model.ckpt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    ("stage", "where"),
    [("training.evaluate", "models/model.ckpt"), ("training.train", "checkpoints/last.ckpt")],
    ids=["model-at-eval", "resume-at-train"],
)
def test_a_code_running_checkpoint_runs_nothing_and_is_kept(project_copy, tmp_path, stage, where):
    marker = tmp_path / "ran"
    planted = plant(project_copy / where, marker)
    result = sh("python", "-m", f"{MODULE}.{stage}", cwd=project_copy)
    one_error_line(result, where, "holds Python code", "posix.system", among_output=True)
    assert not marker.exists(), "the checkpoint's code ran"
    assert (project_copy / where).read_bytes() == planted


@pytest.mark.parametrize(
    ("contents", "fragments"),
    [
        (b"", ("is not a readable PyTorch file", "truncated or corrupt")),
        (b"weights, but as text\n", ("is not a PyTorch file",)),
        (None, ("cannot read", "Is a directory", "left as it is")),
    ],
    ids=["truncated", "foreign", "io-error"],
)
def test_an_unreadable_resume_checkpoint_stops_training_and_is_kept(
    project_copy, contents, fragments
):
    path = project_copy / "checkpoints" / "last.ckpt"
    path.parent.mkdir(exist_ok=True)
    if contents is None:
        path.mkdir()  # reading it fails with an I/O error, as a failing disk would
    else:
        path.write_bytes(contents)
    result = sh("python", "-m", f"{MODULE}.training.train", cwd=project_copy)
    line = one_error_line(result, "checkpoints/last.ckpt", *fragments, among_output=True)
    if contents is None:
        assert "delete" not in line, "an I/O error says nothing about the file's contents"
        assert path.is_dir()
    else:
        assert "move it away (or delete it) to start training afresh" in line
        assert path.read_bytes() == contents


def resnet18_config(tmp_path: Path, **model: object):
    cfg = load_config(REPO / "template_configs" / "project" / "params.yaml")
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, name="resnet18", **model),
        data=dataclasses.replace(cfg.data, image_size=(32, 32), channels=3),
    )


def test_a_code_running_weights_file_or_cached_download_runs_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    weights = tmp_path / "weights.pt"
    plant(weights, marker)
    with pytest.raises(PipelineError, match=f"model.weights_file {weights} holds Python code"):
        create_model(resnet18_config(tmp_path, weights_file=str(weights)))
    # The file torchvision's download would have left in torch's cache (PROJECT.md: place it there
    # on a machine without internet).
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = plant(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth", marker)
    with pytest.raises(PipelineError, match=r"IMAGENET1K_V1 weights .* holds Python code"):
        create_model(resnet18_config(tmp_path, pretrained="IMAGENET1K_V1"))
    assert not marker.exists(), "the weights file's code ran"
    assert (
        cached
        == (tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").read_bytes()
    )


# ---------------------------------------------------------------- load_tensors, unit by unit


def test_a_file_of_tensors_loads_on_the_cpu(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.arange(3)}, "epoch": 2}, path)
    loaded = load_tensors(path, f"checkpoint {path}", FIX)
    assert loaded["epoch"] == 2
    assert loaded["state_dict"]["w"].tolist() == [0, 1, 2]
    assert loaded["state_dict"]["w"].device == torch.device("cpu")


def saved_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.arange(64)}}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        (b"weights, but as text\n", "is not a PyTorch file: "),
        (pickle.dumps({"w": [0, 1, 2]}), "is not a PyTorch file: "),
        (
            saved_bytes()[:200],
            "is not a readable PyTorch file (truncated or corrupt: PytorchStreamReader failed "
            "reading zip archive: failed finding central directory): ",
        ),
    ],
    ids=["text", "plain-pickle", "truncated-zip"],
)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")  # the plain pickle
def test_a_file_that_is_not_torch_save_s_is_one_line_naming_it(tmp_path, contents, message):
    path = tmp_path / "last.ckpt"
    path.write_bytes(contents)
    with pytest.raises(PipelineError) as error:
        load_tensors(path, f"checkpoint {path}", FIX)
    assert str(error.value) == f"checkpoint {path} {message}{FIX}"
    assert path.read_bytes() == contents


def test_a_pickled_object_is_refused_by_name_and_a_folder_is_an_io_error(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2), "where": Path("data")}, path)  # a global: pathlib's class
    with pytest.raises(PipelineError) as error:
        load_tensors(path, f"model.weights_file {path}", "use a state_dict of tensors")
    assert str(error.value) == (
        f"model.weights_file {path} holds Python code, not only tensors (pathlib.PosixPath), "
        "which could run commands when loaded: it was not loaded; use a state_dict of tensors"
    )
    with pytest.raises(PipelineError) as error:
        load_tensors(tmp_path, f"checkpoint {tmp_path}", FIX)
    assert str(error.value) == (
        f"cannot read checkpoint {tmp_path} (Is a directory): check the disk and its permissions "
        "and run again; the file was left as it is"
    )
