"""The base layer (base/), unit by unit: the command line every command shares, files written whole,
the log set-up, and the signature-as-schema checker that reads params.yaml's options."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Literal

import pytest
import yaml

from helpers import REPO, one_error_line
from mlt_project.base import cli
from mlt_project.base.config import PARAMS_FILE, Config
from mlt_project.base.errors import REDACTED, ConfigError, PipelineError
from mlt_project.base.fileio import atomic_output, disk_full, read_json, sha256_file
from mlt_project.base.logs import DropAdvertisements, setup_logger
from mlt_project.base.schema import build, check, split

PARAMS = REPO / "template_configs" / "project" / "params.yaml"
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # of b"abc"

# ---------------------------------------------------------------- cli.py


def test_a_pipeline_error_in_a_body_is_one_error_line_and_exit_1(capsys):
    def body():
        raise PipelineError("data/raw not found:\nrun sample_data")

    assert cli.run(body) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert one_error_line(err) == "error: data/raw not found: run sample_data"


def test_a_body_that_succeeds_exits_0_and_a_bug_keeps_its_traceback(capsys):
    assert cli.run(lambda: None) == 0
    assert capsys.readouterr().err == ""

    def bug():
        raise KeyError("not a user's problem")

    with pytest.raises(KeyError, match="not a user's problem"):
        cli.run(bug)


def test_run_with_env_reads_dot_env_where_the_environment_is_silent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FROM_BOTH", "environment")
    monkeypatch.delenv("ONLY_IN_FILE", raising=False)
    (tmp_path / ".env").write_text("ONLY_IN_FILE=file\nFROM_BOTH=file\n")

    def seen() -> list[str | None]:
        return [os.environ.get("ONLY_IN_FILE"), os.environ.get("FROM_BOTH")]

    runs: list[list[str | None]] = []
    assert cli.run(lambda: runs.append(seen())) == 0  # only the commands that reach AWS read it
    assert cli.run(lambda: runs.append(seen()), env=True) == 0
    monkeypatch.delenv("ONLY_IN_FILE")  # load_env set it in os.environ
    assert runs == [[None, "environment"], ["file", "environment"]]


def test_a_stage_parser_takes_params_and_describes_the_command_by_its_first_paragraph():
    doc = "Train the network.\n\nLong details that --help need not repeat."
    parser = cli.parser(doc)
    assert parser.description == "Train the network."
    assert parser.parse_args([]).params == PARAMS_FILE == Path("params.yaml")
    assert parser.parse_args(["--params", "exp/params.yaml"]).params == Path("exp/params.yaml")
    with pytest.raises(SystemExit) as exit_code:
        cli.parser(doc, params=False).parse_args(["--params", "x.yaml"])
    assert exit_code.value.code == 2


def test_a_stage_reads_the_params_file_it_is_given(tmp_path, capsys):
    params = tmp_path / "exp.yaml"
    shutil.copy(PARAMS, params)
    text = params.read_text()
    params.write_text(text.replace("  batch_size: 64", "  batch_size: 7", 1))
    seen: list[Config] = []
    assert cli.stage("A stage.", seen.append, ["--params", str(params)]) == 0
    assert [cfg.training.batch_size for cfg in seen] == [7]
    # A bad key in that file: one line naming the file and the key, and the body never runs.
    params.write_text(text.replace("  batch_size: 64", "  batch_size: many", 1))
    assert cli.stage("A stage.", seen.append, ["--params", str(params)]) == 1
    one_error_line(
        capsys.readouterr().err, f"error: {params}: key 'training.batch_size' is 'many' (str)"
    )
    assert len(seen) == 1


# ---------------------------------------------------------------- fileio.py


def test_atomic_output_replaces_the_file_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "reports" / "data.json"
    with atomic_output(path) as tmp:
        assert tmp == tmp_path / "reports" / ".data.json.tmp"
        tmp.write_text("first")
    assert path.read_text() == "first"
    with pytest.raises(RuntimeError, match="killed mid-write"), atomic_output(path) as tmp:
        tmp.write_text("half of the second")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["data.json"]  # no .data.json.tmp


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        OSError("IOError: [Errno 28] No space left on device (from Arrow)"),  # no errno set
    ],
    ids=["ENOSPC", "EDQUOT", "arrow"],
)
def test_a_full_disk_is_one_line_and_the_old_file_stays(tmp_path, error):
    path = tmp_path / "data" / "train.parquet"
    path.parent.mkdir()
    path.write_bytes(b"old split")
    with pytest.raises(PipelineError) as raised, atomic_output(path) as tmp:
        tmp.write_bytes(b"part of a new split")
        raise error
    assert str(raised.value) == (
        f"no space left on the device while writing {path}: free some space (`df -h "
        f"{path.parent}`) and run again; {path} was left as it was"
    )
    assert path.read_bytes() == b"old split"
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.parquet"]


def test_other_os_errors_are_not_called_a_full_disk(tmp_path):
    denied = OSError(errno.EACCES, "Permission denied")
    assert not disk_full(denied)
    with pytest.raises(OSError) as raised, atomic_output(tmp_path / "x.json"):
        raise denied
    assert raised.value is denied and not isinstance(raised.value, PipelineError)


def test_sha256_of_a_file_in_chunks(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")
    assert sha256_file(tmp_path / "abc") == ABC_SHA256
    (tmp_path / "big").write_bytes(b"\0" * (3 << 20))  # three chunks of 1 MiB
    assert sha256_file(tmp_path / "big") == (
        "bbd05cf6097ac9b1f89ea29d2542c1b7b67ee46848393895f5a9e43fa1f621e5"
    )


def test_read_json_returns_the_contents_or_says_what_is_wrong_and_the_hint(tmp_path):
    hint = "run `dvc repro evaluate`"
    path = tmp_path / "metrics.json"
    with pytest.raises(PipelineError) as missing:
        read_json(path, hint)
    assert str(missing.value) == f"{path} not found: run `dvc repro evaluate`"
    path.write_text('{\n  "loss": 0.1\n  "accuracy": 0.9\n}\n')
    with pytest.raises(PipelineError) as corrupt:
        read_json(path, hint)
    assert str(corrupt.value) == (
        f"{path} is not valid JSON (Expecting ',' delimiter at line 3): run `dvc repro evaluate`"
    )
    path.write_bytes(b'{"loss": "\xff"}')
    with pytest.raises(PipelineError) as binary:
        read_json(path, hint)
    assert (
        str(binary.value) == f"{path} is not valid JSON (not UTF-8 text): run `dvc repro evaluate`"
    )
    path.write_text('{"loss": 0.1, "accuracy": 0.9}')
    assert read_json(path, hint) == {"loss": 0.1, "accuracy": 0.9}


# ---------------------------------------------------------------- logs.py


@pytest.fixture
def root_handler():
    """A handler of the root logger, as basicConfig would add; removed afterwards."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # as basicConfig sets it where pytest has added no handler
    yield records
    root.setLevel(level)
    root.removeHandler(handler)


def test_setup_logger_redacts_secrets_through_every_handler(root_handler, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "hunter2-hunter2")
    log = setup_logger()
    assert log.name == "mlt_project"  # the package's logger, whose level the stages' logs follow
    setup_logger()  # a second call adds no second filter
    handler = logging.getLogger().handlers[-1]
    assert sum(type(f).__name__ == "RedactSecrets" for f in handler.filters) == 1
    logging.getLogger("mlt_project.deploy").warning("connecting with %s", "hunter2-hunter2")
    assert root_handler == [f"connecting with {REDACTED}"]


def test_lightnings_tips_are_dropped_and_its_other_lines_kept(root_handler):
    setup_logger()
    lightning = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(isinstance(f, DropAdvertisements) for f in lightning.filters) == 1
    lightning.info("💡 Tip: For seamless cloud uploads and versioning, try installing litmodels")
    lightning.info("GPU available: False, used: False")
    assert root_handler == ["GPU available: False, used: False"]


# ---------------------------------------------------------------- schema.py


class Widget:
    """A constructor whose signature is the schema of a params.yaml section."""

    def __init__(
        self,
        size: int,
        scale: float = 1.0,
        window: tuple[float, float] = (0.0, 1.0),
        tags: list[str] | None = None,
        mode: Literal["fast", "exact"] = "fast",
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        if mode not in ("fast", "exact"):
            raise ValueError(f"mode must be fast or exact, not {mode!r}")
        self.size, self.scale, self.window, self.tags, self.mode = size, scale, window, tags, mode


class Net:
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: int) -> None:
        self.input_shape, self.num_classes, self.width = input_shape, num_classes, width


def test_check_returns_the_options_an_integer_given_for_a_float_as_a_float():
    options = yaml.safe_load("size: 3\nscale: 2\nwindow: [0.25, 0.75]\ntags: [a, b]\n")
    values = check("widget", options, Widget)
    assert values == {"size": 3, "scale": 2.0, "window": [0.25, 0.75], "tags": ["a", "b"]}
    assert type(values["scale"]) is float
    assert check("widget", {"size": 1, "tags": None}, Widget) == {"size": 1, "tags": None}


def test_an_unknown_key_lists_what_the_section_takes():
    with pytest.raises(ConfigError) as error:
        check("widget", {"size": 3, "sise": 3}, Widget)
    assert str(error.value) == (
        "unknown key 'widget.sise'; widget takes size, scale, window, tags, mode"
    )
    # `also`: other keys the section holds, which another target takes.
    with pytest.raises(ConfigError) as error:
        check("augment", {"size": 3, "mixupp": 0.2}, Widget, also=("mixup", "cutmix"))
    assert str(error.value) == (
        "unknown key 'augment.mixupp'; augment takes mixup, cutmix, size, scale, window, tags, mode"
    )
    with pytest.raises(ConfigError) as error:
        check("model.net", {"width": 8, "input_shape": [1, 8, 8]}, Net, skip=2)
    assert str(error.value) == "unknown key 'model.net.input_shape'; model.net takes width"


def test_a_missing_key_without_a_default_is_named():
    with pytest.raises(ConfigError) as error:
        check("widget", {"scale": 2.0}, Widget)
    assert str(error.value) == "missing key 'widget.size'; add it (see PROJECT.md)"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": 2.5}, "key 'widget.size' is 2.5 (float), expected an integer"),
        ({"size": True}, "key 'widget.size' is True (bool), expected an integer"),
        ({"size": 1, "scale": "2"}, "key 'widget.scale' is '2' (str), expected a number"),
        (
            {"size": 1, "window": [0.5]},
            "key 'widget.window' is [0.5] (list), expected a list of 2 (a number, a number)",
        ),
        (
            {"size": 1, "window": [0.5, "1"]},
            "key 'widget.window' is [0.5, '1'] (list), expected a list of 2 (a number, a number)",
        ),
        (
            {"size": 1, "tags": ["a", 1]},
            "key 'widget.tags' is ['a', 1] (list), expected a list of a string or null",
        ),
    ],
    ids=["float-for-int", "bool-for-int", "str-for-float", "short-pair", "pair-of-str", "tags"],
)
def test_a_value_of_the_wrong_type_is_named_with_what_is_expected(options, message):
    with pytest.raises(ConfigError) as error:
        check("widget", options, Widget)
    assert str(error.value) == message


def test_build_passes_the_positional_arguments_and_names_the_section_of_a_value_error():
    net = build("model.net", {"width": 8}, Net, (1, 8, 8), 3)
    assert (net.input_shape, net.num_classes, net.width) == ((1, 8, 8), 3, 8)
    with pytest.raises(ConfigError) as error:
        build("widget", {"size": 0}, Widget)
    assert str(error.value) == "section 'widget': size must be at least 1"
    assert isinstance(error.value, PipelineError)  # one line, exit 1


def test_a_hint_the_checker_does_not_know_is_left_to_the_constructor():
    assert check("widget", {"size": 1, "mode": "slow"}, Widget) == {"size": 1, "mode": "slow"}
    with pytest.raises(ConfigError) as error:
        build("widget", {"size": 1, "mode": "slow"}, Widget)
    assert str(error.value) == "section 'widget': mode must be fast or exact, not 'slow'"


def test_split_shares_one_section_out_by_parameter_names():
    training = {"size": 2, "width": 16, "scale": 0.5}
    assert split("training", training, {Widget: 0, Net: 2}) == [
        {"size": 2, "scale": 0.5},
        {"width": 16},
    ]
    with pytest.raises(ConfigError) as error:
        split("training", {**training, "widht": 16}, {Widget: 0, Net: 2})
    assert str(error.value) == (
        "unknown key 'training.widht'; training takes mode, scale, size, tags, window, width"
    )
