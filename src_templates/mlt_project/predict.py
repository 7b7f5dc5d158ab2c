"""Batch inference with the released ONNX model: a folder of images or a Parquet split -> CSV.

    python -m mlt_project.predict data/new_images/ [--out predictions.csv]
    python -m mlt_project.predict data/processed/test.parquet

Images go through preprocess's own `load_image` (converted to the model's channels, resized to
its size), so inference sees exactly what training saw. The CSV has one row per image: the
input, the predicted class, its probability, and the probability of every class.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from .config import PARAMS_FILE, Config, load_config
from .data.preprocess import IMAGE_SUFFIXES, load_image
from .data.store import read_split
from .errors import PipelineError, run_main
from .files import atomic_output
from .logs import setup_logger
from .onnx_export import onnx_session, run_onnx

BATCH_SIZE = 256

log = logging.getLogger(__name__)


def read_inputs(
    source: Path, cfg: Config, input_shape: tuple[int, ...]
) -> tuple[list[str], np.ndarray]:
    """(names, uint8 images (N, C, H, W)) from an image folder or a Parquet split."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PipelineError(
                f"{source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}): point "
                "predict at a folder of images or a Parquet split"
            )
        channels, height, width = input_shape
        data = dataclasses.replace(cfg.data, channels=channels, image_size=[height, width])
        images = np.stack([load_image(path, data) for path in files])
        return [str(path) for path in files], images
    if source.suffix == ".parquet":
        images, _, _ = read_split(source)
        if tuple(images.shape[1:]) != input_shape:
            raise PipelineError(
                f"{source} holds images of shape {tuple(images.shape[1:])} but the model takes "
                f"{input_shape}: preprocess them with the params the model was trained with"
            )
        return [f"{source}#{row}" for row in range(len(images))], images
    if source.exists():
        raise PipelineError(f"{source} is neither a folder of images nor a .parquet file")
    raise PipelineError(f"{source} not found")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def predict(cfg: Config, source: Path, out: Path, model_path: Path | None = None) -> int:
    """Write one CSV row per input image; return the number of rows."""
    model_path = model_path or Path(cfg.paths.release) / "model.onnx"
    info_file = model_path.with_name("model_info.json")
    if not info_file.is_file():
        raise PipelineError(
            f"{info_file} not found: it comes with the model from "
            "`python -m mlt_project.scripts.release export-onnx` or a downloaded release"
        )
    info = json.loads(info_file.read_text(encoding="utf-8"))
    class_names = info["class_names"]
    input_shape = tuple(info["input"]["shape"][1:])
    session = onnx_session(model_path)
    names, images = read_inputs(source, cfg, input_shape)
    probabilities = np.concatenate(
        [
            softmax(run_onnx(session, images[start : start + BATCH_SIZE]))
            for start in range(0, len(images), BATCH_SIZE)
        ]
    )
    with atomic_output(out) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["input", "predicted", "score", *(f"score_{c}" for c in class_names)])
        for name, row in zip(names, probabilities, strict=True):
            best = int(row.argmax())
            scores = [f"{p:.6f}" for p in row]
            writer.writerow([name, class_names[best], scores[best], *scores])
    log.info("wrote %d predictions to %s", len(names), out)
    return len(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a folder of images, or a .parquet split")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--model", type=Path, help="ONNX file (default: paths.release/model.onnx)")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    setup_logger()
    return run_main(lambda: predict(load_config(args.params), args.source, args.out, args.model))


if __name__ == "__main__":
    raise SystemExit(main())
