"""The job runner on AWS Batch (deploy/__init__.py's JobRunner), and the job definitions of
aws/batch-job*.json with this project's image, role and settings filled in.

A multi-node job is refused for a queue whose compute environments are all Spot: AWS Batch runs
multi-node parallel jobs on EC2 on-demand capacity only, and the job would never start.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ...base.errors import PipelineError
from .settings import CHECKPOINT_S3_URI, DVC_S3_URI, aws_errors, client, require_credentials, s3_uri

SINGLE_NODE_FILE = Path("aws/batch-job.json")
MULTI_NODE_FILE = Path("aws/batch-job-multinode.json")
# Passed on to every job: the entrypoint makes the DVC remote from the first (scripts.dvc_remote),
# as on a laptop, and keeps resume checkpoints across retries in the second.
PASSED_TO_JOB = (DVC_S3_URI, CHECKPOINT_S3_URI)
SPOT_TYPES = {"SPOT", "FARGATE_SPOT"}

log = logging.getLogger(__name__)


class BatchRunner:
    def __init__(self) -> None:
        self._client: Any = None

    @property
    def batch(self) -> Any:
        if self._client is None:
            require_credentials()
            self._client = client("batch")
        return self._client

    def register(self, definition: dict[str, Any]) -> dict[str, Any]:
        with aws_errors("AWS Batch"):
            response = self.batch.register_job_definition(**definition)
        return {key: response[key] for key in ("jobDefinitionName", "revision", "jobDefinitionArn")}

    def submit(
        self,
        name: str,
        queue: str,
        definition: str,
        *,
        array_size: int | None = None,
        environment: dict[str, str] | None = None,
    ) -> str:
        request: dict[str, Any] = {"jobName": name, "jobQueue": queue, "jobDefinition": definition}
        if array_size is not None:
            request["arrayProperties"] = {"size": array_size}
        if environment:
            variables = [{"name": k, "value": v} for k, v in environment.items()]
            request["containerOverrides"] = {"environment": variables}
        with aws_errors("AWS Batch"):
            return self.batch.submit_job(**request)["jobId"]

    def status(self, job_id: str) -> dict[str, Any]:
        with aws_errors("AWS Batch"):
            jobs = self.batch.describe_jobs(jobs=[job_id])["jobs"]
        if not jobs:
            raise PipelineError(f"no job {job_id!r} in this account and region: check the job id")
        job = jobs[0]
        return {key: job.get(key) for key in ("jobName", "jobId", "status", "statusReason")}


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
        for name in PASSED_TO_JOB:
            if value := s3_uri(name):  # an old name's value goes under the new one
                variables = container.setdefault("environment", [])
                variables.append({"name": name, "value": value})
    return request


def require_on_demand(runner: BatchRunner, queue: str) -> None:
    """Refuse a multi-node job for a queue whose compute environments are all Spot: AWS Batch
    does not run multi-node parallel jobs on Spot, and the job would never start. Where the queue
    or its environments cannot be read (no permission, no such queue), SubmitJob decides."""
    try:
        queues = runner.batch.describe_job_queues(jobQueues=[queue])["jobQueues"]
        arns = [
            entry["computeEnvironment"]
            for found in queues
            for entry in found.get("computeEnvironmentOrder", [])
        ]
        if not arns:
            return
        response = runner.batch.describe_compute_environments(computeEnvironments=arns)
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
