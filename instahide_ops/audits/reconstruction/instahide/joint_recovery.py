"""Recover private images together with the public images a key names, from encoding magnitudes.

``recovery.recover_privates`` treats each encoding's public mix as Gaussian noise. An attacker who holds
the whole mapping of a key (which pool image fills every public slot, and every coefficient, as a leaked
key store has it) but not the masks or the pool's pixels can do better wherever the pool is smaller than
the public slots it fills: each public image seen in several encodings becomes one more unknown image,
and the sums are then exact, with no noise left to average away. Publics seen once stay noise (an
unknown seen once only absorbs its encoding).

The model, per pixel element of every encoding: ``y = |Σ_j λj·Xj + N|`` with X the privates and the
solved publics, N the noise publics' mix (Gaussian, mean and variance from their coefficients). EM as in
``recover_privates``, started from its images:

- E-step: the posterior mean of the signed sum, ``y·tanh(y·m/σ²)``, with m the current prediction;
- M-step: X solves one weighted least-squares problem whose normal matrix is the same for every pixel,
  so it is factorised once; a Gaussian prior pulls the solved publics toward the natural-image mean.

With exact sums the E-step's σ² would be zero and each step would only keep the signs the start guessed
(alternating projections: on 100 × 50, Max_SSIM 0.828 → 0.834, stuck). A floor on σ², annealed from
four times its value over the first two thirds of the run, lets the signs move: 0.958 with a floor of
0.03 (0.916 at 0.003).

Measured on the bundled 100 × 50 set (seed 0, 2 CPU cores, the 2,048-image pool: each public in about
10 encodings): Max_SSIM 0.828 → 0.961 in 45 s.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from instahide_ops.audits.reconstruction.instahide.pursuit import WORKING_BYTES
from instahide_ops.audits.reconstruction.instahide.recovery import DEFAULT_PUBLIC_STD, check_magnitudes
from instahide_ops.errors import InvalidInputError

DEFAULT_STEPS = 60
DEFAULT_NOISE_FLOOR = 0.03
DEFAULT_ANNEAL = 3.0
ANNEALED_SHARE = 2 / 3
"""Share of the steps over which the E-step's σ² cools from (1 + anneal)·floor to the floor."""

DEFAULT_PUBLIC_PRIOR = 0.3
"""Weight of the pull of solved publics toward the natural mean. Key-aware Max_SSIM (plain recovery first):
100 × 50 0.828 → 0.958 at 0, 0.965 at 0.1, 0.961 at 0.3, 0.928 at 1; where publics are seen only a few
times a weak pull lets them absorb their encodings (100 × 20: 0.712 → 0.008 at 0, 0.737 at 0.1, 0.767 at
0.3; 50 × 40: 0.821 → 0.189, 0.878, 0.882), so 0.3 is the default."""

MIN_SOLVED_SHARE = 0.9
"""Least share of the public slots' coefficient mass the solved publics must hold; below it the start is
returned unchanged. The refinement lacks ``recover_privates``'s priors, so where most publics stay noise
it only loses (30 × 20, 71 % of the mass solved: 0.764 → 0.743; 16 × 6, 16 %: 0.49 → 0.39), while at 98 %
(100 × 20, 50 × 40) it gains 0.06."""

NORMAL_BYTES_PER_ENTRY = 16
"""Bytes per entry of the normal matrix while it is factorised: the float64 matrix and its float64 Cholesky factor
are held at once. Its side S (the privates plus the solved publics) is what grows with the publics solved: over
8,000 encodings of 32 × 32 × 3, peak resident memory grew by 406 MiB from S = 600 to 7,031 (about 9 bytes per
added entry, as other buffers peak at other moments). The encodings' own buffers, about six of E × H × W × C
floats, come on top and do not depend on S."""


def unknowns_that_fit(working_bytes: int) -> int:
    """Side of the largest normal matrix (privates plus solved publics) whose factorisation fits ``working_bytes``.

    Solving a public costs time too: each EM step multiplies through the factor, 2·S² multiply-adds per pixel
    element (at 100 × 50 with 2,148 unknowns, 48 s for 60 steps on two CPU cores; with 5,840, 122 s).

    Examples:
        >>> unknowns_that_fit(1 << 30)
        8192
        >>> unknowns_that_fit(64 << 20)
        2048
    """
    return math.isqrt(working_bytes // NORMAL_BYTES_PER_ENTRY)


def recover_with_publics(magnitudes: Tensor, indices: Tensor, coefficients: Tensor, start: Tensor, *,
                         private_slots: int = 2, steps: int = DEFAULT_STEPS, noise_floor: float = DEFAULT_NOISE_FLOOR,
                         anneal: float = DEFAULT_ANNEAL, public_mean: Tensor | float = 0.0,
                         public_std: float = DEFAULT_PUBLIC_STD, public_prior: float = DEFAULT_PUBLIC_PRIOR,
                         working_bytes: int = WORKING_BYTES,
                         report: Callable[[float], None] | None = None) -> Tensor:
    """Refine private images by solving the reused public images alongside them.

    Args:
        magnitudes: (E, H, W, C) floating |e|.
        indices: (E, k) integer slot contents in slot order: ``private_slots`` private ids in [0, M), then
            public pool ids (any non-negative integers: only which encodings share one matters).
        coefficients: (E, k) the slots' coefficients.
        start: (M, H, W, C) the private images to start from (``recover_privates``'s, which orients them).
        private_slots: leading slots that hold private images.
        steps: EM iterations.
        noise_floor: floor on the E-step's noise variance (see the module's docstring).
        anneal: the floor starts (1 + anneal) times higher and cools over ``ANNEALED_SHARE`` of the steps.
        public_mean: natural-image pixel mean, a float or broadcastable to (H, W, C).
        public_std: natural-image pixel standard deviation: the spread of noise publics and of the prior.
        public_prior: weight of the prior pulling solved publics toward ``public_mean``, in units of its
            natural precision 1 / public_std² (the data are weighted by 1 / σ²); 0 turns it off.
        working_bytes: memory the normal matrix's factorisation may hold (``unknowns_that_fit``): publics are
            solved, the most reused first, while it fits; the rest count as noise.
        report: called with the fraction done after every iteration; an exception it raises stops the run.

    Returns:
        (M, H, W, C) private images in [-1, 1], on the magnitudes' device and dtype.

    Raises:
        InvalidInputError: malformed shapes, ids or coefficients, or bad settings.
    """
    num_enc, height, width, channels = _check(magnitudes, indices, coefficients, start, private_slots)
    for name, value in (("noise_floor", noise_floor), ("anneal", anneal), ("public_std", public_std),
                        ("public_prior", public_prior)):
        if not math.isfinite(value) or value < 0:
            raise InvalidInputError(f"must be finite and non-negative, got {value}", field=name)
    if noise_floor == 0 or public_std == 0:
        raise InvalidInputError("must be positive", field="noise_floor" if noise_floor == 0 else "public_std")
    if steps < 1:
        raise InvalidInputError(f"must be at least 1, got {steps}", field="steps")
    if working_bytes < 1:
        raise InvalidInputError(f"must be at least 1, got {working_bytes}", field="working_bytes")
    device, dtype = magnitudes.device, magnitudes.dtype
    num_private = len(start)
    pixels = height * width * channels
    y = magnitudes.abs().reshape(num_enc, pixels)
    indices = indices.to(device=device, dtype=torch.long)
    lam = coefficients.to(device=device, dtype=dtype)
    mean = torch.broadcast_to(torch.as_tensor(public_mean, device=device, dtype=dtype),
                              (height, width, channels)).reshape(pixels)

    cap = max(0, unknowns_that_fit(working_bytes) - num_private)
    columns, solved = _columns(indices, private_slots, num_private, cap)
    noise_slots = columns < 0
    known = lam * ~noise_slots  # E, k: the coefficients of the unknowns (0 at noise publics)
    slots = columns.clamp_min(0)  # E, k: gather ids (a noise public's points anywhere; its weight is 0)
    if solved == 0 or float(known[:, private_slots:].sum()) < MIN_SOLVED_SHARE * float(lam[:, private_slots:].sum()):
        return start.to(device=device, dtype=dtype).clone()  # mostly noise publics: the start's model fits better
    noise_mass = (lam * noise_slots).sum(dim=1)  # E: the noise publics' share of each sum
    noise_var = (lam**2 * noise_slots).sum(dim=1) * public_std**2
    offset = noise_mass[:, None] * mean[None]  # E, D: the noise publics' mean
    weight = 1.0 / (noise_var + noise_floor)  # E: the M-step's per-encoding precision
    num_unknowns = num_private + solved
    prior = torch.zeros(num_unknowns, device=device, dtype=dtype)
    prior[num_private:] = public_prior / public_std**2
    solve = _normal_solver(slots, known, weight, prior)

    images = torch.empty(num_unknowns, pixels, device=device, dtype=dtype)
    images[:num_private] = start.to(device=device, dtype=dtype).reshape(num_private, pixels)
    images[num_private:] = mean
    for step in range(steps):
        predicted = _mix(images, slots, known)
        predicted += offset
        cooling = max(0.0, 1.0 - step / (ANNEALED_SHARE * steps))
        variance = noise_var + noise_floor * (1.0 + anneal * cooling)
        signed = predicted.mul_(y).div_(variance[:, None]).tanh_().mul_(y)
        signed -= offset
        signed *= weight[:, None]
        rhs = _mix_transpose(signed, slots, known, num_unknowns)
        rhs += prior[:, None] * mean[None]
        images = solve(rhs).clamp_(-1.0, 1.0)
        if report is not None:
            report((step + 1) / steps)
    return images[:num_private].reshape(num_private, height, width, channels)


def _columns(indices: Tensor, private_slots: int, num_private: int, cap: int) -> tuple[Tensor, int]:
    """(E, k) unknown ids per slot (privates first, then solved publics; -1 for a noise public) and how
    many publics are solved: those in two or more encodings, the most reused first, at most ``cap``."""
    publics = indices[:, private_slots:]
    ids, inverse, counts = torch.unique(publics, return_inverse=True, return_counts=True)
    order = torch.argsort(counts, descending=True, stable=True)
    keep = order[counts[order] >= 2][:cap]
    new_id = torch.full_like(ids, -1)
    new_id[keep] = num_private + torch.arange(len(keep), device=ids.device)
    return torch.cat([indices[:, :private_slots], new_id[inverse]], dim=1), len(keep)


def _mix(images: Tensor, slots: Tensor, known: Tensor) -> Tensor:
    """(E, D) A·images: each encoding's sum over its unknown slots."""
    total = torch.zeros(len(slots), images.shape[1], device=images.device, dtype=images.dtype)
    for slot in range(slots.shape[1]):
        total.addcmul_(images[slots[:, slot]], known[:, slot, None])
    return total


def _mix_transpose(values: Tensor, slots: Tensor, known: Tensor, num_unknowns: int) -> Tensor:
    """(U, D) Aᵀ·values: each unknown's coefficient-weighted sum of the encodings it appears in."""
    total = torch.zeros(num_unknowns, values.shape[1], device=values.device, dtype=values.dtype)
    for slot in range(slots.shape[1]):
        total.index_add_(0, slots[:, slot], values * known[:, slot, None])
    return total


def _normal_solver(columns: Tensor, lam: Tensor, weight: Tensor, prior: Tensor) -> Callable[[Tensor], Tensor]:
    """Solve ``(AᵀWA + diag(prior) + ridge) X = rhs`` through one Cholesky factorisation (float64).

    AᵀWA is summed from each encoding's k × k outer product, so A (E × unknowns) is never formed.
    """
    size, slots, dtype = len(prior), columns.shape[1], lam.dtype
    lam, weight = lam.double(), weight.double()
    rows = columns[:, :, None].expand(-1, -1, slots).reshape(-1)
    cols = columns[:, None, :].expand(-1, slots, -1).reshape(-1)
    values = (lam[:, :, None] * lam[:, None, :] * weight[:, None, None]).reshape(-1)
    normal = torch.zeros(size * size, device=lam.device, dtype=torch.float64)
    normal.index_add_(0, rows * size + cols, values)
    normal = normal.reshape(size, size)
    normal.diagonal().add_(prior.double() + 1e-6 * float(normal.diagonal().mean()))
    factor = torch.linalg.cholesky(normal)
    del normal  # the float64 matrix and its factor are the most held at once (NORMAL_BYTES_PER_ENTRY)
    factor = factor.to(dtype)
    return lambda rhs: torch.cholesky_solve(rhs, factor)


def _check(magnitudes: Tensor, indices: Tensor, coefficients: Tensor, start: Tensor,
           private_slots: int) -> tuple[int, int, int, int]:
    num_enc, height, width, channels = check_magnitudes(magnitudes)
    if not isinstance(indices, Tensor) or indices.is_floating_point() or indices.ndim != 2 \
            or len(indices) != num_enc or not 1 <= private_slots < indices.shape[1]:
        raise InvalidInputError(f"expected integer (E = {num_enc}, k > {private_slots}), got "
                                f"{getattr(indices, 'shape', type(indices).__name__)}", field="indices")
    if not isinstance(coefficients, Tensor) or coefficients.shape != indices.shape:
        raise InvalidInputError(f"expected shape {list(indices.shape)}, got "
                                f"{getattr(coefficients, 'shape', type(coefficients).__name__)}", field="coefficients")
    if not bool(torch.isfinite(coefficients).all()) or bool((coefficients < 0).any()):
        raise InvalidInputError("coefficients must be finite and non-negative", field="coefficients")
    if not isinstance(start, Tensor) or start.ndim != 4 or tuple(start.shape[1:]) != (height, width, channels):
        raise InvalidInputError(f"expected (M, {height}, {width}, {channels}), got "
                                f"{getattr(start, 'shape', type(start).__name__)}", field="start")
    private = indices[:, :private_slots]
    if int(private.min()) < 0 or int(private.max()) >= len(start):
        raise InvalidInputError(f"private ids must lie in [0, {len(start)})", field="indices")
    if int(indices[:, private_slots:].min()) < 0:
        raise InvalidInputError("public ids must be non-negative", field="indices")
    return num_enc, height, width, channels
