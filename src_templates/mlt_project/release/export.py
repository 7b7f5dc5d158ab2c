"""The release's export: the checkpoint as model.onnx behind the parity gate, and model_info.json.

    python -m mlt_project.release.export [--version V] [--max-inline-bytes N]

What `dvc repro release/dvc.yaml` runs (and `python -m mlt_project.scripts.release export-onnx`).
The export does not depend on the git commit: it is a function of the checkpoint, the data and the
params, so a cached one stays valid after a commit. Tagging and uploading live apart (tag.py,
upload.py), so that changing them exports nothing again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from .. import PROJECT_NAME
from ..base import cli
from ..base.config import PARAMS_FILE, Config, load_config, read_params
from ..base.errors import PipelineError
from ..base.fileio import atomic_output, read_json, sha256_file
from ..data.store import read_head, split_path
from ..model.checkpoint import Trained, load_trained
from ..serve.onnx_export import (
    MAX_INLINE_BYTES,
    check_parity,
    onnx_files,
    parity_summary,
    staged_export,
)
from ..serve.onnx_runtime import INFO_FILE, INPUT_NAME, MODEL_FILE, OUTPUT_NAME
from .version import resolve_version

log = logging.getLogger(__name__)

DVC_LOCK = Path("dvc.lock")
EXPORT_HINT = "run `dvc repro release/dvc.yaml` (or `python -m mlt_project.scripts.release`)"


def onnx_path(cfg: Config) -> Path:
    return Path(cfg.paths.release) / MODEL_FILE


def info_path(cfg: Config) -> Path:
    return Path(cfg.paths.release) / INFO_FILE


def data_hashes(cfg: Config) -> dict[str, str]:
    """The md5 DVC recorded in dvc.lock for the raw and processed data (empty without a lock)."""
    if not DVC_LOCK.is_file():
        return {}
    lock = yaml.safe_load(DVC_LOCK.read_text(encoding="utf-8")) or {}
    wanted = {cfg.paths.raw.rstrip("/"), cfg.paths.processed.rstrip("/")}
    found = {}
    for stage in lock.get("stages", {}).values():
        for entry in stage.get("deps", []) + stage.get("outs", []):
            if entry.get("path", "").rstrip("/") in wanted and "md5" in entry:
                found[entry["path"]] = entry["md5"]
    return found


def export_release(
    cfg: Config,
    version: str,
    params_path: Path = PARAMS_FILE,
    max_inline_bytes: int = MAX_INLINE_BYTES,
) -> dict[str, Any]:
    """Write paths.release/model.onnx (+ its data files) and model_info.json, if the gate passes.

    Weights over `max_inline_bytes` go to external-data files beside model.onnx.
    """
    trained = load_trained(cfg)
    metrics = read_json(Path(cfg.paths.metrics), "run `dvc repro` to evaluate the model first")
    _, class_names = read_head(split_path(cfg.paths.processed, "test"), 0)
    target = onnx_path(cfg)
    start = time.perf_counter()
    with staged_export(
        trained.net, target, cfg.data.input_shape, cfg.release.onnx_opset, max_inline_bytes
    ) as staged:
        export_seconds = time.perf_counter() - start
        # The gate runs on the files about to be moved into place: a failed gate leaves the
        # previous export, and the data it reads, as they were.
        parity = parity_gate(cfg, trained, staged, f"the new export of {target} (not written)")
    data_files = onnx_files(target)[1:]
    # Nothing here depends on the git commit, so a cached export stays valid after a commit.
    info = {
        "project": PROJECT_NAME,
        "version": version,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", *cfg.data.input_shape]},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", cfg.data.num_classes]},
        # What the logits mean (base/tasks.py): multiclass, softmax and the top class;
        # multilabel, a sigmoid per class and every class at or above its threshold.
        "task": trained.task.name,
        "class_names": class_names,
        **({"thresholds": trained.thresholds} if trained.thresholds is not None else {}),
        "onnx_opset": cfg.release.onnx_opset,
        "onnx_sha256": sha256_file(target),
        # Weights too big for one protobuf message: files beside model.onnx, shipped with it.
        "onnx_external_data": {path.name: sha256_file(path) for path in data_files},
        "checkpoint_sha256": sha256_file(cfg.paths.model),
        "export_seconds": round(export_seconds, 3),
        "parity": parity,
        "metrics": metrics,
        "params": read_params(params_path),
        "data": data_hashes(cfg),
    }
    with atomic_output(info_path(cfg)) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info("exported %s in %.2fs; %s", target, export_seconds, parity_summary(parity))
    return info


def parity_gate(
    cfg: Config, trained: Trained, onnx_file: Path, shown_as: str | None = None
) -> dict[str, object]:
    """The parity gate (serve/onnx_export.py) between the trained network and an ONNX file, on
    the first release.parity_samples images of the test split, with release's tolerances."""
    images, _ = read_head(split_path(cfg.paths.processed, "test"), cfg.release.parity_samples)
    return check_parity(
        trained.net,
        onnx_file,
        images,
        rtol=cfg.release.parity_rtol,
        atol=cfg.release.parity_atol,
        task=trained.task,
        thresholds=trained.thresholds,
        shown_as=shown_as,
    )


def release_info(cfg: Config, version: str) -> dict[str, Any]:
    """model_info.json, checked to describe `version` and the checkpoint and metrics as they are."""
    info = read_json(info_path(cfg), EXPORT_HINT)
    stale = None
    if info.get("version") != version:
        stale = f"is for version {info.get('version')}, not {version}"
    elif info.get("checkpoint_sha256") != sha256_file(cfg.paths.model):
        stale = f"was exported from another {cfg.paths.model}"
    elif info.get("metrics") != read_json(Path(cfg.paths.metrics), "run `dvc repro`"):
        stale = f"records other metrics than {cfg.paths.metrics}"
    if stale:
        raise PipelineError(f"{info_path(cfg)} {stale}: {EXPORT_HINT} to export again")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--version", help="release version (default: release.version in params)")
    add_max_inline_bytes(parser)
    args = parser.parse_args(argv)

    def run() -> None:
        cfg = load_config(args.params)
        export_release(cfg, resolve_version(cfg, args.version), args.params, args.max_inline_bytes)

    return cli.run(run)


def add_max_inline_bytes(parser: argparse.ArgumentParser) -> None:
    """--max-inline-bytes, for this command and `release export-onnx`."""
    parser.add_argument(
        "--max-inline-bytes",
        type=int,
        default=MAX_INLINE_BYTES,
        help="weights over this size go to external-data files beside model.onnx "
        f"(default {MAX_INLINE_BYTES:,}: protobuf's 2 GiB limit, less room for the graph)",
    )


if __name__ == "__main__":
    raise SystemExit(main())
