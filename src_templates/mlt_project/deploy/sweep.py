"""A sweep in the cloud: N experiments as one array job of the job runner, recorded in the object
store beside the DVC remote, so that nothing else must be shared. Only the two seams are used.

    <DVC_S3_URI>/sweeps/<name>/
        sweep.json                  the record: baseline commit, each experiment's name and params,
                                    image and digest, job definition, queue, job id
        baseline.bundle             `git bundle` of the baseline commit (the image holds no .git)
        children/<exp>/last.ckpt    that child's resume checkpoint, across retries
        results/<exp>/status.json   state, attempt, last error line; commit, ref, metrics once done
        results/<exp>/exp.bundle    the experiment's git ref, bundled against the baseline

The git and DVC side is release/: the checks, the bundles and collecting in sweep.py, what each
child runs in sweep_child.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base.config import RESUME_FILE
from ..base.errors import PipelineError
from ..base.fileio import sha256_file
from . import JobRunner, ObjectStore, object_store

SWEEPS = "sweeps"
SWEEP_FILE = "sweep.json"
BASELINE_BUNDLE = "baseline.bundle"
# What each child runs: the image's entrypoint execs it (docker/entrypoint.sh, step 3).
CHILD_COMMAND = ["python", "-m", "mlt_project.scripts.sweep", "child"]
# Where the child finds its sweep (set at submit); the DVC remote comes as DVC_S3_URI.
SWEEP_URI = "SWEEP_URI"
# A name is part of a job name, of git refs and of S3 keys: keep it to what all three accept.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
DEFAULT_MAX_EXPERIMENTS = 32

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Experiment:
    name: str
    params: dict[str, list[str]]  # params file -> its overrides, as `dvc exp run -S` takes them

    def set_params(self) -> list[str]:
        """The `-S` values: `key=value`, or `file:key=value` for a file other than params.yaml."""
        return [
            override if path == "params.yaml" else f"{path}:{override}"
            for path, overrides in self.params.items()
            for override in overrides
        ]

    def describe(self) -> str:
        return " ".join(self.set_params())


def expand(name: str, overrides: list[str]) -> list[Experiment]:
    """Each combination of the `-S` overrides, named <name>-1, <name>-2, ... in the order and with
    the grammar of `dvc exp run --queue -S` (Hydra's: `a,b,c`, `range(start,stop[,step])`)."""
    from dvc.exceptions import DvcException
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps
    from hydra.errors import HydraException

    if not NAME.fullmatch(name):
        raise PipelineError(
            f"sweep name {name!r}: use 1-64 letters, digits, '-' and '_', starting with a letter "
            "or digit (it names the jobs, the experiments and an S3 folder)"
        )
    if not overrides:
        raise PipelineError("no -S given: e.g. -S 'training.lr=0.01,0.001' -S 'model.name=mlp,cnn'")
    try:
        sweeps = get_hydra_sweeps(to_path_overrides(overrides))
    except (DvcException, HydraException, ValueError) as error:
        message = " ".join(str(error).split())
        raise PipelineError(f"-S {' -S '.join(overrides)}: {message}") from None
    # DVC names its own sweeps <name>-1, <name>-2, ...: `--local` and the cloud agree.
    return [Experiment(f"{name}-{i}", params) for i, params in enumerate(sweeps, 1)]


def require_size(experiments: list[Experiment], limit: int) -> None:
    if len(experiments) > limit:
        raise PipelineError(
            f"{len(experiments)} experiments is more than --max-experiments {limit}: each one "
            "is a job of its own (a typo in a range() would start hundreds); narrow the -S "
            f"values, or pass --max-experiments {len(experiments)}"
        )


@dataclass
class Sweep:
    """The record, sweep.json."""

    name: str
    baseline: str
    experiments: list[Experiment]
    overrides: list[str]
    image: str
    image_digest: str | None
    definition: str
    queue: str
    dvc_remote: str
    author: dict[str, str] = field(default_factory=dict)
    created: str = ""
    job_id: str | None = None

    def to_json(self) -> bytes:
        record = dataclasses.asdict(self)
        record["experiments"] = [dataclasses.asdict(e) for e in self.experiments]
        return (json.dumps(record, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Sweep:
        record = json.loads(data)
        record["experiments"] = [Experiment(**e) for e in record["experiments"]]
        return cls(**record)


def sweep_store(root: ObjectStore, name: str) -> ObjectStore:
    """The sweep's folder, under the DVC remote's location `root`."""
    return object_store(root.uri(f"{SWEEPS}/{name}"), "DVC_S3_URI")


def list_sweeps(root: ObjectStore) -> list[str]:
    return [
        key.removeprefix(f"{SWEEPS}/").removesuffix(f"/{SWEEP_FILE}")
        for key in root.keys(f"{SWEEPS}/")
        if key.endswith(f"/{SWEEP_FILE}") and key.count("/") == 2
    ]


def require_new(store: ObjectStore, name: str) -> None:
    if store.exists(SWEEP_FILE):
        raise PipelineError(
            f"sweep {name!r} exists already ({store.uri(SWEEP_FILE)}): choose another --name"
        )


def read_sweep(store: ObjectStore) -> Sweep:
    if not store.exists(SWEEP_FILE):
        raise PipelineError(
            f"no sweep at {store.uri()}: check the name (`python -m mlt_project.scripts.sweep "
            "list`) and DVC_S3_URI"
        )
    return Sweep.from_json(store.get_bytes(SWEEP_FILE))


def submit(
    runner: JobRunner, store: ObjectStore, sweep: Sweep, bundle: Path, environment: dict[str, str]
) -> str:
    """Upload the bundle and the record, then submit one array job of N children; return its id.
    A refused submission takes the record back, so that the name can be used again."""
    require_new(store, sweep.name)
    sweep.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    store.put(BASELINE_BUNDLE, bundle, sha256_file(bundle))
    store.put_bytes(SWEEP_FILE, sweep.to_json())
    size = len(sweep.experiments)
    try:
        job_id = runner.submit(
            sweep.name,
            sweep.queue,
            sweep.definition,
            # An array has 2 children or more; a single experiment is a plain job.
            array_size=size if size > 1 else None,
            environment={**environment, SWEEP_URI: store.uri()},
            command=CHILD_COMMAND,
        )
    except PipelineError:
        store.delete(SWEEP_FILE)
        store.delete(BASELINE_BUNDLE)
        raise
    sweep.job_id = job_id
    store.put_bytes(SWEEP_FILE, sweep.to_json())
    return job_id


# --- each child's state -------------------------------------------------------------------------


def result_key(experiment: str, name: str) -> str:
    return f"results/{experiment}/{name}"


def checkpoint_key(experiment: str) -> str:
    return f"children/{experiment}/{RESUME_FILE}"


def read_result(store: ObjectStore, experiment: str) -> dict[str, Any] | None:
    key = result_key(experiment, "status.json")
    return json.loads(store.get_bytes(key)) if store.exists(key) else None


def write_result(store: ObjectStore, experiment: str, **record: Any) -> None:
    record["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    store.put_bytes(result_key(experiment, "status.json"), (json.dumps(record) + "\n").encode())


@dataclass(frozen=True)
class ChildState:
    experiment: Experiment
    state: str  # pending | running | succeeded | failed
    attempts: int
    reason: str
    record: dict[str, Any] | None


def merge(job: dict[str, Any] | None, record: dict[str, Any] | None) -> tuple[str, int, str]:
    """(state, attempts, reason) of a child from the runner's view of its job and the child's own
    status.json; either may be missing (not started, or a runner that does not report it)."""
    record = record or {}
    job = job or {}
    attempts = max(record.get("attempt", 0), job.get("attempts", 0))
    said = record.get("state")
    if said in ("succeeded", "failed"):  # the child's last word, written after its results
        return said, attempts, record.get("reason", "")
    runner = job.get("state")
    if runner == "running":
        return "running", max(attempts, job.get("attempts", 0) + 1), ""
    if runner == "failed":
        if said == "interrupted":
            return "failed", attempts, f"interrupted on its last attempt ({record.get('reason')})"
        return "failed", attempts, job.get("reason") or "stopped without a word (no status.json)"
    if runner == "succeeded":
        return "failed", attempts, "the job ended without uploading its results"
    if runner == "pending" or said is None:
        retry = record.get("reason") or job.get("reason")
        return "pending", attempts, f"retrying after: {retry}" if attempts and retry else ""
    # The runner does not know the job (or was not asked): the child's word alone.
    return ("running" if said == "running" else "pending"), attempts, record.get("reason", "")


def child_states(runner: JobRunner | None, store: ObjectStore, sweep: Sweep) -> list[ChildState]:
    """Each child's state; `runner` None: from the status.json files alone."""
    keys = set(store.keys("results/"))
    jobs: list[dict[str, Any] | None] = [None] * len(sweep.experiments)
    if runner is not None and sweep.job_id:
        try:
            jobs = runner.children(sweep.job_id, len(sweep.experiments))
        except PipelineError as error:  # e.g. no permission to describe jobs
            log.warning("%s: the children's own records only", error)
    states = []
    for experiment, job in zip(sweep.experiments, jobs, strict=True):
        has_record = result_key(experiment.name, "status.json") in keys
        record = read_result(store, experiment.name) if has_record else None
        states.append(ChildState(experiment, *merge(job, record), record))
    return states


def child_position(runner: JobRunner, sweep: Sweep, environ: Mapping[str, str]) -> tuple[int, int]:
    """(index, attempt) of this child; a one-experiment sweep is a plain job with no index."""
    index, attempt = runner.child_position(environ)
    if index is None and len(sweep.experiments) == 1:
        index = 0
    if index is None or not 0 <= index < len(sweep.experiments):
        raise PipelineError(
            f"this is not a child of sweep {sweep.name!r} ({len(sweep.experiments)} experiments): "
            f"its array index is {index}; run it as the sweep's array job"
        )
    return index, attempt


# --- the child's resume checkpoint -----------------------------------------------------------------


class CheckpointSync:
    """The child's resume checkpoint in the store: pulled before training, pushed whenever training
    rewrites it (a child killed without warning loses at most that interval) and once more after
    a SIGTERM, deleted once the experiment is done."""

    def __init__(self, store: ObjectStore, experiment: str, path: Path, every_s: float) -> None:
        self.store, self.key, self.path, self.every_s = (
            store,
            checkpoint_key(experiment),
            path,
            every_s,
        )
        self._pushed: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def pull(self) -> bool:
        if not self.store.exists(self.key):
            return False
        self.store.get(self.key, self.path)
        self._pushed = self._identity()
        log.info("pulled %s to %s", self.store.uri(self.key), self.path)
        return True

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def push(self) -> bool:
        """Upload the checkpoint if training wrote a new one since the last upload."""
        with self._lock:
            identity = self._identity()
            if identity is None or identity == self._pushed:
                return False
            # Training replaces the file by renaming; a hard link holds this version still while
            # it is hashed and uploaded.
            held = self.path.with_name(f".{self.path.name}.upload")
            held.unlink(missing_ok=True)
            try:
                os.link(self.path, held)
            except FileNotFoundError:
                return False
            try:
                self.store.put(self.key, held, sha256_file(held))
            finally:
                held.unlink(missing_ok=True)
            self._pushed = identity
            log.info("pushed %s to %s", self.path, self.store.uri(self.key))
            return True

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.push()
            except PipelineError as error:  # the next interval tries again
                log.warning("could not push the resume checkpoint: %s", error)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="checkpoint-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
