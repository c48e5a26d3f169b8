"""Tests for instahide_ops.images: exact resizing and grey levels, the [-1, 1] scale, image files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from instahide_ops.images import (
    read_rgb,
    resize_image,
    to_grey,
    to_unit_range,
    unit_range_array,
    unit_range_to_uint8,
)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return data.astronaut()


class TestResizeImage:
    @pytest.mark.parametrize(("source", "target"), [((256, 256), (32, 32)), ((96, 96), (32, 32)),
                                                    ((200, 137), (32, 40)), ((33, 33), (32, 32))])
    def test_shrinking_averages_areas_as_opencv_does(self, photo, source, target):
        image = photo[:source[0], :source[1]]
        ours = resize_image(image, *target)
        theirs = cv2.resize(image, target[::-1], interpolation=cv2.INTER_AREA)
        assert ours.shape == (*target, 3) and ours.dtype == np.uint8
        assert np.abs(ours.astype(int) - theirs).max() <= 1  # one rounding at the end instead of OpenCV's

    def test_an_integer_factor_is_the_rounded_block_mean(self, photo):
        image = photo[:64, :96]
        blocks = image.reshape(16, 4, 24, 4, 3).astype(np.int64).sum(axis=(1, 3))
        np.testing.assert_array_equal(resize_image(image, 16, 24), (blocks + 8) // 16)

    @pytest.mark.parametrize(("source", "target"), [((64, 64), (100, 80)), ((31, 47), (64, 64))])
    def test_enlarging_interpolates_linearly_as_opencv_does(self, photo, source, target):
        image = photo[:source[0], :source[1]]
        theirs = cv2.resize(image, target[::-1], interpolation=cv2.INTER_LINEAR)
        assert np.abs(resize_image(image, *target).astype(int) - theirs).max() <= 1

    def test_grey_images_and_the_same_size(self, photo):
        grey = photo[:100, :100, 0]
        assert resize_image(grey, 32, 20).shape == (32, 20)
        same = resize_image(photo, *photo.shape[:2])
        np.testing.assert_array_equal(same, photo)
        assert same is not photo

    def test_errors(self, photo):
        with pytest.raises(ValueError, match=r"expected uint8 \(H, W\) or \(H, W, C\), got float32"):
            resize_image(photo.astype(np.float32), 8, 8)
        with pytest.raises(ValueError, match="size must be positive, got 0x8"):
            resize_image(photo, 0, 8)


class TestToGrey:
    def test_matches_opencv_to_one_level(self, photo):
        ours = to_grey(photo)
        assert ours.shape == photo.shape[:2] and ours.dtype == np.uint8
        assert np.abs(ours.astype(int) - cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)).max() <= 1

    def test_weights_sum_to_one(self):
        for level in (0, 1, 127, 128, 254, 255):
            assert int(to_grey(np.full((1, 1, 3), level, dtype=np.uint8))[0, 0]) == level

    def test_grey_passes_and_bad_input_is_refused(self, photo):
        grey = photo[..., 0]
        assert to_grey(grey) is grey
        with pytest.raises(ValueError, match=r"expected uint8 \(H, W\) or \(H, W, 3\)"):
            to_grey(photo[..., :2])


def test_read_rgb_reads_rgb_and_names_the_field(tmp_path):
    bgr = np.zeros((4, 6, 3), dtype=np.uint8)
    bgr[..., 2] = 255  # OpenCV writes BGR: a red image
    assert cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = read_rgb(tmp_path / "red.png", field="pool")
    assert rgb.shape == (4, 6, 3) and (rgb[..., 0] == 255).all() and (rgb[..., 1:] == 0).all()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"pool: cannot read image .*broken\.png"):
        read_rgb(tmp_path / "broken.png", field="pool")


class TestToUnitRange:
    def test_uint8_maps_exactly(self):
        out = to_unit_range(torch.tensor([0, 51, 255], dtype=torch.uint8))
        assert out.dtype == torch.float32
        assert out.tolist() == [-1.0, pytest.approx(51 / 127.5 - 1), 1.0]

    def test_float_passes_through(self):
        x = torch.rand(4, dtype=torch.float32) * 2 - 1
        assert to_unit_range(x) is x
        assert to_unit_range(x.double()).dtype == torch.float32

    def test_rejects_other_integers(self):
        with pytest.raises(ValueError, match=r"expected uint8 or floating images, got torch.int32"):
            to_unit_range(torch.zeros(3, dtype=torch.int32))

    def test_numpy_map_matches_torch_bit_for_bit(self):
        every_value = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
        out = unit_range_array(every_value)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, to_unit_range(torch.from_numpy(every_value)).numpy())
        floats = np.array([0.25, -0.5], dtype=np.float64)
        assert unit_range_array(floats).dtype == np.float32 and unit_range_array(floats).tolist() == [0.25, -0.5]

    def test_numpy_map_takes_read_only_arrays_without_a_warning(self, recwarn):
        read_only = np.frombuffer(bytes([0, 255, 51]), dtype=np.uint8)
        assert unit_range_array(read_only).tolist() == [-1.0, 1.0, pytest.approx(51 / 127.5 - 1)]
        assert not [w for w in recwarn if "not writable" in str(w.message)]

    def test_inverse_round_trips_every_uint8_value(self):
        every_value = np.arange(256, dtype=np.uint8)
        np.testing.assert_array_equal(unit_range_to_uint8(unit_range_array(every_value)), every_value)

    def test_inverse_clips_and_maps_nan_to_black(self):
        out = unit_range_to_uint8(np.array([-3.0, np.nan, 0.0, 1.0, 7.0]))
        assert out.dtype == np.uint8 and out.tolist() == [0, 0, 128, 255, 255]
