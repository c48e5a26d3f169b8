"""One Encode call: requests sent lazily with a bounded number outstanding, results in order."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import grpc

from instahide_client._requests import make_request
from instahide_client._types import EncodedBatch
from instahide_client.errors import InstaHideError
from instahide_client.instahide.v1 import transform_pb2
from instahide_client.tensors import TensorFormatError

OnError = Literal["raise", "yield"]


class _Sender:
    """The sending side, shared with gRPC's request thread.

    It holds no reference to its ``EncodeStream``, so a stream the caller drops (a ``break`` out
    of a ``for`` loop) is freed at once and its ``__del__`` cancels the call.
    """

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.slots = threading.Semaphore(max_in_flight)
        self.stop = threading.Event()
        self.pending: collections.deque[str] = collections.deque()  # ids sent, not yet answered
        self.error: BaseException | None = None  # a bad batch or a failing iterable

    def requests(self, batches: Iterator[Any], config: transform_pb2.EncodeConfig
                 ) -> Iterator[transform_pb2.EncodeRequest]:
        # Runs on gRPC's request thread. The config travels on the first request only: later
        # requests inherit the stream's config (so a seeded stream is seeded once).
        index = 0
        while True:
            self.slots.acquire()
            if self.stop.is_set():
                return
            try:
                request = make_request(next(batches), index, config if index == 0 else None,
                                       model_outputs=config.HasField("output_defense"))
            except StopIteration:
                return
            except BaseException as exc:  # raised by EncodeStream after the earlier results
                self.error = exc
                return
            self.pending.append(request.request_id)
            index += 1
            yield request

    def close(self) -> None:
        self.stop.set()
        self.slots.release(self.max_in_flight)  # wake the request thread so it sees the stop


class EncodeStream(Iterator[EncodedBatch]):
    """Iterator over the results of one ``Encode`` stream, in request order.

    Requests are built from ``batches`` on gRPC's sending thread, each only once fewer than
    ``max_in_flight`` requests await their result, so a long (or endless) iterable never piles
    up in memory. Input checks run there too: a bad batch ends the sending, the results of the
    batches before it are still returned, and then its ValueError is raised here.

    Use it as an iterator; ``cancel()`` (or leaving a ``with`` block, or dropping it) ends the
    call early. ``cancel()`` may be called from any thread; the iterator then simply stops.
    """

    def __init__(self, start_call: Callable[[Iterator[transform_pb2.EncodeRequest]], Any],
                 batches: Iterable[Any], config: transform_pb2.EncodeConfig, *,
                 max_in_flight: int, on_error: OnError) -> None:
        self._on_error = on_error
        self._sender = _Sender(max_in_flight)
        self._cancelled = False
        self._finished = False
        self._call = start_call(self._sender.requests(iter(batches), config))

    def __iter__(self) -> EncodeStream:
        return self

    def __next__(self) -> EncodedBatch:
        if self._finished:
            raise StopIteration
        try:
            response = next(self._call)
        except StopIteration:
            self._finish()
            if self._sender.error is not None:
                error, self._sender.error = self._sender.error, None
                raise error from None
            raise
        except grpc.RpcError as exc:
            self._finish()
            if self._cancelled:
                raise StopIteration from None
            if self._sender.error is not None:
                error, self._sender.error = self._sender.error, None
                raise error from None
            raise InstaHideError.from_rpc_error(exc) from None
        self._sender.slots.release()
        expected = self._sender.pending.popleft() if self._sender.pending else None
        if response.request_id != expected:
            self.cancel()
            raise InstaHideError(grpc.StatusCode.INTERNAL,
                                 f"response for request {response.request_id!r} arrived where "
                                 f"{expected!r} was expected", request_id=response.request_id)
        try:
            batch = EncodedBatch.from_proto(response)
        except TensorFormatError as exc:
            self.cancel()
            raise InstaHideError(grpc.StatusCode.INTERNAL, f"malformed response: {exc}",
                                 field=exc.field, request_id=response.request_id) from None
        if batch.error is not None and self._on_error == "raise":
            self.cancel()
            raise batch.error
        return batch

    def cancel(self) -> None:
        """End the call now (thread-safe); iteration then stops without an error."""
        if self._finished:
            return
        self._cancelled = True
        self._call.cancel()
        self._finish()

    close = cancel

    def _finish(self) -> None:
        self._finished = True
        self._sender.close()

    def __enter__(self) -> EncodeStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def __del__(self) -> None:
        if not getattr(self, "_finished", True) and hasattr(self, "_call"):
            self.cancel()
