"""ONNX export, ONNX Runtime sessions, and the parity gate between the two runtimes.

The exported graph takes the same input as the PyTorch model: uint8 pixels (N, C, H, W) in 0..255,
with N free, and returns logits (N, num_classes).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf

from .errors import PipelineError

INPUT_NAME = "images"
OUTPUT_NAME = "logits"

# The exporter's graph passes log every step at INFO; only their warnings concern a user.
for _name in ("onnxscript", "onnx_ir"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def export_onnx(
    model: torch.nn.Module, path: str | Path, input_shape: tuple[int, ...], opset: int
) -> None:
    """Write `model` as ONNX with a dynamic batch axis; onnx.checker must accept the file."""
    model = model.eval()
    # A batch of 2, not 1: torch.export would specialise a size-1 dimension to a constant.
    sample = torch.zeros((2, *input_shape), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        model,
        (sample,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_shapes=({0: batch},),
        dynamo=True,  # needs onnxscript; dynamo=False would select the legacy TorchScript exporter
        verbose=False,
    )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0]
        raise PipelineError(f"onnx.checker rejects the exported model: {first}") from None


def providers(device: str = "cpu") -> list[str]:
    """ONNX Runtime execution providers for `device` (cpu or cuda), best first."""
    if device == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnx_session(path: str | Path, device: str = "cpu") -> ort.InferenceSession:
    """An inference session for the model at `path`."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(
            f"no ONNX model at {path}: run `python -m mlt_project.scripts.release export-onnx` "
            "or download a release"
        )
    available = set(ort.get_available_providers())
    chosen = [p for p in providers(device) if p in available]
    try:
        return ort.InferenceSession(str(path), providers=chosen)
    except (Fail, InvalidGraph, InvalidProtobuf) as error:
        first = str(error).strip().splitlines()[0]
        raise PipelineError(f"ONNX Runtime cannot load {path}: {first}") from None


def run_onnx(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    """Logits for a uint8 (N, C, H, W) batch."""
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images)})[0]


def run_torch(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Logits from the PyTorch model, on its device, for a uint8 (N, C, H, W) batch."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(torch.from_numpy(images).to(device)).float().cpu().numpy()


def check_parity(
    model: torch.nn.Module, onnx_path: str | Path, images: np.ndarray, atol: float
) -> dict[str, object]:
    """Compare PyTorch and ONNX Runtime (CPU) on `images`; raise PipelineError if they disagree.

    They disagree when any logit differs by more than `atol` or any predicted class differs.
    """
    model = model.eval().cpu()
    expected = run_torch(model, images)
    actual = run_onnx(onnx_session(onnx_path), images)
    if actual.shape != expected.shape:
        raise PipelineError(
            f"parity gate failed: {onnx_path} returns shape {actual.shape}, PyTorch "
            f"{expected.shape}: export the model again"
        )
    max_abs_diff = float(np.abs(expected - actual).max())
    changed = int((expected.argmax(axis=1) != actual.argmax(axis=1)).sum())
    if not max_abs_diff <= atol or changed:  # `not <=` also catches NaN
        raise PipelineError(
            f"parity gate failed: on {len(images)} test images ONNX Runtime differs from PyTorch "
            f"by up to {max_abs_diff:.3g} (release.parity_atol {atol:g}) and predicts another "
            f"class for {changed}: {onnx_path} is not the trained model; export it again"
        )
    return {
        "samples": len(images),
        "max_abs_diff": max_abs_diff,
        "atol": atol,
        "classes_identical": True,
    }
