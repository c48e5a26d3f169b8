"""Level-1 (ciphertext-only) attack on DisguisedNets AES-ECB: the ECB penguin, given grey levels.

The attacker holds the disguised dataset, the public parameters and public natural photos, never a key nor a
single original. ECB sends equal plaintext codewords (the pieces of a block whose output depends on them alone; see
``codebook``) to equal outputs, so the outputs are a substitution cipher over codewords, and a natural image's
codewords are not random: neighbours carry close values. Steps:

1. **Codeword ids.** Equal output bytes, equal id; per position with a key per position. An id names one plaintext
   codeword in every image, channel and position it keys (at scale f the cells' means collide, so an id can stand
   for several plaintexts, the commonest dominating).
2. **Neighbour graph.** Two ids are joined by how often they sit side by side within a block (left/right,
   above/below) or at the same place in two channels; square-root counts, so that the repeats of flat regions do not
   drown the rest. Intensity is a smooth function on this graph.
3. **Seriation.** On each connected part of the ids seen often enough (``MIN_COUNT``), the smoothest non-constant
   function (the Fiedler vector of the normalised graph) orders the ids by intensity up to direction: gradients in
   natural images chain every grey level to the next.
4. **Direction and grey levels.** Natural photos are warm (ImageNet's mean RGB is 124, 116, 104): the direction
   that makes red codewords brighter than blue ones on average is taken. Ranks, weighted by occurrences, are mapped
   to grey levels by quantile matching with the public photos' pixels.
5. **Hubs.** The Fiedler vector puts an id at the mean of its neighbours, so a very common id (black, or a flat
   colour whose output collided with others) that borders everything lands mid-grey. A few rounds of the weighted
   median of each id's neighbours (by sightings, which are dominated by its own region's near values), re-mapped
   to the grey levels, pull such ids back.
6. **Rare ids.** Ids off the seriated parts take their neighbours' mean value (harmonic extension, a few sweeps);
   ids with no valued neighbour take the photos' median.
7. **Permutation.** The recovered blocks, where the disguise left them, go to the dataset-wide jigsaw solver, whose
   evidence is summed over all images; the blocks are moved back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sparse
import torch
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import eigsh

from instahide_ops.audits.reconstruction.disguisednets.codebook import codeword_ids, codeword_length, codewords
from instahide_ops.audits.reconstruction.disguisednets.jigsaw import solve_jigsaw
from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.disguisednets.blocks import from_blocks, move_blocks
from instahide_ops.transforms.disguisednets.keys import DisguisedNetsParams, check_params

# Sightings an id needs to be seriated: rarer ids add more noise to the ordering than evidence. The bar rises with
# the set (one sighting per 20 images): more images bring more rare plaintexts into each colliding output.
MIN_COUNT = 5
MIN_COUNT_PER_IMAGE = 0.05
MIN_PART = 16  # ids a connected part needs to be seriated on its own
CHANNEL_WEIGHT = 1.0  # an id's counterpart in another channel, against a spatial neighbour
MEDIAN_ROUNDS = 2
GREY_MARGIN = 1e-6  # red against blue closer than this (relative to the ordering's scale) tells no direction
EXTENSION_SWEEPS = 30
REFERENCE_PIXELS = 65536  # pixels of each public photo in the grey-level reference: every photo counts alike
RED, BLUE = 0, 2


@dataclass(frozen=True)
class EcbPenguinResult:
    """The recoveries (N, H, W, C) float32 on the 0–255 scale, the permutation found (the keys' convention), the
    share of codeword sightings whose id was seriated (the rest were extended from neighbours), and whether colour
    left a part's direction undecided (grey images: ``grey_direction`` chose it)."""

    recovered: torch.Tensor
    permutation: np.ndarray
    seriated_share: float
    direction_undecided: bool = False


def ciphertext_only_aes(disguised: torch.Tensor, params: DisguisedNetsParams, photos: Sequence[np.ndarray], *,
                        grey_direction: float = 1.0) -> EcbPenguinResult:
    """Recover (N, H, W, 3) AES-disguised images from the disguised set alone, with public natural ``photos``
    ((H, W, 3) uint8, any size) for the grey levels. ``grey_direction`` (+1 or −1) orients the parts colour cannot
    orient (grey images): run both to have both readings.

    Raises:
        InvalidInputError: parameters that are not AES's, a scale whose codewords span rows, images that are not
            RGB, or no photos.
    """
    if params.method != "aes":
        raise InvalidInputError(f"this attack reads AES; {params.method.upper()} takes the Level-1 RMT attack",
                                field="method")
    if disguised.ndim != 4 or len(disguised) == 0:
        raise InvalidInputError(f"expected disguised images (N, H, W, C), got {list(disguised.shape)}",
                                field="shape")
    h, w, c = check_params(params, disguised.shape[1:])
    if c != 3:
        raise InvalidInputError(f"the grey levels' direction reads the colour of natural photos: expected RGB, got "
                                f"{c} channels", field="shape")
    if len(photos) == 0:
        raise InvalidInputError("the grey levels need public photos, got none", field="photos")
    ids = _id_grid(disguised.to(torch.uint8).cpu().numpy(), params)
    counts = np.bincount(ids.ravel())
    sightings = _neighbour_graph(ids)
    graph = sightings.sqrt()  # so that the repeats of flat regions do not drown the rest
    reference = _reference_levels(photos)

    # 3–4. seriate each well-connected part, orient it by colour, give its ranks the photos' grey levels
    values = np.full(len(counts), np.nan)
    undecided = False
    frequent = np.flatnonzero(counts >= max(MIN_COUNT, MIN_COUNT_PER_IMAGE * len(ids)))
    _, part_of = connected_components(graph[frequent][:, frequent], directed=False)
    for part in np.unique(part_of):
        members = frequent[part_of == part]
        if len(members) < MIN_PART:
            continue
        order = _fiedler(graph[members][:, members])
        redder = _redder_than_blue(ids, members, order)
        if abs(redder) <= GREY_MARGIN * np.abs(order).mean():  # grey: colour cannot tell; one guess for every part
            undecided, redder = True, grey_direction
        if redder < 0:
            order = -order
        values[members] = _quantile_levels(order, counts[members], reference)
    seriated = np.flatnonzero(~np.isnan(values))

    # 5. hubs back among their own region's values; the old value only breaks ties
    for _ in range(MEDIAN_ROUNDS if len(seriated) else 0):  # none when no codeword repeats enough (scale 1)
        medians = _weighted_neighbour_medians(sightings, values, seriated)
        values[seriated] = _quantile_levels(medians + 1e-3 * values[seriated], counts[seriated], reference)

    # 6. the rest from their neighbours
    values = _extend(graph, values, fallback=float(np.median(reference)))

    # 7. put the blocks back where they came from
    r, s = params.block
    length = codeword_length(params)
    pixels = np.repeat(values[ids][..., None], length, axis=-1).reshape(len(ids), -1, c, r, s)
    blocks = torch.from_numpy(pixels.astype(np.float32))  # (N, P, C, r, s), at the disguised positions
    if params.permute:
        permutation = solve_jigsaw(blocks.permute(0, 1, 3, 4, 2), (h // r, w // s))
    else:
        permutation = np.arange(blocks.shape[1])
    recovered = move_blocks(from_blocks(blocks, h, w), params.block, np.argsort(permutation))
    return EcbPenguinResult(recovered, permutation, float(counts[seriated].sum() / counts.sum()), undecided)


def _id_grid(images: np.ndarray, params: DisguisedNetsParams) -> np.ndarray:
    """(N, P, C, rows, columns) int64: the id of every codeword, laid out as the codewords tile each block's channel
    (rows, columns of codewords); with a key per position, ids of different positions never coincide."""
    units = codewords(images, params)  # (N, P, C·K, L); raises for codewords that span rows at scale > 1
    n, p = units.shape[:2]
    r, s = params.block
    length = codeword_length(params)
    layout = (r, s // length) if length <= s else (r * s // length, 1)  # a scale-1 unit can hold several rows
    ids = codeword_ids(units)
    if params.aes_key_per_block:  # the same bytes at two positions are two plaintexts
        ids = np.unique(ids * p + np.arange(p)[None, :, None], return_inverse=True)[1].reshape(ids.shape)
    return ids.reshape(n, p, -1, *layout)


def _neighbour_graph(ids: np.ndarray) -> sparse.csr_matrix:
    """Symmetric (ids, ids) weights: how often two different ids are neighbours (a channel pair counting
    CHANNEL_WEIGHT)."""
    channels = ids.shape[2]
    pairs = [(ids[..., :, :-1], ids[..., :, 1:], 1.0), (ids[..., :-1, :], ids[..., 1:, :], 1.0)]
    pairs += [(ids[:, :, a], ids[:, :, b], CHANNEL_WEIGHT) for a in range(channels) for b in range(a + 1, channels)]
    first = np.concatenate([a.ravel() for a, _, _ in pairs])
    second = np.concatenate([b.ravel() for _, b, _ in pairs])
    weights = np.concatenate([np.full(a.size, weight) for a, _, weight in pairs])
    size = int(ids.max()) + 1
    graph = sparse.coo_matrix((weights, (first, second)), shape=(size, size)).tocsr()
    graph = graph + graph.T
    graph.setdiag(0)
    graph.eliminate_zeros()
    return graph


def _fiedler(graph: sparse.csr_matrix) -> np.ndarray:
    """The Fiedler vector of a connected graph (the second eigenvector of its normalised adjacency, scaled back by
    the degrees): the smoothest ordering of its nodes."""
    degrees = np.asarray(graph.sum(axis=1)).ravel()
    scaling = sparse.diags(1 / np.sqrt(degrees))
    normalised = scaling @ graph @ scaling
    if graph.shape[0] <= 2 * MIN_PART:
        eigenvalues, eigenvectors = np.linalg.eigh(normalised.toarray())
    else:
        start = np.random.default_rng(0).random(graph.shape[0])  # ARPACK's own start would vary between runs
        eigenvalues, eigenvectors = eigsh(normalised, k=2, which="LA", tol=1e-6, v0=start)
    return eigenvectors[:, np.argsort(eigenvalues)[-2]] / np.sqrt(degrees)


def _redder_than_blue(ids: np.ndarray, members: np.ndarray, order: np.ndarray) -> float:
    """The mean ordering value of the part's red sightings less that of its blue ones."""
    value = np.zeros(int(ids.max()) + 1)
    value[members] = order
    seen = np.zeros_like(value, dtype=bool)
    seen[members] = True
    red, blue = ids[:, :, RED], ids[:, :, BLUE]
    if not (seen[red].any() and seen[blue].any()):
        return 0.0
    return float(value[red][seen[red]].mean() - value[blue][seen[blue]].mean())


def _reference_levels(photos: Sequence[np.ndarray]) -> np.ndarray:
    """The public photos' pixel values, about REFERENCE_PIXELS of each (a regular subsample), all channels."""
    levels = []
    for photo in photos:
        photo = np.asarray(photo)
        stride = max(1, int(np.sqrt(photo.shape[0] * photo.shape[1] / REFERENCE_PIXELS)))
        levels.append(photo[::stride, ::stride].astype(np.float64).ravel())
    return np.concatenate(levels)


def _quantile_levels(order: np.ndarray, counts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Grey levels for ids ordered by ``order``: the reference's quantile at each id's mid-rank among all
    sightings."""
    rank = np.argsort(order, kind="stable")
    cumulative = np.cumsum(counts[rank])
    levels = np.empty(len(order))
    levels[rank] = np.quantile(reference, (cumulative - counts[rank] / 2) / cumulative[-1])
    return levels


def _weighted_neighbour_medians(sightings: sparse.csr_matrix, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each id in ``rows``: the median of its valued neighbours' values, each weighted by its sightings."""
    edges = sightings[rows].tocoo()
    neighbour_values = values[edges.col]
    valued = ~np.isnan(neighbour_values)
    row, value, weight = edges.row[valued], neighbour_values[valued], edges.data[valued]
    order = np.lexsort((value, row))
    row, value, weight = row[order], value[order], weight[order]
    cumulative = np.cumsum(weight)
    start = np.searchsorted(row, np.arange(len(rows)))
    has = start < np.append(start[1:], len(row))  # ids without a valued neighbour keep their value
    half = np.append(0.0, cumulative)[start[has]] + np.add.reduceat(weight, start[has]) / 2
    medians = values[rows].copy()
    medians[has] = value[np.minimum(np.searchsorted(cumulative, half), len(value) - 1)]
    return medians


def _extend(graph: sparse.csr_matrix, values: np.ndarray, *, fallback: float) -> np.ndarray:
    """``values`` with every NaN replaced by the weighted mean of its valued neighbours, sweep after sweep (Jacobi),
    the seriated values held fixed; ``fallback`` where no valued neighbour is ever reached."""
    fixed = ~np.isnan(values)
    out = np.where(fixed, values, 0.0)
    valued = fixed.astype(np.float64)
    for _ in range(EXTENSION_SWEEPS):
        weight = graph @ valued
        update = ~fixed & (weight > 0)
        out[update] = (graph @ (out * valued))[update] / weight[update]
        valued[update] = 1.0
    out[valued == 0] = fallback
    return out
