"""instahide_ops.grid: originals-over-recoveries PNG grids."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from instahide_ops.grid import BACKGROUND, encode_png, image_grid, write_png


def images(n: int, shape=(32, 32, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, *shape)).astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.rint((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)


class TestImageGrid:
    def test_smoke(self):
        grid = image_grid(images(3), images(3, seed=1))
        assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[-1] == 3

    @pytest.mark.parametrize(("n", "shape", "columns", "scale", "gap"), [
        (1, (32, 32, 3), 10, 4, 2), (10, (32, 32, 3), 10, 4, 2), (11, (32, 32, 3), 10, 4, 2),
        (25, (24, 40, 1), 7, 2, 0), (5, (7, 9, 3), 2, 1, 3), (100, (32, 32, 3), 10, 1, 1),
    ])
    def test_shape_arithmetic(self, n, shape, columns, scale, gap):
        h, w, _ = shape
        grid = image_grid(images(n, shape), images(n, shape, seed=1), columns=columns, scale=scale, gap=gap)
        cols, rows = min(n, columns), math.ceil(n / columns)
        height = rows * (2 * h * scale + gap) + (rows - 1) * 2 * gap
        assert grid.shape == (height, cols * w * scale + (cols - 1) * gap, 3)

    def test_blocks_hold_upscaled_pairs(self):
        top, bottom = images(12), images(12, seed=1)
        grid = image_grid(top, bottom, columns=5, scale=3, gap=2)
        s = 32 * 3
        up = to_uint8(top[0]).repeat(3, axis=0).repeat(3, axis=1)
        np.testing.assert_array_equal(grid[:s, :s], up)
        np.testing.assert_array_equal(grid[s + 2:2 * s + 2, :s], to_uint8(bottom[0]).repeat(3, 0).repeat(3, 1))
        # pair 6 = double-row 1, column 1
        y0, x0 = 2 * s + 2 + 4, s + 2
        np.testing.assert_array_equal(grid[y0:y0 + s, x0:x0 + s], to_uint8(top[6]).repeat(3, 0).repeat(3, 1))
        np.testing.assert_array_equal(grid[y0 + s + 2:y0 + 2 * s + 2, x0:x0 + s],
                                      to_uint8(bottom[6]).repeat(3, 0).repeat(3, 1))
        assert (grid[:, s:s + 2] == BACKGROUND).all()  # column gap
        assert (grid[-s:, -s:] == BACKGROUND).all()  # empty cell at the end of the last double-row

    def test_clipping_and_grayscale_and_tensors(self):
        top = torch.tensor([-5.0, -1.0, 0.0, 1.0, 7.0, float("nan")]).reshape(1, 2, 3, 1)
        grid = image_grid(top, top.clone(), scale=1, gap=0)
        assert grid.shape == (4, 3, 3)
        expected = np.array([[0, 0, 128], [255, 255, 0]], dtype=np.uint8)
        for c in range(3):  # C = 1 shown as grey on all three channels
            np.testing.assert_array_equal(grid[:2, :, c], expected)

    def test_errors(self):
        x = images(2)
        with pytest.raises(ValueError, match=r"top.shape: expected at least one pair, got n = 0"):
            image_grid(x[:0], x[:0])
        with pytest.raises(ValueError, match=r"bottom.shape: shapes differ: top \(2, 32, 32, 3\), bottom \(1, 32"):
            image_grid(x, x[:1])
        with pytest.raises(ValueError, match=r"top.shape: expected shape \(n, H, W, C\) with C in \(1, 3\)"):
            image_grid(x[..., :2], x[..., :2])
        with pytest.raises(ValueError, match=r"top: expected a torch.Tensor or numpy.ndarray, got list"):
            image_grid([1], x)
        with pytest.raises(ValueError, match=r"columns: must be an int >= 1, got 0"):
            image_grid(x, x, columns=0)
        with pytest.raises(ValueError, match=r"scale: must be an int >= 1, got 0"):
            image_grid(x, x, scale=0)
        with pytest.raises(ValueError, match=r"gap: must be an int >= 0, got -1"):
            image_grid(x, x, gap=-1)


class TestPng:
    def test_round_trip_keeps_rgb_order(self, tmp_path):
        red = np.zeros((4, 5, 3), dtype=np.uint8)
        red[..., 0] = 255
        path = tmp_path / "red.png"
        write_png(path, red)
        back = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(back, red)

    def test_grid_round_trip(self, tmp_path):
        grid = image_grid(images(11), images(11, seed=1))
        write_png(tmp_path / "grid.png", grid)
        back = cv2.imread(str(tmp_path / "grid.png"), cv2.IMREAD_COLOR)[..., ::-1]
        np.testing.assert_array_equal(back, grid)

    def test_encode_png_decodes(self):
        grid = image_grid(images(2), images(2, seed=1), scale=1)
        data = encode_png(grid)
        assert isinstance(data, bytes) and data[:8] == b"\x89PNG\r\n\x1a\n"
        back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        np.testing.assert_array_equal(back, grid)

    def test_atomic_write_leaves_no_temp_file(self, tmp_path):
        path = tmp_path / "out.png"
        write_png(path, np.zeros((2, 2, 3), np.uint8))
        write_png(path, np.full((3, 3, 3), 9, np.uint8))  # replaces
        assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
        assert cv2.imread(str(path)).shape == (3, 3, 3)

    def test_failed_write_leaves_nothing(self, tmp_path, monkeypatch):
        def boom(*args):
            raise OSError("disk full")

        monkeypatch.setattr("instahide_ops.grid.os.replace", boom)
        with pytest.raises(OSError, match="disk full"):
            write_png(tmp_path / "out.png", np.zeros((2, 2, 3), np.uint8))
        assert list(tmp_path.iterdir()) == []

    def test_errors(self, tmp_path):
        with pytest.raises(ValueError, match=r"image: expected a uint8 numpy array, got float64"):
            encode_png(np.zeros((2, 2, 3)))
        with pytest.raises(ValueError, match=r"image.shape: expected shape \(H, W, 3\) with H, W >= 1, got \(2, 2\)"):
            write_png(tmp_path / "x.png", np.zeros((2, 2), np.uint8))
        assert list(tmp_path.iterdir()) == []
