"""PROJECT.md's recipes, as the guide writes them: each code recipe of "Change the project" (the
rows of "Where to change what") applied to a copy of the trained project and run, checked where
the user would look; and the params blocks of "Recipes", each trained for an epoch.

The edits are read from the guide, never written here: a sentence ending in a colon says where
the code block after it goes ("In `file`, after the line `x`, add:"), and the test follows it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from helpers import MODULE, REPO, project_env, run, set_params, write_multilabel_pngs
from mlt_project.base.config import read_params

GUIDE = REPO / "template_configs" / "project" / "PROJECT.md"
PACKAGE = REPO / "src_templates" / "mlt_project"

# Each recipe of "Change the project", by title, and the test below that applies it.
APPLIED_BY = {
    "Add a network": "test_the_add_a_network_recipe_trains_and_evaluates_the_new_network",
    "Add a metric": "test_the_add_a_metric_recipe_reaches_training_logs_and_the_metrics",
    "Add an augmentation": "test_the_add_an_augmentation_recipe_flips_training_images",
    "Add a data source": "test_the_add_a_data_source_recipe_labels_reach_the_data_report",
    "Change the loss": "test_the_change_the_loss_recipe_trains_with_the_focal_loss",
    "Add an optimizer option": "test_the_add_an_optimizer_option_recipe_trains_with_its_value",
    "Add a task": "test_the_add_a_task_recipe_trains_evaluates_and_keeps_one_threshold",
    "Add an object store": "test_the_add_an_object_store_recipe_releases_to_a_folder",
}


# ---------------------------------------------------------------- reading the guide


def section(text: str, heading: str) -> str:
    """The body of `heading` (a whole heading line, "## Title") up to the next heading of its
    level or above; a `#` line inside a code block is no heading."""
    level = len(heading.split(" ", 1)[0])
    lines = text.split(f"\n{heading}\n", 1)[1].splitlines(keepends=True)
    fenced = False
    for i, line in enumerate(lines):
        fenced ^= line.startswith("```")
        if not fenced and re.match(f"#{{1,{level}}} ", line):
            return "".join(lines[:i])
    return "".join(lines)


def guide() -> str:
    return GUIDE.read_text()


def where_to_change_what() -> dict[str, tuple[list[str], list[str]]]:
    """The table's rows: what to change -> (the paths it names, the titles it links)."""
    rows = re.findall(
        r"^\| (.+?) \| (.+?) \| (.+?) \|$", section(guide(), "## Where to change what"), re.M
    )
    return {
        what: (re.findall(r"`([^`]+)`", files), re.findall(r"\[([^\]]+)\]\(#", links))
        for what, files, links in rows[2:]  # after the header and its rule
    }


def change_recipes() -> list[str]:
    """The titles of "Change the project"'s recipes, in order."""
    return re.findall(r"^### (.+)$", section(guide(), "## Change the project"), re.M)


@dataclass(frozen=True)
class Edit:
    how: str  # replace, after, end, create, set (see FORMS)
    file: str  # under the package, or params.yaml
    anchor: str | None  # the text that finds the line, for replace and after
    code: str


# How the guide says where a block goes: the end of the paragraph before the block.
FORMS = {
    "replace": r"[Ii]n `(?P<file>[^`]+)`, replace the line `(?P<anchor>[^`]+)`[^`]*(?:`[^`]*`[^`]*)* with:",
    "after": r"[Ii]n `(?P<file>[^`]+)`, after the line `(?P<anchor>[^`]+)`, add:",
    "end": r"[Aa]t the end of `(?P<file>[^`]+)`, add:",
    "create": r"[Cc]reate `(?P<file>[^`]+)`:",
    "set": r"[Ii]n `(?P<file>params\.yaml)`, set:",
}


def recipe_edits(title: str) -> list[Edit]:
    """The edits of one recipe of "Change the project": every python and yaml block, with where
    the sentence before it puts it. A block no sentence places is an error, not skipped."""
    body = section(section(guide(), "## Change the project"), f"### {title}")
    edits = []
    blocks = re.finditer(r"((?:^(?!```)[^\n]+\n)+)\n```(\w*)\n(.*?)^```$", body, re.M | re.S)
    for paragraph, language, code in (block.groups() for block in blocks):
        if language not in ("python", "yaml"):
            continue  # commands to run, shown for the reader
        sentence = " ".join(paragraph.split())
        found = [
            (how, match)
            for how, form in FORMS.items()
            if (match := re.search(f"{form}$", sentence))
        ]
        assert len(found) == 1, f"{title}: no single place for the block after {sentence!r}"
        how, match = found[0]
        edits.append(Edit(how, match["file"], match.groupdict().get("anchor"), code))
    assert edits, f"{title} has no edits"
    return edits


def apply_edits(edits: list[Edit], package: Path, params: Path) -> None:
    """Make the edits in `package` (the project's src/<module>/) and `params` as a user would."""
    for edit in edits:
        path = params if edit.file == "params.yaml" else package / edit.file
        if edit.how == "create":
            assert not path.exists(), path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(edit.code)
        elif edit.how == "end":
            path.write_text(path.read_text().rstrip("\n") + "\n\n\n" + edit.code)
        elif edit.how == "set":
            merged = merge(read_params(path), yaml.safe_load(edit.code))
            path.write_text(yaml.safe_dump(merged, sort_keys=False))
        else:
            lines = path.read_text().splitlines(keepends=True)
            hits = [i for i, line in enumerate(lines) if edit.anchor in line]
            assert len(hits) == 1, f"{edit.file}: `{edit.anchor}` is on {len(hits)} lines"
            (i,) = hits
            lines[i : i + 1] = [edit.code] if edit.how == "replace" else [lines[i], edit.code]
            path.write_text("".join(lines))


def merge(params: dict, block: dict) -> dict:
    for key, value in block.items():
        if isinstance(value, dict) and isinstance(params.get(key), dict):
            merge(params[key], value)
        else:
            params[key] = value
    return params


def apply_recipe(project: Path, title: str) -> None:
    apply_edits(recipe_edits(title), project / "src" / MODULE, project / "params.yaml")


def in_project(project: Path, *cmd: str, **extra: str):
    """A command in the project, importing the package from its own src/ (the edited one)."""
    return run(*cmd, cwd=project, **project_env(project, **extra))


def module(project: Path, name: str, *args: str | Path, **extra: str):
    return in_project(project, sys.executable, "-m", f"{MODULE}.{name}", *map(str, args), **extra)


def train_and_evaluate(project: Path, **changes: object) -> dict:
    """One short training run (one epoch unless `changes` say otherwise) and its evaluation, as
    the stages run them; return evaluation_results.json."""
    set_params(project, **({"training__max_epochs": 1} | changes))
    start = time.perf_counter()
    module(project, "training.train")
    module(project, "training.evaluate")
    results = json.loads((project / "evaluation_results.json").read_text())
    print(f"trained and evaluated in {time.perf_counter() - start:.0f} s: {results}")
    return results


def checkpoint(project: Path) -> dict:
    return torch.load(project / "models" / "model.ckpt", map_location="cpu", weights_only=False)


# ---------------------------------------------------------------- the guide's own checks


def test_every_row_of_where_to_change_what_links_a_recipe_that_a_test_applies():
    rows = where_to_change_what()
    linked = [title for _, titles in rows.values() for title in titles]
    assert set(change_recipes()) <= set(linked)
    assert set(linked) - set(change_recipes()) == {"Recipes", "Parameters"}  # params only
    assert sorted(APPLIED_BY) == sorted(change_recipes())
    assert all(name in globals() for name in APPLIED_BY.values())


def test_each_row_names_exactly_the_files_its_recipe_edits():
    for what, (named, titles) in where_to_change_what().items():
        for title in set(titles) & set(change_recipes()):
            edited = {edit.file for edit in recipe_edits(title)}
            # A folder the row names covers the files the recipe creates in it.
            covered = {
                f for f in edited for n in named if f == n or f.startswith(n.rstrip("/") + "/")
            }
            assert covered == edited, f"{what}: {sorted(edited - covered)} not in the table"
            assert all(any(f == n or f.startswith(n) for f in edited) for n in named), what


def test_every_recipe_applies_to_the_template_and_passes_the_projects_ruff(tmp_path):
    """All recipes at once, in the guide's order, on the unrendered package: each finds its
    lines (one each, after the others' edits), and the result passes the ruff the generated
    project's CI runs, with its pyproject.toml."""
    shutil.copytree(PACKAGE, tmp_path / "src" / "mlt_project")
    shutil.copy(GUIDE.parent / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(REPO / "template_configs" / "torch-cpu" / "pyproject.toml", tmp_path)
    for title in change_recipes():
        apply_edits(recipe_edits(title), tmp_path / "src" / "mlt_project", tmp_path / "params.yaml")
    run("ruff", "check", "--no-cache", "src", cwd=tmp_path)
    run("ruff", "format", "--no-cache", "--check", "src", cwd=tmp_path)
    params = read_params(tmp_path / "params.yaml")
    assert params["augment"]["vertical_flip"] is False
    assert params["training"]["beta2"] == 0.999


# ---------------------------------------------------------------- Change the project, applied


@pytest.mark.e2e
def test_the_add_a_network_recipe_trains_and_evaluates_the_new_network(project_copy):
    apply_recipe(project_copy, "Add a network")
    results = train_and_evaluate(project_copy)
    assert results["accuracy"] > 0.1  # better than chance on ten digits after one epoch
    network = checkpoint(project_copy)["hyper_parameters"]["network"]
    params = read_params(project_copy / "params.yaml")["model"]
    assert network["name"] == params["name"] != "mlp"
    assert network["options"] == params[network["name"]]


@pytest.mark.e2e
def test_the_add_a_metric_recipe_reaches_training_logs_and_the_metrics(project_copy):
    """The new metric is logged per epoch for train and val and lands in
    evaluation_results.json, from the one definition."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    apply_recipe(project_copy, "Add a metric")
    results = train_and_evaluate(project_copy, training__max_epochs=2)
    assert results["accuracy"] <= results["top2_accuracy"] <= 1, results  # top-2 >= top-1
    (event_file,) = (project_copy / "logs").rglob("events.out.tfevents.*")
    reader = EventAccumulator(str(event_file))
    reader.Reload()
    assert {"val/top2_accuracy", "train/top2_accuracy"} <= set(reader.Tags()["scalars"])
    curve = [event.value for event in reader.Scalars("val/top2_accuracy")]
    assert len(curve) == 2 and all(0 < value <= 1 for value in curve)


@pytest.mark.e2e
def test_the_add_an_augmentation_recipe_flips_training_images(project_copy):
    apply_recipe(project_copy, "Add an augmentation")
    results = train_and_evaluate(project_copy, augment__vertical_flip=True)
    assert results["accuracy"] > 0.1
    # What the option does to a batch: each image upside down or as it was, both seen; off,
    # the batch passes untouched.
    check = (
        f"import torch; from {MODULE}.model.augment import BatchAugment\n"
        "torch.manual_seed(0)\n"
        "x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(64, 1, 1, 1)\n"
        "y = BatchAugment(vertical_flip=True)(x)\n"
        "flipped = sum(torch.equal(i, x[0].flip(1)) for i in y)\n"
        "kept = sum(torch.equal(i, x[0]) for i in y)\n"
        "print(flipped, kept, BatchAugment()(x) is x)\n"
    )
    flipped, kept, untouched = in_project(project_copy, sys.executable, "-c", check).stdout.split()
    assert int(flipped) + int(kept) == 64 and int(flipped) > 10 and int(kept) > 10
    assert untouched == "True"


@pytest.mark.e2e
def test_the_add_a_data_source_recipe_labels_reach_the_data_report(project_copy):
    """labels.json names each digit by a word, and leaves one image out: the words, not the
    folder names, are the classes the data report counts."""
    raw = project_copy / "data" / "raw"
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    images = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*.png"))
    labels = {name: words[int(name.split("/")[0])] for name in images[1:]}
    (raw / "labels.json").write_text(json.dumps(labels))
    apply_recipe(project_copy, "Add a data source")
    module(project_copy, "data.preprocess")
    report = json.loads((project_copy / "reports" / "data.json").read_text())
    assert report["labels_from"].endswith("labels.json")
    assert sorted(report["per_class"]) == sorted(words)
    for word in words:
        expected = sum(label == word for label in labels.values())
        assert sum(report["per_class"][word].values()) == expected, word
    assert sum(report["images"].values()) == len(images) - 1
    assert report["skipped"]["not_in_metadata"] == 1


@pytest.mark.e2e
def test_the_change_the_loss_recipe_trains_with_the_focal_loss(project_copy):
    apply_recipe(project_copy, "Change the loss")
    # The training loss weighs each image's cross-entropy down by the probability it gets right,
    # so images the network already gets right count little; val/loss and evaluation's loss
    # stay cross-entropy.
    check = (
        "import torch, torch.nn.functional as F\n"
        f"from {MODULE}.model.tasks import task\n"
        "torch.manual_seed(0)\n"
        "logits = torch.randn(32, 10) * 3\n"
        "multiclass = task('multiclass')\n"
        "for labels in (logits.argmax(1), torch.randint(0, 10, (32,))):\n"
        "    plain = F.cross_entropy(logits, labels)\n"
        "    focal = multiclass.training_loss(10)(logits, labels)\n"
        "    print((focal / plain).item(), torch.equal(multiclass.loss(logits, labels), plain))\n"
    )
    right, wrong = in_project(project_copy, sys.executable, "-c", check).stdout.splitlines()
    assert float(right.split()[0]) < 0.5 * float(wrong.split()[0]) < 0.5, (right, wrong)
    assert right.split()[1] == wrong.split()[1] == "True"
    results = train_and_evaluate(project_copy)
    assert results["accuracy"] > 0.1


@pytest.mark.e2e
def test_the_add_an_optimizer_option_recipe_trains_with_its_value(project_copy):
    apply_recipe(project_copy, "Add an optimizer option")
    results = train_and_evaluate(project_copy, training__beta2=0.98)
    assert results["accuracy"] > 0.1
    (optimizer,) = checkpoint(project_copy)["optimizer_states"]
    assert [group["betas"] for group in optimizer["param_groups"]] == [(0.9, 0.98)]


@pytest.mark.e2e
def test_the_add_a_task_recipe_trains_evaluates_and_keeps_one_threshold(project_copy):
    """Multilabel images (a bright quadrant per tag) under the new task: it trains, evaluates,
    and its checkpoint decides every class at one threshold."""
    shutil.rmtree(project_copy / "data" / "raw")
    write_multilabel_pngs(project_copy / "data" / "raw", images=480)
    apply_recipe(project_copy, "Add a task")
    set_params(project_copy, data__num_classes=3)
    module(project_copy, "data.preprocess")
    results = train_and_evaluate(project_copy, training__max_epochs=10)
    assert results["micro_f1"] >= 0.8 and results["mean_average_precision"] >= 0.8
    saved = checkpoint(project_copy)
    assert saved["hyper_parameters"]["task"] == "multilabel_global"
    thresholds = saved["thresholds"]
    assert len(thresholds) == 3 and len(set(thresholds)) == 1 and 0 < thresholds[0] < 1


@pytest.mark.e2e
def test_the_add_an_object_store_recipe_releases_to_a_folder(project_copy, tmp_path):
    """A release's upload through the new store, with no cloud settings at all: every file in
    the folder, and a manifest whose checksums are the files'."""
    apply_recipe(project_copy, "Add an object store")
    folder = tmp_path / "models"
    folder.mkdir()
    module(project_copy, "scripts.release", "export-onnx")
    upload = module(project_copy, "scripts.release", "upload-s3",
                    MODEL_RELEASE_S3_URI=f"file://{folder}")  # fmt: skip
    assert f"released file://{folder}/0.1.0/" in upload.stderr
    manifest = json.loads((folder / "0.1.0" / "manifest.json").read_text())
    objects = manifest["objects"]
    assert {"model.onnx", "model.ckpt", "model_info.json", "params.yaml"} <= set(objects)
    for name, facts in objects.items():
        data = (folder / "0.1.0" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == facts["sha256"], name
        assert len(data) == facts["size"], name
    assert (folder / "0.1.0" / "model.onnx").read_bytes() == (
        project_copy / "releases" / "model.onnx"
    ).read_bytes()


# ---------------------------------------------------------------- the params blocks of Recipes


def recipes() -> dict[str, dict]:
    """PROJECT.md's Recipes: each `### Recipe: ...` heading's params.yaml block."""
    found = re.findall(
        r"^### Recipe: (.+?)\n.*?```yaml\n(.*?)```", section(guide(), "## Recipes"), re.M | re.S
    )
    return {name: yaml.safe_load(block) for name, block in found}


def test_the_guide_has_the_three_recipes():
    assert list(recipes()) == [
        "fine-tune a pretrained network",
        "train from scratch",
        "small or imbalanced data",
    ]


def flatten(block: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in block.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}__")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(recipes()))
def test_each_recipe_trains_an_epoch(project_copy, name):
    """The recipe as PROJECT.md gives it, shrunk for CI: 16 px, one epoch, resnet18, and a
    weights file standing in for the ImageNet download (no internet here)."""
    changes = flatten(recipes()[name])
    changes |= {"data__image_size": [16, 16], "training__max_epochs": 1}
    if "training__warmup_epochs" in changes:
        changes["training__warmup_epochs"] = 0.5
    if changes.get("model__name", "resnet18").startswith("resnet"):
        changes["model__name"] = "resnet18"
    changes.setdefault("model__name", "resnet18")
    changes.pop("model__freeze_backbone_epochs", None)  # one epoch: train the backbone too
    pretrained = changes.pop("model__pretrained", "none") != "none"
    set_params(project_copy, **changes)
    if pretrained:
        script = (
            "import torch, torchvision; torch.manual_seed(0); "
            "torch.save(torchvision.models.resnet18().state_dict(), 'weights/imagenet.pt')"
        )
        in_project(project_copy, sys.executable, "-c", script)
        set_params(project_copy, model__weights_file="weights/imagenet.pt")
    module(project_copy, "data.preprocess")
    start = time.perf_counter()
    module(project_copy, "training.train")
    module(project_copy, "training.evaluate")
    results = json.loads((project_copy / "evaluation_results.json").read_text())
    print(f"recipe {name!r}, one epoch: test accuracy {results['accuracy']:.4f} "
          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    assert results["accuracy"] > 0.1  # better than chance on ten digits after one epoch
    if changes.get("training__ema_decay"):
        assert results["ema_decay"] == changes["training__ema_decay"]
