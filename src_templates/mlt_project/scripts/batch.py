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

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .. import cli
from ..config import load_config
from ..errors import PipelineError
from .aws import CHECKPOINT_S3_URI, DVC_S3_URI, aws_errors, client, require_credentials, s3_uri

SINGLE_NODE_FILE = Path("aws/batch-job.json")
MULTI_NODE_FILE = Path("aws/batch-job-multinode.json")
BUILD_HINT = "the URI docker/build_and_push.sh prints"
PASSED_TO_JOB = (DVC_S3_URI, CHECKPOINT_S3_URI)
SPOT_TYPES = {"SPOT", "FARGATE_SPOT"}

log = logging.getLogger(__name__)


def read_definition(num_nodes: int) -> dict[str, Any]:
    """The job-definition file for a single-node or a multi-node job, as written."""
    path = MULTI_NODE_FILE if num_nodes > 1 else SINGLE_NODE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run from the project root") from None
    except json.JSONDecodeError as error:
        raise PipelineError(f"{path} is not valid JSON at line {error.lineno}: fix it") from None


def job_definition(num_nodes: int, image: str, job_role_arn: str | None) -> dict[str, Any]:
    """The RegisterJobDefinition request: the file, with the image, role and node count filled in."""
    request = read_definition(num_nodes)
    if num_nodes > 1:
        request["nodeProperties"]["numNodes"] = num_nodes
        containers = [
            node["container"] for node in request["nodeProperties"]["nodeRangeProperties"]
        ]
    else:
        containers = [request["containerProperties"]]
    for container in containers:
        container["image"] = image
        if job_role_arn:
            container["jobRoleArn"] = job_role_arn
        # The entrypoint makes the DVC remote from the bucket (scripts.dvc_remote), as on a
        # laptop, and keeps resume checkpoints across retries in CHECKPOINT_S3_URI.
        for name in PASSED_TO_JOB:
            if value := s3_uri(name):  # an old name's value goes under the new one
                variables = container.setdefault("environment", [])
                variables.append({"name": name, "value": value})
    return request


def register(cfg_path: Path, image: str | None) -> dict[str, Any]:
    """Register a new revision of the job definition; return its name, revision and ARN."""
    image = image or os.environ.get("BATCH_IMAGE_URI", "").strip()
    if not image:
        raise PipelineError(
            f"no image URI: pass --image or set BATCH_IMAGE_URI in .env ({BUILD_HINT})"
        )
    num_nodes = load_config(cfg_path).training.num_nodes
    request = job_definition(num_nodes, image, os.environ.get("BATCH_JOB_ROLE_ARN") or None)
    with aws_errors("AWS Batch"):
        response = batch_client().register_job_definition(**request)
    result = {key: response[key] for key in ("jobDefinitionName", "revision", "jobDefinitionArn")}
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
    batch = batch_client()
    if num_nodes > 1:
        require_on_demand(batch, queue)
    with aws_errors("AWS Batch"):
        response = batch.submit_job(jobName=job_name, jobQueue=queue, jobDefinition=definition)
    print(f"submitted {job_name} to {queue}: job id {response['jobId']}")
    print(f"follow it with: python -m mlt_project.scripts.batch status {response['jobId']}")
    return response["jobId"]


def require_on_demand(batch: Any, queue: str) -> None:
    """Refuse a multi-node job for a queue whose compute environments are all Spot: AWS Batch
    does not run multi-node parallel jobs on Spot, and the job would never start. Where the queue
    or its environments cannot be read (no permission, no such queue), SubmitJob decides."""
    try:
        queues = batch.describe_job_queues(jobQueues=[queue])["jobQueues"]
        arns = [
            entry["computeEnvironment"]
            for found in queues
            for entry in found.get("computeEnvironmentOrder", [])
        ]
        if not arns:
            return
        response = batch.describe_compute_environments(computeEnvironments=arns)
    except (BotoCoreError, ClientError) as error:
        log.debug("cannot tell whether queue %s is Spot-only: %s", queue, error)
        return
    environments = response["computeEnvironments"]
    # An unmanaged environment has no computeResources: it may hold on-demand instances.
    kinds = {env.get("computeResources", {}).get("type") for env in environments}
    if environments and kinds <= SPOT_TYPES:
        names = ", ".join(env["computeEnvironmentName"] for env in environments)
        raise PipelineError(
            f"job queue {queue!r} has only Spot compute environments ({names}) and AWS Batch "
            "does not run multi-node parallel jobs on Spot: submit to a queue with an EC2 "
            "(on-demand) compute environment (--queue or BATCH_JOB_QUEUE), or set "
            "training.num_nodes: 1 in params.yaml"
        )


def status(job_id: str) -> dict[str, Any]:
    """Print and return the job's name, status and, once it has one, the reason."""
    with aws_errors("AWS Batch"):
        jobs = batch_client().describe_jobs(jobs=[job_id])["jobs"]
    if not jobs:
        raise PipelineError(f"no job {job_id!r} in this account and region: check the job id")
    job = jobs[0]
    reason = job.get("statusReason", "")
    print(f"{job['jobName']} ({job['jobId']}): {job['status']}" + (f": {reason}" if reason else ""))
    return {key: job.get(key) for key in ("jobName", "jobId", "status", "statusReason")}


def batch_client() -> Any:
    """A Batch client, once the credential chain has found credentials."""
    require_credentials()
    return client("batch")


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
