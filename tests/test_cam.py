"""Multi-scale CAM inference (rca.cam) and CAM pictures (rca.vis)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rca.cam import multiscale_cam, multiscale_maps, normalize_cams
from rca.vis import cam_overlay, make_panel


class RedChannelCAM(nn.Module):
    """CAM of class 0 = red channel, class 1 = minus the red channel, at 1/``stride`` resolution."""

    def __init__(self, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.batch_sizes = []

    def forward(self, images):
        self.batch_sizes.append(images.shape[0])
        red = images[:, :1]
        if self.stride > 1:
            red = F.avg_pool2d(red, self.stride, ceil_mode=True)
        return {"cams": torch.cat([red, -red], dim=1)}


def test_constant_image_gives_sum_over_scales_and_flips_and_relu():
    image = torch.zeros(3, 9, 13)
    image[0] = 0.5
    model = RedChannelCAM(stride=2).eval()
    cams = multiscale_cam(model, image, scales=(1.0, 0.5, 1.5, 2.0), flip=True)
    assert cams.shape == (2, 9, 13) and cams.dtype == torch.float32
    torch.testing.assert_close(cams[0], torch.full((9, 13), 0.5 * 4 * 2))  # 4 scales x 2 flips
    assert torch.all(cams[1] == 0)  # negative CAM removed by the ReLU
    assert model.batch_sizes == [2, 2, 2, 2]  # one forward pass per scale, image + flip together


def test_single_scale_without_flip_is_relu_of_the_cam():
    image = torch.randn(3, 8, 11)
    cams = multiscale_cam(RedChannelCAM().eval(), image, scales=(1.0,), flip=False)
    torch.testing.assert_close(cams[0], image[0].clamp(min=0))
    torch.testing.assert_close(cams[1], (-image[0]).clamp(min=0))


def test_flip_equivariance_and_flip_averaging():
    torch.manual_seed(0)
    image = torch.randn(3, 10, 14)
    model = RedChannelCAM(stride=2).eval()
    cams = multiscale_cam(model, image, scales=(1.0, 0.5, 1.5))
    flipped = multiscale_cam(model, image.flip(-1), scales=(1.0, 0.5, 1.5))
    torch.testing.assert_close(flipped, cams.flip(-1), atol=1e-5, rtol=1e-5)
    # Without flips the same sum is not symmetric: the flip pass really was flipped back.
    one_way = multiscale_cam(model, image, scales=(1.0, 0.5, 1.5), flip=False)
    assert not torch.allclose(one_way, one_way.flip(-1))


def test_upscaled_pass_of_a_smooth_image_matches_the_original_scale():
    # A stride-1 CAM of a bilinear-resampled constant-gradient image: scale 2 then back to (H, W)
    # reproduces the scale-1 map away from the border.
    rows = torch.linspace(-1, 1, 16)
    image = torch.zeros(3, 16, 16)
    image[0] = rows[:, None] + 2.0
    model = RedChannelCAM().eval()
    single = multiscale_cam(model, image, scales=(1.0,), flip=False)
    double = multiscale_cam(model, image, scales=(2.0,), flip=False)
    torch.testing.assert_close(double[0, 2:-2], single[0, 2:-2], atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
    model = RedChannelCAM()
    with pytest.raises(ValueError, match="eval"):
        multiscale_cam(model, torch.zeros(3, 4, 4))
    model.eval()
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        multiscale_cam(model, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="positive"):
        multiscale_cam(model, torch.zeros(3, 4, 4), scales=(1.0, 0.0))


def test_normalize_cams_keeps_tagged_classes_scaled_by_their_maximum():
    cams = torch.tensor([[[0.0, 2.0], [4.0, 1.0]],
                         [[9.0, 9.0], [9.0, 9.0]],
                         [[0.0, 0.0], [0.0, 0.0]]])
    normalised, indices = normalize_cams(cams, torch.tensor([True, False, True]))
    assert indices.tolist() == [0, 2] and indices.dtype == torch.int64
    torch.testing.assert_close(normalised[0], cams[0] / (4.0 + 1e-5))
    assert torch.all(normalised[1] == 0)  # an all-zero map stays zero
    assert normalised.max() <= 1.0
    with pytest.raises(ValueError, match="tags"):
        normalize_cams(cams, torch.ones(2))


def test_cam_overlay_colours_and_blending():
    image = np.full((4, 5, 3), 100, np.uint8)
    cold = cam_overlay(image, np.zeros((4, 5)), alpha=1.0)
    hot = cam_overlay(image, np.ones((4, 5)), alpha=1.0)
    assert cold[0, 0, 2] > cold[0, 0, 0]  # jet(0) is blue (RGB order)
    assert hot[0, 0, 0] > hot[0, 0, 2]  # jet(1) is red
    np.testing.assert_array_equal(cam_overlay(image, np.ones((4, 5)), alpha=0.0), image)
    with pytest.raises(ValueError):
        cam_overlay(image, np.zeros((5, 4)))


def test_make_panel_layout():
    palette = np.zeros((256, 3), np.uint8)
    palette[1] = (200, 10, 10)
    image = np.zeros((40, 30, 3), np.uint8)
    label = np.ones((40, 30), np.int64)
    panel = make_panel(image, np.zeros((2, 40, 30)), ["cat", "dog"], label, label, palette)
    assert panel.shape == (40, 5 * 30 + 4 * 4, 3) and panel.dtype == np.uint8
    assert tuple(panel[-1, -1]) == (200, 10, 10)  # ground-truth tile coloured by the palette
    assert tuple(panel[-1, 30]) == (255, 255, 255)  # gap between tiles
    without_gt = make_panel(image, np.zeros((2, 40, 30)), ["cat", "dog"], label, None, palette)
    assert without_gt.shape == (40, 4 * 30 + 3 * 4, 3)
    with pytest.raises(ValueError, match="class names"):
        make_panel(image, np.zeros((2, 40, 30)), ["cat"], label, None, palette)


def test_multiscale_maps_of_softmax_average_to_probabilities():
    torch.manual_seed(1)
    image = torch.randn(3, 7, 9)
    scales = (1.0, 0.5, 1.5)
    summed = multiscale_maps(lambda batch: torch.softmax(batch, dim=1), image, scales, flip=True)
    assert summed.shape == (3, 7, 9)
    torch.testing.assert_close(summed.sum(0) / (len(scales) * 2), torch.ones(7, 9))
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        multiscale_maps(lambda batch: batch[0], image, scales)


class ScaleSignCAM(nn.Module):
    """CAM of class 0 = red channel at full size and -3 x red below it; class 1 = minus class 0."""

    def __init__(self, full_height: int):
        super().__init__()
        self.full_height = full_height

    def forward(self, images):
        sign = 1.0 if images.shape[-2] >= self.full_height else -3.0
        red = sign * images[:, :1]
        return {"cams": torch.cat([red, -red], dim=1)}


def test_relu_is_applied_to_each_pass_before_the_sum():
    # PSA/IRN/EPS: a negative map at one scale must not cancel a positive one at another.
    image = torch.zeros(3, 8, 10)
    image[0] = 0.5
    cams = multiscale_cam(ScaleSignCAM(full_height=8).eval(), image, scales=(1.0, 0.5), flip=True)
    # class 0: scale 1 gives +0.5 per pass (x2 flips), scale 0.5 gives -1.5 -> 0 after the ReLU.
    torch.testing.assert_close(cams[0], torch.full((8, 10), 1.0))
    # class 1: scale 1 gives -0.5 -> 0, scale 0.5 gives +1.5 per pass (x2 flips).
    torch.testing.assert_close(cams[1], torch.full((8, 10), 3.0))
    # (one ReLU after the sum would give relu(1 - 3) = 0 and relu(-1 + 3) = 2)
