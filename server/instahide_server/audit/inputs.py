"""Reading an audit's inputs, whatever its kind: tensors from the StartAudit chunks, and server-side datasets.

``resolve_dataset`` finds the file a spec names under the server's data root, refusing any path that leaves
it; ``open_npz`` reads it as a ``.npz`` (never pickles). ``decode`` turns a chunk's tensor into an array and
``concatenate`` joins the chunks. Every refusal names the request field.
"""

from __future__ import annotations

import os
import pathlib
import zipfile
import zlib

import numpy as np
from instahide_client.instahide.v1 import tensor_pb2
from instahide_client.tensors import TensorFormatError, to_numpy

from instahide_server.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted

# What reading an untrusted .npz can raise besides our own refusals.
UNREADABLE = (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile, zlib.error)


def resolve_dataset(data_root: pathlib.Path | None, name: str) -> pathlib.Path:
    """The file ``name`` under ``data_root``. Blocking: run in a thread.

    Raises:
        FailedPrecondition: the server has no data root.
        PermissionDenied: the name is absolute or leads out of the data root (``..``, a symlink).
        NotFound: no such file.
        InvalidArgument: a name no file can have.
    """
    if data_root is None:
        raise FailedPrecondition("spec.dataset: this server has no --data-root; upload the inputs instead",
                                 "spec.dataset")
    if "\0" in name:
        raise InvalidArgument("spec.dataset: a file name cannot hold a NUL character", "spec.dataset")
    relative = pathlib.PurePosixPath(name)
    if relative.is_absolute() or os.path.isabs(name) or ".." in relative.parts:
        raise PermissionDenied(f"spec.dataset: {name!r} must be a relative path inside the data root",
                               "spec.dataset")
    root = data_root.resolve()
    try:
        path = (root / relative).resolve()
        inside = path.is_relative_to(root)
        found = inside and path.is_file()
    except OSError as exc:  # e.g. ENAMETOOLONG
        raise InvalidArgument(f"spec.dataset: not a usable file name ({exc.strerror})", "spec.dataset") from None
    if not inside:
        raise PermissionDenied(f"spec.dataset: {name!r} leads outside the data root", "spec.dataset")
    if not found:
        raise NotFound(f"spec.dataset: no dataset {name!r} under the data root", "spec.dataset")
    return path


def open_npz(path: pathlib.Path, name: str, required: tuple[str, ...]) -> np.lib.npyio.NpzFile:
    """``path`` as an open ``.npz`` holding ``required`` (close it, or use it in ``with``).

    Raises:
        InvalidArgument: not a ``.npz``, a pickled array, a lone array, or a missing member.
    """
    try:
        loaded = np.load(path, allow_pickle=False)
    except UNREADABLE as exc:
        raise InvalidArgument(f"spec.dataset: cannot read {name!r} as a .npz: {exc}", "spec.dataset") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a lone .npy array under a .npz name
        raise InvalidArgument(f"spec.dataset: {name!r} holds one array, not a .npz with "
                              f"{' and '.join(required)}", "spec.dataset")
    missing = set(required) - set(loaded.files)
    if missing:
        loaded.close()
        raise InvalidArgument(f"spec.dataset: {name!r} lacks {sorted(missing)}", "spec.dataset")
    return loaded


def read_images(path: pathlib.Path, name: str, *, max_images: int,
                labels_required: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A dataset's ``images`` ((N, H, W, C) uint8, or float in [-1, 1]) and ``labels`` (int64, or None when
    absent and not required), loaded whole (blocking).

    Raises:
        InvalidArgument: not such a ``.npz``, images of another rank or dtype, floats out of range.
        ResourceExhausted: more images than ``max_images``.
    """
    try:
        with open_npz(path, name, ("images", "labels") if labels_required else ("images",)) as data:
            images = data["images"]
            if images.ndim != 4 or 0 in images.shape[1:] or images.dtype not in (np.uint8, np.float16, np.float32):
                raise InvalidArgument(f"spec.dataset: {name!r} images must be (N, H, W, C) uint8 or float, got "
                                      f"{images.dtype} {list(images.shape)}", "spec.dataset")
            if len(images) > max_images:
                raise ResourceExhausted(f"spec.dataset: {len(images)} images, more than this server's "
                                        f"limit of {max_images} per audit", "spec.dataset")
            labels = np.asarray(data["labels"]).reshape(-1).astype(np.int64) if "labels" in data.files else None
            images = np.asarray(images)
    except UNREADABLE as exc:  # a corrupt member
        raise InvalidArgument(f"spec.dataset: cannot read {name!r} as a .npz: {exc}", "spec.dataset") from None
    if images.dtype != np.uint8:
        check_unit_range(images, "spec.dataset")
    return images, labels


def decode(tensor: tensor_pb2.Tensor, field: str) -> np.ndarray:
    """The chunk's tensor as an array; InvalidArgument naming ``field`` when it does not decode."""
    try:
        return to_numpy(tensor)
    except TensorFormatError as exc:
        raise InvalidArgument(f"{field}.{exc.field}: {exc}", f"{field}.{exc.field}") from None


def concatenate(chunks: list[np.ndarray], *, empty: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
    """The chunks joined along their first axis (an array of shape ``empty`` when there is none)."""
    if not chunks:
        return np.zeros(empty, dtype=dtype)
    return np.concatenate(chunks) if len(chunks) > 1 else chunks[0].copy()


def check_unit_range(array: np.ndarray, field: str) -> None:
    """Float images must be finite and in [-1, 1] (a thousandth of slack for float16)."""
    if not np.isfinite(array).all() or np.abs(array).max() > 1.0 + 1e-3:
        raise InvalidArgument(f"{field}: float images must be finite and in [-1, 1]", f"{field}.content")


def dtype_name(value: int) -> str:
    return tensor_pb2.DataType.Name(value) if value in tensor_pb2.DataType.values() else str(value)
