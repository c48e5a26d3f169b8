"""The asyncio client: ``AsyncInstaHideClient``, the methods of ``InstaHideClient`` as coroutines (as tritonclient
has ``tritonclient.grpc.aio``).

    >>> async with AsyncInstaHideClient("127.0.0.1:50051") as client:  # doctest: +SKIP
    ...     out = await client.encode(images, labels)
    ...     audit = await client.wait_audit((await client.start_audit(images, labels)).name)

Requests are built and checked by the same code as the synchronous client's, so both refuse the same inputs with
the same messages; every failed call raises ``InstaHideError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from instahide_client import _health
from instahide_client._audit_requests import audit_requests, check_audit_inputs
from instahide_client._membership_requests import check_membership_inputs, membership_requests
from instahide_client._requests import (
    batch_bounds,
    check_batch,
    defense_config,
    encode_config,
    key_config,
    make_request,
)
from instahide_client._types import EncodedBatch, EncodeOutput, KeyRecord, concatenate_keys
from instahide_client.audits import Audit, AuditEvent, audit_name, state_value
from instahide_client.client import DEFAULT_MAX_MESSAGE_BYTES, channel_options
from instahide_client.errors import InstaHideError
from instahide_client.instahide.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    info_pb2,
    info_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    transform_pb2,
    transform_pb2_grpc,
)
from instahide_client.keys import StoredKey, disguised_nets_params, key_name

Metadata = Sequence[tuple[str, str | bytes]]


class AsyncInstaHideClient:
    """An asyncio channel to the service; the arguments are ``InstaHideClient``'s."""

    def __init__(self, target: str, *, token: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, root_certificates: bytes | None = None,
                 tls: bool = False, certificate_chain: bytes | None = None, private_key: bytes | None = None,
                 server_name: str | None = None, options: Sequence[tuple[str, Any]] = ()) -> None:
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("certificate_chain and private_key go together (a client certificate and its key)")
        tls = tls or root_certificates is not None or certificate_chain is not None
        if server_name is not None and not tls:
            raise ValueError("server_name applies to TLS only; give root_certificates or tls=True")
        self.target = target
        self.max_message_bytes = max_message_bytes
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        merged = dict(channel_options(max_message_bytes))
        if server_name is not None:
            merged["grpc.ssl_target_name_override"] = server_name
        merged.update(dict(options))
        if tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates, private_key=private_key,
                                                       certificate_chain=certificate_chain)
            self._channel = grpc.aio.secure_channel(target, credentials, options=list(merged.items()))
        else:
            self._channel = grpc.aio.insecure_channel(target, options=list(merged.items()))
        self._transform = transform_pb2_grpc.TransformServiceStub(self._channel)
        self._audits = audit_pb2_grpc.AuditServiceStub(self._channel)
        self._keys = keys_pb2_grpc.KeyServiceStub(self._channel)
        self._info = info_pb2_grpc.InfoServiceStub(self._channel)
        self._health_check = self._channel.unary_unary(_health.CHECK_METHOD)

    async def close(self) -> None:
        """Close the channel; calls in progress are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncInstaHideClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncInstaHideClient({self.target!r})"

    def _call_metadata(self, metadata: Metadata | None) -> list[tuple[str, str | bytes]]:
        return [*self._metadata, *(metadata or ())]

    async def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None,
                     metadata: Metadata | None) -> Any:
        try:
            return await method(request, timeout=timeout, metadata=self._call_metadata(metadata))
        except grpc.RpcError as exc:
            raise InstaHideError.from_rpc_error(exc) from None

    # -- the server ---------------------------------------------------------------------------------

    async def health(self, service: str = "", *, timeout: float | None = 10.0,
                     metadata: Metadata | None = None) -> str:
        """The serving status of the server (or of ``service``): "SERVING", "NOT_SERVING", ..."""
        raw = await self._unary(self._health_check, _health.encode_request(service), timeout, metadata)
        try:
            return _health.status_name(_health.decode_response(raw))
        except ValueError as exc:
            raise InstaHideError(grpc.StatusCode.INTERNAL, f"malformed health response: {exc}") from None

    async def server_info(self, *, timeout: float | None = 10.0, metadata: Metadata | None = None) -> dict[str, Any]:
        """What the server is and runs, as ``InstaHideClient.server_info``."""
        response = await self._unary(self._info.GetServerInfo, info_pb2.GetServerInfoRequest(), timeout, metadata)
        return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    # -- encoding -----------------------------------------------------------------------------------

    async def _stream(self, batches: Iterable[tuple[np.ndarray, np.ndarray | None]],
                      config: transform_pb2.EncodeConfig, *, max_in_flight: int, timeout: float | None,
                      metadata: Metadata | None) -> list[EncodedBatch]:
        """Every batch through one Encode stream, at most ``max_in_flight`` unanswered; results in order. The
        first per-batch error raises."""
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        outputs = config.HasField("output_defense")
        requests = [make_request(batch, index, config if index == 0 else None, model_outputs=outputs)
                    for index, batch in enumerate(batches)]
        slots = asyncio.Semaphore(max_in_flight)

        async def send() -> AsyncIterator[transform_pb2.EncodeRequest]:
            for request in requests:
                await slots.acquire()
                yield request

        call = self._transform.Encode(send(), timeout=timeout, metadata=self._call_metadata(metadata))
        results = []
        try:
            async for response in call:
                slots.release()
                batch = EncodedBatch.from_proto(response)
                if batch.error is not None:
                    call.cancel()
                    raise batch.error
                results.append(batch)
        except grpc.RpcError as exc:
            raise InstaHideError.from_rpc_error(exc) from None
        if len(results) != len(requests):
            raise InstaHideError(grpc.StatusCode.CANCELLED, "the encode stream ended early")
        return results

    async def encode(self, images: np.ndarray, labels: np.ndarray | None = None, *, key: str | None = None,
                     batch_size: int = 1024, num_classes: int | None = None, max_in_flight: int = 4,
                     timeout: float | None = None, metadata: Metadata | None = None, **options: Any) -> EncodeOutput:
        """Encode a whole array over one stream, as ``InstaHideClient.encode``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if key is not None:
            if num_classes is not None or set(options) - {"output_dtype"}:
                raise ValueError("a stored key takes no InstaHide options (only output_dtype)")
            images, labels = check_batch(images, labels)
            config = key_config(key, **options)
            bounds = [(a, min(a + batch_size, len(images))) for a in range(0, len(images), batch_size)]
            sent = len(labels) > 0
        else:
            if labels is None:
                raise ValueError("labels are required to encode with InstaHide (only a stored key takes none)")
            images, labels = check_batch(images, labels)
            if num_classes is None:
                if len(labels) == 0:
                    raise ValueError("cannot infer num_classes from empty labels; pass num_classes")
                num_classes = int(labels.max()) + 1
            config = encode_config(num_classes=num_classes, **options)
            bounds, sent = batch_bounds(len(images), batch_size), True
        results = await self._stream(((images[a:b], labels[a:b] if sent else None) for a, b in bounds), config,
                                     max_in_flight=max_in_flight, timeout=timeout, metadata=metadata)
        if not results:
            return EncodeOutput(np.zeros(images.shape, np.float32), labels.copy())
        keys: KeyRecord | None = None
        if key is None and config.instahide.return_keys:
            keys = concatenate_keys([r.keys for r in results], [a for a, _ in bounds])
        mixed = np.concatenate([r.mixed_labels for r in results]) if sent else labels.copy()
        return EncodeOutput(np.concatenate([r.encoded for r in results]), mixed, keys,
                            any(r.seeded for r in results))

    async def defend(self, outputs: np.ndarray, defense: Any, *, labels: np.ndarray | None = None,
                     outputs_kind: str = "auto", seed: int | None = None, batch_size: int = 1024,
                     output_dtype: str = "float32", max_in_flight: int = 4, timeout: float | None = None,
                     metadata: Metadata | None = None) -> np.ndarray:
        """An output defense on a model's outputs, as ``InstaHideClient.defend``."""
        config = defense_config(defense, outputs_kind=outputs_kind, seed=seed, output_dtype=output_dtype)
        outputs, labels = check_batch(outputs, labels, model_outputs=True)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        bounds = [(a, min(a + batch_size, len(outputs))) for a in range(0, len(outputs), batch_size)]
        sent = len(labels) > 0
        results = await self._stream(((outputs[a:b], labels[a:b] if sent else None) for a, b in bounds), config,
                                     max_in_flight=max_in_flight, timeout=timeout, metadata=metadata)
        return np.concatenate([r.encoded for r in results]) if results else np.zeros(outputs.shape, np.float32)

    # -- audits -------------------------------------------------------------------------------------

    async def start_audit(self, images: np.ndarray | None = None, labels: np.ndarray | None = None, *,
                          chunk_images: int = 1024, timeout: float | None = None, metadata: Metadata | None = None,
                          **options: Any) -> Audit:
        """Start a reconstruction audit; the options are ``InstaHideClient.start_audit``'s."""
        upload = check_audit_inputs(images, labels, **options)
        requests = audit_requests(upload, chunk_images=chunk_images, max_message_bytes=self.max_message_bytes)
        return Audit.from_proto((await self._unary(self._audits.StartAudit, _aiter(requests), timeout,
                                                   metadata)).audit)

    async def start_membership_audit(self, outputs: np.ndarray | None = None, labels: np.ndarray | None = None,
                                     member: np.ndarray | None = None, *, chunk_examples: int = 1024,
                                     timeout: float | None = None, metadata: Metadata | None = None,
                                     outputs_kind: str = "auto", **options: Any) -> Audit:
        """Start a membership audit; the options are ``InstaHideClient.start_membership_audit``'s."""
        upload = check_membership_inputs(outputs, labels, member, outputs_kind_name=outputs_kind, **options)
        requests = membership_requests(upload, chunk_examples=chunk_examples,
                                       max_message_bytes=self.max_message_bytes)
        return Audit.from_proto((await self._unary(self._audits.StartAudit, _aiter(requests), timeout,
                                                   metadata)).audit)

    async def watch_audit(self, name_or_id: str, *, timeout: float | None = None,
                          metadata: Metadata | None = None) -> AsyncIterator[AuditEvent]:
        """Progress events of an audit from now on; ends after its final state."""
        call = self._audits.WatchAudit(audit_pb2.WatchAuditRequest(name=audit_name(name_or_id)), timeout=timeout,
                                       metadata=self._call_metadata(metadata))
        try:
            async for response in call:
                yield AuditEvent.from_proto(response)
        except grpc.RpcError as exc:
            raise InstaHideError.from_rpc_error(exc) from None

    async def wait_audit(self, name_or_id: str, *, progress: Callable[[AuditEvent], None] | None = None,
                         summary_only: bool = False, timeout: float | None = None,
                         metadata: Metadata | None = None) -> Audit:
        """Follow an audit until it ends, then read it."""
        async for event in self.watch_audit(name_or_id, timeout=timeout, metadata=metadata):
            if progress is not None:
                progress(event)
        return await self.get_audit(name_or_id, summary_only=summary_only, timeout=timeout, metadata=metadata)

    async def get_audit(self, name_or_id: str, *, summary_only: bool = False, timeout: float | None = None,
                        metadata: Metadata | None = None) -> Audit:
        """Read one audit (with its report once succeeded)."""
        request = audit_pb2.GetAuditRequest(name=audit_name(name_or_id), summary_only=summary_only)
        return Audit.from_proto((await self._unary(self._audits.GetAudit, request, timeout, metadata)).audit)

    async def list_audits(self, *, state: str | None = None, page_size: int = 50, timeout: float | None = None,
                          metadata: Metadata | None = None) -> AsyncIterator[Audit]:
        """Every audit (optionally in ``state``), newest first, a page at a time."""
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be an int in [1, 1000], got {page_size!r}")
        token = ""
        while True:
            request = audit_pb2.ListAuditsRequest(page_size=page_size, page_token=token,
                                                  state=state_value(state) if state else 0)
            response = await self._unary(self._audits.ListAudits, request, timeout, metadata)
            for audit in response.audits:
                yield Audit.from_proto(audit)
            token = response.next_page_token
            if not token:
                return

    async def cancel_audit(self, name_or_id: str, *, timeout: float | None = None,
                           metadata: Metadata | None = None) -> Audit:
        """Stop a queued or running audit."""
        request = audit_pb2.CancelAuditRequest(name=audit_name(name_or_id))
        return Audit.from_proto((await self._unary(self._audits.CancelAudit, request, timeout, metadata)).audit)

    async def delete_audit(self, name_or_id: str, *, timeout: float | None = None,
                           metadata: Metadata | None = None) -> None:
        """Delete a finished audit and its report."""
        await self._unary(self._audits.DeleteAudit, audit_pb2.DeleteAuditRequest(name=audit_name(name_or_id)),
                          timeout, metadata)

    # -- stored keys --------------------------------------------------------------------------------

    async def create_key(self, image_shape: Sequence[int], *, seed: int | None = None, display_name: str = "",
                         timeout: float | None = None, metadata: Metadata | None = None,
                         **params: Any) -> StoredKey:
        """Create a DisguisedNets key; ``params`` are ``disguised_nets_params``' options."""
        shape = [int(d) for d in image_shape]
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image_shape must be (H, W, C) of positive sides, got {list(image_shape)}")
        request = keys_pb2.CreateKeyRequest(disguised_nets=disguised_nets_params(**params), image_shape=shape,
                                            display_name=display_name)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**64:
                raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
            request.seed = int(seed)
        return StoredKey.from_proto((await self._unary(self._keys.CreateKey, request, timeout, metadata)).key)

    async def get_key(self, name_or_id: str, *, timeout: float | None = None,
                      metadata: Metadata | None = None) -> StoredKey:
        """One stored key's description."""
        request = keys_pb2.GetKeyRequest(name=key_name(name_or_id))
        return StoredKey.from_proto((await self._unary(self._keys.GetKey, request, timeout, metadata)).key)

    async def delete_key(self, name_or_id: str, *, timeout: float | None = None,
                         metadata: Metadata | None = None) -> None:
        """Delete a stored key from this server."""
        await self._unary(self._keys.DeleteKey, keys_pb2.DeleteKeyRequest(name=key_name(name_or_id)), timeout,
                          metadata)


async def _aiter(requests: Iterable[Any]) -> AsyncIterator[Any]:
    for request in requests:
        yield request
