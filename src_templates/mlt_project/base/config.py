"""params.yaml -> typed, read-only sections with dot access.

Every key is declared once: here, or, for the options of what the code builds from params, in
the signature that takes them (schema.py): a network's `model.<name>:` section (model/nets.py or
torchvision), `augment:` (model/augment.py, model/mix.py) and the optimizer's keys of
`training:` (model/optim.py), checked when training builds them. A key that is unknown, missing
or of the wrong type is an error naming the key (and the file), so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .errors import ConfigError
from .schema import checked_value
from .tasks import OLDEST_TASK, TASKS

PARAMS_FILE = Path("params.yaml")
RESUME_FILE = "last.ckpt"  # in paths.checkpoints
CLASS_BALANCE = ("none", "loss", "sampler")
MAX_TIME = re.compile(r"^\d{2}:\d{2}:\d{2}:\d{2}$")  # Lightning's DD:HH:MM:SS


@dataclass(frozen=True)
class PathsConfig:
    raw: str
    processed: str
    model: str
    curves: str  # per-epoch losses and accuracy, written by train for `dvc plots`
    metrics: str  # the summary DVC shows as metrics: loss, accuracy, macro F1
    per_class: str  # precision, recall, F1 and support per class (a plot, not metrics)
    plots: str  # the confusion matrix's rows
    mistakes: str  # the test images evaluation got wrong, most confident first (CSV)
    data_report: str  # preprocess's account of the data: per class and split, duplicates, skips
    logs: str  # TensorBoard; each training run replaces the last one's events
    release: str  # releases/: model.onnx, model_info.json, benchmark.json
    checkpoints: str  # resume state of an interrupted training run; not a DVC output
    weights: str  # the folder of model.weights_file: a dependency of train, so a new file retrains

    @property
    def resume_checkpoint(self) -> Path:
        """The checkpoint an interrupted training run resumes from (train, checkpoint_sync)."""
        return Path(self.checkpoints) / RESUME_FILE


@dataclass(frozen=True)
class DataConfig:
    image_size: list[int]  # [height, width]
    channels: int  # 1 (grayscale) or 3 (RGB); images are converted to this on load
    num_classes: int
    val_fraction: float
    test_fraction: float
    seed: int
    skip_corrupt: bool  # skip (and count) unreadable images instead of stopping at the first
    # multiclass: one label per image (softmax); multilabel: zero or more (sigmoid per class):
    # tasks.py. A default only for model_info.json of releases older than the key: params.yaml
    # needs it.
    task: str = OLDEST_TASK

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError("image_size must be [height, width] with both at least 1")
        if self.channels not in (1, 3):
            raise ValueError("channels must be 1 (grayscale) or 3 (RGB)")
        if self.num_classes < 2:
            raise ValueError("num_classes must be at least 2")
        for name in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave images for training")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image tensor."""
        return (self.channels, self.image_size[0], self.image_size[1])


@dataclass(frozen=True)
class ModelConfig:
    name: str  # a network of model/nets.py (mlp, cnn) or a torchvision classification model
    pretrained: str  # torchvision weights (DEFAULT, IMAGENET1K_V1, ...) or none
    weights_file: str | None  # a local state_dict to start from (machines without internet)
    freeze_backbone_epochs: int  # train only the new classifier head for this many epochs
    backbone_lr_factor: float  # the backbone's learning rate as a fraction of the head's
    # The other keys of `model:` are sections of network options, `mlp:`, `cnn:`, ...: the
    # chosen network's section is checked against its __init__ when the network is built.
    networks: dict[str, dict[str, Any]]
    EXTRA: ClassVar[str] = "networks"  # the field that gathers the keys not declared here

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("name must name a network, e.g. mlp, cnn or resnet18")
        if self.freeze_backbone_epochs < 0:
            raise ValueError("freeze_backbone_epochs must be 0 or more")
        if self.freeze_backbone_epochs and self.pretrained == "none" and not self.weights_file:
            raise ValueError(
                "freeze_backbone_epochs needs a pretrained backbone: set pretrained or weights_file"
            )
        if not 0 < self.backbone_lr_factor <= 1:
            raise ValueError("backbone_lr_factor must be in (0, 1]: a fraction of the head's lr")
        if self.backbone_lr_factor < 1 and self.pretrained == "none" and not self.weights_file:
            raise ValueError(
                "backbone_lr_factor below 1 needs a pretrained backbone: set pretrained or "
                "weights_file, or backbone_lr_factor: 1.0"
            )


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int
    max_epochs: int
    accelerator: str  # auto | cpu | gpu | cuda | mps
    devices: int | str  # a count per machine, or "auto"
    num_nodes: int  # machines; more than 1 only in a multi-node AWS Batch job
    precision: str  # auto (bf16-mixed where the GPU supports it, else 32-true) or a Lightning value
    seed: int
    label_smoothing: float  # cross-entropy's: 0 = off
    gradient_clip_val: float  # clip the gradients' norm to this; 0 = off
    accumulate_grad_batches: int  # batches per optimizer step; 1 = a step per batch
    ema_decay: float  # validate and keep an exponential moving average of the weights; 0 = off
    early_stopping_patience: int  # epochs without a lower val loss before stopping; 0 = off
    # A time budget, "DD:HH:MM:SS" (quoted), or null = none. An int is YAML 1.1 reading it
    # unquoted as a base-60 number: declared so the error can say to quote it.
    max_time: str | int | None
    class_balance: str  # none | loss (class-weighted) | sampler (class-balanced draws)
    # The other keys are the optimizer's and its schedule's (optimizer, lr, momentum,
    # weight_decay, scheduler, warmup_epochs): the arguments of model/optim.py's Optimization,
    # checked against its __init__ when training builds it.
    optimization: dict[str, Any]
    EXTRA: ClassVar[str] = "optimization"

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if isinstance(self.devices, str) and self.devices != "auto":
            raise ValueError('devices must be a number or "auto"')
        if isinstance(self.devices, int) and self.devices < 1:
            raise ValueError('devices must be at least 1, or "auto"')
        if self.num_nodes < 1:
            raise ValueError("num_nodes must be at least 1")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError("label_smoothing must be in [0, 1)")
        if self.gradient_clip_val < 0:
            raise ValueError("gradient_clip_val must be 0 (off) or more")
        if self.accumulate_grad_batches < 1:
            raise ValueError("accumulate_grad_batches must be at least 1")
        if not 0 <= self.ema_decay < 1:
            raise ValueError("ema_decay must be in [0, 1); 0 = off, e.g. 0.999")
        if self.early_stopping_patience < 0:
            raise ValueError("early_stopping_patience must be 0 (off) or more")
        if isinstance(self.max_time, int):
            raise ValueError(
                'max_time must be quoted, e.g. "00:12:00:00": unquoted, YAML reads it as a number'
            )
        if self.max_time is not None and not (
            MAX_TIME.match(self.max_time) and self.max_time != "00:00:00:00"
        ):
            raise ValueError(
                f"max_time {self.max_time!r} is not DD:HH:MM:SS (e.g. 00:12:00:00 for 12 hours), "
                "or null for none"
            )
        if self.class_balance not in CLASS_BALANCE:
            raise ValueError(f"class_balance must be one of {', '.join(CLASS_BALANCE)}")

    @property
    def keeps_best(self) -> bool:
        """Whether the model kept is the best by val loss, not the last (training may stop early)."""
        return self.early_stopping_patience > 0 or self.max_time is not None


@dataclass(frozen=True)
class RuntimeConfig:
    """How fast the stages run, not what they compute: no DVC stage depends on these."""

    preprocess_workers: int | str  # processes decoding images; auto = from cores and image count
    loader_workers: int | str  # DataLoader worker processes; auto = 0 in memory, per core streamed
    pin_memory: bool  # page-locked batches for faster copies to the GPU; ignored without one
    persistent_workers: bool  # keep DataLoader workers between epochs (loader_workers > 0)
    streaming: bool | str  # read Parquet row group by row group; auto = when data > RAM / 4
    compile: bool  # torch.compile the network: slower first steps, faster after (mostly GPUs)
    checkpoint_every_n_steps: int  # resume checkpoint interval; SIGTERM also saves one
    channels_last: bool | str  # channels-last memory format; auto = conv networks on CUDA

    def __post_init__(self) -> None:
        workers = self.preprocess_workers
        if workers != "auto" and not (isinstance(workers, int) and workers >= 1):
            raise ValueError('preprocess_workers must be at least 1, or "auto"')
        loader = self.loader_workers
        if loader != "auto" and not (isinstance(loader, int) and loader >= 0):
            raise ValueError('loader_workers must be 0 or more, or "auto"')
        if isinstance(self.streaming, str) and self.streaming != "auto":
            raise ValueError('streaming must be true, false or "auto"')
        if self.checkpoint_every_n_steps < 1:
            raise ValueError("checkpoint_every_n_steps must be at least 1")
        if isinstance(self.channels_last, str) and self.channels_last != "auto":
            raise ValueError('channels_last must be true, false or "auto"')


@dataclass(frozen=True)
class EvaluationConfig:
    batch_size: int

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")


@dataclass(frozen=True)
class ReleaseConfig:
    version: str  # a version such as 0.1.0, or "describe": `git describe --tags --match "v*"`
    onnx_opset: int
    # A logit may differ by parity_atol + parity_rtol * its image's largest |logit| between
    # PyTorch and ONNX Runtime (onnx_export.parity_bounds).
    parity_rtol: float
    parity_atol: float
    parity_samples: int  # test-split images the parity gate compares (all, if fewer)
    # `release promote` refuses a candidate whose primary metric (base/tasks.py) is below the
    # stage's release by more than this, on the candidate's test split (release/promote.py).
    promote_tolerance: float

    def __post_init__(self) -> None:
        if not self.version.strip():
            raise ValueError("version must not be empty")
        if self.onnx_opset < 7:
            raise ValueError("onnx_opset must be at least 7")
        if self.parity_rtol < 0 or self.parity_atol < 0 or self.parity_rtol + self.parity_atol == 0:
            raise ValueError("parity_rtol and parity_atol must be >= 0, and not both 0")
        if self.parity_samples < 1:
            raise ValueError("parity_samples must be at least 1")
        if not 0 <= self.promote_tolerance < 1:
            raise ValueError("promote_tolerance must be in [0, 1): 0 = not worse at all")


@dataclass(frozen=True)
class Config:
    paths: PathsConfig
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig
    # Random changes to training batches: the options of model/augment.py's BatchAugment and
    # model/mix.py's BatchMix, checked against their __init__ when training builds them.
    augment: dict[str, Any]
    runtime: RuntimeConfig
    evaluation: EvaluationConfig
    release: ReleaseConfig


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-05` as the float YAML 1.2 says it is: `dvc exp run -S`
    writes params.yaml back with ruamel.yaml, which writes small floats that way, and YAML 1.1
    (PyYAML) would read them as strings."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_params(path: str | Path) -> Any:
    """params.yaml's contents as written, by hand or by DVC."""
    return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=ParamsLoader)  # a SafeLoader


def load_config(path: str | Path = PARAMS_FILE) -> Config:
    """Read and check params.yaml; raise ConfigError naming the key and the file."""
    path = Path(path)
    try:
        raw = read_params(path)
    except FileNotFoundError:
        raise ConfigError(
            f"{path} not found in {Path.cwd()}: run from the project root, or pass --params"
        ) from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"{path} is not valid YAML{line}: fix the syntax there") from None
    return _build(Config, raw, "", path)


def _build(cls: type, raw: Any, prefix: str, path: Path) -> Any:
    """Build dataclass `cls` from a mapping, checking keys and types recursively."""
    what = f"section {prefix.rstrip('.')!r}" if prefix else "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {what} must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    extra = getattr(cls, "EXTRA", None)
    expected = [f.name for f in fields(cls) if f.name != extra]
    unknown = sorted(set(raw) - set(expected))
    values: dict[str, Any] = {}
    if extra:
        # The keys left to a signature: network sections (mappings, or empty) in `model:`, the
        # optimizer's values in `training:`.
        sections = typing.get_args(hints[extra])[1] is not Any
        gathered = {k for k in unknown if isinstance(raw[k], dict | None) == sections}
        values[extra] = {k: (raw[k] or {}) if sections else raw[k] for k in sorted(gathered)}
        unknown = [k for k in unknown if k not in gathered]
    if unknown:
        raise ConfigError(
            f"{path}: unknown key '{prefix}{unknown[0]}'; expected one of {', '.join(expected)}"
        )
    missing = [name for name in expected if name not in raw]
    if missing:
        raise ConfigError(f"{path}: missing key '{prefix}{missing[0]}'; add it (see PROJECT.md)")
    for name in expected:
        hint, value = hints[name], raw[name]
        if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
            values[name] = _build(hint, value, f"{prefix}{name}.", path)
            continue
        try:
            values[name] = checked_value(f"{prefix}{name}", value, hint)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
    try:
        return cls(**values)
    except ValueError as error:
        raise ConfigError(f"{path}: section '{prefix.rstrip('.')}': {error}") from None
