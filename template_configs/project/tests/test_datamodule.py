import torch

from mlt_project.utils import create_datamodule


def test_batches_come_from_the_parquet_splits(processed):
    cfg = processed
    datamodule = create_datamodule(cfg)
    datamodule.setup("fit")
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (cfg.training.batch_size, *cfg.data.input_shape)
    assert images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert set(labels.tolist()) <= set(range(cfg.data.num_classes))
    sizes = {split: len(ds) for split, ds in datamodule.datasets.items()}
    assert sizes == {"train": 18, "val": 6}
