"""The cu128 variant's onnxruntime-gpu range is exactly the CUDA 12 line, read from PyPI's metadata.

Network: PyPI's simple index (JSON, PEP 691) and the wheels' core metadata files (PEP 658), a few
kB each, never a wheel. Run without PyPI: `pytest -m "not network"`.
"""

from __future__ import annotations

import json
import re
import urllib.request
from email.parser import Parser

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from helpers import REPO

pytestmark = pytest.mark.network

SIMPLE = "https://pypi.org/simple/onnxruntime-gpu/"
CUDA_MAJOR = 12  # torch's cu128 index and the nvidia/cuda:12.8.1 base image
# The image runs Python 3.12 on Linux x86_64: the wheel Poetry would install there.
WHEEL_RE = re.compile(r"onnxruntime_gpu-(?P<version>[^-]+)-cp312-cp312-manylinux.*_x86_64\.whl")


def fetch(url: str, accept: str = "*/*") -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def allowed_range() -> Requirement:
    pyproject = REPO / "template_configs" / "torch-cu128" / "pyproject.toml"
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    (line,) = [d for d in dependencies if Requirement(d).name == "onnxruntime-gpu"]
    return Requirement(line)


def wheels() -> dict[Version, str]:
    """Released versions with a cp312 Linux x86_64 wheel -> that wheel's URL."""
    index = json.loads(fetch(SIMPLE, "application/vnd.pypi.simple.v1+json"))
    found = {}
    for entry in index["files"]:
        match = WHEEL_RE.fullmatch(entry["filename"])
        if match and not entry.get("yanked"):
            found[Version(match["version"])] = entry["url"]
    return {v: url for v, url in found.items() if not v.is_prerelease}


def cuda_majors(wheel_url: str) -> dict[str, int]:
    """The CUDA major of each CUDA library the wheel requires (any extra), by requirement."""
    metadata = Parser().parsestr(fetch(wheel_url + ".metadata").decode())
    found = {}
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if not requirement.name.startswith("nvidia-"):
            continue
        # nvidia-cudnn-cu12, or (from 1.28) nvidia-cuda-runtime~=13.0 without the suffix.
        suffix = re.search(r"-cu(\d+)$", requirement.name)
        if suffix:
            found[line] = int(suffix[1])
        elif requirement.name.startswith("nvidia-cuda-"):
            (spec,) = requirement.specifier
            found[line] = Version(spec.version).major
    return found


def test_onnxruntime_gpu_range_is_the_cuda_12_line():
    requirement = allowed_range()
    available = wheels()
    allowed = sorted(v for v in available if requirement.specifier.contains(v))
    assert allowed, f"no onnxruntime-gpu release matches {requirement.specifier}"
    newest = allowed[-1]
    newest_cuda = cuda_majors(available[newest])
    assert newest_cuda, f"onnxruntime-gpu {newest} lists no CUDA libraries: check by hand"
    assert set(newest_cuda.values()) == {CUDA_MAJOR}, (newest, newest_cuda)

    # Too tight a bound would keep the project on an old release with no reason.
    excluded = sorted(v for v in available if v > newest)
    assert excluded, f"nothing newer than {newest}: drop the upper bound"
    first_excluded = cuda_majors(available[excluded[0]])
    assert first_excluded and CUDA_MAJOR not in set(first_excluded.values()), (
        f"onnxruntime-gpu {excluded[0]} is still CUDA {CUDA_MAJOR}: raise the upper bound",
        first_excluded,
    )
    print(f"\nonnxruntime-gpu {newest}: {sorted(newest_cuda)}")
    print(f"onnxruntime-gpu {excluded[0]} (excluded): {sorted(first_excluded)}")
