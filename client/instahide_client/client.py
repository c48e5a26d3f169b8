"""The synchronous client: ``InstaHideClient``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from instahide_client import _health
from instahide_client._audit_requests import audit_requests, check_audit_inputs
from instahide_client._membership_requests import check_membership_inputs, membership_requests
from instahide_client._requests import batch_bounds, check_batch, defense_config, encode_config, key_config
from instahide_client._stream import EncodeStream, OnError
from instahide_client._types import EncodeBatch, EncodeOutput, KeyRecord, concatenate_keys
from instahide_client.audits import Audit, AuditEvent, audit_name, state_value
from instahide_client.errors import InstaHideError
from instahide_client.instahide.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    info_pb2,
    info_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    tensor_pb2,
    transform_pb2,
    transform_pb2_grpc,
)
from instahide_client.keys import StoredKey, disguised_nets_params, key_name

DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20

Metadata = Sequence[tuple[str, str | bytes]]


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """The channel options the client uses.

    gRPC's default 4 MiB receive limit breaks at ~340 float32 32×32×3 images a message, so both
    directions are raised explicitly (the server sets its own limit the same way). Keepalive pings
    every 5 minutes during calls notice a dead peer on a long stream; 5 minutes is the server-side
    default minimum ping interval, so the pings never earn a GOAWAY ("too_many_pings").
    """
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 300_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.primary_user_agent", "instahide-client"),
    ]


class InstaHideClient:
    """Client for the instahide service.

    Args:
        target: "host:port" of the service.
        token: bearer token sent as ``authorization: Bearer <token>`` on every call.
        max_message_bytes: largest message sent or received (default 64 MiB); keep it at least as
            large as one batch (N·H·W·C·4 bytes for float32 output).
        root_certificates: PEM root certificates the server's certificate must chain to; given, the
            channel uses TLS with them.
        tls: use TLS with the system's root certificates (implied by any of the TLS arguments).
        certificate_chain: PEM client certificate chain, for a server that requires mutual TLS;
            needs ``private_key``.
        private_key: PEM private key of ``certificate_chain``.
        server_name: the name the server's certificate must carry when it differs from the target's
            host (e.g. dialling an IP address or a port-forward); TLS only.
        options: extra gRPC channel options; they override the defaults.

    Examples:
        >>> with InstaHideClient("127.0.0.1:50051") as client:  # doctest: +SKIP
        ...     out = client.encode(images, labels)
    """

    def __init__(self, target: str, *, token: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 root_certificates: bytes | None = None, tls: bool = False,
                 certificate_chain: bytes | None = None, private_key: bytes | None = None,
                 server_name: str | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("certificate_chain and private_key go together (a client certificate and its key)")
        tls = tls or root_certificates is not None or certificate_chain is not None
        if server_name is not None and not tls:
            raise ValueError("server_name applies to TLS only; give root_certificates or tls=True")
        self.target = target
        self.max_message_bytes = max_message_bytes
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        merged = dict(channel_options(max_message_bytes))
        if server_name is not None:
            merged["grpc.ssl_target_name_override"] = server_name
        merged.update(dict(options))
        if tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates, private_key=private_key,
                                                       certificate_chain=certificate_chain)
            self._channel = grpc.secure_channel(target, credentials, options=list(merged.items()))
        else:
            self._channel = grpc.insecure_channel(target, options=list(merged.items()))
        self._transform = transform_pb2_grpc.TransformServiceStub(self._channel)
        self._audits = audit_pb2_grpc.AuditServiceStub(self._channel)
        self._keys = keys_pb2_grpc.KeyServiceStub(self._channel)
        self._info = info_pb2_grpc.InfoServiceStub(self._channel)
        self._health_check = self._channel.unary_unary(_health.CHECK_METHOD)  # raw bytes in and out

    def close(self) -> None:
        """Close the channel; calls in progress are cancelled."""
        self._channel.close()

    def __enter__(self) -> InstaHideClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"InstaHideClient({self.target!r})"

    def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None,
               metadata: Metadata | None) -> Any:
        """One unary (or client-streaming) call; a failure comes back as ``InstaHideError``."""
        try:
            return method(request, timeout=timeout, metadata=self._call_metadata(metadata))
        except grpc.RpcError as exc:
            raise InstaHideError.from_rpc_error(exc) from None

    def _call_metadata(self, metadata: Metadata | None) -> list[tuple[str, str | bytes]]:
        return [*self._metadata, *(metadata or ())]

    def server_info(self, *, timeout: float | None = 10.0, metadata: Metadata | None = None) -> dict[str, Any]:
        """What the server is and runs (``InfoService.GetServerInfo``) as a plain dict: version, device, families
        with their parameters' defaults and ranges (for Encode and for audits), limits, the pools built so far,
        audit kinds and their attacks, keys, transport and authentication (never a secret).

        Raises:
            InstaHideError: the call failed.
        """
        response = self._unary(self._info.GetServerInfo, info_pb2.GetServerInfoRequest(), timeout, metadata)
        return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    def health(self, service: str = "", *, timeout: float | None = 10.0,
               metadata: Metadata | None = None) -> str:
        """The serving status from the standard ``grpc.health.v1.Health/Check``.

        Args:
            service: the service to ask about; "" (default) is the server as a whole.

        Returns:
            "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN".

        Raises:
            InstaHideError: the call failed (e.g. UNAVAILABLE when nothing listens at the target,
                NOT_FOUND when the server does not know ``service``).
        """
        try:
            raw = self._health_check(_health.encode_request(service), timeout=timeout,
                                     metadata=self._call_metadata(metadata))
        except grpc.RpcError as exc:
            error = InstaHideError.from_rpc_error(exc)
            if error.code is grpc.StatusCode.NOT_FOUND and not exc.details():  # the standard servicer's
                error = InstaHideError(error.code, f"the server has no health status for service {service!r}")
            raise error from None
        try:
            return _health.status_name(_health.decode_response(raw))
        except ValueError as exc:
            raise InstaHideError(grpc.StatusCode.INTERNAL, f"malformed health response: {exc}") from None

    def encode_stream(
        self,
        batches: Iterable[tuple[np.ndarray, np.ndarray]] | Iterable[EncodeBatch],
        *,
        num_classes: int | None = None,
        config: transform_pb2.EncodeConfig | None = None,
        key: str | None = None,
        max_in_flight: int = 4,
        on_error: OnError = "raise",
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **options: Any,
    ) -> EncodeStream:
        """Encode a stream of batches over one call; results come back in order.

        Args:
            batches: ``(images, labels)`` pairs or ``EncodeBatch`` items: images (N, H, W, C)
                uint8 (or float32/float16 in [-1, 1]), labels (N,) integers. Consumed lazily.
            num_classes: width of the mixed labels; required unless ``config`` or ``key`` is given.
            config: a ready ``EncodeConfig`` (from :func:`encode_config`) instead of keyword options.
            key: disguise with this stored DisguisedNets key ("keys/ID", :meth:`create_key`) instead of
                InstaHide; labels are then optional and pass through; the only option is ``output_dtype``.
            max_in_flight: most requests sent and not yet answered.
            on_error: "raise" raises the first per-batch error as InstaHideError and ends the
                call; "yield" yields an ``EncodedBatch`` with ``.error`` set and goes on.
            timeout: deadline in seconds for the whole stream.
            metadata: extra call metadata.
            **options: the other keyword options of :func:`encode_config` (mode, k, ...).

        Returns:
            An iterator of ``EncodedBatch`` that can be cancelled (see :class:`EncodeStream`).

        Raises:
            ValueError: bad options or a malformed batch (raised when iteration reaches it).
            InstaHideError: the call failed, or a batch failed with ``on_error="raise"``.
        """
        if key is not None:
            if config is not None or num_classes is not None or set(options) - {"output_dtype"}:
                raise ValueError("a stored key takes no InstaHide options or config (only output_dtype)")
            config = key_config(key, **options)
        elif config is None:
            if num_classes is None:
                raise ValueError("num_classes is required (or pass a ready config)")
            config = encode_config(num_classes=num_classes, **options)
        elif num_classes is not None or options:
            raise ValueError("pass either config or keyword options, not both")
        if on_error not in ("raise", "yield"):
            raise ValueError(f"unknown on_error {on_error!r}; expected 'raise' or 'yield'")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        md = self._call_metadata(metadata)

        def start_call(requests: Iterator[transform_pb2.EncodeRequest]) -> Any:
            return self._transform.Encode(requests, timeout=timeout, metadata=md)

        return EncodeStream(start_call, batches, config, max_in_flight=max_in_flight, on_error=on_error)

    def encode(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        key: str | None = None,
        batch_size: int = 1024,
        num_classes: int | None = None,
        progress: Callable[[int], None] | None = None,
        max_in_flight: int = 4,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **options: Any,
    ) -> EncodeOutput:
        """Encode a whole array, batch by batch, over one stream.

        Args:
            images: (N, H, W, C) uint8 (or float32/float16 in [-1, 1]).
            labels: (N,) integer labels (optional with ``key``).
            key: disguise with this stored DisguisedNets key ("keys/ID") instead of InstaHide: the same image
                gives the same output every time (without noise); labels pass through; the only option is
                ``output_dtype`` (AES keys answer uint8).
            batch_size: images per request (keep N·H·W·C·4 bytes under ``max_message_bytes``); a
                last batch of one image joins the one before (the service mixes at least two).
            num_classes: label width; inferred as ``labels.max() + 1`` over the whole array.
            progress: called with the image count of each finished batch (e.g. ``tqdm.update``).
            **options: keyword options of :func:`encode_config`: mode, k, private_per_mix,
                max_coefficient, min_private_mass, sign_flip, output_dtype, return_keys, seed.

        Returns:
            ``EncodeOutput``: encoded (N, H, W, C), mixed_labels (N, num_classes) and, with
            ``return_keys=True``, one KeyRecord whose private indices index ``images``. With ``key``,
            ``mixed_labels`` holds the labels as given (empty without).

        Raises:
            ValueError: malformed inputs or options.
            InstaHideError: the call or a batch failed.
        """
        if key is not None:
            return self._encode_with_key(images, labels, key, batch_size=batch_size, progress=progress,
                                         max_in_flight=max_in_flight, timeout=timeout, metadata=metadata, **options)
        if labels is None:
            raise ValueError("labels are required to encode with InstaHide (only a stored key takes none)")
        images, labels = check_batch(images, labels)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_classes is None:
            if len(labels) == 0:
                raise ValueError("cannot infer num_classes from empty labels; pass num_classes")
            num_classes = int(labels.max()) + 1
        config = encode_config(num_classes=num_classes, **options)
        if len(images) == 0:
            dtype = np.float16 if config.output_dtype == tensor_pb2.DATA_TYPE_FLOAT16 else np.float32
            return EncodeOutput(np.zeros(images.shape, dtype), np.zeros((0, num_classes), np.float32))
        bounds = batch_bounds(len(images), batch_size)
        batches = ((images[start:stop], labels[start:stop]) for start, stop in bounds)
        encoded, mixed, keys = [], [], []
        seeded = False
        with self.encode_stream(batches, config=config, max_in_flight=max_in_flight,
                                timeout=timeout, metadata=metadata) as stream:
            for batch in stream:
                encoded.append(batch.encoded)
                mixed.append(batch.mixed_labels)
                seeded = seeded or batch.seeded
                if batch.keys is not None:
                    keys.append(batch.keys)
                if progress is not None:
                    progress(len(batch.encoded))
        if len(encoded) != len(bounds):  # cancelled by another thread
            raise InstaHideError(grpc.StatusCode.CANCELLED, "the encode stream ended early")
        key_record: KeyRecord | None = None
        if config.instahide.return_keys:
            if len(keys) != len(encoded):
                raise InstaHideError(grpc.StatusCode.INTERNAL, "the service returned no keys")
            key_record = concatenate_keys(keys, [start for start, _ in bounds])
        return EncodeOutput(np.concatenate(encoded), np.concatenate(mixed), key_record, seeded)

    def _encode_with_key(self, images: np.ndarray, labels: np.ndarray | None, key: str, *, batch_size: int,
                         progress: Callable[[int], None] | None, max_in_flight: int, timeout: float | None,
                         metadata: Metadata | None, **options: Any) -> EncodeOutput:
        images, labels = check_batch(images, labels)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        sent_labels = len(labels) > 0
        bounds = [(start, min(start + batch_size, len(images))) for start in range(0, len(images), batch_size)]
        batches = ((images[a:b], labels[a:b] if sent_labels else None) for a, b in bounds)
        encoded, passed, seeded = [], [], False
        with self.encode_stream(batches, key=key, max_in_flight=max_in_flight, timeout=timeout,
                                metadata=metadata, **options) as stream:
            for batch in stream:
                encoded.append(batch.encoded)
                passed.append(batch.mixed_labels)
                seeded = seeded or batch.seeded
                if progress is not None:
                    progress(len(batch.encoded))
        if len(encoded) != len(bounds):  # cancelled by another thread
            raise InstaHideError(grpc.StatusCode.CANCELLED, "the encode stream ended early")
        if not encoded:
            return EncodeOutput(np.zeros(images.shape, np.float32), labels.copy())
        return EncodeOutput(np.concatenate(encoded), np.concatenate(passed) if sent_labels else labels.copy(),
                            None, seeded)

    # -- output defenses ---------------------------------------------------------------------------

    def defend(self, outputs: np.ndarray, defense: Any, *, labels: np.ndarray | None = None,
               outputs_kind: str = "auto", seed: int | None = None, batch_size: int = 1024,
               output_dtype: str = "float32", max_in_flight: int = 4, timeout: float | None = None,
               metadata: Metadata | None = None) -> np.ndarray:
        """Apply an output defense to a model's outputs before releasing them, over one Encode stream.

        Args:
            outputs: (N, C) or (N, C, h, w) float32/float16 logits or probabilities, classes on axis 1.
            defense: "argmax", "gauss:SIGMA", "topk:K", "round:DECIMALS", "temperature:T" (or an
                ``OutputDefense`` message): what a membership audit's ``defenses`` audit.
            labels: optional (N,) integers; they pass through.
            outputs_kind: "auto" (probabilities when every row is non-negative and sums to 1), "logits" or
                "probabilities".
            seed: seeds the Gaussian noise (reproducible); None: fresh noise from the server's CSPRNG.

        Returns:
            The defended probabilities, same shape, ``output_dtype``.

        Raises:
            ValueError: malformed outputs or options, found before anything is sent.
            InstaHideError: the call or a batch failed (e.g. INVALID_ARGUMENT for top-k past the classes).
        """
        config = defense_config(defense, outputs_kind=outputs_kind, seed=seed, output_dtype=output_dtype)
        outputs, labels = check_batch(outputs, labels, model_outputs=True)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        bounds = [(start, min(start + batch_size, len(outputs))) for start in range(0, len(outputs), batch_size)]
        sent_labels = len(labels) > 0
        batches = ((outputs[a:b], labels[a:b] if sent_labels else None) for a, b in bounds)
        defended = []
        with self.encode_stream(batches, config=config, max_in_flight=max_in_flight, timeout=timeout,
                                metadata=metadata) as stream:
            defended.extend(batch.encoded for batch in stream)
        if len(defended) != len(bounds):  # cancelled by another thread
            raise InstaHideError(grpc.StatusCode.CANCELLED, "the defense stream ended early")
        return np.concatenate(defended) if defended else np.zeros(outputs.shape, np.float32)

    # -- stored keys ------------------------------------------------------------------------------

    def create_key(self, image_shape: Sequence[int], *, method: str = "rmt", block: int | Sequence[int] = 4,
                   permute: bool = True, matrix: str = "orthogonal", noise: float = 0.0,
                   matrix_per_channel: bool = False, aes_key_per_block: bool = False, scale: int = 1,
                   salt_pepper: float = 0.0, seed: int | None = None, display_name: str = "",
                   timeout: float | None = None, metadata: Metadata | None = None) -> StoredKey:
        """Create a DisguisedNets key in the service's key store for images of ``image_shape`` (H, W, C).

        The service draws its material from the CSPRNG (from ``seed`` only when given: the key is then flagged
        seeded) and never returns it; encode with ``encode(images, key=stored.name)``. The other arguments are
        those of :func:`instahide_client.keys.disguised_nets_params`.

        Raises:
            ValueError, TypeError: bad arguments, found before the call.
            InstaHideError: the call failed (INVALID_ARGUMENT naming the parameter the service refuses, e.g. a
                block that does not divide the image).
        """
        shape = [int(d) for d in image_shape]
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image_shape must be (H, W, C) of positive sides, got {list(image_shape)}")
        request = keys_pb2.CreateKeyRequest(
            disguised_nets=disguised_nets_params(
                method=method, block=block, permute=permute, matrix=matrix, noise=noise,
                matrix_per_channel=matrix_per_channel, aes_key_per_block=aes_key_per_block, scale=scale,
                salt_pepper=salt_pepper),
            image_shape=shape, display_name=display_name)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**64:
                raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
            request.seed = int(seed)
        return StoredKey.from_proto(self._unary(self._keys.CreateKey, request, timeout, metadata).key)

    def get_key(self, name_or_id: str, *, timeout: float | None = None,
                metadata: Metadata | None = None) -> StoredKey:
        """One stored key's description (NOT_FOUND for a key that is not the caller's)."""
        request = keys_pb2.GetKeyRequest(name=key_name(name_or_id))
        return StoredKey.from_proto(self._unary(self._keys.GetKey, request, timeout, metadata).key)

    def list_keys(self, *, page_size: int = 50, timeout: float | None = None,
                  metadata: Metadata | None = None) -> Iterator[StoredKey]:
        """The caller's keys, newest first, fetching pages lazily (``timeout`` applies to each page)."""
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be an int in [1, 1000], got {page_size!r}")

        def pages() -> Iterator[StoredKey]:
            token = ""
            while True:
                response = self._unary(self._keys.ListKeys, keys_pb2.ListKeysRequest(
                    page_size=page_size, page_token=token), timeout, metadata)
                yield from (StoredKey.from_proto(k) for k in response.keys)
                token = response.next_page_token
                if not token:
                    return

        return pages()

    def delete_key(self, name_or_id: str, *, timeout: float | None = None, metadata: Metadata | None = None) -> None:
        """Delete a stored key from this server: encoding with it answers NOT_FOUND from then on."""
        self._unary(self._keys.DeleteKey, keys_pb2.DeleteKeyRequest(name=key_name(name_or_id)), timeout, metadata)

    def export_key(self, name_or_id: str, *, timeout: float | None = None,
                   metadata: Metadata | None = None) -> tuple[StoredKey, bytes]:
        """A stored key and its material sealed under the server's key-encryption key: opaque bytes that a replica
        with the same key-encryption key imports (:meth:`import_key`) to disguise alike."""
        response = self._unary(self._keys.ExportKey, keys_pb2.ExportKeyRequest(name=key_name(name_or_id)),
                               timeout, metadata)
        return StoredKey.from_proto(response.key), response.wrapped

    def import_key(self, wrapped: bytes, *, timeout: float | None = None,
                   metadata: Metadata | None = None) -> StoredKey:
        """Import an exported key under its original name (importing it again changes nothing)."""
        if not isinstance(wrapped, bytes | bytearray):
            raise TypeError(f"wrapped must be bytes, got {type(wrapped).__name__}")
        response = self._unary(self._keys.ImportKey, keys_pb2.ImportKeyRequest(wrapped=bytes(wrapped)), timeout,
                               metadata)
        return StoredKey.from_proto(response.key)

    # -- leakage audits ---------------------------------------------------------------------------

    def start_audit(
        self,
        images: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        *,
        mode: str = "cross",
        k: int | None = None,
        encodings_per_image: int | None = None,
        num_classes: int | None = None,
        seed: int | None = None,
        attacks: Sequence[str] = (),
        extra_attacks: Sequence[str] = (),
        skipped_attacks: Sequence[str] = (),
        dataset: str | None = None,
        encodings: np.ndarray | None = None,
        encoding_labels: np.ndarray | None = None,
        display_name: str = "",
        disguised_nets: Any = None,
        known_pairs: int | None = None,
        skip_curves: bool = False,
        chunk_images: int = 1024,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Audit:
        """Start a reconstruction audit of InstaHide (or, with ``disguised_nets``, of DisguisedNets): the service
        encodes, attacks and scores; returns the queued audit.

        Give exactly one source:

        - ``images`` (N, H, W, C) uint8 (or float in [-1, 1]) and ``labels`` (N,): the private
          images; the service encodes each ``encodings_per_image`` times with the configuration
          under audit (``mode``, ``k``), as a deployment would, then attacks the encodings.
        - ``encodings`` (E, H, W, C) float and ``encoding_labels`` (E, classes), made elsewhere,
          with their originals as ``images`` (no ``labels``).
        - ``dataset``: a server-side .npz (``images``, ``labels``) under the server's data root.

        Args:
            mode: "cross" (the attacker supports cross-dataset mixing; "inside" is refused by
                today's service).
            k: images per mix (None: the service's default, 6).
            encodings_per_image: T, encodings of each private image (None: the service's default,
                50; for precomputed encodings, E / N).
            num_classes: label width (default: max label + 1, inferred by the service).
            seed: seed of the simulated deployment's keys (reproducible audit); None: fresh keys.
            attacks: the attacks to run, by the service's registry names (e.g. ``["ciphertext_only",
                "pool_aware"]``, each with what it starts from); empty: the service's defaults (today the
                ciphertext-only and pool-aware attacks and the key-aware bound; for precomputed encodings,
                whose keys and pool the service does not know, the ciphertext-only attack).
            extra_attacks: attacks to run beside the defaults, e.g. ``["photo_aware"]`` (the attacker
                who holds the photos the service's pool was cut from, but not the pool).
            skipped_attacks: defaults to leave out, e.g. ``["key_aware"]``.
            display_name: a name for people.
            disguised_nets: audit DisguisedNets instead: the key parameters (a ``StoredKey`` from ``get_key``,
                a dict of ``disguised_nets_params`` options, or that message); the service disguises every
                image once under a fresh key of them. Labels are then optional (they score the papers' attack
                success) and InstaHide's options must stay unset.
            known_pairs: DisguisedNets: images the Level-2 attacker holds with their disguises (None: 4; 0: no
                such attacker).
            skip_curves: DisguisedNets: leave out the curves of SSIM against pairs held and noise.
            chunk_images: most images a message; fewer when needed to stay below ``max_message_bytes``.

        Returns:
            The accepted ``Audit`` (state "queued").

        Raises:
            ValueError, TypeError: bad inputs or options, found before anything is sent.
            InstaHideError: the call failed (e.g. INVALID_ARGUMENT, NOT_FOUND for an unknown dataset).

        Examples:
            >>> audit = client.start_audit(images, labels, k=6, encodings_per_image=50)  # doctest: +SKIP
            >>> audit = client.wait_audit(audit.name)                                   # doctest: +SKIP
            >>> audit.report.results["ciphertext_only"].scores.max_ssim                 # doctest: +SKIP
        """
        upload = check_audit_inputs(
            images, labels, dataset=dataset, encodings=encodings, encoding_labels=encoding_labels,
            mode=mode, k=k, encodings_per_image=encodings_per_image, num_classes=num_classes, seed=seed,
            attacks=attacks, extra_attacks=extra_attacks, skipped_attacks=skipped_attacks,
            display_name=display_name, disguised_nets=disguised_nets, known_pairs=known_pairs,
            skip_curves=skip_curves)
        requests = audit_requests(upload, chunk_images=chunk_images, max_message_bytes=self.max_message_bytes)
        return Audit.from_proto(self._unary(self._audits.StartAudit, requests, timeout, metadata).audit)

    def start_membership_audit(
        self,
        outputs: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        member: np.ndarray | None = None,
        *,
        reference_outputs: np.ndarray | None = None,
        reference_member: np.ndarray | None = None,
        defenses: Sequence[Any] = (),
        outputs_kind: str = "auto",
        ignore_index: int | None = None,
        seed: int | None = None,
        attacks: Sequence[str] = (),
        extra_attacks: Sequence[str] = (),
        skipped_attacks: Sequence[str] = (),
        dataset: str | None = None,
        display_name: str = "",
        chunk_examples: int = 1024,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Audit:
        """Start a membership audit: what a model's outputs reveal about which examples it was trained on.

        Run the model yourself and give what it would release on a labelled audit set (or name a server-side
        ``dataset``: an .npz with ``outputs`` or ``logits``, ``labels``, ``member`` and optionally
        ``reference_outputs``, ``reference_member``):

        Args:
            outputs: (N, C) logits or probabilities, or (N, C, h, w) segmentation posteriors; float32/float16.
            labels: (N,) classes, or (N, h, w) label maps (``ignore_index`` pixels ignored; default 255).
            member: (N,) booleans: the model was trained on the example.
            reference_outputs, reference_member: K reference models' outputs on the same examples
                (K, N, C[, h, w]) and their (K, N) memberships: what LiRA and RMIA need.
            defenses: output defenses to audit beside the raw outputs, each with its utility cost: "argmax",
                "gauss:SIGMA", "topk:K", "round:DECIMALS", "temperature:T" (as :meth:`defend` serves them).
            outputs_kind: "auto", "logits" or "probabilities".
            seed: seeds the attacks' folds and the defenses' noise (reproducible); None: the CSPRNG.
            attacks, extra_attacks, skipped_attacks: by the service's registry names (loss, lira_online, ...).

        Returns:
            The accepted ``Audit`` (queued); ``wait_audit`` follows it.

        Raises:
            ValueError, TypeError: bad inputs or options, found before anything is sent.
            InstaHideError: the call failed (e.g. INVALID_ARGUMENT naming the field).
        """
        upload = check_membership_inputs(
            outputs, labels, member, reference_outputs=reference_outputs, reference_member=reference_member,
            dataset=dataset, defenses=defenses, outputs_kind_name=outputs_kind, ignore_index=ignore_index,
            seed=seed, attacks=attacks, extra_attacks=extra_attacks, skipped_attacks=skipped_attacks,
            display_name=display_name)
        requests = membership_requests(upload, chunk_examples=chunk_examples,
                                       max_message_bytes=self.max_message_bytes)
        return Audit.from_proto(self._unary(self._audits.StartAudit, requests, timeout, metadata).audit)

    def watch_audit(self, name_or_id: str, *, timeout: float | None = None,
                    metadata: Metadata | None = None) -> Iterator[AuditEvent]:
        """Progress events of an audit from now on; the iterator ends after its final state.

        Leaving the loop early (``break``) cancels the call; the audit itself goes on.

        Raises:
            InstaHideError: the call failed (NOT_FOUND for an unknown audit), raised while iterating.
        """
        call = self._audits.WatchAudit(audit_pb2.WatchAuditRequest(name=audit_name(name_or_id)),
                                       timeout=timeout, metadata=self._call_metadata(metadata))
        return _watch_events(call)

    def wait_audit(self, name_or_id: str, *, progress: Callable[[AuditEvent], None] | None = None,
                   summary_only: bool = False, timeout: float | None = None,
                   metadata: Metadata | None = None) -> Audit:
        """Follow an audit until it ends (calling ``progress`` with each event), then read it.

        Returns:
            The ended audit, with its report when it succeeded.
        """
        for event in self.watch_audit(name_or_id, timeout=timeout, metadata=metadata):
            if progress is not None:
                progress(event)
        return self.get_audit(name_or_id, summary_only=summary_only, timeout=timeout, metadata=metadata)

    def get_audit(self, name_or_id: str, *, summary_only: bool = False, timeout: float | None = None,
                  metadata: Metadata | None = None) -> Audit:
        """Read one audit (with its report once succeeded; ``summary_only`` leaves out the recovered
        images and the grid)."""
        request = audit_pb2.GetAuditRequest(name=audit_name(name_or_id), summary_only=summary_only)
        return Audit.from_proto(self._unary(self._audits.GetAudit, request, timeout, metadata).audit)

    def list_audits_page(self, *, state: str | None = None, page_size: int = 50, page_token: str = "",
                         timeout: float | None = None, metadata: Metadata | None = None
                         ) -> tuple[list[Audit], str]:
        """One page of audits, newest first (summaries), and the next page's token ("" on the last)."""
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be an int in [1, 1000], got {page_size!r}")
        request = audit_pb2.ListAuditsRequest(page_size=page_size, page_token=page_token,
                                              state=state_value(state) if state else 0)
        response = self._unary(self._audits.ListAudits, request, timeout, metadata)
        return [Audit.from_proto(a) for a in response.audits], response.next_page_token

    def list_audits(self, *, state: str | None = None, page_size: int = 50, timeout: float | None = None,
                    metadata: Metadata | None = None) -> Iterator[Audit]:
        """Every audit (optionally only those in ``state``), newest first, fetching pages lazily.

        ``timeout`` applies to each page's call.
        """
        if state:
            state_value(state)  # fail now, not at the first next()
        first = self.list_audits_page(state=state, page_size=page_size, timeout=timeout, metadata=metadata)

        def pages() -> Iterator[Audit]:
            audits, token = first
            yield from audits
            while token:
                audits, token = self.list_audits_page(state=state, page_size=page_size, page_token=token,
                                                      timeout=timeout, metadata=metadata)
                yield from audits

        return pages()

    def cancel_audit(self, name_or_id: str, *, timeout: float | None = None,
                     metadata: Metadata | None = None) -> Audit:
        """Stop a queued or running audit; returns it (cancelled, or its state if it had already ended)."""
        request = audit_pb2.CancelAuditRequest(name=audit_name(name_or_id))
        return Audit.from_proto(self._unary(self._audits.CancelAudit, request, timeout, metadata).audit)

    def delete_audit(self, name_or_id: str, *, timeout: float | None = None,
                     metadata: Metadata | None = None) -> None:
        """Delete a finished audit and its report."""
        request = audit_pb2.DeleteAuditRequest(name=audit_name(name_or_id))
        self._unary(self._audits.DeleteAudit, request, timeout, metadata)

    def write_audit_report(self, name_or_id: str, report_dir: str | Path, *, timeout: float | None = None,
                           metadata: Metadata | None = None) -> Audit:
        """Read a succeeded audit in full and write its report folder (see :meth:`AuditReport.write`)."""
        audit = self.get_audit(name_or_id, timeout=timeout, metadata=metadata)
        audit.write_report(report_dir)
        return audit


def _watch_events(call: Any) -> Iterator[AuditEvent]:
    try:
        for response in call:
            yield AuditEvent.from_proto(response)
    except grpc.RpcError as exc:
        raise InstaHideError.from_rpc_error(exc) from None
    finally:
        call.cancel()  # a no-op once the stream has ended; stops it when the caller leaves early
