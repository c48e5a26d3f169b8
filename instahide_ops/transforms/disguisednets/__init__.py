"""DisguisedNets (Sharma, Chen et al.): block permutation, then per-block random projection (RMT) or AES-ECB,
under one long-lived key per dataset.

``keys`` draws keys and checks parameters, ``blocks`` cuts images into blocks and moves them, ``disguise``
disguises and undisguises. Where the papers and their code disagree the choices are DESIGN.md's: noise is added
before the projection, ((X + Δ)·R), and an AES unit is 16 consecutive bytes of one channel of a block.
``DisguisedNets`` is the family as the registry holds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from instahide_ops.transforms import TransformOutput, register_transform
from instahide_ops.transforms.disguisednets.disguise import disguise, draw_noise, undisguise
from instahide_ops.transforms.disguisednets.keys import DisguisedNetsKey, DisguisedNetsParams, check_params, create_key
from instahide_ops.transforms.inputs import check_images, check_labels

__all__ = ["DisguisedNets", "DisguisedNetsKey", "DisguisedNetsParams", "check_params", "create_key", "disguise",
           "draw_noise", "undisguise"]


@dataclass(frozen=True)
class BatchKeys:
    """What recomputes one disguised batch: the long-lived key and the noise this call drew (None without)."""

    key: DisguisedNetsKey
    noise: torch.Tensor | None


@register_transform
class DisguisedNets:
    """DisguisedNets as a registered transform: parameters ``DisguisedNetsParams``, resources the key.

    Labels pass through unmixed (one-hot); the same image under the same noise-free key gives the same output.
    RMT's output follows ``out_dtype``; AES's is its ciphertext bytes, uint8.
    """

    name = "disguised_nets"
    title = "DisguisedNets"
    long_lived_keys = True

    def default_params(self) -> DisguisedNetsParams:
        return DisguisedNetsParams()

    def default_resources(self, params: DisguisedNetsParams, image_shape: tuple[int, int, int], *,
                          device: torch.device | str = "cpu") -> DisguisedNetsKey:
        return create_key(params, image_shape)

    def encode(self, images: torch.Tensor, labels: torch.Tensor, params: DisguisedNetsParams, *, num_classes: int,
               resources: DisguisedNetsKey, seed: int | tuple[int, ...] | None = None,
               out_dtype: torch.dtype = torch.float32) -> TransformOutput:
        check_images(images)
        check_labels(labels, len(images), num_classes)
        noise = draw_noise(resources, len(images), seed=seed, device=images.device)
        encoded = disguise(images, resources, noise=noise)
        if encoded.is_floating_point():  # AES's ciphertext bytes stay uint8
            encoded = encoded.to(out_dtype)
        one_hot = torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float32)
        return TransformOutput(encoded, one_hot, BatchKeys(resources, noise), resources.seeded or seed is not None)

    def recompute(self, images: torch.Tensor, output: TransformOutput, *,
                  resources: DisguisedNetsKey) -> torch.Tensor:
        encoded = disguise(images, output.keys.key, noise=output.keys.noise)
        return encoded.to(torch.float32) if encoded.is_floating_point() else encoded
