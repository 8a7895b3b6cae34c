"""A generated demo set of coloured shapes on textured backgrounds: runs the pipeline with no data.

Each image has a low-saturation textured background (class 0: stripes or blotchy noise) and 1-3
objects. A foreground class is one shape with one hue: red discs, green squares, blue triangles,
yellow rings, magenta crosses, cyan bars. Object colours are jittered, objects are randomly placed,
sized, rotated and may overlap (larger ones are painted first, so smaller ones stay visible), and
pixel noise is added, so neither colour nor shape alone is pixel-exact. Masks are exact.

Everything is a pure function of ``(seed, split, index)``, so items are identical across processes,
workers and runs, and different splits hold different images. A 96x96 item takes about a
millisecond, and a small classifier learns the tags (and localises them in its CAMs) in minutes on
a CPU.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable

import cv2
import numpy as np

from rca.data.base import Item, SegmentationDataset
from rca.data.palette import make_palette
from rca.errors import DataError

SHAPES = ("disc", "square", "triangle", "ring", "cross", "bar")
SHAPE_COLORS = ((220, 45, 45), (45, 185, 70), (50, 90, 230), (235, 205, 40), (200, 60, 210), (40, 200, 205))
DEFAULT_NUM_IMAGES = {"train": 200}  # other splits: 50


def _shape_region(shape: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Boolean region of ``shape`` of size ``radius`` in rotated, centred coordinates ``u, v``."""
    au, av = np.abs(u), np.abs(v)
    if shape == "disc":
        return u * u + v * v <= radius**2
    if shape == "square":
        return np.maximum(au, av) <= 0.8 * radius
    if shape == "triangle":  # equilateral, circumradius = radius: three half-planes
        return (u <= radius / 2) & (-0.5 * u + 0.866 * v <= radius / 2) & (-0.5 * u - 0.866 * v <= radius / 2)
    if shape == "ring":
        d2 = u * u + v * v
        return (d2 <= radius**2) & (d2 >= (0.55 * radius) ** 2)
    if shape == "cross":
        return ((au <= 0.3 * radius) & (av <= radius)) | ((av <= 0.3 * radius) & (au <= radius))
    if shape == "bar":
        return (au <= radius) & (av <= 0.35 * radius)
    raise ValueError(f"unknown shape {shape!r}")


class SyntheticShapes(SegmentationDataset):
    """Coloured shapes on textured backgrounds; ``num_classes`` foreground shapes + background.

    Args:
        root: ignored (nothing is read from disk); accepted so every dataset is built alike.
        split: any name; the split is part of the seed, so ``train`` and ``val`` differ.
        transform: optional callable applied to each item dict.
        num_images: images in this split (default 200 for ``train``, 50 for any other split).
        image_size: side of the square images in pixels (>= 32).
        num_classes: number of FOREGROUND classes, 1..6 (the dataset's ``num_classes`` is this + 1).
        seed: base seed of the generator.

    Raises:
        ValueError: ``num_classes``, ``num_images`` or ``image_size`` out of range.
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str,
        transform: Callable[[Item], Item] | None = None,
        *,
        num_images: int | None = None,
        image_size: int = 96,
        num_classes: int = 4,
        seed: int = 0,
    ) -> None:
        if not 1 <= num_classes <= len(SHAPES):
            raise DataError(
                f"synthetic dataset: num_classes (foreground) must be in 1..{len(SHAPES)}, got {num_classes}"
            )
        if image_size < 32:
            raise DataError(f"synthetic dataset: image_size must be >= 32, got {image_size}")
        num_images = DEFAULT_NUM_IMAGES.get(split, 50) if num_images is None else num_images
        if num_images < 1:
            raise DataError(f"synthetic dataset: num_images must be >= 1, got {num_images}")
        self.split = split
        self.image_size = image_size
        self.seed = seed
        self._split_code = zlib.crc32(split.encode())
        centres = np.arange(image_size, dtype=np.float32) + 0.5
        self._x, self._y = np.meshgrid(centres, centres)  # pixel-centre coordinates, (S, S) each
        super().__init__(
            [f"{split}_{i:05d}" for i in range(num_images)], ("background",) + SHAPES[:num_classes],
            has_background=True, has_masks=True, palette=make_palette(num_classes + 1), transform=transform,
        )

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        """Generator for item ``index``: stream 0 draws the layout, stream 1 the appearance."""
        if not 0 <= index < len(self):
            raise IndexError(f"synthetic dataset index {index} out of range 0..{len(self) - 1}")
        return np.random.default_rng([self.seed, self._split_code, index, stream])

    def _objects(self, index: int) -> list[tuple[int, np.ndarray]]:
        """``[(label, region)]`` of item ``index`` in painting order (largest first)."""
        rng = self._rng(index, 0)
        size = self.image_size
        count = int(rng.integers(1, 4))
        labels = rng.integers(1, self.num_classes, size=count)
        radii = np.sort(rng.uniform(0.13, 0.30, size=count) * size)[::-1]
        objects = []
        for label, radius in zip(labels, radii):
            cx, cy = rng.uniform(0.6 * radius, size - 0.6 * radius, size=2)
            angle = rng.uniform(0, 2 * np.pi)
            cos, sin = np.cos(angle), np.sin(angle)
            dx, dy = self._x - cx, self._y - cy
            u, v = cos * dx + sin * dy, cos * dy - sin * dx
            objects.append((int(label), _shape_region(self.class_names[label], u, v, radius)))
        return objects

    def load_mask(self, index: int) -> np.ndarray:
        mask = np.zeros((self.image_size, self.image_size), dtype=np.int64)
        for label, region in self._objects(index):
            mask[region] = label
        return mask

    def load_image(self, index: int) -> np.ndarray:
        rng = self._rng(index, 1)
        size = self.image_size
        # background: grey-ish base colour plus stripes or smooth blotches
        image = np.empty((size, size, 3), dtype=np.float32)
        image[:] = rng.uniform(70, 180) + rng.uniform(-15, 15, size=3)
        amplitude = rng.uniform(15, 35)
        if rng.random() < 0.5:
            angle, frequency = rng.uniform(0, np.pi), rng.uniform(0.15, 0.6)
            pattern = np.sin(frequency * (np.cos(angle) * self._x + np.sin(angle) * self._y))
        else:
            coarse = rng.standard_normal((6, 6)).astype(np.float32)
            pattern = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        image += amplitude * pattern[..., None]
        for label, region in self._objects(index):
            image[region] = np.asarray(SHAPE_COLORS[label - 1]) + rng.uniform(-35, 35, size=3)
        image += rng.normal(0, 12, size=image.shape).astype(np.float32)
        return np.clip(image, 0, 255).astype(np.uint8)
