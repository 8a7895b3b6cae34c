"""Experiment configuration: YAML files loaded into typed dataclasses, with ``--set`` overrides.

One YAML file per experiment lives in ``rca/configs/``. A file only lists what differs from the
defaults below; every key is checked against these dataclasses, so a misspelt key or a value of the
wrong type fails at start-up with the key path in the message (``cls.lr: expected float, got 'x'``)
instead of hours into a run. The resolved config (defaults + file + overrides) is written next to
each stage's outputs so a run can always be reproduced.

Every stage accepts the same arguments (see :func:`add_config_args`)::

    --config FILE        YAML file (default: the synthetic demo, rca/configs/demo.yaml)
    --set key.sub=value  override, value parsed as YAML (repeatable)
    --work-dir DIR       outputs (default runs/<config name>)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rca.io import atomic_open

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "demo.yaml"


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key path."""


@dataclass
class DataConfig:
    """Which dataset to read, and how (see :func:`rca.data.build_dataset`)."""

    name: str = "synthetic"  # voc | coco | folder | camvid | synthetic
    root: str = "data/synthetic"
    train_split: str = "train"
    val_split: str | None = "val"  # None: no validation
    label_split: str = "train"  # split gen_labels labels and scores (VOC protocol: train)
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific keyword arguments
    num_workers: int = 2


@dataclass
class ClsConfig:
    """Stage 1: the CAM classifier with RCA (Zhou et al., CVPR 2022)."""

    method: str = "rca"  # rca | cam (every RCA part off, for ablation)
    backbone: str = "resnet50"
    pretrained: str = "imagenet"  # imagenet | none | path to a checkpoint
    output_stride: int = 16
    freeze_bn: bool = False  # backbone batch norms at their pretrained statistics (IRN)
    frozen_stages: int = 0  # backbone stages (of 4) kept fixed; EfficientNet-Lite only
    crop_size: int = 448
    resize_long: tuple[int, int] = (320, 640)  # random resize of the long side (pixels)
    color_jitter: float = 0.3
    batch_size: int = 16
    epochs: int = 5
    lr: float = 0.01
    head_lr_mult: float = 10.0  # new heads train with lr x this
    momentum: float = 0.9
    weight_decay: float = 1e-4
    embed_dim: int = 128
    memory_size: int = 500
    memory_mode: str = "fifo"  # fifo | ema
    memory_momentum: float = 0.99
    write_threshold: float = 0.7  # a region enters the memory if its class probability exceeds this
    temperature: float = 0.07
    contrast_weight: float = 0.1
    contrast_warmup_epochs: int = 2
    region_mixup: bool = False
    coarse_weight: float = 0.4
    num_centres: int = 10  # k-means centres per class for semantic aggregation
    aggregation: str = "scaled"  # scaled: softmax(qk^T/sqrt(d)) | unnormalised: the released code's rule
    amp: bool = True  # mixed precision, used only on a GPU
    log_interval: int = 20


@dataclass
class LabelsConfig:
    """Stage 2: CAMs -> seeds -> dense CRF -> pseudo labels."""

    scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])
    flip: bool = True
    rule: str = "constant"  # constant | power | saliency | confident (argmax when no background)
    bg_threshold: float = 0.15  # constant rule: background score
    power_alpha: float = 16.0  # power rule: background = (1 - max_c CAM_c) ** alpha
    fg_threshold: float = 0.30  # confident rule: foreground-confident threshold
    low_threshold: float = 0.05  # confident rule: background-confident threshold
    saliency_dir: str | None = None  # saliency rule: folder of <id>.png, 0..255
    crf: str = "psa"  # psa | deeplab | irn | none
    sweep: list[float] = field(default_factory=lambda: [round(0.05 * i, 2) for i in range(13)])


@dataclass
class SegConfig:
    """Stage 3: DeepLab-v2 (Chen et al., TPAMI 2017) on pseudo labels or true masks."""

    labels: str = "pseudo"  # pseudo (runs/<exp>/labels) | gt (the dataset's masks)
    backbone: str = "resnet101"
    pretrained: str = "imagenet"
    output_stride: int = 8
    multi_scale: bool = False  # DeepLab's MSC training (scales 1, 0.75, 0.5 + max fusion)
    freeze_bn: bool = True
    frozen_stages: int = 0  # backbone stages (of 4) kept fixed; EfficientNet-Lite only
    sync_bn: bool = False
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    iterations: int = 20000
    batch_size: int = 10
    crop_size: int = 321
    scale_range: tuple[float, float] = (0.5, 1.5)
    color_jitter: float = 0.0
    val_interval: int = 2000
    eval_scales: list[float] = field(default_factory=lambda: [1.0])
    eval_flip: bool = False
    eval_crf: bool = False
    amp: bool = True
    log_interval: int = 20


@dataclass
class Config:
    """A whole experiment: one seed, one dataset, the three stages."""

    name: str = "demo"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    cls: ClsConfig = field(default_factory=ClsConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    seg: SegConfig = field(default_factory=SegConfig)


def _convert(value: Any, annotation: Any, path: str) -> Any:
    """Check ``value`` against a type annotation and convert it (YAML lists -> tuples, int -> float)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return _build(annotation, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches no allowed type")
    if annotation is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
        item_types = args if origin is tuple else [args[0]] * len(value)
        items = [_convert(v, t, f"{path}[{i}]") for i, (v, t) in enumerate(zip(value, item_types))]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{path}: expected {annotation.__name__}, got {value!r}")
    if annotation in (int, float, str, bool):
        if not isinstance(value, annotation):
            raise ConfigError(f"{path}: expected {annotation.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r} at {path}")


def _build(cls: type, values: dict[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]} (valid keys{' of ' + path if path else ''}: "
            f"{', '.join(sorted(names))})"
        )
    kwargs = {k: _convert(v, hints[k], f"{path}.{k}" if path else k) for k, v in values.items()}
    return cls(**kwargs)


def _set_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict in place."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {key}: cannot parse {raw!r} as YAML ({error})") from None
    *parents, leaf = key.strip().split(".")
    node = tree
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Load a YAML experiment file, apply ``key=value`` overrides and validate everything.

    Args:
        path: YAML file; ``None`` loads the synthetic demo config. Its ``name`` defaults to the
            file's stem.
        overrides: strings ``"section.key=value"``; values are parsed as YAML (``0.1``, ``[1, 2]``,
            ``null``, ``true``).

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: unknown key, wrong type, or malformed override; the message names the key path.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found (shipped configs: {CONFIG_DIR})")
    with open(path) as f:
        try:
            tree = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: invalid YAML ({error})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    tree.setdefault("name", path.stem)
    for assignment in overrides:
        _set_override(tree, assignment)
    try:
        return _build(Config, tree, "")
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically); :func:`load_config` reads it back equal."""
    with atomic_open(path, "w") as f:
        yaml.safe_dump(config_to_dict(config), f, sort_keys=False)


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments every stage shares: ``--config``, ``--set`` and ``--work-dir``."""
    parser.add_argument("--config", default=None, help=f"experiment YAML (default {DEFAULT_CONFIG.name})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set cls.lr=0.02 (value parsed as YAML; repeatable)",
    )
    parser.add_argument("--work-dir", default=None, help="output folder (default runs/<config name>)")
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[Config, Path]:
    """Resolve the config and work dir from parsed :func:`add_config_args` arguments."""
    config = load_config(args.config, args.overrides)
    work_dir = Path(args.work_dir) if args.work_dir else Path("runs") / config.name
    return config, work_dir
