"""requirements-serve.txt (what the serving image installs) pins what poetry.lock locks.

It fails with one line naming the pin that differs and the command that writes the file again:
`python -m mlt_project.scripts.serve_requirements`. It passes while the project has no
poetry.lock yet (a new project: the template's pins are those its own tests locked); after the
first `poetry install` (which locks), run that command, as PROJECT.md's Quick start does, and
commit both files.
"""

from pathlib import Path

from mlt_project.scripts.serve_requirements import difference

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_requirements_serve_pins_what_poetry_lock_locks():
    problem = difference(
        PROJECT_ROOT / "requirements-serve.txt",
        PROJECT_ROOT / "poetry.lock",
        PROJECT_ROOT / "pyproject.toml",
    )
    assert problem is None, problem
