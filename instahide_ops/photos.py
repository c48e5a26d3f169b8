"""Photos that ship inside the installed dependencies (scikit-image's and scikit-learn's samples; no download).

Public pools are cut from them, bundled benchmark sets are cut from them, and attackers who hold public photos
hold them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from instahide_ops.errors import InvalidInputError

# Colour photos that ship inside the installed wheels (never fetched through pooch). skimage's cat()
# is chelsea() again and motorcycle_right a near-copy of motorcycle_left, so both are left out.
_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
                   "motorcycle_left", "retina", "rocket")
_SKLEARN_PHOTOS = ("china", "flower")
BUNDLED_SOURCE_NAMES: tuple[str, ...] = _SKIMAGE_PHOTOS + _SKLEARN_PHOTOS


def bundled_sources(names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Load bundled colour photos by name.

    Args:
        names: names from ``BUNDLED_SOURCE_NAMES``; None loads all of them, in that order.

    Returns:
        name -> (H, W, 3) uint8 RGB photo, in the order asked for.

    Raises:
        ValueError: a name is not a bundled source.
    """
    names = BUNDLED_SOURCE_NAMES if names is None else tuple(names)
    unknown = [name for name in names if name not in BUNDLED_SOURCE_NAMES]
    if unknown:
        raise InvalidInputError(f"unknown bundled source {unknown[0]!r}; expected one of "
                                f"{list(BUNDLED_SOURCE_NAMES)}", field="names")
    return {name: np.ascontiguousarray(_load_bundled(name)) for name in names}


def _load_bundled(name: str) -> np.ndarray:
    # Imported here: scikit-learn alone would add ~0.7 s to every import of instahide_ops.
    if name in _SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    from skimage import data

    return data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()
