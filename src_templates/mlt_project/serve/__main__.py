"""Serve the released model over HTTP: GET /ping, POST /invocations, GET /metadata (serve/server.py).

    python -m mlt_project.serve --model releases/           # a folder with model.onnx (or the file)
    python -m mlt_project.serve --release s3://bucket/models/mlt-project/0.1.0/
    python -m mlt_project.serve --stage production          # the version stages/production.json names
    python -m mlt_project.serve                             # /opt/ml/model, else paths.release

--stage reads stages/<stage>.json beside the releases in $MODEL_RELEASE_S3_URI (`release promote`
writes it); MODEL_STAGE in the environment says the same where no flag can be given (a SageMaker
model's Environment). A release from S3 is downloaded into a temporary folder and every file is
checked against the release's manifest first; a manifest beside a local model (SageMaker copies a
release whole into /opt/ml/model) is checked the same way. A mismatch stops the server before it
listens, with one line. The server then listens at once and loads the model in the background:
/ping answers 503 until it is loaded. SIGTERM (SageMaker, ECS and Kubernetes stopping it) or
Ctrl+C: it stops accepting connections, finishes the requests in flight within --graceful-timeout
seconds, and exits 0. No torch: requirements-serve.txt is enough.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
from types import FrameType

from PIL import Image

from .. import PROJECT_NAME
from ..base import cli
from ..base.config import PARAMS_FILE, load_config
from ..base.errors import PipelineError
from .fetch import check_model_folder, fetch_model, release_at, releases, staged_version
from .onnx_runtime import MODEL_FILE
from .server import MAX_BODY_BYTES, MAX_PIXELS, Limits, create_app, load_model, run

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")  # where SageMaker puts a model's ModelDataSource
STAGE_SETTING = "MODEL_STAGE"
# Under the 30 s SageMaker (and ECS's default stopTimeout) give between SIGTERM and SIGKILL.
GRACEFUL_TIMEOUT_S = 25.0


def local_model(path: Path) -> Path:
    """model.onnx of a folder (or the file itself), checked against a manifest beside it."""
    model = path / MODEL_FILE if path.is_dir() else path
    if not model.is_file():
        raise PipelineError(
            f"no model at {model}: pass --model a folder holding {MODEL_FILE} (`python -m "
            "mlt_project.scripts.release export-onnx` writes one) or the file itself"
        )
    check_model_folder(model)
    return model


def resolve_model(
    model: Path | None, release: str | None, stage: str | None, params: Path, workdir: Path
) -> Path:
    """The model.onnx to serve: --model, --release, --stage (or MODEL_STAGE), /opt/ml/model,
    paths.release, in that order; a release from S3 is fetched into `workdir`, checked."""
    if model is not None:
        return local_model(model)
    if release:
        store, version = release_at(release)
        return fetch_model(store, version, workdir)
    if stage:
        store = releases()
        version, manifest = staged_version(store, stage)
        return fetch_model(store, version, workdir, manifest)
    if SAGEMAKER_MODEL_DIR.is_dir():
        return local_model(SAGEMAKER_MODEL_DIR)
    if not params.is_file():  # e.g. in the serving image, which holds no project
        raise PipelineError(
            f"no model to serve: pass --model, --release or --stage (or set {STAGE_SETTING}), "
            f"give the release as SageMaker model data ({SAGEMAKER_MODEL_DIR}), or run in the "
            f"project, whose {params} names paths.release"
        )
    return local_model(Path(load_config(params).paths.release))


def stop(signum: int, frame: FrameType | None) -> None:
    # Before uvicorn runs (while a release downloads), and again after its graceful shutdown:
    # uvicorn hands the signal it handled back to this handler, which would otherwise end the
    # process by SIGTERM (exit 143), a failure to SageMaker, ECS and Kubernetes alike.
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, params=False)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="a folder holding model.onnx, or the file")
    source.add_argument("--release", help="s3://bucket/prefix/<version>/ of a release")
    source.add_argument(
        "--stage",
        default=os.environ.get(STAGE_SETTING) or None,
        help=f"the version promoted to this stage (default: ${STAGE_SETTING})",
    )
    parser.add_argument(
        "--params", type=Path, default=PARAMS_FILE, help="read only to find paths.release"
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: CUDA where ONNX Runtime has it (onnxruntime-gpu), else the CPU",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=MAX_BODY_BYTES,
        help=f"larger bodies get 413 (default {MAX_BODY_BYTES:,})",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"images that would decode to more pixels get 413 (default {MAX_PIXELS:,})",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=GRACEFUL_TIMEOUT_S,
        help=f"seconds to finish requests after SIGTERM (default {GRACEFUL_TIMEOUT_S:g})",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    for name in ("max_body_bytes", "max_pixels", "port"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    def serve() -> None:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        # Pillow refuses (DecompressionBombError) past twice its limit, before the server's own
        # check (decode_body) could say what the limit is: its limit follows --max-pixels.
        Image.MAX_IMAGE_PIXELS = args.max_pixels
        device = "cuda" if args.device == "auto" else args.device
        with tempfile.TemporaryDirectory(prefix=f"{PROJECT_NAME}-release-") as workdir:
            model = resolve_model(args.model, args.release, args.stage, args.params, Path(workdir))
            limits = Limits(args.max_body_bytes, args.max_pixels)
            app = create_app(lambda: load_model(model, device), limits)
            run(app, args.host, args.port, args.graceful_timeout, args.access_log)
        failure = app.state.serving.failure
        if failure:
            raise PipelineError(failure)

    return cli.run(serve, env=True)


if __name__ == "__main__":
    raise SystemExit(main())
