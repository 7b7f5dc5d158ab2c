"""A trained network over a whole processed split, row group by row group, in plain PyTorch.

Evaluation reads the test split through here, and training the validation split, where it
chooses the task's thresholds after fitting.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.store import open_split, read_row_group, split_info


def device_for(accelerator: str) -> torch.device:
    """The GPU when training.accelerator allows one and there is one, else the CPU."""
    wants_gpu = accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def predict_split(
    net: torch.nn.Module, path: Path, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Logits (float32, on the CPU) and labels for every row of a split, in file order.

    Labels as the split holds them: class indices, or multi-hot rows (multilabel).
    """
    parquet = open_split(path)
    shape, class_names = split_info(parquet, path)
    net = net.to(device)
    logits, labels = [], []
    with torch.inference_mode():
        for group in range(parquet.num_row_groups):
            images, group_labels = read_row_group(parquet, group, shape)
            for start in range(0, len(group_labels), batch_size):
                batch = torch.from_numpy(images[start : start + batch_size].copy())  # writable
                logits.append(net(batch.to(device)).float().cpu())
            labels.append(torch.tensor(group_labels))
    return torch.cat(logits), torch.cat(labels), class_names
