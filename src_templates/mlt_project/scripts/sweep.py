"""Sweeps on AWS Batch: many `dvc exp run` experiments as one Spot-safe array job, brought back into
`dvc exp show`.

    python -m mlt_project.scripts.sweep submit -S 'training.lr=0.01,0.001' -S 'model.name=mlp,cnn'
        [--name NAME] [--queue Q] [--max-parallel K] [--max-experiments N] [--dry-run] [--local]
    python -m mlt_project.scripts.sweep status NAME     # one line per experiment
    python -m mlt_project.scripts.sweep collect NAME    # finished experiments -> this repository
    python -m mlt_project.scripts.sweep list            # the sweeps under DVC_S3_URI
    python -m mlt_project.scripts.sweep child           # what each array child runs (the job's command)

-S takes DVC's sweep grammar (`a,b,c`, `range(start,stop[,step])`), as `dvc exp run --queue -S`
does; experiment i is named NAME-i. A sweep lives beside the DVC remote, in
$DVC_S3_URI/sweeps/NAME/ (deploy/sweep.py). Settings come from the environment or .env:
DVC_S3_URI, BATCH_JOB_QUEUE, and the job definition `scripts.batch register` made
(aws/batch-job.json). `--local` runs the same experiments through DVC's queue on this machine,
as a rehearsal. PROJECT.md (Sweeps) tells the costs and the limits.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..base import cli
from ..base.config import load_config
from ..base.errors import PipelineError
from ..deploy import configured_store, job_runner, object_store
from ..deploy.sweep import (
    DEFAULT_MAX_EXPERIMENTS,
    SWEEP_URI,
    child_states,
    expand,
    list_sweeps,
    read_sweep,
    require_size,
    sweep_store,
)

REMOTE = "DVC_S3_URI"


def submit(args) -> None:
    name = args.name or time.strftime("sweep-%Y%m%d-%H%M%S")
    experiments = expand(name, args.set_param)
    require_size(experiments, args.max_experiments)
    if args.local:
        from ..release.sweep import run_local

        run_local(experiments, args.max_parallel or 1, args.dry_run)
        return
    if load_config(args.params).training.num_nodes > 1:
        raise PipelineError(
            "training.num_nodes is above 1: a sweep's children are single-node jobs (AWS Batch "
            "runs no multi-node array); set training.num_nodes: 1 in params.yaml and commit"
        )
    queue = args.queue or os.environ.get("BATCH_JOB_QUEUE", "").strip()
    if not queue:
        raise PipelineError("no job queue: pass --queue or set BATCH_JOB_QUEUE in .env")
    root = configured_store(REMOTE, "the DVC remote; sweeps are kept beside it")
    from ..deploy.aws.batch import read_definition
    from ..release.sweep import submit_sweep

    definition = read_definition(1)["jobDefinitionName"]
    submit_sweep(
        job_runner(),
        root,
        name,
        experiments,
        args.set_param,
        queue,
        definition,
        args.max_parallel,
        args.dry_run,
    )


def status(name: str) -> None:
    store = sweep_store(configured_store(REMOTE, "the DVC remote, where sweeps are"), name)
    sweep = read_sweep(store)
    states = child_states(job_runner(), store, sweep)
    counts = {s: sum(c.state == s for c in states) for s in ("succeeded", "failed", "running")}
    print(
        f"sweep {name}: {len(states)} experiment(s) on baseline {sweep.baseline[:7]}, job "
        f"{sweep.job_id} in {sweep.queue}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    )
    width = max(len(c.experiment.name) for c in states)
    for child in states:
        tries = f"attempt {child.attempts}" if child.attempts else "no attempt yet"
        detail = child.reason
        if child.state == "succeeded":
            metrics = (child.record or {}).get("metrics", {})
            detail = " ".join(f"{k}={v}" for k, v in metrics.items() if isinstance(v, int | float))
        print(
            f"  {child.experiment.name:<{width}}  {child.state:<9}  {tries:<14}  "
            f"{child.experiment.describe()}" + (f"  {detail}" if detail else "")
        )


def collect(name: str, outputs: bool) -> None:
    from ..release.sweep import collect as collect_sweep

    root = configured_store(REMOTE, "the DVC remote, where sweeps are")
    outcome = collect_sweep(sweep_store(root, name), outputs)
    if outcome["conflicting"]:
        raise PipelineError(
            f"{len(outcome['conflicting'])} experiment(s) not fetched: this repository has "
            f"others of the same name ({outcome['conflicting'][0]}); `dvc exp remove` them first"
        )


def list_all() -> None:
    root = configured_store(REMOTE, "the DVC remote, where sweeps are")
    names = list_sweeps(root)
    for name in names:
        sweep = read_sweep(sweep_store(root, name))
        print(
            f"{name}  {sweep.created}  {len(sweep.experiments)} experiment(s)  job {sweep.job_id}"
        )
    if not names:
        print(f"no sweeps in {root.uri('sweeps')}/")


def child(workdir: Path | None, sync_every: float) -> None:
    from ..release.sweep_child import run_child

    uri = os.environ.get(SWEEP_URI, "").strip()
    if not uri:
        raise PipelineError(
            f"{SWEEP_URI} is not set: `child` runs as a sweep's array job, which `submit` starts"
        )
    run_child(job_runner(), object_store(uri, SWEEP_URI), workdir, sync_every)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("submit", help="submit a sweep (or run it here with --local)")
    sub.add_argument(
        "-S", "--set-param", action="append", default=[], metavar="[FILE:]KEY=VALUES",
        help="as `dvc exp run --queue -S`: 'a,b,c' or 'range(start,stop[,step])'; repeatable",
    )  # fmt: skip
    sub.add_argument("--name", help="the sweep's name (default: sweep-<date>-<time>)")
    sub.add_argument("--queue", help="job queue (default: $BATCH_JOB_QUEUE)")
    sub.add_argument(
        "--max-parallel", type=int, metavar="K",
        help="refuse a queue that can run more than K children at once; --local: K at a time",
    )  # fmt: skip
    sub.add_argument(
        "--max-experiments", type=int, default=DEFAULT_MAX_EXPERIMENTS, metavar="N",
        help=f"refuse a sweep of more than N experiments (default: {DEFAULT_MAX_EXPERIMENTS})",
    )  # fmt: skip
    sub.add_argument("--dry-run", action="store_true", help="check and print; submit nothing")
    sub.add_argument("--local", action="store_true", help="run it here, through DVC's queue")
    commands.add_parser("status", help="one line per experiment").add_argument("name")
    collect_parser = commands.add_parser("collect", help="fetch finished experiments")
    collect_parser.add_argument("name")
    collect_parser.add_argument(
        "--no-outputs", action="store_true",
        help="only the experiments, not their DVC outputs (`dvc pull` after an apply then)",
    )  # fmt: skip
    commands.add_parser("list", help="the sweeps under DVC_S3_URI")
    run_child = commands.add_parser("child", help="run this array child's experiment")
    run_child.add_argument("--workdir", type=Path, help="where to clone (default: a temp folder)")
    run_child.add_argument(
        "--sync-every", type=float, default=30.0, metavar="SECONDS",
        help="how often a new resume checkpoint is uploaded (default: 30)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if getattr(args, "max_parallel", None) is not None and args.max_parallel < 1:
        parser.error("--max-parallel must be at least 1")

    def run() -> None:
        if args.command == "submit":
            submit(args)
        elif args.command == "status":
            status(args.name)
        elif args.command == "collect":
            collect(args.name, not args.no_outputs)
        elif args.command == "list":
            list_all()
        else:
            child(args.workdir, args.sync_every)

    return cli.run(run, env=True)


if __name__ == "__main__":
    raise SystemExit(main())
