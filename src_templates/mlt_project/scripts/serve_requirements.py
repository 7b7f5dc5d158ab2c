"""requirements-serve.txt from poetry.lock: what predict and the server need, pinned as locked.

    python -m mlt_project.scripts.serve_requirements            # write requirements-serve.txt
    python -m mlt_project.scripts.serve_requirements --check    # exit 1 if it differs from the lock

The serving image installs requirements-serve.txt and the package with `--no-deps`: ONNX Runtime
(onnxruntime-gpu where pyproject.toml takes it), numpy, Pillow, PyYAML, Starlette, uvicorn,
botocore (a release from S3) and python-dotenv, and what they need, as poetry.lock resolves them
for the image: Linux x86_64, CPython 3.12. No torch, torchvision, Lightning, DVC or pandas. Run it
after every `poetry lock`; the project's tests check that the two agree (and pass while the
project has no poetry.lock yet: the template's file is what its own tests locked).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from ..base import cli
from ..base.errors import PipelineError
from ..base.fileio import atomic_output

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the dev group installs tomli on 3.10
    import tomli as tomllib

LOCK = Path("poetry.lock")
PYPROJECT = Path("pyproject.toml")
OUT = Path("requirements-serve.txt")
# What the inference path imports (tests/test_serve_requirements.py walks it), by distribution.
SERVE_ROOTS = (
    "onnxruntime", "onnxruntime-gpu", "numpy", "pillow", "pyyaml", "starlette", "uvicorn",
    "botocore", "python-dotenv",
)  # fmt: skip
# The serving image's platform (Dockerfile.serve): the markers of the lock are evaluated for it.
TARGET = {
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "python_version": "3.12",
    "python_full_version": "3.12.0",
    "platform_release": "",
    "platform_version": "",
    "implementation_version": "3.12.0",
    "extra": "",
}
HEADER = """\
# What `python -m mlt_project.serve` and `python -m mlt_project.serve.predict` need, pinned to
# poetry.lock for the serving image (Linux x86_64, CPython 3.12); Dockerfile.serve installs it
# with the package (--no-deps). Written by `python -m mlt_project.scripts.serve_requirements`:
# run it after `poetry lock`, don't edit by hand.
"""


def holds(marker: str | None, extra: str = "") -> bool:
    return marker is None or Marker(marker).evaluate({**TARGET, "extra": extra})


def roots(pyproject: dict[str, Any]) -> list[Requirement]:
    """The main dependencies of SERVE_ROOTS that apply to the image (onnxruntime-gpu or not)."""
    found = []
    for spec in pyproject["project"]["dependencies"]:
        requirement = Requirement(spec)
        if canonicalize_name(requirement.name) in SERVE_ROOTS and holds(
            str(requirement.marker) if requirement.marker else None
        ):
            found.append(requirement)
    return found


def package_marker(package: dict[str, Any]) -> str | None:
    """The lock's marker of a package in the main group (Poetry writes one per group where
    the groups differ)."""
    marker = package.get("markers")
    return marker.get("main") if isinstance(marker, dict) else marker


def locked(lock: dict[str, Any], name: str) -> dict[str, Any]:
    """The lock's entry of `name` for the image: Poetry locks one per Python range it needs."""
    entries = [
        p
        for p in lock["package"]
        if canonicalize_name(p["name"]) == name and holds(package_marker(p))
    ]
    if len(entries) != 1:
        raise PipelineError(
            f"{LOCK} holds {len(entries)} entries of {name} for Linux x86_64 CPython 3.12, not "
            "one: run `poetry lock` again"
        )
    return entries[0]


def edges(package: dict[str, Any], extras: set[str]) -> list[tuple[str, set[str]]]:
    """(name, extras) of what a locked package needs on the image, its `extras` included."""
    found = []
    for name, specs in package.get("dependencies", {}).items():
        for spec in specs if isinstance(specs, list) else [specs]:
            spec = spec if isinstance(spec, dict) else {"version": spec}
            if spec.get("optional") and not any(
                canonicalize_name(name) in map(extra_name, package.get("extras", {}).get(e, []))
                for e in extras
            ):
                continue
            if holds(spec.get("markers")):
                found.append((canonicalize_name(name), set(spec.get("extras", []))))
    return found


def extra_name(spec: str) -> str:
    return canonicalize_name(Requirement(spec).name)


def pins(lock: dict[str, Any], pyproject: dict[str, Any]) -> dict[str, str]:
    """{name: version} of the closure of the serving roots in the lock."""
    pinned: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(canonicalize_name(r.name), set(r.extras)) for r in roots(pyproject)]
    while pending:
        name, extras = pending.pop()
        if (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        package = locked(lock, name)
        pinned[name] = package["version"]
        pending += edges(package, extras)
    return dict(sorted(pinned.items()))


def render(pinned: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in pinned.items())


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file, or one line that says which file is unreadable and how to fix it."""
    if not path.is_file():
        raise PipelineError(f"{path} not found: run this in the project's root")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise PipelineError(
            f"{path} is not valid TOML ({error}): restore it from git, or run `poetry lock`"
        ) from None


def generate(lock_path: Path = LOCK, pyproject_path: Path = PYPROJECT) -> str:
    """requirements-serve.txt's text for a poetry.lock and its pyproject.toml."""
    return render(pins(read_toml(lock_path), read_toml(pyproject_path)))


def parse(text: str) -> dict[str, str]:
    """{name: version} of a requirements file's `name==version` lines."""
    pinned = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pinned[canonicalize_name(name)] = version.strip()
    return pinned


def difference(
    out: Path = OUT, lock_path: Path = LOCK, pyproject_path: Path = PYPROJECT
) -> str | None:
    """What differs between `out` and the lock, in one line with the fix; None when they agree
    or there is no lock (a new project: the template's pins are what its tests locked)."""
    if not lock_path.is_file():
        return None
    fix = f"run `python -m mlt_project.scripts.serve_requirements` and commit {out}"
    expected = pins(read_toml(lock_path), read_toml(pyproject_path))
    actual = parse(out.read_text(encoding="utf-8")) if out.is_file() else {}
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            return f"{out} lacks {name}=={expected[name]}, which {lock_path} locks: {fix}"
        if name not in expected:
            return f"{out} pins {name}=={actual[name]}, which serving does not need: {fix}"
        if Version(actual[name]) != Version(expected[name]):
            return (
                f"{out} pins {name}=={actual[name]} but {lock_path} locks {expected[name]}: {fix}"
            )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, params=False)
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    parser.add_argument("--lock", type=Path, default=LOCK)
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    def run() -> None:
        if args.check:
            if not args.lock.is_file():
                print(f"no {args.lock}: nothing to check {args.out} against (a new project)")
                return
            problem = difference(args.out, args.lock, args.pyproject)
            if problem:
                raise PipelineError(problem)
            print(f"{args.out} agrees with {args.lock}")
            return
        if not args.lock.is_file():
            raise PipelineError(f"no {args.lock}: run `poetry lock` first")
        text = generate(args.lock, args.pyproject)
        with atomic_output(args.out) as tmp:
            tmp.write_text(text, encoding="utf-8")
        print(f"wrote {args.out} from {args.lock}")

    return cli.run(run)


if __name__ == "__main__":
    raise SystemExit(main())
