"""The attacker who holds the photos a public pool was cut from, but not the pool.

A deployment may keep its pool's crops secret (its own seed) while cutting them from photos anyone can
get; the InstaHide Challenge did this with ImageNet. Each public image then lies somewhere among the
windows of those photos, shrunk the way ``build_pool`` shrinks a crop, and this attack finds them:

- photo_pool: each encoding's residual (its unmasked sum with the E-step's signs, minus the start's
  private part) is correlated, on its fine detail, with every window of every shrunk photo (by FFT), and
  picks its best few. A real public is mixed into several encodings (a pool smaller than the public
  slots it fills reuses each image), a chance match into one, so windows picked by at least
  ``min_picks`` encodings are kept. Each is then cut again from its photo at the source pixel its pickers
  agree with best, since ``build_pool`` crops at any pixel and a shrunk photo's windows lie on a grid;
- then the pool-aware attack (``pool_aware.pool_aware_attack``), unchanged, with that pool, when the
  kept windows explain enough of the encodings (``DEFAULT_MIN_COVERAGE``); otherwise the attacker stays
  with its start.

Each further round picks again from the previous round's recoveries, whose residuals are cleaner.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from instahide_ops.audits.progress import CancelToken, ProgressCallback, StageTracker
from instahide_ops.audits.reconstruction.attack import (
    PHOTOS,
    AttackerView,
    AttackResult,
    AttackSettings,
    register_attack,
)
from instahide_ops.audits.reconstruction.instahide import pool_aware
from instahide_ops.audits.reconstruction.instahide.ciphertext_only import (
    attack_device,
    check_challenge_arrays,
    recovery_options,
)
from instahide_ops.audits.reconstruction.instahide.pool_aware import (
    DEFAULT_PUBLIC_MIX_STEPS,
    pool_aware_attack,
    signed_sums,
)
from instahide_ops.audits.reconstruction.instahide.pool_aware import STAGES as POOL_AWARE_STAGES
from instahide_ops.audits.reconstruction.instahide.pursuit import WORKING_BYTES
from instahide_ops.audits.reconstruction.instahide.recovery import pair_mix
from instahide_ops.errors import InvalidInputError
from instahide_ops.images import resize_image, to_unit_range
from instahide_ops.transforms.instahide.pool import DEFAULT_SCALES, PublicPool, crop_size

logger = logging.getLogger(__name__)

DEFAULT_PICKS = 4
"""Windows each encoding picks: its k − 2 = 4 public slots."""

DEFAULT_MIN_PICKS = 2
"""Encodings that must pick a window (within ``BIN`` pixels) for it to join the pool."""

BIN = 2
"""Picks within a BIN × BIN cell of a shrunk photo count as one window, so the encodings that hold one
public agree on it though their residuals' best offsets differ by a pixel."""

APART = 4
"""Pixels (of a shrunk photo) between the windows one residual picks: a window's neighbours a pixel or two
away hold most of its pattern, and would otherwise crowd out the residual's other public images."""

CANDIDATES_PER_PICK = 4
"""Best windows kept per pick while scoring, before the ``APART`` rule chooses among them."""

RESIDUAL_SIGN_NOISE = 0.03
"""The E-step's sign noise for the residuals: softer than the pool-aware attack's 0.0075, as no public
image is known yet."""

DEFAULT_MIN_COVERAGE = 0.5
"""Share of the encodings that must have picked a kept window for the pool-aware stages to run. Their EM
models every encoding's public mix with the found pool, so a pool that explains few encodings models the
rest worse than the public mean the start used. The share covered, and Max_SSIM start → photo-aware, on
the default pool (2,048): 10 × 3 0.13: 0.342 → 0.303, 0.07: 0.408 → 0.327; 20 × 5 0.18: 0.336 → 0.182, 0.26:
0.400 → 0.165, 0.12: 0.370 → 0.161; 20 × 10 0.37: 0.499 → 0.536, 0.37: 0.574 → 0.541; the 100 × 50 bench 0.97:
0.728 → 0.906. A pool of 16 on 10 × 3 and 10 × 5: 0.67–1.0, +0.06 to +0.52."""

DEFAULT_ROUNDS = 1

STAGES = ("photo_pool",)
PHOTO_POOL_WEIGHT = 1.60  # the "photo_pool" stage's rough share of the time, as ciphertext_only.STAGE_WEIGHTS
TILE = 96  # window positions per side scored at once; a multiple of BIN
# Memory: the residuals' spectra, E × C × 128 × 65 complex floats for 32 × 32 images (1 GB at E = 5,000).


@dataclass(frozen=True)
class ShrunkPhoto:
    """A photo shrunk so that each of its windows is a crop ``build_pool`` could cut at one scale.

    Attributes:
        pixels: (h, w, C) uint8.
        photo: the photo's index in the list given to ``shrink_photos``.
        crop: (height, width) of one window in the photo's pixels; the window at (y, x) covers the photo
            from (y, x) times crop / pool image size.
    """

    pixels: np.ndarray
    photo: int
    crop: tuple[int, int]


def shrink_photos(photos: Sequence[np.ndarray], *, height: int, width: int,
                  scales: Sequence[int] = DEFAULT_SCALES) -> list[ShrunkPhoto]:
    """Each photo shrunk as ``build_pool`` shrinks its crops at each scale: a crop of ``scale`` source pixels
    (the longer side) becomes ``height`` × ``width``, so every window of a shrunk photo is a candidate crop.

    Args:
        photos: (H, W, C) uint8 photos.
        height, width: the pool's image size.
        scales: the crop sizes ``build_pool`` used.

    Returns:
        Photo by photo and scale by scale; photos smaller than a crop at a scale are left out at that scale.
    """
    shrunk = []
    for i, photo in enumerate(photos):
        photo = np.asarray(photo)
        if photo.dtype != np.uint8 or photo.ndim != 3:
            raise InvalidInputError(f"photo {i}: expected uint8 (H, W, C), got {photo.dtype} {list(photo.shape)}",
                                    field="photos")
        for scale in sorted(set(scales)):
            crop_h, crop_w = crop_size(scale, height, width)
            if crop_h > photo.shape[0] or crop_w > photo.shape[1]:
                continue
            # Whole windows only, and the photo cut to what they cover: with an integer shrink factor (every
            # default scale) a window then holds exactly the pixels build_pool's crop at that place gets.
            rows, cols = photo.shape[0] * height // crop_h, photo.shape[1] * width // crop_w
            used = photo[:round(rows * crop_h / height), :round(cols * crop_w / width)]
            image = resize_image(np.ascontiguousarray(used), rows, cols)
            shrunk.append(ShrunkPhoto(image.reshape(*image.shape[:2], photo.shape[2]), i, (crop_h, crop_w)))
    return shrunk


@dataclass(frozen=True)
class FoundPool:
    """What ``photo_pool`` found: the crops, and the share of the residuals that picked one of them."""

    crops: np.ndarray
    coverage: float


@dataclass(frozen=True)
class PickedWindow:
    """A window several residuals picked: ``shrunk[image]`` at (y, x), and the residuals that picked it."""

    image: int
    y: int
    x: int
    pickers: Tensor


def encoding_residuals(magnitudes: Tensor, start: AttackResult, public_mean: Tensor | float) -> Tensor:
    """(E, H, W, C) each encoding's public mix as the start sees it: |e| signed by the E-step (the start's
    private part plus the public mass times the natural-image mean), minus the private part."""
    num_enc = len(magnitudes)
    images = start.recovered.to(magnitudes).reshape(len(start.recovered), -1)
    members, weights = start.members.to(magnitudes.device), start.coefficients.to(magnitudes)
    private = pair_mix(images, members, weights)
    mean = torch.as_tensor(public_mean, device=magnitudes.device, dtype=magnitudes.dtype)
    mean = mean.broadcast_to((magnitudes.shape[-1],)).repeat(magnitudes[0, ..., 0].numel())
    public_mass = (1.0 - weights.sum(dim=1)).clamp_min(0.0)
    signed = signed_sums(magnitudes.reshape(num_enc, -1), private + public_mass[:, None] * mean, RESIDUAL_SIGN_NOISE)
    return (signed - private).reshape(magnitudes.shape)


def pick_windows(residuals: Tensor, shrunk: Sequence[ShrunkPhoto], *, picks: int = DEFAULT_PICKS,
                 min_picks: int = DEFAULT_MIN_PICKS,
                 report: Callable[[float], None] | None = None) -> list[PickedWindow]:
    """The windows of the shrunk photos that several residuals pick as one of their best matches.

    A window's score for a residual is the inner product of their high-passed pixels (``_highpass``, each
    channel's mean taken out too) over the window's norm: the residual's norm is the same for all its
    windows, and the public mix's brightness is the pool-aware attack's to fit.

    Args:
        residuals: (E, H, W, C) the encodings' residuals (``encoding_residuals``).
        shrunk: the shrunk photos (``shrink_photos``).
        picks: windows (at least ``APART`` pixels apart) each residual picks.
        min_picks: residuals that must pick a window (within ``BIN`` pixels) for it to be kept.
        report: called with the fraction of window positions done.

    Returns:
        The windows picked often enough (possibly none), each at the offset its pickers scored highest
        within its bin.
    """
    num_enc, height, width, channels = residuals.shape
    if picks < 1 or min_picks < 1:
        raise InvalidInputError(f"picks and min_picks must be >= 1, got {picks} and {min_picks}", field="picks")
    targets = _highpass(residuals.permute(0, 3, 1, 2).float())
    targets = targets - targets.mean(dim=(2, 3), keepdim=True)
    # Correlation by FFT over tiles: a direct convolution costs H·W multiplications per window and
    # residual, the FFT about log of the tile's size (100 × 50 and 1.4 M windows: minutes instead of ~10).
    size = 1 << (TILE + max(height, width) - 2).bit_length()  # the power of 2 that holds a tile's pixels
    spectra = torch.fft.rfft2(targets, s=(size, size)).conj()  # (E, C, size, size // 2 + 1)
    # One (E, C) × (C, 1) product per frequency: a batched matmul, far faster than an einsum on complex tensors.
    spectra = spectra.permute(2, 3, 0, 1).reshape(-1, num_enc, channels).contiguous()
    candidates = CANDIDATES_PER_PICK * picks
    best = torch.full((num_enc, candidates), float("-inf"), device=targets.device)
    best_ids = torch.full((num_enc, candidates), -1, dtype=torch.long, device=targets.device)
    positions = [(image.pixels.shape[0] - height + 1) * (image.pixels.shape[1] - width + 1) for image in shrunk]
    total, done = max(1, sum(max(0, p) for p in positions)), 0
    for source, image in enumerate(shrunk):
        if image.pixels.shape[2] != channels or positions[source] <= 0:
            continue
        pixels = torch.from_numpy(np.ascontiguousarray(image.pixels)).to(targets.device).permute(2, 0, 1).float()
        pixels = _highpass(pixels[None] / 127.5 - 1.0)[0]
        norms = _centred_window_norms(pixels[None], height, width)  # (out_h, out_w)
        out_h, out_w = norms.shape
        for top in range(0, out_h, TILE):
            for left in range(0, out_w, TILE):
                rows, cols = min(TILE, out_h - top), min(TILE, out_w - left)
                patch = torch.fft.rfft2(pixels[:, top:top + rows + height - 1, left:left + cols + width - 1],
                                        s=(size, size))
                product = torch.matmul(spectra, patch.permute(1, 2, 0).reshape(-1, channels, 1))
                product = product.reshape(size, size // 2 + 1, num_enc).permute(2, 0, 1)
                # circular cross-correlation; the zero padding keeps the first rows × cols free of wrap-around
                scores = torch.fft.irfft2(product, s=(size, size))
                scores = scores[:, :rows, :cols] / norms[top:top + rows, left:left + cols]
                binned, where = F.max_pool2d(scores[None], BIN, ceil_mode=True, return_indices=True)
                ys, xs = where[0] // cols + top, where[0] % cols + left
                ids = (source << 40) | (ys << 20) | xs
                values = torch.cat([best, binned[0].reshape(num_enc, -1)], dim=1)
                chosen = values.topk(candidates, dim=1).indices
                best = values.gather(1, chosen)
                best_ids = torch.cat([best_ids, ids.reshape(num_enc, -1)], dim=1).gather(1, chosen)
                done += rows * cols
                if report is not None:
                    report(done / total)
    best_ids[~_apart(best_ids, picks)] = -1
    return _agreed_windows(best, best_ids, min_picks)


def _highpass(images: Tensor) -> Tensor:
    """(B, C, H, W) images minus their 5 × 5 binomial blur (edges replicated).

    Matching on the fine detail alone finds twice the pool images: smooth shading correlates with the
    shading of countless unrelated windows, detail only with its own place (300 mixes of 4 of 256 pool
    images, crops found: 0.40 → 0.85, share of the kept crops that are pool images 0.60 → 0.86; minus a
    3 × 3 blur 0.81 / 0.82; a blur instead of a high-pass 0.29 / 0.53)."""
    channels = images.shape[1]
    kernel = images.new_tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    blurred = F.pad(images, (2, 2, 2, 2), mode="replicate")
    blurred = F.conv2d(blurred, kernel.view(1, 1, 1, 5).repeat(channels, 1, 1, 1), groups=channels)
    blurred = F.conv2d(blurred, kernel.view(1, 1, 5, 1).repeat(channels, 1, 1, 1), groups=channels)
    return images - blurred


def _centred_window_norms(pixels: Tensor, height: int, width: int) -> Tensor:
    """(out_h, out_w) the norm of every window of the (1, C, h, w) image with each channel's mean removed."""
    count = height * width
    sums = F.avg_pool2d(pixels, (height, width), stride=1) * count
    squares = F.avg_pool2d(pixels.square(), (height, width), stride=1) * count
    return (squares - sums.square() / count).sum(dim=1)[0].clamp_min(1e-6).sqrt()


def _apart(ids: Tensor, picks: int) -> Tensor:
    """(E, K) which of each residual's K candidates (best first) it picks: greedily, up to ``picks`` of them,
    each at least ``APART`` pixels from those picked before it in the same shrunk image."""
    sources, ys, xs = ids >> 40, (ids >> 20) & ((1 << 20) - 1), ids & ((1 << 20) - 1)
    near = ((sources[:, :, None] == sources[:, None, :]) & ((ys[:, :, None] - ys[:, None, :]).abs() < APART)
            & ((xs[:, :, None] - xs[:, None, :]).abs() < APART))
    chosen = torch.zeros_like(ids, dtype=torch.bool)
    for j in range(ids.shape[1]):
        clash = (chosen[:, :j] & near[:, :j, j]).any(dim=1)
        chosen[:, j] = (ids[:, j] >= 0) & ~clash & (chosen.sum(dim=1) < picks)
    return chosen


def _agreed_windows(scores: Tensor, ids: Tensor, min_picks: int) -> list[PickedWindow]:
    """The bins at least ``min_picks`` residuals picked, each at its best-scored offset (a residual picks a
    bin at most once: tiles start at multiples of ``BIN``)."""
    valid = ids.flatten() >= 0
    readers = torch.arange(ids.shape[0]).repeat_interleave(ids.shape[1])[valid.cpu()]
    ids, scores = ids.flatten()[valid].cpu(), scores.flatten()[valid].cpu()
    sources, ys, xs = ids >> 40, (ids >> 20) & ((1 << 20) - 1), ids & ((1 << 20) - 1)
    bins = (sources << 40) | ((ys // BIN) << 20) | (xs // BIN)
    _, inverse, counts = torch.unique(bins, return_inverse=True, return_counts=True)
    order = scores.argsort(descending=True)
    first = torch.full((len(counts),), -1, dtype=torch.long)
    first[inverse[order].flip(0)] = order.flip(0)  # each bin's best-scored pick (the last write wins)
    return [PickedWindow(int(sources[i]), int(ys[i]), int(xs[i]), readers[inverse == inverse[i]])
            for i in first[counts >= min_picks].tolist()]


def exact_crops(picked: Sequence[PickedWindow], shrunk: Sequence[ShrunkPhoto], photos: Sequence[np.ndarray],
                residuals: Tensor, *, report: Callable[[float], None] | None = None) -> np.ndarray:
    """The crop each picked window stands for, cut from its photo where its pickers agree with it best.

    ``build_pool`` cuts at any source pixel, while a shrunk photo's windows start every ``crop / size``
    pixels (every 2nd to 8th at the default scales), so a window is a blend of its neighbours' true
    crops. Every crop within one window's step of the picked one is cut and shrunk as ``build_pool``
    does, scored by its summed correlation with the pickers' residuals, and the best kept.

    Args:
        picked: ``pick_windows``' result; shrunk: the images it picked from; photos: their photos.
        residuals: (E, H, W, C) the residuals it picked with.
        report: called with the fraction of windows done.

    Returns:
        (N, H, W, C) uint8 crops, one per distinct place (N ≤ len(picked)).
    """
    _, height, width, channels = residuals.shape
    detail = _highpass(residuals.permute(0, 3, 1, 2).float()).flatten(1)
    chosen: dict[tuple[int, int, int, int, int], np.ndarray] = {}
    for done, window in enumerate(picked):
        source = shrunk[window.image]
        photo = np.asarray(photos[source.photo])
        crop_h, crop_w = source.crop
        step_h, step_w = math.ceil(crop_h / height), math.ceil(crop_w / width)
        top, left = round(window.y * crop_h / height), round(window.x * crop_w / width)
        places = [(y, x) for y in range(max(0, top - step_h + 1), min(photo.shape[0] - crop_h, top + step_h - 1) + 1)
                  for x in range(max(0, left - step_w + 1), min(photo.shape[1] - crop_w, left + step_w - 1) + 1)]
        crops = np.stack([resize_image(photo[y:y + crop_h, x:x + crop_w], height, width).reshape(height, width, -1)
                          for y, x in places])
        unit = _highpass(to_unit_range(torch.from_numpy(crops)).to(residuals).permute(0, 3, 1, 2)).flatten(1)
        unit = unit / unit.norm(dim=1, keepdim=True).clamp_min(1e-6)
        best = int((unit @ detail[window.pickers].T).sum(dim=1).argmax())
        chosen.setdefault((source.photo, *places[best], crop_h, crop_w), crops[best])
        if report is not None and done % 64 == 0:
            report(done / len(picked))
    if not chosen:
        return np.zeros((0, height, width, channels), dtype=np.uint8)
    return np.stack(list(chosen.values()))


def photo_pool(residuals: Tensor, shrunk: Sequence[ShrunkPhoto], photos: Sequence[np.ndarray], *,
               picks: int = DEFAULT_PICKS, min_picks: int = DEFAULT_MIN_PICKS,
               report: Callable[[float], None] | None = None) -> FoundPool:
    """The pool images the residuals point at among all crops of the photos (``pick_windows`` over ``shrunk``,
    ``shrink_photos``' result for ``photos``, then ``exact_crops``): (N, H, W, C) uint8 crops, N possibly 0,
    and the share of the residuals that picked at least one of them."""
    def part(start: float, share: float) -> Callable[[float], None] | None:
        return None if report is None else lambda fraction: report(start + share * fraction)

    picked = pick_windows(residuals, shrunk, picks=picks, min_picks=min_picks, report=part(0.0, 0.9))
    covered = torch.zeros(len(residuals), dtype=torch.bool)
    for window in picked:
        covered[window.pickers] = True
    return FoundPool(exact_crops(picked, shrunk, photos, residuals, report=part(0.9, 0.1)),
                     int(covered.sum()) / len(residuals) if len(residuals) else 0.0)


def photo_aware_attack(encryption: np.ndarray | Tensor, labels: np.ndarray | Tensor, *, photos: Sequence[np.ndarray],
                       start: AttackResult, encodings_per_image: int, k: int = 6,
                       scales: Sequence[int] = DEFAULT_SCALES, rounds: int = DEFAULT_ROUNDS,
                       picks: int = DEFAULT_PICKS, min_picks: int = DEFAULT_MIN_PICKS,
                       min_coverage: float = DEFAULT_MIN_COVERAGE,
                       steps: int = DEFAULT_PUBLIC_MIX_STEPS, device: torch.device | str | None = None,
                       progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                       working_bytes: int = WORKING_BYTES) -> AttackResult:
    """Recover the private images as an attacker who holds the photos the public pool was cut from.

    Args:
        encryption: (E, H, W, C) encodings; labels: (E, classes) their mixed labels.
        photos: (H, W, C) uint8 photos the deployment's pool was cropped from (what the attacker holds).
        start: the ciphertext-only attack's result, which this continues.
        encodings_per_image: T; k: images per mix (cross mode).
        scales: crop sizes the pool may have used (``build_pool``'s scales).
        rounds: picking and pool-aware rounds, each from the previous round's result.
        picks, min_picks: see ``pick_windows``.
        min_coverage: share of the encodings whose residuals must have picked a kept window for a round's
            pool-aware stages to run (``DEFAULT_MIN_COVERAGE``).
        steps: EM steps of each of the pool-aware attack's public-mix stages.
        device, progress, cancel: as for the other attacks.
        working_bytes: memory the pool-aware attack's pursuits over the found windows may hold (see
            ``pool_aware_attack``).

    Returns:
        The last round's result, its stage seconds summed over the rounds and its ``public_coverage`` the
        last picking's; ``start``'s images when the windows picked by ``min_picks`` encodings explain under
        ``min_coverage`` of them (a small set reuses few public images, if any).

    Raises:
        InvalidInputError: bad arguments.
    """
    device = attack_device(encryption, device)
    encryption, labels = check_challenge_arrays(encryption, labels, device)
    if rounds < 1:
        raise InvalidInputError(f"must be at least 1, got {rounds}", field="rounds")
    if not 0.0 <= min_coverage <= 1.0:
        raise InvalidInputError(f"must lie in [0, 1], got {min_coverage}", field="min_coverage")
    height, width = encryption.shape[1:3]
    shrunk = shrink_photos(photos, height=height, width=width, scales=scales)
    if not shrunk:
        raise InvalidInputError(f"no photo holds a window of {height} × {width} at scales {list(scales)}",
                                field="photos")
    tracker = StageTracker(progress, cancel)
    public_mean = recovery_options(encryption, k, None, None)["public_mean"]
    result, attack_seconds, coverage = start, {}, 0.0
    for _ in range(rounds):
        with tracker.stage("photo_pool") as report:
            found = photo_pool(encoding_residuals(encryption.abs(), result, public_mean), shrunk, photos,
                               picks=picks, min_picks=min_picks, report=report)
        coverage = found.coverage
        if len(found.crops) == 0 or found.coverage < min_coverage:  # too little to act on: stay where it was
            logger.info("photo-aware attack: %d windows of the photos picked by %d encodings or more explain "
                        "%.0f%% of the encodings, under %.0f%%; the pool-aware stages do not run",
                        len(found.crops), min_picks, 100 * found.coverage, 100 * min_coverage)
            if progress is not None:  # so a progress bar ends here instead of jumping past the skipped stages
                progress(POOL_AWARE_STAGES[-1], 1.0)
            break
        result = pool_aware_attack(encryption, labels, pool=PublicPool.from_array(found.crops, device=device),
                                   start=result, encodings_per_image=encodings_per_image, k=k, device=device,
                                   steps=steps, progress=progress, cancel=cancel, working_bytes=working_bytes)
        for name, value in result.stage_seconds.items():
            attack_seconds[name] = attack_seconds.get(name, 0.0) + value
    return AttackResult(result.recovered, result.decryption, result.members, result.coefficients,
                        {**tracker.seconds, **attack_seconds}, str(device), public_coverage=coverage)


@register_attack
class PhotoAware:
    """The ciphertext-only attacker who holds the photos the public pool was cut from, but not the pool."""

    name = "photo_aware"
    title = "photo-aware"
    threat = ("sees what the ciphertext-only attacker sees and holds the photos the public pool was cut from, "
              "but not the pool (as ImageNet was public in the InstaHide Challenge)")
    family = "instahide"
    holds = frozenset({PHOTOS})
    bound = False
    default = False  # it searches every crop of the photos: several times the ciphertext-only attack's time
    starts_from = "ciphertext_only"

    def stages(self, view: AttackerView, settings: AttackSettings) -> dict[str, float]:
        return {"photo_pool": PHOTO_POOL_WEIGHT,
                **{stage: pool_aware.STAGE_WEIGHTS[stage] for stage in POOL_AWARE_STAGES}}

    def check(self, image_shape: tuple[int, int, int]) -> None:
        if image_shape[2] != 3:
            raise InvalidInputError(f"photo_aware needs RGB images (the photos are), got {image_shape[2]} channel(s)",
                                    field="attacks")

    def run(self, view: AttackerView, *, start: AttackResult | None, settings: AttackSettings,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> AttackResult:
        if start is None or view.photos is None:
            raise InvalidInputError("the photo-aware attack continues the ciphertext-only attack, holding the photos",
                                    field="start")
        return photo_aware_attack(view.encryption, view.labels, photos=view.photos, start=start,
                                  encodings_per_image=view.encodings_per_image, k=view.k, progress=progress,
                                  cancel=cancel, working_bytes=settings.working_bytes)
