"""The released model over HTTP, in SageMaker's bring-your-own-container contract, so that the
same image runs on SageMaker, ECS or Kubernetes:

    GET  /ping         200 once the model is loaded, 503 before
    POST /invocations  one image as the body (image/png, image/jpeg, ...): the classes the model
                       gives it and every class's probability, as predict decides them
    GET  /metadata     model_info.json's version, task, classes, input shape and metrics

Starlette on uvicorn: an ASGI app, small, and no dependency beyond anyio. A request's image is
decoded by data/images.py's `decode`, as predict and training decode files, and run through ONNX
Runtime in a worker thread. Bad input is a 4xx with a one-line JSON error, {"error": "..."};
an unexpected failure is a 500 with a generic line, its traceback only in the server's log.
`python -m mlt_project.serve` (serve/__main__.py) finds the model and runs this.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..base.config import DataConfig
from ..base.errors import PipelineError
from ..base.tasks import OLDEST_TASK, Task
from ..base.tasks import task as task_named
from ..data.images import DECODE_ERRORS, decode
from .onnx_runtime import onnx_session, run_onnx
from .predict import data_params, read_info

# SageMaker's real-time endpoints take at most 6 MB a request; ECS and Kubernetes have no limit
# of their own, and a 12-megapixel PNG is about that size.
MAX_BODY_BYTES = 16 * 2**20
# Decoded, 50 megapixels are 150 MB of RGB: more would let a small file take the memory of many
# (a decompression bomb). Pillow's own limit is 89 million (a warning) and twice that (an error).
MAX_PIXELS = 50_000_000
# The types `load_image` reads, as MIME types; application/x-image is SageMaker's name for any
# image, application/octet-stream what a client sends when it names no type.
IMAGE_TYPES = (
    "image/png", "image/jpeg", "image/bmp", "image/gif", "image/tiff", "image/webp",
    "application/x-image", "application/octet-stream",
)  # fmt: skip

log = logging.getLogger(__name__)


class Refused(Exception):
    """A request the server will not answer: an HTTP status and one line for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = MAX_BODY_BYTES
    max_pixels: int = MAX_PIXELS


@dataclass(frozen=True)
class Model:
    """A release loaded for serving: its ONNX Runtime session and what model_info.json says."""

    session: Any
    info: dict[str, Any]
    data: DataConfig
    task: Task

    @property
    def class_names(self) -> list[str]:
        return self.info["class_names"]

    def answer(self, images: np.ndarray) -> list[dict[str, Any]]:
        """The JSON answer for each of a uint8 batch (N, C, H, W): the classes the task gives
        the image, most probable first, and every class's probability (predict's columns)."""
        probs = self.task.probabilities(run_onnx(self.session, images))
        chosen = self.task.chosen(probs, self.info.get("thresholds"))
        return [
            {
                "predicted": [self.class_names[c] for c in classes],
                "probabilities": dict(zip(self.class_names, map(float, row), strict=True)),
                "version": self.info.get("version"),
            }
            for row, classes in zip(probs, chosen, strict=True)
        ]

    def metadata(self) -> dict[str, Any]:
        keys = ("project", "version", "created", "task", "class_names", "thresholds", "input")
        return {key: self.info[key] for key in keys if key in self.info} | {
            "metrics": self.info.get("metrics", {}),
            "onnx_sha256": self.info.get("onnx_sha256"),
        }


def load_model(model_path: Path, device: str = "cpu") -> Model:
    """model.onnx and the model_info.json beside it, ready to serve."""
    info = read_info(model_path)
    session = onnx_session(model_path, device)
    log.info("ONNX Runtime runs %s on %s", model_path, ", ".join(session.get_providers()))
    return Model(
        session=session,
        info=info,
        data=data_params(info, model_path),
        task=task_named(info.get("task", OLDEST_TASK)),
    )


def decode_body(body: bytes, data: DataConfig, max_pixels: int) -> np.ndarray:
    """A request's image as (C, H, W) uint8, decoded as predict decodes a file; a Refused for
    what is no image, a broken one, or one that would decode to more than `max_pixels`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            image = Image.open(io.BytesIO(body))
    except UnidentifiedImageError:
        raise Refused(400, "the body is not an image in a format the server reads") from None
    except Image.DecompressionBombError:
        raise Refused(413, f"the image has more than {max_pixels:,} pixels") from None
    except DECODE_ERRORS:
        raise Refused(400, "the image is truncated or corrupt") from None
    with image:
        width, height = image.size
        # Before any pixel is decoded: the header alone says how big the image will be.
        if width * height > max_pixels:
            raise Refused(
                413, f"the image is {width} x {height} pixels, over the limit of {max_pixels:,}"
            )
        try:
            return decode(image, data)
        except Image.DecompressionBombError:
            raise Refused(413, f"the image has more than {max_pixels:,} pixels") from None
        except DECODE_ERRORS:
            raise Refused(400, "the image is truncated or corrupt") from None


class Serving:
    """The app's state: the model once the loader thread has it, or why it could not."""

    def __init__(self, load: Callable[[], Model], on_failure: Callable[[], None]) -> None:
        self.load = load
        self.on_failure = on_failure
        self.model: Model | None = None
        self.failure: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._load, name="load-model", daemon=True).start()

    def _load(self) -> None:
        try:
            self.model = self.load()
            log.info("model %s loaded: serving", self.model.info.get("version"))
        except PipelineError as error:
            self.failure = str(error)
            self.on_failure()
        except Exception:
            log.exception("loading the model failed")
            self.failure = "loading the model failed (the traceback is in the log above)"
            self.on_failure()

    def ready(self) -> Model:
        if self.model is None:
            raise Refused(503, "the model is not loaded yet")
        return self.model


def refused(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes: before reading any of it where
    Content-Length tells, else as soon as the stream passes it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"the body is over the limit of {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"the body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    load: Callable[[], Model],
    limits: Limits = Limits(),
    on_failure: Callable[[], None] = lambda: None,
) -> Starlette:
    """The app; `load` runs in a thread once the server listens (/ping is 503 until it returns),
    and `on_failure` is called if it raises."""
    serving = Serving(load, on_failure)

    async def ping(request: Request) -> Response:
        serving.ready()
        return Response(status_code=200)

    async def metadata(request: Request) -> Response:
        return JSONResponse(serving.ready().metadata())

    async def invocations(request: Request) -> Response:
        model = serving.ready()
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in IMAGE_TYPES:
            raise Refused(
                415, f"Content-Type must be an image type: one of {', '.join(IMAGE_TYPES)}"
            )
        body = await read_body(request, limits.max_body_bytes)
        if not body:
            raise Refused(400, "the body is empty: send one image")
        (answer,) = await run_in_threadpool(invoke, model, body, limits.max_pixels)
        return JSONResponse(answer)

    async def on_refused(request: Request, error: Exception) -> Response:
        assert isinstance(error, Refused)
        if error.status != 503:
            log.info("%d %s %s: %s", error.status, request.method, request.url.path, error.message)
        return refused(error.status, error.message)

    async def on_http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)  # 404, 405: Starlette's own short phrases
        answer = refused(error.status_code, str(error.detail))
        answer.headers.update(error.headers or {})  # 405's Allow
        return answer

    async def on_error(request: Request, error: Exception) -> Response:
        # Starlette logs the traceback (through uvicorn's logger); the client gets one line.
        return refused(500, "internal error: the server's log has the details")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        serving.start()
        yield

    app = Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
            Route("/metadata", metadata, methods=["GET"]),
        ],
        exception_handlers={Refused: on_refused, HTTPException: on_http_error, Exception: on_error},
        lifespan=lifespan,
    )
    app.state.serving = serving
    return app


def invoke(model: Model, body: bytes, max_pixels: int) -> list[dict[str, Any]]:
    return model.answer(decode_body(body, model.data, max_pixels)[None])


def run(app: Starlette, host: str, port: int, graceful_timeout: float, access_log: bool) -> None:
    """Serve `app` until SIGTERM or SIGINT: uvicorn then stops accepting connections, finishes
    the requests in flight (for at most `graceful_timeout` seconds) and returns."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # the command's logging (base/logs.py): one format, secrets redacted
        access_log=access_log,
        server_header=False,
        timeout_graceful_shutdown=graceful_timeout,
    )
    server = uvicorn.Server(config)
    app.state.serving.on_failure = lambda: setattr(server, "should_exit", True)
    server.run()
