"""Pictures for looking at CAMs and pseudo labels: heat-map overlays and side-by-side panels.

All images are ``(H, W, 3)`` uint8 RGB (OpenCV's colour maps are BGR and converted here).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

_GAP = 4  # pixels of white between panel tiles


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a jet-coloured CAM over an image: ``(1 - alpha) * image + alpha * jet(cam)``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        cam: ``(H, W)`` float in [0, 1] (values outside are clipped); 0 = blue, 1 = red.
        alpha: weight of the heat map, in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: if the shapes do not match or ``image`` is not uint8 RGB.
    """
    image = np.asarray(image)
    cam = np.asarray(cam, dtype=np.float32)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or cam.shape != image.shape[:2]:
        raise ValueError(f"cam_overlay: need a uint8 (H, W, 3) image and an (H, W) CAM, got {image.dtype} "
                         f"{image.shape} and {cam.shape}")
    heat = cv2.applyColorMap(np.round(np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(np.ascontiguousarray(image), 1 - alpha, heat, alpha, 0)


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner of a copy of ``tile`` (white on a black outline)."""
    tile = np.ascontiguousarray(tile).copy()
    scale = max(0.35, min(tile.shape[:2]) / 400)
    origin = (3, 3 + int(round(14 * scale)))
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(tile, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
    return tile


def make_panel(
    image: np.ndarray,
    cams: np.ndarray,
    class_names: Sequence[str],
    pseudo_label: np.ndarray,
    gt: np.ndarray | None,
    palette: np.ndarray,
) -> np.ndarray:
    """One row of captioned tiles: image | CAM overlay per tagged class | pseudo label | ground truth.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        cams: ``(T, H, W)`` float in [0, 1], one map per tagged class.
        class_names: ``T`` captions for the CAM tiles.
        pseudo_label: ``(H, W)`` integer labels in 0..255 (255 = ignore).
        gt: ``(H, W)`` integer ground truth, or None to leave its tile out.
        palette: ``(256, 3)`` uint8 RGB colour of each label value.

    Returns:
        ``(H, n * W + (n - 1) * 4, 3)`` uint8 RGB with ``n = T + 2`` (``T + 3`` with ``gt``) tiles
        separated by 4-pixel white gaps.

    Raises:
        ValueError: on mismatched shapes or a palette that is not ``(256, 3)``.
    """
    image = np.asarray(image)
    cams = np.asarray(cams, dtype=np.float32)
    palette = np.asarray(palette, dtype=np.uint8)
    height, width = image.shape[:2]
    if cams.ndim != 3 or cams.shape[1:] != (height, width) or len(class_names) != cams.shape[0]:
        raise ValueError(f"make_panel: need (T, {height}, {width}) CAMs and T class names, got CAMs "
                         f"{cams.shape} and {len(class_names)} names")
    if palette.shape != (256, 3):
        raise ValueError(f"make_panel: palette must be (256, 3), got {palette.shape}")
    labelled = [("pseudo label", pseudo_label)] + ([("ground truth", gt)] if gt is not None else [])
    for name, label in labelled:
        if np.shape(label) != (height, width):
            raise ValueError(f"make_panel: {name} must be ({height}, {width}), got {np.shape(label)}")

    tiles = [_caption(image, "image")]
    tiles += [_caption(cam_overlay(image, cam), name) for cam, name in zip(cams, class_names)]
    tiles += [_caption(palette[np.asarray(label).astype(np.int64)], name) for name, label in labelled]
    gap = np.full((height, _GAP, 3), 255, dtype=np.uint8)
    row = [tiles[0]]
    for tile in tiles[1:]:
        row += [gap, tile]
    return np.concatenate(row, axis=1)
