"""The model server (serve/server.py, `python -m mlt_project.serve`) on a tiny exported model: what
an image gets is what predict gives it, every bad input is a 4xx with one JSON line and the next
request still works, SIGTERM finishes the request in flight and exits 0, and a model whose files
differ from their manifest never loads."""

from __future__ import annotations

import csv
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import free_port, one_error_line
from mlt_project.base.errors import PipelineError
from mlt_project.serve.__main__ import main as serve_main
from mlt_project.serve.predict import predict
from mlt_project.serve.server import Limits, Model, create_app, load_model
from serving import (
    DIGITS,
    TAGS,
    call,
    png,
    png_declaring,
    post_image,
    refuses_connections,
    serve_env,
    server_thread,
    start_server,
    stop,
    tiny_release,
    wait_until_ready,
)

SECRET = "sekrit-value-4711"  # in the server's environment; never in an answer


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Path]:
    """{task: model.onnx of a tiny release of that task}."""
    return {
        task: tiny_release(tmp_path_factory.mktemp(task), task)
        for task in ("multiclass", "multilabel")
    }


def images_of_every_kind(folder: Path) -> dict[str, bytes]:
    """Images as clients send them: the model's own size and mode, and others that predict
    converts and resizes (RGB, RGBA, palette, 16-bit, a larger JPEG, a wide one)."""
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    files = {
        "gray.png": png(gray),
        "rgb.png": png(rgb),
        "rgba.png": png(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)),
        "palette.png": png(np.asarray(png_image(rgb).convert("P"))),
        "sixteen.png": png(gray.astype(np.uint16) * 257),
        "photo.jpg": png(rgb, fmt="JPEG"),
        "wide.png": png(rng.integers(0, 256, (10, 64), dtype=np.uint8)),
    }
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def png_image(pixels: np.ndarray):
    from PIL import Image

    return Image.fromarray(pixels)


def predicted_rows(model: Path, folder: Path, out: Path) -> dict[str, dict[str, str]]:
    predict(model, folder, out)
    with out.open(newline="") as f:
        return {Path(row["input"]).name: row for row in csv.DictReader(f)}


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_an_image_gets_what_predict_gives_it_whatever_its_mode_or_size(releases, task, tmp_path):
    model = releases[task]
    files = images_of_every_kind(tmp_path / "images")
    expected = predicted_rows(model, tmp_path / "images", tmp_path / "predictions.csv")
    classes = DIGITS if task == "multiclass" else TAGS
    with server_thread(create_app(lambda: load_model(model))) as port:
        wait_until_ready(port)
        for name, data in files.items():
            kind = "image/jpeg" if name.endswith(".jpg") else "image/png"
            answer = post_image(port, data, kind)
            assert answer.status == 200, (name, answer.body)
            got = answer.json()
            row = expected[name]
            assert got["predicted"] == row["predicted"].split(), name
            assert list(got["probabilities"]) == classes
            for label, p in got["probabilities"].items():
                assert abs(p - float(row[f"score_{label}"])) <= 1e-6, (name, label)
            assert got["version"] == "0.1.0"
    if task == "multilabel":  # the thresholds decide: some images get several tags, some none
        sizes = {len(row["predicted"].split()) for row in expected.values()}
        assert len(sizes) > 1, sizes


def test_ping_is_503_until_the_model_is_loaded_and_metadata_says_what_it_serves(releases):
    model = releases["multiclass"]
    gate = threading.Event()

    def slow_load() -> Model:
        gate.wait(30)
        return load_model(model)

    with server_thread(create_app(slow_load)) as port:
        assert call(port, "GET", "/ping").status == 503
        loading = post_image(port, png(np.zeros((8, 8), np.uint8)))
        assert loading.status == 503 and loading.json() == {"error": "the model is not loaded yet"}
        gate.set()
        wait_until_ready(port)
        metadata = call(port, "GET", "/metadata").json()
    info = json.loads(model.with_name("model_info.json").read_text())
    assert metadata["version"] == "0.1.0" and metadata["class_names"] == DIGITS
    assert metadata["input"]["shape"] == ["batch", 1, 8, 8]
    assert metadata["metrics"] == info["metrics"] and metadata["task"] == "multiclass"


def bad_inputs(limit: int) -> list[tuple[str, dict, bytes, int, str]]:
    """(case, headers, body, status, words of the error) for each bad input of issue 27."""
    good = png(np.full((8, 8), 200, np.uint8))
    big = png(np.random.default_rng(2).integers(0, 256, (200, 200), dtype=np.uint8))
    small = png(np.random.default_rng(3).integers(0, 256, (40, 40), dtype=np.uint8))
    assert len(big) > limit > len(small)
    return [
        ("empty body", {"Content-Type": "image/png"}, b"", 400, "empty"),
        ("not an image", {"Content-Type": "image/png"}, b"%PDF-1.7 hello", 400, "not an image"),
        ("truncated PNG", {"Content-Type": "image/png"}, small[: len(small) // 2], 400, "truncated"),
        ("wrong Content-Type", {"Content-Type": "application/json"}, good, 415, "Content-Type"),
        ("no Content-Type", {}, good, 415, "Content-Type"),
        ("over the size limit", {"Content-Type": "image/png"}, big, 413, "over the limit"),
        ("decompression bomb", {"Content-Type": "image/png"}, png_declaring(30000, 30000), 413, "pixels"),
    ]  # fmt: skip


def test_each_bad_input_gets_its_4xx_in_one_json_line_and_the_server_stays_up(releases, tmp_path):
    """A real server process, limits set on its command line, a secret in its environment."""
    limit = 4096
    port = free_port()
    env = serve_env(AWS_SECRET_ACCESS_KEY=SECRET)
    process = start_server(
        "--model", releases["multiclass"].parent, "--max-body-bytes", limit, "--max-pixels",
        1_000_000, cwd=tmp_path, port=port, env=env,
    )  # fmt: skip
    try:
        wait_until_ready(port, process)
        good = png(np.full((8, 8), 200, np.uint8))
        expected = post_image(port, good).json()
        answers = []
        for case, headers, body, status, words in bad_inputs(limit):
            answer = call(port, "POST", "/invocations", body, headers)
            answers.append(answer)
            assert answer.status == status, (case, answer.status, answer.body)
            assert answer.headers["content-type"] == "application/json", case
            error = answer.json()
            assert list(error) == ["error"] and words in error["error"], (case, error)
            assert "\n" not in answer.body.decode(), case
            assert post_image(port, good).json() == expected, f"after {case}"
        # Over the limit without Content-Length (chunked): refused once the stream passes it.
        big = bad_inputs(limit)[5][2]
        chunked = call(
            port, "POST", "/invocations", big, {"Content-Type": "image/png"}, chunked=True
        )
        assert chunked.status == 413 and "over the limit" in chunked.json()["error"]
        # A bomb over --max-pixels but under twice it: the server's own check, before decoding.
        bomb = post_image(port, png_declaring(1100, 1000))
        assert bomb.status == 413 and "1100 x 1000 pixels" in bomb.json()["error"]
        # Wrong method and path: JSON too.
        assert call(port, "GET", "/invocations").json() == {"error": "Method Not Allowed"}
        assert call(port, "GET", "/nothing-here").status == 404
        for answer in [*answers, chunked, bomb]:
            text = answer.body.decode()
            assert "Traceback" not in text and SECRET not in text and str(tmp_path) not in text
        assert post_image(port, good).json() == expected
    finally:
        code, stderr, _ = stop(process)
    assert code == 0, stderr[-3000:]
    assert SECRET not in stderr
    # The server's log says what it refused, one line each.
    assert "415 POST /invocations" in stderr and "413 POST /invocations" in stderr


class Broken:
    """An ONNX Runtime session that fails as a bug would, with details no client should see."""

    def run(self, *args, **kwargs):
        raise RuntimeError(f"segment fault in {Path.cwd()} with key {SECRET}")


def test_an_unexpected_error_is_a_generic_500_and_the_server_stays_up(releases, caplog):
    good = load_model(releases["multiclass"])
    broken = Model(Broken(), good.info, good.data, good.task)
    with server_thread(create_app(lambda: broken, Limits())) as port:
        wait_until_ready(port)
        with caplog.at_level("ERROR"):
            answer = post_image(port, png(np.zeros((8, 8), np.uint8)))
        assert answer.status == 500
        assert answer.json() == {"error": "internal error: the server's log has the details"}
        assert SECRET not in answer.body.decode()
        assert call(port, "GET", "/ping").status == 200
    assert "RuntimeError" in caplog.text  # the traceback is in the server's log


def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(releases, tmp_path):
    """A client sends half an image, the server gets SIGTERM, the client sends the rest: it gets
    its answer, new connections are refused meanwhile, and the server exits 0 after that."""
    port = free_port()
    process = start_server("--model", releases["multiclass"].parent, cwd=tmp_path, port=port)
    wait_until_ready(port, process)
    body = png(np.full((8, 8), 90, np.uint8))
    expected = post_image(port, body).json()
    client = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    client.sendall(head + body[:20])
    time.sleep(0.5)  # the request is in the app, awaiting the rest of its body
    start = time.monotonic()
    os.kill(process.pid, 15)
    deadline = time.monotonic() + 10
    while not refuses_connections(port):
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.05)
    assert process.poll() is None, "exited before finishing the request in flight"
    client.sendall(body[20:])
    response = b""
    while chunk := client.recv(65536):
        response += chunk
    client.close()
    status, _, payload = response.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200"), response[:300]
    assert json.loads(payload) == expected
    code, stderr, _ = stop(process)
    seconds = time.monotonic() - start
    assert code == 0, stderr[-3000:]
    assert "Shutting down" in stderr and seconds < 10, seconds


def test_a_request_that_never_finishes_does_not_hold_the_exit_past_the_bound(releases, tmp_path):
    port = free_port()
    process = start_server(
        "--model", releases["multiclass"].parent, "--graceful-timeout", "2", cwd=tmp_path, port=port
    )
    wait_until_ready(port, process)
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 1000\r\n\r\n\x89PNG"
    )
    time.sleep(0.5)
    code, stderr, seconds = stop(process)
    client.close()
    assert code == 0, stderr[-3000:]
    assert 1.5 < seconds < 8, seconds
    assert "timeout graceful shutdown exceeded" in stderr


def manifest_for(folder: Path, **override: str) -> None:
    objects = {
        p.name: {"sha256": override.get(p.name) or __import__("serving").sha256(p), "size": 1}
        for p in folder.iterdir()
    }
    (folder / "manifest.json").write_text(json.dumps({"version": "0.1.0", "objects": objects}))


def test_a_model_whose_files_differ_from_their_manifest_never_loads(releases, tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model.onnx", "model_info.json"):
        (folder / name).write_bytes((releases["multiclass"].parent / name).read_bytes())
    manifest_for(folder)
    from mlt_project.serve.fetch import check_model_folder

    check_model_folder(folder / "model.onnx")  # as released: loads
    manifest_for(folder, **{"model.onnx": "0" * 64})
    port = free_port()
    process = start_server("--model", folder, cwd=tmp_path, port=port)
    _, stderr = process.communicate(timeout=60)
    line = one_error_line(stderr, "model.onnx has sha256", "refusing to load it")
    assert process.returncode == 1, line
    with pytest.raises(PipelineError, match=r"model_info\.json is not in"):
        (folder / "manifest.json").write_text(json.dumps({"objects": {}}))
        check_model_folder(folder / "model.onnx")


def test_without_a_model_anywhere_it_says_where_one_comes_from(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODEL_STAGE", raising=False)
    assert serve_main(["--port", str(free_port())]) == 1
    one_error_line(capsys.readouterr().err, "no model to serve", "--stage", "/opt/ml/model")
