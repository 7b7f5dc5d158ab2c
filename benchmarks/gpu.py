"""Checks and figures that need a GPU machine; run there, never by the tests.

    PYTHONPATH=src_templates python benchmarks/gpu.py --out DIR [--only crash,imports,...]

crash     6 processes each read a 50k x 3x32x32 split 8 times with the machine's real core count
imports   seconds to import each stage's module in a fresh process
pipeline  sample digits -> preprocess -> train (precision auto) -> evaluate, each stage timed;
          then train the CNN with runtime.compile: true and count recompile warnings
resnet    ResNet-18, 3x32x32, bf16: the project's Lightning epoch / a bare loop, same work
compile   the same Lightning epoch with the network compiled / eager
p2b       benchmarks/run.py's P2b (streamed with 2 workers / in memory) on this machine's cores
workers   preprocess of 3,000 64x64 PNGs: workers auto / 1

Each section writes its figures to DIR/gpu.json as soon as it ends, so a timeout keeps the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # the CPU benchmarks' helpers: configs, synthetic data

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src_templates"
# A CPU run (a smoke test of this script) shrinks the ResNet sections' data.
CUDA = bool(subprocess.run([sys.executable, "-c", "import torch; assert torch.cuda.is_available()"],
                           capture_output=True).returncode == 0)  # fmt: skip
DEVICE, PRECISION, TRAIN = ("gpu", "bf16-mixed", 20_000) if CUDA else ("cpu", "32-true", 512)
READER = """
import hashlib, sys
from pathlib import Path
from mlt_project.data.store import read_split
for _ in range(int(sys.argv[2])):
    images, labels, _ = read_split(Path(sys.argv[1]))
    print(hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest(), flush=True)
"""


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(SRC))


def crash(tmp: Path, log: Path) -> dict:
    from mlt_project.data.store import split_path

    processed = tmp / "crash"
    bench.write_synthetic(processed, {"train": 50_000}, 32, channels=3)
    path = split_path(processed, "train")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(path), "8"],
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outcomes = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=240)
            outcomes.append({"rc": process.returncode, "hashes": len(set(out.split())),
                             "reads": len(out.split()), "stderr": err[-300:]})  # fmt: skip
        except subprocess.TimeoutExpired:
            process.kill()
            outcomes.append({"rc": "hung"})
    return {"cores": os.cpu_count(), "processes": outcomes}


def imports(tmp: Path, log: Path) -> dict:
    modules = ["mlt_project.data.preprocess", "mlt_project.data.sample_data",
               "mlt_project.serve.predict", "mlt_project.training.evaluate", "mlt_project.training.train", "lightning"]  # fmt: skip
    seconds = {}
    for module in modules:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], env=env(), check=True)
        seconds[module] = time.perf_counter() - start
    return seconds


def stage(name: str, project: Path, log: Path, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", f"mlt_project.{name}", *args],
        cwd=project,
        env=env(),
        capture_output=True,
        text=True,
    )
    with log.open("a") as f:
        f.write(f"== {name} {args}\n{result.stdout}\n{result.stderr}\n")
    if result.returncode != 0:
        raise RuntimeError(f"{name} exited {result.returncode}: {result.stderr[-1500:]}")
    return time.perf_counter() - start, result.stderr


def pipeline(tmp: Path, log: Path) -> dict:
    project = tmp / "project"
    project.mkdir()
    params = (ROOT / "template_configs" / "project" / "params.yaml").read_text()
    (project / "params.yaml").write_text(params)
    seconds = {}
    for name in ("data.sample_data", "data.preprocess", "training.train", "training.evaluate"):
        seconds[name], _ = stage(name, project, log)
    metrics = json.loads((project / "evaluation_results.json").read_text())
    compiled = params.replace("name: mlp", "name: cnn").replace("compile: false", "compile: true")
    (project / "params-cnn.yaml").write_text(
        compiled.replace("models/model.ckpt", "models/cnn.ckpt")
    )
    seconds["train cnn compiled"], stderr = stage(
        "training.train", project, log, "--params", "params-cnn.yaml"
    )
    lines = [line for line in stderr.splitlines() if "recompil" in line.lower()]
    return {"seconds": seconds, "metrics": metrics, "recompile_lines": lines[:10]}


def resnet_cfg(tmp: Path, **runtime):
    cfg = bench.base_config(
        ROOT,
        tmp / "resnet",
        data={"image_size": [32, 32], "channels": 3},
        model={"name": "resnet18"},
        training={"accelerator": DEVICE, "devices": 1, "batch_size": 256, "precision": PRECISION},
        runtime={"pin_memory": True, **runtime},
    )
    processed = Path(cfg.paths.processed)
    if not processed.exists():
        bench.write_synthetic(processed, {"train": TRAIN, "val": TRAIN // 10}, 32, channels=3)
    return cfg


def bare_gpu_epochs(cfg, epochs: int) -> list[float]:
    """A hand-written bf16 loop doing the project's work: pinned batches copied non-blocking,
    forward, backward, step, training accuracy accumulated; validation with accuracy."""
    import torch
    import torch.nn.functional as F

    factories = bench.factories()
    torch.manual_seed(0)
    datamodule = factories.create_datamodule(cfg)
    datamodule.setup("fit")
    train, val = datamodule.datasets["train"], datamodule.datasets["val"]
    device = "cuda" if CUDA else "cpu"
    images, labels = train.images, train.labels
    if CUDA:
        images, labels = images.pin_memory(), labels.pin_memory()
    model = factories.create_model(cfg).net.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.training.optimization["lr"], weight_decay=0.01
    )
    times = []
    for _ in range(epochs):
        if CUDA:
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.train()
        correct = torch.zeros((), device=device)
        for index in torch.randperm(len(labels)).split(cfg.training.batch_size):
            x = images[index].to(device, non_blocking=True)
            y = labels[index].to(device, non_blocking=True)
            with torch.autocast(device, torch.bfloat16, enabled=CUDA):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct += (logits.argmax(1) == y).sum()
        float(correct)
        model.eval()
        with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=CUDA):
            hits = torch.zeros((), device=device)
            for start_row in range(0, len(val.labels), cfg.evaluation.batch_size):
                rows = slice(start_row, start_row + cfg.evaluation.batch_size)
                hits += (
                    model(val.images[rows].to(device)).argmax(1) == val.labels[rows].to(device)
                ).sum()
            float(hits)
        if CUDA:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def resnet(tmp: Path, log: Path) -> dict:
    cfg = resnet_cfg(tmp)
    with bench.quiet(log):
        bare = bare_gpu_epochs(cfg, 4)[1:]
        lightning = bench.lightning_epochs(cfg, 4)[1:]
    return {
        "bare_epoch_s": statistics.median(bare),
        "lightning_epoch_s": statistics.median(lightning),
        "ratio": statistics.median(lightning) / statistics.median(bare),
        "images_per_s_lightning": TRAIN / statistics.median(lightning),
    }


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage()[:300])


def compiled(tmp: Path, log: Path) -> dict:
    import torch

    factories = bench.factories()
    create_model = factories.create_model

    def compiled_model(cfg):
        model = create_model(cfg)
        model.net.compile()  # as train.py does with runtime.compile: true
        return model

    handler = Collect()
    for name in ("torch", "torch._dynamo", "torch._inductor"):
        logging.getLogger(name).addHandler(handler)
    cfg = resnet_cfg(tmp)
    with bench.quiet(log):
        eager = bench.lightning_epochs(cfg, 4)
        factories.create_model = compiled_model
        try:
            fast = bench.lightning_epochs(cfg, 4)
        finally:
            factories.create_model = create_model
    counters = {k: dict(v) for k, v in torch._dynamo.utils.counters.items()}
    return {
        "eager_epochs_s": eager,
        "compiled_epochs_s": fast,
        "speedup_after_first": statistics.median(eager[1:]) / statistics.median(fast[1:]),
        "warnings": [line for line in handler.lines if "compil" in line.lower()][:10],
        "dynamo_stats": counters.get("stats", {}),
    }


def p2b(tmp: Path, log: Path) -> dict:
    return bench.p2b(ROOT, tmp, log)


def workers(tmp: Path, log: Path) -> dict:
    from mlt_project.data.preprocess import preprocess, resolve_workers

    raw = tmp / "pngs"
    bench.write_pngs(raw, 3000, 64)
    cfg = bench.base_config(ROOT, tmp / "workers", data={"image_size": [64, 64], "channels": 3})
    cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, raw=str(raw)))
    seconds = {}
    for n in ("auto", 1):
        run_cfg = dataclasses.replace(
            cfg, runtime=dataclasses.replace(cfg.runtime, preprocess_workers=n)
        )
        with bench.quiet(log):
            start = time.perf_counter()
            preprocess(run_cfg)
            seconds[str(n)] = time.perf_counter() - start
    return {"seconds": seconds, "auto_workers": resolve_workers("auto", 3000)}


SECTIONS = {"crash": crash, "imports": imports, "pipeline": pipeline, "resnet": resnet,
            "compile": compiled, "p2b": p2b, "workers": workers}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", default=",".join(SECTIONS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(SRC))
    import tempfile

    results: dict = {"python": sys.version.split()[0]}
    try:
        import torch

        results["torch"] = torch.__version__
        results["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    log = args.out / "gpu.log"
    with tempfile.TemporaryDirectory() as tmp_name:
        for name in args.only.split(","):
            tmp = Path(tmp_name) / name
            tmp.mkdir()
            start = time.perf_counter()
            try:
                results[name] = SECTIONS[name](tmp, log)
            except Exception:
                results[name] = {"error": traceback.format_exc()[-2000:]}
            results[name + "_wall_s"] = round(time.perf_counter() - start, 1)
            (args.out / "gpu.json").write_text(json.dumps(results, indent=2, default=str))
            print(name, json.dumps(results[name], default=str)[:600], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
