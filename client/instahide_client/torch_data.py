"""A torch ``IterableDataset`` that streams a dataset through the service (the ``[torch]`` extra).

Examples:
    >>> ds = EncodedDataset(torchvision_cifar10, "127.0.0.1:50051", batch_size=256,
    ...                     shuffle=True)  # doctest: +SKIP
    >>> for epoch in range(epochs):  # doctest: +SKIP
    ...     for x, y in ds:  # x: (B, C, H, W) float32, y: (B, 10) float32 mixed labels
    ...         loss = torch.nn.functional.cross_entropy(model(x), y)

Only this module imports torch; ``import instahide_client`` never does.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sized
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError as exc:  # pragma: no cover - exercised by the no-torch test
    raise ImportError("instahide_client.torch_data needs torch: pip install 'instahide-client[torch]'") from exc

from instahide_client._requests import batch_bounds, encode_config, key_config
from instahide_client._stream import EncodeStream
from instahide_client.client import InstaHideClient
from instahide_client.instahide.v1 import transform_pb2

_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class EncodedDataset(IterableDataset):
    """Encodes a dataset batch by batch through the service; yields ``(encoded, mixed_labels)``.

    Each pass (epoch) opens one ``Encode`` stream from a background thread, which batches the
    source, keeps up to ``prefetch`` encoded batches ready and stops when the consumer stops:
    breaking out of the loop (or closing the iterator) cancels the stream and ends the thread.
    Errors from the thread (a bad sample, a failed RPC) are re-raised in the consumer. Without a
    ``seed`` every epoch draws fresh keys, as InstaHide requires.

    Args:
        source: the private data, one of: an ``(images, labels)`` pair of arrays (numpy or torch),
            images (N, H, W, C); a map-style dataset (``__len__`` and ``__getitem__``) or any
            iterable yielding ``(image, label)``. A sample image is (H, W, C) or (H, W) uint8
            (PIL images work, e.g. torchvision datasets without a transform), or float32/float16
            (H, W, C) already in [-1, 1].
        client: an ``InstaHideClient`` or a target "host:port"; given a target, each pass opens
            its own client (use a target with ``DataLoader(num_workers>0)``: channels do not
            survive a fork). Batches are then split among the workers.
        batch_size: images per request and per yielded batch.
        num_classes: label width; default: ``labels.max() + 1`` for arrays, else
            ``len(source.classes)`` when the source has ``classes`` (as torchvision datasets do).
        key: disguise with this stored DisguisedNets key ("keys/ID") instead of InstaHide. The same
            image gives the same disguise every pass (a noise-free key), as a model trained on it and
            queried with it needs; labels pass through (int64 (B,)); ``output_dtype`` is the only option,
            and AES keys yield uint8 encodings.
        channels_first: yield encodings as (B, C, H, W) (default, what torchvision models take);
            False yields (B, H, W, C) as the service returns them.
        shuffle: visit a sized source in a fresh random order each pass.
        drop_last: drop the last batch when it is smaller than ``batch_size``. Otherwise a last
            batch of one image joins the one before (the service mixes at least two).
        prefetch: encoded batches kept ready ahead of the consumer.
        max_in_flight: requests awaiting the service at once.
        client_options: keyword arguments for ``InstaHideClient`` when ``client`` is a target.
        timeout: deadline of each pass's stream, in seconds.
        metadata: extra call metadata.
        **options: the keyword options of ``encode_config`` (mode, k, output_dtype, seed, ...),
            except ``return_keys``.

    Yields:
        ``(encoded, mixed_labels)``: float32 (or float16) tensor (B, C, H, W) (or (B, H, W, C)),
        and float32 (B, num_classes) mixed labels — soft targets whose rows sum to the private
        coefficients' mass (below 1 in cross mode), usable with ``F.cross_entropy``. With ``key``: the
        disguised batch and the labels as given, int64 (B,).
    """

    def __init__(self, source: Any, client: InstaHideClient | str, *, batch_size: int = 256,
                 num_classes: int | None = None, key: str | None = None, channels_first: bool = True,
                 shuffle: bool = False,
                 drop_last: bool = False, prefetch: int = 2, max_in_flight: int = 4,
                 client_options: dict[str, Any] | None = None, timeout: float | None = None,
                 metadata: Any = None, **options: Any) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        if options.get("return_keys"):
            raise ValueError("EncodedDataset does not return keys; use InstaHideClient.encode_stream")
        if not isinstance(client, InstaHideClient | str):
            raise TypeError(f"client must be an InstaHideClient or a target string, got {type(client)}")
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        if isinstance(source, tuple) and len(source) == 2:
            images, labels = (np.asarray(a) for a in source)
            if len(images) != len(labels):
                raise ValueError(f"labels has length {len(labels)} but images has {len(images)}")
            self._arrays = images, labels
            if num_classes is None and len(labels):
                num_classes = int(labels.max()) + 1
        if key is not None:
            if set(options) - {"output_dtype"}:
                raise ValueError("a stored key takes no InstaHide options (only output_dtype)")
        elif num_classes is None:
            classes = getattr(source, "classes", None)
            if classes is None:
                raise ValueError("num_classes is required for this source")
            num_classes = len(classes)
        if shuffle and self._arrays is None and not _is_map_style(source):
            raise ValueError("shuffle needs arrays or a map-style dataset (with __len__ and __getitem__)")
        self.source = source
        self.client = client
        self.batch_size = batch_size
        self.channels_first = channels_first
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.prefetch = prefetch
        self.max_in_flight = max_in_flight
        self.client_options = dict(client_options or {})
        self.timeout = timeout
        self.metadata = metadata
        # Kept serialized: the dataset must pickle for DataLoader workers.
        config = key_config(key, **options) if key is not None else encode_config(num_classes=num_classes, **options)
        self._config = config.SerializeToString()

    @property
    def config(self) -> transform_pb2.EncodeConfig:
        """The encoding config every pass sends."""
        return transform_pb2.EncodeConfig.FromString(self._config)

    def __len__(self) -> int:
        """Batches per pass (over all workers); TypeError for an unsized source."""
        count = len(self._arrays[0]) if self._arrays is not None else len(self.source)
        return count // self.batch_size if self.drop_last else len(batch_bounds(count, self.batch_size))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        results: queue.Queue[Any] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        lock = threading.Lock()
        streams: list[EncodeStream] = []
        thread = threading.Thread(target=self._produce, args=(results, stop, lock, streams),
                                  name="instahide-encode", daemon=True)
        thread.start()
        try:
            while True:
                item = results.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()
            with lock:
                for stream in streams:
                    stream.cancel()
            thread.join(timeout=10)

    # --- the background thread -------------------------------------------------------------

    def _produce(self, results: queue.Queue[Any], stop: threading.Event, lock: threading.Lock,
                 streams: list[EncodeStream]) -> None:
        try:
            owned = isinstance(self.client, str)
            client = InstaHideClient(self.client, **self.client_options) if owned else self.client
            try:
                stream = client.encode_stream(self._batches(stop), config=self.config,
                                              max_in_flight=self.max_in_flight,
                                              timeout=self.timeout, metadata=self.metadata)
                with lock:
                    streams.append(stream)
                    if stop.is_set():
                        stream.cancel()
                for batch in stream:
                    if not _put(results, self._to_torch(batch.encoded, batch.mixed_labels), stop):
                        return
            finally:
                if owned:
                    client.close()
            _put(results, _END, stop)
        except BaseException as exc:
            _put(results, _Failure(exc), stop)

    def _batches(self, stop: threading.Event) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This pass's batches for this DataLoader worker (runs on gRPC's request thread)."""
        worker = get_worker_info()
        shard, shards = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for number, (images, labels) in enumerate(self._all_batches()):
            if stop.is_set():
                return
            if number % shards == shard:
                yield images, labels

    def _all_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        batches = self._source_batches()
        return batches if self.drop_last or self.batch_size == 1 else _join_single_tail(batches)

    def _source_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._arrays is not None:
            images, labels = self._arrays
            order = np.random.default_rng().permutation(len(images)) if self.shuffle else None
            for start in range(0, len(images), self.batch_size):
                if self.drop_last and len(images) - start < self.batch_size:
                    return
                if order is None:
                    part = slice(start, start + self.batch_size)
                else:
                    part = np.sort(order[start:start + self.batch_size])  # sorted: faster gathers
                yield images[part], labels[part]
            return
        samples: Iterable[Any]
        if _is_map_style(self.source):
            count = len(self.source)
            order = np.random.default_rng().permutation(count) if self.shuffle else range(count)
            samples = (self.source[int(i)] for i in order)
        else:
            samples = self.source
        images_part: list[np.ndarray] = []
        labels_part: list[int] = []
        for image, label in samples:
            images_part.append(_sample_image(image))
            labels_part.append(int(label))
            if len(images_part) == self.batch_size:
                yield np.stack(images_part), np.asarray(labels_part, dtype=np.int64)
                images_part, labels_part = [], []
        if images_part and not self.drop_last:
            yield np.stack(images_part), np.asarray(labels_part, dtype=np.int64)

    def _to_torch(self, encoded: np.ndarray, mixed: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # The response arrays are read-only views of the message; these copies are writable.
        if self.channels_first:
            encoded = encoded.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.array(encoded, order="C")), torch.from_numpy(np.array(mixed))


def _join_single_tail(batches: Iterator[tuple[np.ndarray, np.ndarray]]
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Hold one batch back so a last batch of one image can join it (the service refuses one)."""
    previous = None
    for batch in batches:
        if previous is not None and len(batch[1]) == 1:
            batch = (np.concatenate([previous[0], batch[0]]), np.concatenate([previous[1], batch[1]]))
        elif previous is not None:
            yield previous
        previous = batch
    if previous is not None:
        yield previous


def _is_map_style(source: Any) -> bool:
    return isinstance(source, Sized) and hasattr(source, "__getitem__") and not isinstance(
        source, IterableDataset)


def _sample_image(image: Any) -> np.ndarray:
    """One sample as an (H, W, C) array; a 2-D (grayscale) image gains a channel axis."""
    array = np.asarray(image)
    return array[:, :, None] if array.ndim == 2 else array


def _put(results: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put unless the consumer has stopped; False when it has."""
    while not stop.is_set():
        try:
            results.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
