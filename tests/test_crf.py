"""Dense CRF wrappers (rca.crf) on synthetic images with a known colour edge."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rca.crf import crf_labels, dense_crf
from rca.io import load_label_png

EDGE = 20  # true object boundary: columns >= EDGE are the object


def edge_image(size: int = 40, seed: int = 0) -> np.ndarray:
    """Dark left part, bright right part from column EDGE on, with a little noise."""
    rng = np.random.default_rng(seed)
    image = np.where(np.arange(size) >= EDGE, 200, 40)[None, :, None].repeat(size, 0).repeat(3, 2)
    return np.clip(image + rng.integers(-10, 11, image.shape), 0, 255).astype(np.uint8)


def test_dense_crf_sums_to_one_and_snaps_a_blurred_unary_to_the_colour_edge():
    image = edge_image()
    columns = np.arange(40, dtype=np.float32)
    # A blurred, misplaced foreground score: 50% at column 15 instead of at the true edge (19.5).
    foreground = 1 / (1 + np.exp(-(columns - 15) / 3))
    probs = np.stack([1 - foreground, foreground])[:, None, :].repeat(40, axis=1).astype(np.float32)
    truth = np.broadcast_to(columns >= EDGE, (40, 40))

    refined = dense_crf(image, probs, preset="psa")
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-5)
    unary_accuracy = np.mean(probs.argmax(0) == truth)
    crf_accuracy = np.mean(refined.argmax(0) == truth)
    assert unary_accuracy == pytest.approx(0.9)  # columns 16..19 wrong
    assert crf_accuracy > 0.98 and crf_accuracy > unary_accuracy


def test_zero_iterations_return_the_clipped_unary_probabilities():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=(6, 7)).transpose(2, 0, 1).astype(np.float32)
    out = dense_crf(edge_image(7)[:6], probs, preset="deeplab", iterations=0)
    np.testing.assert_allclose(out, probs, atol=1e-4)


def test_dense_crf_parameter_and_shape_errors():
    image = edge_image(8)
    probs = np.full((2, 8, 8), 0.5, np.float32)
    with pytest.raises(ValueError, match="unknown preset"):
        dense_crf(image, probs, preset="fancy")
    with pytest.raises(ValueError, match="missing"):
        dense_crf(image, probs, preset=None, iterations=5)
    with pytest.raises(ValueError, match="image"):
        dense_crf(image[:4], probs)
    with pytest.raises(ValueError, match="image"):
        dense_crf(image.astype(np.float32), probs)
    np.testing.assert_array_equal(dense_crf(image, probs[:1]), np.ones((1, 8, 8), np.float32))
    explicit = dense_crf(image, probs, preset=None, iterations=10, gaussian_sxy=3, gaussian_compat=3,
                         bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10)
    np.testing.assert_allclose(explicit, dense_crf(image, probs, preset="psa"))


def test_crf_labels_cleans_a_noisy_label_map():
    image = edge_image()
    truth = np.broadcast_to(np.arange(40) >= EDGE, (40, 40)).astype(np.int64)
    rng = np.random.default_rng(2)
    noisy = np.where(rng.random(truth.shape) < 0.15, 1 - truth, truth)
    cleaned = crf_labels(image, noisy, num_labels=2)
    assert cleaned.dtype == np.int64 and cleaned.shape == truth.shape
    assert np.mean(noisy != truth) > 0.1
    assert np.mean(cleaned != truth) < 0.01
    with pytest.raises(ValueError, match="0..1"):
        crf_labels(image, noisy + 1, num_labels=2)


def test_missing_pydensecrf_gives_an_install_hint(monkeypatch):
    for name in ("pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    probs = np.full((2, 4, 4), 0.5, np.float32)
    with pytest.raises(ImportError, match="pip install pydensecrf2"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), probs)
    with pytest.raises(ImportError, match="pip install pydensecrf2"):
        crf_labels(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int64), 2)


def test_read_only_image_is_accepted():
    image = edge_image(8)
    image.flags.writeable = False  # like np.asarray(PIL.Image)
    out = dense_crf(image, np.full((2, 8, 8), 0.5, np.float32))
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)


def test_real_voc_images_keep_a_confident_ground_truth_unary():
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc12_mini" / "VOCdevkit" / "VOC2012"
    if not root.is_dir():
        pytest.skip(f"real data not found at {root}")
    for path in sorted((root / "JPEGImages").glob("*.jpg"))[:2]:
        with Image.open(path) as file:
            image = np.asarray(file.convert("RGB"))
        gt = load_label_png(root / "SegmentationClassAug" / f"{path.stem}.png")
        classes = np.unique(gt[gt != 255])  # background + the classes in this image only
        compact = np.searchsorted(classes, np.where(gt == 255, 0, gt))
        # 90% on the true class, the rest shared by the others.
        other = 0.1 / (len(classes) - 1)
        probs = np.where(np.arange(len(classes))[:, None, None] == compact, 0.9, other).astype(np.float32)
        refined = dense_crf(image, probs, preset="psa")
        np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-5)
        assert np.mean((refined.argmax(0) == compact)[gt != 255]) > 0.9, path.stem
