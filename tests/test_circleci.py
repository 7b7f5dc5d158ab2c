"""The generated CircleCI config: schema, job order, OIDC, and that every command it calls exists."""

from __future__ import annotations

import json
import re
import stat
import sys
from pathlib import Path

import pytest
import yaml

from helpers import MODULE, VENV_BIN, run

# --- CircleCI --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def circleci(trained_project) -> tuple[Path, dict]:
    path = trained_project.root / ".circleci" / "config.yml"
    return path, yaml.safe_load(path.read_text())


@pytest.mark.e2e
def test_circleci_config_validates_against_the_schema(circleci):
    path, config = circleci
    assert config["version"] == 2.1
    result = run(
        VENV_BIN / "check-jsonschema", "--builtin-schema", "vendor.circle-ci", path,
        cwd=path.parent, check=False,
    )  # fmt: skip
    print(f"check-jsonschema vendor.circle-ci: {result.stdout.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.e2e
def test_circleci_jobs_run_in_order_and_deploy_only_from_main(circleci):
    _, config = circleci
    assert set(config["jobs"]) == {"test", "train", "build-and-push", "deploy"}
    (workflow,) = config["workflows"].values()
    entries = {}
    for item in workflow["jobs"]:
        name, options = (item, {}) if isinstance(item, str) else next(iter(item.items()))
        entries[name] = options
    requires = {name: options.get("requires", []) for name, options in entries.items()}
    assert requires == {
        "test": [],
        "train": ["test"],
        "build-and-push": ["train"],
        "deploy": ["build-and-push"],
    }
    branches = {
        name: options.get("filters", {}).get("branches") for name, options in entries.items()
    }
    assert branches == {
        "test": None,
        "train": None,
        "build-and-push": None,
        "deploy": {"only": "main"},
    }
    # Only the jobs that need AWS get the context (and with it the OIDC token).
    contexts = {name for name, options in entries.items() if options.get("context")}
    assert contexts == {"train", "build-and-push", "deploy"}


@pytest.mark.e2e
def test_circleci_uses_oidc_and_holds_no_keys(circleci):
    path, config = circleci
    text = path.read_text()
    assert "CIRCLE_OIDC_TOKEN" in text and "AWS_WEB_IDENTITY_TOKEN_FILE" in text
    assert not re.search(r"AKIA[0-9A-Z]{16}|AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY", text)
    jobs = config["jobs"]
    assert {"store_artifacts": {"path": "evaluation_results.json"}} in jobs["train"]["steps"]
    install = config["commands"]["install"]["steps"]
    cache_keys = next(step["restore_cache"]["keys"] for step in install if "restore_cache" in step)
    assert any('{{ checksum "poetry.lock" }}' in key for key in cache_keys)
    assert any("git submodule update --init" in json.dumps(step) for step in install)


@pytest.mark.e2e
def test_every_command_circleci_calls_exists_in_the_project(circleci, trained_project):
    _, config = circleci
    root = trained_project.root
    commands = [
        line.strip()
        for section in (config["jobs"], config["commands"])
        for body in section.values()
        for step in body["steps"]
        if isinstance(step, dict) and "run" in step
        for line in step["run"]["command"].splitlines()
    ]
    pyproject = (root / "pyproject.toml").read_text()
    checked = set()
    for line in commands:
        for module, sub in re.findall(r"python -m ([\w.]+)(?: (\w+))?", line):
            args = ["-m", module, *([sub] if sub else []), "--help"]
            found = run(sys.executable, *args, cwd=root, check=False, PYTHONPATH=str(root / "src"))
            assert found.returncode == 0, line
            checked.add(f"{module} {sub}")
        for tool in re.findall(r"poetry run (\w+)", line):
            if tool != "python":
                assert re.search(rf'(?m)^\s*"?{tool}(\[\w+\])?\s*>?=', pyproject), tool
                checked.add(tool)
        for script in re.findall(r"(?:^|\s)((?:\.ml-aws-template|docker)/[\w./-]+)", line):
            path = root / script
            assert path.is_file(), script
            checked.add(script)
            if script.endswith(".sh"):
                assert path.stat().st_mode & stat.S_IXUSR, script
        if "bootstrap.py --check" in line:
            helped = run("python3", ".ml-aws-template/bootstrap.py", "--help", cwd=root)
            assert "--check" in helped.stdout
    assert {f"{MODULE}.scripts.batch register", f"{MODULE}.scripts.batch submit"} <= checked
    assert {"dvc", "ruff", "pytest", "docker/build_and_push.sh"} <= checked
