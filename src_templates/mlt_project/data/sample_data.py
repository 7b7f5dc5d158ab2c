"""Write scikit-learn's 8x8 handwritten digits (1,797 images) as PNGs in class folders.

    python -m mlt_project.data.sample_data [--out data/raw] [--force]

A real data set that works offline, so the first `dvc repro` trains for real.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..base import cli
from ..base.config import load_config
from ..base.errors import PipelineError
from ..base.fileio import atomic_output


def write_digits(out_dir: Path, force: bool = False) -> int:
    """Write data/raw/<digit>/<index>.png; return the number of images written."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise PipelineError(
            "scikit-learn is not installed: run `poetry install --with dev` (it ships the digits)"
        ) from None
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise PipelineError(f"{out_dir} is not empty: pass --force to add the digits to it anyway")
    digits = load_digits()
    # Pixels are 0..16 in the data set; scale them to the full 8-bit range of a PNG.
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    for index, (pixels, label) in enumerate(zip(images, digits.target, strict=True)):
        class_dir = out_dir / str(label)
        class_dir.mkdir(parents=True, exist_ok=True)
        with atomic_output(class_dir / f"{index:04d}.png") as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
    return len(images)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument(
        "--out", type=Path, help="folder to write (default: paths.raw in params.yaml)"
    )
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder")
    args = parser.parse_args(argv)

    def run() -> None:
        out_dir = args.out or Path(load_config(args.params).paths.raw)
        count = write_digits(out_dir, force=args.force)
        print(f"wrote {count} digit images to {out_dir}/<0-9>/")

    return cli.run(run)


if __name__ == "__main__":
    raise SystemExit(main())
