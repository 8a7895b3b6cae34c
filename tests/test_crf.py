"""Dense CRF wrappers (rca.crf) on synthetic images with a known colour edge."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rca.crf import CRF_PRESETS, crf_labels, dense_crf
from rca.io import load_label_png

from helpers import EDGE, blurred_edge, edge_image

PSA_KERNELS = dict(iterations=10, gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=80, bilateral_srgb=13,
                   bilateral_compat=10)
DEEPLAB_KERNELS = dict(iterations=10, gaussian_sxy=1, gaussian_compat=3, bilateral_sxy=67, bilateral_srgb=3,
                       bilateral_compat=4)


def blurred_probs() -> np.ndarray:
    """``(2, 40, 40)`` [background, object] probabilities of edge_image, 50% at column 15 instead of
    at the true edge (19.5): columns 16..19 wrong before the CRF."""
    foreground = blurred_edge(15)
    return np.stack([1 - foreground, foreground])


@pytest.mark.parametrize("preset", ["psa", "deeplab"])
def test_dense_crf_sums_to_one_and_snaps_a_blurred_unary_to_the_colour_edge(preset):
    image, probs = edge_image(), blurred_probs()
    truth = np.broadcast_to(np.arange(40) >= EDGE, (40, 40))

    refined = dense_crf(image, probs, preset=preset)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-5)
    assert np.mean(probs.argmax(0) == truth) == pytest.approx(0.9)  # columns 16..19 wrong
    assert np.mean(refined.argmax(0) == truth) > 0.98
    # The colour kernel does the work: the same unary on a flat grey image keeps a blurred boundary.
    flat = dense_crf(np.full_like(image, 120), probs, preset=preset)
    assert np.mean(flat.argmax(0) == truth) < 0.95


def test_zero_iterations_return_the_clipped_unary_probabilities():
    # No mean-field step: the kernels never act (the preset tests are above).
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=(6, 7)).transpose(2, 0, 1).astype(np.float32)
    out = dense_crf(edge_image(7)[:6], probs, preset="deeplab", iterations=0)
    np.testing.assert_allclose(out, probs, atol=1e-4)


def test_presets_are_their_published_kernels():
    # Non-uniform probabilities: mean field leaves a uniform unary uniform whatever the kernels.
    image, probs = edge_image(), blurred_probs()
    psa = dense_crf(image, probs, preset="psa")
    deeplab = dense_crf(image, probs, preset="deeplab")
    np.testing.assert_allclose(psa, dense_crf(image, probs, preset=None, **PSA_KERNELS), atol=1e-6)
    np.testing.assert_allclose(deeplab, dense_crf(image, probs, preset=None, **DEEPLAB_KERNELS), atol=1e-6)
    assert np.abs(psa - deeplab).max() > 0.02
    assert {name: vars(params) for name, params in CRF_PRESETS.items()} == {"psa": PSA_KERNELS,
                                                                           "deeplab": DEEPLAB_KERNELS}
    # A keyword overrides the preset: PSA with DeepLab's colour kernel is neither preset.
    mixed = dense_crf(image, probs, preset="psa", bilateral_sxy=67, bilateral_srgb=3, bilateral_compat=4)
    np.testing.assert_allclose(mixed, dense_crf(image, probs, preset=None, **{
        **PSA_KERNELS, "bilateral_sxy": 67, "bilateral_srgb": 3, "bilateral_compat": 4}), atol=1e-6)
    assert np.abs(mixed - psa).max() > 0.02 and np.abs(mixed - deeplab).max() > 0.02


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
