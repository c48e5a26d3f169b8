"""``instahide.v1.AuditService``: checks each request and hands it to the job runner (jobs.py).

StartAudit reads the spec (first message) and lets its kind accept it (kinds.py: defaults resolved, the attacks
named), then the input chunks (the kind's upload checks each as it arrives), or reads the named server-side
dataset; the kind then prepares (e.g. makes sure a public pool exists for the images' shape) before the audit is
queued, so what cannot be audited is refused at once instead of failing later. Errors are raised as domain
errors; the error interceptor maps them.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import AsyncIterator, Iterable

import grpc
from instahide_client.instahide.v1 import audit_pb2, audit_pb2_grpc

from instahide_server.audit.inputs import resolve_dataset
from instahide_server.audit.jobs import AuditJobs
from instahide_server.audit.kinds import AuditKind, kind_of
from instahide_server.errors import InvalidArgument

logger = logging.getLogger(__name__)

SERVICE_NAME = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Validates and delegates to ``AuditJobs``, through the audit kinds it is given."""

    def __init__(self, jobs: AuditJobs, kinds: Iterable[AuditKind], *, data_root: pathlib.Path | None,
                 max_images: int) -> None:
        self._jobs = jobs
        self._kinds = {kind.field: kind for kind in kinds}
        self._data_root = data_root
        self._max_images = max_images

    async def StartAudit(self, request_iterator: AsyncIterator[audit_pb2.StartAuditRequest],
                         context: grpc.aio.ServicerContext) -> audit_pb2.StartAuditResponse:
        self._jobs.check_available()  # refuse before reading an upload that could not be audited
        iterator = aiter(request_iterator)
        first = await anext(iterator, None)
        if first is None or not first.HasField("spec"):
            raise InvalidArgument("spec: the first message of StartAudit must carry the spec", "spec")
        kind = kind_of(first.spec, self._kinds)
        accepted = kind.accept(first.spec)
        upload = kind.upload(accepted, max_images=self._max_images)
        request: audit_pb2.StartAuditRequest | None = first
        while request is not None:
            if request is not first and request.HasField("spec"):
                raise InvalidArgument("spec: only the first message of StartAudit carries the spec", "spec")
            member = request.WhichOneof("chunk")
            if member is not None:
                if accepted.dataset:
                    raise InvalidArgument("spec.dataset: an audit of a server-side dataset takes no uploaded data",
                                          "spec.dataset")
                if member != kind.field:
                    raise InvalidArgument(f"chunk: a {member} chunk in a {kind.field} audit", "chunk")
                upload.add(getattr(request, member))
            request = await anext(iterator, None)
        loop = asyncio.get_running_loop()
        if accepted.dataset:
            path = await loop.run_in_executor(None, resolve_dataset, self._data_root, accepted.dataset)
            data = await loop.run_in_executor(
                None, lambda: kind.read_dataset(path, accepted, max_images=self._max_images))
        else:
            data = upload.finish()
        await loop.run_in_executor(None, kind.prepare, accepted, data)
        return audit_pb2.StartAuditResponse(audit=self._jobs.submit(kind, accepted, data))

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
