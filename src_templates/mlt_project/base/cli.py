"""What every command line of this package shares: its parser, logging, `.env`, one-line errors.

The commands (each runs as `python -m mlt_project.<module>`):

    data.sample_data   data.preprocess   training.train   training.evaluate   training.lr_find
    serve   serve.predict   release.export
    scripts.release   scripts.register_model   scripts.export_and_benchmark   scripts.dvc_remote
    scripts.batch   scripts.checkpoint_sync   scripts.distributed   scripts.serve_requirements
    scripts.sweep

Imports nothing heavy: a command's own module decides what it needs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import PARAMS_FILE, Config, load_config
from .errors import run_main
from .logs import setup_logger


def parser(doc: str | None, params: bool = True, **options: Any) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of the command's docstring, with --params."""
    result = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0], **options)
    if params:
        result.add_argument(
            "--params", type=Path, default=PARAMS_FILE, help=f"default: {PARAMS_FILE}"
        )
    return result


def run(body: Callable[[], object], *, env: bool = False) -> int:
    """Run a command's body with logging set up (and `.env` read, for commands that reach AWS):
    a PipelineError prints as one line and exits 1; any other exception keeps its traceback."""
    setup_logger()
    if env:
        from .env import load_env  # python-dotenv: only the commands that reach AWS need it

        load_env()
    return run_main(body)


def stage(doc: str | None, body: Callable[[Config], object], argv: list[str] | None) -> int:
    """The whole command line of a pipeline stage: `--params`, then `body(config)`."""
    args = parser(doc).parse_args(argv)
    return run(lambda: body(load_config(args.params)))
