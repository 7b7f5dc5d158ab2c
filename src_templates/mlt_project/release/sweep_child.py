"""One child of a sweep, as the array job runs it (`python -m mlt_project.scripts.sweep child`):
the experiment of its array index, from a clone of the baseline bundle, resumed from its own
checkpoint, stored where `collect` finds it (release/sweep.py, deploy/sweep.py).

The image holds no .git and the job gets no git credentials: the child clones the bundle `submit`
uploaded, runs `dvc exp run -n NAME -S ... --pull --allow-missing` there with the baseline's own
code (PYTHONPATH=<clone>/src, not the image's copy), pushes the outputs to the DVC remote and
uploads its experiment's ref (refs/exps/...) as a bundle. A SIGTERM (a Spot reclaim) goes on to
`dvc exp run` and training, which save a checkpoint; the child uploads it and exits 75, which the
job definition retries.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from ..base.config import RESUME_FILE
from ..base.errors import RETRY_EXIT_CODE, Interrupted, PipelineError
from ..base.fileio import sha256_file
from ..deploy import JobRunner, ObjectStore
from ..deploy.sweep import (
    BASELINE_BUNDLE,
    CheckpointSync,
    Experiment,
    Sweep,
    checkpoint_key,
    child_position,
    read_result,
    read_sweep,
    result_key,
    write_result,
)
from .dvcrepo import dvc
from .gitrepo import git
from .sweep import experiment_ref, inside, keep_gitlinks

PACKAGE = Path(__file__).resolve().parent.parent

log = logging.getLogger(__name__)


class ExperimentRun:
    """`dvc exp run` in a process group of its own, its output passed through and its last lines
    kept; `stop()` sends SIGTERM to the whole group, so that training saves its checkpoint."""

    def __init__(self, command: list[str], env: Mapping[str, str]) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.process = subprocess.Popen(
            command,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            text = line.decode(errors="replace").rsplit("\r", 1)[-1].strip()
            if text:
                self.tail.append(text)

    def stop(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)

    def wait(self) -> int:
        code = self.process.wait()
        self._reader.join()
        return code


def reason(lines: list[str]) -> str:
    """The line that says why a run failed: the stage's own `error: ` line, else DVC's."""
    for prefix in ("error: ", "ERROR: "):
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return found[-1]
    return lines[-1] if lines else "no output"


def code_differs(clone: Path) -> bool:
    """Whether the image's package differs from the baseline's (the clone's src/)."""

    def digest(root: Path) -> str:
        files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
        h = hashlib.sha256()
        for path in files:
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
        return h.hexdigest()

    theirs = clone / "src" / PACKAGE.name
    return theirs.is_dir() and digest(theirs) != digest(PACKAGE)


def clone_baseline(store: ObjectStore, sweep: Sweep, workdir: Path) -> None:
    """A fresh clone of the baseline bundle in `workdir`, as in a new container."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / BASELINE_BUNDLE
        store.get(BASELINE_BUNDLE, bundle)
        git("-c", "advice.detachedHead=false", "clone", "--quiet", str(bundle), str(workdir))
    with inside(workdir):
        if git("rev-parse", "HEAD") != sweep.baseline:
            raise PipelineError(f"{store.uri(BASELINE_BUNDLE)} is not baseline {sweep.baseline}")
        for key, value in {
            "name": "sweep child",
            "email": "sweep@localhost",
            **sweep.author,
        }.items():
            git("config", f"user.{key}", value)


def metrics_of(workdir: Path) -> dict[str, Any]:
    """The experiment's metrics file (paths.metrics), for `status` and `collect` to show."""
    params = yaml.safe_load((workdir / "params.yaml").read_text(encoding="utf-8")) or {}
    path = workdir / (params.get("paths") or {}).get("metrics", "evaluation_results.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def run_child(
    runner: JobRunner,
    store: ObjectStore,
    workdir: Path | None,
    sync_every_s: float,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """One child: the experiment of its array index, run from the baseline bundle, resumed from
    its own checkpoint, stored where `collect` finds it. Raises Interrupted (exit 75) after a
    SIGTERM, PipelineError (exit 1) when the experiment fails."""
    sweep = read_sweep(store)
    index, attempt = child_position(runner, sweep, environ)
    experiment = sweep.experiments[index]
    name = experiment.name
    done = read_result(store, name)
    if done and done.get("state") == "succeeded":
        print(f"{name} succeeded already (attempt {done.get('attempt')}): nothing to do")
        return
    workdir = workdir or Path(tempfile.gettempdir()) / f"sweep-{name}"
    log.info("%s (attempt %d): %s, in %s", name, attempt, experiment.describe(), workdir)
    write_result(store, name, state="running", attempt=attempt)
    try:
        result = run_in_clone(store, sweep, experiment, workdir, sync_every_s, environ)
    except PipelineError as error:
        write_result(store, name, state="failed", attempt=attempt, reason=f"error: {error}")
        raise
    if result is None:
        write_result(store, name, state="interrupted", attempt=attempt, reason="SIGTERM")
        raise Interrupted()
    code, lines = result
    if code != 0:
        why = reason(lines)
        write_result(store, name, state="failed", attempt=attempt, reason=why)
        raise PipelineError(f"experiment {name} failed (dvc exp run exited {code}): {why}")
    with inside(workdir):
        ref = experiment_ref(sweep.baseline, name)
        commit = keep_gitlinks(ref, sweep.baseline)
        dvc("push", "--quiet")  # the experiment's outputs (model, data) to the DVC remote
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / "exp.bundle"
            git("bundle", "create", "--quiet", str(bundle), ref, f"^{sweep.baseline}")
            store.put(result_key(name, "exp.bundle"), bundle, sha256_file(bundle))
    write_result(
        store,
        name,
        state="succeeded",
        attempt=attempt,
        commit=commit,
        ref=ref,
        metrics=metrics_of(workdir),
    )
    store.delete(checkpoint_key(name))  # done: nothing to resume
    print(f"{name} succeeded: {ref} ({commit[:7]}), its outputs pushed to the DVC remote")


def run_in_clone(
    store: ObjectStore,
    sweep: Sweep,
    experiment: Experiment,
    workdir: Path,
    sync_every_s: float,
    environ: Mapping[str, str],
) -> tuple[int, list[str]] | None:
    """Clone, pull the checkpoint, `dvc exp run`; (exit code, last lines), or None after a SIGTERM
    (the checkpoint pushed)."""
    stopping = threading.Event()
    run: ExperimentRun | None = None

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        if run is not None:
            run.stop()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        clone_baseline(store, sweep, workdir)
        if code_differs(workdir):
            log.warning(
                "the image's %s differs from the baseline's: the baseline's code runs "
                "(PYTHONPATH=%s), on the image's dependencies",
                PACKAGE.name,
                workdir / "src",
            )
        # The DVC remote from DVC_S3_URI, as the entrypoint writes it for the pipeline.
        remote = subprocess.run(
            [sys.executable, "-m", "mlt_project.scripts.dvc_remote"],
            cwd=workdir,
            capture_output=True,
            text=True,
        )
        if remote.returncode != 0:
            why = reason(remote.stderr.splitlines()).removeprefix("error: ")
            raise PipelineError(f"writing the DVC remote failed: {why}")
        checkpoints = read_checkpoints_path(workdir)
        sync = CheckpointSync(store, experiment.name, checkpoints, sync_every_s)
        sync.pull()
        if stopping.is_set():
            return None
        python_path = os.pathsep.join(
            filter(None, [str(workdir / "src"), environ.get("PYTHONPATH")])
        )
        command = [sys.executable, "-m", "dvc", "exp", "run", "-n", experiment.name]
        command += ["--pull", "--allow-missing"]
        command += [arg for value in experiment.set_params() for arg in ("-S", value)]
        with inside(workdir):
            sync.start()
            try:
                run = ExperimentRun(command, {**environ, "PYTHONPATH": python_path})
                if stopping.is_set():
                    run.stop()
                code = run.wait()
            finally:
                sync.stop()
        if stopping.is_set():
            sync.push()  # the checkpoint training saved on SIGTERM
            log.warning(
                "SIGTERM: %s stopped, resume checkpoint in %s; exiting %d so the job is retried",
                experiment.name,
                store.uri(checkpoint_key(experiment.name)),
                RETRY_EXIT_CODE,
            )
            return None
        return code, list(run.tail)
    finally:
        signal.signal(signal.SIGTERM, previous)


def read_checkpoints_path(workdir: Path) -> Path:
    params = yaml.safe_load((workdir / "params.yaml").read_text(encoding="utf-8")) or {}
    folder = (params.get("paths") or {}).get("checkpoints", "checkpoints")
    return workdir / folder / RESUME_FILE
