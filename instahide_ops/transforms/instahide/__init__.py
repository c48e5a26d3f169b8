"""InstaHide (Huang et al., ICML 2020): each image mixed with k − 1 others under one-time keys.

    e = σ ⊙ (λ₁·x + λ₂·x₂ + … + λ_k·x_k)

``encode`` (the rule), ``keys`` (one-time key material from the CSPRNG), ``pool`` (public pools),
``challenge`` (challenge-shaped sets), ``_mix_cpu`` (the fused CPU kernel). ``InstaHide`` is the family as the
registry holds it.
"""

from __future__ import annotations

import torch

from instahide_ops.transforms import TransformOutput, register_transform
from instahide_ops.transforms.instahide.encode import EncodeParams, apply_keys, encode
from instahide_ops.transforms.instahide.pool import PublicPool


@register_transform
class InstaHide:
    """InstaHide as a registered transform: parameters ``EncodeParams``, resources the public pool (or None)."""

    name = "instahide"
    title = "InstaHide"
    long_lived_keys = False

    def default_params(self) -> EncodeParams:
        return EncodeParams()

    def default_resources(self, params: EncodeParams, image_shape: tuple[int, int, int], *,
                          device: torch.device | str = "cpu") -> PublicPool | None:
        if not needs_pool(params):
            return None
        from instahide_ops.transforms.instahide.pool import adapt_pool, default_pool

        height, width, channels = image_shape
        array = adapt_pool(default_pool(height, width), height=height, width=width, channels=channels)
        return PublicPool.from_array(array, device=device)

    def encode(self, images: torch.Tensor, labels: torch.Tensor, params: EncodeParams, *, num_classes: int,
               resources: PublicPool | None, seed: int | tuple[int, ...] | None = None,
               out_dtype: torch.dtype = torch.float32) -> TransformOutput:
        result = encode(images, labels, num_classes=num_classes, params=params, pool=resources, seed=seed,
                        out_dtype=out_dtype)
        return TransformOutput(result.encoded, result.mixed_labels, result.keys, result.keys.seeded)

    def recompute(self, images: torch.Tensor, output: TransformOutput, *,
                  resources: PublicPool | None) -> torch.Tensor:
        return apply_keys(images, output.keys, resources if output.keys.k > output.keys.private_per_mix else None)


def needs_pool(params: EncodeParams) -> bool:
    """Whether the mix takes public images (cross mode with slots beyond the private ones)."""
    return params.mode == "cross" and params.resolved_k > params.private_per_mix
