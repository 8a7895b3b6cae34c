"""Stage 2's per-image work: CAMs to disk, pseudo labels from them, and their scores.

:func:`label_rule` turns the ``labels`` config section into a :class:`LabelRule` (a rule of
:mod:`rca.pseudo_labels` with its parameters and an explicit ``crf``). :class:`LabelJob` holds what
a worker process needs to label or score one image, built once per worker; the stage maps its
methods over image indices (:class:`rca.engine.pool.WorkerPool`). :func:`summarise_scores` and
:func:`format_report` turn the per-image scores into ``labels/metrics.json`` and its text table.

Scoring protocol (IRN, Ahn et al., CVPR 2019, arXiv:1904.05044, ``eval_cam.py`` / ``eval_sem_seg``;
RCA, Zhou et al., CVPR 2022, arXiv:2203.09653): pseudo labels are MADE for the segmentation training
split (VOC: ``train_aug``) and SCORED on the images of the score split that have masks (VOC:
``train``), never tuned on ``val``. Reported, with one dataset-level confusion matrix each:

* CAM seed: the constant-background rule at the configured ``labels.bg_threshold`` (IRN's fixed
  0.15 on VOC); the argmax over the tagged classes on datasets without a background class;
* CAM seed + CRF: the same seed refined by the dense CRF (preset ``labels.crf``, ``psa`` when the
  rule's CRF is IRN's label CRF or none);
* pseudo label: strict and lenient mIoU and the fraction labelled (:class:`rca.metrics.PseudoLabelMetrics`);
* an ORACLE curve of the seed over ``labels.sweep`` thresholds and its best point: picked with the
  ground truth of the scored split, so it is an upper bound, not a result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rca.cam import multiscale_cam, normalize_cams
from rca.crf import CRF_PRESETS
from rca.data.label_space import LabelSpace
from rca.data.skip import read_or_skip, read_skipped
from rca.io import load_label_png, load_npz, save_label_png, save_npz
from rca.metrics import ConfusionMatrix, PseudoLabelMetrics, format_iou_table
from rca.pseudo_labels import NO_CRF, argmax_labels, constant_background, make_pseudo_label

ORACLE_NOTE = ("oracle: thresholds ranked by the ground truth of the scored split; an upper bound, "
               "not a result (the headline cam_seed uses labels.bg_threshold)")


@dataclass(frozen=True)
class LabelRule:
    """A pseudo-label rule of :data:`rca.pseudo_labels.RULES`, its parameters and its CRF.

    Attributes:
        name: rule name (``constant``, ``power``, ``confident``, ``saliency``, ``argmax``).
        params: the rule's keyword parameters other than the image, the CRF and the saliency map.
        crf: ``"none"``, a :data:`rca.crf.CRF_PRESETS` name, or ``"irn"`` (confident rule only).
        saliency_dir: folder of ``<id>.png`` saliency maps (0..255) for the saliency rule.
    """

    name: str
    params: dict[str, float] = field(default_factory=dict)
    crf: str = NO_CRF
    saliency_dir: str | None = None

    def apply(self, cams: np.ndarray, classes: np.ndarray, image: np.ndarray, image_id: str) -> np.ndarray:
        """The ``(H, W)`` int64 pseudo label (255 = ignore) of one image from its saved CAMs."""
        extra: dict[str, Any] = {} if self.crf == NO_CRF else {"image": image, "crf": self.crf}
        if self.name == "saliency":
            extra["saliency"] = load_label_png(Path(self.saliency_dir) / f"{image_id}.png") / 255.0
        return make_pseudo_label(cams, classes, self.name, **self.params, **extra)


def label_rule(labels_cfg, has_background: bool) -> LabelRule:
    """The :class:`LabelRule` of a ``labels`` config section (:class:`rca.config.LabelsConfig`).

    Datasets without a background class always use the ``argmax`` rule. ``labels.crf``: ``psa`` /
    ``deeplab`` name the dense-CRF preset of the constant, power, saliency and argmax rules; ``irn``
    is IRN's label CRF of the confident rule; ``none`` turns the CRF off.

    Raises:
        ValueError: unknown rule or CRF, a CRF the rule does not use, or the saliency rule without
            ``labels.saliency_dir``; the message names the config key.
    """
    cfg = labels_cfg
    crfs = (NO_CRF, *CRF_PRESETS, "irn")
    if cfg.crf not in crfs:
        raise ValueError(f"labels.crf must be one of {crfs}, got {cfg.crf!r}")
    name = cfg.rule if has_background else "argmax"
    params = {
        "constant": {"threshold": cfg.bg_threshold},
        "power": {"alpha": cfg.power_alpha},
        "confident": {"fg_threshold": cfg.fg_threshold, "bg_threshold": cfg.low_threshold},
        "saliency": {},
        "argmax": {},
    }.get(name)
    if params is None:
        raise ValueError(f"labels.rule must be constant, power, confident or saliency, got {cfg.rule!r}")
    if name == "saliency" and not cfg.saliency_dir:
        raise ValueError("labels.rule=saliency needs labels.saliency_dir (a folder of <id>.png saliency maps)")
    if cfg.crf == "irn" and name != "confident":
        raise ValueError(f"labels.crf=irn is the CRF of labels.rule=confident; use psa or deeplab with {name!r}")
    if name == "confident" and cfg.crf not in (NO_CRF, "irn"):
        raise ValueError(f"labels.rule=confident refines with IRN's label CRF: set labels.crf to irn or none, "
                         f"not {cfg.crf!r}")
    return LabelRule(name, params, cfg.crf, cfg.saliency_dir)


def seed_crf_preset(crf: str) -> str:
    """The dense-CRF preset of the scored "CAM seed + CRF": ``labels.crf`` if a preset, else ``psa``."""
    return crf if crf in CRF_PRESETS else "psa"


def cam_seed(cams: np.ndarray, classes: np.ndarray, threshold: float, has_background: bool,
             crf: str = NO_CRF, image: np.ndarray | None = None) -> np.ndarray:
    """The CAM seed label: constant background at ``threshold``; the argmax without background.

    Args:
        cams: ``(T, H, W)`` normalised CAMs of the tagged classes; ``classes``: their label values.
        threshold: background score (ignored without a background class).
        crf, image: an optional dense-CRF preset and the ``(H, W, 3)`` uint8 image it needs.

    Returns:
        ``(H, W)`` int64 label values.
    """
    if not has_background:
        return argmax_labels(cams, classes, image=image, crf=crf)
    return constant_background(cams, classes, threshold, image=image, crf=crf)


def compute_cams(model: torch.nn.Module, image: torch.Tensor, tags, space: LabelSpace,
                 scales, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Multi-scale CAMs of an image's tagged classes, in the format saved to ``cams/<id>.npz``.

    Args:
        model: classifier in eval mode (see :func:`rca.cam.multiscale_cam`).
        image: ``(3, H, W)`` normalised float tensor; ``tags``: ``(num_tags,)`` multi-hot.

    Returns:
        ``cams`` ``(T, H, W)`` float16 in [0, 1] and ``classes`` ``(T,)`` int64 label values.
    """
    cams, tagged = normalize_cams(multiscale_cam(model, image, scales, flip), torch.as_tensor(tags))
    return cams.cpu().numpy().astype(np.float16), space.tag_to_label(tagged.cpu().numpy())


def save_cams(path: Path, cams: np.ndarray, classes: np.ndarray) -> None:
    """Write ``{"cams", "classes"}`` to ``path`` (``.npz`` without pickle, atomically)."""
    save_npz(path, cams=cams, classes=classes)


def load_cams(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``cams/<id>.npz``: ``(T, H, W)`` float32 CAMs and ``(T,)`` int64 label values."""
    saved = load_npz(path)
    return saved["cams"].astype(np.float32), saved["classes"]


@dataclass
class ImageScores:
    """Confusion counts of one image (or, once merged, of a split); see :func:`summarise_scores`."""

    sweep: list[ConfusionMatrix]
    cam_seed: ConfusionMatrix
    cam_seed_crf: ConfusionMatrix
    pseudo_label: PseudoLabelMetrics

    def merge(self, other: "ImageScores") -> None:
        """Add the counts of ``other``."""
        for mine, theirs in zip(self.sweep, other.sweep):
            mine.merge(theirs)
        self.cam_seed.merge(other.cam_seed)
        self.cam_seed_crf.merge(other.cam_seed_crf)
        self.pseudo_label.merge(other.pseudo_label)


@dataclass
class LabelJob:
    """What a worker needs to label or score one image; built once, sent once to each worker.

    Attributes:
        label_set: the split pseudo labels are made for (items with ``image``; no transform).
        score_set: the split scored (items with ``mask``), or ``None`` when nothing is scored.
        cam_dir, label_dir: where ``<id>.npz`` CAMs are read and ``<id>.png`` labels written.
        rule: the pseudo-label rule.
        threshold: background threshold of the headline CAM seed (``labels.bg_threshold``).
        sweep: thresholds of the oracle seed curve (empty without a background class).
        skip_log: with ``--skip-bad``, the file listing the unusable images, which get no label and
            no score (:mod:`rca.data.skip`); ``None``: an unusable image raises
            :class:`rca.errors.BadItemError`.
    """

    label_set: Any
    score_set: Any
    cam_dir: Path
    label_dir: Path
    rule: LabelRule
    threshold: float
    sweep: list[float]
    skip_log: Path | None = None

    def skipped(self) -> set[str]:
        """Ids listed in :attr:`skip_log` (none without ``--skip-bad``)."""
        return set(read_skipped(self.skip_log)) if self.skip_log is not None else set()

    def unlabelled(self) -> list[str]:
        """Ids of the label split that have no pseudo label yet and were not skipped."""
        skipped = self.skipped()
        return [name for name in self.label_set.ids
                if name not in skipped and not (self.label_dir / f"{name}.png").is_file()]

    def make_label(self, index: int) -> None:
        """Write the pseudo label of ``label_set[index]`` from its saved CAMs (nothing for a skipped image)."""
        item = read_or_skip(self.label_set, index, self.skip_log)
        if item is None:
            return
        cams, classes = load_cams(self.cam_dir / f"{item['id']}.npz")
        label = self.rule.apply(cams, classes, item["image"], item["id"])
        save_label_png(self.label_dir / f"{item['id']}.png", label, self.label_set.palette)

    def score(self, index: int) -> ImageScores | None:
        """Confusion counts of ``score_set[index]``: seeds, seed + CRF, the saved pseudo label
        (``None`` for a skipped image)."""
        dataset = self.score_set
        item = read_or_skip(dataset, index, self.skip_log)
        if item is None:
            return None
        cams, classes = load_cams(self.cam_dir / f"{item['id']}.npz")
        mask, background = item["mask"], dataset.has_background

        def confusion(prediction: np.ndarray) -> ConfusionMatrix:
            matrix = ConfusionMatrix(dataset.num_classes, class_names=dataset.class_names)
            matrix.update(prediction, mask)
            return matrix

        pseudo = PseudoLabelMetrics(dataset.num_classes, background, class_names=dataset.class_names)
        pseudo.update(load_label_png(self.label_dir / f"{item['id']}.png"), mask)
        return ImageScores(
            sweep=[confusion(cam_seed(cams, classes, t, background)) for t in self.sweep],
            cam_seed=confusion(cam_seed(cams, classes, self.threshold, background)),
            cam_seed_crf=confusion(cam_seed(cams, classes, self.threshold, background,
                                            seed_crf_preset(self.rule.crf), item["image"])),
            pseudo_label=pseudo,
        )


def summarise_scores(total: ImageScores, job: LabelJob) -> dict[str, Any]:
    """The score part of ``labels/metrics.json`` from the merged :class:`ImageScores` of a split.

    Returns:
        ``cam_seed`` and ``cam_seed_crf`` (``threshold``, ``miou`` in %, ``iou_by_class``),
        ``pseudo_label`` (``strict_miou``, ``lenient_miou``, ``labelled_fraction`` in %,
        ``iou_by_class`` lenient) and, with a background class, ``oracle_sweep`` (``note``,
        ``curve`` {threshold: mIoU}, ``best_threshold``, ``best_miou``).
    """
    threshold = job.threshold if job.score_set.has_background else None
    seed, seed_crf = total.cam_seed.compute(), total.cam_seed_crf.compute()
    pseudo = total.pseudo_label.compute()
    result = {
        "cam_seed": {"threshold": threshold, "miou": seed["miou"], "iou_by_class": seed["iou_by_name"]},
        "cam_seed_crf": {"threshold": threshold, "crf": seed_crf_preset(job.rule.crf), "miou": seed_crf["miou"],
                         "iou_by_class": seed_crf["iou_by_name"]},
        "pseudo_label": {"strict_miou": pseudo["strict"]["miou"], "lenient_miou": pseudo["lenient"]["miou"],
                         "labelled_fraction": pseudo["labelled_fraction"],
                         "iou_by_class": pseudo["lenient"]["iou_by_name"]},
    }
    if job.sweep:
        curve = [matrix.compute()["miou"] for matrix in total.sweep]
        best = int(np.nanargmax(curve))
        result["oracle_sweep"] = {"note": ORACLE_NOTE, "curve": {f"{t:.2f}": m for t, m in zip(job.sweep, curve)},
                                  "best_threshold": job.sweep[best], "best_miou": curve[best]}
    return result


def format_report(metrics: dict[str, Any]) -> str:
    """``labels/metrics.json`` as a short text table (headline rows first, the oracle curve last)."""
    seed, seed_crf, pseudo = metrics["cam_seed"], metrics["cam_seed_crf"], metrics["pseudo_label"]
    at = f"  (threshold {seed['threshold']:.2f})" if seed["threshold"] is not None else "  (argmax)"
    lines = [
        f"labels made for split {metrics['label_split']} ({metrics['num_labelled']} images), scored on "
        f"{metrics['score_split']} ({metrics['num_scored']} images); rule {metrics['protocol']['rule']}, "
        f"CRF {metrics['protocol']['crf']}",
        f"CAM seed         {seed['miou']:6.2f}{at}",
        f"CAM seed + CRF   {seed_crf['miou']:6.2f}  ({seed_crf['crf']})",
        f"pseudo (strict)  {pseudo['strict_miou']:6.2f}",
        f"pseudo (lenient) {pseudo['lenient_miou']:6.2f}  ({pseudo['labelled_fraction']:.1f}% of pixels labelled)",
        format_iou_table({"iou_by_name": pseudo["iou_by_class"]}, header="pseudo-label IoU (lenient)"),
    ]
    if "oracle_sweep" in metrics:
        oracle = metrics["oracle_sweep"]
        lines += [f"CAM seed by background threshold [{ORACLE_NOTE}]:",
                  "  " + "  ".join(f"{t}:{v:.1f}" for t, v in oracle["curve"].items()),
                  f"  best {oracle['best_miou']:.2f} at {oracle['best_threshold']:.2f}"]
    return "\n".join(lines)
