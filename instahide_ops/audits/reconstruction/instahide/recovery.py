"""Recover private images from encoding magnitudes, given which privates each encoding mixes.

Model, per encoding e and pixel element x: the unmasked sum is ``λa·Pa + λb·Pb + N`` where the public
part N is treated as Gaussian with mean ``μ·r`` and variance ``v·c·r²`` (r = 1 − λa − λb is the public
mass, μ and v the mean and variance of natural-image pixels, c = E[Σλj²]/r² for the public slots). The
attacker sees only ``y = |sum|``; the sign of each sum is a latent variable.

That makes recovery an EM problem with exact steps (much faster and better than Adam on the magnitude
loss, which took ~1 s a step on 2 cores and reached SSIM 0.42 after 200 steps):

- E-step: the posterior mean of the signed sum is ``y·tanh(y·m/σ²)`` with m the current prediction;
- M-step: given those, P solves a weighted least-squares problem whose normal matrix ``AᵀDA`` (M × M,
  two λ's per row of A) is the same for every pixel, so it is inverted once per channel.

A non-zero public mean makes ``|λP + N|`` asymmetric in P's sign, which orients channels whose mean is
far from zero (on the bundled pool: green, blue). Channels with a weak mean are bootstrapped from the
best-oriented one (re-initialised from its solution half-way through), because EM started at zero drives
every image of a weak channel to one sign.

Two natural-image priors enter the M-step (both exact, through the eigenbases of ``AᵀDA`` and of the
pixel grid's Laplacian, so a step stays a few small matrix products), and the E-step is annealed:

- colour: red is poorly oriented by its mean, so its solve adds ``w·‖R − (a·G + b·B + c)‖²`` with (a, b, c)
  fitted on natural images; it takes red's correlation with the truth from 0.50 to 0.79;
- smoothness: a Gaussian MRF ``β·Σ (P(p) − P(p'))²`` over neighbouring pixels of every image;
- annealing: the E-step's noise variance starts (1 + anneal) times too high and falls linearly to the
  model's over the run, so sign posteriors stay soft instead of locking in the first guess;
- public brightness: most of a public image's variance is its overall brightness, so each encoding's
  public mix carries an offset shared by all its pixels; the E-step estimates it from the encoding's
  residuals and reads signs against it (per-private SSIM 0.744 → 0.761 on 100 × 50, 0.619 → 0.672 on
  30 × 20; subtracting it in the M-step as well confounds it with the images' own brightness: 0.33);
- restarts: the whole schedule run again from where the last run ended finds a better optimum than one
  longer run (0.761 → 0.811 with six restarts of 30 steps; 100 steps in one run: 0.764); with them the
  colour prior is best weaker (w 100 → 30: 0.811 → 0.830).

Measured on the bundled 100 images × 50 encodings with the true mapping (2 CPU cores, 60 steps, ~14 s):
per-private SSIM 0.633 with none of these (per-channel correlation with the truth R 0.50, G 0.94, B 0.96),
0.672 with the colour prior (w = 227), 0.684 adding smoothness (β = 10), 0.713 adding annealing that ends
half-way (anneal = 3), 0.720 at w = 100, β = 20, and 0.744 with the annealing spread over the whole run (then
the defaults; R 0.88, G 0.97, B 0.98; 30 steps: 0.740 in half the time, 80: 0.745). Annealing with smoothness
but no colour prior reaches 0.675. Tried and dropped: a joint 3-channel Gaussian colour prior (0.63-0.57:
wrongly signed red data then drags green and blue), freeing the colour prior's per-image red offset (0.66),
hotter annealing (half-way schedule, anneal = 5: 0.70, 10: 0.40, 30: loses every channel's orientation;
whole-run anneal = 4: 0.741).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from instahide_ops.errors import InvalidInputError

NATURAL_CHANNEL_MEAN = (2 * 0.485 - 1, 2 * 0.456 - 1, 2 * 0.406 - 1)
"""ImageNet's published RGB means mapped to [-1, 1]: a natural-image prior every attacker has."""

DEFAULT_PUBLIC_STD = 0.6
"""Pixel standard deviation of natural images in [-1, 1] (the bundled pool measures 0.60)."""

NATURAL_RED_FROM_GREEN_BLUE = (2.164, -1.169, -0.016)
"""(a, b, c) of the least-squares fit R ≈ a·G + b·B + c on natural pixels in [-1, 1] (the bundled public
pool; residual variance 0.044)."""

DEFAULT_COLOUR_WEIGHT = 30.0
"""Weight w of the red colour prior. Before the brightness offset and the restarts, 100 measured best
(β = 10, anneal = 3: 0.702 at w = 50, 0.719 at 100, 0.713 at 227). With them, the restarts orient red
well enough that a strong pull only drags it toward green and blue: on the bundled 100 × 50 with the true
mapping 0.823 at w = 0, 0.824 at 10, 0.829 at 20, 0.830 at 30, 0.825 at 50, 0.811 at 100, 0.794 at 200; on
an attacker's own set (crops of the public photos) 0.857 at 10, 0.860 at 30, 0.848 at 100."""

DEFAULT_SMOOTHNESS = 20.0
"""Weight β of the neighbouring-pixel prior (without annealing: 0.678 at 3, 0.684 at 10, 0.675 at 30;
with it and w = 100: 0.719 at 10, 0.720 at 20)."""

DEFAULT_PUBLIC_BRIGHTNESS_STD = 0.47
"""Standard deviation of natural images' per-image channel means in [-1, 1] (the bundled pool: R 0.50,
G 0.45, B 0.45, against 0.36 within an image): most of a public image's variance is its overall brightness."""

DEFAULT_STEPS = 30
DEFAULT_RESTARTS = 6
"""Times the whole EM schedule (annealing, bootstrap) is run again from the last images. On 100 × 50 with
the brightness offset, per-private SSIM: 60 steps once 0.761, then 0.796 after one restart, 0.798 after
two, 0.811 after four; 30 steps × (1 + 6) runs 0.811 in 54 s on two CPU cores (× 8: 0.811)."""

DEFAULT_ANNEAL = 3.0
"""Initial excess of the E-step's noise variance (cooling over the whole run; cooling by half-way measured
2: 0.711, 3: 0.713, 5: 0.700 with w = 227, β = 10)."""


def public_noise_ratio(public_slots: int) -> float:
    """E[Σ λj²] / E[(Σ λj)²] over ``public_slots`` half-normal draws: the public mix's variance per r²."""
    if public_slots < 1:
        raise InvalidInputError(f"must be at least 1, got {public_slots}", field="public_slots")
    return 1.0 / (1.0 + (public_slots - 1) * 2.0 / math.pi)


def recover_privates(magnitudes: Tensor, members: Tensor, weights: Tensor, *, num_images: int,
                     steps: int = DEFAULT_STEPS, report: Callable[[float], None] | None = None,
                     public_mean: Tensor | float | None = None, public_std: Tensor | float = DEFAULT_PUBLIC_STD,
                     public_slots: int = 4, bootstrap: bool = True, colour_weight: float = DEFAULT_COLOUR_WEIGHT,
                     smoothness: float = DEFAULT_SMOOTHNESS, anneal: float = DEFAULT_ANNEAL,
                     public_brightness_std: float = DEFAULT_PUBLIC_BRIGHTNESS_STD,
                     restarts: int = DEFAULT_RESTARTS, known_signs: Tensor | None = None) -> Tensor:
    """Estimate every private image from |encodings| and each encoding's two members and coefficients.

    Args:
        magnitudes: (E, H, W, C) floating |e|.
        members: (E, 2) integer private (or cluster) ids in [0, num_images).
        weights: (E, 2) the coefficients λ of the two members (read from the mixed labels).
        num_images: M, the number of private images (clusters).
        steps: EM iterations of one run of the schedule (each a few passes over the magnitudes).
        report: called with the fraction done after every iteration; an exception it raises (such
            as ``AttackCancelled``) propagates and stops the recovery.
        public_mean: natural-image pixel mean, broadcastable to (H, W, C) (a float, a (C,) or an
            (H, W, C) tensor). None means zero, which leaves every pixel's global sign undecided.
        public_std: natural-image pixel standard deviation, a float or broadcastable to (H, W, C).
        public_slots: number of public images in each mix (k − 2 in cross mode).
        bootstrap: re-initialise weakly oriented channels from the best-oriented one half-way through.
        colour_weight: weight of the prior pulling red toward ``NATURAL_RED_FROM_GREEN_BLUE`` applied to
            green and blue (3-channel images only); 0 turns it off.
        smoothness: weight of the prior on differences between neighbouring pixels; 0 turns it off.
        anneal: the E-step's noise variance starts at (1 + anneal) times the model's and falls linearly
            to it over the ``steps`` iterations; 0 turns annealing off.
        public_brightness_std: spread of the public images' own brightness (per-image channel means);
            the E-step then estimates each encoding's public brightness offset from its residuals and
            reads signs against it. 0 turns it off.
        restarts: further runs of the whole schedule (annealing from hot, bootstrap half-way), each
            starting from the images the last one ended with; the first starts from zeros. Ignored
            with ``known_signs`` (nothing left to infer).
        known_signs: (E, H, W, C) the true sign (±1) of every unmasked sum, which only an attacker
            holding the masks as well has; the E-step then uses them instead of its posterior, which
            makes this the ceiling of the recovery (``bench/recovery_ceiling.py``).

    Returns:
        (M, H, W, C) images in [-1, 1], on the magnitudes' device and dtype. Images no encoding
        mentions come back as zeros.

    Raises:
        ValueError: malformed shapes, ids out of range, bad coefficients or negative prior weights.

    Examples:
        >>> mags = torch.rand(6, 4, 4, 3)
        >>> members = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 1], [1, 2], [2, 0]])
        >>> recover_privates(mags, members, torch.full((6, 2), 0.3), num_images=3, steps=2).shape
        torch.Size([3, 4, 4, 3])
    """
    _check_inputs(magnitudes, members, weights, num_images, steps)
    if restarts < 0:
        raise InvalidInputError(f"must not be negative, got {restarts}", field="restarts")
    for name, value in (("colour_weight", colour_weight), ("smoothness", smoothness), ("anneal", anneal),
                        ("public_brightness_std", public_brightness_std)):
        if not math.isfinite(value) or value < 0:
            raise InvalidInputError(f"must be finite and non-negative, got {value}", field=name)
    num_enc, height, width, channels = magnitudes.shape
    device, dtype = magnitudes.device, magnitudes.dtype
    y = magnitudes.abs().reshape(num_enc, height * width, channels)
    if known_signs is not None:
        if not isinstance(known_signs, Tensor) or known_signs.shape != magnitudes.shape:
            raise InvalidInputError(f"expected shape {list(magnitudes.shape)}, got "
                                    f"{getattr(known_signs, 'shape', type(known_signs).__name__)}", field="known_signs")
        known_signs = known_signs.to(device=device, dtype=dtype).sign().reshape(y.shape)
    members = members.to(device=device, dtype=torch.long)
    lam = weights.to(device=device, dtype=dtype)
    mean = _field(public_mean if public_mean is not None else 0.0, (height, width, channels), y, "public_mean")
    std = _field(public_std, (height, width, channels), y, "public_std")
    rest = (1.0 - lam.sum(dim=1)).clamp_min(0.0)  # E: public mass
    # The fields are usually one value per channel: then offset and noise stay (E, 1, C) and broadcast,
    # which saves the E-step whole passes over (E, HW, C) memory and gives the same numbers.
    offset = rest[:, None, None] * _squeeze_constant(mean)[None]  # E, HW or 1, C
    noise = (public_noise_ratio(public_slots) * rest**2)[:, None, None] * _squeeze_constant(std)[None] ** 2 + 1e-4
    every_pixel = noise.expand(num_enc, height * width, channels).contiguous()  # reduced as before the squeeze
    precision = 1.0 / every_pixel.mean(dim=1)  # E, C: the solve uses one variance per encoding and channel
    # Each encoding's public mix has a brightness of its own: an offset shared by all its pixels, whose
    # posterior mean (from the residuals of all HW pixels) shrinks their mean toward 0.
    brightness_var = (public_noise_ratio(public_slots) * rest**2)[:, None, None] * public_brightness_std**2
    brightness_shrink = brightness_var / (brightness_var + every_pixel.mean(dim=1, keepdim=True) / (height * width))
    del every_pixel
    design = design_matrix(members, lam, num_images)
    normal = [normal_eigen(design, precision[:, c]) for c in range(channels)]
    grid = grid_laplacian_eigen(height, width, like=y)
    colour = colour_weight if channels == 3 and colour_weight > 0 else 0.0
    images = torch.zeros(num_images, height * width, channels, device=device, dtype=dtype)
    strength = (mean.abs() / std).mean(dim=0)  # C: how strongly the public mean orients a channel
    cycles = 1 if known_signs is not None else 1 + restarts  # restarts only help the sign inference
    total = steps * cycles
    for cycle in range(cycles):  # each restart re-runs the schedule from the last images
        brightness = torch.zeros(num_enc, 1, channels, device=device, dtype=dtype)
        for step in range(steps):
            if bootstrap and channels > 1 and step == steps // 2:
                best = int(strength.argmax())
                weak = (strength < 0.5 * strength[best]).nonzero().flatten().tolist()
                images[..., weak] = images[..., best : best + 1]
            # In place where the old value is not needed again: each (E, HW, C) pass is a memory pass.
            predicted = pair_mix(images, members, lam)
            predicted += offset
            if known_signs is None:
                signed = torch.add(predicted, brightness).mul_(y)
                signed = signed.div_(noise * _temperature(step, steps, anneal)).tanh_().mul_(y)
                if public_brightness_std > 0:
                    residual = torch.sub(signed, predicted, out=predicted)  # predicted is not needed again
                    brightness = brightness_shrink * residual.mean(dim=1, keepdim=True)
                signed -= offset
            else:
                signed = y * known_signs - offset
            data_rhs = [design.T @ (signed[..., c] * precision[:, c, None]) for c in range(channels)]
            for c in range(channels):
                images[..., c] = solve_with_priors(data_rhs[c], normal[c], grid, smoothness, (height, width))
            if colour:
                rhs = data_rhs[0] + colour * _red_from_green_blue(images)
                images[..., 0] = solve_with_priors(rhs, normal[0], grid, smoothness, (height, width), extra=colour)
            images.clamp_(-1.0, 1.0)
            if report is not None:
                report((cycle * steps + step + 1) / total)
    return images.reshape(num_images, height, width, channels)


def _temperature(step: int, steps: int, anneal: float) -> float:
    """Factor on the E-step's noise variance: 1 + anneal at the start, falling linearly toward 1 at the end.

    Cooling over the whole run beat cooling by half-way (0.744 vs 0.720) or by three quarters (0.733).
    """
    return 1.0 + anneal * (1.0 - step / steps)


def _red_from_green_blue(images: Tensor) -> Tensor:
    """(M, HW) natural-colour prediction of red from the green and blue of (M, HW, 3) images."""
    a, b, c = NATURAL_RED_FROM_GREEN_BLUE
    return a * images[..., 1] + b * images[..., 2] + c


def pair_mix(images: Tensor, members: Tensor, weights: Tensor) -> Tensor:
    """(E, ...) each encoding's private part: its two (M, ...) images weighted by their (E, 2) coefficients."""
    scale = weights.to(images.dtype).reshape(len(weights), 2, *(1,) * (images.ndim - 1))
    mix = images[members[:, 0]].mul_(scale[:, 0])  # the gathers are copies: scaled in place
    mix += images[members[:, 1]].mul_(scale[:, 1])
    return mix


def design_matrix(members: Tensor, weights: Tensor, num_images: int) -> Tensor:
    """(E, M) A with each encoding's two coefficients at its members' columns: the sums' private part is A·P."""
    design = torch.zeros(len(members), num_images, device=weights.device, dtype=weights.dtype)
    rows = torch.arange(len(members), device=weights.device)
    design.index_put_((rows, members[:, 0]), weights[:, 0], accumulate=True)
    design.index_put_((rows, members[:, 1]), weights[:, 1], accumulate=True)
    return design


def normal_eigen(design: Tensor, precision: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Eigenvalues and eigenvectors of ``AᵀDA`` (D: the (E,) per-encoding precisions, or I), in float64 and
    with a small ridge, so images no encoding mentions stay finite; returned in the design's dtype."""
    weighted = design if precision is None else design * precision[:, None]
    ridge = 1e-4 * torch.eye(design.shape[1], device=design.device, dtype=torch.float64)
    values, vectors = torch.linalg.eigh((design.T @ weighted).double() + ridge)
    return values.to(design.dtype), vectors.to(design.dtype)


def grid_laplacian_eigen(height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Eigenvalues (H, W) and the row and column eigenbases of the 4-neighbour grid Laplacian.

    The grid's Laplacian is the Kronecker sum of two path-graph Laplacians, so its eigenbasis is the
    product of theirs (a DCT) and never has to be formed as an HW × HW matrix.
    """
    def path(n: int) -> tuple[Tensor, Tensor]:
        links, zero = torch.ones(n - 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        laplacian = torch.diag(torch.cat([links, zero]) + torch.cat([zero, links]))
        laplacian -= torch.diag(links, 1) + torch.diag(links, -1)
        values, vectors = torch.linalg.eigh(laplacian)
        return values.clamp_min(0.0), vectors

    (row_values, rows), (col_values, cols) = path(height), path(width)
    values = row_values[:, None] + col_values[None, :]
    return tuple(t.to(device=like.device, dtype=like.dtype) for t in (values, rows, cols))


def solve_with_priors(rhs: Tensor, normal: tuple[Tensor, Tensor], grid: tuple[Tensor, Tensor, Tensor],
                       smoothness: float, size: tuple[int, int], extra: float = 0.0) -> Tensor:
    """Solve ``(N ⊗ I + extra·I + smoothness · I ⊗ L) P = rhs`` for P (M, HW), N = AᵀDA = U diag(n) Uᵀ."""
    values, vectors = normal
    z = vectors.T @ rhs
    if smoothness > 0:
        grid_values, rows, cols = grid
        z = rows.T @ z.reshape(-1, *size) @ cols
        z = z / (values[:, None, None] + extra + smoothness * grid_values)
        z = (rows @ z @ cols.T).reshape(rhs.shape)
    else:
        z = z / (values[:, None] + extra)
    return vectors @ z


def _squeeze_constant(field: Tensor) -> Tensor:
    """(HW, C) field → (1, C) when every pixel holds the same values, else the field unchanged."""
    return field[:1] if bool((field == field[:1]).all()) else field


def _field(value: Tensor | float, shape: tuple[int, int, int], like: Tensor, name: str) -> Tensor:
    tensor = torch.as_tensor(value, device=like.device, dtype=like.dtype)
    try:
        tensor = torch.broadcast_to(tensor, shape)
    except RuntimeError:
        raise InvalidInputError(f"expected a float or a tensor broadcastable to {list(shape)}, got shape "
                                f"{list(tensor.shape)}", field=name) from None
    return tensor.reshape(shape[0] * shape[1], shape[2])


def check_magnitudes(magnitudes: Tensor) -> tuple[int, int, int, int]:
    """The (E, H, W, C) shape of encoding magnitudes, refused (``InvalidInputError``) unless a floating rank-4
    tensor with at least one encoding."""
    if not isinstance(magnitudes, Tensor) or not magnitudes.is_floating_point() or magnitudes.ndim != 4:
        raise InvalidInputError(f"expected a floating (E, H, W, C) tensor, got "
                                f"{getattr(magnitudes, 'shape', type(magnitudes).__name__)}", field="magnitudes")
    if magnitudes.shape[0] == 0:
        raise InvalidInputError("no encodings", field="magnitudes.shape")
    return tuple(magnitudes.shape)


def _check_inputs(magnitudes: Tensor, members: Tensor, weights: Tensor, num_images: int, steps: int) -> None:
    num_enc = check_magnitudes(magnitudes)[0]
    if not isinstance(members, Tensor) or members.shape != (num_enc, 2) or members.is_floating_point():
        raise InvalidInputError(f"expected integer shape {[num_enc, 2]}, got "
                                f"{getattr(members, 'shape', type(members).__name__)}", field="members")
    if not isinstance(weights, Tensor) or weights.shape != (num_enc, 2):
        raise InvalidInputError(f"expected shape {[num_enc, 2]}, got "
                                f"{getattr(weights, 'shape', type(weights).__name__)}", field="weights")
    if num_images < 1:
        raise InvalidInputError(f"must be at least 1, got {num_images}", field="num_images")
    if steps < 1:
        raise InvalidInputError(f"must be at least 1, got {steps}", field="steps")
    low, high = int(members.min()), int(members.max())
    if low < 0 or high >= num_images:
        raise InvalidInputError(f"ids must lie in [0, {num_images}), got range [{low}, {high}]", field="members")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or bool((weights.sum(1) > 1 + 1e-5).any()):
        raise InvalidInputError("coefficients must be finite, non-negative and sum to at most 1 per row",
                                field="weights")
