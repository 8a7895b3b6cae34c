"""Losses, one module each: RCA semantic contrast (more contrastive losses join this package)."""

from rca.losses.semantic_contrast import (mix_regions, mixed_semantic_contrast_loss,
                                          semantic_contrast_loss)

__all__ = ["mix_regions", "mixed_semantic_contrast_loss", "semantic_contrast_loss"]
