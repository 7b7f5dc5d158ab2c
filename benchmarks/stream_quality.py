"""What streaming learns: classes per training batch and val accuracy after one epoch (the
default MLP), streamed and in memory, on noisy synthetic classes (BENCHMARKS.md, issue 18).

    python benchmarks/stream_quality.py [--root DIR] [--images 21000] [--size 40]

Each image is its class's pattern under noise (`--pattern` of it), and `--flip` of them show
another class's pattern: no model beats about 1 - flip * 0.9. The splits are written in the
order the checkout's own preprocess (`split_indices`) gives, in row groups of 2,000 images.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=HERE.parent, help="checkout to measure")
    parser.add_argument("--images", type=int, default=21_000)
    parser.add_argument("--size", type=int, default=40)
    parser.add_argument("--pattern", type=float, default=0.2)
    parser.add_argument("--flip", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=2, help="streamed loader workers")
    parser.add_argument("--seed", type=int, default=42, help="training.seed")
    args = parser.parse_args()
    sys.path.insert(0, str(args.root.resolve() / "src_templates"))
    from mlt_project.base.config import load_config
    from mlt_project.data.store import split_path, write_chunks

    try:  # since issue 20: splits from image content, a file name in every row
        from mlt_project.data.splits import split_indices

        with_names = True

        def split_rows(images, labels, data):
            digests = [hashlib.sha256(image.tobytes()).digest() for image in images]
            files = [Path(f"{i}.png") for i in range(len(labels))]
            return split_indices(digests, labels, [None] * len(labels), files, data).indices

    except ImportError:  # a checkout from before: the split of preprocess, no file names
        from mlt_project.data.preprocess import split_indices as split_rows_of

        with_names = False

        def split_rows(images, labels, data):
            return split_rows_of(labels, data)

    from mlt_project.training.factories import create_datamodule, create_model, create_trainer

    tmp, size, classes = Path(tempfile.mkdtemp()), args.size, 10
    cfg = load_config(args.root / "template_configs" / "project" / "params.yaml")
    cfg = dataclasses.replace(
        cfg,
        paths=dataclasses.replace(
            cfg.paths, **{f.name: str(tmp / f.name) for f in dataclasses.fields(cfg.paths)}
        ),
        data=dataclasses.replace(cfg.data, image_size=[size, size], channels=3),
        training=dataclasses.replace(
            cfg.training,
            seed=args.seed,
            max_epochs=1,
            accelerator="cpu",
            devices=1,
            precision="32-true",
        ),
    )
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, (classes, 3, size, size))
    labels = np.repeat(np.arange(classes), args.images // classes)  # class order, as on disk
    flip = rng.random(len(labels)) < args.flip
    shown = np.where(flip, rng.integers(0, classes, len(labels)), labels)
    noise = rng.integers(0, 256, (len(labels), 3, size, size))
    images = (args.pattern * patterns[shown] + (1 - args.pattern) * noise).astype(np.uint8)
    out = Path(cfg.paths.processed)
    out.mkdir(parents=True)
    for split, rows in split_rows(images, labels, cfg.data).items():
        names = [f"{i}.png" for i in rows] if with_names else None
        chunks = [(images[rows[i : i + 2000]], labels[rows[i : i + 2000]],
                   *([names[i : i + 2000]] if with_names else []))
                  for i in range(0, len(rows), 2000)]  # fmt: skip
        write_chunks(split_path(out, split), chunks, (3, size, size), list("0123456789"))
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    for streaming in (False, True):
        runtime = dataclasses.replace(
            cfg.runtime, streaming=streaming, loader_workers=args.workers if streaming else 0
        )
        run_cfg = dataclasses.replace(cfg, runtime=runtime)
        datamodule = create_datamodule(run_cfg)
        datamodule.setup("fit")
        batch = run_cfg.training.batch_size
        mix = [len(set(y.tolist())) for _, y in datamodule.train_dataloader() if len(y) == batch]
        trainer = create_trainer(run_cfg, logger=False, enable_checkpointing=False)
        trainer.fit(create_model(run_cfg), datamodule=create_datamodule(run_cfg))
        accuracy = float(
            trainer.callback_metrics.get("val/accuracy", trainer.callback_metrics.get("val/acc"))
        )
        side = "streamed" if streaming else "in memory"
        print(f"{side}: {np.mean(mix):.2f} classes per batch (fewest {min(mix)}), "
              f"val accuracy {accuracy:.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
