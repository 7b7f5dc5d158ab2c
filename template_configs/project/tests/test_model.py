import torch

from mlt_project.factories import create_model


def test_output_has_one_logit_per_class(cfg):
    model = create_model(cfg)
    images = torch.randint(0, 256, (4, *cfg.data.input_shape), dtype=torch.uint8)
    assert model(images).shape == (4, cfg.data.num_classes)
