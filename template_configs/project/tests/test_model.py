import dataclasses

import pytest
import torch

from mlt_project.config import ConfigError
from mlt_project.factories import create_model
from mlt_project.model.nets import NETWORKS


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
