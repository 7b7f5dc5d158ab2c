"""Train the classifier on the processed splits; write the checkpoint DVC tracks.

python -m mlt_project.train [--params params.yaml]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L

from .config import PARAMS_FILE, Config, load_config
from .errors import run_main
from .files import atomic_output
from .utils import create_datamodule, create_model, create_trainer, setup_logger


def train(cfg: Config) -> dict[str, float]:
    """Fit the model, save it to paths.model, and return the final logged metrics."""
    log = setup_logger()
    L.seed_everything(cfg.training.seed, workers=True)
    datamodule = create_datamodule(cfg)
    model = create_model(cfg)
    trainer = create_trainer(cfg)
    trainer.fit(model, datamodule=datamodule)
    with atomic_output(cfg.paths.model) as tmp:
        trainer.save_checkpoint(tmp)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    log.info("saved %s; %s", cfg.paths.model, {k: round(v, 4) for k, v in metrics.items()})
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    return run_main(lambda: train(load_config(args.params)))


if __name__ == "__main__":
    raise SystemExit(main())
