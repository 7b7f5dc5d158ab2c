"""Train the classifier on the processed splits; write the checkpoint DVC tracks.

python -m mlt_project.train [--params params.yaml]
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from . import cli
from .callbacks import KeepBest, quiet_warnings
from .checkpoint import save_checkpoint
from .config import Config, ConfigError
from .data.store import split_path
from .errors import Interrupted, PipelineError
from .factories import create_datamodule, create_model, create_trainer, use_channels_last
from .logs import setup_logger
from .model import objective
from .model.classifier import ImageClassifier
from .model.inference import predict_split
from .resume import ResumeCheckpoint, find_resume, run_fingerprint


def train(cfg: Config) -> dict[str, float]:
    """Fit the model, save it to paths.model, and return the final logged metrics.

    Resumes from paths.checkpoints when an interrupted run of the same params, data and code
    left a checkpoint there (resume.py); on SIGTERM saves one and exits with code 75. A
    multilabel model's per-class thresholds are chosen on the validation split once training
    is done, and saved in the checkpoint.
    """
    log = setup_logger()
    require_tracked_weights(cfg)
    L.seed_everything(cfg.training.seed, workers=True)
    fingerprint = run_fingerprint(cfg)
    resume = ResumeCheckpoint(
        cfg.paths.resume_checkpoint, fingerprint, cfg.runtime.checkpoint_every_n_steps
    )
    previous_handler = signal.getsignal(signal.SIGTERM)
    resume.install_handler()  # from here on, SIGTERM means: checkpoint at the next step, then stop
    try:
        datamodule = create_datamodule(cfg)
        model = create_model(cfg)
        if cfg.runtime.compile:
            # The network only, in place: its state_dict keys stay as they are, and Lightning's
            # logging and the metrics (which would recompile on every new value) stay eager.
            model.net.compile()
        if use_channels_last(cfg.runtime.channels_last, cfg.training.accelerator, model.net):
            model.to(memory_format=torch.channels_last)  # the average's copy too
            model.channels_last = True
        trainer = create_trainer(cfg)
        trainer.callbacks.append(resume)
        # Every process loads the checkpoint itself: the nodes of a multi-node job each have a
        # disk of their own, so only a single machine resumes.
        ckpt_path = find_resume(cfg, fingerprint) if cfg.training.num_nodes == 1 else None
        if ckpt_path is None and trainer.is_global_zero:
            clear_events(Path(trainer.logger.log_dir))
        with quiet_warnings():
            # Data only (tensor_files): find_resume has read the same file that way.
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except PipelineError:
        print(file=sys.stderr)  # end the progress bar's line: the error gets a line of its own
        raise
    except SIGTERMException:
        # Lightning's handler caught a SIGTERM before training started: nothing to save yet.
        raise Interrupted() from None
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous_handler)
    model.weights_record = keep_final_weights(cfg, trainer, model)
    model.saving_final = True
    if cfg.data.task == objective.MULTILABEL:
        # On the weights kept (best epoch, EMA average), from the whole split on every process:
        # all compute the same thresholds, nothing to gather.
        model.thresholds = validation_thresholds(model.net, cfg)
        if trainer.is_global_zero:
            log.info("thresholds chosen on the validation split: %s", model.thresholds)
    save_checkpoint(trainer, cfg.paths.model)
    if trainer.is_global_zero:
        cfg.paths.resume_checkpoint.unlink(
            missing_ok=True
        )  # the run is complete: nothing to resume
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    metrics |= model.weights_record
    if trainer.is_global_zero:
        log.info("saved %s; %s", cfg.paths.model, {k: round(v, 4) for k, v in metrics.items()})
    return metrics


def validation_thresholds(net: torch.nn.Module, cfg: Config) -> list[float]:
    """A multilabel network's threshold per class, from its validation probabilities
    (objective.fit_thresholds: each class's best F1 there)."""
    device = next(net.parameters()).device
    val = split_path(cfg.paths.processed, "val")
    logits, labels, _ = predict_split(net.eval(), val, cfg.training.batch_size, device)
    probs = objective.probabilities(objective.MULTILABEL, logits)
    return [round(t, 6) for t in objective.fit_thresholds(probs.numpy(), labels.numpy())]


def keep_final_weights(cfg: Config, trainer: L.Trainer, model: ImageClassifier) -> dict[str, float]:
    """Put the weights to keep into the network: the best epoch's by val loss when the run may
    stop early, else the last; the average of the weights with EMA. Returns what they are, for
    the checkpoint and evaluation's metrics (best_epoch as numbered in paths.curves)."""
    record: dict[str, float] = {}
    keep = next((c for c in trainer.callbacks if isinstance(c, KeepBest)), None)
    if keep is not None and keep.restore(model):
        record["best_epoch"] = keep.epoch
        record["best_val_loss"] = round(keep.best, 6)
    else:
        model.use_average()
    if cfg.training.ema_decay:
        record["ema_decay"] = cfg.training.ema_decay
    if keep is not None:
        record["epochs_trained"] = trainer.current_epoch
    return record


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
