"""Multi-scale class activation map (CAM) inference for pseudo-label generation.

Protocol (PSA, Ahn & Kwak CVPR 2018; IRN, Ahn et al. CVPR 2019; EPS, Lee et al. CVPR 2021; RCA,
Zhou et al. CVPR 2022 all use it, with scales (1.0, 0.5, 1.5, 2.0) and horizontal flips):

1. For each scale ``s`` the image is resized to ``(round(s * H), round(s * W))`` (bilinear,
   ``align_corners=False``) and batched with its horizontal flip.
2. The classifier returns raw (pre-ReLU) CAMs at feature resolution; each pass (every scale, the
   image and its flip alike) goes through a ReLU there, as in PSA (``forward_cam``), IRN
   (``CAM.forward``) and EPS, so a negative response at one scale cannot cancel a positive one at
   another. The flipped copy's maps are flipped back and every map is resized to the input size
   ``(H, W)`` (bilinear, which keeps them non-negative).
3. The maps are summed over scales and flips.
4. :func:`normalize_cams` keeps the classes in the image-level tags (known for the training set
   in WSSS) and divides each map by its maximum, giving scores in [0, 1].

The pseudo-label rules in :mod:`rca.pseudo_labels` work on the output of step 4.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_SCALES = (1.0, 0.5, 1.5, 2.0)


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """The device of the model's first parameter or buffer, or ``fallback`` if it has none."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return fallback if tensor is None else tensor.device


def multiscale_maps(
    forward: Callable[[Tensor], Tensor],
    image: Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
) -> Tensor:
    """Sum of dense maps over rescaled (and horizontally flipped) copies of one image.

    Steps 1-3 of the module docstring with ``forward`` in place of the classifier + ReLU; shared by
    CAM inference (:func:`multiscale_cam`) and multi-scale segmentation testing (sum of softmax maps). One call
    of ``forward`` per scale, with the image and its flip in one batch of 2. Runs under
    ``torch.inference_mode()`` on the device of ``image`` (move it to the model's device first).

    Args:
        forward: maps a ``(B, 3, h, w)`` batch to ``(B, C, h', w')`` maps (any resolution).
        image: ``(3, H, W)`` float tensor.
        scales: positive resize factors; the input size is ``round(scale * H), round(scale * W)``.
        flip: also run the horizontally flipped image at each scale (its maps are flipped back).

    Returns:
        ``(C, H, W)`` float32 sum over the ``len(scales) * (2 if flip else 1)`` passes.

    Raises:
        ValueError: if ``image`` is not ``(3, H, W)``, ``scales`` is empty or not positive, or
            ``forward`` does not return a 4-D tensor.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"multi-scale inference expects one image of shape (3, H, W), got {tuple(image.shape)}")
    if len(scales) == 0 or any(s <= 0 for s in scales):
        raise ValueError(f"multi-scale inference: scales must be a non-empty list of positive numbers, got {scales}")
    height, width = image.shape[1:]
    total = None
    with torch.inference_mode():
        image = image.float().unsqueeze(0)
        for scale in scales:
            size = (max(1, round(scale * height)), max(1, round(scale * width)))
            scaled = image if size == (height, width) else F.interpolate(
                image, size=size, mode="bilinear", align_corners=False)
            maps = forward(torch.cat([scaled, scaled.flip(-1)]) if flip else scaled)
            if not isinstance(maps, Tensor) or maps.ndim != 4:
                raise ValueError("multi-scale inference: forward must return a (B, C, h, w) tensor, got "
                                 f"{type(maps).__name__} {tuple(getattr(maps, 'shape', ()))}")
            maps = maps.float()
            if flip:
                maps = torch.cat([maps[:1], maps[1:].flip(-1)])
            maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False).sum(0)
            total = maps if total is None else total + maps
    return total


def _cams_of(output) -> Tensor:
    """The ``"cams"`` entry of a classifier's output dict (clear error when absent)."""
    if not isinstance(output, dict) or "cams" not in output:
        raise ValueError("multiscale_cam: the model must return a dict with key 'cams' of shape (B, K, h, w)")
    return output["cams"]


def multiscale_cam(
    model: nn.Module,
    image: Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
) -> Tensor:
    """Sum over rescaled (and flipped) copies of one image of the ReLU of a classifier's CAMs.

    Implements the multi-scale + flip CAM inference of PSA/IRN/EPS/RCA (see the module docstring)
    with :func:`multiscale_maps`, on the model's device, under ``torch.inference_mode()``: the ReLU
    is applied to each pass at feature resolution (IRN ``CAM.forward``), before the sum.

    Args:
        model: classifier in eval mode whose ``forward(images (B, 3, h, w))`` returns a dict with key
            ``"cams"``: raw (pre-ReLU) CAMs ``(B, K, h', w')`` for the ``K`` foreground classes.
        image: ``(3, H, W)`` float tensor, normalised the way the model was trained (any device).
        scales: positive resize factors; the input size is ``round(scale * H), round(scale * W)``.
        flip: also run the horizontally flipped image at each scale.

    Returns:
        ``(K, H, W)`` float32 tensor on the model's device, values >= 0 (unnormalised).

    Raises:
        ValueError: if ``image`` is not ``(3, H, W)``, ``scales`` is empty or not positive, the
            model is in training mode, or its output lacks a 4-D ``"cams"`` entry.
    """
    if model.training:
        raise ValueError("multiscale_cam: the model is in training mode; call model.eval() first "
                         "(batch-norm statistics and dropout would otherwise change the CAMs)")
    image = image.to(_model_device(model, image.device))
    return multiscale_maps(lambda batch: torch.relu(_cams_of(model(batch))), image, scales, flip)


def normalize_cams(cams: Tensor, tags: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Keep the CAMs of the tagged classes and scale each to [0, 1] by its maximum.

    ``cams[c] / (max(cams[c]) + eps)`` as in PSA/IRN/EPS (``eps = 1e-5``). The image-level tags are
    known for the images pseudo labels are made for (the training set), so untagged classes are
    dropped.

    Args:
        cams: ``(K, H, W)`` float tensor of non-negative CAMs (output of :func:`multiscale_cam`).
        tags: ``(K,)`` tensor, nonzero / True for the classes present in the image.
        eps: added to each maximum so that an all-zero map stays zero.

    Returns:
        ``(normalised (T, H, W) float32 in [0, 1], class indices (T,) int64)``: the ``T`` tagged
        classes in increasing tag index (0-based indices into the ``K`` foreground classes; add 1
        for the label value on datasets with a background class at label 0).

    Raises:
        ValueError: if ``cams`` is not 3-D or ``tags`` does not have ``K`` entries.
    """
    if cams.ndim != 3:
        raise ValueError(f"normalize_cams expects cams of shape (K, H, W), got {tuple(cams.shape)}")
    if tags.ndim != 1 or tags.shape[0] != cams.shape[0]:
        raise ValueError(f"normalize_cams: tags must have shape ({cams.shape[0]},) to match the CAMs, "
                         f"got {tuple(tags.shape)}")
    indices = torch.nonzero(tags.to(cams.device), as_tuple=False).flatten()
    selected = cams.float()[indices]
    maxima = selected.flatten(1).amax(dim=1)
    return selected / (maxima[:, None, None] + eps), indices.to(torch.int64)
