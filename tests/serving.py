"""Shared by the serving tests: a tiny release folder, the server in a thread or a process, and
plain HTTP on 127.0.0.1 (http.client: the tests need no HTTP library the project lacks)."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import REPO, free_port

SHAPE = (1, 8, 8)
DIGITS = [str(d) for d in range(10)]
TAGS = ["sun", "tree", "wave"]
THRESHOLDS = [0.45, 0.5, 0.55]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_release(folder: Path, task: str = "multiclass", version: str = "0.1.0") -> Path:
    """A release folder as export-onnx writes one (model.onnx, model_info.json) for a tiny
    linear network on 1x8x8 images; returns model.onnx. Multilabel: 3 tags with thresholds."""
    import torch

    from mlt_project.serve.onnx_export import export_onnx

    classes = DIGITS if task == "multiclass" else TAGS

    class Pixels(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, len(classes)))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.net(images.float() / 255) * 4

    torch.manual_seed(0)
    model = folder / "model.onnx"
    export_onnx(Pixels().eval(), model, SHAPE, 18)
    info = {
        "project": "mlt-project",
        "version": version,
        "input": {"name": "images", "dtype": "uint8", "shape": ["batch", *SHAPE]},
        "output": {"name": "logits", "shape": ["batch", len(classes)]},
        "task": task,
        "class_names": classes,
        **({"thresholds": THRESHOLDS} if task == "multilabel" else {}),
        "onnx_sha256": sha256(model),
        "onnx_external_data": {},
        "metrics": {"accuracy": 0.5},
        "params": {
            "data": {
                "image_size": [8, 8],
                "channels": 1,
                "num_classes": len(classes),
                "val_fraction": 0.15,
                "test_fraction": 0.15,
                "seed": 0,
                "skip_corrupt": False,
                "task": task,
            }
        },
    }
    (folder / "model_info.json").write_text(json.dumps(info, indent=2))
    return model


def png(pixels: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, fmt)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height grayscale pixels, with one compressed row: a
    few hundred bytes that would decode to width * height bytes (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        if chunked:
            connection.request(
                method, path, iter([body or b""]), headers or {}, encode_chunked=True
            )
        else:
            connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


def post_image(port: int, body: bytes, kind: str = "image/png") -> Answer:
    return call(port, "POST", "/invocations", body, {"Content-Type": kind})


def wait_until_ready(
    port: int, process: subprocess.Popen | None = None, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if call(port, "GET", "/ping").status == 200:
                return
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited {process.returncode}: {process.stderr.read()}")
        assert time.monotonic() < deadline, f"no 200 from /ping in {timeout}s"
        time.sleep(0.1)


@contextlib.contextmanager
def server_thread(app) -> Iterator[int]:
    """uvicorn serving `app` in a thread of this process on a free port; yields the port."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def serve_env(**extra: str) -> dict[str, str]:
    """The environment of a server process: the template's package, no AWS of the machine."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MODEL_"))}
    return {**base, "PYTHONPATH": str(REPO / "src_templates"), **extra}


def start_server(
    *args: str | Path,
    cwd: Path,
    port: int,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
) -> subprocess.Popen:
    """`python -m mlt_project.serve ARGS --port PORT` in its own session."""
    return subprocess.Popen(
        [python, "-m", "mlt_project.serve", *map(str, args), "--port", str(port)],
        cwd=cwd,
        env=env or serve_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def stop(process: subprocess.Popen, timeout: float = 30) -> tuple[int, str, float]:
    """SIGTERM, then (returncode, stderr, seconds to exit)."""
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate()
        raise AssertionError(
            f"the server did not exit {timeout}s after SIGTERM:\n{err[-3000:]}"
        ) from None
    return process.returncode, err, time.monotonic() - start


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False
