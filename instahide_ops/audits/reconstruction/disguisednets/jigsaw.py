"""A jigsaw solver for a whole disguised dataset: every image moved its blocks by the same permutation.

The pieces are the blocks found at each disguised position (after whatever per-position decoding an attack can do);
a position's piece in every image belongs at one grid cell, so the evidence for "piece a sits left of piece b" is
summed over all N images, which makes even 2×2 pieces solvable. Optionally each position offers a few candidate
decodings (an attack that knows a position's decoding only up to a few alternatives); the solver then picks one
candidate per position together with the placement. Steps:

1. **Dissimilarities.** For every ordered pair of pieces (a, b): how badly b continues a to the right, and below.
   Each image is first scaled to unit contrast (every image gets one vote). Prediction-based (Pomeranz et al.
   2011): the column after a's last one is predicted from a's last two (linear extrapolation) and compared with
   b's first, and the other way round; L1 summed over images, rows and channels.
2. **Confidences.** A pair's dissimilarity over the best alternative either piece has in that direction (other
   positions only: a position's candidates are not rivals), so a pair that is each other's clear best ("best
   buddies") ranks first, whatever the pieces' texture.
3. **Placement.** Greedy growing from the most confident pair (after Paikin & Tal 2015): at every step the free
   piece and open cell whose placed neighbours vouch for it most confidently (mean confidence) are joined, within
   a frame of the grid's size. A position's candidates leave the pool once one of them is placed.
4. **Refinement.** Swapping two cells' pieces, or a cell's candidate for another of its position, while that lowers
   the summed dissimilarity of all abutting pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from instahide_ops.errors import InvalidInputError

MAX_REFINEMENT_PASSES = 10


@dataclass(frozen=True)
class JigsawSolution:
    """permutation: (P,) int64 in the keys' convention: the block at source position i was moved to disguised
    position ``permutation[i]`` (so ``move_blocks(x, block, np.argsort(permutation))`` puts disguised blocks back).
    choices: (P,) int64: the candidate chosen for each disguised position."""

    permutation: np.ndarray
    choices: np.ndarray


def solve_jigsaw(pieces: np.ndarray | torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """The permutation that moved the pieces, in the keys' convention (see ``JigsawSolution``).

    Args:
        pieces: (N, P, r, s, C) float: piece p of image n, as found at disguised position p.
        grid: (rows, columns) of the image's grid of positions; rows·columns = P.
    """
    pieces = torch.as_tensor(pieces)
    if pieces.ndim != 5:
        raise InvalidInputError(f"expected pieces (N, P, r, s, C), got {list(pieces.shape)}", field="pieces")
    return solve_jigsaw_with_candidates(pieces.unsqueeze(2), grid).permutation


def solve_jigsaw_with_candidates(candidates: np.ndarray | torch.Tensor, grid: tuple[int, int]) -> JigsawSolution:
    """The permutation and one candidate per position.

    Args:
        candidates: (N, P, K, r, s, C) float: K candidate decodings of the piece at each disguised position.
        grid: (rows, columns) of the image's grid of positions; rows·columns = P.
    """
    candidates = torch.as_tensor(candidates)
    if candidates.ndim != 6 or min(candidates.shape) < 1:
        raise InvalidInputError(f"expected candidates (N, P, K, r, s, C), got {list(candidates.shape)}",
                                field="candidates")
    rows, columns = (int(side) for side in grid)
    p, k = candidates.shape[1:3]
    if rows < 1 or columns < 1 or rows * columns != p:
        raise InvalidInputError(f"a grid of {rows}×{columns} does not hold {p} pieces", field="grid")
    nodes = candidates.to(torch.float32).flatten(1, 2)  # (N, M, r, s, C), node m = position m // K, candidate m % K
    right = _dissimilarities(nodes)
    below = _dissimilarities(nodes.transpose(2, 3))  # a piece below is a piece to the right in the transpose
    position_of = np.arange(p * k) // k
    cells = _place(right, below, position_of, (rows, columns))
    cells = _refine(cells, right, below, k)
    placement = np.empty(p, dtype=np.int64)  # the source position (grid cell) of each disguised position
    choices = np.empty(p, dtype=np.int64)
    for cell, node in enumerate(cells.ravel()):
        placement[node // k], choices[node // k] = cell, node % k
    return JigsawSolution(np.argsort(placement), choices)


def _dissimilarities(nodes: torch.Tensor) -> np.ndarray:
    """(M, M) float64: how badly node b continues node a to the right, summed over the images (step 1)."""
    n = len(nodes)
    spread = nodes.flatten(1).std(dim=1).clamp_min(1e-6).view(n, 1, 1, 1, 1)
    nodes = (nodes - nodes.flatten(1).mean(dim=1).view(n, 1, 1, 1, 1)) / spread
    last, first = nodes[:, :, :, -1], nodes[:, :, :, 0]  # (N, M, r, C)
    before_last, after_first = (nodes[:, :, :, -2], nodes[:, :, :, 1]) if nodes.shape[3] > 1 else (last, first)
    def features(column: torch.Tensor) -> torch.Tensor:
        return column.permute(1, 0, 2, 3).flatten(1)  # (M, N·r·C)
    # a's extrapolated next column against b's first, and b's extrapolated previous column against a's last
    forward = torch.cdist(features(2 * last - before_last), features(first), p=1)
    backward = torch.cdist(features(last), features(2 * first - after_first), p=1)
    return (forward + backward).double().numpy()


def _confidences(dissimilarity: np.ndarray, position_of: np.ndarray) -> np.ndarray:
    """(M, M): each pair's dissimilarity over the best rival either side has among other positions (step 2)."""
    d = dissimilarity.copy()
    d[position_of[:, None] == position_of[None, :]] = np.inf  # a position never abuts itself
    outgoing = _best_excluding(_best_by_position(d, position_of), position_of)  # [a, b]: a's best rival to b
    incoming = _best_excluding(_best_by_position(d.T, position_of), position_of)  # [b, a]: b's best rival to a
    return d / np.maximum(np.minimum(outgoing, incoming.T), 1e-12)


def _best_by_position(d: np.ndarray, position_of: np.ndarray) -> np.ndarray:
    """(M, P): for each row, the best of each position's candidates."""
    out = np.full((len(d), int(position_of.max()) + 1), np.inf)
    np.minimum.at(out.T, position_of, d.T)
    return out


def _best_excluding(by_position: np.ndarray, position_of: np.ndarray) -> np.ndarray:
    """(M, M): for row a and column b, a's best value among positions other than b's."""
    order = np.argsort(by_position, axis=1)
    best, second = order[:, 0], order[:, 1]
    rows = np.arange(len(by_position))
    best_value, second_value = by_position[rows, best], by_position[rows, second]
    return np.where(best[:, None] == position_of[None, :], second_value[:, None], best_value[:, None])


def _place(right: np.ndarray, below: np.ndarray, position_of: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(rows, columns) grid of nodes, grown from the most confident pair (step 3)."""
    rows, columns = grid
    confident_right = _confidences(right, position_of)
    confident_below = _confidences(below, position_of)
    # The canvas is twice the grid: the solution may grow in any direction, within a rows × columns frame.
    canvas = np.full((2 * rows + 1, 2 * columns + 1), -1, dtype=np.int64)
    free = np.ones(len(right), dtype=bool)
    first, second = np.unravel_index(np.argmin(confident_right), confident_right.shape)
    top, left = rows, columns
    for node, (y, x) in ((first, (top, left)), (second, (top, left + 1))):
        canvas[y, x] = node
        free &= position_of != position_of[node]
    low, high = np.array([top, left]), np.array([top, left + 1])
    for _ in range(rows * columns - 2):
        best = (np.inf, None, None)
        for y, x in _open_cells(canvas, low, high, grid):
            score = np.zeros(len(right))
            neighbours = 0
            for (ny, nx), table, outgoing in (((y, x - 1), confident_right, True),
                                               ((y, x + 1), confident_right, False),
                                               ((y - 1, x), confident_below, True),
                                               ((y + 1, x), confident_below, False)):
                if 0 <= ny < canvas.shape[0] and 0 <= nx < canvas.shape[1] and canvas[ny, nx] >= 0:
                    score += table[canvas[ny, nx]] if outgoing else table[:, canvas[ny, nx]]
                    neighbours += 1
            score = np.where(free, score / neighbours, np.inf)
            node = int(np.argmin(score))
            if score[node] < best[0]:
                best = (score[node], (y, x), node)
        _, (y, x), node = best
        canvas[y, x] = node
        free &= position_of != position_of[node]
        low, high = np.minimum(low, (y, x)), np.maximum(high, (y, x))
    return canvas[low[0]:high[0] + 1, low[1]:high[1] + 1]


def _open_cells(canvas: np.ndarray, low: np.ndarray, high: np.ndarray, grid: tuple[int, int]) -> list[tuple[int, int]]:
    """Empty cells beside placed ones where a piece keeps the placed part within the grid's frame."""
    taken = canvas >= 0
    beside = np.zeros_like(taken)
    beside[1:] |= taken[:-1]
    beside[:-1] |= taken[1:]
    beside[:, 1:] |= taken[:, :-1]
    beside[:, :-1] |= taken[:, 1:]
    ys, xs = np.nonzero(beside & ~taken)
    fits = ((np.maximum(high[0], ys) - np.minimum(low[0], ys) < grid[0])
            & (np.maximum(high[1], xs) - np.minimum(low[1], xs) < grid[1]))
    return list(zip(ys[fits].tolist(), xs[fits].tolist(), strict=True))


def _total(cells: np.ndarray, right: np.ndarray, below: np.ndarray) -> float:
    return float(right[cells[:, :-1], cells[:, 1:]].sum() + below[cells[:-1], cells[1:]].sum())


def _local(cells: np.ndarray, y: int, x: int, node: int, right: np.ndarray, below: np.ndarray) -> float:
    """The dissimilarity of ``node`` at (y, x) with the four neighbours the grid holds there."""
    rows, columns = cells.shape
    cost = 0.0
    if x > 0:
        cost += right[cells[y, x - 1], node]
    if x + 1 < columns:
        cost += right[node, cells[y, x + 1]]
    if y > 0:
        cost += below[cells[y - 1, x], node]
    if y + 1 < rows:
        cost += below[node, cells[y + 1, x]]
    return cost


def _pair_cost(cells: np.ndarray, first: tuple[int, int], second: tuple[int, int], right: np.ndarray,
               below: np.ndarray) -> float:
    """The dissimilarity of every abutting pair that touches either cell, a pair between them counted once."""
    (y, x), (v, u) = first, second
    cost = _local(cells, y, x, cells[y, x], right, below) + _local(cells, v, u, cells[v, u], right, below)
    if (y, x + 1) == (v, u):
        cost -= right[cells[y, x], cells[v, u]]
    elif (y + 1, x) == (v, u):
        cost -= below[cells[y, x], cells[v, u]]
    return cost


def _refine(cells: np.ndarray, right: np.ndarray, below: np.ndarray, k: int) -> np.ndarray:
    """Swaps and candidate changes while they lower the total dissimilarity (step 4)."""
    cells = cells.copy()
    rows, columns = cells.shape
    flat = [(y, x) for y in range(rows) for x in range(columns)]
    for _ in range(MAX_REFINEMENT_PASSES):
        improved = False
        for y, x in flat:
            node = cells[y, x]
            for other in range(node - node % k, node - node % k + k):  # the position's other candidates
                if other != node and _local(cells, y, x, other, right, below) < _local(cells, y, x, node, right,
                                                                                     below) - 1e-9:
                    cells[y, x], node, improved = other, other, True
        for i, (y, x) in enumerate(flat):
            for v, u in flat[i + 1:]:
                a, b = cells[y, x], cells[v, u]
                before = _pair_cost(cells, (y, x), (v, u), right, below)
                cells[y, x], cells[v, u] = b, a
                if _pair_cost(cells, (y, x), (v, u), right, below) < before - 1e-9:
                    improved = True
                else:
                    cells[y, x], cells[v, u] = a, b
        if not improved:
            break
    return cells
