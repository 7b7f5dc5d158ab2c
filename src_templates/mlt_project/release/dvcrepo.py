"""The DVC commands the scripts run, with one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

from ..base.errors import PipelineError

TRAINING_PIPELINE = "dvc.yaml"


def dvc(*args: str, quiet: bool = True) -> str:
    """Run DVC with this interpreter; return its stdout. A failure is a PipelineError."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], capture_output=quiet, text=True, check=False
    )
    if result.returncode != 0:
        lines = (result.stderr or "").strip().splitlines() or ["(see the output above)"]
        raise PipelineError(f"dvc {' '.join(args[:2])} failed: {lines[-1]}")
    return result.stdout or ""


def stale_stages(pipeline: str = TRAINING_PIPELINE) -> list[str]:
    """The stages of `pipeline` whose deps or outs differ from dvc.lock (`dvc status`)."""
    return sorted(json.loads(dvc("status", "--json", pipeline) or "{}"))


def require_fresh_pipeline(
    allow_stale: bool, what: str, flag: str | None = "--allow-stale"
) -> None:
    """Refuse when the training pipeline is not what dvc.lock records, unless `allow_stale`."""
    if allow_stale:
        return
    stale = stale_stages()
    if stale:
        raise PipelineError(
            f"the training pipeline is not up to date ({', '.join(stale)} changed, `dvc status`): "
            f"{what} would not match the code, params and data of this commit; run `dvc repro` "
            "and commit dvc.lock" + (f", or pass {flag}" if flag else "")
        )
