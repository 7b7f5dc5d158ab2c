import dataclasses

import torch

from mlt_project.factories import create_datamodule


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


def test_streaming_yields_the_same_rows_as_in_memory(processed):
    cfg = processed
    batches = {}
    for streaming in (False, True):
        datamodule = create_datamodule(
            dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, streaming=streaming))
        )
        datamodule.setup("fit")
        train = list(datamodule.train_dataloader())
        assert all(len(labels) <= cfg.training.batch_size for _, labels in train)
        datamodule.setup("test")
        test = list(datamodule.test_dataloader())
        batches[streaming] = (train, test)
    (memory_train, memory_test), (stream_train, stream_test) = batches[False], batches[True]

    def rows(batches):
        return sorted(
            (int(label), image.flatten().tolist())
            for images, labels in batches
            for image, label in zip(images, labels, strict=True)
        )

    assert rows(stream_train) == rows(memory_train)  # same rows, shuffled differently
    for (a_images, a_labels), (b_images, b_labels) in zip(memory_test, stream_test, strict=True):
        assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)  # same order
