"""The serving deployments' JSON (aws/sagemaker-*.json, aws/ecs-task-definition.json) and their IAM
policies (aws/iam/), as bootstrap writes them: read as a user fills in the placeholders, then sent
to the moto server on 127.0.0.1, which takes SageMaker's CreateModel, CreateEndpointConfig and
CreateEndpoint, ECS's RegisterTaskDefinition and IAM's CreateRole and PutRolePolicy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import botocore.session
import pytest

PLACEHOLDERS = {
    "ACCOUNT_ID": "123456789012",
    "REGION": "us-east-1",
    "RELEASE_BUCKET": "releases",
    "VERSION_DASHED": "0-1-0",
    "VERSION": "0.1.0",
    "SERVE_IMAGE_URI": "123456789012.dkr.ecr.us-east-1.amazonaws.com/cats:abc123-serve",
}
VARIANTS = ("cpu", "cu128")
# Capitals that are values, not placeholders: AWS's enums and the variables the task sets.
WORDS = {
    "LINUX",
    "X86_64",
    "FARGATE",
    "EC2",
    "GPU",
    "CMD",
    "AWS_DEFAULT_REGION",
    "MODEL_RELEASE_S3_URI",
}


@pytest.fixture(scope="module")
def baked(tmp_path_factory) -> dict[str, Path]:
    import bootstrap

    projects = {}
    for variant in VARIANTS:
        target = tmp_path_factory.mktemp(f"aws-{variant}") / "cats"
        target.mkdir()
        assert bootstrap.main(["--target", str(target), "--torch", variant]) == 0
        projects[variant] = target
    return projects


def filled(path: Path) -> dict:
    """The file with its placeholders replaced, as PROJECT.md's steps do (longest first)."""
    text = path.read_text()
    found = set(re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", text)) - WORDS
    assert found <= set(PLACEHOLDERS), found - set(PLACEHOLDERS)
    for name in sorted(PLACEHOLDERS, key=len, reverse=True):
        text = text.replace(name, PLACEHOLDERS[name])
    return json.loads(text)


def client(endpoint: str, service: str):
    return botocore.session.get_session().create_client(
        service, endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip


def test_the_files_say_what_the_server_needs(baked):
    for variant, project in baked.items():
        aws = project / "aws"
        model = filled(aws / "sagemaker-model.json")
        source = model["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]
        # The release's folder, uncompressed, so SageMaker copies it whole into /opt/ml/model.
        assert source == {
            "S3Uri": "s3://releases/models/cats/0.1.0/",
            "S3DataType": "S3Prefix",
            "CompressionType": "None",
        }
        config = filled(aws / "sagemaker-endpoint-config.json")
        (production,) = config["ProductionVariants"]
        assert production["ModelName"] == model["ModelName"]
        assert production["InstanceType"].startswith("ml.g" if variant == "cu128" else "ml.c")
        task = filled(aws / "ecs-task-definition.json")
        (container,) = task["containerDefinitions"]
        assert container["command"] == ["serve", "--stage", "production"]
        assert container["portMappings"] == [{"containerPort": 8080, "protocol": "tcp"}]
        assert container["stopTimeout"] <= 30  # past the server's 25 s graceful shutdown
        assert "/ping" in " ".join(container["healthCheck"]["command"])
        environment = {e["name"]: e["value"] for e in container["environment"]}
        assert environment["MODEL_RELEASE_S3_URI"] == "s3://releases/models/cats"
        gpus = container.get("resourceRequirements", [])
        assert gpus == ([{"type": "GPU", "value": "1"}] if variant == "cu128" else [])
        assert task["requiresCompatibilities"] == (["EC2"] if variant == "cu128" else ["FARGATE"])
    # The serving roles read the releases and nothing else of S3.
    for name in ("sagemaker-role-policy.json", "serve-task-role-policy.json"):
        policy = filled(baked["cpu"] / "aws" / "iam" / name)
        s3 = [
            (statement["Action"], statement["Resource"])
            for statement in policy["Statement"]
            if "s3:" in json.dumps(statement["Action"])
        ]
        assert s3 == [
            ("s3:ListBucket", "arn:aws:s3:::releases"),
            ("s3:GetObject", "arn:aws:s3:::releases/models/cats/*"),
        ], name


def test_sagemaker_endpoint_and_ecs_task_are_accepted_by_the_apis(baked, moto_endpoint):
    iam = client(moto_endpoint, "iam")
    sagemaker = client(moto_endpoint, "sagemaker")
    ecs = client(moto_endpoint, "ecs")
    iam_folder = baked["cpu"] / "aws" / "iam"
    roles = {
        "cats-sagemaker": ("sagemaker-trust-policy.json", "sagemaker-role-policy.json"),
        "cats-serve-task": ("job-trust-policy.json", "serve-task-role-policy.json"),
    }
    for role, (trust, policy) in roles.items():
        iam.create_role(
            RoleName=role, AssumeRolePolicyDocument=json.dumps(filled(iam_folder / trust))
        )
        iam.put_role_policy(
            RoleName=role,
            PolicyName="serve",
            PolicyDocument=json.dumps(filled(iam_folder / policy)),
        )
    trusted = iam.get_role(RoleName="cats-sagemaker")["Role"]["AssumeRolePolicyDocument"]
    assert trusted["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}

    model = filled(baked["cpu"] / "aws" / "sagemaker-model.json")
    assert model["ExecutionRoleArn"] == "arn:aws:iam::123456789012:role/cats-sagemaker"
    sagemaker.create_model(**model)
    described = sagemaker.describe_model(ModelName=model["ModelName"])["PrimaryContainer"]
    assert described["ModelDataSource"] == model["PrimaryContainer"]["ModelDataSource"]
    for variant, project in baked.items():
        config = filled(project / "aws" / "sagemaker-endpoint-config.json")
        config["EndpointConfigName"] += f"-{variant}"
        sagemaker.create_endpoint_config(**config)
        name = f"cats-{variant}"
        sagemaker.create_endpoint(
            EndpointName=name, EndpointConfigName=config["EndpointConfigName"]
        )
        assert sagemaker.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"

        task = filled(project / "aws" / "ecs-task-definition.json")
        registered = ecs.register_task_definition(**task)["taskDefinition"]
        assert registered["family"] == "cats-serve"
        assert registered["taskRoleArn"].endswith(":role/cats-serve-task")
        assert registered["containerDefinitions"][0]["image"] == PLACEHOLDERS["SERVE_IMAGE_URI"]
