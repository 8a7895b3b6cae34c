"""DeepLab-v2 training loss, and segmentation inference and evaluation: multi-scale + flip prediction,
optional dense CRF, mIoU.

Evaluation protocol (DeepLab-v2, Chen et al., TPAMI 2018, arXiv:1606.00915; the WSSS papers that train it on pseudo
labels follow it): the network sees each full-size val image at every scale in ``scales`` (and its
horizontal flip), the softmax probabilities are resized back to the image size and averaged, an
optional dense CRF (``deeplab`` preset) refines them, and the argmax is scored against the true mask
with one dataset-level confusion matrix (255 = ignore), mIoU in percent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from rca.cam import multiscale_maps
from rca.crf import dense_crf
from rca.data.transforms import denormalize
from rca.io import save_label_png
from rca.metrics import ConfusionMatrix


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize ``(B, C, h, w)`` logits to ``size`` (the label size) for the loss or argmax."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def segmentation_loss(outputs: dict, masks: Tensor) -> Tensor:
    """DeepLab-v2 training loss: cross-entropy (255 ignored) on logits upsampled to the mask size.

    With MSC (:class:`rca.models.deeplab.MSC`) the loss is summed over the three scales' logits and
    their max fusion, as in DeepLab-v2's multi-scale training.

    Args:
        outputs: the model's dict: ``"logits"`` ``(B, C, h, w)`` and, under MSC, ``"logits_scales"``
            (a list of ``(B, C, h_s, w_s)``).
        masks: ``(B, H, W)`` int64 labels in ``0 .. C - 1`` or 255.

    Returns:
        Scalar float tensor (nats per labelled pixel, summed over the outputs).
    """
    logits = outputs.get("logits_scales", []) + [outputs["logits"]]
    return sum(F.cross_entropy(upsample_logits(x, masks.shape[-2:]), masks, ignore_index=255) for x in logits)


def predict_probs(model: nn.Module, image: Tensor, scales: Sequence[float] = (1.0,), flip: bool = False) -> Tensor:
    """Class probabilities of one image, averaged over scales (and horizontal flips).

    Args:
        model: segmentation network in eval mode; ``forward(images)["logits"]`` is ``(B, C, h, w)``.
        image: ``(3, H, W)`` normalised float tensor.
        scales: input resize factors (e.g. ``[0.5, 0.75, 1.0, 1.25, 1.5]``); ``[1.0]`` = single scale.
        flip: add the horizontal flip of every scale.

    Returns:
        ``(C, H, W)`` float32 probabilities on the model's device; each pixel sums to 1.
    """
    image = image.to(next(model.parameters()).device)
    summed = multiscale_maps(lambda batch: torch.softmax(model(batch)["logits"].float(), dim=1), image, scales, flip)
    return summed / (len(scales) * (2 if flip else 1))


@torch.inference_mode()
def evaluate_segmentation(
    model: nn.Module,
    dataset,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crf: str | None = None,
    prediction_dir: Path | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
) -> dict:
    """Score a segmentation network on a split with masks (one confusion matrix over the split).

    Args:
        model: network in eval mode (see :func:`predict_probs`).
        dataset: items with ``image`` ``(3, H, W)`` normalised tensors (``eval_transform``), ``mask``
            ``(H, W)`` int64 (255 = ignore) and ``id``; attributes ``num_classes``, ``class_names``,
            ``palette``.
        crf: ``None`` or a :data:`rca.crf.CRF_PRESETS` name (DeepLab uses ``"deeplab"``).
        prediction_dir: if given, every prediction is written there as ``<id>.png`` (palette PNG).
        shard: ``(rank, world_size)``: this process scores images ``rank, rank + world_size, ...``;
            the confusion matrices of all ranks are summed before the scores are computed.

    Returns:
        :meth:`rca.metrics.ConfusionMatrix.compute` output (``miou`` in percent, ``iou_by_name``, ...),
        all-reduced across ranks when the dataset is sharded over a process group.
    """
    matrix = ConfusionMatrix(dataset.num_classes, class_names=dataset.class_names)
    rank, world_size = shard
    for index in tqdm(range(rank, len(dataset), world_size), desc="eval", disable=not progress, leave=False):
        item = dataset[index]
        probs = predict_probs(model, item["image"], scales, flip)
        if crf is not None:
            refined = dense_crf(denormalize(item["image"]), probs.cpu().numpy(), preset=crf)
            prediction = torch.from_numpy(np.argmax(refined, axis=0))
        else:
            prediction = probs.argmax(0).cpu()
        matrix.update(prediction, torch.as_tensor(item["mask"]))
        if prediction_dir is not None:
            save_label_png(Path(prediction_dir) / f"{item['id']}.png", prediction.numpy(), dataset.palette)
    matrix.all_reduce()
    return matrix.compute()
