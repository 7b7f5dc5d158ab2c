"""The generated project's settings: .env loading, the S3 settings and their old names, and the
release file names that release/dvc.yaml spells too."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from helpers import REPO
from mlt_project.base import env
from mlt_project.base.errors import PipelineError
from mlt_project.deploy.aws import settings as aws
from mlt_project.serve.onnx_runtime import INFO_FILE, MODEL_FILE

OLD_NAMES = ("DVC_S3_BUCKET_NAME", "MODEL_RELEASE_S3_BUCKET", "MODEL_RELEASE_S3_PREFIX")


@pytest.fixture(autouse=True)
def no_s3_settings(monkeypatch):
    for name in (aws.DVC_S3_URI, aws.MODEL_RELEASE_S3_URI, aws.CHECKPOINT_S3_URI, *OLD_NAMES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(aws, "_warned", set())


def test_dot_env_fills_in_what_the_environment_does_not_set(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_RELEASE_S3_URI", "s3://from-environment/models")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    dot_env = tmp_path / ".env"
    dot_env.write_text("MODEL_RELEASE_S3_URI=s3://from-file/models\nAWS_ACCESS_KEY_ID=AKIDFILE\n")
    assert env.load_env(dot_env) == {"AWS_ACCESS_KEY_ID"}
    assert env.from_file == {"AWS_ACCESS_KEY_ID"}
    where = aws.s3_location(aws.MODEL_RELEASE_S3_URI, "releases")
    assert (where.bucket, where.prefix) == ("from-environment", "models")
    assert where.uri("0.1.0", "manifest.json") == "s3://from-environment/models/0.1.0/manifest.json"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")  # load_env set it in os.environ


def test_old_setting_names_still_work_with_one_warning(monkeypatch, caplog):
    monkeypatch.setenv("DVC_S3_BUCKET_NAME", "dvc-bucket")
    monkeypatch.setenv("MODEL_RELEASE_S3_BUCKET", "release-bucket")
    with caplog.at_level(logging.WARNING):
        assert aws.s3_uri(aws.DVC_S3_URI) == "s3://dvc-bucket/mlt-project"
        assert aws.s3_uri(aws.DVC_S3_URI) == "s3://dvc-bucket/mlt-project"
        assert aws.s3_uri(aws.MODEL_RELEASE_S3_URI) == "s3://release-bucket/models/mlt-project"
    assert [r.getMessage() for r in caplog.records] == [
        "DVC_S3_BUCKET_NAME is deprecated: set DVC_S3_URI=s3://dvc-bucket/mlt-project instead "
        "(.env.example)",
        "MODEL_RELEASE_S3_BUCKET/_PREFIX is deprecated: set "
        "MODEL_RELEASE_S3_URI=s3://release-bucket/models/mlt-project instead (.env.example)",
    ]
    monkeypatch.setenv("MODEL_RELEASE_S3_PREFIX", "")
    assert aws.s3_uri(aws.MODEL_RELEASE_S3_URI) == "s3://release-bucket/mlt-project"
    # The new name, when set, wins over the old ones.
    monkeypatch.setenv("DVC_S3_URI", "s3://new/place")
    assert aws.s3_uri(aws.DVC_S3_URI) == "s3://new/place"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "MODEL_RELEASE_S3_URI is not set (releases): set it in .env"),
        ("my-bucket/models", "MODEL_RELEASE_S3_URI='my-bucket/models' is not s3://bucket[/prefix]"),
        ("s3:///models", "MODEL_RELEASE_S3_URI='s3:///models' is not s3://bucket[/prefix]"),
    ],
)
def test_a_bad_s3_setting_says_which_and_how(monkeypatch, value, message):
    monkeypatch.setenv("MODEL_RELEASE_S3_URI", value)
    with pytest.raises(PipelineError) as error:
        aws.s3_location(aws.MODEL_RELEASE_S3_URI, "releases")
    assert str(error.value).startswith(message)
    assert aws.s3_location(aws.CHECKPOINT_S3_URI, "checkpoints", required=False) is None


def test_release_dvc_yaml_names_the_release_files_as_python_does():
    pipeline = yaml.safe_load((REPO / "template_configs/project/release/dvc.yaml").read_text())
    outs = [next(iter(out)) for out in pipeline["stages"]["export_onnx"]["outs"]]
    assert outs == [f"${{paths.release}}/{MODEL_FILE}", f"${{paths.release}}/{INFO_FILE}"]


def test_params_yaml_is_written_as_dvc_writes_it_back(tmp_path):
    """`dvc exp run -S key=value` rewrites params.yaml through DVC's YAML writer. The template's
    file is in that form already: set every key to its own value, as -S would (a value parsed
    anew), and not a byte changes, so an experiment's diff is its own change only. And what DVC
    writes (1e-05 for a small float, empty for none) reads back as the same values."""
    from dvc.utils.serialize import modify_yaml

    from mlt_project.base.config import load_config

    template = REPO / "template_configs" / "project" / "params.yaml"
    params = tmp_path / "params.yaml"
    params.write_bytes(template.read_bytes())

    def renew(mapping):
        for key, value in mapping.items():
            if isinstance(value, dict):
                renew(value)
            else:
                mapping[key] = json.loads(json.dumps(value))

    with modify_yaml(params) as data:
        renew(data)
    assert params.read_text() == template.read_text()
    with modify_yaml(params) as data:
        data["release"]["parity_atol"] = 2e-5
    assert "parity_atol: 2e-05 " in params.read_text()
    assert load_config(params).release.parity_atol == 2e-5
