"""Experiment configuration: YAML files loaded into typed dataclasses, with ``--set`` overrides.

One YAML file per experiment lives in ``rca/configs/``. A file only lists what differs from the
defaults below; every key is checked against these dataclasses, so a misspelt key, a value of the
wrong type, a choice outside its ``Literal[...]`` or a number outside its :class:`Range` fails at
start-up with the key path in the message (``cls.lr: expected float, got 'x'``,
``labels.rule: expected one of 'constant', ..., got 'foo'``, ``cls.write_threshold: must be in
[0, 1], got 7``) instead of hours into a run. Names that live in a registry (``data.name`` and its
``data.options``, the backbones and their output strides) are checked against the registry when
the config is loaded. The resolved config (defaults + file + overrides) is written next to
each stage's outputs so a run can always be reproduced.

Every stage accepts the same arguments (see :func:`add_config_args`)::

    --config FILE        YAML file (default: the synthetic demo, rca/configs/demo.yaml)
    --set key.sub=value  override, value parsed as YAML (repeatable)
    --work-dir DIR       outputs (default runs/<config name>)
    --print-config       print the resolved config as YAML and exit
    --debug              a traceback with the one-line message of an input error (rca.errors)

This module imports no torch (the registries are imported inside :func:`load_config`): the stages
parse their arguments with it before importing torch (see :mod:`rca.cli`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from rca.errors import UserError, add_debug_arg
from rca.io import atomic_open

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "demo.yaml"


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message names the key path."""


@dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric key, used as ``Annotated[float, Range(0, 1)]``.

    ``low``/``high`` of ``None`` leave that side open-ended; ``low_open``/``high_open`` exclude the
    bound itself (``Range(0, low_open=True)``: strictly positive).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def check(self, value: float, path: str) -> None:
        """Raise :class:`ConfigError` naming ``path`` if ``value`` lies outside the interval."""
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            left = "-inf" if self.low is None else f"{self.low:g}"
            right = "inf" if self.high is None else f"{self.high:g}"
            bounds = f"{'(' if self.low_open or self.low is None else '['}{left}, {right}" \
                     f"{')' if self.high_open or self.high is None else ']'}"
            raise ConfigError(f"{path}: must be in {bounds}, got {value!r}")


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
UnitFloat = Annotated[float, Range(0, 1)]  # a probability or score threshold in [0, 1]
Momentum = Annotated[float, Range(0, 1, high_open=True)]


@dataclass
class DataConfig:
    """Which dataset to read, and how (see :func:`rca.data.build_dataset`)."""

    name: str = "synthetic"  # a key of rca.data.DATASETS (checked against it at load time)
    root: str = "data/synthetic"
    train_split: str = "train"
    val_split: str | None = "val"  # None: no validation
    label_split: str = "train"  # split gen_labels makes pseudo labels for: the seg training split (VOC: train_aug)
    score_split: str | None = None  # split whose labelled images are scored (VOC: train); None: label_split
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific keyword arguments
    num_workers: NonNegativeInt = 2  # DataLoader worker processes of train_cls / train_seg (not gen_labels' CRF)


@dataclass
class ClsConfig:
    """Stage 1: the CAM classifier with RCA (Zhou et al., CVPR 2022, arXiv:2203.09653)."""

    method: Literal["rca", "cam"] = "rca"  # cam: every RCA part off, for ablation
    backbone: str = "resnet50"  # a key of rca.models.backbones.OUTPUT_STRIDES
    pretrained: str = "imagenet"  # imagenet | none | path to a checkpoint
    output_stride: PositiveInt = 16  # one the backbone supports (checked at load time)
    freeze_bn: bool = False  # backbone batch norms at their pretrained statistics (IRN)
    frozen_stages: Annotated[int, Range(0, 4)] = 0  # backbone stages (of 4) kept fixed; EfficientNet-Lite only
    crop_size: PositiveInt = 448
    resize_long: tuple[PositiveInt, PositiveInt] = (320, 640)  # random resize of the long side (pixels)
    color_jitter: NonNegativeFloat = 0.3
    batch_size: PositiveInt = 16
    epochs: PositiveInt = 5
    lr: PositiveFloat = 0.01
    head_lr_mult: PositiveFloat = 10.0  # new heads train with lr x this
    momentum: Momentum = 0.9
    weight_decay: NonNegativeFloat = 1e-4
    embed_dim: PositiveInt = 128
    memory_size: PositiveInt = 500
    memory_mode: Literal["fifo", "ema"] = "fifo"
    memory_momentum: UnitFloat = 0.99
    write_threshold: UnitFloat = 0.7  # a region enters the memory if its class probability exceeds this
    temperature: PositiveFloat = 0.07
    contrast_weight: NonNegativeFloat = 0.1
    contrast_warmup_epochs: NonNegativeInt = 2
    region_mixup: bool = True  # the paper's L^RM-NCE (rca.losses.mixed_semantic_contrast_loss)
    coarse_weight: NonNegativeFloat = 0.4
    num_centres: PositiveInt = 10  # k-means centres per class for semantic aggregation
    # how pixels attend to the memory centres (rca.models.classifier.RCAClassifier.aggregate)
    aggregation: Literal["cosine", "learnable", "scaled", "unnormalised", "none"] = "cosine"
    aggregation_temperature: PositiveFloat = 0.1  # cosine: fixed; learnable: initial value
    amp: bool = True  # mixed precision, used only on a GPU
    log_interval: PositiveInt = 20


@dataclass
class LabelsConfig:
    """Stage 2: CAMs -> seeds -> dense CRF -> pseudo labels."""

    scales: list[PositiveFloat] = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])
    flip: bool = True
    # argmax is used instead when the dataset has no background class
    rule: Literal["constant", "power", "saliency", "confident"] = "constant"
    bg_threshold: UnitFloat = 0.15  # constant rule: background score
    power_alpha: PositiveFloat = 16.0  # power rule: background = (1 - max_c CAM_c) ** alpha
    fg_threshold: UnitFloat = 0.30  # confident rule: foreground-confident threshold
    low_threshold: UnitFloat = 0.05  # confident rule: background-confident threshold
    saliency_dir: str | None = None  # saliency rule: folder of <id>.png, 0..255
    crf: Literal["psa", "deeplab", "irn", "none"] = "psa"  # irn only with the confident rule
    sweep: list[UnitFloat] = field(default_factory=lambda: [round(0.05 * i, 2) for i in range(13)])


@dataclass
class PixelContrastConfig:
    """``seg.contrast.pixel``: pixel contrast, Wang et al. ICCV 2021 (:mod:`rca.losses.pixel_contrast`);
    used by ``pixel`` (in-batch) and ``pixel_memory`` (pixel + segment queues)."""

    weight: NonNegativeFloat = 0.1
    temperature: PositiveFloat = 0.1
    base_temperature: PositiveFloat = 0.07
    max_samples: PositiveInt = 1024  # hard anchor sampler: anchors per batch
    max_views: PositiveInt = 100  # hard anchor sampler: anchors per (image, class)
    memory_size: PositiveInt = 5000  # pixel_memory: slots per class of each queue
    pixels_per_image: PositiveInt = 10  # pixel_memory: pixels enqueued per class and image


@dataclass
class RegionContrastConfig:
    """``seg.contrast.region``: region contrast, Hu et al. ICCV 2021 (:mod:`rca.losses.region_contrast`)."""

    weight: NonNegativeFloat = 0.1
    temperature: PositiveFloat = 0.2
    memory_size: NonNegativeInt = 0  # region centres kept per class; 0 = the number of training images


@dataclass
class ContextrastConfig:
    """``seg.contrast.contextrast``: Contextrast, Sung et al. CVPR 2024 (:mod:`rca.losses.contextrast`)."""

    weight: NonNegativeFloat = 0.1
    temperature: PositiveFloat = 0.1  # not given by the paper
    layer_weights: tuple[NonNegativeFloat, NonNegativeFloat, NonNegativeFloat, NonNegativeFloat] = (0.1, 0.3, 0.7, 1.0)  # shallow to deep
    anchor_weights: tuple[UnitFloat, UnitFloat] = (0.5, 0.5)  # (w_l, w_h), not given by the paper
    negative_fraction: Annotated[float, Range(0, 1, low_open=True)] = 0.5  # BANE: lowest K of the distances


@dataclass
class ContrastConfig:
    """``seg.contrast``: contrastive losses added to the cross-entropy (:func:`rca.losses.build_contrast`)."""

    losses: list[Literal["pixel", "pixel_memory", "region", "contextrast"]] = field(default_factory=list)
    dim: PositiveInt = 256  # projection head output
    warmup_iters: NonNegativeInt = 0  # the contrastive terms count (weight > 0) from this iteration on
    pixel: PixelContrastConfig = field(default_factory=PixelContrastConfig)
    region: RegionContrastConfig = field(default_factory=RegionContrastConfig)
    contextrast: ContextrastConfig = field(default_factory=ContextrastConfig)


@dataclass
class SegConfig:
    """Stage 3: DeepLab-v2 (Chen et al., TPAMI 2018, arXiv:1606.00915) on pseudo labels or true masks."""

    labels: Literal["pseudo", "gt"] = "pseudo"  # pseudo: runs/<exp>/labels; gt: the dataset's masks
    backbone: str = "resnet101"  # a key of rca.models.backbones.OUTPUT_STRIDES
    pretrained: str = "imagenet"
    output_stride: PositiveInt = 8  # one the backbone supports (checked at load time)
    multi_scale: bool = False  # DeepLab's MSC training (scales 1, 0.75, 0.5 + max fusion)
    freeze_bn: bool = True
    frozen_stages: Annotated[int, Range(0, 4)] = 0  # backbone stages (of 4) kept fixed; EfficientNet-Lite only
    sync_bn: bool = False
    lr: PositiveFloat = 2.5e-4
    momentum: Momentum = 0.9
    weight_decay: NonNegativeFloat = 5e-4
    iterations: PositiveInt = 20000
    batch_size: PositiveInt = 10
    crop_size: PositiveInt = 321
    scale_range: tuple[PositiveFloat, PositiveFloat] = (0.5, 1.5)
    color_jitter: NonNegativeFloat = 0.0
    val_interval: PositiveInt = 2000
    eval_scales: list[PositiveFloat] = field(default_factory=lambda: [1.0])
    eval_flip: bool = False
    eval_crf: bool = False
    amp: bool = True
    log_interval: PositiveInt = 20
    contrast: ContrastConfig = field(default_factory=ContrastConfig)


@dataclass
class Config:
    """A whole experiment: one seed, one dataset, the three stages."""

    name: str = "demo"
    seed: Annotated[int, Range(0, 2**32 - 1)] = 0  # NumPy seeds must fit in 32 bits
    data: DataConfig = field(default_factory=DataConfig)
    cls: ClsConfig = field(default_factory=ClsConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    seg: SegConfig = field(default_factory=SegConfig)


def _convert(value: Any, annotation: Any, path: str) -> Any:
    """Check ``value`` against a type annotation and convert it (YAML lists -> tuples, int -> float)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        value = _convert(value, args[0], path)
        for constraint in annotation.__metadata__:
            constraint.check(value, path)
        return value
    if origin is Literal:
        # type(...) too: YAML's true must not pass for 1, nor 1 for 1.0
        if not any(value == choice and type(value) is type(choice) for choice in args):
            raise ConfigError(f"{path}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
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
        if annotation is float and not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r} at {path}")


def _build(cls: type, values: dict[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
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


def _check_registries(config: Config) -> None:
    """Checks of the names that live in a registry: dataset, its options, backbones and their output
    strides (the registries import torch, so they are imported here, at call time).

    Raises:
        ConfigError: naming the key path and the allowed values.
    """
    from rca.data import DATASETS, dataset_options
    from rca.models.backbones import OUTPUT_STRIDES

    data = config.data
    if data.name not in DATASETS:
        raise ConfigError(f"data.name: unknown dataset {data.name!r}; choose one of {', '.join(sorted(DATASETS))}")
    unknown = sorted(set(data.options) - set(dataset_options(data.name)))
    if unknown:
        raise ConfigError(f"data.options: dataset {data.name!r} has no option {unknown[0]!r}; it takes: "
                          f"{', '.join(dataset_options(data.name)) or 'none'}")
    for section in ("cls", "seg"):
        cfg = getattr(config, section)
        if cfg.backbone not in OUTPUT_STRIDES:
            raise ConfigError(f"{section}.backbone: unknown backbone {cfg.backbone!r}; choose one of "
                              f"{', '.join(sorted(OUTPUT_STRIDES))}")
        if cfg.output_stride not in OUTPUT_STRIDES[cfg.backbone]:
            raise ConfigError(f"{section}.output_stride: {cfg.backbone} supports "
                              f"{', '.join(map(str, sorted(OUTPUT_STRIDES[cfg.backbone])))}, got {cfg.output_stride}")


def _check_keys(config: Config) -> None:
    """Checks that need more than one key.

    Raises:
        ConfigError: naming the key paths and what they must satisfy.
    """
    for path, pair in (("cls.resize_long", config.cls.resize_long), ("seg.scale_range", config.seg.scale_range)):
        if pair[0] > pair[1]:
            raise ConfigError(f"{path}: expected [low, high] with low <= high, got {list(pair)}")
    for path, values in (("labels.scales", config.labels.scales), ("seg.eval_scales", config.seg.eval_scales)):
        if not values:
            raise ConfigError(f"{path}: needs at least one scale (1.0 = the original size)")
    labels = config.labels
    if labels.low_threshold > labels.fg_threshold:
        raise ConfigError(f"labels.low_threshold ({labels.low_threshold}) must not exceed labels.fg_threshold "
                          f"({labels.fg_threshold})")
    if labels.rule == "saliency" and not labels.saliency_dir:
        raise ConfigError("labels.rule=saliency needs labels.saliency_dir (a folder of <id>.png saliency maps)")
    if labels.crf == "irn" and labels.rule != "confident":
        raise ConfigError(f"labels.crf=irn is the CRF of labels.rule=confident; use psa, deeplab or none "
                          f"with rule {labels.rule!r}")


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


def load_config(path: str | Path | None = None, overrides: list[str] = (), check_registries: bool = True) -> Config:
    """Load a YAML experiment file, apply ``key=value`` overrides and validate everything.

    Args:
        path: YAML file; ``None`` loads the synthetic demo config. Its ``name`` defaults to the
            file's stem.
        overrides: strings ``"section.key=value"``; values are parsed as YAML (``0.1``, ``[1, 2]``,
            ``null``, ``true``).
        check_registries: also check ``data.name``, ``data.options``, the backbones and their
            output strides against their registries (this imports torch); ``False`` is for
            ``--print-config``, which answers without torch.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: unknown key, wrong type, a choice or number outside its allowed values, an
            unknown dataset, dataset option or backbone, inconsistent keys, or a malformed
            override; the message names the key path.
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
        config = _build(Config, tree, "")
        _check_keys(config)
        if check_registries:
            _check_registries(config)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def format_config(config: Config) -> str:
    """The config as YAML, sections and keys in their dataclass order; :func:`load_config` reads it back equal."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (:func:`format_config`), atomically."""
    with atomic_open(path, "w") as f:
        f.write(format_config(config))


def shipped_configs() -> list[str]:
    """File names of the configs shipped in ``rca/configs/``, sorted (``["ade20k.yaml", ...]``)."""
    return sorted(path.name for path in CONFIG_DIR.glob("*.yaml"))


def add_override_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--set KEY=VALUE [KEY=VALUE ...]`` (repeatable), collected into ``args.overrides`` for
    :func:`load_config`."""
    parser.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
        help="override config values, e.g. --set cls.lr=0.02 cls.epochs=3 (values parsed as YAML; "
             "repeatable)",
    )


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments every stage shares: ``--config``, ``--set`` (:func:`add_override_arg`), ``--work-dir``,
    ``--print-config`` (answered by :func:`rca.cli.parse_command_line`) and ``--debug``
    (:func:`rca.errors.add_debug_arg`)."""
    parser.add_argument(
        "--config", default=None, metavar="FILE",
        help=f"experiment YAML (default rca/configs/{DEFAULT_CONFIG.name}); shipped in rca/configs/: "
             f"{', '.join(shipped_configs())}",
    )
    add_override_arg(parser)
    parser.add_argument("--work-dir", default=None, metavar="DIR", help="output folder (default runs/<config name>)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (defaults + --config file + --set overrides) as YAML "
                             "and exit")
    return add_debug_arg(parser)


def config_from_args(args: argparse.Namespace) -> tuple[Config, Path]:
    """Resolve the config and work dir from parsed :func:`add_config_args` arguments."""
    config = load_config(args.config, args.overrides)
    work_dir = Path(args.work_dir) if args.work_dir else Path("runs") / config.name
    return config, work_dir
