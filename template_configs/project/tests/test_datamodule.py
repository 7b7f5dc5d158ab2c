import dataclasses
import json
from pathlib import Path

import pytest
import torch

from mlt_project.training import stream
from mlt_project.training.factories import create_datamodule


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
    assert set(sizes) == {"train", "val"}  # fit reads no test images
    report = json.loads(Path(cfg.paths.data_report).read_text())
    assert sizes == {split: report["images"][split] for split in ("train", "val")}


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
        val = list(datamodule.val_dataloader())
        batches[streaming] = (train, val)
    (memory_train, memory_val), (stream_train, stream_val) = batches[False], batches[True]

    def rows(batches):
        return sorted(
            (int(label), image.flatten().tolist())
            for images, labels in batches
            for image, label in zip(images, labels, strict=True)
        )

    assert rows(stream_train) == rows(memory_train)  # same rows, shuffled differently
    for (a_images, a_labels), (b_images, b_labels) in zip(memory_val, stream_val, strict=True):
        assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)  # same order


def streamed(cfg, **runtime):
    runtime = {"streaming": True, **runtime}
    datamodule = create_datamodule(
        dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, **runtime))
    )
    datamodule.setup("fit")
    return datamodule.train_dataloader()


def flat(batches):
    return [label for labels in batches for label in labels]


def labels_of(batches):
    return [labels.tolist() for _, labels in batches]


@pytest.mark.parametrize("persistent", [False, True])
def test_each_streamed_epoch_has_its_own_order_in_worker_processes(processed, persistent):
    loader = streamed(processed, loader_workers=2, persistent_workers=persistent)
    epochs = [labels_of(loader) for _ in range(3)]
    assert sorted(flat(epochs[0])) == sorted(flat(epochs[1]))  # the same rows
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]
    # The order depends on the epoch alone, not on how the workers were started.
    fresh = streamed(processed, loader_workers=2, persistent_workers=not persistent)
    assert [labels_of(fresh) for _ in range(3)] == epochs


def test_a_streamed_epoch_resumes_at_the_batch_it_stopped(processed):
    loader = streamed(processed, loader_workers=2)
    first = labels_of(loader)
    iterator = iter(loader)
    done = [next(iterator)[1].tolist()]  # epoch 1, interrupted after one batch
    state = loader.state_dict()
    rest = labels_of(iterator)
    assert state == {"epoch": 1, "batches": 1}
    resumed = streamed(processed, loader_workers=2)
    resumed.load_state_dict(state)
    assert labels_of(resumed) == rest  # the rest of epoch 1, and nothing else
    assert labels_of(resumed) != first  # then epoch 2

    finished = streamed(processed)
    finished.load_state_dict({"epoch": 0, "batches": len(first)})  # saved at an epoch's end
    assert [done[0], *rest] == labels_of(finished)  # epoch 1 from its start


def test_auto_loader_workers_follow_the_cores_this_process_may_use(processed, monkeypatch):
    monkeypatch.setattr(stream.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert stream.auto_workers() == 8  # at most one per stream
    assert stream.auto_workers(processes=4) == 2  # 4 processes share the 16 cores, 2 each train
    monkeypatch.setattr(stream.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert stream.auto_workers() == 0  # 2 cores: this process reads, as fast as a worker hands over
    monkeypatch.delattr(stream.os, "sched_getaffinity", raising=False)  # as on macOS
    monkeypatch.setattr(stream.os, "cpu_count", lambda: 4)
    assert stream.auto_workers() == 2
    # Streamed, a divisor of the streams, so the order stays the same; in memory, none.
    assert stream.stream_workers(3) == 2 and stream.stream_workers(0) == 0
    in_memory = streamed(processed, streaming=False, loader_workers="auto")
    assert in_memory.num_workers == 0
    assert streamed(processed, loader_workers="auto").num_workers == 2


def test_a_streamed_epoch_is_the_same_whatever_the_number_of_workers(processed):
    epochs = [labels_of(streamed(processed, loader_workers=w)) for w in (0, 1, 2)]
    assert epochs[0] == epochs[1] == epochs[2]
