"""Train the classifier on the processed splits; write the checkpoint DVC tracks.

python -m mlt_project.training.train [--params params.yaml]
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..base import cli
from ..base.config import Config
from ..base.errors import ConfigError, Interrupted, PipelineError
from ..base.logs import setup_logger
from ..data.store import split_path
from ..model.checkpoint import save_checkpoint
from ..model.inference import predict_split
from .callbacks import KeepBest, quiet_warnings
from .factories import create_datamodule, create_model, create_trainer
from .module import ImageClassifier
from .resume import ResumeCheckpoint, find_resume, run_fingerprint


def train(cfg: Config) -> dict[str, float]:
    """Fit the model, save it to paths.model, and return the final logged metrics.

    Resumes from paths.checkpoints when an interrupted run of the same params, data and code
    left a checkpoint there (resume.py); on SIGTERM saves one and exits with code 75. The
    task's thresholds (multilabel) are chosen on the validation split once training is done,
    and saved in the checkpoint.
    """
    setup_logger()
    require_tracked_weights(cfg)
    L.seed_everything(cfg.training.seed, workers=True)
    fingerprint = run_fingerprint(cfg)
    trainer = create_trainer(cfg, fingerprint=fingerprint)
    with checkpoint_on_sigterm(trainer):
        datamodule, model = create_datamodule(cfg), create_model(cfg)
        # Every process loads the checkpoint itself: the nodes of a multi-node job each have a
        # disk of their own, so only a single machine resumes.
        ckpt_path = find_resume(cfg, fingerprint) if cfg.training.num_nodes == 1 else None
        if ckpt_path is None and trainer.is_global_zero:
            clear_events(Path(trainer.logger.log_dir))
        with quiet_warnings():
            # Data only (tensor_files): find_resume has read the same file that way.
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return finish(cfg, trainer, model)


@contextlib.contextmanager
def checkpoint_on_sigterm(trainer: L.Trainer) -> Iterator[None]:
    """From here on, SIGTERM means: save a resume checkpoint at the next step, then stop (exit
    75); the previous handler is back afterwards."""
    resume = next(c for c in trainer.callbacks if isinstance(c, ResumeCheckpoint))
    previous = signal.getsignal(signal.SIGTERM)
    resume.install_handler()
    try:
        yield
    except PipelineError:
        print(file=sys.stderr)  # end the progress bar's line: the error gets a line of its own
        raise
    except SIGTERMException:
        # Lightning's handler caught a SIGTERM before training started: nothing to save yet.
        raise Interrupted() from None
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def finish(cfg: Config, trainer: L.Trainer, model: ImageClassifier) -> dict[str, float]:
    """Keep the final weights and choose the thresholds on them (ImageClassifier.finish), save
    the checkpoint DVC tracks, and drop the resume checkpoint: the run is complete."""
    log = setup_logger()
    keep = next((c for c in trainer.callbacks if isinstance(c, KeepBest)), None)
    record = model.finish(keep, lambda: validation_outputs(model, cfg))
    if trainer.is_global_zero and model.thresholds is not None:
        log.info("thresholds chosen on the validation split: %s", model.thresholds)
    save_checkpoint(trainer, cfg.paths.model)
    if trainer.is_global_zero:
        cfg.paths.resume_checkpoint.unlink(missing_ok=True)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    metrics |= record
    if trainer.is_global_zero:
        log.info("saved %s; %s", cfg.paths.model, {k: round(v, 4) for k, v in metrics.items()})
    return metrics


def validation_outputs(model: ImageClassifier, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(logits, targets) of the kept weights on the whole validation split: on every process
    alike under DDP, so all choose the same thresholds and nothing is gathered."""
    net = model.net.eval()
    device = next(net.parameters()).device
    val = split_path(cfg.paths.processed, "val")
    logits, labels, _ = predict_split(net, val, cfg.training.batch_size, device)
    return logits.numpy(), labels.numpy()


def require_tracked_weights(cfg: Config) -> None:
    """model.weights_file must lie in paths.weights, the folder dvc.yaml makes a dependency of
    train (DVC cannot depend on an optional path): elsewhere, replacing it would not retrain."""
    file, folder = cfg.model.weights_file, Path(cfg.paths.weights)
    if file and not Path(file).resolve().is_relative_to(folder.resolve()):
        raise ConfigError(
            f"model.weights_file {file} is outside paths.weights ({folder}/), which dvc.yaml "
            f"makes a dependency of train: move the file into {folder}/ and point "
            "model.weights_file there, so that replacing it retrains"
        )


def clear_events(log_dir: Path) -> None:
    """Remove the last run's TensorBoard events, so TensorBoard shows this run alone.

    A resumed run keeps them: its events continue the interrupted run's.
    """
    for events in log_dir.glob("events.out.tfevents.*"):
        events.unlink()


def main(argv: list[str] | None = None) -> int:
    return cli.stage(__doc__, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
