"""Fully connected CRF (Krähenbühl & Koltun, NeurIPS 2011, arXiv:1210.5644) refinement of class scores or labels.

A thin layer over ``pydensecrf`` (pip package ``pydensecrf2``, imported lazily). The energy has a
unary term and two Potts pairwise kernels: an appearance (bilateral) kernel over position and
colour, ``w_b exp(-|p_i - p_j|^2 / 2 sxy_b^2 - |I_i - I_j|^2 / 2 srgb^2)``, and a smoothness
(Gaussian) kernel over position, ``w_g exp(-|p_i - p_j|^2 / 2 sxy_g^2)``; ``compat`` is the
weight ``w``. Inference is mean field, so the result is a probability per pixel and label.

Only the channels given are modelled: pass background + the tagged classes of one image, not all
classes of the dataset (cheaper, and absent classes cannot appear).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

_MISSING_MESSAGE = "dense CRF needs the pydensecrf2 package: pip install pydensecrf2"


@dataclass(frozen=True)
class CRFParams:
    """Kernel parameters and iteration count of :func:`dense_crf` (see the module docstring)."""

    iterations: int
    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float


CRF_PRESETS: dict[str, CRFParams] = {
    # PSA / EPS / RCA released code (imutils.crf_inference): Gaussian (3, 3), bilateral (80, 13, 10).
    "psa": CRFParams(iterations=10, gaussian_sxy=3, gaussian_compat=3,
                     bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10),
    # DeepLab-v2 post-processing on VOC (Chen et al., TPAMI 2018, arXiv:1606.00915):
    # Gaussian (1, 3), bilateral (67, 3, 4).
    "deeplab": CRFParams(iterations=10, gaussian_sxy=1, gaussian_compat=3,
                         bilateral_sxy=67, bilateral_srgb=3, bilateral_compat=4),
}


def _import_pydensecrf():
    """Import ``pydensecrf.densecrf`` and ``pydensecrf.utils``; clear ImportError when missing."""
    try:
        import pydensecrf.densecrf as dcrf
        import pydensecrf.utils as dcrf_utils
    except ImportError as error:
        raise ImportError(_MISSING_MESSAGE) from error
    return dcrf, dcrf_utils


def _check_image(image: np.ndarray, height: int, width: int, name: str) -> np.ndarray:
    """Validate an ``(H, W, 3)`` uint8 RGB image; return it C-contiguous and writable.

    pydensecrf's typed memoryviews reject read-only buffers (e.g. ``np.asarray(PIL image)``), so a
    read-only image is copied.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != (height, width, 3):
        raise ValueError(f"{name}: image must be uint8 of shape ({height}, {width}, 3) to match the "
                         f"scores, got {image.dtype} {image.shape}")
    return np.require(image, requirements=["C", "W"])


def _run(dcrf, image: np.ndarray, unary: np.ndarray, num_labels: int, params: CRFParams) -> np.ndarray:
    """Mean-field inference; returns ``(num_labels, H, W)`` float32 marginals."""
    height, width = image.shape[:2]
    model = dcrf.DenseCRF2D(width, height, num_labels)
    model.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    model.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    model.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=image,
                               compat=params.bilateral_compat)
    marginals = model.inference(params.iterations)
    return np.asarray(marginals, dtype=np.float32).reshape(num_labels, height, width)


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    preset: str | None = "psa",
    *,
    iterations: int | None = None,
    gaussian_sxy: float | None = None,
    gaussian_compat: float | None = None,
    bilateral_sxy: float | None = None,
    bilateral_srgb: float | None = None,
    bilateral_compat: float | None = None,
    clip: float = 1e-5,
) -> np.ndarray:
    """Refine per-pixel class probabilities with a dense CRF.

    Unary = ``-log(clip(probs, clip, 1))`` (``pydensecrf.utils.unary_from_softmax``, as in the
    PSA/EPS/RCA ``crf_inference``). Keyword arguments that are not None override the preset.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image (BGR gives the same result: the colour kernel is
            isotropic).
        probs: ``(C, H, W)`` float class probabilities (each pixel should sum to 1), e.g. from
            :func:`rca.pseudo_labels.probabilities_with_background`.
        preset: ``"psa"`` (Gaussian sxy 3 compat 3; bilateral sxy 80 srgb 13 compat 10; 10
            iterations), ``"deeplab"`` (Gaussian sxy 1 compat 3; bilateral sxy 67 srgb 3 compat 4;
            10 iterations), or None (then every kernel argument must be given).
        clip: smallest probability before the log.

    Returns:
        ``(C, H, W)`` float32 marginals in [0, 1], summing to 1 at every pixel. With ``C == 1``
        the result is all ones (nothing to refine).

    Raises:
        ValueError: unknown preset, missing parameter with ``preset=None``, or shape/dtype mismatch.
        ImportError: if ``pydensecrf`` is not installed.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise ValueError(f"dense_crf: probs must have shape (C, H, W) with C >= 1, got {probs.shape}")
    image = _check_image(image, probs.shape[1], probs.shape[2], "dense_crf")
    overrides = dict(iterations=iterations, gaussian_sxy=gaussian_sxy, gaussian_compat=gaussian_compat,
                     bilateral_sxy=bilateral_sxy, bilateral_srgb=bilateral_srgb,
                     bilateral_compat=bilateral_compat)
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if preset is None:
        missing = [field.name for field in dataclasses.fields(CRFParams) if field.name not in overrides]
        if missing:
            raise ValueError(f"dense_crf: with preset=None give every CRF parameter; missing {missing}")
        params = CRFParams(**overrides)
    elif preset in CRF_PRESETS:
        params = dataclasses.replace(CRF_PRESETS[preset], **overrides)
    else:
        raise ValueError(f"dense_crf: unknown preset {preset!r}; choose one of {sorted(CRF_PRESETS)} or None")

    if probs.shape[0] == 1:
        return np.ones_like(probs)
    dcrf, dcrf_utils = _import_pydensecrf()
    unary = dcrf_utils.unary_from_softmax(probs, clip=clip)
    return _run(dcrf, image, unary, probs.shape[0], params)


def crf_labels(
    image: np.ndarray,
    labels: np.ndarray,
    num_labels: int,
    gt_prob: float = 0.7,
    *,
    iterations: int = 10,
    gaussian_sxy: float = 3,
    gaussian_compat: float = 3,
    bilateral_sxy: float = 50,
    bilateral_srgb: float = 5,
    bilateral_compat: float = 10,
) -> np.ndarray:
    """Refine a hard label map with a dense CRF whose unary trusts each label with ``gt_prob``.

    IRN's ``imutils.crf_inference_label`` (Ahn et al., CVPR 2019, arXiv:1904.05044; used by ``cam_to_ir_label``):
    unary from ``pydensecrf.utils.unary_from_labels(labels, num_labels, gt_prob,
    zero_unsure=False)`` (the given label gets probability ``gt_prob``, the others share the rest),
    Gaussian kernel (sxy 3, compat 3), bilateral kernel (sxy 50, srgb 5, compat 10), 10 iterations,
    then the argmax.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image.
        labels: ``(H, W)`` integer map with compact values in ``0..num_labels-1`` (e.g. 0 =
            background, t = the t-th tagged class); no ignore value.
        num_labels: number of labels ``C``.
        gt_prob: confidence in the given labels, in (0, 1).

    Returns:
        ``(H, W)`` int64 map in ``0..num_labels-1``. With ``num_labels == 1`` a copy of ``labels``.

    Raises:
        ValueError: on shape/dtype mismatch, labels outside ``0..num_labels-1`` or ``gt_prob``
            outside (0, 1).
        ImportError: if ``pydensecrf`` is not installed.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"crf_labels: labels must be an (H, W) integer array, got {labels.dtype} {labels.shape}")
    if num_labels < 1:
        raise ValueError(f"crf_labels: num_labels must be >= 1, got {num_labels}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(f"crf_labels: labels must lie in 0..{num_labels - 1}, got values "
                         f"{labels.min()}..{labels.max()}")
    if not 0 < gt_prob < 1:
        raise ValueError(f"crf_labels: gt_prob must be in (0, 1), got {gt_prob}")
    image = _check_image(image, labels.shape[0], labels.shape[1], "crf_labels")
    if num_labels == 1:
        return labels.astype(np.int64)
    dcrf, dcrf_utils = _import_pydensecrf()
    unary = dcrf_utils.unary_from_labels(labels, num_labels, gt_prob=gt_prob, zero_unsure=False)
    params = CRFParams(iterations=iterations, gaussian_sxy=gaussian_sxy, gaussian_compat=gaussian_compat,
                       bilateral_sxy=bilateral_sxy, bilateral_srgb=bilateral_srgb,
                       bilateral_compat=bilateral_compat)
    return _run(dcrf, image, unary, num_labels, params).argmax(axis=0).astype(np.int64)
