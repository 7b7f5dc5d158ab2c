"""Export the checkpoint to ONNX and time PyTorch eager against ONNX Runtime, CPU and CUDA.

    python -m mlt_project.scripts.export_and_benchmark [--batch-sizes 1 64 512] [--iterations 200]

Each runner takes the same uint8 batch in host memory and returns logits in host memory, so
CUDA figures include the copies. Latency is at batch 1 (p50/p95), throughput at every batch size,
both after warm-up. Prints a table and writes paths.release/benchmark.json, with the parity
figures of the export.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..base import cli
from ..base.config import Config, load_config
from ..base.errors import PipelineError
from ..base.fileio import atomic_output
from ..data.store import read_head, split_path
from ..model.checkpoint import load_trained
from ..release.export import parity_gate
from ..serve.onnx_export import export_onnx, parity_summary, run_torch
from ..serve.onnx_runtime import MODEL_FILE, onnx_session, run_onnx

Runner = Callable[[np.ndarray], np.ndarray]

log = logging.getLogger(__name__)


def runners(model: torch.nn.Module, onnx_file: Path) -> dict[tuple[str, str], Runner]:
    """(runtime, device) -> runner, for every device this machine has."""
    found: dict[tuple[str, str], Runner] = {}
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    for device in devices:
        on_device = copy.deepcopy(model).to(device)
        found["pytorch", device] = lambda x, m=on_device: run_torch(m, x)
        session = onnx_session(onnx_file, device)
        if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
            log.warning("ONNX Runtime has no working CUDA provider here; skipping ORT on CUDA")
            continue
        found["onnxruntime", device] = lambda x, s=session: run_onnx(s, x)
    return found


def timings(run: Runner, batch: np.ndarray, warmup: int, iterations: int) -> np.ndarray:
    """Seconds per call of `run(batch)`, after `warmup` untimed calls."""
    for _ in range(warmup):
        run(batch)
    seconds = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        run(batch)
        seconds[i] = time.perf_counter() - start
    return seconds


def batch_of(images: np.ndarray, size: int) -> np.ndarray:
    """`size` images, repeating the test split if it is smaller."""
    return np.ascontiguousarray(np.resize(images, (size, *images.shape[1:])))


def benchmark(
    cfg: Config, batch_sizes: list[int], warmup: int, iterations: int, out: Path
) -> dict[str, object]:
    """Export, check parity, time every runner; write `out` and return the results."""
    trained = load_trained(cfg)
    model = trained.net
    images, _ = read_head(split_path(cfg.paths.processed, "test"), max(batch_sizes))
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / MODEL_FILE
        start = time.perf_counter()
        export_onnx(model, onnx_file, cfg.data.input_shape, cfg.release.onnx_opset)
        export_seconds = time.perf_counter() - start
        parity = parity_gate(cfg, trained, onnx_file)
        rows = []
        for (runtime, device), run in runners(model, onnx_file).items():
            latency = timings(run, batch_of(images, 1), warmup, iterations) * 1000
            row: dict[str, object] = {
                "runtime": runtime,
                "device": device,
                "p50_ms": float(np.percentile(latency, 50)),
                "p95_ms": float(np.percentile(latency, 95)),
                "throughput": {},
            }
            for size in batch_sizes:
                seconds = timings(run, batch_of(images, size), warmup, iterations)
                row["throughput"][str(size)] = size / float(np.median(seconds))
            rows.append(row)
    results = {
        "export_seconds": export_seconds,
        "parity": parity,
        "warmup": warmup,
        "iterations": iterations,
        "batch_sizes": batch_sizes,
        "runs": rows,
        "ratios": ratios(rows, max(batch_sizes)),
    }
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    return results


def ratios(rows: list[dict], largest: int) -> dict[str, dict[str, float]]:
    """Per device: ORT/PyTorch p50 latency at batch 1 and throughput at the largest batch."""
    by = {(r["runtime"], r["device"]): r for r in rows}
    found = {}
    for device in sorted({r["device"] for r in rows}):
        ort_row, torch_row = by.get(("onnxruntime", device)), by.get(("pytorch", device))
        if ort_row and torch_row:
            found[device] = {
                "latency_p50_ort_over_pytorch": ort_row["p50_ms"] / torch_row["p50_ms"],
                f"throughput_ort_over_pytorch_at_{largest}": ort_row["throughput"][str(largest)]
                / torch_row["throughput"][str(largest)],
            }
    return found


def table(results: dict) -> str:
    sizes = results["batch_sizes"]
    head = f"{'runtime':<12} {'device':<6} {'p50 ms':>8} {'p95 ms':>8}" + "".join(
        f" {'img/s @' + str(s):>14}" for s in sizes
    )
    lines = [head, "-" * len(head)]
    for r in results["runs"]:
        cells = "".join(f" {r['throughput'][str(s)]:>14,.0f}" for s in sizes)
        lines.append(
            f"{r['runtime']:<12} {r['device']:<6} {r['p50_ms']:>8.3f} {r['p95_ms']:>8.3f}{cells}"
        )
    lines.append(f"export {results['export_seconds']:.2f}s; {parity_summary(results['parity'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 512])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--out", type=Path, help="default: paths.release/benchmark.json")
    args = parser.parse_args(argv)

    def run() -> None:
        if min(args.batch_sizes) < 1 or args.warmup < 0 or args.iterations < 1:
            raise PipelineError("batch sizes and --iterations must be at least 1, --warmup 0+")
        cfg = load_config(args.params)
        out = args.out or Path(cfg.paths.release) / "benchmark.json"
        benchmark(cfg, sorted(set(args.batch_sizes)), args.warmup, args.iterations, out)

    return cli.run(run)


if __name__ == "__main__":
    raise SystemExit(main())
