"""Leakage scores exactly as the InstaHide Challenge computes them, batched over torch tensors.

Images are HWC float in [-1, 1]. ``ssim`` is ``skimage.metrics.structural_similarity(d, p,
channel_axis=-1, data_range=2.0)``: a uniform ``win_size``² window, K1 = 0.01, K2 = 0.03, sample
covariance, averaged over the window-valid region (skimage crops ``(win_size - 1) // 2`` pixels from
each border, which leaves exactly the positions where the window fits) and then over channels.
Everything is computed in float64 by default and follows the input's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from instahide_ops.errors import InvalidInputError

K1 = 0.01
K2 = 0.03
DEFAULT_THRESHOLDS = (0.5, 0.8)
WINDOW = 7  # the challenge's SSIM window (skimage's default): images smaller than it cannot be scored
# Elements (pairs x H x W x C) per block: bounds memory; small blocks stay in cache on CPU, large ones fill a GPU.
_CHUNK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 24}


def _default_chunk(device: torch.device, image_numel: int) -> int:
    return max(1, _CHUNK_ELEMENTS.get(device.type, 1 << 22) // image_numel)


def _check_images(t: Tensor, name: str, *, batched: bool = False) -> None:
    if not isinstance(t, Tensor):
        raise InvalidInputError(f"expected a torch.Tensor, got {type(t).__name__}", field=name)
    if not t.is_floating_point():
        raise InvalidInputError(f"expected a floating-point tensor, got {t.dtype}", field=f"{name}.dtype")
    if batched and t.ndim != 4:
        raise InvalidInputError(f"expected shape (N, H, W, C), got {tuple(t.shape)}", field=f"{name}.shape")
    if t.ndim < 3:
        raise InvalidInputError(f"expected shape (..., H, W, C), got {tuple(t.shape)}", field=f"{name}.shape")


def _check_pair(x: Tensor, y: Tensor, names: tuple[str, str], *, batched: bool = False) -> None:
    _check_images(x, names[0], batched=batched)
    _check_images(y, names[1], batched=batched)
    if x.shape[-3:] != y.shape[-3:]:
        raise InvalidInputError(
            f"image shapes differ: {names[0]} (H, W, C) = {tuple(x.shape[-3:])}, {names[1]} = {tuple(y.shape[-3:])}",
            field=f"{names[1]}.shape",
        )
    if x.device != y.device:
        raise InvalidInputError(f"devices differ: {x.device} vs {y.device}", field=f"{names[1]}.device")


def _broadcast_lead(x: Tensor, y: Tensor) -> torch.Size:
    try:
        return torch.broadcast_shapes(x.shape[:-3], y.shape[:-3])
    except RuntimeError:
        msg = f"leading dimensions do not broadcast: {tuple(x.shape[:-3])} vs {tuple(y.shape[:-3])}"
        raise InvalidInputError(msg, field="y.shape") from None


def _check_window(shape: torch.Size, win_size: int, data_range: float) -> None:
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 3 or win_size % 2 == 0:
        raise InvalidInputError(f"must be an odd int >= 3, got {win_size!r}", field="win_size")
    if min(shape[-3], shape[-2]) < win_size:
        raise InvalidInputError(
            f"image (H, W) = {tuple(shape[-3:-1])} is smaller than the window {win_size}x{win_size}", field="shape"
        )
    if not (isinstance(data_range, int | float) and math.isfinite(data_range) and data_range > 0):
        raise InvalidInputError(f"must be a finite number > 0, got {data_range!r}", field="data_range")


def _compute_dtype(x: Tensor, y: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.promote_types(x.dtype, y.dtype)
    if not dtype.is_floating_point:
        raise InvalidInputError(f"must be a floating-point dtype or None, got {dtype}", field="dtype")
    return dtype


def _box(t: Tensor, win: int) -> Tensor:
    """Window means over (H, W) of (..., H, W, C), valid positions only: (..., H-win+1, W-win+1, C)."""
    return t.unfold(-3, win, 1).sum(-1).unfold(-2, win, 1).sum(-1) / (win * win)


def _ssim_from_windows(mx: Tensor, my: Tensor, mxx: Tensor, myy: Tensor, mxy: Tensor, win: int, data_range: float):
    """Mean SSIM over (h, w, C) from broadcastable window means (skimage's formula, term for term)."""
    cov_norm = win * win / (win * win - 1)
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    vx = cov_norm * (mxx - mx * mx)
    vy = cov_norm * (myy - my * my)
    vxy = cov_norm * (mxy - mx * my)
    num = (2 * mx * my + c1) * (2 * vxy + c2)
    den = (mx * mx + my * my + c1) * (vx + vy + c2)
    return (num / den).mean(dim=(-3, -2, -1))


def ssim(x: Tensor, y: Tensor, *, data_range: float = 2.0, win_size: int = WINDOW,
         dtype: torch.dtype | None = torch.float64) -> Tensor:
    """Structural similarity of image pairs, as ``skimage.metrics.structural_similarity`` computes it.

    Args:
        x: images (..., H, W, C), floating point, values nominally in [-1, 1].
        y: images (..., H, W, C); leading dimensions broadcast against ``x``'s.
        data_range: max - min of the image values (2.0 for [-1, 1]).
        win_size: side of the uniform window, odd, at most min(H, W).
        dtype: compute (and result) dtype; None uses the inputs' promoted dtype (faster, less exact).

    Returns:
        (...) SSIM of each pair: the per-channel SSIMs averaged over channels.

    Raises:
        ValueError: non-tensor or non-float input, mismatched (H, W, C) or devices, leading
            dimensions that do not broadcast, an image smaller than the window, bad win_size/data_range.

    Examples:
        >>> x = torch.rand(4, 32, 32, 3) * 2 - 1
        >>> ssim(x, x)
        tensor([1., 1., 1., 1.], dtype=torch.float64)
    """
    _check_pair(x, y, ("x", "y"))
    _check_window(x.shape, win_size, data_range)
    cdtype = _compute_dtype(x, y, dtype)
    lead = _broadcast_lead(x, y)
    hwc = x.shape[-3:]
    xf = x.expand(*lead, *hwc).reshape(-1, *hwc)
    yf = y.expand(*lead, *hwc).reshape(-1, *hwc)
    chunk = _default_chunk(x.device, math.prod(hwc))
    out = torch.empty(xf.shape[0], dtype=cdtype, device=x.device)
    for start in range(0, xf.shape[0], chunk):
        xs = xf[start:start + chunk].to(cdtype)
        ys = yf[start:start + chunk].to(cdtype)
        out[start:start + chunk] = _ssim_from_windows(
            _box(xs, win_size), _box(ys, win_size), _box(xs * xs, win_size), _box(ys * ys, win_size),
            _box(xs * ys, win_size), win_size, data_range,
        )
    return out.reshape(lead)


def pairwise_ssim(recovered: Tensor, originals: Tensor, *, chunk: int | None = None, data_range: float = 2.0,
                  win_size: int = WINDOW, dtype: torch.dtype | None = torch.float64) -> Tensor:
    """SSIM of every recovered image against every original.

    Args:
        recovered: (M, H, W, C) images.
        originals: (P, H, W, C) images.
        chunk: pairs per block (bounds memory); None picks 2**18 (CPU) or 2**24 (CUDA) elements per block.
        data_range: as in :func:`ssim`.
        win_size: as in :func:`ssim`.
        dtype: as in :func:`ssim`.

    Returns:
        (M, P) with ``out[m, p] == ssim(recovered[m], originals[p])``.

    Raises:
        ValueError: as :func:`ssim`, or inputs not 4-D, or chunk < 1.

    Examples:
        >>> r = torch.rand(3, 16, 16, 1) * 2 - 1
        >>> pairwise_ssim(r, r).diagonal()
        tensor([1., 1., 1.], dtype=torch.float64)
    """
    _check_pair(recovered, originals, ("recovered", "originals"), batched=True)
    _check_window(recovered.shape, win_size, data_range)
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise InvalidInputError(f"must be an int >= 1 or None, got {chunk!r}", field="chunk")
    cdtype = _compute_dtype(recovered, originals, dtype)
    m, p = recovered.shape[0], originals.shape[0]
    chunk = chunk or _default_chunk(recovered.device, math.prod(recovered.shape[1:]))
    cols = min(p, chunk)
    rows = max(1, chunk // max(cols, 1))
    out = torch.empty(m, p, dtype=cdtype, device=recovered.device)
    for c0 in range(0, p, cols):
        ys = originals[c0:c0 + cols].to(cdtype)[None]
        my, myy = _box(ys, win_size), _box(ys * ys, win_size)
        for r0 in range(0, m, rows):
            xs = recovered[r0:r0 + rows].to(cdtype)[:, None]
            out[r0:r0 + rows, c0:c0 + cols] = _ssim_from_windows(
                _box(xs, win_size), my, _box(xs * xs, win_size), myy, _box(xs * ys, win_size), win_size, data_range
            )
    return out


def mse(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = torch.float64) -> Tensor:
    """Mean squared error per pixel of each pair (the challenge's L2 on [-1, 1] images).

    Args:
        x: images (..., H, W, C).
        y: images (..., H, W, C); leading dimensions broadcast against ``x``'s.
        dtype: compute (and result) dtype; None uses the inputs' promoted dtype.

    Returns:
        (...) mean over (H, W, C) of (x - y)².

    Raises:
        ValueError: as :func:`ssim` for the inputs.

    Examples:
        >>> mse(torch.zeros(2, 8, 8, 3), torch.ones(8, 8, 3))
        tensor([1., 1.], dtype=torch.float64)
    """
    _check_pair(x, y, ("x", "y"))
    cdtype = _compute_dtype(x, y, dtype)
    _broadcast_lead(x, y)
    return (x.to(cdtype) - y.to(cdtype)).square().mean(dim=(-3, -2, -1))


@dataclass(frozen=True, eq=False)
class ChallengeScores:
    """The challenge's four numbers (means over encodings) and their per-encoding values, each (E,)."""

    max_ssim: float
    mean_ssim: float
    min_l2: float
    mean_l2: float
    per_encoding_max_ssim: Tensor
    per_encoding_mean_ssim: Tensor
    per_encoding_min_l2: Tensor
    per_encoding_mean_l2: Tensor

    def to_dict(self) -> dict[str, float]:
        """The four averages as plain floats (JSON-ready)."""
        return {"max_ssim": self.max_ssim, "mean_ssim": self.mean_ssim, "min_l2": self.min_l2,
                "mean_l2": self.mean_l2}


def challenge_scores(decryption: Tensor, privates: Tensor, pair_indices: Tensor) -> ChallengeScores:
    """Score each encoding's recovered image against its two private images, as the challenge does.

    Args:
        decryption: (E, H, W, C) one recovered image per encoding.
        privates: (P, H, W, C) the private images.
        pair_indices: (E, 2) integer indices into ``privates`` of each encoding's two private images.

    Returns:
        ChallengeScores: per encoding Max/Mean SSIM and Min/Mean L2 over its two privates, plus their means.

    Raises:
        ValueError: bad images (see :func:`ssim`), E = 0, pair_indices of the wrong shape, dtype or range.

    Examples:
        >>> p = torch.rand(3, 8, 8, 3) * 2 - 1
        >>> s = challenge_scores(p[:2], p, torch.tensor([[0, 2], [1, 2]]))
        >>> s.max_ssim, s.min_l2
        (1.0, 0.0)
    """
    _check_pair(decryption, privates, ("decryption", "privates"), batched=True)
    e, p = decryption.shape[0], privates.shape[0]
    if e < 1:
        raise InvalidInputError("expected at least one encoding, got E = 0", field="decryption.shape")
    if not isinstance(pair_indices, Tensor) or pair_indices.is_floating_point() or pair_indices.is_complex():
        raise InvalidInputError(f"expected an integer tensor, got {pair_indices!r:.60}", field="pair_indices")
    if tuple(pair_indices.shape) != (e, 2):
        raise InvalidInputError(f"expected shape ({e}, 2), got {tuple(pair_indices.shape)}", field="pair_indices.shape")
    idx = pair_indices.to(device=privates.device, dtype=torch.int64)
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= p:
        raise InvalidInputError(f"indices must be in [0, {p}), got range [{lo}, {hi}]", field="pair_indices")
    pair = privates[idx]  # (E, 2, H, W, C)
    d = decryption[:, None]
    s = ssim(d, pair)  # (E, 2)
    l2 = mse(d, pair)
    per = (s.amax(1), s.mean(1), l2.amin(1), l2.mean(1))
    return ChallengeScores(*(float(t.mean()) for t in per), *per)


@dataclass(frozen=True, eq=False)
class RecoveryScores:
    """How well each private image was recovered by its best recovery.

    Attributes:
        best_ssim: (P,) best SSIM of each private image over all recoveries.
        best_match: (P,) int64 index into the recoveries of that best match.
        fractions: threshold -> fraction of private images with best SSIM strictly above it.
        histogram_counts: (20,) int64 counts of ``best_ssim`` per bin.
        histogram_edges: (21,) float64 bin edges -1.0, -0.9, ..., 1.0 (last bin includes 1.0).
    """

    best_ssim: Tensor
    best_match: Tensor
    fractions: dict[float, float]
    histogram_counts: Tensor
    histogram_edges: Tensor

    def to_dict(self) -> dict:
        """Plain Python values (JSON-ready; threshold keys as strings such as ``"0.5"``)."""
        return {
            "mean_best_ssim": float(self.best_ssim.mean()),
            "best_ssim": [float(v) for v in self.best_ssim.tolist()],
            "best_match": [int(v) for v in self.best_match.tolist()],
            "fractions": {f"{t:g}": f for t, f in self.fractions.items()},
            "histogram": {"edges": [float(v) for v in self.histogram_edges.tolist()],
                          "counts": [int(v) for v in self.histogram_counts.tolist()]},
        }


def recovered_fractions(recovered: Tensor, privates: Tensor, *,
                        thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> RecoveryScores:
    """Best SSIM of each private image over all recoveries, and how many pass each threshold.

    Args:
        recovered: (M, H, W, C) recovered images, M >= 1.
        privates: (P, H, W, C) private images, P >= 1.
        thresholds: SSIM thresholds in [-1, 1].

    Returns:
        RecoveryScores with best SSIM/match per private, fractions above each threshold and a histogram
        of best SSIMs over [-1, 1] in steps of 0.1.

    Raises:
        ValueError: bad images (see :func:`ssim`), M or P = 0, a threshold outside [-1, 1].

    Examples:
        >>> p = torch.rand(2, 8, 8, 3) * 2 - 1
        >>> recovered_fractions(p[1:], p).best_match
        tensor([0, 0])
    """
    _check_pair(recovered, privates, ("recovered", "privates"), batched=True)
    if recovered.shape[0] < 1 or privates.shape[0] < 1:
        raise InvalidInputError(
            f"expected M, P >= 1, got M = {recovered.shape[0]}, P = {privates.shape[0]}", field="shape"
        )
    for t in thresholds:
        if not (isinstance(t, int | float) and -1.0 <= t <= 1.0):
            raise InvalidInputError(f"each must be a number in [-1, 1], got {t!r}", field="thresholds")
    best_ssim, best_match = pairwise_ssim(recovered, privates).max(dim=0)
    return _recovery_scores(best_ssim, best_match, thresholds)


def aligned_recovery(recovered: Tensor, privates: Tensor, *,
                     thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> RecoveryScores:
    """``RecoveryScores`` for recoveries that each belong to one private image (``recovered[i]`` to
    ``privates[i]``, as a DisguisedNets attack recovers every disguised image): each image's SSIM against its
    own recovery, the fractions above each threshold and the histogram.

    Raises:
        ValueError: bad images (see :func:`ssim`), shapes that differ, no images, a threshold outside [-1, 1].
    """
    _check_pair(recovered, privates, ("recovered", "privates"), batched=True)
    if recovered.shape != privates.shape or recovered.shape[0] < 1:
        raise InvalidInputError(f"expected one recovery per private image, got {list(recovered.shape)} for "
                                f"{list(privates.shape)}", field="shape")
    for t in thresholds:
        if not (isinstance(t, int | float) and -1.0 <= t <= 1.0):
            raise InvalidInputError(f"each must be a number in [-1, 1], got {t!r}", field="thresholds")
    own = ssim(recovered, privates)
    return _recovery_scores(own, torch.arange(len(own), device=own.device), thresholds)


def _recovery_scores(best_ssim: Tensor, best_match: Tensor, thresholds: Sequence[float]) -> RecoveryScores:
    fractions = {float(t): float((best_ssim > t).double().mean()) for t in thresholds}
    edges = torch.arange(-10, 11, dtype=torch.float64, device=best_ssim.device) / 10
    bins = (torch.bucketize(best_ssim.clamp(-1.0, 1.0), edges, right=True) - 1).clamp(0, edges.numel() - 2)
    counts = torch.bincount(bins, minlength=edges.numel() - 1)
    return RecoveryScores(best_ssim, best_match, fractions, counts, edges)
