"""AWS Batch: node variables -> Lightning's rendezvous, scripts.batch against moto_server, and
the project guide's AWS setup."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FAKE_AWS, MODULE, NO_AWS, one_error_line, set_params, sh
from mlt_project.base.errors import PipelineError
from mlt_project.deploy.aws.cluster import node_env, shell_exports
from mlt_project.training.factories import require_rendezvous

BATCH_VARS = {
    "AWS_BATCH_JOB_NODE_INDEX": "0",
    "AWS_BATCH_JOB_NUM_NODES": "2",
    "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
}
VARIANTS = ("cu128", "cpu")
IMAGE = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/digits-e2e:{'a' * 40}"


# --- the node mapping, unit by unit -----------------------------------------------------------


def test_single_machine_needs_no_rendezvous():
    assert node_env({}, num_nodes=1) == {}
    with pytest.raises(PipelineError, match=r"training\.num_nodes is 2 but this is not a node"):
        node_env({}, num_nodes=2)


def test_batch_nodes_map_to_lightning_rendezvous():
    main = node_env({**BATCH_VARS, "MASTER_PORT": "23456"}, num_nodes=2)
    assert main == {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "23456", "NODE_RANK": "0"}
    child = {
        **BATCH_VARS,
        "AWS_BATCH_JOB_NODE_INDEX": "1",
        "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS": "10.0.0.5",
    }
    assert node_env(child, num_nodes=2) == {
        "MASTER_ADDR": "10.0.0.5",
        "MASTER_PORT": "29500",
        "NODE_RANK": "1",
    }
    # Batch may make any node the main one; Lightning's rank 0 must be that node.
    moved = {**child, "AWS_BATCH_JOB_NUM_NODES": "3", "AWS_BATCH_JOB_MAIN_NODE_INDEX": "1"}
    assert node_env({**moved, "AWS_BATCH_JOB_NODE_INDEX": "1"}, 3)["NODE_RANK"] == "0"
    assert node_env({**moved, "AWS_BATCH_JOB_NODE_INDEX": "2"}, 3)["NODE_RANK"] == "1"
    assert node_env({**moved, "AWS_BATCH_JOB_NODE_INDEX": "0"}, 3)["NODE_RANK"] == "2"
    assert shell_exports({"MASTER_ADDR": "a b"}) == "export MASTER_ADDR='a b'\n"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"AWS_BATCH_JOB_NODE_INDEX": "0"}, "partly set"),
        ({**BATCH_VARS, "AWS_BATCH_JOB_NODE_INDEX": "1"}, "PRIVATE_IPV4_ADDRESS is not set"),
        ({**BATCH_VARS, "AWS_BATCH_JOB_NUM_NODES": "3"}, "Batch started 3 node(s) but"),
        ({**BATCH_VARS, "AWS_BATCH_JOB_NODE_INDEX": "two"}, "is not a number"),
        ({**BATCH_VARS, "AWS_BATCH_JOB_NODE_INDEX": "5"}, "must both be below"),
        ({**BATCH_VARS, "MASTER_PORT": "99999"}, "not a port number"),
    ],
)
def test_bad_node_variables_are_one_line_errors(environ, message):
    with pytest.raises(PipelineError, match=re.escape(message)):
        node_env(environ, num_nodes=2)


def test_trainer_uses_ddp_for_several_devices_and_refuses_nodes_without_rendezvous(monkeypatch):
    import dataclasses

    from mlt_project.base.config import load_config
    from mlt_project.training.factories import create_trainer

    base = load_config(Path(__file__).parent.parent / "template_configs/project/params.yaml")
    training = dataclasses.replace(base.training, accelerator="cpu", devices=2)
    trainer = create_trainer(dataclasses.replace(base, training=training), logger=False)
    assert type(trainer.strategy).__name__ == "DDPStrategy"
    assert trainer.strategy._get_process_group_backend() == "gloo"
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(PipelineError, match="MASTER_ADDR, MASTER_PORT, NODE_RANK not set"):
        require_rendezvous(2)
    training = dataclasses.replace(training, devices=1, num_nodes=2)
    with pytest.raises(PipelineError, match=r"training\.num_nodes is 2"):
        create_trainer(dataclasses.replace(base, training=training), logger=False)


# --- scripts.batch against moto_server ------------------------------------------------------


@pytest.fixture(scope="module")
def aws(moto_endpoint) -> dict[str, str]:
    """What the user sets up once in AWS (PROJECT.md: AWS setup): a compute environment and queue."""
    import boto3

    settings = {"endpoint_url": moto_endpoint, "region_name": "us-east-1"}
    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    iam = boto3.client("iam", **settings, **keys)
    batch = boto3.client("batch", **settings, **keys)
    role = iam.create_role(RoleName="batch-service", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    environment = batch.create_compute_environment(
        computeEnvironmentName="gpu-ce", type="UNMANAGED", state="ENABLED", serviceRole=role
    )
    batch.create_job_queue(
        jobQueueName="training",
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[
            {"order": 1, "computeEnvironment": environment["computeEnvironmentArn"]}
        ],
    )
    return {**FAKE_AWS, "AWS_ENDPOINT_URL": moto_endpoint, "BATCH_JOB_QUEUE": "training"}


def batch_cli(project: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return sh(sys.executable, "-m", f"{MODULE}.scripts.batch", *args, cwd=project, **extra)


@pytest.mark.e2e
def test_batch_register_submit_status_single_and_multi_node(aws, image_copy, tmp_path):
    import boto3

    project = tmp_path / "project"
    shutil.copytree(image_copy, project, symlinks=True)
    client = boto3.client(
        "batch",
        endpoint_url=aws["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )

    registered = batch_cli(project, "register", "--image", IMAGE, **aws)
    assert registered.returncode == 0, registered.stderr
    assert "job-definition/digits-e2e-train:1" in registered.stdout
    checkpoints = "s3://dvc-bucket/digits-e2e/checkpoints"
    again = batch_cli(
        project, "register", **aws, BATCH_IMAGE_URI=IMAGE, DVC_S3_URI="s3://dvc-bucket/x",
        CHECKPOINT_S3_URI=checkpoints,
    )  # fmt: skip
    assert "job-definition/digits-e2e-train:2" in again.stdout
    revisions = client.describe_job_definitions(jobDefinitionName="digits-e2e-train")
    definition = max(revisions["jobDefinitions"], key=lambda d: d["revision"])
    assert definition["revision"] == 2
    assert definition["containerProperties"]["image"] == IMAGE
    variables = definition["containerProperties"]["environment"]
    assert {"name": "DVC_S3_URI", "value": "s3://dvc-bucket/x"} in variables
    assert {"name": "CHECKPOINT_S3_URI", "value": checkpoints} in variables
    # The project is a --torch cpu one: its image has no CUDA, its job asks for no GPU.
    reserved = definition["containerProperties"]["resourceRequirements"]
    assert {r["type"] for r in reserved} == {"VCPU", "MEMORY"}
    # moto stores the action in lower case, as AWS's API accepts either.
    retry = [
        {**rule, "action": rule["action"].upper()}
        for rule in definition["retryStrategy"]["evaluateOnExit"]
    ]
    assert retry[0] == {"onStatusReason": "Host EC2*", "action": "RETRY"}  # spot reclaimed
    assert retry[-1] == {"onReason": "*", "action": "EXIT"}  # anything else, a code error: stop
    assert definition["timeout"]["attemptDurationSeconds"] > 0

    submitted = batch_cli(project, "submit", **aws)
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.search(r"job id (\S+)", submitted.stdout).group(1)
    (job,) = client.describe_jobs(jobs=[job_id])["jobs"]
    assert job["jobQueue"].endswith("job-queue/training")
    assert job["jobDefinition"].endswith("job-definition/digits-e2e-train:2")
    shown = batch_cli(project, "status", job_id, **aws)
    assert shown.returncode == 0, shown.stderr
    assert re.match(rf"digits-e2e-train-\S+ \({job_id}\): [A-Z]+", shown.stdout)

    # training.num_nodes > 1: the multi-node definition, with numNodes from params.yaml.
    set_params(project, training__num_nodes=3)
    multi = batch_cli(project, "register", "--image", IMAGE, **aws)
    assert "job-definition/digits-e2e-train-multinode:1" in multi.stdout, multi.stderr
    (definition,) = client.describe_job_definitions(jobDefinitionName="digits-e2e-train-multinode")[
        "jobDefinitions"
    ]
    assert definition["type"] == "multinode"  # moto returns no nodeProperties: see the next test
    submitted = batch_cli(project, "submit", **aws)
    assert "submitted digits-e2e-train-multinode-" in submitted.stdout, submitted.stderr


@pytest.mark.e2e
def test_batch_bad_input_is_one_line(aws, image_copy):
    no_image = batch_cli(image_copy, "register", **aws)
    assert "no image URI: pass --image or set BATCH_IMAGE_URI" in one_error_line(no_image)
    no_queue = batch_cli(image_copy, "submit", **{**aws, "BATCH_JOB_QUEUE": ""})
    assert "no job queue: pass --queue or set BATCH_JOB_QUEUE" in one_error_line(no_queue)
    unknown_queue = batch_cli(image_copy, "submit", "--queue", "nope", **aws)
    assert "AWS Batch SubmitJob failed" in one_error_line(unknown_queue)
    no_credentials = batch_cli(image_copy, "register", "--image", IMAGE, **NO_AWS)
    assert "no AWS credentials found" in one_error_line(no_credentials)


def managed_environment(batch, ec2, iam, name: str, kind: str) -> str:
    """A managed compute environment of `kind` (EC2 or SPOT) in a fresh VPC; its ARN."""
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=name, Description=name, VpcId=vpc)["GroupId"]
    role = iam.create_role(RoleName=f"{name}-service", AssumeRolePolicyDocument="{}")["Role"]
    profile = iam.create_instance_profile(InstanceProfileName=f"{name}-instance")
    resources = {
        "type": kind,
        "minvCpus": 0,
        "maxvCpus": 64,
        "desiredvCpus": 0,
        "instanceTypes": ["c7i.8xlarge"],
        "subnets": [subnet],
        "securityGroupIds": [group],
        "instanceRole": profile["InstanceProfile"]["Arn"],
    }
    if kind == "SPOT":
        resources.update(bidPercentage=100, spotIamFleetRole=role["Arn"])
    return batch.create_compute_environment(
        computeEnvironmentName=name,
        type="MANAGED",
        state="ENABLED",
        serviceRole=role["Arn"],
        computeResources=resources,
    )["computeEnvironmentArn"]


def test_multi_node_job_is_refused_for_a_spot_only_queue(
    moto_endpoint, tmp_path, monkeypatch, capsys
):
    """AWS Batch does not run multi-node parallel jobs on Spot: submit says so in one line,
    before a job that would never start is queued; a queue with EC2 capacity takes it."""
    import boto3

    from mlt_project.scripts import batch as batch_script

    templates = Path(__file__).resolve().parent.parent / "template_configs"
    shutil.copytree(templates / "torch-cpu" / "aws", tmp_path / "aws")
    shutil.copy(templates / "project" / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    for name, value in {**FAKE_AWS, "AWS_ENDPOINT_URL": moto_endpoint}.items():
        monkeypatch.setenv(name, value)
    settings = {"endpoint_url": moto_endpoint, "region_name": "us-east-1"}
    batch, ec2, iam = (boto3.client(service, **settings) for service in ("batch", "ec2", "iam"))
    spot = managed_environment(batch, ec2, iam, "spot-ce", "SPOT")
    on_demand = managed_environment(batch, ec2, iam, "on-demand-ce", "EC2")
    for queue, environments in (("spot-only", [spot]), ("mixed", [spot, on_demand])):
        batch.create_job_queue(
            jobQueueName=queue,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[
                {"order": i, "computeEnvironment": arn} for i, arn in enumerate(environments, 1)
            ],
        )

    def submit(queue: str, num_nodes: int) -> tuple[int, str]:
        set_params(tmp_path, training__num_nodes=num_nodes)
        assert batch_script.main(["register", "--image", IMAGE]) == 0
        code = batch_script.main(["submit", "--queue", queue])
        return code, capsys.readouterr().err

    code, err = submit("spot-only", 2)
    assert code == 1
    line = one_error_line(err, "'spot-only' has only Spot compute environments (spot-ce)")
    assert "on-demand" in line and "training.num_nodes: 1" in line
    statuses = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
    queued = [
        batch.list_jobs(jobQueue="spot-only", jobStatus=s)["jobSummaryList"] for s in statuses
    ]
    assert queued == [[]] * len(statuses)
    assert submit("mixed", 2)[0] == 0  # one EC2 environment is enough
    assert submit("spot-only", 1)[0] == 0  # single-node jobs run on Spot


# --- the project guide's AWS setup ---------------------------------------------------------


def test_readme_gives_the_policies_in_aws_iam_and_all_aws_files_parse():
    templates = Path(__file__).resolve().parent.parent / "template_configs"
    policies = {
        path.name: json.loads(path.read_text())
        for path in (templates / "project" / "aws").rglob("*.json")
    }
    assert {"ci-role-policy.json", "job-role-policy.json"} <= set(policies)
    for variant in VARIANTS:
        for name in ("batch-job.json", "batch-job-multinode.json"):
            json.loads((templates / f"torch-{variant}" / "aws" / name).read_text())
    readme = (templates / "project" / "PROJECT.md").read_text()
    shown = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", readme, re.DOTALL)]
    assert shown == [policies["job-role-policy.json"], policies["ci-role-policy.json"]]
    for name in ("job-role-policy.json", "ci-role-policy.json", "job-trust-policy.json"):
        assert f"aws/iam/{name}" in readme


def containers(definition: dict) -> list[dict]:
    if definition["type"] == "multinode":
        return [n["container"] for n in definition["nodeProperties"]["nodeRangeProperties"]]
    return [definition["containerProperties"]]


@pytest.mark.parametrize("name", ["batch-job.json", "batch-job-multinode.json"])
def test_job_definitions_of_the_variants_differ_only_in_the_gpus(name):
    """cu128 reserves GPUs; cpu, whose image has no CUDA, reserves none and is otherwise equal."""
    templates = Path(__file__).resolve().parent.parent / "template_configs"
    cu128, cpu = (
        json.loads((templates / f"torch-{v}" / "aws" / name).read_text()) for v in ("cu128", "cpu")
    )
    for container in containers(cu128):
        gpus = [r for r in container["resourceRequirements"] if r["type"] == "GPU"]
        assert len(gpus) == 1 and int(gpus[0]["value"]) >= 1
        container["resourceRequirements"].remove(gpus[0])
    for container in containers(cpu):
        assert [r["type"] for r in container["resourceRequirements"]] == ["VCPU", "MEMORY"]
    assert cpu == cu128


@pytest.mark.parametrize("variant", VARIANTS)
def test_multi_node_request_takes_num_nodes_from_params_and_the_image(monkeypatch, variant):
    from mlt_project.scripts.batch import job_definition

    templates = Path(__file__).resolve().parent.parent / "template_configs"
    monkeypatch.chdir(templates / f"torch-{variant}")  # where aws/batch-job*.json are
    monkeypatch.delenv("DVC_S3_URI", raising=False)
    # The old name reaches the job as the new one.
    monkeypatch.setenv("DVC_S3_BUCKET_NAME", "dvc-bucket")
    request = job_definition(3, IMAGE, "arn:aws:iam::123456789012:role/job")
    assert request["type"] == "multinode"
    assert request["nodeProperties"]["numNodes"] == 3
    (nodes,) = request["nodeProperties"]["nodeRangeProperties"]
    assert nodes["container"]["image"] == IMAGE
    assert nodes["container"]["jobRoleArn"] == "arn:aws:iam::123456789012:role/job"
    assert {"name": "DVC_S3_URI", "value": "s3://dvc-bucket/mlt-project"} in nodes["container"][
        "environment"
    ]
    single = job_definition(1, IMAGE, None)
    assert single["type"] == "container" and "jobRoleArn" not in single["containerProperties"]
