"""`bootstrap.py --update`, `--check` and `--adopt` on a host whose submodule moves from A to B.

The template repo has two real commits: A is this working tree, B changes, adds and removes
template files. A project is baked at A (once per module, then copied), the user edits it, the
submodule is checked out at B, and the script runs as a user runs it. The files the template
moves (bootstrap.MOVED) get a template repo of their own, whose commits move two modules; one
that the template restructures as it moves it gets another.
"""

from __future__ import annotations

import ast
import json
import shutil
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest

import bootstrap
from helpers import REPO as REPO_ROOT
from helpers import bootstrap as run_bootstrap
from helpers import git, make_host, make_template_repo, one_bootstrap_error, run

OUTCOMES = {"updated", "unchanged", "kept", "conflict", "new", "removed", "moved"}
SUBMODULE = ".ml-aws-template"
RECORD = bootstrap.RECORD_FILE

# What commit B does to the template, and the lines the user writes; all are checked by content.
B_PARAMS = "# B: appended to params\n"
B_DVC = "# B: first line of dvc.yaml for mlt-project\n"
B_TRAIN = "# B: appended to mlt_project.train\n"
B_CONFIG = "# B: appended to config\n"
B_NOTES = "# mlt-project notes\n"
B_CHANGELOG = "# mlt-project changelog\n- from the template\n"
B_GITIGNORE = "/b-outputs/\n"
USER_PARAMS = "# user: top of params\n"
USER_DVC = "# user: first line of dvc.yaml\n"
USER_README = "user notes at the end of the README\n"
USER_ERRORS = "# user: my addition to errors\n"
USER_CHANGELOG = "# my changelog\n- mine\n"
USER_GITIGNORE_TOP = "# user: my own ignores\n*.log\n"
USER_GITIGNORE_END = "notebooks/scratch/\n"
USER_DVCIGNORE = "/notebooks/\n"


@pytest.fixture(scope="module", autouse=True)
def isolated_git(tmp_path_factory):
    """No user or system git config (a conflictStyle, say) leaks in; commits work without one."""
    home = tmp_path_factory.mktemp("home")
    config = home / ".gitconfig"
    config.write_text("[user]\n\tname = Test\n\temail = test@example.com\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("GIT_CONFIG_GLOBAL", str(config))
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
            mp.delenv(name, raising=False)
        yield


def commit_b(template: Path) -> None:
    """Change five template files, add two, remove two."""
    project = template / "template_configs" / "project"
    package = template / "src_templates" / "mlt_project"
    with (project / "params.yaml").open("a") as f:
        f.write(B_PARAMS)
    lines = (project / "dvc.yaml").read_text().splitlines(keepends=True)
    (project / "dvc.yaml").write_text(B_DVC + "".join(lines[1:]))
    for name, line in (("training/train.py", B_TRAIN), ("base/config.py", B_CONFIG)):
        with (package / name).open("a") as f:
            f.write(line)
    with (project / "dot-gitignore").open("a") as f:
        f.write(B_GITIGNORE)
    (project / "NOTES.md").write_text(B_NOTES)
    (project / "CHANGELOG.md").write_text(B_CHANGELOG)
    (project / "dot-dvcignore").unlink()
    (package / "base" / "errors.py").unlink()
    git("add", "-A", cwd=template)
    git("commit", "--quiet", "-m", "B", cwd=template)


@pytest.fixture(scope="module")
def baked(tmp_path_factory) -> tuple[Path, str, str]:
    """(host baked at A with the submodule at A, A, B)."""
    template = make_template_repo(tmp_path_factory.mktemp("template") / "ml-aws-template")
    a = git("rev-parse", "HEAD", cwd=template)
    commit_b(template)
    b = git("rev-parse", "HEAD", cwd=template)
    host = make_host(tmp_path_factory.mktemp("host") / "cats", template)
    git("checkout", "--quiet", a, cwd=host / SUBMODULE)
    run_bootstrap(host, "--torch", "cpu")
    commit_all(host, "bootstrap")
    return host, a, b


@pytest.fixture
def host(baked, tmp_path) -> Path:
    """A private copy of the host baked at A (the submodule's git dir travels with it)."""
    copy = tmp_path / "cats"
    shutil.copytree(baked[0], copy, symlinks=True)
    return copy


@pytest.fixture
def a(baked) -> str:
    return baked[1]


@pytest.fixture
def b(baked) -> str:
    return baked[2]


# --- helpers -------------------------------------------------------------------------------


def commit_all(host: Path, message: str) -> None:
    git("add", "-A", cwd=host)
    git("commit", "--quiet", "--allow-empty", "-m", message, cwd=host)


def edit_as_user(host: Path, overlapping: bool, commit: bool = True) -> None:
    """The user's edits, committed as --update wants; `overlapping` adds two that collide with B."""
    params = host / "params.yaml"
    params.write_text(USER_PARAMS + params.read_text())
    with (host / "README.md").open("a") as f:
        f.write(USER_README)
    gitignore = host / ".gitignore"
    gitignore.write_text(USER_GITIGNORE_TOP + gitignore.read_text() + USER_GITIGNORE_END)
    with (host / ".dvcignore").open("a") as f:
        f.write(USER_DVCIGNORE)
    with (host / "src" / "cats" / "base" / "errors.py").open("a") as f:
        f.write(USER_ERRORS)
    (host / "src" / "cats" / "base" / "config.py").unlink()
    if overlapping:
        lines = (host / "dvc.yaml").read_text().splitlines(keepends=True)
        (host / "dvc.yaml").write_text(USER_DVC + "".join(lines[1:]))
        (host / "CHANGELOG.md").write_text(USER_CHANGELOG)
    if commit:
        commit_all(host, "user edits")


def move_submodule(host: Path, commit: str) -> None:
    git("checkout", "--quiet", commit, cwd=host / SUBMODULE)


def outcomes(out: str) -> dict[str, str]:
    """{path: outcome} from the rows the script prints."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("  ") and len(parts) >= 2 and parts[0] in OUTCOMES:
            rows[parts[1]] = parts[0]
    return rows


def record(host: Path) -> dict:
    return json.loads((host / RECORD).read_text())


def snapshot(root: Path) -> dict[str, tuple]:
    """Every project file (not git's, nor the submodule) with its bytes, mode bits and mtime."""
    return {
        p.relative_to(root).as_posix(): (
            p.read_bytes(),
            stat.S_IMODE(p.stat().st_mode),
            p.stat().st_mtime_ns,
        )
        for p in sorted(root.rglob("*"))
        if p.is_file() and not {SUBMODULE, ".git"} & set(p.relative_to(root).parts)
    }


def assert_user_lines_kept(host: Path, overlapping: bool) -> None:
    """Nothing the user wrote is lost, whatever the outcome."""
    assert USER_PARAMS in (host / "params.yaml").read_text()
    assert USER_README in (host / "README.md").read_text()
    gitignore = (host / ".gitignore").read_text()
    assert gitignore.startswith(USER_GITIGNORE_TOP) and gitignore.endswith(USER_GITIGNORE_END)
    assert USER_DVCIGNORE in (host / ".dvcignore").read_text()
    assert USER_ERRORS in (host / "src" / "cats" / "base" / "errors.py").read_text()
    assert not (host / "src" / "cats" / "base" / "config.py").exists()
    if overlapping:
        assert USER_DVC in (host / "dvc.yaml").read_text()
        assert USER_CHANGELOG in (host / "CHANGELOG.md").read_text()


# --- update --------------------------------------------------------------------------------

# Every row --update lists: files it changes, and changes of the template's it leaves out. Not
# listed: unchanged files, PROJECT.md (user only), README.md (the host's own: never updated).
EXPECTED_CLEAN = {
    "params.yaml": "updated",  # user prepended, B appended: merged
    "dvc.yaml": "updated",  # B only
    "src/cats/training/train.py": "updated",  # B only
    "src/cats/base/config.py": "kept",  # user deleted it, B changed it: stays deleted
    ".gitignore": "updated",  # the block gets B's line; the user's lines around it stay
    "NOTES.md": "new",
    "CHANGELOG.md": "new",
    ".dvcignore": "removed",  # the block goes; the user's line after it stays
    "src/cats/base/errors.py": "removed",  # user changed it: left in place
}
EXPECTED_CONFLICT = {**EXPECTED_CLEAN, "dvc.yaml": "conflict", "CHANGELOG.md": "conflict"}


def test_update_merges_edits_that_do_not_overlap(host, a, b):
    fresh = (host / "src" / "cats" / "training" / "train.py").read_text()
    edit_as_user(host, overlapping=False)
    move_submodule(host, b)
    start = time.perf_counter()
    result = run_bootstrap(host, "--update")
    seconds = time.perf_counter() - start
    print(f"\n--update on a generated project (subprocess, cold): {seconds:.2f} s")

    assert outcomes(result.stdout) == EXPECTED_CLEAN
    assert "removed    src/cats/base/errors.py  (upstream; left in place: you changed it)" in (
        result.stdout
    )
    assert "other file(s): nothing to do" in result.stdout
    params = (host / "params.yaml").read_text()
    assert params.startswith(USER_PARAMS) and params.endswith(B_PARAMS)
    assert (host / "dvc.yaml").read_text().startswith("# B: first line of dvc.yaml for cats\n")
    assert (
        host / "src" / "cats" / "training" / "train.py"
    ).read_text() == fresh + "# B: appended to cats.train\n"
    assert (host / "NOTES.md").read_text() == "# cats notes\n"
    assert (host / ".dvcignore").read_text() == USER_DVCIGNORE
    block = bootstrap.BLOCK_RE.search((host / ".gitignore").read_bytes()).group(1).decode()
    assert block.endswith(B_GITIGNORE) and "/data/raw/\n" in block
    assert_user_lines_kept(host, overlapping=False)
    assert "<<<<<<<" not in "".join(p.read_text() for p in (host / "src").rglob("*.py"))
    assert record(host)["template_version"] == b
    assert record(host)["answers"] == {
        "project_name": "cats",
        "module_name": "cats",
        "torch": "cpu",
    }

    # A second run finds nothing to do and writes nothing.
    commit_all(host, "update")
    before = snapshot(host)
    again = run_bootstrap(host, "--update").stdout
    assert outcomes(again) == {}
    assert "file(s): nothing to do" in again
    assert snapshot(host) == before


def test_update_writes_markers_where_edits_overlap(host, a, b):
    edit_as_user(host, overlapping=True)
    move_submodule(host, b)
    result = run_bootstrap(host, "--update", check=False)

    assert result.returncode == 1
    line = one_bootstrap_error(result.stderr)
    assert "2 conflict(s) left in CHANGELOG.md, dvc.yaml" in line
    assert f"--adopt {b}" in line
    assert outcomes(result.stdout) == EXPECTED_CONFLICT
    dvc = (host / "dvc.yaml").read_text()
    b_line = "# B: first line of dvc.yaml for cats\n"
    assert dvc.startswith(f"<<<<<<< yours\n{USER_DVC}=======\n{b_line}>>>>>>> template {b[:8]}\n")
    changelog = (host / "CHANGELOG.md").read_text()
    assert "<<<<<<< yours" in changelog and "# cats changelog" in changelog
    # The clean merges are written all the same; the record stays at A until conflicts are gone.
    assert (host / "params.yaml").read_text().endswith(B_PARAMS)
    assert (host / "NOTES.md").is_file()
    assert_user_lines_kept(host, overlapping=True)
    assert record(host)["template_version"] == a

    # Rerunning (on the tree the update left) never nests markers; --adopt waits for them.
    params = snapshot(host)["params.yaml"]
    rerun = run_bootstrap(host, "--update", "--allow-dirty", check=False)
    assert rerun.returncode == 1
    assert outcomes(rerun.stdout)["dvc.yaml"] == "conflict"
    # params.yaml already holds B's change and the user's: nothing to do, not rewritten.
    assert "params.yaml" not in outcomes(rerun.stdout)
    assert snapshot(host)["params.yaml"] == params
    assert (host / "dvc.yaml").read_text() == dvc
    refused = run_bootstrap(host, "--adopt", b, check=False)
    assert "conflict markers left in" in one_bootstrap_error(refused.stderr)
    assert record(host)["template_version"] == a

    (host / "dvc.yaml").write_text(dvc.split(">>>>>>> template", 1)[1].split("\n", 1)[1])
    (host / "CHANGELOG.md").write_text(USER_CHANGELOG)
    run_bootstrap(host, "--adopt", b)
    assert record(host)["template_version"] == b
    assert run_bootstrap(host, "--check").returncode == 0


def test_dry_run_writes_nothing(host, a, b):
    edit_as_user(host, overlapping=True)
    move_submodule(host, b)
    before = snapshot(host)
    result = run_bootstrap(host, "--update", "--dry-run", check=False)
    assert result.returncode == 1
    assert result.stdout.startswith("Would update project 'cats'")
    assert "2 file(s) would conflict" in one_bootstrap_error(result.stderr)
    planned = outcomes(result.stdout)
    assert planned == EXPECTED_CONFLICT
    assert "unchanged" not in result.stdout
    assert snapshot(host) == before
    # The plan is what the real run then does.
    assert outcomes(run_bootstrap(host, "--update", check=False).stdout) == planned


def test_gitignore_written_whole_by_an_older_bootstrap_is_merged_whole(host, b):
    """Before the marked block, bootstrap wrote .gitignore whole: all of it is the template's."""
    gitignore = host / ".gitignore"
    whole = bootstrap.BLOCK_RE.search(gitignore.read_bytes()).group(1)
    gitignore.write_bytes(USER_GITIGNORE_TOP.encode() + whole)
    commit_all(host, "a project baked by an older bootstrap")
    move_submodule(host, b)
    rows = outcomes(run_bootstrap(host, "--update").stdout)
    assert rows[".gitignore"] == "updated"
    assert gitignore.read_bytes() == USER_GITIGNORE_TOP.encode() + whole + B_GITIGNORE.encode()


def test_update_refuses_uncommitted_changes(host, b):
    edit_as_user(host, overlapping=False, commit=False)
    move_submodule(host, b)
    before = snapshot(host)
    result = run_bootstrap(host, "--update", check=False)
    assert result.returncode == 1
    line = one_bootstrap_error(result.stderr)
    changed = line.split("the project has uncommitted changes (")[1].split(")")[0]
    assert "params.yaml" in changed and "--allow-dirty" in line
    assert SUBMODULE not in changed  # moving the submodule is how an update starts
    assert result.stdout == ""
    assert snapshot(host) == before
    # The dry run writes nothing, so it shows the plan on a dirty tree.
    assert outcomes(run_bootstrap(host, "--update", "--dry-run").stdout) == EXPECTED_CLEAN

    # An untracked file is uncommitted too: git could not bring it back.
    commit_all(host, "user edits")
    (host / "scratch.txt").write_text("mine\n")
    committed = snapshot(host)
    line = one_bootstrap_error(run_bootstrap(host, "--update", check=False).stderr)
    assert "uncommitted changes (scratch.txt)" in line
    assert snapshot(host) == committed

    result = run_bootstrap(host, "--update", "--allow-dirty")
    assert outcomes(result.stdout) == EXPECTED_CLEAN
    assert (host / "scratch.txt").read_text() == "mine\n"
    assert record(host)["template_version"] == b


def test_update_outside_git_needs_allow_dirty(host, b, tmp_path):
    """A project folder git does not hold: the update could not be undone."""
    move_submodule(host, b)
    plain = tmp_path / "plain"
    shutil.copytree(host, plain, ignore=shutil.ignore_patterns(".git", SUBMODULE))
    script = host / SUBMODULE / "bootstrap.py"
    command = ["python3", str(script), "--target", str(plain), "--update"]
    result = run(*command, cwd=tmp_path, check=False, GIT_CEILING_DIRECTORIES=str(tmp_path))
    assert "is not in a git repository" in one_bootstrap_error(result.stderr)
    assert (plain / "params.yaml").read_bytes() == (host / "params.yaml").read_bytes()
    result = run(*command, "--allow-dirty", cwd=tmp_path, GIT_CEILING_DIRECTORIES=str(tmp_path))
    assert outcomes(result.stdout)["params.yaml"] == "updated"
    assert (plain / "params.yaml").read_text().endswith(B_PARAMS)


def test_allow_dirty_is_for_update_only(host):
    result = run_bootstrap(host, "--check", "--allow-dirty", check=False)
    assert result.returncode == 2
    assert "--allow-dirty applies to --update only" in result.stderr


def test_check_lists_what_would_change_until_updated(host, a, b):
    edit_as_user(host, overlapping=False)
    assert run_bootstrap(host, "--check").stdout.startswith("Up to date")
    move_submodule(host, b)
    result = run_bootstrap(host, "--check", check=False)
    assert result.returncode == 1
    assert "not at the template's version; run --update" in one_bootstrap_error(result.stderr)
    assert outcomes(result.stdout) == {
        "params.yaml": "updated",
        "dvc.yaml": "updated",
        "src/cats/training/train.py": "updated",
        "NOTES.md": "new",
        "CHANGELOG.md": "new",
        ".dvcignore": "removed",
        ".gitignore": "updated",
    }
    run_bootstrap(host, "--update")
    after = run_bootstrap(host, "--check")
    assert after.returncode == 0
    assert after.stdout.startswith(f"Up to date with template {b[:8]}")


@pytest.mark.parametrize("fail_at", [1, 4, 8], ids=["first", "middle", "record"])
def test_failed_update_undoes_every_write(host, b, monkeypatch, capsys, fail_at):
    edit_as_user(host, overlapping=False)
    move_submodule(host, b)
    before = snapshot(host)
    monkeypatch.setattr(bootstrap, "TEMPLATE_DIR", host / SUBMODULE)
    real_write = bootstrap.write_atomic
    calls: list[str] = []

    def flaky_write(path, content, mode):
        calls.append(path.name)
        if len(calls) == fail_at:
            raise OSError("disk full")
        real_write(path, content, mode)

    monkeypatch.setattr(bootstrap, "write_atomic", flaky_write)
    with pytest.raises(OSError):
        bootstrap.main(["--target", str(host), "--update"])
    # Writes in path order; the record comes last.
    writes = [".dvcignore", ".gitignore", "CHANGELOG.md", "NOTES.md", "dvc.yaml", "params.yaml"]
    writes += ["train.py", RECORD]
    assert calls[:fail_at] == writes[:fail_at]
    assert {k: v[:2] for k, v in snapshot(host).items()} == {k: v[:2] for k, v in before.items()}
    assert list(host.rglob("*.tmp")) == []


# --- adopt ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "no-version", "garbage"])
def test_update_without_a_usable_record_names_adopt(host, b, damage):
    if damage == "deleted":
        (host / RECORD).unlink()
    elif damage == "no-version":
        (host / RECORD).write_text(json.dumps({**record(host), "template_version": None}))
    else:
        (host / RECORD).write_text("{not json")
    move_submodule(host, b)
    before = snapshot(host)
    for args in (["--update"], ["--update", "--dry-run"], ["--check"]):
        result = run_bootstrap(host, *args, check=False)
        assert result.returncode == 1
        assert "--adopt VERSION" in one_bootstrap_error(result.stderr)
    assert snapshot(host) == before


def test_adopt_records_a_version_so_update_works(host, a, b):
    (host / RECORD).unlink()
    edit_as_user(host, overlapping=False)
    move_submodule(host, b)
    for bad in ("0" * 40, "no-such-ref", "--help"):
        result = run_bootstrap(host, f"--adopt={bad}", check=False)
        assert "is not a commit in the template's history" in one_bootstrap_error(result.stderr)
    assert not (host / RECORD).exists()

    result = run_bootstrap(host, "--adopt", a[:10], "--torch", "cpu")
    assert "project_name=cats, module_name=cats, torch=cpu" in result.stdout
    assert record(host)["template_version"] == a
    assert record(host)["answers"] == {
        "project_name": "cats",
        "module_name": "cats",
        "torch": "cpu",
    }
    commit_all(host, "adopt")
    assert outcomes(run_bootstrap(host, "--update").stdout) == EXPECTED_CLEAN
    assert record(host)["template_version"] == b
    assert_user_lines_kept(host, overlapping=False)


def test_check_fails_on_a_newer_version_that_changes_no_file(host, a):
    submodule = host / SUBMODULE
    with (submodule / "README.md").open("a") as f:
        f.write("A change to the template's own README, which is not rendered.\n")
    git("commit", "--quiet", "-am", "C", cwd=submodule)
    c = git("rev-parse", "HEAD", cwd=submodule)
    result = run_bootstrap(host, "--check", check=False)
    assert result.returncode == 1
    assert outcomes(result.stdout) == {RECORD: "updated"}
    before = snapshot(host)
    result = run_bootstrap(host, "--update")
    assert outcomes(result.stdout) == {}
    assert "file(s): nothing to do" in result.stdout
    assert record(host)["template_version"] == c
    after = snapshot(host)
    assert {k: v for k, v in after.items() if k != RECORD} == {
        k: v for k, v in before.items() if k != RECORD
    }
    assert run_bootstrap(host, "--check").returncode == 0


# --- a file that moves between template folders ------------------------------------------------

DEPLOY_FILES = ("aws/batch-job.json", "aws/batch-job-multinode.json")


def test_a_file_moved_into_the_variant_folders_merges_as_an_ordinary_update(tmp_path):
    """The Batch job definitions were once shared (template_configs/project/, the GPU ones) and
    are now per variant (torch-cpu/, torch-cu128/). The destination is what --update merges by,
    so a cpu project gets the cpu files as `updated`, with the user's edits kept; a cu128
    project, whose files did not change, gets nothing to do."""
    template = make_template_repo(tmp_path / "template" / "ml-aws-template")
    configs = template / "template_configs"
    for path in DEPLOY_FILES:
        (configs / "project" / path).parent.mkdir(parents=True, exist_ok=True)
        (configs / "torch-cu128" / path).rename(configs / "project" / path)
        (configs / "torch-cpu" / path).unlink()
    git("add", "-A", cwd=template)
    git("commit", "--quiet", "-m", "the old layout: one set of deploy files", cwd=template)
    old = git("rev-parse", "HEAD", cwd=template)
    git("revert", "--no-edit", "HEAD", cwd=template)  # back to this tree: per variant
    new = git("rev-parse", "HEAD", cwd=template)

    for variant in ("cpu", "cu128"):
        host = make_host(tmp_path / variant / "cats", template)
        move_submodule(host, old)
        run_bootstrap(host, "--torch", variant)
        job = host / "aws" / "batch-job.json"
        assert "GPU" in job.read_text()
        job.write_text(
            job.read_text().replace(
                '"attemptDurationSeconds": 86400', '"attemptDurationSeconds": 7200'
            )
        )
        commit_all(host, "baked at the old layout, then edited")
        move_submodule(host, new)
        result = run_bootstrap(host, "--update")
        rows = outcomes(result.stdout)
        definition = json.loads(job.read_text())
        assert definition["timeout"]["attemptDurationSeconds"] == 7200
        reserved = {r["type"] for r in definition["containerProperties"]["resourceRequirements"]}
        if variant == "cpu":
            assert rows == {path: "updated" for path in DEPLOY_FILES}
            assert "GPU" not in reserved
        else:
            assert rows == {}
            assert "GPU" in reserved
        assert record(host)["template_version"] == new


# --- files the template moves (bootstrap.MOVED) ------------------------------------------------
# Commit A adds two modules of the test's own to this working tree, so that the tests do not
# depend on where the template keeps its real modules. M1 moves both, appends to scores and
# makes it executable, and adds them to MOVED; M2 moves labels again and changes its last line.

SCORES = ("src/mlt_project/scores.py", "src/mlt_project/scoring/scores.py")
LABELS = (
    "src/mlt_project/labels_table.py",
    "src/mlt_project/tables/labels.py",
    "src/mlt_project/catalog/labels.py",
)
SCORES_A = '''"""The scores of mlt_project: a module the template moves."""


def accuracy(correct: int, total: int) -> float:
    return correct / total
'''
SCORES_M1_TAIL = """

def error_rate(correct: int, total: int) -> float:
    return 1 - accuracy(correct, total)
"""
LABELS_A = '''"""The labels of mlt_project: a module the template moves twice."""

LABELS = ("cat", "dog")


def label_count() -> int:
    return len(LABELS)
'''
LABELS_M2 = LABELS_A.replace("return len(LABELS)", "return len(set(LABELS))")
USER_TOP = "# user: my note at the top\n"
USER_TAIL = """

def my_score() -> float:
    return 0.5
"""


def cats(path_or_text: str) -> str:
    """A template path or text as the `cats` project has it."""
    return path_or_text.replace("mlt_project", "cats")


def source(destination: str) -> str:
    """The template file of a destination under src/."""
    return destination.replace("src/", "src_templates/", 1)


def declare_moves(template: Path, moves: dict[str, str]) -> None:
    """Add `moves` to MOVED in the template's bootstrap.py, as a release that moves files does."""
    script = template / "bootstrap.py"
    text = script.read_text()
    main = '\nif __name__ == "__main__":'
    assert text.count(main) == 1
    script.write_text(text.replace(main, f"\nMOVED.update({moves!r})\n{main}"))


def move_in_template(template: Path, old: str, new: str) -> None:
    (template / source(new)).parent.mkdir(parents=True, exist_ok=True)
    git("mv", source(old), source(new), cwd=template)


@pytest.fixture(scope="module")
def moving(tmp_path_factory) -> tuple[Path, str, str, str]:
    """(host baked at A with the submodule at A, A, M1, M2)."""
    template = make_template_repo(tmp_path_factory.mktemp("moving") / "ml-aws-template")
    for path in (*SCORES, *LABELS):
        assert not (template / source(path)).exists(), f"{path}: pick another name for the test"
    (template / source(SCORES[0])).write_text(SCORES_A)
    (template / source(LABELS[0])).write_text(LABELS_A)
    git("add", "-A", cwd=template)
    git("commit", "--quiet", "-m", "A: two modules", cwd=template)
    a = git("rev-parse", "HEAD", cwd=template)

    move_in_template(template, *SCORES)
    move_in_template(template, *LABELS[:2])
    scores = template / source(SCORES[1])
    scores.write_text(SCORES_A + SCORES_M1_TAIL)
    scores.chmod(0o755)
    declare_moves(template, {SCORES[0]: SCORES[1], LABELS[0]: LABELS[1]})
    git("add", "-A", cwd=template)
    git("commit", "--quiet", "-m", "M1: move both", cwd=template)
    m1 = git("rev-parse", "HEAD", cwd=template)

    move_in_template(template, *LABELS[1:])
    (template / source(LABELS[2])).write_text(LABELS_M2)
    declare_moves(template, {LABELS[1]: LABELS[2]})
    git("add", "-A", cwd=template)
    git("commit", "--quiet", "-m", "M2: move labels again", cwd=template)
    m2 = git("rev-parse", "HEAD", cwd=template)

    host = make_host(tmp_path_factory.mktemp("moving-host") / "cats", template)
    git("checkout", "--quiet", a, cwd=host / SUBMODULE)
    run_bootstrap(host, "--torch", "cpu")
    commit_all(host, "bootstrap")
    assert (host / cats(SCORES[0])).read_text() == cats(SCORES_A)
    return host, a, m1, m2


@pytest.fixture
def moving_host(moving, tmp_path) -> Path:
    copy = tmp_path / "cats"
    shutil.copytree(moving[0], copy, symlinks=True)
    return copy


def edit_module(host: Path, path: str, top: str = "", tail: str = "") -> str:
    """Add the user's lines to a module of the project; return its new text."""
    module = host / cats(path)
    text = top + module.read_text() + tail
    module.write_text(text)
    return text


def test_moved_files_the_user_did_not_touch_move(moving_host, moving):
    _, _, m1, _ = moving
    move_submodule(moving_host, m1)
    result = run_bootstrap(moving_host, "--update")
    assert outcomes(result.stdout) == {cats(SCORES[1]): "moved", cats(LABELS[1]): "moved"}
    assert f"  moved      {cats(SCORES[1])}  (from {cats(SCORES[0])})\n" in result.stdout
    scores = moving_host / cats(SCORES[1])
    assert scores.read_text() == cats(SCORES_A + SCORES_M1_TAIL)
    assert stat.S_IMODE(scores.stat().st_mode) == 0o755  # the template made it executable
    assert (moving_host / cats(LABELS[1])).read_text() == cats(LABELS_A)
    for old in (SCORES[0], LABELS[0]):
        assert not (moving_host / cats(old)).exists()
    assert record(moving_host)["template_version"] == m1
    commit_all(moving_host, "update")
    assert run_bootstrap(moving_host, "--check").returncode == 0


def test_moved_file_the_user_edited_is_merged_into_its_new_path(moving_host, moving):
    _, a, m1, _ = moving
    mine = edit_module(moving_host, SCORES[0], top=USER_TOP)
    commit_all(moving_host, "user edits")
    move_submodule(moving_host, m1)
    result = run_bootstrap(moving_host, "--update")

    assert outcomes(result.stdout) == {cats(SCORES[1]): "moved", cats(LABELS[1]): "moved"}
    old, new = cats(SCORES[0]), cats(SCORES[1])
    note = f"from {old}, merged with your changes; {old} left in place: delete it once you have"
    assert f"  moved      {new}  ({note} checked)\n" in result.stdout
    # B's appended function and the user's top line, in the new file; the old one as it was.
    assert (moving_host / new).read_text() == USER_TOP + cats(SCORES_A + SCORES_M1_TAIL)
    assert stat.S_IMODE((moving_host / new).stat().st_mode) == 0o755
    assert (moving_host / old).read_text() == mine
    assert not (moving_host / cats(LABELS[0])).exists()
    assert record(moving_host)["template_version"] == m1 != a


def test_moved_file_with_overlapping_edits_conflicts_in_its_new_path(moving_host, moving):
    _, a, m1, _ = moving
    mine = edit_module(moving_host, SCORES[0], tail=USER_TAIL)
    commit_all(moving_host, "user edits")
    move_submodule(moving_host, m1)
    result = run_bootstrap(moving_host, "--update", check=False)

    assert result.returncode == 1
    old, new = cats(SCORES[0]), cats(SCORES[1])
    line = one_bootstrap_error(result.stderr)
    assert f"1 conflict(s) left in {new}" in line and f"--adopt {m1}" in line
    assert outcomes(result.stdout) == {new: "conflict", cats(LABELS[1]): "moved"}
    assert f"(from {old}: you both changed the same lines; {old} left in place" in result.stdout
    merged = (moving_host / new).read_text()
    assert merged.startswith(cats(SCORES_A)) and "<<<<<<< yours\n" in merged
    assert f">>>>>>> template {m1[:8]}\n" in merged
    assert "def my_score()" in merged and "def error_rate(" in merged  # nothing lost
    assert (moving_host / old).read_text() == mine
    assert (moving_host / cats(LABELS[1])).read_text() == cats(LABELS_A)  # written all the same
    assert record(moving_host)["template_version"] == a

    # A rerun finds the new file there: no move, no nested markers, the old file left alone.
    rerun = run_bootstrap(moving_host, "--update", "--allow-dirty", check=False)
    assert rerun.returncode == 1
    assert outcomes(rerun.stdout) == {new: "conflict", old: "removed"}
    assert (moving_host / new).read_text() == merged
    assert (moving_host / old).read_text() == mine


def test_moved_file_the_user_deleted_stays_deleted(moving_host, moving):
    _, _, m1, _ = moving
    (moving_host / cats(SCORES[0])).unlink()
    commit_all(moving_host, "user deletes scores")
    move_submodule(moving_host, m1)
    result = run_bootstrap(moving_host, "--update")
    assert outcomes(result.stdout) == {cats(SCORES[1]): "kept", cats(LABELS[1]): "moved"}
    assert f"  kept       {cats(SCORES[1])}  (from {cats(SCORES[0])}: you deleted it)\n" in (
        result.stdout
    )
    assert not (moving_host / cats(SCORES[0])).exists()
    assert not (moving_host / cats(SCORES[1])).parent.exists()
    assert record(moving_host)["template_version"] == m1


def test_a_project_two_versions_back_follows_a_chain_of_moves(moving_host, moving):
    """labels moved a -> b in M1 and b -> c in M2: a project at A goes a -> c, edits and all."""
    _, _, _, m2 = moving
    mine = edit_module(moving_host, LABELS[0], top=USER_TOP)
    commit_all(moving_host, "user edits")
    move_submodule(moving_host, m2)
    result = run_bootstrap(moving_host, "--update")

    assert outcomes(result.stdout) == {cats(SCORES[1]): "moved", cats(LABELS[2]): "moved"}
    assert f"  moved      {cats(LABELS[2])}  (from {cats(LABELS[0])}, merged" in result.stdout
    assert (moving_host / cats(LABELS[2])).read_text() == USER_TOP + cats(LABELS_M2)
    assert (moving_host / cats(LABELS[0])).read_text() == mine
    assert not (moving_host / cats(LABELS[1])).parent.exists()  # never written
    assert record(moving_host)["template_version"] == m2


def test_dry_run_and_check_list_moves_and_write_nothing(moving_host, moving):
    _, a, m1, _ = moving
    edit_module(moving_host, SCORES[0], top=USER_TOP)
    commit_all(moving_host, "user edits")
    move_submodule(moving_host, m1)
    before = snapshot(moving_host)
    expected = {cats(SCORES[1]): "moved", cats(LABELS[1]): "moved"}
    dry = run_bootstrap(moving_host, "--update", "--dry-run")
    assert outcomes(dry.stdout) == expected
    assert f"(from {cats(SCORES[0])}, merged with your changes;" in dry.stdout
    check = run_bootstrap(moving_host, "--check", check=False)
    assert check.returncode == 1
    assert outcomes(check.stdout) == expected
    assert snapshot(moving_host) == before
    assert record(moving_host)["template_version"] == a


def test_a_file_of_the_users_at_the_new_path_is_no_move(moving_host, moving):
    """The user made the new path already: neither file is overwritten. The old one is `removed`
    as it would be without MOVED (deleted: the user never changed it), and the new one is merged
    against nothing, so both versions are in it between markers."""
    _, _, m1, _ = moving
    own = moving_host / cats(SCORES[1])
    own.parent.mkdir()
    own.write_text(USER_TAIL)
    commit_all(moving_host, "the user's own scoring module")
    move_submodule(moving_host, m1)
    result = run_bootstrap(moving_host, "--update", check=False)
    assert result.returncode == 1
    assert outcomes(result.stdout) == {
        cats(SCORES[0]): "removed",
        cats(SCORES[1]): "conflict",
        cats(LABELS[1]): "moved",
    }
    merged = own.read_text()
    assert "<<<<<<< yours\n" in merged and "def my_score()" in merged
    assert "def error_rate(" in merged
    assert not (moving_host / cats(SCORES[0])).exists()


def test_failed_update_undoes_a_move(moving_host, moving, monkeypatch):
    _, _, m1, _ = moving
    move_submodule(moving_host, m1)
    before = snapshot(moving_host)
    monkeypatch.setattr(bootstrap, "TEMPLATE_DIR", moving_host / SUBMODULE)
    monkeypatch.setattr(bootstrap, "MOVED", {SCORES[0]: SCORES[1], LABELS[0]: LABELS[1]})
    real_write = bootstrap.write_atomic
    calls: list[str] = []

    def flaky_write(path, content, mode):
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError("disk full")
        real_write(path, content, mode)

    monkeypatch.setattr(bootstrap, "write_atomic", flaky_write)
    with pytest.raises(OSError):
        bootstrap.main(["--target", str(moving_host), "--update"])
    # scoring/scores.py was written and scores.py deleted before labels failed: both undone
    # (the third write puts the old scores.py back).
    assert calls == ["scores.py", "labels.py", "scores.py"]
    assert {k: v[:2] for k, v in snapshot(moving_host).items()} == {
        k: v[:2] for k, v in before.items()
    }
    assert not (moving_host / cats(SCORES[1])).parent.exists()


def test_moved_table_names_files_the_template_has():
    """Every entry of the real table is a destination path, and each chain of moves ends at a file
    the template writes now (a typo in a new path would leave the user's file behind)."""
    values = {"project_name": "cats", "module_name": "cats"}
    rendered = bootstrap.render_tree(values, "cpu")
    fixed = {p.as_posix() for p in bootstrap.SEED_FILES | bootstrap.MERGED_FILES}
    for old, new in bootstrap.MOVED.items():
        for path in (old, new):
            assert Path(path).as_posix() == path and not Path(path).is_absolute(), path
            assert ".." not in Path(path).parts and path not in fixed, path
        end, seen = new, {old}
        while end in bootstrap.MOVED and end not in seen:
            seen.add(end)
            end = bootstrap.MOVED[end]
        assert Path(cats(end)) in rendered, f"{old} moves to {end}, which the template lacks"


# --- a moved file the template restructured (bootstrap.relocate) ------------------------------
# Commit A adds a module of module-level functions; R moves it and rewrites it as a class whose
# methods hold some of the old lines, re-indented, among new ones (a local import, a blank
# line), changes one of them, and splits the rest into two new modules. git merge-file conflicts
# on the whole rewritten file; the user's edits are re-applied where their lines are now.

METRICS = ("src/mlt_project/metric_fns.py", "src/mlt_project/tasks/metric_tasks.py")
SPECS = "src/mlt_project/tasks/metric_specs.py"
LOSSES = "src/mlt_project/tasks/losses.py"
METRICS_A = """\
\"\"\"The metrics of mlt_project: a module the template restructures as it moves it.\"\"\"

import math


def metric(name: str, num_classes: int, top_k: int = 1) -> dict[str, object]:
    return {"name": name, "num_classes": num_classes, "top_k": top_k}


def multiclass_metrics(num_classes: int, average: str = "micro") -> dict[str, dict]:
    \"\"\"The metrics of a multiclass task, by name.\"\"\"
    accuracy = metric("accuracy", num_classes, top_k=1)
    return {"accuracy": accuracy}


def multiclass_decision(probabilities: list[float]) -> int:
    \"\"\"The class of highest probability.\"\"\"
    return max(range(len(probabilities)), key=probabilities.__getitem__)


def multiclass_loss(logits: list[float], target: int) -> float:
    \"\"\"Cross-entropy of one sample's logits.\"\"\"
    total = sum(math.exp(x) for x in logits)
    return math.log(total) - logits[target]
"""
TASKS_R = """\
\"\"\"The tasks of mlt_project, a class each: what a model of the task is scored with.\"\"\"

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Multiclass:
    \"\"\"One class an image.\"\"\"

    name: str = "multiclass"

    def metrics(self, num_classes: int, average: str = "micro") -> dict[str, dict]:
        \"\"\"The metrics of a multiclass task, by name.\"\"\"
        from .metric_specs import metric

        accuracy = metric("accuracy", num_classes, top_k=1)
        return {"accuracy": accuracy}

    def decision(self, probabilities: list[float]) -> int:
        \"\"\"The class of highest probability.\"\"\"
        return max(range(len(probabilities)), key=lambda i: probabilities[i])

    def loss(self, logits: list[float], target: int) -> float:
        \"\"\"Cross-entropy of one sample's logits.\"\"\"
        from .losses import multiclass_loss

        return multiclass_loss(logits, target)
"""
SPECS_R = """\
\"\"\"The metric specs of mlt_project's tasks.\"\"\"


def metric(name: str, num_classes: int, top_k: int = 1) -> dict[str, object]:
    return {"name": name, "num_classes": num_classes, "top_k": top_k}
"""
LOSSES_R = """\
\"\"\"The losses of mlt_project's tasks.\"\"\"

import math


def multiclass_loss(logits: list[float], target: int) -> float:
    \"\"\"Cross-entropy of one sample's logits.\"\"\"
    total = sum(math.exp(x) for x in logits)
    return math.log(total) - logits[target]
"""
# The guide's "Add a metric" recipe, followed in the old module: kept lines and a new one.
METRICS_BODY = """\
    accuracy = metric("accuracy", num_classes, top_k=1)
    return {"accuracy": accuracy}
"""
USER_METRICS_BODY = """\
    accuracy = metric("accuracy", num_classes, top_k=1)
    top2 = metric("top2_accuracy", num_classes, top_k=2)
    return {"accuracy": accuracy, "top2_accuracy": top2}
"""
# Lines put between two kept ones, an inner block among them.
USER_INSERTED_BODY = """\
    accuracy = metric("accuracy", num_classes, top_k=1)
    if num_classes > 2:
        return {"accuracy": accuracy, "top2": metric("top2", num_classes, top_k=2)}
    return {"accuracy": accuracy}
"""
DECISION_LINE = "    return max(range(len(probabilities)), key=probabilities.__getitem__)\n"
USER_DECISION_LINE = "    return probabilities.index(max(probabilities))\n"
LOSS_LINE = "    return math.log(total) - logits[target]\n"
USER_LOSS_LINE = "    return max(0.0, math.log(total) - logits[target])\n"


@pytest.fixture(scope="module")
def restructuring(tmp_path_factory) -> tuple[Path, str, str]:
    """(host baked at A with the submodule at A, A, R)."""
    template = make_template_repo(tmp_path_factory.mktemp("restructuring") / "ml-aws-template")
    for path in (*METRICS, SPECS, LOSSES):
        assert not (template / source(path)).exists(), f"{path}: pick another name for the test"
    (template / source(METRICS[0])).write_text(METRICS_A)
    git("add", "-A", cwd=template)
    git("commit", "--quiet", "-m", "A: a module of functions", cwd=template)
    a = git("rev-parse", "HEAD", cwd=template)

    move_in_template(template, *METRICS)
    for path, text in ((METRICS[1], TASKS_R), (SPECS, SPECS_R), (LOSSES, LOSSES_R)):
        (template / source(path)).write_text(text)
    declare_moves(template, {METRICS[0]: METRICS[1]})
    git("add", "-A", cwd=template)
    git("commit", "--quiet", "-m", "R: move it and make it a class", cwd=template)
    r = git("rev-parse", "HEAD", cwd=template)

    host = make_host(tmp_path_factory.mktemp("restructuring-host") / "cats", template)
    git("checkout", "--quiet", a, cwd=host / SUBMODULE)
    run_bootstrap(host, "--torch", "cpu")
    commit_all(host, "bootstrap")
    return host, a, r


@pytest.fixture
def restructuring_host(restructuring, tmp_path) -> Path:
    copy = tmp_path / "cats"
    shutil.copytree(restructuring[0], copy, symlinks=True)
    return copy


def edit_lines(host: Path, path: str, *changes: tuple[str, str]) -> str:
    """Replace lines of a module of the project, each (old, new) once; return its new text."""
    module = host / cats(path)
    text = module.read_text()
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    module.write_text(text)
    return text


def method(body: str) -> str:
    """Lines of a module-level function's body as the body of a method."""
    return textwrap.indent(body, "    ")


def multiclass(host: Path, call: str) -> object:
    """`Multiclass().<call>` as the project's package computes it, in a fresh interpreter."""
    code = f"from cats.tasks.metric_tasks import Multiclass; print(repr(Multiclass().{call}))"
    result = run(sys.executable, "-c", code, cwd=host, PYTHONPATH=str(host / "src"))
    return ast.literal_eval(result.stdout)


def update_restructured(host: Path, r: str, *changes: tuple[str, str]):
    """The user's changes to the old module, committed, and --update to R: (result, old text)."""
    mine = edit_lines(host, METRICS[0], *changes)
    commit_all(host, "user edits")
    move_submodule(host, r)
    return run_bootstrap(host, "--update", check=False), mine


def assert_relocated(host: Path, result, r: str, mine: str) -> str:
    """The relocated move's row and note, the old file left as it was; the new file's text."""
    assert result.returncode == 0, result.stderr
    old, new = cats(METRICS[0]), cats(METRICS[1])
    assert outcomes(result.stdout) == {new: "moved", cats(SPECS): "new", cats(LOSSES): "new"}
    note = (
        f"from {old}, your changes re-applied to the moved code: check them; {old} left in "
        "place: delete it once you have checked"
    )
    assert f"  moved      {new}  ({note})\n" in result.stdout
    assert (host / old).read_text() == mine
    assert record(host)["template_version"] == r
    text = (host / new).read_text()
    ast.parse(text)
    return text


def assert_plain_conflict(host: Path, result, a: str, r: str, mine: str) -> str:
    """The conflict of git merge-file, as without relocation: markers, exit 1, nothing lost."""
    old, new = cats(METRICS[0]), cats(METRICS[1])
    assert result.returncode == 1
    assert f"1 conflict(s) left in {new}" in one_bootstrap_error(result.stderr)
    assert outcomes(result.stdout) == {new: "conflict", cats(SPECS): "new", cats(LOSSES): "new"}
    assert f"(from {old}: you both changed the same lines; {old} left in place)" in result.stdout
    labels = ("yours", f"template {a[:8]}", f"template {r[:8]}")
    plain = bootstrap.merge_text(
        mine.encode(), cats(METRICS_A).encode(), cats(TASKS_R).encode(), labels
    )
    assert plain is not None and not plain[1]
    text = (host / new).read_text()
    assert text.encode() == plain[0] and "<<<<<<< yours\n" in text
    assert (host / old).read_text() == mine
    assert record(host)["template_version"] == a
    return text


def test_restructured_move_re_applies_the_users_edit_to_the_moved_lines(
    restructuring_host, restructuring
):
    """The function the user edited is a method now: the user's lines are in it, 4 spaces in."""
    _, _, r = restructuring
    result, mine = update_restructured(restructuring_host, r, (METRICS_BODY, USER_METRICS_BODY))
    text = assert_relocated(restructuring_host, result, r, mine)
    assert text == cats(TASKS_R).replace(method(METRICS_BODY), method(USER_METRICS_BODY))
    assert multiclass(restructuring_host, "metrics(5)") == {
        "accuracy": {"name": "accuracy", "num_classes": 5, "top_k": 1},
        "top2_accuracy": {"name": "top2_accuracy", "num_classes": 5, "top_k": 2},
    }


def test_restructured_move_re_applies_an_insertion_between_kept_lines(
    restructuring_host, restructuring
):
    _, _, r = restructuring
    result, mine = update_restructured(restructuring_host, r, (METRICS_BODY, USER_INSERTED_BODY))
    text = assert_relocated(restructuring_host, result, r, mine)
    assert text == cats(TASKS_R).replace(method(METRICS_BODY), method(USER_INSERTED_BODY))
    assert multiclass(restructuring_host, "metrics(2)") == {
        "accuracy": {"name": "accuracy", "num_classes": 2, "top_k": 1}
    }
    assert set(multiclass(restructuring_host, "metrics(3)")) == {"accuracy", "top2"}


def test_restructured_move_conflicts_where_the_template_changed_the_users_lines(
    restructuring_host, restructuring
):
    """R rewrote the line the user changed (not only re-indented it): no place for the change."""
    _, a, r = restructuring
    result, mine = update_restructured(restructuring_host, r, (DECISION_LINE, USER_DECISION_LINE))
    text = assert_plain_conflict(restructuring_host, result, a, r, mine)
    assert USER_DECISION_LINE in text and method(DECISION_LINE) not in text
    assert "key=lambda i: probabilities[i])\n" in text  # the template's line, in its side


def test_restructured_move_conflicts_where_the_users_lines_went_to_another_file(
    restructuring_host, restructuring
):
    """The loss went to losses.py: the user's change to it has no place in the new file, so the
    edit that has one is not re-applied either; both are in the conflict, neither is lost."""
    _, a, r = restructuring
    result, mine = update_restructured(
        restructuring_host, r, (METRICS_BODY, USER_METRICS_BODY), (LOSS_LINE, USER_LOSS_LINE)
    )
    text = assert_plain_conflict(restructuring_host, result, a, r, mine)
    assert USER_LOSS_LINE in text and USER_METRICS_BODY in text
    assert (restructuring_host / cats(LOSSES)).read_text() == cats(LOSSES_R)


def test_relocate_anchors_on_two_lines_of_code_and_both_sides_of_an_insertion():
    """Two kept lines anchor a change, and a method's lines that became a function's lose their
    4 spaces (blank lines stay blank); a lone `return x` never anchors. Lines the user and the
    template both appended have no order to take: no relocation (git's conflict stands)."""
    base = b"class A:\n    def f(self):\n        a = 1\n        return a\n"
    ours = base.replace(b"        return a\n", b"        a += 1\n\n        return a\n")
    theirs = b"def f():\n    a = 1\n    return a\n"
    assert (
        bootstrap.relocate(ours, base, theirs)
        == b"def f():\n    a = 1\n    a += 1\n\n    return a\n"
    )
    function = b"def f():\n    a = 1\n    return a\n"
    changed = function.replace(b"return a", b"return a + 1")
    assert bootstrap.relocate(changed, function, b"def g():\n    b = 2\n    return a\n") is None
    mine, template = (function + f"\n\ndef {name}():\n    return 2\n".encode() for name in "gh")
    assert bootstrap.relocate(mine, function, template) is None


# --- a project baked before the package was laid out by layer ---------------------------------

# main just before the move into base/, data/, model/, training/, serve/, release/, deploy/.
BEFORE_LAYERS = "f552f928fb69fe07b8a63dace1085478ccad207a"
USER_FLIP = (
    "        # user: and upside down, half of the time\n"
    "        x = torch.where(torch.rand(len(x), 1, 1, 1, device=x.device) < 0.5, x.flip(2), x)\n"
)


def template_at_two_commits(dest: Path) -> tuple[Path, str, str]:
    """A template repo whose commit A is main before the layers and B this working tree."""
    listed = run("git", "cat-file", "-t", BEFORE_LAYERS, cwd=REPO_ROOT, check=False)
    assert listed.stdout.strip() == "commit", (
        f"commit {BEFORE_LAYERS[:8]} is not in this clone's history: the test needs a full clone"
    )
    source = make_template_repo(dest.parent / "now")
    dest.mkdir(parents=True)
    archive = run("git", "archive", "--format=tar", "-o", dest.parent / "a.tar", BEFORE_LAYERS,
                  cwd=REPO_ROOT)  # fmt: skip
    assert archive.returncode == 0
    run("tar", "-xf", dest.parent / "a.tar", "-C", dest, cwd=dest)
    git("init", "--quiet", "--initial-branch=main", cwd=dest)
    git("add", "-A", cwd=dest)
    git("commit", "--quiet", "-m", "A: before the layers", cwd=dest)
    a = git("rev-parse", "HEAD", cwd=dest)
    git("rm", "-r", "--quiet", ".", cwd=dest)
    shutil.copytree(source, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
    git("add", "-A", cwd=dest)
    git("commit", "--quiet", "-m", "B: the layers", cwd=dest)
    return dest, a, git("rev-parse", "HEAD", cwd=dest)


def edit_as_the_old_guide_says(host: Path) -> None:
    """Three edits of a user of the old layout: a changed augmentation, the guide's "Add a
    metric" and "Use your own network" recipes as that guide gives them, and a shorter run."""
    import re

    package = host / "src" / "cats"
    augment = package / "model" / "augment.py"
    anchor = "        if self.color_jitter > 0:\n            x = self.jitter(x)\n"
    assert anchor in augment.read_text()
    augment.write_text(augment.read_text().replace(anchor, anchor + USER_FLIP))
    guide = (host / "PROJECT.md").read_text()
    metric = guide.split("\n### Add a metric\n", 1)[1].split("\n### ", 1)[0]
    (replaced,) = re.findall(r"replace the last line\nof `metrics`, `(.+?)`", metric)
    (code,) = re.findall(r"```python\n(.*?)```", metric, re.S)
    objective = package / "model" / "objective.py"
    objective.write_text(objective.read_text().replace(f"    {replaced}\n", code))
    network = guide.split("\n### Use your own network\n", 1)[1].split("\n### ", 1)[0]
    (net_code,) = re.findall(r"```python\n(.*?)```", network, re.S)
    with (package / "model" / "nets.py").open("a") as f:
        f.write("\n\n" + net_code)
    params = (host / "params.yaml").read_text()
    (options,) = re.findall(r"```yaml\nmodel:\n  name: wide-mlp\n(.*?)```", network, re.S)
    params = params.replace("model:\n  name: mlp\n", "model:\n  name: wide-mlp\n" + options)
    params = params.replace("  max_epochs: 30\n", "  max_epochs: 4\n")
    (host / "params.yaml").write_text(params)


@pytest.mark.e2e
def test_a_project_baked_before_the_layers_updates_with_its_edits_then_trains_and_releases(
    tmp_path, moto_endpoint
):
    """Issue 26's acceptance: baked at the commit before the move, edited by its user, updated
    with one --update, and the pipeline and a release run with the edits in place."""
    template, a, b = template_at_two_commits(tmp_path / "template" / "ml-aws-template")
    host = make_host(tmp_path / "cats", template)
    move_submodule(host, a)
    run_bootstrap(host, "--torch", "cpu")
    commit_all(host, "bootstrap")
    edit_as_the_old_guide_says(host)
    commit_all(host, "my augmentation, metric and network")
    move_submodule(host, b)

    result = run_bootstrap(host, "--update")
    print(result.stdout)
    rows = outcomes(result.stdout)
    assert rows["src/cats/model/tasks.py"] == "moved"
    assert "your changes re-applied" in result.stdout
    assert rows["src/cats/model/augment.py"] == "updated"
    assert "src/cats/model/nets.py" not in rows  # the template did not change it
    assert rows["src/cats/training/train.py"] == "moved"
    package = host / "src" / "cats"
    assert USER_FLIP in (package / "model" / "augment.py").read_text()
    assert '"top2_accuracy": top2' in (package / "model" / "tasks.py").read_text()
    assert '@network("wide-mlp")' in (package / "model" / "nets.py").read_text()
    # Moved modules the user never changed are gone; the one they changed stays for them.
    assert not (package / "train.py").exists() and not (package / "eval.py").exists()
    assert (package / "model" / "objective.py").exists()
    assert record(host)["template_version"] == b
    (package / "model" / "objective.py").unlink()  # checked: its edit is in model/tasks.py
    commit_all(host, "update to the layers")

    env = {"PYTHONPATH": str(host / "src"), "DVC_NO_ANALYTICS": "1"}
    run(sys.executable, "-m", "cats.data.sample_data", cwd=host, **env)
    run("dvc", "repro", cwd=host, **env)
    results = json.loads((host / "evaluation_results.json").read_text())
    print(f"after the update: {results}")
    assert results["accuracy"] > 0.8 and results["accuracy"] <= results["top2_accuracy"] <= 1
    network = run(sys.executable, "-c", "import torch; c = torch.load('models/model.ckpt', "
                  "weights_only=True); print(c['hyper_parameters']['network']['name'])",
                  cwd=host, **env).stdout.strip()  # fmt: skip
    assert network == "wide-mlp"

    bucket = "layers-releases"
    import boto3

    boto3.client(
        "s3", endpoint_url=moto_endpoint, aws_access_key_id="testing",
        aws_secret_access_key="testing", region_name="us-east-1",
    ).create_bucket(Bucket=bucket)  # fmt: skip
    (host / ".env").write_text(
        f"MODEL_RELEASE_S3_URI=s3://{bucket}/cats\nAWS_ENDPOINT_URL={moto_endpoint}\n"
        "AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\nAWS_DEFAULT_REGION=us-east-1\n"
    )
    commit_all(host, "trained")
    released = run(sys.executable, "-m", "cats.scripts.release", cwd=host,
                   AWS_EC2_METADATA_DISABLED="true", **env)  # fmt: skip
    assert "released s3://layers-releases/cats/0.1.0/" in released.stderr, released.stderr[-2000:]
