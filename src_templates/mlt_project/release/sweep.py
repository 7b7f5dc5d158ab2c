"""A sweep of DVC experiments, from the repository's side: what `submit` checks and bundles,
experiments in git, `collect` bringing them back, and `--local` through DVC's own queue. The record
and the array job are deploy/sweep.py's; what each child runs is sweep_child.py.

DVC runs no experiment on another machine itself (`dvc machine` went in 3.15), and the image holds
no .git while the job gets no git credentials. So the baseline commit goes up as a git bundle, and
each experiment comes back as a bundle of its ref (refs/exps/...), which `collect` fetches: `dvc
exp show`, `dvc exp diff` and `dvc exp apply` then treat it as a local experiment.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ..base.errors import PipelineError
from ..deploy import JobRunner, ObjectStore
from ..deploy.sweep import (
    BASELINE_BUNDLE,
    Experiment,
    Sweep,
    read_result,
    read_sweep,
    require_new,
    result_key,
    submit,
    sweep_store,
)
from .dvcrepo import dvc
from .gitrepo import git, head_commit, uncommitted

# The tags docker/build_and_push.sh gives images: the commit, "-dirty" when built uncommitted.
COMMIT_TAG = re.compile(r":([0-9a-f]{40})(-dirty)?$")
DEPENDENCY_FILES = ("pyproject.toml", "poetry.lock")
EXP_REFS = "refs/exps"

log = logging.getLogger(__name__)


# --- submit -------------------------------------------------------------------------------------


def require_committed() -> str:
    """The baseline commit; refused while the tree has uncommitted changes, which no child sees."""
    changed = uncommitted()
    if changed:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        raise PipelineError(
            f"the working tree has uncommitted changes ({changed[0]}{more}): the experiments run "
            "the baseline commit only; commit or stash them"
        )
    return head_commit()


def remote_named(remote_uri: str) -> str:
    """The name of this repository's DVC remote at `remote_uri` (DVC_S3_URI)."""
    # `dvc remote list`: "<name> <url>", then "(default)" on the default one.
    remotes = [line.split() for line in dvc("remote", "list").splitlines() if line.strip()]
    names = [fields[0] for fields in remotes if fields[1].rstrip("/") == remote_uri.rstrip("/")]
    if not names:
        raise PipelineError(
            f"no DVC remote points at DVC_S3_URI ({remote_uri}): run `python -m "
            "mlt_project.scripts.dvc_remote` (then `dvc push` before a sweep)"
        )
    return names[0]


def require_pushed(remote_uri: str) -> None:
    """Refuse a baseline whose DVC-tracked data and outputs are not all in the DVC remote at
    `remote_uri`: the children pull what their stages need from there."""
    remote = remote_named(remote_uri)
    missing = json.loads(dvc("status", "--cloud", "--json", "--remote", remote) or "{}")
    if missing:
        first = sorted(missing)[0]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise PipelineError(
            f"the baseline's DVC data is not all in the remote {remote!r} ({first}: "
            f"{missing[first]}{more}), and the experiments pull it from there: run `dvc push`"
        )


def git_author() -> dict[str, str]:
    """The submitter's git identity, which the experiments' commits take."""
    author = {}
    for key in ("name", "email"):
        with suppress(PipelineError):
            author[key] = git("config", f"user.{key}")
    return author


def image_warnings(image: str, baseline: str) -> list[str]:
    """What differs between the image and the baseline: the children run the baseline's code on
    the image's dependencies."""
    match = COMMIT_TAG.search(image)
    if not match or (match[1] == baseline and not match[2]):
        return []
    built = match[1]
    warnings = [
        f"the image was built from commit {built[:7]}{match[2] or ''}, the baseline is "
        f"{baseline[:7]}: the children run the baseline's code on the image's dependencies"
    ]
    try:
        changed = git("diff", "--name-only", built, baseline, "--", *DEPENDENCY_FILES)
    except PipelineError:
        changed = ""  # a commit this clone does not have
    if changed:
        files = ", ".join(changed.split())
        warnings.append(
            f"{files} changed since the image was built: rebuild it (docker/build_and_push.sh) "
            "and `scripts.batch register` it, or the children may lack a dependency"
        )
    return warnings


def submit_sweep(
    runner: JobRunner,
    root: ObjectStore,
    name: str,
    experiments: list[Experiment],
    overrides: list[str],
    queue: str,
    definition_name: str,
    max_parallel: int | None,
    dry_run: bool = False,
) -> Sweep | None:
    """Check, print the experiments, bundle the baseline, record and submit; the record."""
    baseline = require_committed()
    require_pushed(root.uri())
    store = sweep_store(root, name)
    require_new(store, name)
    definition = runner.definition(definition_name)
    if definition is None or not definition["image"]:
        raise PipelineError(
            f"no job definition {definition_name!r} with an image is registered: run `python -m "
            "mlt_project.scripts.batch register --image <URI>` first"
        )
    at_once = runner.capacity(queue, definition["vcpus"])
    limit_parallel(queue, definition["vcpus"], at_once, max_parallel, len(experiments))
    digest = runner.image_digest(definition["image"])
    for warning in image_warnings(definition["image"], baseline):
        log.warning(warning)
    sweep = Sweep(
        name=name,
        baseline=baseline,
        experiments=experiments,
        overrides=overrides,
        image=definition["image"],
        image_digest=digest,
        definition=definition["id"],
        queue=queue,
        dvc_remote=root.uri(),
        author=git_author(),
    )
    print_experiments(sweep)
    if dry_run:
        print("--dry-run: nothing submitted")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / BASELINE_BUNDLE
        git("bundle", "create", "--quiet", str(bundle), "HEAD")
        submit(runner, store, sweep, bundle, {"DVC_S3_URI": root.uri()})
    print(
        f"submitted sweep {name} to {queue}: job {sweep.job_id}, {len(experiments)} "
        f"experiment(s) on {definition['id']}; recorded in {store.uri()}/"
    )
    print(f"follow it: python -m mlt_project.scripts.sweep status {name}")
    print(f"bring back what has finished: python -m mlt_project.scripts.sweep collect {name}")
    return sweep


def limit_parallel(
    queue: str, vcpus: int, at_once: int | None, max_parallel: int | None, size: int
) -> None:
    """AWS Batch has no concurrency cap per array job: what bounds it is the queue's compute
    environments. Refuse --max-parallel K where the queue can run more than K children at once."""
    if at_once is None:
        if max_parallel is not None and max_parallel < size:
            log.warning(
                "cannot tell how many children queue %s runs at once (an unmanaged compute "
                "environment, or no permission to read it): --max-parallel %d is not enforced",
                queue,
                max_parallel,
            )
        return
    if max_parallel is not None and max_parallel < min(at_once, size):
        raise PipelineError(
            f"queue {queue!r} runs up to {at_once} children of {vcpus} vCPUs at once, more than "
            f"--max-parallel {max_parallel}, and an array job has no cap of its own: submit to a "
            f"queue whose compute environments have maxvCpus {max_parallel * vcpus} in all "
            "(PROJECT.md: Sweeps), or leave out --max-parallel"
        )
    log.info("queue %s runs up to %d of these children at once", queue, at_once)


def print_experiments(sweep: Sweep) -> None:
    digest = f" ({sweep.image_digest})" if sweep.image_digest else ""
    print(
        f"sweep {sweep.name}: {len(sweep.experiments)} experiment(s) on baseline "
        f"{sweep.baseline[:7]}, image {sweep.image}{digest}"
    )
    width = max(len(e.name) for e in sweep.experiments)
    for experiment in sweep.experiments:
        print(f"  {experiment.name:<{width}}  {experiment.describe()}")


# --- experiments in git ------------------------------------------------------------------------


@contextmanager
def inside(folder: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def experiment_ref(baseline: str, name: str) -> str:
    """Where DVC keeps an experiment: refs/exps/<baseline[:2]>/<baseline[2:]>/<name>."""
    return f"{EXP_REFS}/{baseline[:2]}/{baseline[2:]}/{name}"


def keep_gitlinks(ref: str, baseline: str) -> str:
    """Put back in the experiment's commit the submodule entries (the template's
    .ml-aws-template) that DVC's commit dropped: in a clone the submodule is not checked out, and
    DVC records it as deleted, which `dvc exp apply` would carry out. Returns the commit."""
    commit = git("rev-parse", ref)
    links = [
        line for line in git("ls-tree", "-r", baseline).splitlines() if line.startswith("160000 ")
    ]
    kept = {line.split("\t", 1)[1] for line in git("ls-tree", "-r", commit).splitlines()}
    lost = [line for line in links if line.split("\t", 1)[1] not in kept]
    if not lost:
        return commit
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        subprocess.run(["git", "read-tree", commit], env=env, check=True)
        subprocess.run(
            ["git", "update-index", "--add", "--index-info"],
            input="\n".join(lost) + "\n",
            text=True,
            env=env,
            check=True,
        )
        tree = subprocess.run(
            ["git", "write-tree"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
    # The same message, parents, author, committer and dates: only the tree changes.
    names = ("AUTHOR_NAME", "AUTHOR_EMAIL", "AUTHOR_DATE", "COMMITTER_NAME", "COMMITTER_EMAIL")
    names += ("COMMITTER_DATE",)
    fields = git("log", "-1", "--format=%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%cI", commit)
    identity = {f"GIT_{n}": v for n, v in zip(names, fields.split("\0"), strict=True)}
    parents = [arg for p in git("log", "-1", "--format=%P", commit).split() for arg in ("-p", p)]
    fixed = subprocess.run(
        ["git", "commit-tree", tree, *parents, "-F", "-"],
        input=git("log", "-1", "--format=%B", commit, strip=False),
        env={**os.environ, **identity},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    git("update-ref", ref, fixed, commit)
    return fixed


# --- collect ------------------------------------------------------------------------------------


def has_commit(commit: str) -> bool:
    try:
        git("cat-file", "-e", f"{commit}^{{commit}}")
    except PipelineError:
        return False
    return True


def local_ref(ref: str) -> str | None:
    try:
        return git("rev-parse", "--quiet", "--verify", f"{ref}^{{commit}}")
    except PipelineError:
        return None


def summary(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in metrics.items() if isinstance(v, int | float))


def fetch_outputs(commits: list[str], remote_uri: str) -> int:
    """The experiments' DVC outputs into the cache, as `dvc exp pull` fetches them, so that
    `dvc exp apply` can check them out; the number of files downloaded."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    remote = remote_named(remote_uri)
    logging.getLogger("aiobotocore").setLevel(logging.WARNING)  # where it found credentials
    try:
        with Repo() as repo:
            return repo.fetch(remote=remote, revs=commits, workspace=False)
    except DvcException as error:
        raise PipelineError(
            f"fetching the experiments' outputs from DVC remote {remote!r} failed: {error}"
        ) from None


def collect(store: ObjectStore, outputs: bool = True) -> dict[str, list[str]]:
    """Fetch each finished experiment's ref into this repository, and its DVC outputs into the
    cache unless not `outputs`; a second run changes nothing. Returns the experiment names by
    outcome: collected, here, failed, unfinished, conflicting."""
    sweep = read_sweep(store)
    if not has_commit(sweep.baseline):  # e.g. another clone, which never had the baseline
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / BASELINE_BUNDLE
            store.get(BASELINE_BUNDLE, bundle)
            git("fetch", "--quiet", str(bundle), "HEAD")
    outcome: dict[str, list[str]] = {
        k: [] for k in ("collected", "here", "failed", "unfinished", "conflicting")
    }
    finished = []  # their commits
    width = max(len(e.name) for e in sweep.experiments)
    for experiment in sweep.experiments:
        record = read_result(store, experiment.name) or {}
        state = record.get("state")
        line = f"  {experiment.name:<{width}}  "
        if state == "failed":
            outcome["failed"].append(experiment.name)
            print(f"{line}failed (attempt {record.get('attempt')}): {record.get('reason')}")
            continue
        if state != "succeeded":
            outcome["unfinished"].append(experiment.name)
            print(f"{line}not finished ({state or 'not started'})")
            continue
        ref, commit = record["ref"], record["commit"]
        here = local_ref(ref)
        if here == commit:
            outcome["here"].append(experiment.name)
            finished.append(commit)
            print(f"{line}already here")
            continue
        if here is not None:
            outcome["conflicting"].append(experiment.name)
            print(f"{line}not fetched: this repository has another experiment {ref}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / "exp.bundle"
            store.get(result_key(experiment.name, "exp.bundle"), bundle)
            git("fetch", "--quiet", str(bundle), f"{ref}:{ref}")
        outcome["collected"].append(experiment.name)
        finished.append(commit)
        print(f"{line}collected  {experiment.describe()}  {summary(record.get('metrics', {}))}")
    if outputs and finished:
        downloaded = fetch_outputs(finished, sweep.dvc_remote)
        if downloaded:
            print(f"fetched {downloaded} file(s) of their outputs from the DVC remote")
    words = {"here": "already here", "failed": "failed", "unfinished": "not finished"}
    words["conflicting"] = "not fetched"
    counts = ", ".join(f"{len(outcome[k])} {w}" for k, w in words.items() if outcome[k])
    if outcome["collected"]:
        print(
            f"collected {len(outcome['collected'])} experiment(s) of sweep {sweep.name}"
            + (f" ({counts})" if counts else "")
        )
    else:
        print(f"nothing new from sweep {sweep.name}" + (f" ({counts})" if counts else ""))
    rev = "" if head_commit() == sweep.baseline else f" --rev {sweep.baseline[:7]}"
    then = "" if outputs else " then `dvc pull`"
    print(
        f"see them with `dvc exp show{rev}`; `dvc exp apply NAME`{then} takes one into the workspace"
    )
    return outcome


# --- --local: the same sweep through DVC's own queue -----------------------------------------------


def run_local(experiments: list[Experiment], jobs: int, dry_run: bool = False) -> list[str]:
    """Queue each experiment as `dvc exp run --queue -n NAME -S ...` and run the queue here; the
    names of those that succeeded."""
    baseline = require_committed()
    taken = [e.name for e in experiments if local_ref(experiment_ref(baseline, e.name))]
    if taken:
        raise PipelineError(
            f"experiment {taken[0]} exists on this baseline already: choose another --name (or "
            f"`dvc exp remove {' '.join(taken)}`)"
        )
    print(f"{len(experiments)} experiment(s) on baseline {baseline[:7]}, through DVC's queue here:")
    width = max(len(e.name) for e in experiments)
    for experiment in experiments:
        print(f"  {experiment.name:<{width}}  {experiment.describe()}")
    if dry_run:
        print("--dry-run: nothing queued")
        return []
    for experiment in experiments:
        # --allow-missing as on AWS: stages with no change run nowhere, whatever is in the cache.
        args = [arg for value in experiment.set_params() for arg in ("-S", value)]
        dvc("exp", "run", "--queue", "--allow-missing", "-n", experiment.name, *args)
    # DVC's own runner, output on the terminal; a failed experiment makes it exit non-zero.
    subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "--run-all", "-j", str(jobs)])
    done = []
    for experiment in experiments:
        ref = experiment_ref(baseline, experiment.name)
        if local_ref(ref):
            keep_gitlinks(ref, baseline)
            done.append(experiment.name)
    failed = [e.name for e in experiments if e.name not in done]
    if failed:
        raise PipelineError(
            f"{len(failed)} of {len(experiments)} experiment(s) failed ({', '.join(failed)}): "
            f"see `dvc queue logs {failed[0]}`; the others are in `dvc exp show`"
        )
    print(f"all {len(done)} experiment(s) ran: see them with `dvc exp show`")
    return done
