"""Resolve the per-element sign that magnitudes cannot see.

|λa·Pa + λb·Pb + N| is unchanged when one element (h, w, c) flips sign in every private image at
once (exactly so when the public part N has zero mean), so a solver can return the images with an
unknown sign pattern s(h, w, c) applied to all of them. Natural images are smooth and their channels
correlated, so under the true pattern the products of neighbouring elements, summed over the images,
are positive. This solves the Ising problem ``max Σ J_xy s_x s_y`` with couplings
``J_xy = Σ_images P_x·P_y / (|P_x|·|P_y|)`` between spatial neighbours in one channel and the channels
of one pixel, by iterated conditional modes from the current signs (so an already oriented input, such
as ``recover_privates`` gives with a public mean, stays as it is).

The one sign no coupling sees (flipping every element) is kept unless ``natural_mean`` is given: then
the orientation whose per-channel mean is closer to natural images' is chosen.
"""

from __future__ import annotations

import torch
from torch import Tensor

from instahide_ops.errors import InvalidInputError


def element_signs(recovered: Tensor, *, sweeps: int = 100, seed: int = 0) -> Tensor:
    """The sign pattern (H, W, C) of ±1 that makes the images' neighbouring elements agree best.

    Args:
        recovered: (M, H, W, C) images sharing an unknown per-element sign pattern.
        sweeps: ICM sweeps (each updates a random half of the elements).
        seed: seed of those random halves.

    Returns:
        (H, W, C) tensor of ±1 in the input's dtype; multiply the images by it to orient them.
    """
    _check(recovered)
    couplings = _couplings(recovered)
    signs = _tree_signs(couplings, recovered.shape[1:]).to(device=recovered.device, dtype=recovered.dtype)
    if float(signs.sum()) < 0:  # the tree fixes signs up to one global flip: keep the input's majority
        signs = -signs
    generator = torch.Generator(device=recovered.device).manual_seed(seed)
    for _ in range(sweeps):
        field = _local_field(signs, couplings)
        proposal = torch.where(field >= 0, 1.0, -1.0).to(signs.dtype)
        if bool((proposal == signs).all()):
            break
        chosen = torch.rand(signs.shape, generator=generator, device=signs.device) < 0.5
        signs = torch.where(chosen, proposal, signs)
    return signs


def resolve_orientation(recovered: Tensor, *, natural_mean: Tensor | float | None = None,
                        sweeps: int = 100, seed: int = 0) -> Tensor:
    """Undo a per-element sign pattern shared by all recovered images.

    Args:
        recovered: (M, H, W, C) images in [-1, 1].
        natural_mean: natural-image pixel mean, a float or broadcastable to (C,); when given, the
            global flip whose per-channel mean is closer to it wins. None keeps the global sign.
        sweeps, seed: see ``element_signs``.

    Returns:
        (M, H, W, C) oriented images, same device and dtype.

    Raises:
        ValueError: ``recovered`` is not a floating (M, H, W, C) tensor.

    Examples:
        >>> images = torch.rand(8, 6, 6, 3) * 0.5 + 0.2
        >>> flips = torch.ones(6, 6, 3); flips[2, 3, 1] = -1
        >>> bool(torch.allclose(resolve_orientation(images * flips), images))
        True
    """
    _check(recovered)
    oriented = recovered * element_signs(recovered, sweeps=sweeps, seed=seed)
    if natural_mean is not None:
        target = torch.as_tensor(natural_mean, device=recovered.device, dtype=recovered.dtype)
        means = oriented.mean(dim=(0, 1, 2))
        if float(((means - target) ** 2).sum()) > float(((-means - target) ** 2).sum()):
            oriented = -oriented
    return oriented


def _tree_signs(couplings: tuple[Tensor, Tensor, Tensor], shape: torch.Size) -> Tensor:
    """Signs along a maximum spanning tree of |J| (Kruskal): each element follows its strongest link."""
    height, width, channels = shape
    ids = torch.arange(height * width * channels).reshape(height, width, channels)
    horizontal, vertical, across = (c.detach().cpu().double() for c in couplings)
    pairs = [(ids[:, 1:], ids[:, :-1], horizontal), (ids[1:], ids[:-1], vertical)]
    if channels > 1:
        pairs.append((ids, ids.roll(-1, dims=-1), across))
    first = torch.cat([a.flatten() for a, _, _ in pairs]).tolist()
    second = torch.cat([b.flatten() for _, b, _ in pairs]).tolist()
    weight = torch.cat([j.flatten() for _, _, j in pairs])
    parent = list(range(ids.numel()))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    links: list[list[tuple[int, float]]] = [[] for _ in parent]
    for edge in torch.argsort(weight.abs(), descending=True).tolist():
        a, b = first[edge], second[edge]
        root_a, root_b = root(a), root(b)
        if root_a != root_b:
            parent[root_a] = root_b
            sign = 1.0 if float(weight[edge]) >= 0 else -1.0
            links[a].append((b, sign))
            links[b].append((a, sign))
    signs = [0.0] * len(parent)
    for start in range(len(parent)):
        if signs[start]:
            continue
        signs[start], stack = 1.0, [start]
        while stack:
            node = stack.pop()
            for other, sign in links[node]:
                if not signs[other]:
                    signs[other] = signs[node] * sign
                    stack.append(other)
    return torch.tensor(signs).reshape(height, width, channels)


def _couplings(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    unit = images / (images.norm(dim=0, keepdim=True) + 1e-8)
    horizontal = (unit[:, :, 1:] * unit[:, :, :-1]).sum(0)  # H, W-1, C
    vertical = (unit[:, 1:] * unit[:, :-1]).sum(0)  # H-1, W, C
    across = (unit * unit.roll(-1, dims=-1)).sum(0)  # H, W, C: channel c with c+1 (cyclic)
    return horizontal, vertical, across


def _local_field(signs: Tensor, couplings: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    horizontal, vertical, across = couplings
    field = torch.zeros_like(signs)
    field[:, 1:] += horizontal * signs[:, :-1]
    field[:, :-1] += horizontal * signs[:, 1:]
    field[1:] += vertical * signs[:-1]
    field[:-1] += vertical * signs[1:]
    if signs.shape[-1] > 1:
        field += across * signs.roll(-1, dims=-1) + (across * signs).roll(1, dims=-1)
    return field


def _check(recovered: Tensor) -> None:
    if not isinstance(recovered, Tensor) or not recovered.is_floating_point() or recovered.ndim != 4:
        raise InvalidInputError(f"expected a floating (M, H, W, C) tensor, got "
                                f"{getattr(recovered, 'shape', type(recovered).__name__)}", field="recovered")
    if recovered.shape[0] == 0:
        raise InvalidInputError("no images", field="recovered.shape")
