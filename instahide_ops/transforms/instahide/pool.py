"""Public pools: textured natural-image patches mixed into cross-dataset InstaHide encodings.

The default pool is cropped from colour photos bundled in dependencies (no download), built once
and cached as ``.npy``; ``load_pool`` reads one from a folder or ``.npy`` file instead, and
``PublicPool`` holds a pool on the encoder's device.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from instahide_ops.errors import InvalidInputError
from instahide_ops.images import (
    IMAGE_SUFFIXES,
    image_files,
    read_rgb,
    resize_image,
    to_grey,
    to_unit_range,
    unit_range_to_uint8,
)
from instahide_ops.photos import BUNDLED_SOURCE_NAMES, bundled_sources

logger = logging.getLogger(__name__)

# A crop is kept when it is textured: it holds at least DEFAULT_MIN_KEYPOINTS keypoints, counted at source
# resolution before it is shrunk to the output size. The reference kept crops with more than 40 of OpenCV's SIFT
# keypoints, but SIFT's count moves with OpenCV's SIMD path, and with it the pool, from one CPU to the next. So
# keypoints are found here as SIFT's detector finds them (extrema of a difference of Gaussians, off edges) in
# integer arithmetic, the same on every CPU; on the bundled photos' crops this keeps or drops what SIFT's bar
# does about 95 % of the time. Being a count, the bar is easier to clear for a large crop than for a small one:
# a textured 96-px crop (astronaut, motorcycle, china) clears it, and flat regions (sky, the retina's black
# border, the rocket's blank background) fail at every scale.
DEFAULT_SCALES: tuple[int, ...] = (64, 96, 128, 192, 256)
DEFAULT_MIN_KEYPOINTS = 15
KEYPOINT_CONTRAST = 5  # grey levels of |DoG| below which an extremum is noise (SIFT's 0.04 / 3 is about 3.4)
KEYPOINT_EDGE_RATIO = 10  # SIFT's edgeThreshold: principal curvatures further apart than this are an edge
_FRACTION_BITS = 8  # fixed-point grey levels
DEFAULT_SEED = 0
# 2048 patches build in about 7 s on two cores (the counts run in threads) and load from the cache in ms.
DEFAULT_POOL_SIZE = 2048
_FORMAT_VERSION = 2  # part of the cache file name: bump it whenever build_pool changes its output


def count_keypoints(image: np.ndarray, *, contrast: int = KEYPOINT_CONTRAST,
                    edge_ratio: int = KEYPOINT_EDGE_RATIO) -> int:
    """Count the keypoints of a uint8 (H, W) or (H, W, 3) RGB image as SIFT's detector finds them, exactly.

    Scale-space extrema of the difference of Gaussians (σ = 1, √2, 2, 2√2 and 4, from repeated binomial blurs
    of the grey levels) whose |DoG| exceeds ``contrast`` grey levels and whose principal curvatures differ by
    less than ``edge_ratio`` (no edges), two pixels or more from the border. Unlike SIFT there is no sub-pixel
    refinement and one octave, and every step is integer arithmetic: the same count on every CPU.
    """
    grey = to_grey(image).astype(np.int32) << _FRACTION_BITS
    blurred = [_binomial_blur(grey)]
    for passes in (1, 2, 4, 8):  # the variance doubles from one level to the next
        level = blurred[-1]
        for _ in range(passes):
            level = _binomial_blur(level)
        blurred.append(level)
    dog = np.stack([coarser - finer for finer, coarser in itertools.pairwise(blurred)])
    centre, threshold = dog[1:-1], contrast << _FRACTION_BITS
    extremum = (((centre == _max_around(dog)) & (centre > threshold))
                | ((centre == -_max_around(-dog)) & (centre < -threshold)))
    extremum[:, :2] = extremum[:, -2:] = extremum[:, :, :2] = extremum[:, :, -2:] = False
    levels, rows, cols = np.nonzero(extremum)
    return int(np.count_nonzero(~_on_an_edge(centre, levels, rows, cols, edge_ratio)))
def _binomial_blur(values: np.ndarray) -> np.ndarray:
    """(1, 4, 6, 4, 1) / 16 along both axes (σ = 1), borders mirrored as OpenCV's default, rounded."""
    padded = np.empty((values.shape[0] + 4, values.shape[1] + 4), values.dtype)
    padded[2:-2, 2:-2] = values
    padded[2:-2, :2], padded[2:-2, -2:] = values[:, 2:0:-1], values[:, -2:-4:-1]
    padded[:2], padded[-2:] = padded[4:2:-1], padded[-4:-6:-1]
    rows = padded[:, :-4] + padded[:, 4:]
    rows += 4 * (padded[:, 1:-3] + padded[:, 3:-1])
    rows += 6 * padded[:, 2:-2]
    both = rows[:-4] + rows[4:]
    both += 4 * (rows[1:-3] + rows[3:-1])
    both += 6 * rows[2:-2]
    both += 128
    both >>= 8
    return both


def _max_around(dog: np.ndarray) -> np.ndarray:
    """(L - 2, H, W): the largest value of each position's 3 × 3 × 3 neighbourhood in scale and space (the
    image's border repeated)."""
    out = dog.copy()
    np.maximum(out[:, 1:], dog[:, :-1], out=out[:, 1:])
    np.maximum(out[:, :-1], dog[:, 1:], out=out[:, :-1])
    rows = out.copy()
    np.maximum(out[:, :, 1:], rows[:, :, :-1], out=out[:, :, 1:])
    np.maximum(out[:, :, :-1], rows[:, :, 1:], out=out[:, :, :-1])
    return np.maximum(np.maximum(out[:-2], out[1:-1]), out[2:])


def _on_an_edge(dog: np.ndarray, levels: np.ndarray, rows: np.ndarray, cols: np.ndarray, ratio: int) -> np.ndarray:
    """Whether the DoG's 2 × 2 Hessian at each (level, row, col) fails SIFT's test tr² / det < (r + 1)² / r: an
    edge, or a saddle. The positions lie a pixel or more inside the border."""
    def at(dy: int, dx: int) -> np.ndarray:
        return dog[levels, rows + dy, cols + dx].astype(np.int64)

    dxx = at(0, 1) + at(0, -1) - 2 * at(0, 0)
    dyy = at(1, 0) + at(-1, 0) - 2 * at(0, 0)
    dxy = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) // 4
    trace, determinant = dxx + dyy, dxx * dyy - dxy * dxy
    return (determinant <= 0) | (trace * trace * ratio >= (ratio + 1) ** 2 * determinant)


def build_pool(sources: Iterable[np.ndarray], *, height: int = 32, width: int = 32,
               count: int = DEFAULT_POOL_SIZE, scales: Sequence[int] = DEFAULT_SCALES,
               min_keypoints: int = DEFAULT_MIN_KEYPOINTS, seed: int = DEFAULT_SEED,
               max_attempts: int | None = None) -> np.ndarray:
    """Crop textured patches at random from source photos.

    Each attempt picks a source, a scale that fits it and a position, all from one seeded
    generator; the crop keeps the output's aspect ratio (its longer side is the scale), is kept
    when it has at least ``min_keypoints`` keypoints (``count_keypoints``), and is resized
    (``resize_image``: area averaging to shrink). Equal arguments give an equal pool, on every CPU.

    Args:
        sources: (H, W, 3) uint8 RGB photos, each at least as large as the smallest crop.
        height, width: patch size in pixels.
        count: number of patches to keep.
        scales: crop sizes in source pixels (the crop's longer side).
        min_keypoints: keypoints a crop needs to be kept (counted before resizing).
        seed: seed of the crop generator (the pool is public, so a fixed seed is fine).
        max_attempts: crops to try before giving up; None means ``100 * count``.

    Returns:
        (count, height, width, 3) uint8 RGB patches.

    Raises:
        ValueError: malformed arguments, or fewer than ``count`` crops passed in ``max_attempts``.
    """
    sources = [np.asarray(source) for source in sources]
    max_attempts = 100 * count if max_attempts is None else max_attempts
    if min(height, width, count, max_attempts) < 1:
        raise InvalidInputError(f"height, width, count and max_attempts must be >= 1, got {height}, {width}, "
                                f"{count}, {max_attempts}", field="size")
    if not scales or min(scales) < 1:
        raise InvalidInputError(f"scales must be positive crop sizes, got {list(scales)}", field="scales")
    if not sources:
        raise InvalidInputError("no source images", field="sources")
    crops = [crop_size(scale, height, width) for scale in sorted(set(scales))]
    for i, source in enumerate(sources):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
            raise InvalidInputError(f"source {i}: expected uint8 (H, W, 3), got {source.dtype} "
                                    f"{list(source.shape)}", field="sources")
        if source.shape[0] < crops[0][0] or source.shape[1] < crops[0][1]:
            raise InvalidInputError(f"source {i} is {list(source.shape[:2])}, smaller than the smallest "
                                    f"crop {list(crops[0])}", field="sources")

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    attempts = 0
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as executor:
        while len(kept) < count and attempts < max_attempts:
            # Candidates are drawn one by one from the generator and kept in order, so the pool does
            # not depend on the batch size; batches only let the counts (numpy releases the GIL) run in parallel.
            batch = min(max_attempts - attempts, 128, max(16, 2 * (count - len(kept))))
            candidates = [_random_crop(sources, crops, rng) for _ in range(batch)]
            for crop, keypoints in zip(candidates, executor.map(count_keypoints, candidates), strict=True):
                attempts += 1
                if keypoints >= min_keypoints:
                    kept.append(resize_image(crop, height, width))
                    if len(kept) == count:
                        break
    if len(kept) < count:
        raise InvalidInputError(
            f"only {len(kept)} of {count} crops had >= {min_keypoints} keypoints after {attempts} "
            "attempts; lower min_keypoints, use more textured sources or raise max_attempts",
            field="max_attempts",
        )
    logger.info("built public pool of %d %dx%d patches from %d sources in %.2fs (%d attempts)",
                count, height, width, len(sources), time.perf_counter() - start, attempts)
    return np.stack(kept)


def crop_size(scale: int, height: int, width: int) -> tuple[int, int]:
    """(crop height, crop width) with the output's aspect ratio and ``scale`` as the longer side."""
    longer = max(height, width)
    return max(1, round(scale * height / longer)), max(1, round(scale * width / longer))


def _random_crop(sources: list[np.ndarray], crops: list[tuple[int, int]],
                 rng: np.random.Generator) -> np.ndarray:
    source = sources[rng.integers(len(sources))]
    fitting = [(h, w) for h, w in crops if h <= source.shape[0] and w <= source.shape[1]]
    crop_h, crop_w = fitting[rng.integers(len(fitting))]
    y = rng.integers(source.shape[0] - crop_h + 1)
    x = rng.integers(source.shape[1] - crop_w + 1)
    return np.ascontiguousarray(source[y : y + crop_h, x : x + crop_w])


def default_pool(height: int = 32, width: int = 32, *, count: int = DEFAULT_POOL_SIZE,
                 cache_dir: str | os.PathLike | None = None, sources: Sequence[str] | None = None) -> np.ndarray:
    """The server's embedded pool: built from every bundled source once, then read from a cache.

    Args:
        height, width: patch size in pixels.
        count: number of patches.
        cache_dir: cache folder; None means ``$INSTAHIDE_CACHE_DIR``, else ``$XDG_CACHE_HOME/instahide``,
            else ``~/.cache/instahide``.
        sources: bundled photos to crop from (``BUNDLED_SOURCE_NAMES`` when None); a benchmark keeps
            its private images' photos out of its public pool this way.

    Returns:
        (count, height, width, 3) uint8 RGB patches.
    """
    # Every build parameter is in the file name; the libraries that supply the photos go into a digest, so no
    # parameter or upgrade ever reads a stale pool.
    libraries = (version("scikit-image"), version("scikit-learn"))
    names = BUNDLED_SOURCE_NAMES if sources is None else tuple(sources)
    digest = hashlib.sha256(repr((names, libraries)).encode()).hexdigest()[:12]
    scales = ".".join(str(scale) for scale in DEFAULT_SCALES)
    name = (f"public-pool-v{_FORMAT_VERSION}-{height}x{width}-n{count}-s{scales}-kp{DEFAULT_MIN_KEYPOINTS}"
            f"-seed{DEFAULT_SEED}-{digest}.npy")
    path = _resolve_cache_dir(cache_dir) / name
    expected = (count, height, width, 3)
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.dtype == np.uint8 and cached.shape == expected:
                logger.info("loaded public pool %s from cache %s", list(expected), path)
                return cached
            logger.warning("cached pool %s is %s %s, rebuilding", path, cached.dtype, list(cached.shape))
        except (OSError, ValueError, EOFError) as error:
            logger.warning("cached public pool %s is unreadable (%s), rebuilding", path, error)
    pool = build_pool(bundled_sources(names).values(), height=height, width=width, count=count)
    try:
        _save_atomic(path, pool)
    except OSError as error:
        logger.warning("could not cache the public pool at %s: %s", path, error)
    return pool


def _resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("INSTAHIDE_CACHE_DIR"):
        return Path(os.environ["INSTAHIDE_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "instahide"
    return Path.home() / ".cache" / "instahide"


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            np.save(file, array, allow_pickle=False)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the pool is public and the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_pool(path: str | os.PathLike) -> np.ndarray:
    """Read a public pool from a ``.npy`` file or a folder of images.

    Args:
        path: a ``.npy`` file holding uint8 (P, H, W, C) in [0, 255] or float (P, H, W, C) in [-1, 1],
            or a folder of ``.png``/``.jpg``/``.jpeg``/``.bmp`` files that all share one size.

    Returns:
        (P, H, W, C) uint8 patches; C is 3 (RGB) for a folder, 1 or 3 for a ``.npy`` file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: wrong rank, dtype, range or channel count, an empty pool, an unreadable image
            or images of different sizes.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"public pool {str(path)!r} does not exist")
    if path.is_dir():
        pool = _load_folder(path)
    elif path.suffix.lower() == ".npy":
        pool = _load_npy(path)
    else:
        raise InvalidInputError(f"{str(path)!r} is neither a .npy file nor a folder of images", field="pool")
    if pool.ndim != 4 or pool.shape[3] not in (1, 3):
        raise InvalidInputError(f"{str(path)!r} holds shape {list(pool.shape)}; expected rank 4 "
                                "(P, H, W, C) with C 1 or 3", field="pool")
    if pool.shape[0] == 0:
        raise InvalidInputError(f"{str(path)!r} holds an empty pool", field="pool")
    logger.info("loaded public pool %s from %s", list(pool.shape), path)
    return pool


def load_photos(folder: str | os.PathLike, *, height: int = 32, width: int = 32,
                scales: Sequence[int] = DEFAULT_SCALES) -> list[np.ndarray]:
    """Read the photos a pool is to be cut from (``build_pool``'s sources) out of a folder.

    Args:
        folder: a folder of ``.png``/``.jpg``/``.jpeg``/``.bmp`` photos of any sizes.
        height, width, scales: the pool ``build_pool`` will cut; each photo must hold its smallest crop.

    Returns:
        (H, W, 3) uint8 RGB photos, in file-name order.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: not a folder, no image in it, an unreadable image or one smaller than the smallest crop.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"photo folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise InvalidInputError(f"{str(folder)!r} is not a folder of photos", field="photos")
    smallest = min(crop_size(scale, height, width) for scale in scales)
    photos = []
    for file, photo in _read_folder(folder, field="photos"):
        if photo.shape[0] < smallest[0] or photo.shape[1] < smallest[1]:
            raise InvalidInputError(f"{str(file)!r} is {list(photo.shape[:2])}, smaller than the smallest crop "
                                    f"{list(smallest)}", field="photos")
        photos.append(photo)
    logger.info("loaded %d photos to cut public pools from (%s)", len(photos), folder)
    return photos


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InvalidInputError(f"cannot read {str(path)!r}: {error}", field="pool") from None
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInputError(f"{str(path)!r} holds {array.dtype}; expected uint8 or float in [-1, 1]",
                                field="pool")
    if array.size and not (np.isfinite(array).all() and array.min() >= -1.0 and array.max() <= 1.0):
        raise InvalidInputError(f"{str(path)!r} holds floats outside [-1, 1]", field="pool")
    return unit_range_to_uint8(array)


def _load_folder(path: Path) -> np.ndarray:
    images = _read_folder(path, field="pool")
    first, first_rgb = images[0]
    for file, rgb in images:
        if rgb.shape != first_rgb.shape:
            raise InvalidInputError(f"{str(file)!r} is {list(rgb.shape[:2])} but {str(first)!r} is "
                                    f"{list(first_rgb.shape[:2])}; all pool images must share one size",
                                    field="pool")
    return np.stack([rgb for _, rgb in images])


def _read_folder(folder: Path, *, field: str) -> list[tuple[Path, np.ndarray]]:
    """Every image file of ``folder`` (``image_files``) with its RGB pixels; at least one, or InvalidInputError."""
    files = image_files(folder)
    if not files:
        raise InvalidInputError(f"{str(folder)!r} holds no {'/'.join(IMAGE_SUFFIXES)} files", field=field)
    return [(file, read_rgb(file, field=field)) for file in files]


def adapt_pool(array: np.ndarray, *, height: int, width: int, channels: int) -> np.ndarray:
    """Resize a pool and convert its channels to match the images it is mixed with.

    Shrinking averages areas, enlarging interpolates linearly (``resize_image``); 3 -> 1 channels takes the
    luminance (``to_grey``: ITU-R BT.601), 1 -> 3 repeats the channel. The same bytes on every CPU.

    Args:
        array: (P, H, W, C) uint8 with C 1 or 3.
        height, width, channels: target shape of one image; channels 1 or 3.

    Returns:
        (P, height, width, channels) uint8; ``array`` itself when it already matches.
    """
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] not in (1, 3):
        raise InvalidInputError(f"expected uint8 (P, H, W, C) with C 1 or 3, got {array.dtype} "
                                f"{list(array.shape)}", field="pool")
    if channels not in (1, 3) or height < 1 or width < 1:
        raise InvalidInputError(f"cannot adapt a pool to {height}x{width}x{channels}; expected a positive "
                                "size and 1 or 3 channels", field="pool")
    if array.shape[1:] == (height, width, channels):
        return array
    out = array
    if out.shape[1:3] != (height, width):
        out = np.stack([resize_image(image, height, width) for image in out]).reshape(len(out), height, width, -1)
    if out.shape[3] == 3 and channels == 1:
        out = np.stack([to_grey(image) for image in out])[..., None]
    elif out.shape[3] == 1 and channels == 3:
        out = np.repeat(out, 3, axis=3)
    return out


class PublicPool:
    """A public pool on a device, as the encoder reads it; build one with ``from_array``.

    Attributes:
        pixels: (P, H, W, C) uint8 on ``device``, as stored (the encoder folds the unit-range map
            into its weights, so it needs no float copy).
        fingerprint: SHA-256 hex of the uint8 pool's shape and bytes; names the pool in key records.
    """

    def __init__(self, pixels: torch.Tensor, fingerprint: str) -> None:
        self.pixels = pixels
        self.fingerprint = fingerprint

    @classmethod
    def from_array(cls, array: np.ndarray, *, device: torch.device | str = "cpu") -> PublicPool:
        """Put a uint8 pool on ``device``.

        Args:
            array: (P, H, W, C) uint8 with P >= 1.
            device: where the pool lives.

        Raises:
            ValueError: ``array`` is not uint8, not rank 4 or empty.
        """
        array = np.asarray(array)
        if array.dtype != np.uint8 or array.ndim != 4:
            raise InvalidInputError(f"expected a uint8 (P, H, W, C) array, got {array.dtype} "
                                    f"{list(array.shape)}", field="pool")
        if array.shape[0] == 0:
            raise InvalidInputError("the pool is empty; expected at least one image", field="pool")
        array = np.ascontiguousarray(array)
        digest = hashlib.sha256(f"uint8{list(array.shape)}".encode())
        digest.update(memoryview(array).cast("B"))
        # torch.tensor copies, so a read-only (memory-mapped, cached) array is fine.
        return cls(torch.tensor(array, device=device), digest.hexdigest())

    @functools.cached_property
    def images(self) -> torch.Tensor:
        """(P, H, W, C) float32 in [-1, 1] on ``device`` (``to_unit_range`` of ``pixels``, made once)."""
        return to_unit_range(self.pixels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        height, width, channels = self.pixels.shape[1:]
        return height, width, channels

    @property
    def device(self) -> torch.device:
        return self.pixels.device

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def to(self, device: torch.device | str) -> PublicPool:
        """The same pool (same fingerprint) on another device."""
        return PublicPool(self.pixels.to(device), self.fingerprint)
