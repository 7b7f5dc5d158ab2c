"""Unit tests for bootstrap.py: names, strict rendering, the plan, cleanup, the target, the record."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import bootstrap
from helpers import GIT_IDENTITY, one_bootstrap_error

ROOT = Path(bootstrap.__file__).resolve().parent
SCRIPT = ROOT / "bootstrap.py"
TOKENS = (b"mlt_project", b"mlt-project")
ACTIONS = {"create", "skip", "conflict", "overwrite", "keep", "merged"}
# Every file a bake writes with the default options (--torch cu128), written out by hand: a
# template file added, moved or lost must show up here. {module} is the module name.
EXPECTED_TREE = (
    ".circleci/config.yml",
    ".dockerignore",
    ".dvc/.gitignore",
    ".dvc/config",
    ".dvcignore",
    ".env.example",
    ".gitignore",
    ".ml-template.json",
    "Dockerfile",
    "Dockerfile.serve",
    "PROJECT.md",
    "README.md",
    "aws/batch-job-multinode.json",
    "aws/batch-job.json",
    "aws/ecs-task-definition.json",
    "aws/iam/ci-role-policy.json",
    "aws/iam/ci-trust-policy.json",
    "aws/iam/job-role-policy.json",
    "aws/iam/job-trust-policy.json",
    "aws/iam/sagemaker-role-policy.json",
    "aws/iam/sagemaker-trust-policy.json",
    "aws/iam/serve-task-role-policy.json",
    "aws/sagemaker-endpoint-config.json",
    "aws/sagemaker-model.json",
    "docker/build_and_push.sh",
    "docker/entrypoint.sh",
    "docker/images.env",
    "docker/serve.sh",
    "dvc.yaml",
    "params.yaml",
    "poetry.toml",
    "pyproject.toml",
    "release/dvc.yaml",
    "requirements-serve.txt",
    "src/{module}/__init__.py",
    "src/{module}/base/__init__.py",
    "src/{module}/base/cli.py",
    "src/{module}/base/config.py",
    "src/{module}/base/env.py",
    "src/{module}/base/errors.py",
    "src/{module}/base/fileio.py",
    "src/{module}/base/logs.py",
    "src/{module}/base/schema.py",
    "src/{module}/base/tasks.py",
    "src/{module}/data/__init__.py",
    "src/{module}/data/images.py",
    "src/{module}/data/labels.py",
    "src/{module}/data/preprocess.py",
    "src/{module}/data/report.py",
    "src/{module}/data/sample_data.py",
    "src/{module}/data/splits.py",
    "src/{module}/data/store.py",
    "src/{module}/deploy/__init__.py",
    "src/{module}/deploy/aws/__init__.py",
    "src/{module}/deploy/aws/batch.py",
    "src/{module}/deploy/aws/cluster.py",
    "src/{module}/deploy/aws/ecr.py",
    "src/{module}/deploy/aws/s3.py",
    "src/{module}/deploy/aws/settings.py",
    "src/{module}/deploy/sweep.py",
    "src/{module}/model/__init__.py",
    "src/{module}/model/augment.py",
    "src/{module}/model/build.py",
    "src/{module}/model/checkpoint.py",
    "src/{module}/model/ema.py",
    "src/{module}/model/inference.py",
    "src/{module}/model/mix.py",
    "src/{module}/model/nets.py",
    "src/{module}/model/optim.py",
    "src/{module}/model/tasks.py",
    "src/{module}/model/tensor_files.py",
    "src/{module}/release/__init__.py",
    "src/{module}/release/dvcrepo.py",
    "src/{module}/release/export.py",
    "src/{module}/release/gitrepo.py",
    "src/{module}/release/promote.py",
    "src/{module}/release/publish.py",
    "src/{module}/release/stages.py",
    "src/{module}/release/sweep.py",
    "src/{module}/release/sweep_child.py",
    "src/{module}/release/tag.py",
    "src/{module}/release/upload.py",
    "src/{module}/release/version.py",
    "src/{module}/scripts/__init__.py",
    "src/{module}/scripts/batch.py",
    "src/{module}/scripts/checkpoint_sync.py",
    "src/{module}/scripts/distributed.py",
    "src/{module}/scripts/dvc_remote.py",
    "src/{module}/scripts/export_and_benchmark.py",
    "src/{module}/scripts/register_model.py",
    "src/{module}/scripts/release.py",
    "src/{module}/scripts/serve_requirements.py",
    "src/{module}/scripts/sweep.py",
    "src/{module}/serve/__init__.py",
    "src/{module}/serve/__main__.py",
    "src/{module}/serve/fetch.py",
    "src/{module}/serve/onnx_export.py",
    "src/{module}/serve/onnx_runtime.py",
    "src/{module}/serve/predict.py",
    "src/{module}/serve/server.py",
    "src/{module}/training/__init__.py",
    "src/{module}/training/callbacks.py",
    "src/{module}/training/datamodule.py",
    "src/{module}/training/evaluate.py",
    "src/{module}/training/factories.py",
    "src/{module}/training/lr_find.py",
    "src/{module}/training/module.py",
    "src/{module}/training/resumable.py",
    "src/{module}/training/resume.py",
    "src/{module}/training/stream.py",
    "src/{module}/training/train.py",
    "tests/conftest.py",
    "tests/test_config.py",
    "tests/test_datamodule.py",
    "tests/test_model.py",
    "tests/test_preprocess.py",
    "tests/test_release.py",
    "tests/test_serve_requirements.py",
    "tests/test_server.py",
    "tests/test_tasks.py",
    "tests/test_train.py",
    "weights/README.md",
)


@pytest.fixture(autouse=True)
def isolated_git(tmp_path_factory, monkeypatch):
    """No user or system git config leaks in; commits work without one."""
    home = tmp_path_factory.mktemp("home")
    config = home / ".gitconfig"
    config.write_text("[user]\n\tname = Test\n\temail = test@example.com\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CEILING_DIRECTORIES"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_template(tmp_path, monkeypatch):
    """Point bootstrap at a template tree built from {relative path: text or (text, mode)}."""

    def build(files: dict[str, str | tuple[str, int]]) -> Path:
        root = tmp_path / "template"
        for relative, spec in files.items():
            text, mode = spec if isinstance(spec, tuple) else (spec, 0o644)
            path = root / "tpl" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(mode)
        monkeypatch.setattr(bootstrap, "TEMPLATE_DIR", root)
        monkeypatch.setattr(bootstrap, "MANIFEST", (("tpl", "."),))
        return root

    return build


# --- helpers -------------------------------------------------------------------------------


def bake(target: Path, *args: str) -> int:
    return bootstrap.main(["--target", str(target), *args])


def snapshot(root: Path, mtimes: bool = True) -> dict[str, tuple]:
    """Every path under root with its kind, bytes, permission bits and (optionally) mtime."""
    result = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        relative = path.relative_to(root).as_posix()
        if stat.S_ISDIR(st.st_mode):
            result[relative] = ("dir", None, stat.S_IMODE(st.st_mode), None)
        else:
            mtime = st.st_mtime_ns if mtimes else None
            result[relative] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode), mtime)
    return result


def make_file(path: Path) -> Path:
    path.write_text("x")
    return path


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def plan_of(out: str) -> dict[str, str]:
    """{path: action} from the plan lines that main() prints."""
    plan = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("  ") and len(parts) == 2 and parts[0] in ACTIONS:
            plan[parts[1]] = parts[0]
    return plan


# The files of EXPECTED_TREE that each --torch variant has its own version of, in
# template_configs/torch-{variant}/; every other file is shared (template_configs/project/...).
VARIANT_FILES = {
    "docker/images.env",
    "aws/batch-job.json",
    "aws/batch-job-multinode.json",
    "aws/ecs-task-definition.json",
    "aws/sagemaker-endpoint-config.json",
    "pyproject.toml",
    "requirements-serve.txt",
}


def expected_files(torch: str, module: str) -> set[str]:
    """EXPECTED_TREE for a module name; both --torch variants write the same files (neither
    ships a lock: Poetry writes one on the first install)."""
    return {path.format(module=module) for path in EXPECTED_TREE}


def run_script(*args: str, cwd: Path, script: Path = SCRIPT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True
    )


# --- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "project", "module"),
    [
        ("My.Project_x", "my-project-x", "my_project_x"),
        ("demo", "demo", "demo"),
        ("Cats-vs.Dogs_2", "cats-vs-dogs-2", "cats_vs_dogs_2"),
        ("a" * 64, "a" * 64, "a" * 64),
    ],
)
def test_derive_names_normalises(raw, project, module):
    assert bootstrap.derive_names(raw) == {"project_name": project, "module_name": module}


def test_names_come_from_the_target_folder(tmp_path, capsys):
    target = tmp_path / "My.Project_x"
    target.mkdir()
    assert bake(target, "--torch", "cpu") == 0
    out = capsys.readouterr().out
    assert "project 'my-project-x' (module my_project_x)" in out
    assert (target / "src" / "my_project_x" / "__init__.py").is_file()
    assert 'name = "my-project-x"' in (target / "pyproject.toml").read_text()
    answers = json.loads((target / bootstrap.RECORD_FILE).read_text())["answers"]
    assert answers["project_name"] == "my-project-x"
    assert answers["module_name"] == "my_project_x"


def test_name_option_overrides_the_folder(tmp_path, capsys):
    target = tmp_path / "some-folder"
    target.mkdir()
    assert bake(target, "--name", "Fancy.Name", "--torch", "cpu") == 0
    assert "project 'fancy-name' (module fancy_name)" in capsys.readouterr().out
    assert (target / "src" / "fancy_name").is_dir()
    assert not (target / "src" / "some_folder").exists()
    assert 'name = "fancy-name"' in (target / "pyproject.toml").read_text()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("class", "is a Python keyword"),
        ("match", "is a Python keyword"),
        ("json", "would shadow"),
        ("Json", "would shadow"),
        ("torch", "would shadow"),
        ("lightning", "would shadow"),
        ("dvc", "would shadow"),
        ("data", "would shadow"),
        ("tests", "would shadow"),
        ("google", "would shadow"),
        ("Google", "would shadow"),
        ("cuda", "would shadow"),
        ("nvidia", "would shadow"),
        ("my project", "is not usable"),
        ("it's", "is not usable"),
        ('say"hi"', "is not usable"),
        ("two\nlines", "is not usable"),
        ("$(touch pwned)", "is not usable"),
        ("../escape", "is not usable"),
        ("1project", "is not usable"),
        ("double--dash", "is not usable"),
        ("a" * 65, "is not usable"),
        ("mlt-project-x", "contains the template's own placeholder"),
        ("MLT_Project", "contains the template's own placeholder"),
        ("mlt.project", "contains the template's own placeholder"),
    ],
)
def test_bad_names_are_rejected(tmp_path, capsys, name, message):
    target = tmp_path / "host"
    target.mkdir()
    assert bake(target, "--name", name) == 1
    out, err = capsys.readouterr()
    assert message in one_bootstrap_error(err)
    assert out == ""
    assert list(target.iterdir()) == []
    assert not (tmp_path / "pwned").exists()


def test_namespace_packages_of_the_installed_stack_are_reserved(tmp_path, capsys):
    # This venv holds a baked project's dependencies (requirements-dev.txt): every folder in
    # site-packages without __init__.py that a module name could hide is a namespace package.
    site_packages = [Path(p) for p in sys.path if Path(p).name == "site-packages"]
    found = {
        folder.name
        for where in site_packages
        for folder in where.iterdir()
        if folder.is_dir()
        and folder.name.isidentifier()
        and folder.name != "__pycache__"
        and not (folder / "__init__.py").exists()
    }
    assert "google" in found, f"protobuf is not installed in {site_packages}: not the test venv?"
    missing = sorted(found - bootstrap.NAMESPACE_PACKAGES)
    assert not missing, f"namespace packages bootstrap accepts as names: {missing}"
    for name in sorted(found):
        target = tmp_path / name
        target.mkdir()
        assert bake(target, "--name", name) == 1
        assert "would shadow" in one_bootstrap_error(capsys.readouterr().err)
        assert list(target.iterdir()) == []


def test_bad_folder_name_suggests_a_name(tmp_path, capsys):
    target = tmp_path / "My Project"
    target.mkdir()
    assert bake(target) == 1
    line = one_bootstrap_error(capsys.readouterr().err)
    assert "'My Project' is not usable" in line
    assert "pass --name my-project" in line
    assert list(target.iterdir()) == []


# --- strict rendering ----------------------------------------------------------------------


def test_render_replaces_whole_tokens_and_records_them():
    values = {"project_name": "cats", "module_name": "cats_mod"}
    used: set[str] = set()
    rendered = bootstrap.render(b"mlt-project/mlt_project mltproject", values, used)
    assert rendered == b"cats/cats_mod mltproject"
    assert used == {"project_name", "module_name"}


def test_render_fails_on_a_token_without_value():
    with pytest.raises(bootstrap.BootstrapError, match="module_name"):
        bootstrap.render(b"import mlt_project", {"project_name": "cats"}, set())


def test_render_tree_fails_on_an_unused_value(fake_template):
    fake_template({"README.md": "# mlt-project\n"})
    values = {"project_name": "cats", "module_name": "cats"}
    with pytest.raises(bootstrap.BootstrapError, match="module_name"):
        bootstrap.render_tree(values, "cpu")
    # The same tree renders once every value has a use.
    fake_template({"mlt_project/__init__.py": ""})
    assert set(bootstrap.render_tree(values, "cpu")) == {
        Path("README.md"),
        Path("cats/__init__.py"),
    }


def test_render_tree_fails_on_a_placeholder_left_behind(fake_template):
    fake_template({"README.md": "# mlt-project\n", "mlt_project/x.py": ""})
    values = {"project_name": "mlt-project-x", "module_name": "cats"}
    with pytest.raises(bootstrap.BootstrapError, match="placeholder left"):
        bootstrap.render_tree(values, "cpu")


@pytest.mark.parametrize("torch", ["cpu", "cu128"])
def test_each_variant_takes_its_deploy_files_and_pyproject_from_its_own_folder(torch):
    sources = {dest.as_posix(): source for source, dest in bootstrap.template_files(torch)}
    variant_folder = ROOT / "template_configs" / f"torch-{torch}"
    from_variant = {d for d, s in sources.items() if s.is_relative_to(variant_folder)}
    assert from_variant == VARIANT_FILES
    other = ROOT / "template_configs" / f"torch-{'cu128' if torch == 'cpu' else 'cpu'}"
    assert not any(s.is_relative_to(other) for s in sources.values())


@pytest.mark.parametrize("torch", ["cpu", "cu128"])
def test_real_templates_render_completely(tmp_path, capsys, torch):
    target = tmp_path / "cats"
    target.mkdir()
    assert bake(target, "--torch", torch) == 0
    written = files_under(target)
    assert written == expected_files(torch, "cats")
    for path in target.rglob("*"):
        relative = path.relative_to(target).as_posix().encode()
        assert not any(token in relative for token in TOKENS), path
        if path.is_file():
            content = path.read_bytes()
            assert not any(token in content for token in TOKENS), path
    assert (target / "src" / "cats" / "__init__.py").is_file()
    assert not (target / "src" / "mlt_project").exists()
    assert "python -m cats.train" in (target / "dvc.yaml").read_text()
    for dotfile in (".gitignore", ".dvcignore", ".dvc/.gitignore", ".dvc/config"):
        assert dotfile in written
    assert not any(part.startswith("dot-") for p in written for part in p.split("/"))
    assert "poetry.lock" not in written  # Poetry locks on the first install
    plan = plan_of(capsys.readouterr().out)
    assert plan == dict.fromkeys(written, "create")


def test_dotfiles_are_renamed(tmp_path, fake_template, capsys):
    fake_template(
        {
            "dot-gitignore": "mlt-project\n",
            "dot-dvc/dot-gitignore": "/config.local\n",
            "dot-dvc/config": "[core]\n",
            "mlt_project/dot-env": "",
            "notdot-x": "",
        }
    )
    target = tmp_path / "cats"
    target.mkdir()
    assert bake(target) == 0
    assert files_under(target) == {
        ".gitignore",
        ".dvc/.gitignore",
        ".dvc/config",
        "cats/.env",
        "notdot-x",
        bootstrap.RECORD_FILE,
    }
    assert (
        target / ".gitignore"
    ).read_bytes() == bootstrap.BLOCK_BEGIN + b"cats\n" + bootstrap.BLOCK_END


def test_ignored_names_are_not_rendered(tmp_path, fake_template, capsys):
    fake_template(
        {
            "mlt_project/__init__.py": "NAME = 'mlt-project'\n",
            "mlt_project/__pycache__/x.pyc": "mlt_project",
            ".DS_Store": "",
        }
    )
    target = tmp_path / "cats"
    target.mkdir()
    assert bake(target) == 0
    assert files_under(target) == {"cats/__init__.py", bootstrap.RECORD_FILE}


def test_executable_bit_is_carried_over(tmp_path, fake_template, capsys):
    fake_template(
        {"run.sh": ("#!/bin/sh\necho mlt-project\n", 0o755), "mlt_project/a.py": ("", 0o600)}
    )
    values = {"project_name": "cats", "module_name": "cats"}
    rendered = bootstrap.render_tree(values, "cpu")
    assert rendered[Path("run.sh")][1] == 0o755
    assert rendered[Path("cats/a.py")][1] == 0o644
    target = tmp_path / "cats"
    target.mkdir()
    assert bake(target) == 0
    assert stat.S_IMODE((target / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "cats" / "a.py").stat().st_mode) == 0o644


# --- create / skip / conflict --------------------------------------------------------------


def test_second_identical_run_only_skips(tmp_path, capsys):
    target = tmp_path / "cats"
    target.mkdir()
    assert bake(target, "--torch", "cpu") == 0
    capsys.readouterr()
    before = snapshot(target)
    assert bake(target, "--torch", "cpu") == 0
    plan = plan_of(capsys.readouterr().out)
    assert set(plan) == files_under(target)
    assert set(plan.values()) == {"skip"}
    assert snapshot(target) == before


def test_changed_file_is_a_conflict_and_nothing_is_written(tmp_path, capsys):
    target = tmp_path / "cats"
    target.mkdir()
    assert bake(target, "--torch", "cpu") == 0
    (target / "params.yaml").write_bytes(b"mine: 1\n")
    (target / "dvc.yaml").unlink()
    shutil.rmtree(target / "tests")
    capsys.readouterr()
    before = snapshot(target)
    assert bake(target, "--torch", "cpu") == 1
    out, err = capsys.readouterr()
    assert plan_of(out)["params.yaml"] == "conflict"
    assert plan_of(out)["dvc.yaml"] == "create"
    line = one_bootstrap_error(err)
    assert "1 file(s) exist and differ: params.yaml" in line
    assert "--force" in line
    assert "--keep-existing" in line
    assert snapshot(target) == before
    assert not (target / "dvc.yaml").exists()
    assert not (target / "tests").exists()
    assert (target / "params.yaml").read_bytes() == b"mine: 1\n"


def test_force_overwrites_a_changed_file(tmp_path, capsys):
    target = tmp_path / "cats"
    target.mkdir()
    assert bake(target, "--torch", "cpu") == 0
    original = (target / "params.yaml").read_bytes()
    (target / "params.yaml").write_bytes(b"mine: 1\n")
    capsys.readouterr()
    assert bake(target, "--torch", "cpu", "--force") == 0
    plan = plan_of(capsys.readouterr().out)
    assert plan["params.yaml"] == "overwrite"
    assert set(plan.values()) == {"skip", "overwrite"}
    assert (target / "params.yaml").read_bytes() == original


def test_keep_existing_leaves_a_changed_file_and_writes_the_rest(tmp_path, capsys):
    target = tmp_path / "cats"
    target.mkdir()
    assert bake(target, "--torch", "cpu") == 0
    original_dvc = (target / "dvc.yaml").read_bytes()
    (target / "params.yaml").write_bytes(b"mine: 1\n")
    (target / "dvc.yaml").unlink()
    capsys.readouterr()
    assert bake(target, "--torch", "cpu", "--keep-existing") == 0
    out = capsys.readouterr().out
    assert plan_of(out)["params.yaml"] == "keep"
    assert plan_of(out)["dvc.yaml"] == "create"
    assert "Kept your version of params.yaml" in out
    assert (target / "params.yaml").read_bytes() == b"mine: 1\n"
    assert (target / "dvc.yaml").read_bytes() == original_dvc


def test_force_and_keep_existing_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bake(tmp_path, "--force", "--keep-existing")
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: (t / "params.yaml").mkdir(), "params.yaml is a folder where the project writes"),
        (
            lambda t: (t / ".dvc" / "config").mkdir(parents=True),
            ".dvc/config is a folder",
        ),
        (lambda t: (t / "src").write_text("x"), "src is a file where the project needs a folder"),
        (lambda t: (t / ".dvc").write_text("x"), ".dvc is a file where the project needs a folder"),
    ],
    ids=["folder-for-file", "nested-folder-for-file", "file-for-folder", "dotfile-for-folder"],
)
def test_wrong_kind_of_path_is_an_error(tmp_path, capsys, make, message):
    target = tmp_path / "cats"
    target.mkdir()
    make(target)
    before = snapshot(target)
    assert bake(target, "--force") == 1
    assert message in one_bootstrap_error(capsys.readouterr().err)
    assert snapshot(target) == before


# --- the host's own files ------------------------------------------------------------------

HOST_README = "# Our repository\n\nWhat we do.\n"
HOST_GITIGNORE = "notebooks/.ipynb_checkpoints\n*.log"  # no newline at the end
HOST_DVC_CONFIG = "[core]\n    remote = storage\n['remote \"storage\"']\n    url = s3://ours\n"


def test_host_readme_and_gitignore_do_not_block_the_bake(tmp_path, capsys):
    target = tmp_path / "cats"
    target.mkdir()
    (target / "README.md").write_text(HOST_README)
    (target / ".gitignore").write_text(HOST_GITIGNORE)
    (target / ".dockerignore").write_text("secrets/\n")
    (target / ".dvc").mkdir()
    (target / ".dvc" / "config").write_text(HOST_DVC_CONFIG)
    assert bake(target, "--torch", "cpu") == 0
    out = capsys.readouterr().out
    plan = plan_of(out)
    assert plan["README.md"] == "keep"
    assert plan[".dvc/config"] == "keep"
    assert (target / ".dvc" / "config").read_text() == HOST_DVC_CONFIG
    assert plan[".gitignore"] == "merged"
    assert plan[".dockerignore"] == "merged"
    assert plan["PROJECT.md"] == "create"
    assert set(plan.values()) == {"create", "keep", "merged"}
    assert files_under(target) == expected_files("cpu", "cats")
    assert (target / "README.md").read_text() == HOST_README
    assert "See [PROJECT.md](PROJECT.md)" in out
    assert "Appended the template's lines to your .dockerignore, .gitignore" in out
    assert "Kept your version" not in out  # only for --keep-existing
    template_lines = (ROOT / "template_configs" / "project" / "dot-gitignore").read_bytes()
    assert (target / ".gitignore").read_bytes() == (
        HOST_GITIGNORE.encode()
        + b"\n\n"
        + bootstrap.BLOCK_BEGIN
        + template_lines
        + bootstrap.BLOCK_END
    )
    assert "/data/raw/" in (target / ".gitignore").read_text().splitlines()
    assert (target / "PROJECT.md").read_text().startswith("# cats\n")

    # Idempotent: a second bake finds the block and the README, and writes nothing.
    before = snapshot(target)
    assert bake(target, "--torch", "cpu") == 0
    plan = plan_of(capsys.readouterr().out)
    assert set(plan.values()) == {"skip", "keep"}
    assert plan["README.md"] == "keep"
    assert snapshot(target) == before
    # --force overwrites files that differ, never the host's README.
    assert bake(target, "--torch", "cpu", "--force") == 0
    assert plan_of(capsys.readouterr().out)["README.md"] == "keep"
    assert snapshot(target) == before
    # Once the README links the guide, the suggestion stops.
    with (target / "README.md").open("a") as f:
        f.write("\nSee [PROJECT.md](PROJECT.md).\n")
    assert bake(target, "--torch", "cpu") == 0
    assert "Left your README.md" not in capsys.readouterr().out


def test_readme_without_one_points_at_the_guide(tmp_path, capsys):
    target = tmp_path / "cats"
    target.mkdir()
    assert bake(target) == 0
    readme = (target / "README.md").read_text()
    assert readme.startswith("# cats\n") and "[PROJECT.md](PROJECT.md)" in readme
    assert "Left your README.md" not in capsys.readouterr().out


def test_changed_lines_in_the_block_are_a_conflict(tmp_path, capsys):
    target = tmp_path / "cats"
    target.mkdir()
    assert bake(target, "--torch", "cpu") == 0
    gitignore = target / ".gitignore"
    mine = gitignore.read_text().replace("/data/raw/\n", "")
    gitignore.write_text("mine\n" + mine + "also mine\n")
    capsys.readouterr()
    assert bake(target, "--torch", "cpu") == 1
    out, err = capsys.readouterr()
    assert plan_of(out)[".gitignore"] == "conflict"
    assert "exist and differ: .gitignore" in one_bootstrap_error(err)
    assert gitignore.read_text() == "mine\n" + mine + "also mine\n"

    # --keep-existing leaves it; --force puts the template's lines back, the user's stay.
    assert bake(target, "--torch", "cpu", "--keep-existing") == 0
    assert plan_of(capsys.readouterr().out)[".gitignore"] == "keep"
    assert gitignore.read_text() == "mine\n" + mine + "also mine\n"
    assert bake(target, "--torch", "cpu", "--force") == 0
    assert plan_of(capsys.readouterr().out)[".gitignore"] == "overwrite"
    lines = gitignore.read_text().splitlines()
    assert lines[0] == "mine" and lines[-1] == "also mine" and "/data/raw/" in lines


def test_ignore_file_from_an_older_bootstrap_is_left_alone(tmp_path, capsys):
    """An older bootstrap wrote .gitignore whole, without the block: identical is a skip."""
    target = tmp_path / "cats"
    target.mkdir()
    whole = (ROOT / "template_configs" / "project" / "dot-gitignore").read_bytes()
    (target / ".gitignore").write_bytes(whole)
    assert bake(target, "--torch", "cpu") == 0
    assert plan_of(capsys.readouterr().out)[".gitignore"] == "skip"
    assert (target / ".gitignore").read_bytes() == whole


def test_host_file_keeps_its_mode_when_merged(tmp_path, capsys):
    target = tmp_path / "cats"
    target.mkdir()
    (target / ".dvcignore").write_text("/notebooks/\n")
    (target / ".dvcignore").chmod(0o600)
    assert bake(target, "--torch", "cpu") == 0
    assert stat.S_IMODE((target / ".dvcignore").stat().st_mode) == 0o600
    assert (target / ".dvcignore").read_text().startswith("/notebooks/\n\n# >>> ml-aws-template")


def test_render_tree_fails_when_two_roots_write_one_destination(fake_template, monkeypatch):
    root = fake_template({"README.md": "# mlt-project\n", "mlt_project/__init__.py": ""})
    (root / "other").mkdir()
    (root / "other" / "README.md").write_text("# mlt-project, again\n")
    monkeypatch.setattr(bootstrap, "MANIFEST", (("tpl", "."), ("other", ".")))
    values = {"project_name": "cats", "module_name": "cats"}
    with pytest.raises(bootstrap.BootstrapError, match=r"both written to README\.md"):
        bootstrap.render_tree(values, "cpu")
    # The same roots, each with a destination of its own, render.
    monkeypatch.setattr(bootstrap, "MANIFEST", (("tpl", "."), ("other", "docs")))
    assert set(bootstrap.render_tree(values, "cpu")) == {
        Path("README.md"),
        Path("docs/README.md"),
        Path("cats/__init__.py"),
    }


# --- dry run -------------------------------------------------------------------------------


def test_dry_run_on_an_empty_target_writes_nothing(tmp_path, capsys):
    target = tmp_path / "cats"
    target.mkdir()
    assert bake(target, "--torch", "cpu", "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.startswith("Would write project 'cats'")
    assert plan_of(out) == dict.fromkeys(expected_files("cpu", "cats"), "create")
    assert "Next steps" not in out
    assert list(target.iterdir()) == []


def test_dry_run_with_changes_writes_nothing(tmp_path, capsys):
    target = tmp_path / "cats"
    target.mkdir()
    assert bake(target, "--torch", "cpu") == 0
    (target / "params.yaml").write_bytes(b"mine: 1\n")
    (target / "dvc.yaml").unlink()
    capsys.readouterr()
    before = snapshot(target)

    assert bake(target, "--torch", "cpu", "--dry-run") == 1
    out, err = capsys.readouterr()
    assert plan_of(out)["params.yaml"] == "conflict"
    assert "params.yaml" in one_bootstrap_error(err)
    assert snapshot(target) == before

    assert bake(target, "--torch", "cpu", "--dry-run", "--force") == 0
    plan = plan_of(capsys.readouterr().out)
    assert plan["params.yaml"] == "overwrite"
    assert plan["dvc.yaml"] == "create"
    assert snapshot(target) == before


# --- cleanup on failure --------------------------------------------------------------------


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=repr)
@pytest.mark.parametrize(
    "when", ["first", "after-merge", "at-overwrite", "after-overwrite", "last"]
)
def test_failed_write_undoes_only_this_run(tmp_path, monkeypatch, capsys, error, when):
    target = tmp_path / "cats"
    (target / "tests").mkdir(parents=True)
    (target / "tests" / "test_mine.py").write_text("mine\n")
    (target / "src").mkdir()
    (target / "notes.txt").write_text("notes\n")
    (target / "params.yaml").write_bytes(b"mine: 1\n")
    (target / "params.yaml").chmod(0o600)
    (target / ".gitignore").write_bytes(b"*.log\n")
    (target / "README.md").write_bytes(b"# ours\n")
    before = snapshot(target, mtimes=False)

    # The order of writes, from the plan of a dry run.
    assert bake(target, "--torch", "cpu", "--force", "--dry-run") == 0
    plan = plan_of(capsys.readouterr().out)
    writes = [path for path, action in plan.items() if action in ("create", "overwrite", "merged")]
    assert (plan[".gitignore"], plan["README.md"]) == ("merged", "keep")
    overwrite_at = writes.index("params.yaml") + 1
    fail_at = {
        "first": 1,
        "after-merge": writes.index(".gitignore") + 2,
        "at-overwrite": overwrite_at,
        "after-overwrite": overwrite_at + 1,
        "last": len(writes),
    }[when]

    real_write = bootstrap.write_atomic
    calls: list[Path] = []

    def flaky_write(path, content, mode):
        calls.append(path)
        if len(calls) == fail_at:
            raise error
        real_write(path, content, mode)

    monkeypatch.setattr(bootstrap, "write_atomic", flaky_write)
    with pytest.raises(type(error)):
        bake(target, "--torch", "cpu", "--force")
    # It failed where intended, after writing into folders of its own and the user's.
    assert [p.relative_to(target).as_posix() for p in calls[:fail_at]] == writes[:fail_at]
    assert snapshot(target, mtimes=False) == before
    assert list(target.rglob("*.tmp")) == []


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=repr)
def test_write_atomic_leaves_no_temporary_file(tmp_path, monkeypatch, error):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"mine: 1\n")

    def failing_replace(src, dst):
        raise error

    monkeypatch.setattr(bootstrap.os, "replace", failing_replace)
    with pytest.raises(type(error)):
        bootstrap.write_atomic(path, b"new\n", 0o644)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    assert path.read_bytes() == b"mine: 1\n"


# --- target --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing", "is not a folder"),
        (lambda tmp: make_file(tmp / "file"), "is not a folder"),
        (lambda tmp: ROOT, "is inside the template"),
        (lambda tmp: ROOT / "src_templates", "is inside the template"),
        (lambda tmp: tmp / "missing\nfolder", "missing\\nfolder is not a folder"),
    ],
    ids=["missing", "file", "template", "inside-template", "newline"],
)
def test_bad_target_is_an_error(tmp_path, capsys, make, message):
    target = make(tmp_path)
    assert bake(target) == 1
    out, err = capsys.readouterr()
    assert message in one_bootstrap_error(err)
    assert out == ""
    assert not (target / bootstrap.RECORD_FILE).exists()
    assert not (target / "params.yaml").exists()
    assert not (tmp_path / "missing").exists()


def test_target_inside_a_fake_template_is_an_error(tmp_path, fake_template, capsys):
    template = fake_template({"mlt_project/__init__.py": "# mlt-project\n"})
    inside = template / "tpl" / "cats"
    inside.mkdir()
    assert bake(inside) == 1
    assert "is inside the template" in one_bootstrap_error(capsys.readouterr().err)
    assert list(inside.iterdir()) == []


def test_unwritable_target_is_an_error(tmp_path, capsys):
    target = tmp_path / "cats"
    target.mkdir()
    target.chmod(0o500)
    try:
        if os.access(target, os.W_OK):
            pytest.skip("running as root: a 0o500 folder stays writable")
        assert bake(target) == 1
        assert "is not writable" in one_bootstrap_error(capsys.readouterr().err)
        assert list(target.iterdir()) == []
    finally:
        target.chmod(0o700)


def test_unwritable_target_is_an_error_even_as_root(tmp_path, monkeypatch, capsys):
    target = tmp_path / "cats"
    target.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        bootstrap.os, "access", lambda p, mode: Path(p) != target and real_access(p, mode)
    )
    assert bake(target) == 1
    line = one_bootstrap_error(capsys.readouterr().err)
    monkeypatch.undo()
    assert f"target {target} is not writable" in line
    assert list(target.iterdir()) == []


# --- the script as a user runs it ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "class"], "is a Python keyword"),
        (["--name", "$(touch pwned)"], "is not usable"),
        (["--target", "missing"], "is not a folder"),
        (["--target", "file"], "is not a folder"),
        (["--target", str(ROOT / "src_templates")], "is inside the template"),
        (["--name", "torch"], "would shadow"),
    ],
    ids=["keyword", "shell", "missing", "file", "inside-template", "stack"],
)
def test_script_prints_one_line_per_user_error(tmp_path, args, message):
    (tmp_path / "host").mkdir()
    (tmp_path / "file").write_text("x")
    full = ["--target", "host", *args] if "--target" not in args else args
    result = run_script(*full, cwd=tmp_path)
    assert result.returncode == 1
    assert message in one_bootstrap_error(result.stderr)
    assert list((tmp_path / "host").iterdir()) == []
    assert not (tmp_path / "pwned").exists()


def test_script_conflict_exits_1_with_one_line(tmp_path):
    (tmp_path / "cats").mkdir()
    assert run_script("--target", "cats", "--torch", "cpu", cwd=tmp_path).returncode == 0
    (tmp_path / "cats" / "params.yaml").write_text("mine: 1\n")
    result = run_script("--target", "cats", "--torch", "cpu", cwd=tmp_path)
    assert result.returncode == 1
    assert "exist and differ: params.yaml" in one_bootstrap_error(result.stderr)
    assert "conflict  params.yaml" in result.stdout
    assert (tmp_path / "cats" / "params.yaml").read_text() == "mine: 1\n"


def test_script_success_exits_0_quietly_on_stderr(tmp_path):
    (tmp_path / "cats").mkdir()
    result = run_script("--target", "cats", "--torch", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "poetry run dvc repro" in result.stdout
    assert files_under(tmp_path / "cats") == expected_files("cpu", "cats")


def test_next_steps_say_how_to_get_poetry_when_it_is_not_on_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git"))

    def next_steps(name: str) -> str:
        (tmp_path / name).mkdir()
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--target", name, "--torch", "cpu"],
            cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PATH": str(bin_dir)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout.split("Next steps:")[1]

    assert next_steps("cats").splitlines()[1].startswith("  pipx install poetry")
    poetry = os.environ.get("POETRY") or shutil.which("poetry")
    if poetry:  # the real Poetry on PATH: the step is left out
        (bin_dir / "poetry").symlink_to(poetry)
        steps = next_steps("dogs")
        assert "pipx install poetry" not in steps
        assert steps.splitlines()[1].startswith("  git add -A")


# --- record --------------------------------------------------------------------------------


def test_record_holds_the_answers(tmp_path, capsys):
    target = tmp_path / "host"
    target.mkdir()
    assert bake(target, "--name", "Cats.Dogs", "--torch", "cpu") == 0
    record = json.loads((target / bootstrap.RECORD_FILE).read_text())
    assert record["template"] == "ml-aws-template"
    assert record["answers"] == {
        "project_name": "cats-dogs",
        "module_name": "cats_dogs",
        "torch": "cpu",
    }
    assert "template_version" in record
    assert "template_dirty" in record


def test_record_version_is_null_outside_git(tmp_path, monkeypatch, fake_template, capsys):
    template = fake_template({"mlt_project/__init__.py": "# mlt-project\n"})
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(template.parent))
    target = tmp_path / "cats"
    target.mkdir()
    assert bake(target, "--torch", "cu128") == 0
    record = json.loads((target / bootstrap.RECORD_FILE).read_text())
    assert record["template_version"] is None
    assert record["template_dirty"] is None
    assert record["answers"] == {"project_name": "cats", "module_name": "cats", "torch": "cu128"}


def test_record_version_is_the_template_head_commit(tmp_path):
    template = tmp_path / "template"
    template.mkdir()
    shutil.copy2(SCRIPT, template / "bootstrap.py")
    for folder in ("template_configs", "src_templates"):
        shutil.copytree(
            ROOT / folder,
            template / folder,
            ignore=shutil.ignore_patterns(*bootstrap.IGNORED_NAMES, "*.pyc"),
        )

    def git(*args: str) -> str:
        command = ["git", "-C", str(template), *GIT_IDENTITY]
        return subprocess.run(
            [*command, *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "template")
    head = git("rev-parse", "HEAD")
    assert len(head) == 40

    (tmp_path / "clean").mkdir()
    result = run_script(
        "--target", "clean", "--torch", "cpu", cwd=tmp_path, script=template / "bootstrap.py"
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "clean" / bootstrap.RECORD_FILE).read_text())
    assert record["template_version"] == head
    assert record["template_dirty"] is False
    assert record["answers"] == {"project_name": "clean", "module_name": "clean", "torch": "cpu"}

    # A tracked file changed after the commit marks the template dirty.
    with (template / "template_configs" / "project" / "params.yaml").open("a") as f:
        f.write("# local edit\n")
    (tmp_path / "dirty").mkdir()
    result = run_script(
        "--target", "dirty", "--torch", "cpu", cwd=tmp_path, script=template / "bootstrap.py"
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "dirty" / bootstrap.RECORD_FILE).read_text())
    assert record["template_version"] == head
    assert record["template_dirty"] is True
