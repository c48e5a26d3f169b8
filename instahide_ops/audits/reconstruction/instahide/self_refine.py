"""A refiner the attacker trains on its own recoveries, with no image corpus.

The recovery's errors have a look of their own (the public mix left in as texture, edges softened). The
attacker can show itself that look: it encodes its own recoveries as if they were private images, mixing in
synthetic public images that have natural images' 1/f spectrum and brightness spread, attacks those sets
the same way, and trains a small CNN to map each recovery of a recovery back to the recovery it came from.
Applied once to the real recoveries it undoes part of that look (2-core bench, 100 × 50, seeds 0 / 1 / 2:
see docs/notes/attack-research.md, "Refining the recoveries with the attacker's own sets").

The refiner corrects structure only: it sees each image normalised and leaves each channel's mean where
the recovery put it. A refiner allowed to move brightness and colour learns its training images' colours,
which are not the private images': on seed 0 it lost 0.013 trained on simulated sets (with wallpaper
publics), 0.061 trained on a corpus of other photos.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from instahide_ops.audits.reconstruction.attack import AttackResult
from instahide_ops.audits.reconstruction.instahide.recovery import DEFAULT_PUBLIC_BRIGHTNESS_STD
from instahide_ops.audits.reconstruction.scores import ssim
from instahide_ops.errors import InvalidInputError
from instahide_ops.images import unit_range_to_uint8
from instahide_ops.transforms.instahide.challenge import build_challenge
from instahide_ops.transforms.instahide.pool import PublicPool


@dataclass(frozen=True)
class RefinementConfig:
    """How the attacker trains its refiner.

    Attributes:
        sets: simulated sets, each one more attack (4 give ~400 training pairs at 100 × 50).
        steps, batch: training steps and images per step.
        seed: the simulated sets' keys, the synthetic publics and the training.
    """

    sets: int = 4
    steps: int = 1200
    batch: int = 64
    seed: int = 0

    def validate(self) -> None:
        for name in ("sets", "steps", "batch"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"must be at least 1, got {getattr(self, name)}", field=f"refinement.{name}")


SYNTHETIC_POOL_SIZE = 2048
# Pixel spread inside a synthetic public image: a luminance field and weaker colour fields, near the bundled
# pool's 0.36 within an image.
LUMINANCE_STD = 0.32
CHROMA_STD = 0.12
# Weight of the brightness part all channels share (0.96² of its variance): bright in one channel, bright in all.
SHARED_BRIGHTNESS = 0.96
SEED_STRIDE = 1 << 16  # simulated set i of refinement seed s is keyed by s * SEED_STRIDE + i
# A cluster trains the refiner only when most of its encodings hold the image it is paired with.
MIN_PURITY = 0.5

Attack = Callable[[np.ndarray, np.ndarray], AttackResult]


class StructureRefiner(nn.Module):
    """A residual CNN on (N, H, W, C) images in [-1, 1] that keeps each channel's mean."""

    def __init__(self, channels: int = 3, width: int = 32, depth: int = 5) -> None:
        super().__init__()
        self.head = nn.Conv2d(channels, width, 3, padding=1)
        self.body = nn.Sequential(*[layer for _ in range(depth)
                                    for layer in (nn.Conv2d(width, width, 3, padding=1), nn.ReLU())])
        self.tail = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # starts as the identity
        nn.init.zeros_(self.tail.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2)
        mean = x.mean((2, 3), keepdim=True)
        scale = (x - mean).std((1, 2, 3), keepdim=True) + 1e-3
        residual = self.tail(self.body(torch.relu(self.head((x - mean) / scale))))
        residual = residual - residual.mean((2, 3), keepdim=True)
        return (x + scale * residual).clamp(-1, 1).permute(0, 2, 3, 1)


def synthetic_publics(count: int, height: int, width: int, channels: int, *, public_mean: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
    """(count, H, W, C) images in [-1, 1] with a 1/f amplitude spectrum, brightness drawn around
    ``public_mean`` (a scalar, (C,) or (H, W, C) tensor) with the spread the recovery assumes of public
    images."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.fftfreq(width)[None, :]
    amplitude = 1 / (fx**2 + fy**2).sqrt().clamp_min(1 / max(height, width))
    amplitude[0, 0] = 0

    def field(*shape: int) -> torch.Tensor:
        noise = torch.complex(torch.randn(*shape, height, width, generator=generator),
                              torch.randn(*shape, height, width, generator=generator))
        values = torch.fft.ifft2(noise * amplitude).real
        return values / values.std((-2, -1), keepdim=True)

    images = LUMINANCE_STD * field(count)[..., None] + CHROMA_STD * field(count, channels).permute(0, 2, 3, 1)
    shared = SHARED_BRIGHTNESS * torch.randn(count, 1, 1, 1, generator=generator)
    own = (1 - SHARED_BRIGHTNESS**2) ** 0.5 * torch.randn(count, 1, 1, channels, generator=generator)
    brightness = DEFAULT_PUBLIC_BRIGHTNESS_STD * (shared + own)
    return (images + public_mean.cpu() + brightness).clamp(-1, 1)


def simulated_pairs(recovered: torch.Tensor, classes: torch.Tensor, attack: Attack, *, k: int,
                    encodings_per_image: int, pool: PublicPool, sets: int, seed: int,
                    report: Callable[[float], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(recoveries of the recoveries, the recoveries they came from): each set encodes ``recovered`` as the
    private images with the attacker's own keys and attacks it with ``attack``; every cluster whose
    encodings mostly hold one image is paired with that image."""
    inputs, targets = [], []
    images = recovered.detach().cpu().float()
    for index in range(sets):
        challenge, truth = build_challenge(images.numpy(), classes.cpu().numpy(), k=k,
                                           encodings_per_image=encodings_per_image, pool=pool,
                                           seed=seed * SEED_STRIDE + index)
        result = attack(challenge.encryption, challenge.labels)
        votes = torch.zeros(len(result.recovered), len(images))
        pairs = torch.from_numpy(truth.pair_indices)
        for slot in range(2):
            for image in range(2):
                votes.index_put_((result.members[:, slot], pairs[:, image]), torch.ones(len(pairs)), accumulate=True)
        sizes = votes.sum(1) / 2
        held, match = votes.max(1)
        keep = held >= MIN_PURITY * sizes.clamp_min(1)
        inputs.append(result.recovered[keep])
        targets.append(images[match[keep]])
        if report is not None:
            report((index + 1) / sets)
    return torch.cat(inputs), torch.cat(targets)


def train_refiner(inputs: torch.Tensor, targets: torch.Tensor, *, steps: int, batch: int, seed: int,
                  device: torch.device | str = "cpu",
                  report: Callable[[float], None] | None = None) -> StructureRefiner:
    """Fit a ``StructureRefiner`` to raise the SSIM of ``inputs`` to ``targets`` (dihedral, channel-order and
    sign augmentations: the refiner is to learn the recovery's look, not the simulation's colours)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = StructureRefiner(channels=inputs.shape[-1]).to(device)
    inputs, targets = inputs.to(device), targets.to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    for step in range(steps):
        chosen = torch.randint(len(inputs), (batch,), generator=generator).to(device)
        x, y = augment(inputs[chosen], targets[chosen], generator)
        loss = 1 - ssim(net(x), y, dtype=None).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if report is not None and step % 100 == 0:
            report(step / steps)
    return net.eval()


def augment(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random rotation, flip, channel order and sign on both batches."""
    turns = int(torch.randint(4, (), generator=generator))
    x, y = x.rot90(turns, (1, 2)), y.rot90(turns, (1, 2))
    if torch.rand((), generator=generator) < 0.5:
        x, y = x.flip(2), y.flip(2)
    order = torch.randperm(x.shape[-1], generator=generator).to(x.device)
    sign = 1.0 if torch.rand((), generator=generator) < 0.5 else -1.0
    return sign * x[..., order], sign * y[..., order]


def refine_recoveries(recovered: torch.Tensor, classes: torch.Tensor, attack: Attack, *, k: int,
                      encodings_per_image: int, public_mean: torch.Tensor, config: RefinementConfig,
                      report: Callable[[float], None] | None = None) -> torch.Tensor:
    """``recovered`` after a refiner trained on the attacker's own simulated sets (see the module).

    Args:
        recovered: (M, H, W, C) one recovery per cluster.
        classes: (M,) each cluster's class, as the attack read it from the labels.
        attack: the attack to simulate, on (encryption, labels) arrays, without refinement.
        k, encodings_per_image: the real set's public parameters, used for the simulated sets too.
        public_mean: the public mean the recovery assumes (a scalar, (C,) or (H, W, C) tensor).
        config: the simulation and the training.

    Returns:
        (M, H, W, C) refined recoveries on ``recovered``'s device; ``recovered`` itself when the simulated sets
        gave no training pair.
    """
    config.validate()
    sets, seed = config.sets, config.seed
    _, height, width, channels = recovered.shape
    generator = torch.Generator().manual_seed(seed)
    publics = synthetic_publics(SYNTHETIC_POOL_SIZE, height, width, channels, public_mean=public_mean,
                                generator=generator)
    pool = PublicPool.from_array(unit_range_to_uint8(publics.numpy()))
    # On two CPU cores the default training takes about as long as the default four sets: half the bar each.
    inputs, targets = simulated_pairs(recovered, classes, attack, k=k, encodings_per_image=encodings_per_image,
                                      pool=pool, sets=sets, seed=seed,
                                      report=None if report is None else lambda f: report(f / 2))
    if not len(inputs):  # no simulated cluster held mostly one image (a set too small to cluster): nothing to learn
        return recovered
    device = recovered.device
    net = train_refiner(inputs, targets, steps=config.steps, batch=config.batch, seed=seed, device=device,
                        report=None if report is None else lambda f: report((1 + f) / 2))
    with torch.no_grad():
        return net(recovered.float()).to(recovered.dtype)
