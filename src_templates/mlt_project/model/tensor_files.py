"""Files written by torch.save, read as data: tensors, numbers, strings and containers only.

A pickle is a program: unpickling a file can run any command its author chose. Checkpoints reach
this project from places others can write (a resume checkpoint pulled from S3, a weights file
downloaded for fine-tuning), so every one is read with `weights_only=True`, which refuses any
Python object but plain data; the project's own checkpoints hold nothing else.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..base.errors import PipelineError

# How torch says it refused a pickle, and names the object, e.g. "GLOBAL posix.system".
REFUSED = "Weights only load failed"
REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_tensors(path: str | Path, what: str, fix: str) -> Any:
    """torch.load `path` on the CPU as data; PipelineError that says why it cannot be read.

    `what` names the file in the message ("checkpoint checkpoints/last.ckpt"), `fix`
    says what to do when its contents are not a checkpoint. An I/O error gets its own message (the
    file may be fine: nothing is said about deleting it); MemoryError and bugs keep their traceback.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, KeyError) as error:
        # KeyError: torch's legacy reader, on bytes that are neither a zip nor a pickle.
        named = REFUSED_GLOBAL.search(str(error)) if REFUSED in str(error) else None
        if named:
            raise PipelineError(
                f"{what} holds Python code, not only tensors ({named.group(1)}), which could run "
                f"commands when loaded: it was not loaded; {fix}"
            ) from None
        # Text, another format, or a pickle written by something other than torch.save.
        raise PipelineError(f"{what} is not a PyTorch file: {fix}") from None
    except OSError as error:
        raise PipelineError(
            f"cannot read {what} ({error.strerror or error}): check the disk and its permissions "
            "and run again; the file was left as it is"
        ) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as error:
        # torch's zip reader raises RuntimeError on a truncated or foreign archive.
        raise PipelineError(
            f"{what} is not a readable PyTorch file (truncated or corrupt: {first_line(error)}): "
            f"{fix}"
        ) from None


def first_line(error: BaseException) -> str:
    """The error's first sentence: torch's messages go on for a paragraph."""
    text = str(error).strip().split("\n")[0].split(". ")[0]
    return text or type(error).__name__
