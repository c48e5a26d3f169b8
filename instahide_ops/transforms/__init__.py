"""Image transforms, by name: one subpackage per family, each registering a ``Transform``.

A transform disguises a batch of images (N, H, W, C) and hands back the encodings, the labels that go with
them, and its keys: whatever recomputes the encodings from the inputs (``recompute``), so a test (and a data
owner) can check that the keys describe the output exactly. What a family needs beside its parameters (a
public pool, a key from the key store) is its ``resources``. Registering a family makes the service and the
contract tests (tests/ops/transforms/test_contract.py) take it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from instahide_ops.registry import Registry


@dataclass(frozen=True)
class TransformOutput:
    """One disguised batch.

    Attributes:
        encoded: (N, H, W, C) on the images' device, of the element type asked for.
        labels: (N, ...) float32 on the labels' device: the labels that go with the encodings.
        keys: what recomputes ``encoded`` from the inputs (InstaHide: the one-time ``EncodeKeys``).
        seeded: the keys came from an explicit seed rather than the CSPRNG.
    """

    encoded: torch.Tensor
    labels: torch.Tensor
    keys: Any
    seeded: bool


class Transform(Protocol):
    """An image-transform family, as the service and the contract tests run it.

    Class attributes:
        name: the registry name, also the ``EncodeConfig.transform`` member that selects it ("instahide").
        title: its name for people.
        long_lived_keys: one key disguises a whole dataset, the same way at every call (DisguisedNets), rather
            than fresh keys at every call (InstaHide).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    long_lived_keys: ClassVar[bool]

    def default_params(self) -> Any:
        """The parameters an empty config means."""
        ...

    def default_resources(self, params: Any, image_shape: tuple[int, int, int], *,
                          device: torch.device | str = "cpu") -> Any:
        """What ``encode`` needs beside ``params`` for images of this (H, W, C), built from what the package
        bundles (InstaHide: the bundled public pool, or None when the mix takes no public image)."""
        ...

    def encode(self, images: torch.Tensor, labels: torch.Tensor, params: Any, *, num_classes: int, resources: Any,
               seed: int | tuple[int, ...] | None = None, out_dtype: torch.dtype = torch.float32) -> TransformOutput:
        """Disguise ``images`` (uint8 in [0, 255] or float in [-1, 1]) with fresh keys (from ``seed`` only
        when one is given). Raises InvalidInputError, ``field`` naming the culprit, for bad input."""
        ...

    def recompute(self, images: torch.Tensor, output: TransformOutput, *, resources: Any) -> torch.Tensor:
        """``output.encoded`` again (float32), from the images and ``output.keys`` alone."""
        ...


TRANSFORMS: Registry[Transform] = Registry("transform", field="config.transform")


def register_transform(cls: type) -> type:
    """Class decorator: make the family available by its ``name``."""
    TRANSFORMS.register(cls.name, cls())
    return cls


def get_transform(name: str) -> Transform:
    """The family registered under ``name``; InvalidInputError listing the known names otherwise."""
    return TRANSFORMS.get(name)


def transform_names() -> list[str]:
    return TRANSFORMS.names()


from instahide_ops.transforms import disguisednets, instahide  # noqa: E402, F401  (they register themselves)
