"""params.yaml is strict: each test edits a parsed copy of the project's own params, so the tests
hold whatever values the project uses."""

import copy
from pathlib import Path

import pytest
import yaml

from mlt_project.base.config import ConfigError, load_config, read_params

PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


def test_project_params_load():
    cfg = load_config(PARAMS)
    assert len(cfg.data.input_shape) == 3
    assert cfg.training.batch_size > 0


def drop_seed(params):
    del params["data"]["seed"]


def word_for_number(params):
    params["training"]["batch_size"] = "sixty-four"


def scalar_size(params):
    params["data"]["image_size"] = 8


def many_workers(params):
    params["runtime"]["loader_workers"] = "many"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (drop_seed, "missing key 'data.seed'"),
        (word_for_number, "key 'training.batch_size' is 'sixty-four'"),
        (scalar_size, "key 'data.image_size' is 8"),
        (many_workers, 'loader_workers must be 0 or more, or "auto"'),
    ],
)
def test_bad_params_name_the_key_and_the_file(tmp_path, edit, message):
    params = copy.deepcopy(read_params(PARAMS))
    edit(params)
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError) as error:
        load_config(bad)
    assert message in str(error.value)
    assert str(bad) in str(error.value)
