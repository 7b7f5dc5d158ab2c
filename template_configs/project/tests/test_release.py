import pytest
import torch

from mlt_project.base.errors import PipelineError
from mlt_project.base.tasks import TASKS
from mlt_project.data.store import read_split, split_path
from mlt_project.serve.onnx_export import check_parity, export_onnx
from mlt_project.training.factories import create_model

# PyTorch's ONNX guide's tolerances, not params.yaml's: the tests pass whatever gate a project sets.
TOLERANCES = {"rtol": 1e-3, "atol": 1e-5}


def test_onnx_export_matches_pytorch_and_the_gate_catches_a_changed_model(processed, tmp_path):
    cfg = processed
    model = create_model(cfg).net.eval()
    images, _, _ = read_split(split_path(cfg.paths.processed, "test"))
    path = tmp_path / "model.onnx"
    export_onnx(model, path, cfg.data.input_shape, cfg.release.onnx_opset)
    task = TASKS[cfg.data.task]
    parity = check_parity(model, path, images, task=task, **TOLERANCES)
    assert parity["tolerance_used"] <= 1
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05)
    with pytest.raises(PipelineError, match="parity gate failed"):
        check_parity(model, path, images, task=task, **TOLERANCES)
