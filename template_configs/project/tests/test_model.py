import dataclasses

import pytest
import torch

from mlt_project.base.config import ConfigError
from mlt_project.model.nets import NETWORKS
from mlt_project.training.factories import create_model


def with_model(cfg, **changes):
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes))


def test_each_network_gives_one_logit_per_class(cfg):
    """The project's network, and each network of nets.py that params.yaml has options for."""
    names = {cfg.model.name} | (set(cfg.model.networks) & set(NETWORKS))
    images = torch.randint(0, 256, (4, *cfg.data.input_shape), dtype=torch.uint8)
    for name in sorted(names):
        model = create_model(with_model(cfg, name=name))
        assert model(images).shape == (4, cfg.data.num_classes), name


def test_an_unknown_network_names_the_closest_ones(cfg):
    with pytest.raises(ConfigError, match="did you mean resnet18"):
        create_model(with_model(cfg, name="resnet_18"))


def test_network_options_are_checked_against_the_network(cfg):
    networks = {**cfg.model.networks, "mlp": {"hidden_size": 32, "dropuot": 0.1}}
    with pytest.raises(ConfigError, match=r"unknown key 'model\.mlp\.dropuot'"):
        create_model(with_model(cfg, name="mlp", networks=networks))


@pytest.mark.parametrize(
    ("section", "changes", "message"),
    [
        (
            "training",
            {"learning_rate": 0.1},
            r"unknown key 'training\.learning_rate'; training takes",
        ),
        ("training", {"optimizer": "adam"}, "optimizer must be one of adamw, sgd"),
        ("training", {"lr": "fast"}, r"key 'training\.lr' is 'fast' \(str\), expected a number"),
        ("augment", {"rotaton": 10}, r"unknown key 'augment\.rotaton'; augment takes"),
        ("augment", {"mixup_alpha": -1}, "mixup_alpha must be 0 .off. or more"),
    ],
)
def test_optimizer_and_augment_keys_are_checked_against_their_signatures(
    cfg, section, changes, message
):
    """As a network's options are: the __init__ that takes them is their schema."""
    if section == "training":
        options = {**cfg.training.optimization, **changes}
        cfg = dataclasses.replace(
            cfg, training=dataclasses.replace(cfg.training, optimization=options)
        )
    else:
        cfg = dataclasses.replace(cfg, augment={**cfg.augment, **changes})
    with pytest.raises(ConfigError, match=message):
        create_model(cfg)
