"""Joint image + mask transforms for training and evaluation, on torchvision.transforms.v2.

The image is wrapped as ``tv_tensors.Image`` and the mask as ``tv_tensors.Mask``, so every geometric
step (resize, flip, crop) moves both identically: bilinear (antialiased) for the image, nearest for
the mask; colour steps touch the image only. All randomness comes from torch's global RNG, which the
stages seed per rank and per DataLoader worker.

Training recipe (``train_transform``), the PSA / IRN one for the classifier and DeepLab's for the
segmentation network: random rescale (long side uniform in ``resize_long``, or the whole image by a
factor uniform in ``scale_range``), horizontal flip, optional colour jitter, ImageNet normalisation,
then a random ``crop_size`` crop. An image smaller than the crop is padded AFTER normalisation with
0 (i.e. the mean colour) and its mask with 255, and lies entirely inside the crop at a random
offset, as in IRN's ``imutils.random_crop``.

The batches that ``torch.utils.data.default_collate`` makes from these items (stacked ``image``,
``mask``, ``tags``; ``id`` as a list) are what the trainers expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from rca.data.palette import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Item = dict[str, Any]


class _RandomRescale(v2.Transform):
    """Resize by a random factor: the long side to ``uniform(long_range)`` pixels, or the image by
    ``uniform(scale_range)``. Bilinear + antialias for images, nearest-exact for masks."""

    def __init__(self, long_range: tuple[int, int] | None = None, scale_range: tuple[float, float] | None = None):
        super().__init__()
        if (long_range is None) == (scale_range is None):
            raise ValueError("give exactly one of long_range and scale_range")
        self.long_range = None if long_range is None else tuple(long_range)  # lists come from YAML
        self.scale_range = None if scale_range is None else tuple(scale_range)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        if self.long_range is not None:
            low, high = self.long_range
            factor = float(torch.randint(low, high + 1, ())) / max(height, width)
        else:
            low, high = self.scale_range
            factor = low + (high - low) * float(torch.rand(()))
        return {"size": [max(1, round(height * factor)), max(1, round(width * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        mode = InterpolationMode.NEAREST_EXACT if isinstance(inpt, tv_tensors.Mask) else InterpolationMode.BILINEAR
        return self._call_kernel(F.resize, inpt, params["size"], interpolation=mode, antialias=True)


class JointTransform:
    """Apply a v2 pipeline to an item's image and mask together; return tensors.

    Input item: ``image`` (H, W, 3) uint8 numpy RGB, optional ``mask`` (H, W) integer numpy, optional
    ``tags`` (T,) float numpy, ``id`` and any other keys (passed through unchanged).
    Output item: ``image`` (3, H', W') float32 tensor, ``mask`` (H', W') int64 tensor and ``tags``
    (T,) float32 tensor (each when the input had one).
    """

    def __init__(self, pipeline: v2.Transform) -> None:
        self.pipeline = pipeline

    def __call__(self, item: Item) -> Item:
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(item["image"])).permute(2, 0, 1))
        inputs = [image]
        if "mask" in item:
            inputs.append(tv_tensors.Mask(torch.as_tensor(item["mask"], dtype=torch.int64)))
        outputs = self.pipeline(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        result = dict(item)
        result["image"] = outputs[0].as_subclass(torch.Tensor)
        if "mask" in item:
            result["mask"] = outputs[1].as_subclass(torch.Tensor)
        if "tags" in item:
            result["tags"] = torch.as_tensor(item["tags"], dtype=torch.float32)
        return result

    def __repr__(self) -> str:
        return f"JointTransform({self.pipeline})"


def _normalize(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def train_transform(
    crop_size: int,
    resize_long: tuple[int, int] | None = None,
    scale_range: tuple[float, float] | None = None,
    hflip: bool = True,
    color_jitter: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> JointTransform:
    """Training augmentation: rescale, flip, colour jitter, normalise, crop (see module docstring).

    Args:
        crop_size: side of the square output, pixels.
        resize_long: ``(low, high)``: long side resized to an integer uniform in [low, high]
            (PSA / IRN classification recipe, e.g. (320, 640)).
        scale_range: ``(low, high)``: image scaled by a factor uniform in [low, high] (DeepLab
            recipe, e.g. (0.5, 1.5)). At most one of ``resize_long`` and ``scale_range``; neither:
            no rescaling.
        hflip: horizontal flip with probability 0.5.
        color_jitter: brightness, contrast and saturation jitter strength (0 = off); hue jitter is
            a third of it (PSA's ``ColorJitter(0.3, 0.3, 0.3, 0.1)`` for 0.3). Image only.
        mean, std: normalisation constants of the backbone (RGB, for images in [0, 1]).

    Returns:
        A callable item -> item with ``image`` (3, crop, crop) float32 normalised, ``mask``
        (crop, crop) int64 with 255 in padding and ignore regions (when the item has a mask),
        ``tags`` float32 tensor (when the item has tags), ``id`` unchanged.

    Raises:
        ValueError: both ``resize_long`` and ``scale_range`` given, or a bad range / crop size.
    """
    if resize_long is not None and scale_range is not None:
        raise ValueError("train_transform: give resize_long or scale_range, not both")
    if crop_size < 1:
        raise ValueError(f"train_transform: crop_size must be positive, got {crop_size}")
    for name, bounds in (("resize_long", resize_long), ("scale_range", scale_range)):
        if bounds is not None and not 0 < bounds[0] <= bounds[1]:
            raise ValueError(f"train_transform: {name} must be (low, high) with 0 < low <= high, got {bounds}")
    steps: list[v2.Transform] = []
    if resize_long is not None or scale_range is not None:
        steps.append(_RandomRescale(resize_long, scale_range))
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if color_jitter > 0:
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter, hue=min(0.5, color_jitter / 3)))
    steps += _normalize(mean, std)
    steps.append(
        v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0.0, tv_tensors.Mask: IGNORE_INDEX})
    )
    return JointTransform(v2.Compose(steps))


def eval_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> JointTransform:
    """Evaluation transform: no geometry, image to a normalised float tensor, mask to int64.

    Returns:
        A callable item -> item with ``image`` (3, H, W) float32 normalised, ``mask`` (H, W) int64
        (when the item has a mask), ``tags`` float32 tensor (when it has tags), ``id`` unchanged.
    """
    return JointTransform(v2.Compose(_normalize(mean, std)))


def denormalize(
    image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """Undo the normalisation of a ``(3, H, W)`` float image for display.

    Returns:
        ``(H, W, 3)`` uint8 RGB numpy array (values rounded and clipped to 0..255).
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"denormalize expects a (3, H, W) image, got shape {tuple(image.shape)}")
    mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    rgb = (image.detach() * std_t + mean_t).mul(255).round().clamp(0, 255).to(torch.uint8)
    return rgb.permute(1, 2, 0).cpu().numpy()
