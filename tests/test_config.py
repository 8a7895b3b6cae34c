"""Config loading: defaults, overrides, type checks, error messages and the YAML round trip."""

from pathlib import Path

import pytest

from rca.config import CONFIG_DIR, ConfigError, load_config, save_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_file_values_defaults_and_name(tmp_path):
    config = load_config(write(tmp_path, "cls:\n  lr: 0.02\n  resize_long: [100, 200]\n"))
    assert config.name == "exp"
    assert config.cls.lr == 0.02
    assert config.cls.resize_long == (100, 200)
    assert config.cls.temperature == 0.07  # default kept
    assert config.seg.scale_range == (0.5, 1.5)


def test_overrides_are_parsed_as_yaml(tmp_path):
    config = load_config(write(tmp_path, "seed: 1\n"), [
        "cls.lr=1", "labels.scales=[1.0, 0.5]", "data.val_split=null", "data.options.value_map={0: 255}",
        "seg.eval_crf=true",
    ])
    assert config.cls.lr == 1.0 and isinstance(config.cls.lr, float)
    assert config.labels.scales == [1.0, 0.5]
    assert config.data.val_split is None
    assert config.data.options == {"value_map": {0: 255}}
    assert config.seg.eval_crf is True


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("cls:\n  lrr: 0.1\n", [], "unknown config key cls.lrr"),
        ("", ["seg.iterations=many"], "seg.iterations: expected int, got 'many'"),
        ("cls:\n  epochs: true\n", [], "cls.epochs: expected int, got True"),
        ("cls:\n  resize_long: [1, 2, 3]\n", [], "cls.resize_long: expected 2 values, got 3"),
        ("labels:\n  scales: [1.0, x]\n", [], "labels.scales[1]: expected float"),
        ("data: 3\n", [], "data: expected a mapping"),
        ("", ["novalue"], "expected key.sub=value"),
        ("", ["cls.lr.x=1"], "cls.lr: expected float"),
        ("cls:\n  lr: 0.1\n", ["cls.lr.x=1"], "cls.lr is not a section"),
    ],
)
def test_errors_name_the_key(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text), overrides)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        load_config(tmp_path / "nothere.yaml")


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(tmp_path, path):
    config = load_config(path)
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config
