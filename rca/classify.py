"""Training and evaluation pieces of the CAM classifier (stage 1) that are not the model itself.

* :func:`region_contrast_loss`: the semantic contrast of a batch's regions against the memory bank
  (RCA, Zhou et al., CVPR 2022, arXiv:2203.09653, Sec. 3.2), plain or with region mix-up;
* :func:`evaluate_tags`: tag-prediction mAP on a split, the validation score of ``train_cls``.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from rca.losses import mixed_semantic_contrast_loss, semantic_contrast_loss
from rca.metrics import average_precision


def region_contrast_loss(outputs: dict, memory, cfg) -> torch.Tensor:
    """Semantic contrast of ``outputs``' region embeddings against the bank's entries.

    Args:
        outputs: :meth:`rca.models.classifier.RCAClassifier.forward` called with tags
            (``region_embeddings`` ``(N, D)``, ``region_labels`` ``(N,)``, ``region_images``
            ``(N,)``: the mix-up pairs regions of different images only).
        memory: the :class:`rca.memory.RegionalMemory` (its filled entries are the contrast set).
        cfg: the ``cls`` config section: ``region_mixup`` picks the mix-up variant, ``temperature``
            the InfoNCE temperature.

    Returns:
        Scalar float tensor.
    """
    embeddings, labels = outputs["region_embeddings"].float(), outputs["region_labels"]
    if cfg.region_mixup:
        return mixed_semantic_contrast_loss(embeddings, labels, *memory.keys(), cfg.temperature,
                                            image_index=outputs["region_images"])
    return semantic_contrast_loss(embeddings, labels, *memory.keys(), cfg.temperature)


@torch.inference_mode()
def evaluate_tags(model: torch.nn.Module, dataset, device: torch.device, num_workers: int = 0,
                  progress: bool = True) -> dict:
    """Tag-prediction mAP of a classifier on a split, one full-size image at a time.

    Args:
        model: classifier returning ``{"scores": (B, K) logits}``; put back in training mode after.
        dataset: items with ``image`` ``(3, H, W)`` (``eval_transform``) and ``tags`` ``(K,)``.
        num_workers: DataLoader worker processes reading the images.
        progress: show a progress bar (``val``, cleared when done).

    Returns:
        ``{"map": mAP in %, "ap": [AP in % of each of the K classes]}`` (:func:`rca.metrics.average_precision`).
    """
    model.eval()
    scores, targets = [], []
    loader = DataLoader(dataset, batch_size=1, num_workers=num_workers)
    for item in tqdm(loader, desc="val", disable=not progress, leave=False):
        scores.append(torch.sigmoid(model(item["image"].to(device))["scores"].float()).cpu())
        targets.append(item["tags"])
    model.train()
    scores, targets = torch.cat(scores), torch.cat(targets)
    per_class = [average_precision(scores[:, [k]], targets[:, [k]]) for k in range(scores.shape[1])]
    return {"map": average_precision(scores, targets), "ap": per_class}
