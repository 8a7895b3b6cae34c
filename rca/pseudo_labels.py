"""Rules that turn normalised CAMs into pseudo labels (CAM -> seed -> pseudo label).

Every rule is a pure NumPy function (torch CPU tensors are accepted and converted) of

* ``cams``: ``(T, H, W)`` float scores in [0, 1] of the ``T`` tagged classes of one image (output of
  :func:`rca.cam.normalize_cams`),
* ``classes``: ``(T,)`` integer LABEL values of those classes (already offset: 1..20 on VOC, where
  0 is background; 0..K-1 on datasets without a background class),

and returns an ``(H, W)`` int64 label map, 255 = ignore. Rules that model a background class build
a ``(T + 1, H, W)`` score stack ``[background, cams]`` (:func:`probabilities_with_background`), take
the argmax, and map stack index 0 to label 0 and index ``t`` to ``classes[t - 1]``.

Whether the dense CRF runs is the explicit ``crf`` argument of every rule: ``"none"`` (the rule on
the raw CAMs), a :data:`rca.crf.CRF_PRESETS` name (``"psa"``, ``"deeplab"``: the probability CRF of
the constant, power, saliency and argmax rules), or ``"irn"`` (IRN's label CRF, the confident rule's
only one). A CRF needs the ``image`` (``(H, W, 3)`` uint8 RGB); an image without a CRF is an error,
so a caller can never switch the CRF on or off by accident. :func:`make_pseudo_label` picks a rule by
name (the names in :data:`RULES`). Compact score-stack indices are turned into label values by
:func:`rca.data.label_space.compact_lookup`.
"""

from __future__ import annotations

import inspect

import numpy as np

from rca.crf import CRF_PRESETS, crf_labels, dense_crf
from rca.data.label_space import compact_lookup

IGNORE_INDEX = 255
NO_CRF = "none"
PROBABILITY_CRFS = (NO_CRF, *CRF_PRESETS)  # the crf values of constant, power, saliency and argmax
LABEL_CRFS = (NO_CRF, "irn")  # the crf values of the confident rule


def _check_inputs(cams, classes) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``cams`` to float32 ``(T, H, W)`` and ``classes`` to int64 ``(T,)``."""
    cams = np.asarray(cams, dtype=np.float32)
    classes = np.asarray(classes)
    if cams.ndim != 3:
        raise ValueError(f"pseudo labels: cams must have shape (T, H, W), got {cams.shape}")
    if classes.ndim != 1 or classes.shape[0] != cams.shape[0] or not (
            classes.size == 0 or np.issubdtype(classes.dtype, np.integer)):
        raise ValueError(f"pseudo labels: classes must be {cams.shape[0]} integer label values (one per "
                         f"CAM), got {classes.dtype} {classes.shape}")
    if classes.size and (classes.min() < 0 or classes.max() >= IGNORE_INDEX):
        raise ValueError(f"pseudo labels: class label values must lie in 0..254, got {classes.tolist()}")
    return cams, classes.astype(np.int64)


def _check_crf(crf: str, image, allowed: tuple[str, ...], rule: str) -> None:
    """``crf`` must be one of ``allowed``; an image goes with a CRF and only with one."""
    if crf not in allowed:
        raise ValueError(f"pseudo-label rule {rule!r}: crf must be one of {allowed}, got {crf!r}")
    if crf != NO_CRF and image is None:
        raise ValueError(f"pseudo-label rule {rule!r}: crf={crf!r} needs the image (H, W, 3) uint8")
    if crf == NO_CRF and image is not None:
        raise ValueError(f"pseudo-label rule {rule!r}: an image was given but crf='none'; name the CRF preset "
                         f"({', '.join(PROBABILITY_CRFS[1:])}) or drop the image")


def _normalise(scores: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Non-negative ``(C, H, W)`` scores -> probabilities summing to 1 per pixel (all-zero -> uniform)."""
    return (scores + eps) / (scores.sum(axis=0, keepdims=True) + scores.shape[0] * eps)


def probabilities_with_background(cams, background) -> np.ndarray:
    """Stack a background score on top of the class CAMs and normalise to probabilities.

    Args:
        cams: ``(T, H, W)`` non-negative class scores.
        background: ``(H, W)`` non-negative background score, or a scalar (a constant background).

    Returns:
        ``(T + 1, H, W)`` float32, channel 0 = background, summing to 1 at every pixel: each score
        plus ``1e-5`` divided by the pixel's total (so a pixel with all-zero scores is uniform). The
        argmax equals the argmax of the raw stack; this is the input :func:`rca.crf.dense_crf` needs.
    """
    cams = np.asarray(cams, dtype=np.float32)
    background = np.broadcast_to(np.asarray(background, dtype=np.float32), cams.shape[1:])
    return _normalise(np.concatenate([background[None], cams], axis=0))


def _decode(scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Argmax over ``[background, classes...]`` scores -> label values (index 0 -> label 0)."""
    return compact_lookup(classes, with_background=True)[scores.argmax(axis=0)]


def _background_rule(cams, classes, background, image, crf: str, rule: str) -> np.ndarray:
    """Shared tail of the constant and power rules: stack, CRF unless ``crf="none"``, argmax, decode."""
    _check_crf(crf, image, PROBABILITY_CRFS, rule)
    scores = probabilities_with_background(cams, background)
    if crf != NO_CRF:
        scores = dense_crf(image, scores, preset=crf)
    return _decode(scores, classes)


def constant_background(cams, classes, threshold: float, image=None, crf: str = NO_CRF) -> np.ndarray:
    """Background score = a constant ``threshold``; label = argmax over ``[threshold, cams]``.

    The seed rule of IRN (``eval_cam``: threshold 0.15 on VOC; 0.30 / 0.05 for confident labels),
    PSA and EPS (``infer.py --thr``, 0.20). With ``crf`` a preset (and the ``image``) the
    probabilities are refined by :func:`rca.crf.dense_crf` before the argmax.

    Returns:
        ``(H, W)`` int64 labels: 0 where no CAM exceeds ``threshold``, else the best class's label.
    """
    cams, classes = _check_inputs(cams, classes)
    return _background_rule(cams, classes, threshold, image, crf, "constant")


def power_background(cams, classes, alpha: float, image=None, crf: str = NO_CRF) -> np.ndarray:
    """PSA background: ``(1 - max_c CAM_c) ** alpha`` (Ahn & Kwak, CVPR 2018, arXiv:1803.10464, Sec. 3.3 / Eq. 2).

    A small ``alpha`` (PSA: 4) gives a strong background (confident foreground), a large one
    (PSA: 24 or 32) a weak background (confident background). With ``crf`` a preset the
    probabilities are refined by :func:`rca.crf.dense_crf` (PSA's ``_crf_with_alpha``) before the argmax.

    Returns:
        ``(H, W)`` int64 labels (0 = background).
    """
    cams, classes = _check_inputs(cams, classes)
    peak = cams.max(axis=0) if cams.shape[0] else np.zeros(cams.shape[1:], np.float32)
    return _background_rule(cams, classes, np.power(1.0 - peak, alpha), image, crf, "power")


def saliency_background(
    cams,
    classes,
    saliency,
    conflict_threshold: float = 0.9,
    saliency_threshold: float = 32 / 255,
    cam_threshold: float = 0.8,
    min_foreground: float = 0.01,
    image=None,
    crf: str = NO_CRF,
    crf_alpha: float = 4.0,
) -> np.ndarray:
    """Background from a saliency map, with the ignore rules of RCA's released ``gen_labels.py``.

    Released RCA code (same rule as EPS/OAA-style saliency-guided labels):

    1. With ``crf`` a preset, the class scores are first refined by the dense CRF of PSA's power
       rule (``alpha = crf_alpha`` = 4) and the refined class channels used.
    2. Scores ``[1 - saliency, cams]``; pixels where more than one channel exceeds
       ``conflict_threshold`` (0.9) are ignored (conflicting evidence).
    3. Label = argmax (background -> 0).
    4. Pixels labelled background that are salient (``saliency >= saliency_threshold``, 32/255) or
       where some CAM exceeds ``cam_threshold`` (0.8) are ignored.
    5. If under ``min_foreground`` (1%) of the pixels get a foreground label, the whole image is
       ignored.

    Args:
        saliency: ``(H, W)`` float saliency in [0, 1] (uint8 maps: divide by 255).

    Returns:
        ``(H, W)`` int64 labels, 0 = background, 255 = ignore.

    Raises:
        ValueError: if ``saliency`` is not ``(H, W)``.
    """
    cams, classes = _check_inputs(cams, classes)
    _check_crf(crf, image, PROBABILITY_CRFS, "saliency")
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.shape != cams.shape[1:]:
        raise ValueError(f"saliency_background: saliency must have shape {cams.shape[1:]} to match the "
                         f"CAMs, got {saliency.shape}")
    if crf != NO_CRF and cams.shape[0]:
        background = np.power(1.0 - cams.max(axis=0), crf_alpha)
        cams = dense_crf(image, probabilities_with_background(cams, background), preset=crf)[1:]
    scores = np.concatenate([1.0 - saliency[None], cams], axis=0)
    labels = _decode(scores, classes)
    labels[(scores > conflict_threshold).sum(axis=0) > 1] = IGNORE_INDEX
    salient = saliency >= saliency_threshold
    if cams.shape[0]:
        salient |= cams.max(axis=0) > cam_threshold
    labels[(labels == 0) & salient] = IGNORE_INDEX
    foreground = np.count_nonzero((labels != 0) & (labels != IGNORE_INDEX))
    if foreground < min_foreground * labels.size:
        labels[...] = IGNORE_INDEX
    return labels


def confident_labels(cams, classes, fg_threshold: float, bg_threshold: float,
                     image=None, crf: str = NO_CRF) -> np.ndarray:
    """IRN's confident foreground / background labels (Ahn et al., CVPR 2019, arXiv:1904.05044,
    ``cam_to_ir_label``).

    Two constant-background label maps are made, at ``fg_threshold`` (0.30, a strong background:
    confident foreground) and at ``bg_threshold`` (0.05, a weak background: confident background);
    with ``crf="irn"`` each is refined by :func:`rca.crf.crf_labels` (IRN's ``crf_inference_label``).
    Then, as in the released code: a pixel keeps the class of the ``fg_threshold`` map when that is
    a foreground class; it is background where both maps say background; the rest (background at
    ``fg_threshold`` but foreground at ``bg_threshold``) is 255.

    Returns:
        ``(H, W)`` int64 labels, 0 = background, 255 = ignore.
    """
    cams, classes = _check_inputs(cams, classes)
    _check_crf(crf, image, LABEL_CRFS, "confident")

    def seed(threshold: float) -> np.ndarray:  # compact index: 0 = background, t = t-th tag
        index = probabilities_with_background(cams, threshold).argmax(axis=0)
        return crf_labels(image, index, cams.shape[0] + 1) if crf != NO_CRF else index

    fg_seed, bg_seed = seed(fg_threshold), seed(bg_threshold)
    labels = compact_lookup(classes, with_background=True)[fg_seed]
    labels[fg_seed == 0] = IGNORE_INDEX
    labels[(fg_seed == 0) & (bg_seed == 0)] = 0
    return labels


def argmax_labels(cams, classes, image=None, crf: str = NO_CRF) -> np.ndarray:
    """Datasets without a background class: every pixel gets its best tagged class.

    With ``crf`` a preset the CAMs, normalised to sum 1 per pixel, are refined by
    :func:`rca.crf.dense_crf` first. An image with no tags (``T = 0``) gets 255 everywhere.

    Returns:
        ``(H, W)`` int64 labels from ``classes`` (or 255 when ``T = 0``).
    """
    cams, classes = _check_inputs(cams, classes)
    _check_crf(crf, image, PROBABILITY_CRFS, "argmax")
    if cams.shape[0] == 0:
        return np.full(cams.shape[1:], IGNORE_INDEX, dtype=np.int64)
    scores = dense_crf(image, _normalise(cams), preset=crf) if crf != NO_CRF else cams
    return compact_lookup(classes, with_background=False)[scores.argmax(axis=0)]


RULES = {
    "constant": constant_background,
    "power": power_background,
    "saliency": saliency_background,
    "confident": confident_labels,
    "argmax": argmax_labels,
}


def make_pseudo_label(cams, classes, rule: str, **params) -> np.ndarray:
    """Apply the rule named ``rule`` (a key of :data:`RULES`) with keyword ``params``.

    Example: ``make_pseudo_label(cams, classes, "constant", threshold=0.2, crf="psa", image=rgb)``.

    Returns:
        ``(H, W)`` int64 labels, 255 = ignore.

    Raises:
        ValueError: unknown rule, or a parameter the rule does not take (the message lists the
            accepted ones).
    """
    if rule not in RULES:
        raise ValueError(f"unknown pseudo-label rule {rule!r}; choose one of {sorted(RULES)}")
    function = RULES[rule]
    accepted = list(inspect.signature(function).parameters)[2:]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"pseudo-label rule {rule!r} does not take {unknown}; it takes {accepted}")
    return function(cams, classes, **params)
