"""Config loading: defaults, overrides, type checks, error messages and the YAML round trip."""

import re
from pathlib import Path

import pytest

from rca.config import CONFIG_DIR, ClsConfig, ConfigError, LabelsConfig, SegConfig, load_config, save_config


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
        "cls.lr=1", "labels.scales=[1.0, 0.5]", "data.val_split=null", "data.name=folder",
        "data.options.value_map={0: 255}",
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


@pytest.mark.parametrize(
    "override, message",
    [
        # the five values of issue 8 that used to load
        ("labels.rule=foo", "labels.rule: expected one of 'constant', 'power', 'saliency', 'confident', got 'foo'"),
        ("seg.labels=psuedo", "seg.labels: expected one of 'pseudo', 'gt', got 'psuedo'"),
        ("cls.write_threshold=7", r"cls.write_threshold: must be in [0, 1], got 7.0"),
        ("cls.temperature=-1", r"cls.temperature: must be in (0, inf), got -1.0"),
        ("data.name=vocc", "data.name: unknown dataset 'vocc'; choose one of .*voc"),
        # other enumerations, ranges and registries
        ("labels.crf=dense", "labels.crf: expected one of 'psa', 'deeplab', 'irn', 'none'"),
        ("cls.memory_mode=lifo", "cls.memory_mode: expected one of 'fifo', 'ema'"),
        ("cls.method=true", "cls.method: expected one of 'rca', 'cam', got True"),
        ("cls.aggregation=dot", "cls.aggregation: expected one of"),
        ("cls.aggregation_temperature=0", r"cls.aggregation_temperature: must be in (0, inf)"),
        ("cls.epochs=0", r"cls.epochs: must be in [1, inf), got 0"),
        ("cls.momentum=1", r"cls.momentum: must be in [0, 1), got 1.0"),
        ("data.num_workers=-1", r"data.num_workers: must be in [0, inf)"),
        ("seed=-3", r"seed: must be in [0, 4.29497e+09], got -3"),
        ("labels.scales=[1.0, -0.5]", r"labels.scales[1]: must be in (0, inf)"),
        ("labels.scales=[]", "labels.scales: needs at least one scale"),
        ("labels.sweep=[0.1, 1.5]", r"labels.sweep[1]: must be in [0, 1]"),
        ("seg.scale_range=[1.5, 0.5]", "seg.scale_range: expected [low, high] with low <= high"),
        ("cls.backbone=resnet99", "cls.backbone: unknown backbone 'resnet99'; choose one of .*resnet50"),
        ("cls.output_stride=12", "cls.output_stride: resnet18 supports 8, 16, 32, got 12"),
        ("data.options.colour=red", "data.options: dataset 'synthetic' has no option 'colour'; it takes: num_images"),
        ("labels.rule=saliency", "labels.rule=saliency needs labels.saliency_dir"),
        ("labels.crf=irn", "labels.crf=irn is the CRF of labels.rule=confident"),
        ("labels.low_threshold=0.5", r"labels.low_threshold \(0.5\) must not exceed labels.fg_threshold"),
    ],
)
def test_bad_values_fail_at_load_naming_the_key_and_the_allowed_values(override, message):
    pattern = message if "\\(" in message or ".*" in message else re.escape(message)
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_boundary_values_load():
    config = load_config(None, ["cls.write_threshold=1", "cls.momentum=0", "labels.bg_threshold=0",
                                "cls.contrast_warmup_epochs=0", "labels.crf=irn", "labels.rule=confident"])
    assert config.cls.write_threshold == 1.0 and config.labels.crf == "irn"


def test_literals_match_the_library_choices():
    # The config lists the choices as Literal[...] so that loading needs no torch import; they must
    # name exactly what the library accepts.
    import typing

    from rca.crf import CRF_PRESETS
    from rca.memory import MEMORY_MODES
    from rca.models.classifier import AGGREGATIONS, METHODS
    from rca.pseudo_labels import RULES

    def choices(cls, key):
        return set(typing.get_args(typing.get_type_hints(cls)[key]))

    assert choices(ClsConfig, "method") == set(METHODS)
    assert choices(ClsConfig, "aggregation") == set(AGGREGATIONS)
    assert choices(ClsConfig, "memory_mode") == set(MEMORY_MODES)
    assert choices(LabelsConfig, "crf") == set(CRF_PRESETS) | {"irn", "none"}  # irn: rca.crf.crf_labels
    assert choices(LabelsConfig, "rule") == set(RULES) - {"argmax"}  # argmax: datasets without background
    assert choices(SegConfig, "labels") == {"pseudo", "gt"}


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        load_config(tmp_path / "nothere.yaml")


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(tmp_path, path):
    config = load_config(path)
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config


def test_print_config_loading_skips_only_the_registry_checks():
    """check_registries=False (--print-config, without torch) accepts an unknown dataset name, which
    the stages refuse, and still applies the checks between keys."""
    assert load_config(None, ["data.name=vocc"], check_registries=False).data.name == "vocc"
    with pytest.raises(ConfigError, match="data.name: unknown dataset 'vocc'"):
        load_config(None, ["data.name=vocc"])
    with pytest.raises(ConfigError, match=r"cls.resize_long: expected \[low, high\]"):
        load_config(None, ["cls.resize_long=[9, 1]"], check_registries=False)
