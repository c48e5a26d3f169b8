"""The public pools, one per image shape (H, W, C), built on first use on the encoding device.

A pool comes from one of three places:
- the configured pool (``--pool``, loaded once at start-up), resized and channel-converted to the shape
  asked for;
- the configured photos (``--pool-photos``), cut for each shape as ``pool.build_pool``
  cuts, at a seed drawn from the CSPRNG at start-up and never written anywhere;
- without either, the bundled default pool built for that size (``pool.default_pool``,
  cut from the bundled photos at a public seed, cached on disk).
The last two hold ``--pool-size`` images each.
Builds run in the encoding threads, never on the event loop; a per-shape lock makes concurrent streams
wait for one build instead of each doing their own. At most ``max_shapes`` pools are kept, the least
recently used dropped first. A cut the photos cannot fill is not tried again: its failure is kept in the
pool's place.
"""

from __future__ import annotations

import logging
import pathlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from instahide_ops.errors import InvalidInputError
from instahide_ops.photos import bundled_sources
from instahide_ops.transforms.instahide.pool import DEFAULT_POOL_SIZE, PublicPool, adapt_pool, build_pool, default_pool
from instahide_server.errors import FailedPrecondition, InvalidArgument

logger = logging.getLogger(__name__)

Shape = tuple[int, int, int]


def check_pool_channels(shape: Shape) -> None:
    """InvalidArgument on ``images.shape`` for images a public pool cannot be mixed with (channels other than 1
    or 3), with a hint when the batch looks channels-first."""
    height, width, channels = shape
    if channels in (1, 3):
        return
    hint = (f"; ({height}, {width}, {channels}) looks like channels first (NCHW): send (N, H, W, C), e.g. "
            "images.transpose(0, 2, 3, 1)") if height in (1, 3) else ""
    raise InvalidArgument(f"images.shape: InstaHide mixes images of 1 or 3 channels (N, H, W, C), got {channels} "
                          f"channels{hint}", "images.shape")


class PoolRegistry:
    """Public pools by image shape; thread-safe."""

    def __init__(self, *, device: torch.device, source: np.ndarray | None = None,
                 photos: Sequence[np.ndarray] | None = None, size: int | None = None,
                 cache_dir: pathlib.Path | None = None, max_shapes: int = 8) -> None:
        """
        Args:
            device: where the pools' images live (the encoding device).
            source: the configured uint8 (P, H, W, C) pool.
            photos: the configured (H, W, 3) uint8 photos to cut pools from at a secret seed.
            size: images in each pool cut from ``photos`` or the bundled photos; None = ``DEFAULT_POOL_SIZE``.
            cache_dir: the default pool's cache folder; None leaves it to instahide_ops.
            max_shapes: pools kept at once.

        Without ``source`` or ``photos`` the pools are the bundled default pool.
        """
        if source is not None and photos is not None:
            raise ValueError("a pool is given either as images (source) or as photos to cut it from, not both")
        if source is not None and size is not None:
            raise ValueError("size sets pools cut from photos; a pool given as images (source) is as large as they are")
        self._device = device
        self._source = source
        self._photos = None if photos is None else list(photos)
        self._size = DEFAULT_POOL_SIZE if size is None else size
        # Every shape's pool is cut at this one seed, so each is the same draw from the photos. It is kept
        # in memory only: an attacker who learns it rebuilds the pool, and it changes at every start.
        self._photo_seed = secrets.randbits(63) if photos is not None else None
        self._cache_dir = cache_dir
        self._max_shapes = max_shapes
        self._pools: OrderedDict[Shape, PublicPool | str] = OrderedDict()  # a str: why the cut failed
        self._building: dict[Shape, threading.Lock] = {}
        self._lock = threading.Lock()  # guards _pools and _building; never held during a build

    @property
    def holds_photos(self) -> bool:
        """Whether the pools are cut from photos the server holds (``photos`` is not None)."""
        return self._source is None

    @property
    def photos(self) -> list[np.ndarray] | None:
        """The photos the pools are cut from, which a photo-aware attacker holds: the configured photos, the
        bundled ones for the default pool, or None for a pool given as images."""
        if self._source is not None:
            return None
        photos = self._photos
        if photos is None:  # two threads may both load them; either list will do
            photos = self._photos = list(bundled_sources().values())  # default_pool's sources, in its order
        return photos

    def get(self, shape: Shape) -> PublicPool:
        """The pool for images of ``shape`` (H, W, C), building it when it is not there yet.

        Blocks while the pool is built (seconds for a new default pool); call it off the event loop.

        Raises:
            InvalidArgument: no pool can be made for this shape (e.g. channels other than 1 or 3).
            FailedPrecondition: the photos cannot fill a pool of ``size`` images (too few textured crops).
        """
        check_pool_channels(shape)  # before seconds of cutting a pool no image of this shape could use
        with self._lock:
            pool = self._cached(shape)
            if pool is not None:
                return pool
            build_lock = self._building.setdefault(shape, threading.Lock())
        try:
            with build_lock:
                with self._lock:
                    pool = self._cached(shape)
                if pool is None:
                    try:
                        pool = self._build(shape)
                    except FailedPrecondition as exc:
                        # The photos and the seed do not change while the server runs, so the cut would fail
                        # again the same way, after as many attempts: the answer is kept instead.
                        self._insert(shape, str(exc))
                        raise
                    self._insert(shape, pool)
        finally:
            with self._lock:
                if self._building.get(shape) is build_lock:
                    del self._building[shape]
        return pool

    def built(self) -> list[tuple[Shape, PublicPool]]:
        """The pools built so far, by image shape (least recently used first)."""
        with self._lock:
            return [(shape, pool) for shape, pool in self._pools.items() if isinstance(pool, PublicPool)]

    def _cached(self, shape: Shape) -> PublicPool | None:
        """The shape's pool, None when there is none yet; raises the failure kept for it (``_insert``)."""
        pool = self._pools.get(shape)
        if pool is not None:
            self._pools.move_to_end(shape)
        if isinstance(pool, str):
            raise FailedPrecondition(pool)
        return pool

    def _insert(self, shape: Shape, pool: PublicPool | str) -> None:
        """Keep the shape's pool, or the message of the failure to cut it."""
        with self._lock:
            self._pools[shape] = pool
            while len(self._pools) > self._max_shapes:
                dropped, _ = self._pools.popitem(last=False)
                logger.info("dropped the public pool for images %s (least recently used)", list(dropped))

    def _build(self, shape: Shape) -> PublicPool:
        height, width, channels = shape
        start = time.perf_counter()
        try:
            array = self._cut(height, width)
        except InvalidInputError as exc:  # the configured photos cannot fill the pool: not the caller's fault
            remedy = "lower --pool-size" + (" or give more textured --pool-photos" if self._photos is not None else "")
            raise FailedPrecondition(f"the server cannot cut a public pool of {self._size} images of {height}x{width} "
                                     f"from its photos: {exc.reason}; its operator can {remedy}") from exc
        try:
            array = adapt_pool(array, height=height, width=width, channels=channels)
            pool = PublicPool.from_array(array, device=self._device)
        except InvalidInputError as exc:
            raise InvalidArgument(f"images.shape: no public pool for images of {height}x{width}x{channels}: "
                                  f"{exc.reason}", "images.shape") from exc
        logger.info("public pool for images %s ready: %d images on %s in %.2fs", list(shape), len(pool),
                    self._device, time.perf_counter() - start)
        return pool

    def _cut(self, height: int, width: int) -> np.ndarray:
        """The pool's uint8 images before they are adapted to a shape: the configured ones, or a cut of
        ``size`` images of height × width from the configured or bundled photos."""
        if self._source is not None:
            return self._source
        if self._photo_seed is not None:
            return build_pool(self.photos, height=height, width=width, count=self._size, seed=self._photo_seed)
        return default_pool(height, width, count=self._size, cache_dir=self._cache_dir)
