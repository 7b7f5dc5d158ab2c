"""Train on AWS Batch: register the job definition, submit a job, read its status.

    python -m mlt_project.scripts.batch register [--image URI]   # a new job-definition revision
    python -m mlt_project.scripts.batch submit [--queue NAME]    # a job on the latest revision
    python -m mlt_project.scripts.batch status JOB_ID

The job definition is aws/batch-job.json, or aws/batch-job-multinode.json when
training.num_nodes in params.yaml is above 1 (its numNodes is set from that value). Settings
come from the environment, or from .env where the environment is silent: BATCH_IMAGE_URI,
BATCH_JOB_QUEUE, BATCH_JOB_ROLE_ARN (optional), DVC_S3_URI and CHECKPOINT_S3_URI (passed on to
the job), and the usual AWS_DEFAULT_REGION, AWS_PROFILE or keys. A multi-node job is refused for a
queue whose compute environments are all Spot (AWS Batch runs multi-node parallel jobs on EC2
on-demand capacity only).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..base import cli
from ..base.config import load_config
from ..base.errors import PipelineError
from ..deploy.aws.batch import BatchRunner, job_definition, read_definition, require_on_demand

BUILD_HINT = "the URI docker/build_and_push.sh prints"


def register(cfg_path: Path, image: str | None) -> dict[str, Any]:
    """Register a new revision of the job definition; return its name, revision and ARN."""
    image = image or os.environ.get("BATCH_IMAGE_URI", "").strip()
    if not image:
        raise PipelineError(
            f"no image URI: pass --image or set BATCH_IMAGE_URI in .env ({BUILD_HINT})"
        )
    num_nodes = load_config(cfg_path).training.num_nodes
    request = job_definition(num_nodes, image, os.environ.get("BATCH_JOB_ROLE_ARN") or None)
    result = BatchRunner().register(request)
    print(f"registered {result['jobDefinitionArn']} (image {image}, {num_nodes} node(s))")
    return result


def submit(cfg_path: Path, queue: str | None, name: str | None) -> str:
    """Submit a job on the latest revision of the job definition; return the job id."""
    queue = queue or os.environ.get("BATCH_JOB_QUEUE", "").strip()
    if not queue:
        raise PipelineError("no job queue: pass --queue or set BATCH_JOB_QUEUE in .env")
    num_nodes = load_config(cfg_path).training.num_nodes
    definition = read_definition(num_nodes)["jobDefinitionName"]
    job_name = name or f"{definition}-{time.strftime('%Y%m%d-%H%M%S')}"
    runner = BatchRunner()
    if num_nodes > 1:
        require_on_demand(runner, queue)
    job_id = runner.submit(job_name, queue, definition)
    print(f"submitted {job_name} to {queue}: job id {job_id}")
    print(f"follow it with: python -m mlt_project.scripts.batch status {job_id}")
    return job_id


def status(job_id: str) -> dict[str, Any]:
    """Print and return the job's name, status and, once it has one, the reason."""
    job = BatchRunner().status(job_id)
    reason = job.get("statusReason") or ""
    print(f"{job['jobName']} ({job['jobId']}): {job['status']}" + (f": {reason}" if reason else ""))
    return job


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    register_parser = commands.add_parser("register", help="register a job-definition revision")
    register_parser.add_argument(
        "--image", help=f"image URI (default: $BATCH_IMAGE_URI; {BUILD_HINT})"
    )
    submit_parser = commands.add_parser("submit", help="submit a training job")
    submit_parser.add_argument("--queue", help="job queue (default: $BATCH_JOB_QUEUE)")
    submit_parser.add_argument("--name", help="job name (default: definition name + time)")
    status_parser = commands.add_parser("status", help="print a job's status")
    status_parser.add_argument("job_id")
    args = parser.parse_args(argv)

    def run() -> None:
        if args.command == "register":
            register(args.params, args.image)
        elif args.command == "submit":
            submit(args.params, args.queue, args.name)
        else:
            status(args.job_id)

    return cli.run(run, env=True)


if __name__ == "__main__":
    raise SystemExit(main())
