"""Colour tables that turn label maps into palette PNGs and visualisations.

A palette is a ``(256, 3)`` uint8 array: row ``k`` is the RGB colour of label value ``k``; row 255 is
the colour of ignored pixels. :func:`rca.io.save_label_png` writes it into the PNG, so label files
open in any image viewer with the dataset's usual colours.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE_INDEX = 255
IGNORE_COLOR = (224, 224, 192)  # the PASCAL VOC colour of index 255 ("void" borders)


def make_palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map for labels ``0 .. num_classes - 1``.

    Label ``k`` gets the colour of the VOC development kit's ``labelcolormap`` (the bits of ``k``
    spread over the high bits of R, G and B: 0 black, 1 dark red, 2 dark green, ...), so a VOC label
    PNG written with ``make_palette(21)`` looks exactly like the official ones. Row 255 is
    ``IGNORE_COLOR`` (which is also what the VOC rule gives for 255); unused rows are black.

    Args:
        num_classes: number of label values in use, 1 .. 255.

    Returns:
        ``(256, 3)`` uint8 array.

    Raises:
        ValueError: if ``num_classes`` is outside 1 .. 255 (255 is reserved for "ignore").
    """
    if not 1 <= num_classes <= IGNORE_INDEX:
        raise ValueError(f"make_palette: num_classes must be in 1..255, got {num_classes}")
    labels = np.arange(num_classes)
    palette = np.zeros((256, 3), dtype=np.uint8)
    for j in range(8):  # bit 3j + c of the label becomes bit 7 - j of channel c
        for c in range(3):
            palette[:num_classes, c] |= (((labels >> (3 * j + c)) & 1) << (7 - j)).astype(np.uint8)
    palette[IGNORE_INDEX] = IGNORE_COLOR
    return palette


def palette_from_colors(colors: Sequence[Sequence[int]]) -> np.ndarray:
    """A palette from a dataset's own colour list (e.g. CamVid's), ignore colour at row 255.

    Args:
        colors: ``num_classes`` RGB triples, 0..255 each; ``colors[k]`` is the colour of label ``k``.

    Returns:
        ``(256, 3)`` uint8 array.

    Raises:
        ValueError: if ``colors`` is not a list of at most 255 RGB triples in 0..255.
    """
    array = np.asarray(colors)
    if array.ndim != 2 or array.shape[1] != 3 or not 1 <= len(array) <= IGNORE_INDEX:
        raise ValueError(f"palette_from_colors: expected 1..255 RGB triples, got shape {array.shape}")
    if array.min() < 0 or array.max() > 255:
        raise ValueError("palette_from_colors: colour values must be in 0..255")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(array)] = array
    palette[IGNORE_INDEX] = IGNORE_COLOR
    return palette
