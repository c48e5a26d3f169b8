"""``instahide.v1.AuditService``: checks each request and hands it to the job runner (jobs.py).

StartAudit reads the spec (first message), then the data chunks (audit_inputs.Upload checks each
as it arrives), or reads the named server-side dataset; it makes sure a public pool exists for the
images' shape (cross mode) before queueing, so a shape the pool cannot serve is refused at once
instead of failing later. Errors are raised as domain errors; the error interceptor maps them.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import AsyncIterator

import grpc
from instahide_client.instahide.v1 import audit_pb2, audit_pb2_grpc

from instahide_server.audit_inputs import Upload, check_spec, load_dataset
from instahide_server.errors import FailedPrecondition, InvalidArgument
from instahide_server.jobs import AuditJobs
from instahide_server.pools import PoolRegistry

logger = logging.getLogger(__name__)

SERVICE_NAME = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Validates and delegates to ``AuditJobs``."""

    def __init__(self, jobs: AuditJobs, pools: PoolRegistry, *, data_root: pathlib.Path | None,
                 max_images: int) -> None:
        self._jobs = jobs
        self._pools = pools
        self._data_root = data_root
        self._max_images = max_images

    async def StartAudit(self, request_iterator: AsyncIterator[audit_pb2.StartAuditRequest],
                         context: grpc.aio.ServicerContext) -> audit_pb2.StartAuditResponse:
        self._jobs.check_available()  # refuse before reading an upload that could not be audited
        iterator = aiter(request_iterator)
        first = await anext(iterator, None)
        if first is None or not first.HasField("spec"):
            raise InvalidArgument("spec: the first message of StartAudit must carry the spec", "spec")
        params = check_spec(first.spec)
        if params.photo_aware and not self._pools.holds_photos:
            raise FailedPrecondition("spec.photo_aware_attack: this server's public pool was given as images "
                                     "(--pool), so it holds no photos the pool was cut from; start it with "
                                     "--pool-photos, or with the bundled pool")
        upload = Upload(params, max_images=self._max_images)
        upload.add(first)
        async for request in iterator:
            if request.HasField("spec"):
                raise InvalidArgument("spec: only the first message of StartAudit carries the spec", "spec")
            upload.add(request)
        loop = asyncio.get_running_loop()
        if params.dataset:
            data = await loop.run_in_executor(None, lambda: load_dataset(
                self._data_root, params.dataset, params, max_images=self._max_images))
        else:
            data = upload.finish()
        if params.photo_aware and data.image_shape[2] != 3:
            raise InvalidArgument(f"spec.photo_aware_attack: needs RGB images (the photos are), got "
                                  f"{data.image_shape[2]} channel(s)", "spec.photo_aware_attack")
        if not params.precomputed:
            await loop.run_in_executor(None, self._pools.get, data.image_shape)  # builds it once, or refuses
        return audit_pb2.StartAuditResponse(audit=self._jobs.submit(first.spec, data))

    async def WatchAudit(self, request: audit_pb2.WatchAuditRequest,
                         context: grpc.aio.ServicerContext) -> AsyncIterator[audit_pb2.WatchAuditResponse]:
        async for event in self._jobs.watch(request.name):
            yield event

    async def GetAudit(self, request: audit_pb2.GetAuditRequest,
                       context: grpc.aio.ServicerContext) -> audit_pb2.GetAuditResponse:
        return audit_pb2.GetAuditResponse(audit=self._jobs.get(request.name, summary_only=request.summary_only))

    async def ListAudits(self, request: audit_pb2.ListAuditsRequest,
                         context: grpc.aio.ServicerContext) -> audit_pb2.ListAuditsResponse:
        audits, token = self._jobs.list(page_size=request.page_size, page_token=request.page_token,
                                        state=request.state)
        return audit_pb2.ListAuditsResponse(audits=audits, next_page_token=token)

    async def CancelAudit(self, request: audit_pb2.CancelAuditRequest,
                          context: grpc.aio.ServicerContext) -> audit_pb2.CancelAuditResponse:
        return audit_pb2.CancelAuditResponse(audit=await self._jobs.cancel(request.name))

    async def DeleteAudit(self, request: audit_pb2.DeleteAuditRequest,
                          context: grpc.aio.ServicerContext) -> audit_pb2.DeleteAuditResponse:
        self._jobs.delete(request.name)
        return audit_pb2.DeleteAuditResponse()


def add_to_server(servicer: AuditServicer, server: grpc.aio.Server) -> None:
    audit_pb2_grpc.add_AuditServiceServicer_to_server(servicer, server)
