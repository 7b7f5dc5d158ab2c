"""ONNX export, written whole or not at all, and the parity gate between PyTorch and ONNX Runtime.

The exported graph takes the same input as the PyTorch model: uint8 pixels (N, C, H, W) in 0..255,
with N free, and returns logits (N, num_classes). A model whose weights fit in one protobuf
message is one self-contained `model.onnx`. A bigger one keeps its weights in external-data
files named by their content, `model.<sha256[:12]>.onnx.data`, beside it (`onnx_files` lists them).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import torch

from ..base.errors import PipelineError
from ..base.fileio import disk_full, sha256_file
from ..base.tasks import OLDEST_TASK, Task
from ..base.tasks import task as task_named
from .onnx_runtime import INPUT_NAME, OUTPUT_NAME, onnx_session, run_onnx

# protobuf cannot serialise a message over 2 GiB; the margin leaves room for the graph itself.
MAX_INLINE_BYTES = 1_800_000_000

# The largest difference, relative to an image's largest |logit|, that float32 rounding explains.
ROUNDING_RTOL = 1e-3

# The exporter's graph passes log every step at INFO; only their warnings concern a user.
for _name in ("onnxscript", "onnx_ir"):
    logging.getLogger(_name).setLevel(logging.WARNING)


@contextmanager
def staged_export(
    model: torch.nn.Module,
    path: str | Path,
    input_shape: tuple[int, ...],
    opset: int,
    max_inline_bytes: int = MAX_INLINE_BYTES,
) -> Iterator[Path]:
    """Export `model` into a hidden folder beside `path` and yield the staged model file.

    Only if the block succeeds (e.g. the parity gate passes) do the files move into place: first
    the external-data files, then the model that points at them. Otherwise `path` and the data
    it points at stay as they were, and the staged files are removed.
    """
    path = Path(path)
    stage = path.with_name(f".{path.name}.export")
    try:
        shutil.rmtree(stage, ignore_errors=True)  # what a killed run left
        stage.mkdir(parents=True)
        staged = stage / path.name
        export_to(model, staged, input_shape, opset, max_inline_bytes)
        yield staged
        for name in external_data(staged):
            os.replace(stage / name, path.with_name(name))
        os.replace(staged, path)
        remove_unreferenced_data(path)
    except OSError as error:
        if not disk_full(error):
            raise
        raise PipelineError(
            f"no space left on the device while exporting {path}: free some space (`df -h "
            f"{path.parent}`) and run again; {path} was left as it was"
        ) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    input_shape: tuple[int, ...],
    opset: int,
    max_inline_bytes: int = MAX_INLINE_BYTES,
) -> list[Path]:
    """Export `model` to `path` (no gate); return the files written, the model first."""
    with staged_export(model, path, input_shape, opset, max_inline_bytes):
        pass
    return onnx_files(path)


def export_to(
    model: torch.nn.Module,
    path: Path,
    input_shape: tuple[int, ...],
    opset: int,
    max_inline_bytes: int,
) -> None:
    """Write `model` as ONNX with a dynamic batch axis at `path`; onnx.checker must accept it."""
    model = model.eval()
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
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
        # True writes the weights to `<path>.data`, a name tied to the export path.
        external_data=weight_bytes > max_inline_bytes,
        verbose=False,
    )
    name_data_by_content(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0]
        raise PipelineError(f"onnx.checker rejects the exported model: {first}") from None


def tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in `graph`: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    yield from (sparse.values for sparse in graph.sparse_initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from tensors(subgraph)


def data_locations(tensor: onnx.TensorProto) -> list[onnx.StringStringEntryProto]:
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return []
    return [entry for entry in tensor.external_data if entry.key == "location"]


def external_data(path: str | Path) -> list[str]:
    """Names of the external-data files the model at `path` reads, sorted."""
    model = onnx.load(str(path), load_external_data=False)
    return sorted({e.value for t in tensors(model.graph) for e in data_locations(t)})


def onnx_files(path: str | Path) -> list[Path]:
    """The model file and every external-data file it reads: what a copy of the model needs."""
    path = Path(path)
    return [path, *(path.with_name(name) for name in external_data(path))]


def name_data_by_content(path: Path) -> None:
    """Rename each external-data file of `path` to `<stem>.<sha256[:12]><suffix>.data`.

    The name then changes with the weights, so a new export never rewrites the data an existing
    model file points at, and a copy can be checked against its name.
    """
    model = onnx.load(str(path), load_external_data=False)
    renamed: dict[str, str] = {}
    for tensor in tensors(model.graph):
        for entry in data_locations(tensor):
            if entry.value not in renamed:
                digest = sha256_file(path.with_name(entry.value))[:12]
                renamed[entry.value] = f"{path.stem}.{digest}{path.suffix}.data"
            entry.value = renamed[entry.value]
    if not renamed:
        return
    for old, new in renamed.items():
        os.replace(path.with_name(old), path.with_name(new))
    onnx.save(model, str(path))


def remove_unreferenced_data(path: Path) -> None:
    """Delete the external-data files of earlier exports of `path` that it no longer reads."""
    kept = set(external_data(path))
    for candidate in path.parent.glob(f"{path.stem}.*{path.suffix}.data"):
        if candidate.name not in kept:
            candidate.unlink(missing_ok=True)


def run_torch(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Logits from the PyTorch model, on its device, for a uint8 (N, C, H, W) batch."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(torch.from_numpy(images).to(device)).float().cpu().numpy()


def parity_bounds(logits: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    """How far each image's logits may move: atol + rtol * the image's largest |logit|.

    The scale is the row's, not each logit's own (numpy's allclose): float32 reassociation moves a
    logit by a fraction of the sums that made it, so a logit near 0 beside others at +-450 moves
    as much as they do, and an element-wise bound would reject it.
    """
    return atol + rtol * np.abs(logits).max(axis=1, keepdims=True)


def check_parity(
    model: torch.nn.Module,
    onnx_path: str | Path,
    images: np.ndarray,
    *,
    rtol: float,
    atol: float,
    task: Task,
    thresholds: list[float] | None = None,
    shown_as: str | Path | None = None,
) -> dict[str, object]:
    """Compare PyTorch and ONNX Runtime (CPU) on `images`; raise PipelineError if they disagree.

    They disagree when a logit moves further than `parity_bounds` allows, or when a decision
    that is no tie comes out otherwise (the task's `parity`: an image's class, or a label at its
    threshold). Closer than that, either runtime may break the tie; ties are counted. Messages
    call the model `shown_as` (default: its path), e.g. the file a staged export replaces.
    """
    name = shown_as or onnx_path
    model = model.eval().cpu()
    expected = run_torch(model, images)
    actual = run_onnx(onnx_session(onnx_path), images)
    if actual.shape != expected.shape:
        raise PipelineError(
            f"parity gate failed: {name} returns shape {actual.shape}, PyTorch "
            f"{expected.shape}: export the model again"
        )
    bounds = parity_bounds(expected, rtol, atol)
    diff = np.abs(expected - actual)
    # NaN anywhere is a failure: it compares as neither inside nor outside a bound.
    used = np.where(np.isfinite(diff), diff / bounds, np.inf)
    worst = np.unravel_index(int(np.argmax(used)), used.shape)
    clear, flipped = task.parity(expected, actual, bounds, thresholds)
    changed = int((flipped & clear).sum())
    if used[worst] > 1 or changed:
        raise PipelineError(
            parity_failure(
                name, len(images), diff, expected, worst, used, changed, rtol, atol, task
            )
        )
    return {
        "task": task.name,
        "samples": len(images),
        "max_abs_diff": float(diff.max()),
        "max_logit": float(np.abs(expected).max()),
        "rtol": rtol,
        "atol": atol,
        "tolerance_used": float(used[worst]),  # the worst logit's share of its bound, <= 1
        # Every decision (an image's class, an image's label) that is no tie came out the same.
        "classes_identical": True,
        "ties": int((~clear).sum()),
        "ties_flipped": int((flipped & ~clear).sum()),
    }


def parity_summary(parity: dict[str, object]) -> str:
    """One line on a passed gate, as the export and the benchmark log it."""
    task = task_named(str(parity.get("task", OLDEST_TASK)))
    return (
        f"parity on {parity['samples']} test images: max abs diff {parity['max_abs_diff']:.3g} "
        f"with logits up to {parity['max_logit']:.3g}, "
        f"{100 * parity['tolerance_used']:.2g}% of the tolerance; "
        + task.parity_passed.format(ties=parity["ties"])
    )


def parity_failure(
    name: str | Path,
    samples: int,
    diff: np.ndarray,
    expected: np.ndarray,
    worst: tuple[int, ...],
    used: np.ndarray,
    changed: int,
    rtol: float,
    atol: float,
    task: Task,
) -> str:
    """The gate's one-line verdict: the figures, the settings, and what would help."""
    row = int(worst[0])
    scale = float(np.abs(expected[row]).max())
    figures = (
        f"{samples} test images: ONNX Runtime differs from PyTorch by up to {diff[worst]:.3g} "
        f"(image {row}, whose largest |logit| is {scale:.3g}): {used[worst]:.3g}x what "
        f"release.parity_rtol {rtol:g} and release.parity_atol {atol:g} allow"
    )
    if changed:
        figures += ", and " + task.parity_changed.format(changed=changed)
    # float32 rounding moves a logit by ~1e-6 of its image's scale: past 1e-3 (PyTorch's ONNX
    # guide's rtol) the difference is no rounding.
    if not changed and diff[worst] <= ROUNDING_RTOL * scale:
        hint = (
            "if this much rounding is acceptable, raise release.parity_rtol (or parity_atol, for "
            "logits near 0) in params.yaml"
        )
    else:
        hint = (
            "the export computes something else than the network: look in the network's code for "
            "layers the ONNX exporter translates differently (custom or data-dependent ops, "
            "training-only branches); raising the tolerances would hide a real difference"
        )
    return f"parity gate failed for {name} on {figures}; {hint}"
