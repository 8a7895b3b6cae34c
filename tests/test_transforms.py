"""Joint transforms: image/mask alignment, padding, output shapes, reproducibility, round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from rca.data import build_dataset, denormalize, eval_transform, train_transform

# one well-separated colour per label, so a pixel's colour says which label it should carry
LABEL_COLORS = np.array([[20, 20, 20], [230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]], np.uint8)


def colour_coded_item(height: int = 72, width: int = 100, seed: int = 0) -> dict:
    """An item whose image is its mask painted with LABEL_COLORS (blocks, so edges are few)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, len(LABEL_COLORS), size=(height // 8 + 1, width // 8 + 1))
    mask = np.kron(coarse, np.ones((8, 8), np.int64))[:height, :width]
    return {"id": "x", "image": LABEL_COLORS[mask], "mask": mask, "tags": np.ones(4, np.float32)}


def decode_colours(image: np.ndarray) -> np.ndarray:
    """Label whose colour is nearest to each pixel of an (H, W, 3) image."""
    distance = ((image[:, :, None, :].astype(np.int64) - LABEL_COLORS[None, None].astype(np.int64)) ** 2).sum(-1)
    return distance.argmin(-1)


@pytest.mark.parametrize(
    "options",
    [dict(scale_range=(0.5, 1.5)), dict(resize_long=(60, 140)), dict(scale_range=(1.0, 1.0), hflip=False)],
)
def test_image_and_mask_stay_aligned(options):
    item = colour_coded_item()
    transform = train_transform(64, **options)
    torch.manual_seed(0)
    for _ in range(10):
        out = transform(item)
        assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.float32
        assert out["mask"].shape == (64, 64) and out["mask"].dtype == torch.int64
        mask = out["mask"].numpy()
        valid = mask != 255
        assert valid.sum() > 0.2 * mask.size
        agreement = (decode_colours(denormalize(out["image"]))[valid] == mask[valid]).mean()
        assert agreement > 0.97  # only block edges may blend under bilinear resizing
        assert set(np.unique(mask).tolist()) <= {0, 1, 2, 3, 4, 255}


def test_padding_when_image_smaller_than_crop():
    item = colour_coded_item(height=40, width=30)
    transform = train_transform(64, hflip=False)
    torch.manual_seed(1)
    offsets = set()
    for _ in range(8):
        out = transform(item)
        mask, image = out["mask"].numpy(), out["image"]
        rows, cols = np.nonzero(mask != 255)
        top, left = rows.min(), cols.min()
        offsets.add((top, left))
        assert (rows.max() - top + 1, cols.max() - left + 1) == (40, 30)  # whole image inside the crop
        assert np.array_equal(mask[top : top + 40, left : left + 30], item["mask"])
        assert (mask == 255).sum() == 64 * 64 - 40 * 30
        assert torch.all(image[:, torch.from_numpy(mask == 255)] == 0)  # padded with the mean colour
    assert len(offsets) > 1  # the position inside the crop is random


def test_resize_long_and_scale_range_sizes():
    item = colour_coded_item(height=60, width=90)
    torch.manual_seed(2)
    long_sides = []
    for _ in range(20):
        mask = train_transform(200, resize_long=(100, 150), hflip=False)(item)["mask"].numpy()
        rows, cols = np.nonzero(mask != 255)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert 100 <= width <= 150 and abs(height - width * 60 / 90) <= 1
        long_sides.append(width)
    assert max(long_sides) - min(long_sides) > 10
    for _ in range(20):
        mask = train_transform(200, scale_range=(0.5, 2.0), hflip=False)(item)["mask"].numpy()
        rows = np.nonzero((mask != 255).any(1))[0]
        assert 30 <= len(rows) <= 120


def test_hflip_and_colour_jitter_touch_only_what_they_should():
    item = colour_coded_item()
    transform = train_transform(100, hflip=True, color_jitter=0.4)  # 72x100 image: only rows padded
    torch.manual_seed(3)
    flipped = kept = 0
    for _ in range(20):
        out = transform(item)
        mask = out["mask"].numpy()
        rows, _ = np.nonzero(mask != 255)
        content = mask[rows.min() : rows.max() + 1]
        if np.array_equal(content, item["mask"]):
            kept += 1
        elif np.array_equal(content, item["mask"][:, ::-1]):
            flipped += 1
        else:
            raise AssertionError("mask changed by something other than a flip")
    assert flipped > 0 and kept > 0


def test_colour_jitter_changes_the_image_but_not_the_mask():
    item = colour_coded_item(height=64, width=64)
    # No rescale, no flip and a crop the size of the image: only the jitter can change the pixels.
    assert np.array_equal(denormalize(train_transform(64, hflip=False)(item)["image"]), item["image"])
    transform = train_transform(64, hflip=False, color_jitter=0.4)
    torch.manual_seed(4)
    outputs = [transform(item) for _ in range(4)]
    for out in outputs:
        assert np.array_equal(out["mask"].numpy(), item["mask"])
        change = np.abs(denormalize(out["image"]).astype(np.int64) - item["image"]).mean()
        assert change > 3  # grey levels, mean over pixels and channels
    assert not torch.equal(outputs[0]["image"], outputs[1]["image"])  # a new draw each call


def test_reproducible_from_torch_seed():
    item = colour_coded_item()
    transform = train_transform(48, scale_range=(0.5, 1.5), color_jitter=0.3)
    torch.manual_seed(7)
    first = transform(item)
    torch.manual_seed(7)
    second = transform(item)
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["mask"], second["mask"])


def test_eval_transform_round_trip_and_item_without_mask():
    dataset = build_dataset("synthetic", None, "val", num_images=2, transform=eval_transform())
    raw = build_dataset("synthetic", None, "val", num_images=2)[1]
    out = dataset[1]
    assert out["image"].shape == (3, 96, 96) and out["image"].dtype == torch.float32
    assert out["id"] == raw["id"] and torch.equal(out["mask"], torch.from_numpy(raw["mask"]))
    assert out["tags"].dtype == torch.float32 and torch.equal(out["tags"], torch.from_numpy(raw["tags"]))
    restored = denormalize(out["image"]).astype(np.int64)
    assert np.abs(restored - raw["image"]).max() <= 1
    assert abs(out["image"].mean().item()) < 2.0  # normalised, not 0..255

    no_mask = {"id": "y", "image": raw["image"], "tags": raw["tags"]}
    out = train_transform(64, scale_range=(0.5, 1.5))(no_mask)
    assert "mask" not in out and out["image"].shape == (3, 64, 64)
    assert "mask" not in eval_transform()(no_mask)


def test_batches_collate():
    transform = train_transform(64, resize_long=(64, 96))
    dataset = build_dataset("synthetic", None, "train", num_images=4, transform=transform)
    batch = default_collate([dataset[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 64, 64)
    assert batch["tags"].shape == (4, 4) and batch["id"] == [dataset.ids[i] for i in range(4)]


def test_bad_arguments():
    with pytest.raises(ValueError, match="not both"):
        train_transform(64, resize_long=(10, 20), scale_range=(0.5, 1.0))
    with pytest.raises(ValueError, match="scale_range"):
        train_transform(64, scale_range=(1.5, 0.5))
    with pytest.raises(ValueError, match="denormalize"):
        denormalize(torch.zeros(1, 3, 4, 4))
