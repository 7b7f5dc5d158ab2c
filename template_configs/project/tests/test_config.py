from pathlib import Path

import pytest

from mlt_project.config import ConfigError, load_config

PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


def test_project_params_load_with_derived_input_dim():
    cfg = load_config(PARAMS)
    channels, height, width = cfg.data.input_shape
    assert cfg.data.input_dim == channels * height * width
    assert cfg.training.batch_size > 0


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  hidden_size:", "  hiden_size:", "unknown key 'model.hiden_size'"),
        ("  seed: 42                             # fixes the split", "", "missing key 'data.seed'"),
        (
            "  batch_size: 64",
            "  batch_size: sixty-four",
            "key 'training.batch_size' is 'sixty-four'",
        ),
        ("  image_size: [8, 8]", "  image_size: 8", "key 'data.image_size' is 8"),
    ],
)
def test_bad_params_name_the_key_and_the_file(tmp_path, old, new, message):
    text = PARAMS.read_text()
    assert old in text, "the test's anchor is no longer in params.yaml"
    bad = tmp_path / "params.yaml"
    bad.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as error:
        load_config(bad)
    assert message in str(error.value)
    assert str(bad) in str(error.value)
