"""Orthogonal matching pursuit of public mixes over a public pool, and the pool's inner products it runs on.

The pool-aware attack names each encoding's public images this way, and its reassignment stage names one
public mix per candidate pair (about a hundred per encoding). Matching pursuit needs each target's inner
products with the pool and, per chosen image, that image's inner products with the pool: a row of the
pool's Gram matrix. ``PoolGram`` stores the whole matrix while it fits (``GRAM_MAX_POOL``) and computes the
rows a pursuit asks for above that, so a pool of any size gets every stage. Its batches shrink with the pool's
size to fit the memory the caller allows (``PoolGram``'s ``working_bytes``), so a pool of any size also gets
them within a known amount of memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from instahide_ops.audits.reconstruction.attack import DEFAULT_WORKING_BYTES
from instahide_ops.errors import InvalidInputError

GRAM_MAX_POOL = 16384
"""Largest pool whose Gram matrix (N² floats: 1 GiB at 16,384) ``PoolGram`` stores. Above it the rows a pursuit
chooses are computed from the pool when it chooses them: on a 2-core CPU the reassignment then takes 2.4 times
as long (at 16,384, 300 encodings, its batches sharing rows; 2.6 without), and the public-mix stages, which then
correlate every residual with the whole pool at every step, 2.4 to 2.9 times as long (at 16,384; 3.5 at 2,048).
The reassignment is worth the time: at 16,384 it lifts the bench's Max_SSIM from 0.870 to 0.893."""

WORKING_BYTES = DEFAULT_WORKING_BYTES
"""The default working memory of the pursuits over one pool (the server's ``--audit-pool-memory-mib``): about the
most one batch of pursuits holds at once, and the most the stored Gram matrix may take. A batch's buffers grow
with its targets times the pool's size, so over a large pool the batches shrink to fit (``rows_that_fit``); at
the default chunk of 1,024 targets and six atoms that first happens above about 24,000 images. Without it, one
pursuit of 1,024 targets over a pool of 65,536 took 2.5 GiB, its input included, and over 200,000 would take
about 7.6 by the same count."""

SHARED_ROWS_FRACTION = 0.25
"""``PoolGram.sharing_rows`` keeps computed Gram rows up to this fraction of the working memory, on top of it (over
131,072 images at the default: 512 rows, where the parts of one encoding's 576 candidate pairs chose about 500
distinct images at 65,536)."""

EXPLICIT_FLOATS_PER_TARGET = 4
"""Floats per target and pool image that ``match_public_mix`` holds when it correlates residuals with the pool
at every step (peak resident memory measured over 65,536 images: 3.6)."""


def pursuit_floats_per_target(atoms: int) -> int:
    """Floats per target and pool image that ``pursue_from_correlations`` holds, its input included: the chosen
    images' rows (``atoms``), the scores and the temporaries of a step (peak resident memory measured over
    65,536 images at six atoms: 10.1)."""
    return atoms + 5


def rows_that_fit(pool: Tensor, *, floats_per_target: int, limit: int, working_bytes: int = WORKING_BYTES) -> int:
    """Targets per batch: ``limit`` at most, fewer where ``floats_per_target`` floats per target and pool image
    would pass ``working_bytes``, and never fewer than one.

    Examples:
        >>> rows_that_fit(torch.zeros(2048, 3072), floats_per_target=16, limit=1024)
        1024
        >>> rows_that_fit(torch.zeros(65536, 8), floats_per_target=16, limit=1024)
        256
    """
    return max(1, min(limit, working_bytes // (floats_per_target * len(pool) * pool.element_size())))


class PoolGram:
    """Inner products among a pool's images, as matching pursuit reads them, and the memory its pursuits may hold.

    Args:
        pool: (N, D) the pool's images, flattened.
        working_bytes: the matrix is stored only when it fits in this (and the pool is at most
            ``GRAM_MAX_POOL``); the pursuits that read it batch their targets to fit in it as well.

    Examples:
        >>> pool = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
        >>> gram = PoolGram(pool)
        >>> gram.stored, tuple(gram.rows(torch.tensor([3, 1])).shape)
        (True, (2, 5))
    """

    def __init__(self, pool: Tensor, *, working_bytes: int = WORKING_BYTES):
        if working_bytes < 1:
            raise InvalidInputError(f"must be positive, got {working_bytes}", field="working_bytes")
        self.pool = pool
        self.working_bytes = working_bytes
        fits = len(pool) <= GRAM_MAX_POOL and len(pool) ** 2 * pool.element_size() <= working_bytes
        self.matrix = pool @ pool.T if fits else None
        if self.matrix is not None:
            self.norms = self.matrix.diagonal().clamp_min(1e-24).sqrt()
        else:  # without a pool-sized temporary: this pool is a large one
            self.norms = pool.norm(dim=1).clamp_min(1e-12)
        self.rows_computed = 0  # rows computed from the pool so far (none while the matrix is stored)
        self._slots: Tensor | None = None  # while sharing: each pool image's row among the kept ones, or -1
        self._kept = pool.new_empty(0, len(pool))

    def targets_per_batch(self, *, floats_per_target: int, limit: int) -> int:
        """``rows_that_fit`` for a pursuit over this pool, within this gram's working memory."""
        return rows_that_fit(self.pool, floats_per_target=floats_per_target, limit=limit,
                             working_bytes=self.working_bytes)

    @property
    def stored(self) -> bool:
        """Whether the whole (N, N) matrix is held (else rows are computed on request)."""
        return self.matrix is not None

    def rows(self, indices: Tensor) -> Tensor:
        """(R, N) inner products of the pool images ``indices`` (R,) with every pool image."""
        if self.matrix is not None:
            return self.matrix[indices]
        distinct, where = torch.unique(indices, return_inverse=True)  # targets of one batch share images
        if self._slots is None:
            self.rows_computed += len(distinct)
            return (self.pool[distinct] @ self.pool.T)[where]
        slot = self._slots[distinct]
        missing = slot < 0
        table = self.pool.new_empty(len(distinct), len(self.pool))
        table[~missing] = self._kept[slot[~missing]]
        computed = self.pool[distinct[missing]] @ self.pool.T
        self.rows_computed += len(computed)
        table[missing] = computed
        shared_bytes = int(self.working_bytes * SHARED_ROWS_FRACTION)
        room = max(0, shared_bytes // (len(self.pool) * self.pool.element_size()) - len(self._kept))
        if room and len(computed):
            added = distinct[missing][:room]
            self._slots[added] = torch.arange(len(self._kept), len(self._kept) + len(added), device=slot.device)
            self._kept = torch.cat([self._kept, computed[:room]])
        return table[where]

    @contextmanager
    def sharing_rows(self) -> Iterator[None]:
        """Within this block, rows computed from the pool are kept (up to ``SHARED_ROWS_FRACTION`` of the working
        memory) and handed out again: the pursuits of one encoding's candidate pairs choose mostly the same
        images. Nothing changes while the matrix is stored."""
        if self.matrix is not None:
            yield
            return
        self._slots = torch.full((len(self.pool),), -1, dtype=torch.long, device=self.pool.device)
        try:
            yield
        finally:
            self._slots, self._kept = None, self.pool.new_empty(0, len(self.pool))


def match_public_mix(residuals: Tensor, pool: Tensor, *, atoms: int, chunk: int = 1024,
                     gram: PoolGram | None = None) -> tuple[Tensor, Tensor]:
    """Name each residual's pool images and their weights by orthogonal matching pursuit.

    Args:
        residuals: (E, D) signed sums with the private part taken out.
        pool: (N, D) the pool's images, flattened, in [-1, 1].
        atoms: pool images per residual.
        chunk: residuals per batch at most; fewer over a pool too large for the working memory (``gram``'s, else
            ``WORKING_BYTES``).
        gram: ``PoolGram(pool)``, when the caller matches many times against one pool: each further image
            then costs a lookup instead of another pass over the pool. Its matrix is used only when stored:
            residuals of different encodings seldom choose the same images, so computing the rows they choose
            costs as much as correlating each residual with the pool again.

    Returns:
        (E, atoms) int64 pool indices and (E, atoms) non-negative weights (least squares on the chosen
        images, negative weights set to zero).

    Examples:
        >>> pool = torch.randn(50, 64, generator=torch.Generator().manual_seed(0))
        >>> mix = 0.3 * pool[7] + 0.2 * pool[21]
        >>> chosen, weights = match_public_mix(mix[None], pool, atoms=2)
        >>> sorted(chosen[0].tolist())
        [7, 21]
    """
    if residuals.ndim != 2 or pool.ndim != 2 or residuals.shape[1] != pool.shape[1]:
        raise InvalidInputError(f"expected (E, D) residuals and an (N, D) pool, got {list(residuals.shape)} and "
                                f"{list(pool.shape)}", field="pool")
    if not 1 <= atoms <= len(pool):
        raise InvalidInputError(f"must lie in [1, {len(pool)}] (the pool's size), got {atoms}", field="atoms")
    if gram is not None and gram.pool.shape != pool.shape:
        raise InvalidInputError(f"the gram was built over a pool of shape {list(gram.pool.shape)}, not this "
                                f"{list(pool.shape)} one", field="gram")
    norms = pool.norm(dim=1).clamp_min(1e-12) if gram is None else gram.norms
    from_gram = gram is not None and gram.stored
    step = rows_that_fit(pool, limit=chunk, working_bytes=WORKING_BYTES if gram is None else gram.working_bytes,
                         floats_per_target=(pursuit_floats_per_target(atoms) if from_gram
                                            else EXPLICIT_FLOATS_PER_TARGET))
    indices, weights = [], []
    for start in range(0, len(residuals), step):
        target = residuals[start:start + step]
        if from_gram:
            chosen, fit, _ = pursue_from_correlations(target @ pool.T, gram, atoms=atoms, norms=norms)
        else:
            chosen, fit = _pursue_explicitly(target, pool, atoms, norms)
        indices.append(chosen)
        weights.append(fit.clamp_min(0.0))
    return torch.cat(indices), torch.cat(weights)


def pursue_from_correlations(correlations: Tensor, gram: PoolGram, *, atoms: int,
                             norms: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Orthogonal matching pursuit that never touches the targets: only their inner products with the pool.

    Args:
        correlations: (R, N) each target's inner product with each pool image.
        gram: the pool's ``PoolGram``.
        atoms: pool images per target.
        norms: (N,) the pool images' norms (``gram.norms`` when None).

    Returns:
        (R, atoms) int64 pool indices, (R, atoms) least-squares weights (not clipped) and (R, atoms, atoms) the
        chosen images' inner products with each other.
    """
    if norms is None:
        norms = gram.norms
    ridge = 1e-4 * torch.eye(atoms, device=correlations.device, dtype=correlations.dtype)
    initial = correlations / norms  # correlation of each target with each unit pool image
    chosen = torch.empty(len(correlations), 0, dtype=torch.long, device=correlations.device)
    fit = torch.empty(len(correlations), 0, device=correlations.device, dtype=correlations.dtype)
    chosen_rows = correlations.new_empty(len(correlations), atoms, correlations.shape[1])  # one row added a step
    for size in range(1, atoms + 1):
        # ⟨target − Σ fit·chosen, unit⟩ from the Gram rows
        score = (initial.clone() if size == 1
                 else initial - torch.einsum("ek,ekn->en", fit, chosen_rows[:, :size - 1]) / norms)
        score.scatter_(1, chosen, float("-inf"))  # never the same image twice
        chosen = torch.cat([chosen, score.argmax(dim=1, keepdim=True)], dim=1)
        chosen_rows[:, size - 1] = gram.rows(chosen[:, -1])
        among_chosen = chosen_rows[:, :size].gather(2, chosen[:, None, :].expand(-1, size, -1))
        fit = torch.linalg.solve(among_chosen + ridge[:size, :size],
                                 correlations.gather(1, chosen)[:, :, None]).squeeze(2)
    return chosen, fit, among_chosen


def _pursue_explicitly(target: Tensor, pool: Tensor, atoms: int, norms: Tensor) -> tuple[Tensor, Tensor]:
    """``pursue_from_correlations`` with each step's residuals formed in full and correlated with the pool."""
    ridge = 1e-4 * torch.eye(atoms, device=pool.device, dtype=pool.dtype)
    chosen = torch.empty(len(target), 0, dtype=torch.long, device=pool.device)
    fit = torch.empty(len(target), 0, device=pool.device, dtype=pool.dtype)
    for size in range(1, atoms + 1):
        left = target - (fit[:, :, None] * pool[chosen]).sum(dim=1)
        score = left @ pool.T / norms
        score.scatter_(1, chosen, float("-inf"))
        chosen = torch.cat([chosen, score.argmax(dim=1, keepdim=True)], dim=1)
        picked = pool[chosen]  # chunk, size, D
        system = picked @ picked.transpose(1, 2) + ridge[:size, :size]
        fit = torch.linalg.solve(system, picked @ target[:, :, None]).squeeze(2)
    return chosen, fit
