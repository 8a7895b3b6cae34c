"""rca.classify: the region contrast of a batch against the memory bank, as train_cls calls it."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from rca.classify import region_contrast_loss
from rca.losses import mixed_semantic_contrast_loss, semantic_contrast_loss


class _Bank:
    """The one method of rca.memory.RegionalMemory that region_contrast_loss reads."""

    def __init__(self, keys: torch.Tensor, key_labels: torch.Tensor) -> None:
        self._keys = keys, key_labels

    def keys(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._keys


def test_region_contrast_loss_mixes_regions_across_images():
    """Image 0 has classes 0 and 1, image 1 has class 2: with the region images, the regions of
    image 0 can only be mixed with image 1's, so the loss equals the mix-up loss given
    ``image_index`` under the same random draws, and differs from the one mixing within images."""
    generator = torch.Generator().manual_seed(0)
    embeddings = F.normalize(torch.randn(3, 8, generator=generator), dim=1)
    outputs = {"region_embeddings": embeddings, "region_labels": torch.tensor([0, 1, 2]),
               "region_images": torch.tensor([0, 0, 1])}
    bank = _Bank(F.normalize(torch.randn(6, 8, generator=generator), dim=1), torch.tensor([0, 0, 1, 1, 2, 2]))
    cfg = SimpleNamespace(region_mixup=True, temperature=0.1)
    args = (embeddings, outputs["region_labels"], *bank.keys(), 0.1)

    def seeded(function, *extra, **kwargs):
        torch.manual_seed(1)
        return function(*extra, **kwargs)

    loss = seeded(region_contrast_loss, outputs, bank, cfg)
    assert torch.equal(loss, seeded(mixed_semantic_contrast_loss, *args, image_index=outputs["region_images"]))
    assert not torch.equal(loss, seeded(mixed_semantic_contrast_loss, *args, image_index=torch.tensor([0, 1, 2])))
    cfg.region_mixup = False
    assert torch.equal(region_contrast_loss(outputs, bank, cfg), semantic_contrast_loss(*args))
