"""Build the network `model.name` names: one of nets.py, or any torchvision classification model.

The result is a `Network`: uint8 pixels (N, C, H, W) in 0..255 in, logits out. Scaling, the
pretrained weights' mean/std normalisation and the grayscale-to-RGB repeat live inside it, so the
exported ONNX graph takes the same uint8 pixels that preprocess writes and predict reads.

A checkpoint stores the network's *spec* (`network_spec`: name, options, input shape, classes);
`build_network(spec)` rebuilds the same architecture and the checkpoint's weights go into it.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import nn

from ..base import schema
from ..base.config import ModelConfig
from ..base.errors import ConfigError, PipelineError
from .nets import NETWORKS
from .tensor_files import load_tensors

NetworkSpec = dict[str, Any]  # name, options, input_shape, num_classes: JSON-able, in hparams

# ImageNet's channel statistics: every torchvision classification model's weights expect them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Network(nn.Module):
    """A classifier `body` behind the input handling every network shares."""

    def __init__(
        self,
        body: nn.Module,
        head: str,
        in_channels: int,
        body_channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.body = body
        self.head = head  # the classifier layer's name in `body`: it stays trainable when frozen
        self.repeat = body_channels // in_channels  # 3 when grayscale images meet an RGB network
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        if self.repeat > 1:
            x = x.expand(-1, self.repeat, -1, -1)
        out = self.body((x - self.mean) / self.std)
        # Inception and GoogLeNet return (logits, aux logits) in training mode.
        return out.logits if hasattr(out, "logits") else out

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Freeze (or unfreeze) every parameter but the classifier head's."""
        for name, parameter in self.body.named_parameters():
            parameter.requires_grad = trainable or name.startswith(f"{self.head}.")


def check_sections(model: ModelConfig) -> None:
    """Every `model.<name>:` section names a network: a typo is an error, not ignored options."""
    unknown = [name for name in model.networks if name not in NETWORKS]
    if not unknown:
        return
    from torchvision import models  # only when a section may be a torchvision model's

    available = models.list_models(module=models)
    for name in unknown:
        if name not in available:
            raise ConfigError(
                f"unknown key 'model.{name}': no network has that name; {closest(name, available)}"
            )


def network_spec(model: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> NetworkSpec:
    return {
        "name": model.name,
        "options": dict(model.networks.get(model.name) or {}),
        "input_shape": list(input_shape),
        "num_classes": num_classes,
    }


def build_network(
    spec: NetworkSpec, pretrained: str = "none", weights_file: str | None = None
) -> Network:
    """The network of `spec`, from pretrained weights or a weights file if given, else random."""
    name, options = spec["name"], spec["options"]
    input_shape, num_classes = tuple(spec["input_shape"]), spec["num_classes"]
    if name in NETWORKS:
        if pretrained != "none":
            raise ConfigError(
                f"model.pretrained is {pretrained!r} but {name} is defined in model/nets.py and "
                "has no published weights: set model.pretrained: none (or use model.weights_file)"
            )
        # Its options are checked against its __init__ (after input_shape and num_classes).
        body = schema.build(f"model.{name}", options, NETWORKS[name], input_shape, num_classes)
        if weights_file:
            load_weights_file(body, weights_file, name)
        head = classifier_name(body, num_classes)
        zeros = (0.0,) * input_shape[0]
        return Network(body, head, input_shape[0], input_shape[0], zeros, (1.0,) * input_shape[0])
    body, head = torchvision_body(name, options, input_shape, num_classes, pretrained, weights_file)
    return Network(body, head, input_shape[0], 3, IMAGENET_MEAN, IMAGENET_STD)


def torchvision_body(
    name: str,
    options: dict[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    pretrained: str,
    weights_file: str | None,
) -> tuple[nn.Module, str]:
    """A torchvision classification model with its head replaced for `num_classes`."""
    # Imported here, not at the top: the networks of nets.py do without it (a second of start-up).
    from torchvision import models

    available = models.list_models(module=models)  # classification models only
    if name not in available:
        raise ConfigError(
            f"model.name {name!r} is neither a network of model/nets.py ({', '.join(NETWORKS)}) "
            f"nor a torchvision classification model: {closest(name, available)}"
        )
    weights = pick_weights(models, name, pretrained)
    min_size = (
        weights.meta.get("min_size")
        if weights
        else models.get_model_weights(name).DEFAULT.meta.get("min_size")
    )
    if min_size and (input_shape[1] < min_size[0] or input_shape[2] < min_size[1]):
        raise ConfigError(
            f"{name} needs images of at least {min_size[0]}x{min_size[1]} but data.image_size is "
            f"{list(input_shape[1:])}: raise data.image_size, or pick a network for small images"
        )
    try:
        body = models.get_model(name, weights=None, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.{name} options {options} are not accepted: {error}") from None
    if weights is not None:
        body.load_state_dict(download_weights(weights, name, pretrained))
    elif weights_file:
        load_weights_file(body, weights_file, name)
    classes_now = len(weights.meta["categories"]) if weights else 1000
    head = classifier_name(body, classes_now)
    replace_head(body, head, num_classes)
    size = getattr(body, "image_size", None)  # ViTs take exactly the size they were built for
    if isinstance(size, int) and tuple(input_shape[1:]) != (size, size):
        raise ConfigError(
            f"{name} takes {size}x{size} images but data.image_size is {list(input_shape[1:])}: "
            f"set data.image_size: [{size}, {size}]"
        )
    return body, head


def closest(name: str, torchvision_names: list[str]) -> str:
    """'did you mean ...?' with the nearest network names, for an error message."""
    close = difflib.get_close_matches(name, [*NETWORKS, *torchvision_names], n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"


def pick_weights(models: Any, name: str, pretrained: str) -> Any:
    """The torchvision weights enum member `pretrained` names (DEFAULT, IMAGENET1K_V1, ...)."""
    if pretrained == "none":
        return None
    enum = models.get_model_weights(name)
    if pretrained == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[pretrained]
    except KeyError:
        names = ", ".join(["DEFAULT", *(member.name for member in enum)])
        raise ConfigError(
            f"model.pretrained {pretrained!r} is not a weights name of {name}: use one of {names}, "
            "or none"
        ) from None


def download_weights(weights: Any, name: str, pretrained: str) -> dict[str, torch.Tensor]:
    """The weights' state_dict from torch's cache, downloaded into it the first time.

    Read as data: torchvision's own loader unpickles the cached file whole, code and all.
    """
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Written to a temporary file and moved into place: a cut download leaves no file.
            torch.hub.download_url_to_file(weights.url, str(cached), progress=False)
        except (URLError, ConnectionError, TimeoutError) as error:
            raise PipelineError(
                f"cannot download the {name} {pretrained} weights "
                f"({getattr(error, 'reason', error)}): on a machine with internet get "
                f"{weights.url} and place it at {cached} (or point model.weights_file at it)"
            ) from None
    return load_tensors(
        cached, f"the {name} {pretrained} weights {cached}", "delete it to download it again"
    )


def load_weights_file(body: nn.Module, path: str, name: str) -> None:
    """Load a state_dict saved with torch.save into `body` (the network before its new head)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"model.weights_file {path} not found: fix the path, or set it to null")
    state = load_tensors(
        file, f"model.weights_file {path}", "save one with torch.save(model.state_dict(), path)"
    )
    if isinstance(state, dict) and "state_dict" in state:  # a whole checkpoint
        state = state["state_dict"]
    try:
        body.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).strip().splitlines()
        raise PipelineError(
            f"model.weights_file {path} does not fit {name} ({first[-1] if first else error}): "
            f"use the state_dict of a {name}"
        ) from None


def classifier_name(body: nn.Module, num_classes: int) -> str:
    """The name of the last layer that outputs `num_classes` values: the classifier head."""
    found = [
        name
        for name, module in body.named_modules()
        if (isinstance(module, nn.Linear) and module.out_features == num_classes)
        or (isinstance(module, nn.Conv2d) and module.out_channels == num_classes)
    ]
    if not found:
        raise PipelineError(
            f"cannot find the classifier layer of {type(body).__name__}: its last Linear (or 1x1 "
            f"Conv2d) layer must output num_classes ({num_classes}) values"
        )
    return found[-1]


def replace_head(body: nn.Module, head: str, num_classes: int) -> None:
    """Swap the classifier layer `head` for a new one with `num_classes` outputs."""
    parent_name, _, attribute = head.rpartition(".")
    parent = body.get_submodule(parent_name) if parent_name else body
    old = getattr(parent, attribute)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes)
    else:  # SqueezeNet's classifier is a 1x1 convolution
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride)
    setattr(parent, attribute, new)
