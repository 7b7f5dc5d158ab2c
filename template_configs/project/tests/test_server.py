"""The model server (python -m mlt_project.serve) on the CPU: this project's network, exported as
a release is, served in this process on a free port of 127.0.0.1. An image gets what predict
gives it; bad input gets a 4xx with one JSON line, and the next request still works."""

import csv
import dataclasses
import http.client
import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image

from mlt_project.serve.onnx_export import export_onnx
from mlt_project.serve.predict import predict
from mlt_project.serve.server import create_app, load_model
from mlt_project.training.factories import create_model


def tiny_release(cfg, folder: Path) -> Path:
    """model.onnx and the model_info.json keys predict and the server read, for an untrained
    network of params.yaml's kind."""
    model = folder / "model.onnx"
    export_onnx(create_model(cfg).net.eval(), model, cfg.data.input_shape, cfg.release.onnx_opset)
    classes = [f"class-{i}" for i in range(cfg.data.num_classes)]
    multilabel = cfg.data.task == "multilabel"
    info = {
        "version": "0.0.0-test",
        "task": cfg.data.task,
        "class_names": classes,
        **({"thresholds": [0.5] * len(classes)} if multilabel else {}),
        "input": {"shape": ["batch", *cfg.data.input_shape]},
        "metrics": {},
        "params": {"data": dataclasses.asdict(cfg.data)},
    }
    (folder / "model_info.json").write_text(json.dumps(info))
    return model


@pytest.fixture
def server(cfg, tmp_path):
    """(port, model.onnx): uvicorn serving the app in a thread until the test ends."""
    model = tiny_release(cfg, tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        create_app(lambda: load_model(model)), host="127.0.0.1", port=port, log_config=None
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while post(port, "GET", "/ping", None, {}) != 200:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield port, model
    running.should_exit = True
    thread.join(timeout=30)


def post(port: int, method: str, path: str, body: bytes | None, headers: dict):
    """The status of a request; with a body, (status, JSON answer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        data = response.read()
    except OSError:
        return None
    finally:
        connection.close()
    return (response.status, json.loads(data)) if body is not None else response.status


def test_an_image_gets_what_predict_gives_it(cfg, server, tmp_path):
    port, model = server
    pixels = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    folder = tmp_path / "images"
    folder.mkdir()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    (folder / "one.png").write_bytes(buffer.getvalue())
    predict(model, folder, tmp_path / "predictions.csv")
    with (tmp_path / "predictions.csv").open(newline="") as f:
        (expected,) = csv.DictReader(f)

    status, answer = post(
        port, "POST", "/invocations", buffer.getvalue(), {"Content-Type": "image/png"}
    )
    assert status == 200, answer
    assert answer["predicted"] == expected["predicted"].split()
    for name, probability in answer["probabilities"].items():
        assert abs(probability - float(expected[f"score_{name}"])) <= 1e-6


def test_bad_input_gets_a_4xx_and_the_server_stays_up(server):
    port, _ = server
    good = io.BytesIO()
    Image.new("RGB", (16, 16), "white").save(good, "PNG")
    for body, kind, status in (
        (b"", "image/png", 400),
        (b"not an image", "image/png", 400),
        (good.getvalue()[:40], "image/png", 400),
        (good.getvalue(), "text/plain", 415),
    ):
        got, answer = post(port, "POST", "/invocations", body, {"Content-Type": kind})
        assert got == status and list(answer) == ["error"], (body[:20], kind, answer)
        assert (
            post(port, "POST", "/invocations", good.getvalue(), {"Content-Type": "image/png"})[0]
            == 200
        )
