"""The reconstruction scores: SSIM and L2 exactly as the InstaHide Challenge scores them (skimage is the reference)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from skimage.metrics import structural_similarity

from instahide_ops.audits.reconstruction import scores as scores_module
from instahide_ops.audits.reconstruction.scores import (
    ChallengeScores,
    RecoveryScores,
    challenge_scores,
    mse,
    pairwise_ssim,
    recovered_fractions,
    ssim,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """The challenge's definition, verbatim."""
    return structural_similarity(a, b, channel_axis=-1, data_range=2.0)


def uniform(n: int, shape=(32, 32, 3), seed: int = 0, dtype=np.float64) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, *shape)).astype(dtype)


def crops(image: np.ndarray, n: int, size=(32, 32), seed: int = 0) -> np.ndarray:
    """n random crops of an HWC uint8 photo, mapped to [-1, 1] float64."""
    rng = np.random.default_rng(seed)
    h, w = size
    ys = rng.integers(0, image.shape[0] - h, n)
    xs = rng.integers(0, image.shape[1] - w, n)
    out = np.stack([image[y:y + h, x:x + w] for y, x in zip(ys, xs, strict=True)])
    return out.astype(np.float64) / 127.5 - 1.0


def astronaut(n: int, size=(32, 32), seed: int = 0) -> np.ndarray:
    return crops(skimage.data.astronaut(), n, size, seed)


def chelsea_gray(n: int, size=(32, 32), seed: int = 0) -> np.ndarray:
    gray = cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2GRAY)[..., None]
    return crops(gray, n, size, seed)


def noisy(images: np.ndarray, sigma: float = 0.2, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0, sigma, images.shape), -1, 1)


def blurred(images: np.ndarray) -> np.ndarray:
    out = np.stack([cv2.GaussianBlur(im, (5, 5), 1.2) for im in images])
    return out.reshape(images.shape)


def max_error(a: np.ndarray, b: np.ndarray) -> float:
    got = ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    want = np.array([sk_ssim(x, y) for x, y in zip(a, b, strict=True)])
    assert got.shape == want.shape
    return float(np.abs(got - want).max())


class TestSsim:
    def test_smoke(self):
        x = torch.rand(2, 32, 32, 3) * 2 - 1
        out = ssim(x, x.flip(0))
        assert out.shape == (2,) and out.dtype == torch.float64 and out.device == x.device

    @pytest.mark.parametrize(
        ("x_shape", "y_shape", "expected"),
        [
            ((32, 32, 3), (32, 32, 3), ()),
            ((5, 32, 32, 3), (5, 32, 32, 3), (5,)),
            ((5, 32, 32, 3), (32, 32, 3), (5,)),
            ((4, 1, 16, 16, 1), (1, 3, 16, 16, 1), (4, 3)),
            ((0, 8, 8, 3), (0, 8, 8, 3), (0,)),
        ],
    )
    def test_shapes_broadcast(self, x_shape, y_shape, expected):
        assert ssim(torch.rand(x_shape), torch.rand(y_shape)).shape == expected

    def test_errors(self):
        x = torch.rand(2, 32, 32, 3)
        with pytest.raises(ValueError, match=r"x: expected a torch.Tensor, got ndarray"):
            ssim(x.numpy(), x)
        with pytest.raises(ValueError, match=r"x.dtype: expected a floating-point tensor, got torch.uint8"):
            ssim(x.to(torch.uint8), x)
        with pytest.raises(ValueError, match=r"x.shape: expected shape \(\.\.\., H, W, C\), got \(32, 32\)"):
            ssim(x[0, ..., 0], x[0, ..., 0])
        with pytest.raises(ValueError, match=r"image shapes differ: x \(H, W, C\) = \(32, 32, 3\), y = \(32, 32, 1\)"):
            ssim(x, x[..., :1])
        with pytest.raises(ValueError, match=r"leading dimensions do not broadcast: \(2,\) vs \(3,\)"):
            ssim(x, torch.rand(3, 32, 32, 3))
        with pytest.raises(ValueError, match=r"image \(H, W\) = \(6, 32\) is smaller than the window 7x7"):
            ssim(x[:, :6], x[:, :6])
        with pytest.raises(ValueError, match=r"win_size: must be an odd int >= 3, got 4"):
            ssim(x, x, win_size=4)
        with pytest.raises(ValueError, match=r"data_range: must be a finite number > 0, got 0"):
            ssim(x, x, data_range=0)
        with pytest.raises(ValueError, match=r"dtype: must be a floating-point dtype or None, got torch.int64"):
            ssim(x, x, dtype=torch.int64)

    def test_uniform_matches_skimage(self):
        a, b = uniform(20, seed=0), uniform(20, seed=1)
        assert max_error(a, b) <= 1e-7

    def test_natural_vs_natural_matches_skimage(self):
        assert max_error(astronaut(20, seed=0), astronaut(20, seed=1)) <= 1e-7

    @pytest.mark.parametrize("degrade", [noisy, blurred])
    def test_natural_vs_degraded_matches_skimage(self, degrade):
        a = astronaut(64, seed=2)  # a batch of >= 50 pairs, checked pair by pair
        assert max_error(a, degrade(a)) <= 1e-7

    def test_grayscale_matches_skimage(self):
        a = chelsea_gray(20, seed=3)
        assert a.shape[-1] == 1
        assert max_error(a, noisy(a)) <= 1e-7

    @pytest.mark.parametrize(("shape", "win_size"), [((24, 40, 3), 7), ((40, 24, 1), 7), ((7, 9, 2), 7),
                                                     ((17, 13, 3), 5), ((32, 32, 3), 11)])
    def test_odd_shapes_and_windows_match_skimage(self, shape, win_size):
        a, b = uniform(6, shape, seed=4), uniform(6, shape, seed=5)
        got = ssim(torch.from_numpy(a), torch.from_numpy(b), win_size=win_size).numpy()
        want = [structural_similarity(x, y, channel_axis=-1, data_range=2.0, win_size=win_size)
                for x, y in zip(a, b, strict=True)]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)

    def test_float32_inputs_match_skimage(self):
        # skimage computes float32 inputs in float32; the float64 result stays within the challenge's 1e-5.
        a = astronaut(20, seed=6).astype(np.float32)
        assert max_error(a, noisy(a).astype(np.float32)) <= 1e-5

    def test_float32_compute_is_close(self):
        a = torch.from_numpy(astronaut(20, seed=7))
        b = torch.from_numpy(noisy(astronaut(20, seed=7)))
        fast = ssim(a.float(), b.float(), dtype=None)
        assert fast.dtype == torch.float32
        torch.testing.assert_close(fast.double(), ssim(a, b), rtol=0, atol=1e-4)

    def test_chunked_equals_unchunked(self, monkeypatch):
        a, b = torch.from_numpy(uniform(13, seed=8)), torch.from_numpy(uniform(13, seed=9))
        whole = ssim(a, b)
        monkeypatch.setitem(scores_module._CHUNK_ELEMENTS, "cpu", 3 * 32 * 32 * 3)
        torch.testing.assert_close(ssim(a, b), whole, rtol=0, atol=1e-15)

    def test_identical_images_give_one(self):
        x = torch.from_numpy(np.concatenate([uniform(4), astronaut(4)]))
        torch.testing.assert_close(ssim(x, x), torch.ones(8, dtype=torch.float64), rtol=0, atol=1e-12)

    def test_symmetric(self):
        a, b = torch.from_numpy(astronaut(8, seed=10)), torch.from_numpy(uniform(8, seed=11))
        torch.testing.assert_close(ssim(a, b), ssim(b, a), rtol=0, atol=1e-14)

    def test_bounded_and_noise_is_dissimilar(self):
        a = torch.from_numpy(astronaut(8, seed=12))
        s = ssim(a.repeat(2, 1, 1, 1), torch.cat([-a, torch.from_numpy(uniform(8))]))
        assert bool((s >= -1).all()) and bool((s <= 1).all())
        assert bool((s[8:] < 0.2).all())

    @CUDA
    def test_cuda_equals_cpu(self):
        a = torch.from_numpy(np.concatenate([astronaut(32), uniform(32)]))
        b = torch.from_numpy(np.concatenate([noisy(astronaut(32)), uniform(32, seed=3)]))
        got = ssim(a.cuda(), b.cuda())
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), ssim(a, b), rtol=0, atol=1e-6)
        torch.testing.assert_close(pairwise_ssim(a.cuda(), b.cuda()).cpu(), pairwise_ssim(a, b), rtol=0, atol=1e-6)


class TestPairwiseSsim:
    def test_smoke_and_shape(self):
        out = pairwise_ssim(torch.rand(3, 16, 16, 3), torch.rand(5, 16, 16, 3))
        assert out.shape == (3, 5) and out.dtype == torch.float64

    def test_errors(self):
        x = torch.rand(3, 16, 16, 3)
        with pytest.raises(ValueError, match=r"recovered.shape: expected shape \(N, H, W, C\), got \(16, 16, 3\)"):
            pairwise_ssim(x[0], x)
        with pytest.raises(ValueError, match=r"originals.shape: image shapes differ"):
            pairwise_ssim(x, x[:, :8])
        with pytest.raises(ValueError, match=r"chunk: must be an int >= 1 or None, got 0"):
            pairwise_ssim(x, x, chunk=0)

    @pytest.mark.parametrize("chunk", [None, 1, 2, 7, 100])
    def test_agrees_with_ssim(self, chunk):
        r = torch.from_numpy(np.concatenate([astronaut(4, seed=1), uniform(3)]))
        o = torch.from_numpy(np.concatenate([noisy(astronaut(4, seed=1)), astronaut(2, seed=9)]))
        got = pairwise_ssim(r, o, chunk=chunk)
        torch.testing.assert_close(got, ssim(r[:, None], o[None]), rtol=0, atol=1e-14)

    def test_matches_skimage(self):
        r, o = astronaut(5, seed=13), blurred(astronaut(4, seed=13))
        want = np.array([[sk_ssim(a, b) for b in o] for a in r])
        np.testing.assert_allclose(pairwise_ssim(torch.from_numpy(r), torch.from_numpy(o)).numpy(), want, atol=1e-7)


class TestMse:
    def test_smoke_and_shapes(self):
        assert mse(torch.rand(4, 8, 8, 3), torch.rand(8, 8, 3)).shape == (4,)
        assert mse(torch.rand(8, 8, 3), torch.rand(8, 8, 3)).shape == ()

    def test_errors(self):
        with pytest.raises(ValueError, match=r"image shapes differ"):
            mse(torch.rand(2, 8, 8, 3), torch.rand(2, 8, 8, 1))
        with pytest.raises(ValueError, match=r"leading dimensions do not broadcast: \(2,\) vs \(3,\)"):
            mse(torch.rand(2, 8, 8, 3), torch.rand(3, 8, 8, 3))

    def test_matches_numpy(self):
        a, b = uniform(10, (24, 40, 3)), astronaut(10, (24, 40))
        want = ((a - b) ** 2).mean(axis=(1, 2, 3))
        np.testing.assert_allclose(mse(torch.from_numpy(a), torch.from_numpy(b)).numpy(), want, rtol=1e-12)

    def test_properties(self):
        x = torch.from_numpy(uniform(3))
        assert bool((mse(x, x) == 0).all())
        torch.testing.assert_close(mse(x, -x), 4 * x.square().mean(dim=(1, 2, 3)))
        torch.testing.assert_close(mse(torch.full((8, 8, 1), -1.0), torch.ones(8, 8, 1)).double(),
                                   torch.tensor(4.0, dtype=torch.float64))


class TestChallengeScores:
    def test_hand_built_case(self):
        privates = torch.from_numpy(astronaut(4, seed=20))
        pairs = torch.tensor([[0, 1], [2, 3], [3, 1]])
        scores = challenge_scores(privates[pairs[:, 0]], privates, pairs)
        assert isinstance(scores, ChallengeScores)
        torch.testing.assert_close(scores.per_encoding_max_ssim, torch.ones(3, dtype=torch.float64))
        assert scores.max_ssim == pytest.approx(1.0, abs=1e-12)
        assert scores.min_l2 == 0.0 and bool((scores.per_encoding_min_l2 == 0).all())
        other = [sk_ssim(privates[a].numpy(), privates[b].numpy()) for a, b in pairs.tolist()]
        assert scores.mean_ssim == pytest.approx(np.mean([(1 + s) / 2 for s in other]), abs=1e-7)

    def test_matches_direct_loop(self):
        rng = np.random.default_rng(21)
        privates, dec = astronaut(10, seed=21), uniform(30, seed=22) * 0.5 + astronaut(30, seed=23) * 0.5
        pairs = np.stack([rng.choice(10, 2, replace=False) for _ in range(30)])
        scores = challenge_scores(torch.from_numpy(dec), torch.from_numpy(privates), torch.from_numpy(pairs))
        s = np.array([[sk_ssim(d, privates[p]) for p in pr] for d, pr in zip(dec, pairs, strict=True)])
        l2 = np.array([[((d - privates[p]) ** 2).mean() for p in pr] for d, pr in zip(dec, pairs, strict=True)])
        want = {"max_ssim": s.max(1).mean(), "mean_ssim": s.mean(), "min_l2": l2.min(1).mean(), "mean_l2": l2.mean()}
        for key, value in scores.to_dict().items():
            assert value == pytest.approx(want[key], abs=1e-7), key
        np.testing.assert_allclose(scores.per_encoding_mean_l2.numpy(), l2.mean(1), rtol=1e-12)
        assert scores.per_encoding_max_ssim.shape == (30,)

    def test_to_dict_is_json_ready(self):
        p = torch.rand(3, 8, 8, 3) * 2 - 1
        d = challenge_scores(p[:2], p, torch.tensor([[0, 1], [1, 2]])).to_dict()
        assert set(d) == {"max_ssim", "mean_ssim", "min_l2", "mean_l2"}
        assert all(type(v) is float for v in d.values())
        json.dumps(d)

    def test_errors(self):
        p = torch.rand(3, 8, 8, 3)
        with pytest.raises(ValueError, match=r"expected at least one encoding, got E = 0"):
            challenge_scores(p[:0], p, torch.zeros(0, 2, dtype=torch.int64))
        with pytest.raises(ValueError, match=r"pair_indices.shape: expected shape \(2, 2\), got \(2, 3\)"):
            challenge_scores(p[:2], p, torch.zeros(2, 3, dtype=torch.int64))
        with pytest.raises(ValueError, match=r"pair_indices: expected an integer tensor"):
            challenge_scores(p[:2], p, torch.zeros(2, 2))
        with pytest.raises(ValueError, match=r"pair_indices: indices must be in \[0, 3\), got range \[0, 3\]"):
            challenge_scores(p[:2], p, torch.tensor([[0, 1], [3, 2]]))
        with pytest.raises(ValueError, match=r"decryption.shape: expected shape \(N, H, W, C\)"):
            challenge_scores(p[0], p, torch.tensor([[0, 1]]))


class TestRecoveredFractions:
    def test_half_recovered(self):
        privates = torch.from_numpy(astronaut(8, seed=30))
        noise = torch.from_numpy(uniform(6, seed=31))
        recovered = torch.cat([noise[:3], privates[[5, 1, 7, 3]], noise[3:]])  # privates 1, 3, 5, 7 recovered
        scores = recovered_fractions(recovered, privates)
        assert isinstance(scores, RecoveryScores)
        assert scores.fractions == {0.5: pytest.approx(0.5), 0.8: pytest.approx(0.5)}
        assert scores.best_match[[5, 1, 7, 3]].tolist() == [3, 4, 5, 6]
        torch.testing.assert_close(scores.best_ssim[[1, 3, 5, 7]], torch.ones(4, dtype=torch.float64))
        assert bool((scores.best_ssim[[0, 2, 4, 6]] < 0.5).all())
        assert int(scores.histogram_counts.sum()) == 8 and int(scores.histogram_counts[-1]) == 4

    def test_best_match_against_pairwise(self):
        r, p = torch.from_numpy(astronaut(7, seed=32)), torch.from_numpy(noisy(astronaut(5, seed=32)))
        scores = recovered_fractions(r, p, thresholds=(0.0, 0.3))
        table = pairwise_ssim(r, p)
        assert scores.best_match.tolist() == table.argmax(0).tolist()
        torch.testing.assert_close(scores.best_ssim, table.amax(0))
        assert scores.fractions == {0.0: float((table.amax(0) > 0).double().mean()),
                                    0.3: float((table.amax(0) > 0.3).double().mean())}

    def test_histogram_edges_and_counts(self):
        scores = recovered_fractions(torch.from_numpy(uniform(3)), torch.from_numpy(astronaut(9)))
        edges = scores.histogram_edges
        assert edges.shape == (21,) and scores.histogram_counts.shape == (20,)
        assert edges[0] == -1.0 and edges[-1] == 1.0 and edges[15] == 0.5
        assert int(scores.histogram_counts.sum()) == 9
        bins = np.histogram(scores.best_ssim.numpy(), bins=edges.numpy())[0]
        assert scores.histogram_counts.tolist() == bins.tolist()

    def test_to_dict_is_json_ready(self):
        scores = recovered_fractions(torch.rand(2, 8, 8, 3), torch.rand(3, 8, 8, 3))
        d = json.loads(json.dumps(scores.to_dict()))
        assert set(d["fractions"]) == {"0.5", "0.8"}
        assert len(d["best_ssim"]) == 3 and len(d["best_match"]) == 3
        assert len(d["histogram"]["edges"]) == 21 and sum(d["histogram"]["counts"]) == 3

    def test_errors(self):
        x = torch.rand(3, 8, 8, 3)
        with pytest.raises(ValueError, match=r"expected M, P >= 1, got M = 0, P = 3"):
            recovered_fractions(x[:0], x)
        with pytest.raises(ValueError, match=r"thresholds: each must be a number in \[-1, 1\], got 1.5"):
            recovered_fractions(x, x, thresholds=(0.5, 1.5))
