import dataclasses

import numpy as np

from mlt_project.data.preprocess import preprocess
from mlt_project.data.store import SPLITS, read_split, split_path


def test_worker_processes_write_the_same_splits_as_one_process(processed, tmp_path):
    cfg = processed  # preprocessed with runtime.preprocess_workers from params.yaml (auto)
    serial = tmp_path / "serial"
    preprocess(
        dataclasses.replace(
            cfg,
            paths=dataclasses.replace(cfg.paths, processed=str(serial)),
            runtime=dataclasses.replace(cfg.runtime, preprocess_workers=1),
        )
    )
    for split in SPLITS:
        parallel_split = read_split(split_path(cfg.paths.processed, split))
        serial_split = read_split(split_path(serial, split))
        for parallel_part, serial_part in zip(parallel_split, serial_split, strict=True):
            np.testing.assert_array_equal(parallel_part, serial_part)
