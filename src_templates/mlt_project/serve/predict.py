"""Batch inference with the released ONNX model: a folder of images or a Parquet split -> CSV.

    python -m mlt_project.serve.predict data/new_images/ [--out predictions.csv] [--skip-corrupt]
    python -m mlt_project.serve.predict data/processed/test.parquet
    python -m mlt_project.serve.predict photos/ --model downloaded/model.onnx   # no project needed

It needs only the release: model.onnx (with any model.*.onnx.data beside it) and model_info.json.
params.yaml only names the default model, paths.release/model.onnx. No PyTorch, no Lightning
(requirements-serve.txt is enough). Images are decoded by `load_image` (data/images.py), as
preprocess decodes them, with the data params the model was exported with, so inference sees
exactly what training saw. Inputs are decoded and run --batch-size at a time and each row is
written as it comes, so memory does not grow with the number of images. The CSV has one row
per image: the input, the predicted class, its probability, and every class's. The task
(model_info.json's, base/tasks.py) decides: for a multilabel model `predicted` lists every label
whose probability reaches its threshold, most probable first, separated by spaces (empty: none),
and `score` their probabilities in the same order.
An unreadable image stops the run; with --skip-corrupt it gets no row and is counted in a warning.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..base import cli
from ..base.config import PARAMS_FILE, DataConfig, load_config
from ..base.errors import PipelineError
from ..base.fileio import atomic_output, read_json
from ..base.tasks import OLDEST_TASK
from ..base.tasks import task as task_named
from ..data.images import IMAGE_SUFFIXES, image_files, load_image
from .onnx_runtime import INFO_FILE, MODEL_FILE, onnx_session, run_onnx

BATCH_SIZE = 256
SHOWN_SKIPPED = 5  # names of skipped files in the warning; the count covers the rest

Batch = tuple[list[str], np.ndarray]

log = logging.getLogger(__name__)


def read_info(model_path: Path) -> dict[str, Any]:
    """model_info.json from beside the model."""
    return read_json(
        model_path.with_name(INFO_FILE),
        "it comes with the model from `python -m mlt_project.scripts.release export-onnx` or a "
        "downloaded release",
    )


def data_params(info: dict[str, Any], model_path: Path) -> DataConfig:
    """The data params the model was exported with, its input shape taking precedence."""
    channels, height, width = info["input"]["shape"][1:]
    try:
        data = DataConfig(**info["params"]["data"])
    except (KeyError, TypeError, ValueError) as error:
        raise PipelineError(
            f"{model_path.with_name(INFO_FILE)} lacks usable data params ({error}): "
            "export the model again with this version"
        ) from None
    return dataclasses.replace(data, channels=channels, image_size=[height, width])


def image_batches(
    files: list[Path], data: DataConfig, batch_size: int, skipped: list[Path] | None
) -> Iterator[Batch]:
    """Decoded images, `batch_size` at a time; with a `skipped` list, unreadable ones go there."""
    names: list[str] = []
    images: list[np.ndarray] = []
    for path in files:
        try:
            images.append(load_image(path, data))
        except PipelineError as error:
            if skipped is None:
                raise PipelineError(f"{error}, or pass --skip-corrupt to skip it") from None
            skipped.append(path)
            continue
        names.append(str(path))
        if len(names) == batch_size:
            yield names, np.stack(images)
            names, images = [], []
    if names:
        yield names, np.stack(images)


def parquet_batches(source: Path, input_shape: tuple[int, ...], batch_size: int) -> Iterator[Batch]:
    """A preprocessed split, one row group in memory at a time, `batch_size` rows per batch."""
    # Imported here: pyarrow is needed for Parquet input only (the serving install has none).
    try:
        from ..data.store import open_split, read_row_group, split_info
    except ImportError:
        raise PipelineError(
            f"reading {source} needs pyarrow, which requirements-serve.txt leaves out: "
            "`pip install pyarrow`, or predict on image files"
        ) from None

    parquet = open_split(source)
    shape, _ = split_info(parquet, source)
    if tuple(shape) != input_shape:
        raise PipelineError(
            f"{source} holds images of shape {tuple(shape)} but the model takes {input_shape}: "
            "preprocess them with the params the model was trained with"
        )
    row = 0
    for group in range(parquet.num_row_groups):
        images, _ = read_row_group(parquet, group, shape)
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            yield [f"{source}#{row + start + i}" for i in range(len(batch))], batch
        row += len(images)


def batches(
    source: Path, data: DataConfig, batch_size: int, skipped: list[Path] | None
) -> Iterator[Batch]:
    """(names, uint8 images (n, C, H, W)) from an image folder or a Parquet split."""
    if source.is_dir():
        files = image_files(source)
        if not files:
            raise PipelineError(
                f"{source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}): point "
                "predict at a folder of images or a Parquet split"
            )
        return image_batches(files, data, batch_size, skipped)
    if source.suffix == ".parquet" and source.is_file():
        return parquet_batches(source, data.input_shape, batch_size)
    if source.exists():
        raise PipelineError(f"{source} is neither a folder of images nor a .parquet file")
    raise PipelineError(f"{source} not found")


def prediction_rows(
    info: dict[str, Any], class_names: list[str], logits: np.ndarray
) -> Iterator[list[str]]:
    """(predicted, score, every class's score) per image, as predict's CSV writes them: the
    classes the task gives the image, most probable first, separated by spaces."""
    task = task_named(info.get("task", OLDEST_TASK))
    probs = task.probabilities(logits)
    for row, chosen in zip(probs, task.chosen(probs, info.get("thresholds")), strict=True):
        scores = [f"{p:.6f}" for p in row]
        yield [
            " ".join(class_names[c] for c in chosen),
            " ".join(scores[c] for c in chosen),
            *scores,
        ]


def predict(
    model_path: Path,
    source: Path,
    out: Path,
    batch_size: int = BATCH_SIZE,
    skip_corrupt: bool = False,
) -> int:
    """Write one CSV row per readable input image; return the number of rows."""
    if batch_size < 1:
        raise PipelineError(f"--batch-size must be at least 1, not {batch_size}")
    info = read_info(model_path)
    class_names = info["class_names"]
    data = data_params(info, model_path)
    session = onnx_session(model_path)
    skipped: list[Path] | None = [] if skip_corrupt else None
    rows = 0
    with atomic_output(out) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["input", "predicted", "score", *(f"score_{c}" for c in class_names)])
        for names, images in batches(source, data, batch_size, skipped):
            predictions = prediction_rows(info, class_names, run_onnx(session, images))
            for name, row in zip(names, predictions, strict=True):
                writer.writerow([name, *row])
            rows += len(names)
    if skipped:
        shown = ", ".join(str(p) for p in skipped[:SHOWN_SKIPPED])
        more = f" and {len(skipped) - SHOWN_SKIPPED} more" if len(skipped) > SHOWN_SKIPPED else ""
        log.warning(
            "skipped %d unreadable images (no row in %s): %s%s", len(skipped), out, shown, more
        )
    log.info("wrote %d predictions to %s", rows, out)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, params=False)
    parser.add_argument("source", type=Path, help="a folder of images, or a .parquet split")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    parser.add_argument(
        "--model", type=Path, help="ONNX file, model_info.json beside it (default: paths.release)"
    )
    parser.add_argument(
        "--params", type=Path, default=PARAMS_FILE, help="only read without --model"
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="images per ONNX run")
    parser.add_argument(
        "--skip-corrupt", action="store_true", help="skip unreadable images (counted in a warning)"
    )
    args = parser.parse_args(argv)

    def run() -> int:
        model = args.model or Path(load_config(args.params).paths.release) / MODEL_FILE
        return predict(model, args.source, args.out, args.batch_size, args.skip_corrupt)

    return cli.run(run)


if __name__ == "__main__":
    raise SystemExit(main())
