"""``instahide.v1.KeyService``: keys as ``keys/{key}`` resources of the calling principal, over the key store.

Every answer describes a key (``Key``: parameters, shape, fingerprint, times) and never holds its material; an
export holds it sealed under the KEK only. Errors are raised as domain errors; the error interceptor maps them.
Creating a key (one QR decomposition per block position) and reading the store run off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from instahide_client.instahide.v1 import keys_pb2, keys_pb2_grpc

from instahide_server.errors import InvalidArgument
from instahide_server.interceptors.auth import Principals
from instahide_server.keys.material import KeyRecord
from instahide_server.keys.store import KeyStore
from instahide_server.metrics import ServerMetrics
from instahide_server.transform.disguisednets import param_fields, params_from_message, params_message

SERVICE_NAME = keys_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_T = TypeVar("_T")


def key_message(record: KeyRecord) -> keys_pb2.Key:
    """A key's description: everything but its material."""
    create_time = Timestamp()
    create_time.FromNanoseconds(record.create_time_ns)
    return keys_pb2.Key(name=record.name, family=record.family, disguised_nets=params_message(record.params),
                        image_shape=list(record.image_shape), create_time=create_time,
                        fingerprint=record.fingerprint, seeded=record.seeded, display_name=record.display_name)


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    """Create, read, list, delete, export and import the caller's keys."""

    def __init__(self, store: KeyStore, principals: Principals, metrics: ServerMetrics | None = None) -> None:
        self._store = store
        self._principals = principals
        self._metrics = metrics

    async def _run(self, call: Callable[..., _T], *args: object, **kwargs: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(call, *args, **kwargs))

    def _count(self) -> None:
        if self._metrics is not None:
            self._metrics.set_keys_stored(self._store.counts())

    async def CreateKey(self, request: keys_pb2.CreateKeyRequest,
                        context: grpc.aio.ServicerContext) -> keys_pb2.CreateKeyResponse:
        owner = self._principals.of(context)
        if request.WhichOneof("params") is None:
            raise InvalidArgument("params: required: the family's parameters, e.g. disguised_nets {}", "params")
        if len(request.image_shape) != 3 or not all(request.image_shape):
            raise InvalidArgument(f"image_shape: expected (H, W, C) of positive sides, got "
                                  f"{list(request.image_shape)}", "image_shape")
        params = params_from_message(request.disguised_nets, field="disguised_nets")
        seed = request.seed if request.HasField("seed") else None
        with param_fields("disguised_nets"):
            record = await self._run(self._store.create, owner, params, tuple(request.image_shape), seed=seed,
                                     display_name=request.display_name)
        self._count()
        return keys_pb2.CreateKeyResponse(key=key_message(record))

    async def GetKey(self, request: keys_pb2.GetKeyRequest,
                     context: grpc.aio.ServicerContext) -> keys_pb2.GetKeyResponse:
        record = await self._run(self._store.get, request.name, self._principals.of(context))
        return keys_pb2.GetKeyResponse(key=key_message(record))

    async def ListKeys(self, request: keys_pb2.ListKeysRequest,
                       context: grpc.aio.ServicerContext) -> keys_pb2.ListKeysResponse:
        if request.page_size < 0:
            raise InvalidArgument(f"page_size: must not be negative, got {request.page_size}", "page_size")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        records, token = await self._run(self._store.list, self._principals.of(context), page_size=size,
                                         page_token=request.page_token)
        return keys_pb2.ListKeysResponse(keys=[key_message(r) for r in records], next_page_token=token)

    async def DeleteKey(self, request: keys_pb2.DeleteKeyRequest,
                        context: grpc.aio.ServicerContext) -> keys_pb2.DeleteKeyResponse:
        await self._run(self._store.delete, request.name, self._principals.of(context))
        self._count()
        return keys_pb2.DeleteKeyResponse()

    async def ExportKey(self, request: keys_pb2.ExportKeyRequest,
                        context: grpc.aio.ServicerContext) -> keys_pb2.ExportKeyResponse:
        record, wrapped = await self._run(self._store.export, request.name, self._principals.of(context))
        return keys_pb2.ExportKeyResponse(key=key_message(record), wrapped=wrapped)

    async def ImportKey(self, request: keys_pb2.ImportKeyRequest,
                        context: grpc.aio.ServicerContext) -> keys_pb2.ImportKeyResponse:
        record = await self._run(self._store.import_, request.wrapped, self._principals.of(context))
        self._count()
        return keys_pb2.ImportKeyResponse(key=key_message(record))


def add_to_server(servicer: KeyServicer, server: grpc.aio.Server) -> None:
    keys_pb2_grpc.add_KeyServiceServicer_to_server(servicer, server)
