"""A git-based model registry: each registered model is an annotated tag model-<tag>-<commit>.

    python -m mlt_project.scripts.register_model --tag baseline   # tag HEAD with its metrics
    python -m mlt_project.scripts.register_model list             # registered models, newest first

The tag's message holds the evaluation metrics, so `git show model-baseline-1a2b3c4` tells what
the model scored, and `git checkout` + `dvc pull` brings its data and checkpoint back. It refuses
uncommitted changes (--allow-dirty) and a training pipeline `dvc status` shows changed
(--allow-stale): the metrics would not be those of the tagged commit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..base import cli
from ..base.config import load_config
from ..base.errors import PipelineError
from ..base.fileio import read_json
from ..release.dvcrepo import require_fresh_pipeline
from ..release.gitrepo import create_annotated_tag, git, head_commit, require_clean_tree

TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PREFIX = "model-"


def register(
    tag: str, metrics_path: Path, allow_dirty: bool = False, allow_stale: bool = False
) -> str:
    """Tag HEAD as model-<tag>-<short commit> with the metrics in the message; return the name."""
    if not TAG_RE.fullmatch(tag) or tag.endswith((".", ".lock")):
        raise PipelineError(
            f"--tag {tag!r} cannot be part of a git tag: use letters, digits and '._-', "
            "e.g. baseline or v2-augmented"
        )
    commit = head_commit(short=True)
    # model-a-<commit> must not match model-a-b-<commit>: only a commit may follow the tag.
    same = re.compile(rf"{PREFIX}{re.escape(tag)}-[0-9a-f]{{4,40}}")
    taken = [t for t in git("tag", "--list", f"{PREFIX}{tag}-*").splitlines() if same.fullmatch(t)]
    if taken:
        raise PipelineError(
            f"model {tag!r} is already registered as {taken[0]}: choose another --tag"
        )
    require_clean_tree(allow_dirty)
    require_fresh_pipeline(allow_stale, str(metrics_path))
    metrics = read_json(metrics_path, "run `dvc repro` to evaluate the model")
    name = f"{PREFIX}{tag}-{commit}"
    summary = ", ".join(
        f"{key} {value}" for key, value in metrics.items() if isinstance(value, int | float)
    )
    create_annotated_tag(name, f"{name}: {summary}\n\n{json.dumps(metrics, indent=2)}\n")
    print(f"registered {name}: {summary}")
    return name


def registered() -> list[str]:
    """One line per registered model, newest first: tag, date, metrics summary."""
    listing = git(
        "for-each-ref",
        "--sort=-creatordate",
        "--format=%(refname:short)\t%(creatordate:short)\t%(contents:subject)",
        f"refs/tags/{PREFIX}*",
    )
    return listing.splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("command", nargs="?", choices=["register", "list"], default="register")
    parser.add_argument("--tag", help="the model's name in the tag model-<tag>-<commit>")
    parser.add_argument("--allow-dirty", action="store_true", help="despite uncommitted changes")
    parser.add_argument(
        "--allow-stale", action="store_true", help="despite stages `dvc status` shows changed"
    )
    args = parser.parse_args(argv)
    if args.command == "register" and not args.tag:
        parser.error("--tag is required to register a model (or use `list`)")

    def run() -> None:
        if args.command == "list":
            for line in registered() or ["no registered models"]:
                print(line)
            return
        metrics = Path(load_config(args.params).paths.metrics)
        register(args.tag, metrics, args.allow_dirty, args.allow_stale)

    return cli.run(run, env=True)


if __name__ == "__main__":
    raise SystemExit(main())
