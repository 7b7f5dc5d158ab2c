"""The job runner on AWS Batch (deploy/__init__.py's JobRunner), and the job definitions of
aws/batch-job*.json with this project's image, role and settings filled in.

A multi-node job is refused for a queue whose compute environments are all Spot: AWS Batch runs
multi-node parallel jobs on EC2 on-demand capacity only, and the job would never start.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
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
# Set by Batch in each child of an array job, and on every attempt (from 1).
ARRAY_INDEX = "AWS_BATCH_JOB_ARRAY_INDEX"
ATTEMPT = "AWS_BATCH_JOB_ATTEMPT"

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
        command: list[str] | None = None,
    ) -> str:
        request: dict[str, Any] = {"jobName": name, "jobQueue": queue, "jobDefinition": definition}
        if array_size is not None:
            request["arrayProperties"] = {"size": array_size}
        overrides: dict[str, Any] = {}
        if environment:
            overrides["environment"] = [{"name": k, "value": v} for k, v in environment.items()]
        if command:
            overrides["command"] = command
        if overrides:
            request["containerOverrides"] = overrides
        with aws_errors("AWS Batch"):
            return self.batch.submit_job(**request)["jobId"]

    def status(self, job_id: str) -> dict[str, Any]:
        with aws_errors("AWS Batch"):
            jobs = self.batch.describe_jobs(jobs=[job_id])["jobs"]
        if not jobs:
            raise PipelineError(f"no job {job_id!r} in this account and region: check the job id")
        job = jobs[0]
        return {key: job.get(key) for key in ("jobName", "jobId", "status", "statusReason")}

    # --- for sweeps (deploy/sweep.py) ------------------------------------------------------------

    def definition(self, name: str) -> dict[str, Any] | None:
        with aws_errors("AWS Batch"):
            pages = self.batch.get_paginator("describe_job_definitions").paginate(
                jobDefinitionName=name, status="ACTIVE"
            )
            found = [d for page in pages for d in page["jobDefinitions"]]
        if not found:
            return None
        latest = max(found, key=lambda d: d["revision"])
        container = latest.get("containerProperties") or {}
        vcpus = next(
            (r["value"] for r in container.get("resourceRequirements", []) if r["type"] == "VCPU"),
            container.get("vcpus", 1),
        )
        return {
            "id": f"{name}:{latest['revision']}",
            "image": container.get("image", ""),
            "vcpus": int(float(vcpus)),
        }

    def children(self, job_id: str, size: int) -> list[dict[str, Any] | None]:
        ids = [f"{job_id}:{index}" for index in range(size)] if size > 1 else [job_id]
        found: dict[str, dict[str, Any]] = {}
        with aws_errors("AWS Batch"):
            for start in range(0, len(ids), 100):  # DescribeJobs takes up to 100 ids
                for job in self.batch.describe_jobs(jobs=ids[start : start + 100])["jobs"]:
                    found[job["jobId"]] = child_state(job)
        return [found.get(child) for child in ids]

    def capacity(self, queue: str, vcpus: int) -> int | None:
        try:
            queues = self.batch.describe_job_queues(jobQueues=[queue])["jobQueues"]
            arns = [e["computeEnvironment"] for q in queues for e in q["computeEnvironmentOrder"]]
            environments = (
                self.batch.describe_compute_environments(computeEnvironments=arns)[
                    "computeEnvironments"
                ]
                if arns
                else []
            )
        except (BotoCoreError, ClientError) as error:
            log.debug("cannot read the compute environments of queue %s: %s", queue, error)
            return None
        limits = [env.get("computeResources", {}).get("maxvCpus") for env in environments]
        # An unmanaged environment has no maxvCpus: its capacity is whatever instances join it.
        if not limits or None in limits:
            return None
        return sum(limits) // max(vcpus, 1)

    def image_digest(self, image: str) -> str | None:
        from .ecr import image_digest

        return image_digest(image)

    def child_position(self, environ: Mapping[str, str]) -> tuple[int | None, int]:
        index, attempt = environ.get(ARRAY_INDEX, ""), environ.get(ATTEMPT, "1")
        for name, value in ((ARRAY_INDEX, index), (ATTEMPT, attempt)):
            if value and not value.isdigit():
                raise PipelineError(f"{name}={value!r} is not a number: fix the variable")
        return (int(index) if index else None), int(attempt or 1)


BATCH_STATES = {
    "SUBMITTED": "pending",
    "PENDING": "pending",
    "RUNNABLE": "pending",
    "STARTING": "pending",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
}


def child_state(job: dict[str, Any]) -> dict[str, Any]:
    """A Batch job (one array child) in the job runner's words: state, attempts, reason."""
    attempts = job.get("attempts") or []
    last = attempts[-1] if attempts else {}
    container = last.get("container") or {}
    # The job's reason, else its last attempt's ("Host EC2 (instance ...) terminated."), else
    # its container's ("OutOfMemoryError: ..."), else the exit code.
    reason = job.get("statusReason") or last.get("statusReason") or container.get("reason") or ""
    if not reason and container.get("exitCode") is not None:
        reason = f"exit code {container['exitCode']}"
    return {
        "state": BATCH_STATES.get(job.get("status", ""), "pending"),
        "attempts": len(attempts),
        "reason": reason,
    }


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
