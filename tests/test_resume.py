"""Faults, with real signals sent to real processes: SIGTERM and SIGKILL during training, a kill
at a random point of each stage and of bootstrap. Nothing may be lost: training resumes to the
exact result of an uninterrupted run (deterministic on the CPU), and every output is either
absent or whole."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from helpers import FAKE_AWS, MODULE, env, make_host, project_env, run, set_params

pytestmark = pytest.mark.e2e

RETRY_EXIT_CODE = 75
# Imported at start-up from PYTHONPATH: SIGKILLs the process at its KILL_AT_REPLACE-th os.replace,
# the moment an output is written in full under its temporary name but not yet renamed.
KILL_HOOK = """\
import os, signal
_replace, _calls, _at = os.replace, [0], int(os.environ["KILL_AT_REPLACE"])
def _replace_or_die(*args, **kwargs):
    _calls[0] += 1
    if _calls[0] == _at:
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(*args, **kwargs)
os.replace = _replace_or_die
"""


@pytest.fixture
def rng(request) -> random.Random:
    """The kill points' randomness, seeded and printed: FAULT_SEED=<seed> replays a failure."""
    seed = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(2**32))
    print(f"{request.node.name}: FAULT_SEED={seed}")  # shown with a failure's captured output
    return random.Random(seed)


def start(cmd: list[str], project: Path, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd,
        cwd=project,
        env=project_env(project, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"exited {process.returncode} before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def assert_same_weights(path: Path, expected: dict[str, torch.Tensor]) -> None:
    actual = weights(path)
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), f"{name} differs from the uninterrupted run"


def test_sigterm_through_the_entrypoint_saves_exits_75_and_resumes_exactly(project_copy):
    """A Spot reclaim: SIGTERM to docker/entrypoint.sh while `dvc repro` trains."""
    model = project_copy / "models" / "model.ckpt"
    expected = weights(model)  # the fixture's uninterrupted run, same params and code
    expected_metrics = (project_copy / "evaluation_results.json").read_text()
    expected_curves = (project_copy / "plots" / "curves.csv").read_text()
    resume = project_copy / "checkpoints" / "last.ckpt"
    model.unlink()  # so that dvc repro trains again (and then evaluates)
    shutil.rmtree(project_copy / ".dvc" / "cache")  # nor restores it from its cache

    entrypoint = start(["bash", "docker/entrypoint.sh"], project_copy)
    wait_for(resume, entrypoint)  # the first periodic checkpoint: training is under way
    entrypoint.send_signal(signal.SIGTERM)
    _, stderr = entrypoint.communicate(timeout=120)
    assert entrypoint.returncode == RETRY_EXIT_CODE, stderr[-3000:]
    assert "SIGTERM: saved checkpoints/last.ckpt" in stderr
    assert not model.exists()
    torch.load(resume, map_location="cpu", weights_only=False)  # whole

    again = run(
        "bash", "docker/entrypoint.sh", cwd=project_copy, PYTHONPATH=str(project_copy / "src")
    )
    assert "resuming from checkpoints/last.ckpt" in again.stderr
    assert_same_weights(model, expected)
    assert (project_copy / "evaluation_results.json").read_text() == expected_metrics
    # The epochs before the SIGTERM come from the resume checkpoint: dvc repro removed the file.
    curves = (project_copy / "plots" / "curves.csv").read_text().splitlines()
    expected = expected_curves.splitlines()
    assert len(curves) == len(expected)
    differ = [(got, want) for got, want in zip(curves, expected, strict=True) if got != want]
    # Unless the SIGTERM came at an epoch's last batch: resumed there, Lightning goes on with the
    # next epoch without validating that one, whose row keeps its training loss only.
    assert len(differ) <= 1, differ
    assert all(got == ",".join(want.split(",")[:2]) + ",," for got, want in differ), differ
    assert not resume.exists()  # a completed run leaves nothing to resume


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_plain_dvc_repro_needs_its_process_group(project_copy):
    """PROJECT.md (Interruptions and resume): SIGTERM to `dvc repro` alone ends DVC and leaves
    training running on its own; sent to the process group (`kill -TERM -- -PGID`), training
    saves its resume checkpoint and the whole group ends."""
    model = project_copy / "models" / "model.ckpt"
    resume = project_copy / "checkpoints" / "last.ckpt"
    model.unlink()
    shutil.rmtree(project_copy / ".dvc" / "cache")

    def repro(stderr: int) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            ["dvc", "repro"],
            cwd=project_copy,
            env=project_env(project_copy),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            start_new_session=True,  # `setsid dvc repro`: its process group id is its pid
        )
        wait_for(resume, process)  # training is under way
        return process

    dvc = repro(subprocess.DEVNULL)  # not a pipe: the training left behind would hold it open
    try:
        dvc.send_signal(signal.SIGTERM)  # to DVC only
        dvc.wait(timeout=60)
        time.sleep(1)
        assert group_alive(dvc.pid), "DVC now stops its stage on SIGTERM: update PROJECT.md"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dvc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while group_alive(dvc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    resume.unlink(missing_ok=True)

    dvc = repro(subprocess.PIPE)
    os.killpg(dvc.pid, signal.SIGTERM)  # kill -TERM -- -PGID
    _, stderr = dvc.communicate(timeout=120)
    deadline = time.monotonic() + 30
    while group_alive(dvc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(dvc.pid), "training outlived the group's SIGTERM"
    assert "SIGTERM: saved checkpoints/last.ckpt" in stderr, stderr[-3000:]
    torch.load(resume, map_location="cpu", weights_only=False)  # whole
    assert not model.exists()


def test_a_batch_retry_in_a_fresh_container_resumes_from_the_checkpoint_in_s3(
    project_copy, moto_endpoint
):
    """With CHECKPOINT_S3_URI the entrypoint pushes the checkpoint on SIGTERM and pulls it back."""
    import botocore.session

    aws = {
        **FAKE_AWS,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "CHECKPOINT_S3_URI": "s3://spot-checkpoints/jobs/digits",
    }
    s3 = botocore.session.get_session().create_client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    s3.create_bucket(Bucket="spot-checkpoints")
    model = project_copy / "models" / "model.ckpt"
    expected = weights(model)
    resume = project_copy / "checkpoints" / "last.ckpt"
    model.unlink()
    shutil.rmtree(project_copy / ".dvc" / "cache")

    entrypoint = start(["bash", "docker/entrypoint.sh"], project_copy, **aws)
    wait_for(resume, entrypoint)
    entrypoint.send_signal(signal.SIGTERM)
    _, stderr = entrypoint.communicate(timeout=180)
    assert entrypoint.returncode == RETRY_EXIT_CODE, stderr[-3000:]
    stored = s3.get_object(Bucket="spot-checkpoints", Key="jobs/digits/last.ckpt")["Body"].read()
    assert stored == resume.read_bytes()

    shutil.rmtree(project_copy / "checkpoints")  # the retry's container starts without it
    again = run(
        "bash", "docker/entrypoint.sh", cwd=project_copy, **project_env(project_copy), **aws
    )
    assert "pulled s3://spot-checkpoints/jobs/digits/last.ckpt" in again.stderr
    assert "resuming from checkpoints/last.ckpt" in again.stderr
    assert_same_weights(model, expected)
    listed = s3.list_objects_v2(Bucket="spot-checkpoints").get("Contents", [])
    assert listed == []  # the finished run cleared it


def test_sigkill_mid_epoch_resumes_from_the_periodic_checkpoint(project_copy, rng):
    model = project_copy / "models" / "model.ckpt"
    expected = weights(model)
    # 20 steps per epoch: a checkpoint every 7 steps lands mid-epoch. Not part of the run's
    # identity, so the fixture's run stays the reference.
    set_params(project_copy, runtime__checkpoint_every_n_steps=7)
    resume = project_copy / "checkpoints" / "last.ckpt"
    training = start([sys.executable, "-m", f"{MODULE}.training.train"], project_copy)
    wait_for(resume, training)
    # Soon: on an idle machine the whole run takes a few seconds, and a kill during its shutdown
    # (resume file already removed) would find nothing to resume.
    time.sleep(rng.uniform(0.0, 0.3))
    training.kill()
    training.communicate()
    assert training.returncode == -signal.SIGKILL, "training finished before the kill"
    saved = torch.load(resume, map_location="cpu", weights_only=False)
    assert saved["global_step"] % 7 == 0
    result = run(
        sys.executable,
        "-m",
        f"{MODULE}.training.train",
        cwd=project_copy,
        PYTHONPATH=str(project_copy / "src"),
    )
    assert f"step {saved['global_step']}" in result.stderr
    assert_same_weights(model, expected)


def test_streamed_training_killed_mid_epoch_resumes_exactly(project_copy, rng):
    """The streamed loader (row groups read by 2 persistent workers) resumes as the in-memory one
    does: the same weights as an uninterrupted streamed run, bit for bit."""
    set_params(
        project_copy,
        runtime__streaming=True,
        runtime__loader_workers=2,
        runtime__checkpoint_every_n_steps=7,  # 20 steps per epoch: mid-epoch checkpoints
    )
    model, resume = (
        project_copy / "models" / "model.ckpt",
        project_copy / "checkpoints" / "last.ckpt",
    )
    train = [sys.executable, "-m", f"{MODULE}.training.train"]
    run(*train, cwd=project_copy, PYTHONPATH=str(project_copy / "src"))
    expected = weights(model)  # streaming reads in another order than the fixture's run
    model.unlink()

    training = start(train, project_copy)
    wait_for(resume, training)
    time.sleep(rng.uniform(0.0, 0.5))
    training.kill()  # the DataLoader workers notice their parent is gone and exit
    training.communicate()
    assert training.returncode == -signal.SIGKILL, "training finished before the kill"
    step = torch.load(resume, map_location="cpu", weights_only=False)["global_step"]
    result = run(*train, cwd=project_copy, PYTHONPATH=str(project_copy / "src"))
    assert f"step {step}" in result.stderr
    if step % 20:  # stopped inside an epoch: its batches are read again and skipped
        assert "resuming streamed epoch" in result.stderr
    assert_same_weights(model, expected)


def whole_outputs(project: Path) -> dict[str, str]:
    """Each output of the pipeline: 'absent' or 'whole'; an assertion fails if it is neither."""
    state = {}
    for split in ("train", "val", "test"):
        path = project / "data" / "processed" / f"{split}.parquet"
        if path.exists():
            table = pq.read_table(path)
            assert table.num_rows > 0 and b"class_names" in table.schema.metadata
        state[path.name] = "whole" if path.exists() else "absent"
    for path in (project / "models" / "model.ckpt", project / "checkpoints" / "last.ckpt"):
        if path.exists():
            assert "state_dict" in torch.load(path, map_location="cpu", weights_only=False)
        state[path.name] = "whole" if path.exists() else "absent"
    metrics = project / "evaluation_results.json"
    if metrics.exists():
        assert json.loads(metrics.read_text())["num_samples"] > 0
    state[metrics.name] = "whole" if metrics.exists() else "absent"
    plots = project / "plots" / "confusion.csv"
    if plots.exists():
        rows = plots.read_text().splitlines()
        assert (
            rows[0] == "actual,predicted"
            and len(rows) == 1 + json.loads(metrics.read_text())["num_samples"]
        )
    state[plots.name] = "whole" if plots.exists() else "absent"
    report = project / "reports" / "data.json"
    if report.exists():
        assert sum(json.loads(report.read_text())["images"].values()) == 1797
    state[report.name] = "whole" if report.exists() else "absent"
    mistakes = project / "reports" / "mistakes.csv"
    if mistakes.exists():
        assert mistakes.read_text().splitlines()[0] == "file_name,label,predicted,score"
    state[mistakes.name] = "whole" if mistakes.exists() else "absent"
    # CSVs with a row per epoch (training.max_epochs: 30) and per class (the ten digits).
    for path, header, rows in (
        (project / "plots" / "curves.csv", "epoch,train_loss,val_loss,val_acc", 30),
        (project / "plots" / "per_class.csv", "class,precision,recall,f1,support", 10),
    ):
        if path.exists():
            lines = path.read_text().splitlines()
            assert lines[0] == header and len(lines) == 1 + rows, path
        state[path.name] = "whole" if path.exists() else "absent"
    return state


# stage -> (what DVC deletes before it runs the stage, the outputs in the order they are
# renamed into place). Train renames its resume checkpoint at steps 200, 400 and 600, then the
# curves at the end of fit, then the model.
STAGES = {
    "data.preprocess": (
        ["data/processed", "reports/data.json"],
        ["train.parquet", "val.parquet", "test.parquet", "data.json"],
    ),
    "training.train": (
        ["models/model.ckpt", "plots/curves.csv"],
        ["last.ckpt"] * 3 + ["curves.csv", "model.ckpt"],
    ),
    "training.evaluate": (
        [
            "evaluation_results.json",
            "plots/per_class.csv",
            "plots/confusion.csv",
            "reports/mistakes.csv",
        ],
        ["evaluation_results.json", "per_class.csv", "confusion.csv", "mistakes.csv"],
    ),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_killed_at_a_random_point_leaves_outputs_absent_or_whole(
    project_copy, tmp_path, stage, rng
):
    outs, renames = STAGES[stage]
    for out in outs:  # as DVC does before it runs a stage
        path = project_copy / out
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    at = rng.randint(1, len(renames))
    process = subprocess.Popen(
        [sys.executable, "-m", f"{MODULE}.{stage}"],
        cwd=project_copy,
        env=env(PYTHONPATH=f"{hook}{os.pathsep}{project_copy / 'src'}", KILL_AT_REPLACE=str(at)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    process.wait(timeout=300)
    # preprocess's decoding workers outlive a SIGKILLed parent (and hold its stderr open).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    stderr = process.communicate()[1]
    assert process.returncode == -signal.SIGKILL, (at, stderr[-2000:])
    state = whole_outputs(project_copy)  # fails if any output is there but not whole
    # Killed at the at-th rename: the outputs renamed before it are whole, the others absent.
    renamed = set(renames[: at - 1])
    assert {name: state[name] for name in set(renames)} == {
        name: "whole" if name in renamed else "absent" for name in set(renames)
    }, at
    # The stage then runs to the end (train resumes from its checkpoint, if one was saved).
    run(sys.executable, "-m", f"{MODULE}.{stage}", cwd=project_copy,
        PYTHONPATH=str(project_copy / "src"))  # fmt: skip
    final = whole_outputs(project_copy)
    assert all(final[name] == "whole" for name in set(renames) - {"last.ckpt"})


def rendered_files(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file()
        and not {".git", ".ml-aws-template"} & set(path.relative_to(root).parts)
        and path.name != ".gitmodules"
    }


def test_bootstrap_killed_mid_run_leaves_no_half_file_and_a_rerun_completes(
    tmp_path, template_repo, rng
):
    reference_host = make_host(tmp_path / "reference" / "proj", template_repo)
    run("python3", ".ml-aws-template/bootstrap.py", "--torch", "cpu", cwd=reference_host)
    reference = rendered_files(reference_host)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    for trial, at in enumerate(rng.sample(range(1, len(reference)), 3)):
        host = make_host(tmp_path / f"trial{trial}" / "proj", template_repo)
        killed = subprocess.run(
            ["python3", ".ml-aws-template/bootstrap.py", "--torch", "cpu"],
            cwd=host,
            env=env(PYTHONPATH=str(hook), KILL_AT_REPLACE=str(at)),
            capture_output=True,
            text=True,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        written = rendered_files(host)
        # Every file is absent or whole; the one being renamed is there under its hidden name.
        finished = {name: content for name, content in written.items() if not name.endswith(".tmp")}
        assert len(finished) == at - 1
        assert all(content == reference[name] for name, content in finished.items())
        run("python3", ".ml-aws-template/bootstrap.py", "--torch", "cpu", cwd=host)
        assert rendered_files(host) == reference  # and no temporary file is left
