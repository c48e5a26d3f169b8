"""The public pools, one per image shape (H, W, C), built on first use on the encoding device.

A pool comes from the configured pool (``--pool``, loaded once at start-up) resized and
channel-converted to the shape asked for, or, without one, from the bundled default pool built for
that size (``instahide_ops.pool.default_pool``, cached on disk). Builds run in the encoding threads,
never on the event loop; a per-shape lock makes concurrent streams wait for one build instead of
each doing their own. At most ``max_shapes`` pools are kept, the least recently used dropped first.
"""

from __future__ import annotations

import logging
import pathlib
import threading
import time
from collections import OrderedDict

import numpy as np
import torch

from instahide_ops import InvalidInputError
from instahide_ops.pool import PublicPool, adapt_pool, default_pool
from instahide_server.errors import InvalidArgument

logger = logging.getLogger(__name__)

Shape = tuple[int, int, int]


class PoolRegistry:
    """Public pools by image shape; thread-safe."""

    def __init__(self, *, device: torch.device, source: np.ndarray | None = None,
                 cache_dir: pathlib.Path | None = None, max_shapes: int = 8) -> None:
        """
        Args:
            device: where the pools' images live (the encoding device).
            source: the configured uint8 (P, H, W, C) pool; None uses the bundled default pool.
            cache_dir: the default pool's cache folder; None leaves it to instahide_ops.
            max_shapes: pools kept at once.
        """
        self._device = device
        self._source = source
        self._cache_dir = cache_dir
        self._max_shapes = max_shapes
        self._pools: OrderedDict[Shape, PublicPool] = OrderedDict()
        self._building: dict[Shape, threading.Lock] = {}
        self._lock = threading.Lock()  # guards _pools and _building; never held during a build

    def get(self, shape: Shape) -> PublicPool:
        """The pool for images of ``shape`` (H, W, C), building it when it is not there yet.

        Blocks while the pool is built (seconds for a new default pool); call it off the event loop.

        Raises:
            InvalidArgument: no pool can be made for this shape (e.g. channels other than 1 or 3).
        """
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
                    pool = self._build(shape)
                    self._insert(shape, pool)
        finally:
            with self._lock:
                if self._building.get(shape) is build_lock:
                    del self._building[shape]
        return pool

    def _cached(self, shape: Shape) -> PublicPool | None:
        pool = self._pools.get(shape)
        if pool is not None:
            self._pools.move_to_end(shape)
        return pool

    def _insert(self, shape: Shape, pool: PublicPool) -> None:
        with self._lock:
            self._pools[shape] = pool
            while len(self._pools) > self._max_shapes:
                dropped, _ = self._pools.popitem(last=False)
                logger.info("dropped the public pool for images %s (least recently used)", list(dropped))

    def _build(self, shape: Shape) -> PublicPool:
        height, width, channels = shape
        start = time.perf_counter()
        try:
            array = self._source
            if array is None:
                array = default_pool(height, width, cache_dir=self._cache_dir)
            array = adapt_pool(array, height=height, width=width, channels=channels)
            pool = PublicPool.from_array(array, device=self._device)
        except InvalidInputError as exc:
            raise InvalidArgument(f"images.shape: no public pool for images of {height}x{width}x{channels}: "
                                  f"{exc.reason}", "images.shape") from exc
        logger.info("public pool for images %s ready: %d images on %s in %.2fs", list(shape), len(pool),
                    self._device, time.perf_counter() - start)
        return pool
