"""ONNX Runtime sessions for the exported model; no PyTorch, so inference installs and imports light.

The model takes uint8 pixels (N, C, H, W) in 0..255 under INPUT_NAME, with N free, and returns
logits (N, num_classes) under OUTPUT_NAME.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf

from ..base.errors import PipelineError

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# A release's files, in paths.release and in S3 (release/dvc.yaml spells them too; a test keeps
# it in step).
MODEL_FILE = "model.onnx"
INFO_FILE = "model_info.json"


def providers(device: str = "cpu") -> list[str]:
    """ONNX Runtime execution providers for `device` (cpu or cuda), best first."""
    if device == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnx_session(path: str | Path, device: str = "cpu") -> ort.InferenceSession:
    """An inference session for the model at `path` (its external-data files beside it)."""
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
