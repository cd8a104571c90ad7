"""Preprocessing from the manifest's InputSpec, and mapping boxes back to the frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_sdk.manifest import InputSpec
from edge_sdk.preprocess import Preprocessor, area_resize


def _frame(h: int, w: int) -> np.ndarray:
    frame = np.zeros((h, w, 3), np.uint8)
    frame[..., 0] = 10  # B
    frame[..., 2] = 200  # R
    return frame


def test_stretch_rgb_nchw_normalises_per_channel():
    spec = InputSpec("x", (1, 3, 8, 8), resize="stretch", mean=(100, 0, 10), std=(2, 1, 5))
    tensor, t = Preprocessor(spec)(_frame(16, 32))
    assert tensor.shape == (1, 3, 8, 8) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0, :, 0, 0], [(200 - 100) / 2, 0.0, (10 - 10) / 5])
    np.testing.assert_allclose(t.to_frame(np.array([[0, 0, 8, 8]], np.float32)), [[0, 0, 32, 16]])


def test_bgr_nhwc_keeps_channel_order():
    spec = InputSpec("x", (1, 4, 4, 3), layout="NHWC", color="BGR", mean=(0,) * 3, std=(1,) * 3)
    tensor, _ = Preprocessor(spec)(_frame(4, 4))
    assert tensor.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(tensor[0, 0, 0], [10, 0, 200])


def test_letterbox_pads_and_maps_boxes_back_exactly():
    spec = InputSpec("x", (1, 3, 320, 320), resize="letterbox", pad_value=114)
    tensor, t = Preprocessor(spec)(_frame(480, 640))
    # 640x480 -> scale 0.5 -> 320x240, padded 40 px top and bottom
    assert (t.scale_x, t.scale_y, t.pad_x, t.pad_y) == (0.5, 0.5, 0, 40)
    np.testing.assert_allclose(tensor[0, 1, 0, 0], 114 / 255)  # padding row
    np.testing.assert_allclose(tensor[0, 0, 100, 100], 200 / 255)  # image (R first in RGB)
    box = np.array([[10, 50, 110, 150], [-5, 30, 400, 300]], np.float32)
    np.testing.assert_allclose(t.to_frame(box), [[20, 20, 220, 220], [0, 0, 640, 480]])


def test_center_crop_takes_the_middle():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, 50:150] = 255  # the middle 100 columns are white
    spec = InputSpec("x", (1, 3, 50, 50), resize="center-crop", crop_fraction=1.0,
                     mean=(0,) * 3, std=(255,) * 3)
    tensor, t = Preprocessor(spec)(frame)
    assert np.all(tensor > 0.99)
    np.testing.assert_allclose(t.to_frame(np.array([[0, 0, 50, 50]], np.float32)),
                               [[50, 0, 150, 100]])


@pytest.mark.parametrize(("dtype", "scale", "zero_point", "expected"), [
    ("int8", 1 / 128, 0, 127),  # (200 - 127) / 128 = 0.57 -> 73; R pixel
    ("uint8", 1 / 255, 0, 200),
])
def test_integer_inputs_are_quantized(dtype, scale, zero_point, expected):
    mean = (127,) * 3 if dtype == "int8" else (0,) * 3
    std = (128,) * 3 if dtype == "int8" else (255,) * 3
    spec = InputSpec("x", (1, 3, 4, 4), dtype=dtype, mean=mean, std=std,
                     quant=(scale, zero_point))
    tensor, _ = Preprocessor(spec)(_frame(4, 4))
    assert tensor.dtype == np.dtype(dtype)
    value = (200 - mean[0]) / std[0] / scale + zero_point
    assert tensor[0, 0, 0, 0] == int(np.rint(value))
    assert tensor[0, 0, 0, 0] <= expected


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize(("mean", "std"), [((123.7, 116.3, 103.5), (58.4, 57.1, 57.4)),
                                           ((127.0,) * 3, (128.0,) * 3)])
def test_normalisation_is_the_plain_formula_in_either_layout(layout, mean, std):
    """The planar fast path computes exactly (pixel - mean) / std, channel by channel."""
    frame = np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)
    shape = (1, 3, 40, 50) if layout == "NCHW" else (1, 40, 50, 3)
    tensor, _ = Preprocessor(InputSpec("x", shape, layout=layout, mean=mean, std=std))(frame)
    rgb = frame[..., ::-1].astype(np.float32)
    expected = (rgb - np.float32(mean)) * (1 / np.float32(std))
    if layout == "NCHW":
        expected = expected.transpose(2, 0, 1)
    assert tensor.flags.c_contiguous
    np.testing.assert_array_equal(tensor[0], expected)


def test_one_channel_model_gets_one_channel_even_with_a_repeated_mean():
    spec = InputSpec("x", (1, 1, 28, 28), mean=(0.0, 0.0, 0.0), std=(255.0,) * 3)
    tensor, _ = Preprocessor(spec)(np.full((28, 28), 51, np.uint8))
    assert tensor.shape == (1, 1, 28, 28)
    np.testing.assert_allclose(tensor, 0.2)


def test_per_channel_constants_that_do_not_fit_the_channels_are_refused():
    from edge_sdk.errors import ManifestError

    with pytest.raises(ManifestError, match="one value per channel"):
        Preprocessor(InputSpec("x", (1, 1, 8, 8), mean=(1.0, 2.0, 3.0)))


def test_area_resize_gives_inter_area_pixels(data_dir):
    """The fast shrink (bilinear to k x the size, then a k x k box average) against OpenCV's
    INTER_AREA on real photos and a video frame: the same image within 2 grey levels."""
    capture = cv2.VideoCapture(str(data_dir / "vtest_short.avi"))
    images = [capture.read()[1]]
    capture.release()
    images += [cv2.imread(str(p)) for p in sorted((data_dir / "eval").glob("*.jpg"))[:12]]
    for image in images:
        h, w = image.shape[:2]
        for size in [(round(w * 256 / min(w, h)), round(h * 256 / min(w, h))), (w // 3, h // 3),
                     (w // 2, h // 2), (w * 2 // 3, h * 2 // 3)]:
            expected = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.float32)
            got = area_resize(image, size)
            assert got.shape == expected.shape
            assert np.abs(got - expected).mean() < 2.0, (image.shape, size)
    small = images[1][:20, :30]
    np.testing.assert_array_equal(area_resize(small, (60, 40)),
                                  cv2.resize(small, (60, 40), interpolation=cv2.INTER_AREA))
