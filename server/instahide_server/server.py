"""Assembling and running the server: ``build_server`` wires everything, ``serve`` runs it to a drain.

Shutdown (SIGTERM/SIGINT): health goes NOT_SERVING; the audit runner refuses new audits (UNAVAILABLE),
stops the queued and running ones and records them FAILED "interrupted by shutdown" (so watchers get
their last event and nothing is left looking live); then in-flight calls get ``grace_seconds``. An
audit whose thread does not stop in time, or a server killed outright, is marked FAILED
"interrupted by restart" at the next start.

Interceptor order (outermost first, as grpc.aio applies its list):
  1. ``MetricsInterceptor``: the ``grpc_server_*`` family; outermost, so it sees every call with its
     final code, refused (UNAUTHENTICATED) and failed (mapped by 2.) ones included;
  2. ``BearerTokenInterceptor`` (only with a token): refuses unauthenticated calls before any work;
  3. ``ErrorInterceptor``: maps what escapes a servicer to a status code (INTERNAL for the unexpected);
  4. ``MalformedMessageInterceptor``: request bytes that do not parse raise INVALID_ARGUMENT, inside 3.
     so that 3. maps it (gRPC itself would answer UNKNOWN, or INTERNAL on a stream).

Transport: plaintext, TLS or mutual TLS on the one port, as ``tls.load_tls`` reads the flags; the
optional ``--health-port`` serves health alone in plaintext. Limits: ``--max-concurrent-rpcs`` is gRPC's
server-wide ``maximum_concurrent_rpcs`` (beyond it gRPC answers RESOURCE_EXHAUSTED before any
interceptor runs, so those refusals are not in ``grpc_server_*``); ``--max-concurrent-streams`` is the
HTTP/2 per-connection setting (clients queue beyond it).

Metrics: one ``ServerMetrics`` (its own registry) made in ``build_server`` and passed to what updates
it; ``serve`` exposes it on ``/metrics`` (``--metrics-port``) before the gRPC port starts serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import signal
import tempfile
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from instahide_ops.audits.reconstruction import AttackSettings
from instahide_ops.audits.reconstruction.audit import device_name as describe_device
from instahide_ops.transforms.instahide.pool import load_photos, load_pool
from instahide_server import info
from instahide_server.audit import servicer as audit_servicer
from instahide_server.audit.disguisednets import DisguisedNetsReconstruction
from instahide_server.audit.jobs import AuditJobs, default_workers
from instahide_server.audit.membership import MembershipKind
from instahide_server.audit.reconstruction import InstaHideReconstruction, ReconstructionKind
from instahide_server.audit.store import open_audit_store
from instahide_server.config import ConfigError, ServerConfig
from instahide_server.errors import ServiceError
from instahide_server.interceptors.auth import BearerTokenInterceptor, Principals
from instahide_server.interceptors.errors import ErrorInterceptor
from instahide_server.interceptors.malformed import MalformedMessageInterceptor
from instahide_server.interceptors.metrics import MetricsInterceptor
from instahide_server.keys import servicer as key_servicer
from instahide_server.keys.store import open_key_store
from instahide_server.metrics import MetricsEndpoint, ServerMetrics, start_endpoint
from instahide_server.metrics import version as metrics_version
from instahide_server.tls import load_tls, log_transport
from instahide_server.transform import servicer as transform_servicer
from instahide_server.transform.defenses import OutputDefenseFamily
from instahide_server.transform.disguisednets import DisguisedNetsFamily
from instahide_server.transform.encoder import BatchEncoder
from instahide_server.transform.instahide import InstaHideFamily
from instahide_server.transform.pools import PoolRegistry
from instahide_server.transform.validation import Limits

logger = logging.getLogger(__name__)

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Services whose health is reported: "" (the whole server) and each API service.
HEALTH_CHECKED = ("", transform_servicer.SERVICE_NAME, audit_servicer.SERVICE_NAME, key_servicer.SERVICE_NAME,
                  info.SERVICE_NAME)
AUDIT_STOP_SECONDS = 10.0  # how long shutdown waits for running audits to stop


class HealthServicer(health_aio.HealthServicer):
    """grpc's health servicer, but an unknown service's NOT_FOUND says so (grpc's carries no message), and
    ``List`` answers (grpc's raises NotImplementedError, a traceback in the log for a plain query)."""

    async def List(self, request: health_pb2.HealthListRequest,
                   context: grpc.aio.ServicerContext) -> health_pb2.HealthListResponse:
        statuses = {service: health_pb2.HealthCheckResponse(status=self._server_status.get(
            service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)) for service in HEALTH_CHECKED}
        return health_pb2.HealthListResponse(statuses=statuses)

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        if request.service not in HEALTH_CHECKED:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"service: no health status for {request.service!r}; "
                                f"this server reports {', '.join(repr(s) for s in HEALTH_CHECKED)}")
        return await super().Check(request, context)


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU; a named device must exist.

    Raises:
        ConfigError: CUDA asked for but not available, or a device index out of range.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} asked for, but there are only "
                              f"{torch.cuda.device_count()} CUDA devices")
    return device


def build_server(config: ServerConfig, *, executor: Executor | None = None,
                 ) -> tuple[grpc.aio.Server, int, health_aio.HealthServicer, AuditJobs, ServerMetrics, bool]:
    """Create (not start) the server: services, interceptors, limits and the bound port.

    Call from a running event loop. ``executor`` runs the encoding; by default one of
    ``config.transforms.workers`` threads is made (and lives as long as the process). The audit store is
    opened (and what a previous process left live is marked interrupted) here.

    Returns:
        The server, the port it is bound to (the real one when ``config.transport.port`` is 0), its health
        servicer, whose statuses are NOT_SERVING until ``serve`` sets them, and the audit runner
        (``await jobs.shutdown(...)`` it when stopping), the metrics every piece updates, and whether the key
        store is available.

    Raises:
        ConfigError: an unusable device, pool or TLS file; a key store that its key-encryption key does not
            open. An unusable state directory disables audits and keys only (``jobs.available`` is False; the
            audit and key services' health stays NOT_SERVING).
    """
    device = resolve_device(config.device)
    transport, transforms, audits = config.transport, config.transforms, config.audits
    tls = load_tls(transport)  # before anything is opened: a bad file leaves nothing to clean up
    metrics = ServerMetrics(device=device)
    keys = open_key_store(config.state_dir, config.keys.kek_file, config.keys.import_dir)  # a wrong KEK refuses here
    stored = keys.counts()
    metrics.set_keys_stored(stored)
    principals = Principals(transport.tokens)
    source = _load_or_refuse(load_pool, transforms.pool, "--pool")
    photos = _load_or_refuse(load_photos, transforms.pool_photos, "--pool-photos")
    pools = PoolRegistry(device=device, source=source, photos=photos, size=transforms.pool_size,
                         cache_dir=transforms.cache_dir, max_shapes=transforms.max_pool_shapes)
    limits = Limits(max_images_per_request=transforms.max_images_per_request,
                    max_message_bytes=transport.max_message_bytes)
    # The transform families and audit kinds this server runs; each is a registry entry in instahide_ops.
    families = [InstaHideFamily(pools), DisguisedNetsFamily(keys), OutputDefenseFamily()]
    attack_settings = AttackSettings(working_bytes=audits.pool_memory_bytes, refine_sets=audits.refine_sets,
                                     refine_steps=audits.refine_steps)
    kinds = [ReconstructionKind({
        "instahide": InstaHideReconstruction(pools, device=device, settings=attack_settings),
        "disguised_nets": DisguisedNetsReconstruction(device=device, settings=attack_settings)}),
        MembershipKind(device=device)]
    encoder = BatchEncoder(device=device, families=families, limits=limits, metrics=metrics)
    store = open_audit_store(config.state_dir, max_bytes=audits.db_max_bytes)  # never raises
    jobs = AuditJobs(store, workers=audits.workers or default_workers(device), queue_size=audits.queue_size,
                     timeout_seconds=audits.timeout_seconds, retention_days=audits.retention_days, metrics=metrics)
    jobs.recover()
    if executor is None:
        executor = ThreadPoolExecutor(max_workers=transforms.workers, thread_name_prefix="instahide-encode")
    for shape in transforms.warm_shapes:  # so the first request of a common shape does not wait for its pool
        executor.submit(_warm_pool, pools, shape)

    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(metrics.grpc)]
    if principals.enabled:
        interceptors.append(BearerTokenInterceptor(principals))
    interceptors += [ErrorInterceptor(), MalformedMessageInterceptor()]
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", transport.max_message_bytes),
        ("grpc.max_send_message_length", transport.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on a taken port fails instead of sharing it
        *_window_options(transport.stream_window_bytes),
    ]
    if transport.max_concurrent_streams is not None:  # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS, per connection
        options.append(("grpc.max_concurrent_streams", transport.max_concurrent_streams))
    server = grpc.aio.server(interceptors=interceptors, options=options,
                             maximum_concurrent_rpcs=transport.max_concurrent_rpcs)

    transform_servicer.add_to_server(transform_servicer.TransformServicer(
        encoder, executor, max_in_flight=transforms.max_in_flight_per_stream, metrics=metrics,
        principals=principals), server)
    key_servicer.add_to_server(key_servicer.KeyServicer(keys, principals, metrics), server)
    audit_servicer.add_to_server(audit_servicer.AuditServicer(
        jobs, kinds, data_root=audits.data_root, max_images=audits.max_images), server)
    facts = info.ServerFacts(version=metrics_version(), device=describe_device(device), limits=limits,
                             max_audit_images=audits.max_images,
                             max_in_flight_per_stream=transforms.max_in_flight_per_stream, keys_enabled=keys.available,
                             transport="plaintext" if tls is None else "mutual_tls" if tls.client_ca else "tls",
                             principals=len(principals) if principals.enabled else 0)
    info.add_to_server(info.InfoServicer(facts, pools, jobs), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((transform_servicer.SERVICE_NAME, audit_servicer.SERVICE_NAME,
                                         key_servicer.SERVICE_NAME, info.SERVICE_NAME, HEALTH_SERVICE_NAME,
                                         reflection.SERVICE_NAME), server)

    host = f"[{transport.host}]" if ":" in transport.host else transport.host
    try:
        if tls is None:
            port = server.add_insecure_port(f"{host}:{transport.port}")
        else:
            port = server.add_secure_port(f"{host}:{transport.port}", tls.server_credentials())
    except RuntimeError as exc:  # grpc's "Failed to bind"
        raise ConfigError(f"cannot listen on {host}:{transport.port}: {exc}") from None
    log_transport(transport, tls)
    jobs.start()
    logger.info("audits: database %s, %d workers, queue %d, data root %s, pool memory %d MiB, self-refinement %s",
                store.path or "none (disabled)", jobs.workers, audits.queue_size, audits.data_root or "none",
                audits.pool_memory_mib,
                f"{audits.refine_sets} sets × {audits.refine_steps} steps" if audits.refine_sets else "off")
    logger.info("keys: store %s, %s", keys.path or "none (disabled)",
                ", ".join(f"{n} {family}" for family, n in sorted(stored.items())) or "no keys")
    logger.info("device %s, pool %s, auth %s, max message %d bytes, %d encoding threads", device,
                _pool_origin(config), f"on, {len(principals)} principals" if principals.enabled else "off",
                transport.max_message_bytes,
                transforms.workers)
    logger.info("limits: %s concurrent calls, %s streams per connection, %d in flight per stream",
                transport.max_concurrent_rpcs or "unlimited", transport.max_concurrent_streams or "unlimited",
                transforms.max_in_flight_per_stream)
    return server, port, health, jobs, metrics, keys.available


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain: NOT_SERVING first, then ``stop(grace)``.

    In-flight calls get ``config.grace_seconds`` to finish; new calls are refused meanwhile.
    """
    executor = ThreadPoolExecutor(max_workers=config.transforms.workers, thread_name_prefix="instahide-encode")
    try:
        server, port, health, jobs, metrics, keys_available = build_server(config, executor=executor)
        health_only = build_health_server(config, health)
        endpoint = open_metrics_endpoint(config, metrics)
        for service in HEALTH_CHECKED:
            await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if health_only is not None:
            await health_only[0].start()
        await server.start()
        for service in HEALTH_CHECKED:
            serving = ((jobs.available or service != audit_servicer.SERVICE_NAME)  # no database, no audits
                       and (keys_available or service != key_servicer.SERVICE_NAME))
            await health.set(service, health_pb2.HealthCheckResponse.SERVING if serving
                             else health_pb2.HealthCheckResponse.NOT_SERVING)
        if endpoint is not None and config.metrics.port_file is not None:
            write_port_file(config.metrics.port_file, endpoint.port)
        if health_only is not None and config.transport.health_port_file is not None:
            write_port_file(config.transport.health_port_file, health_only[1])
        if config.transport.port_file is not None:
            write_port_file(config.transport.port_file, port)
        logger.info("serving on %s:%d", config.transport.host, port)
        try:
            await stop.wait()
            logger.info("shutting down: NOT_SERVING, draining for up to %gs", config.grace_seconds)
            await health.enter_graceful_shutdown()
            await jobs.shutdown(min(AUDIT_STOP_SECONDS, config.grace_seconds))
            await server.stop(config.grace_seconds)
            await _unwind_cancelled_calls()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if health_only is not None:  # last: probes see NOT_SERVING for the whole drain
                await health_only[0].stop(0)
            if endpoint is not None:
                endpoint.close()
            for path in (config.transport.port_file, config.metrics.port_file if endpoint is not None else None,
                         config.transport.health_port_file if health_only is not None else None):
                if path is not None:
                    with contextlib.suppress(OSError):
                        path.unlink()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    logger.info("stopped")


def build_health_server(config: ServerConfig, health: health_aio.HealthServicer,
                        ) -> tuple[grpc.aio.Server, int] | None:
    """The health-only port (``--health-port``), or None when it is off; created, not started.

    Plaintext and ``grpc.health.v1`` alone (no reflection, nothing else): it tells a prober whether the
    server is serving and nothing more, so probes that cannot do TLS or present a client certificate
    (kubelet's gRPC probes) still reach it, and it is outside the main port's ``--max-concurrent-rpcs``.
    It shares ``health`` with the main port, so both report the same status.

    Raises:
        ConfigError: the port cannot be bound.
    """
    if config.transport.health_port is None:
        return None
    server = grpc.aio.server(interceptors=[ErrorInterceptor(), MalformedMessageInterceptor()],
                             options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    host = f"[{config.transport.host}]" if ":" in config.transport.host else config.transport.host
    try:
        port = server.add_insecure_port(f"{host}:{config.transport.health_port}")
    except RuntimeError as exc:
        raise ConfigError(f"--health-port: cannot listen on {host}:{config.transport.health_port}: {exc}") from None
    logger.info("health only, plaintext, on %s:%d", config.transport.host, port)
    return server, port


def open_metrics_endpoint(config: ServerConfig, metrics: ServerMetrics) -> MetricsEndpoint | None:
    """Serve ``/metrics`` as configured, or return None when it is off.

    Port 0 turns the endpoint off, unless a metrics port file is given: then a free port is bound and
    written there (as ``--port 0 --port-file`` do for gRPC; tests use it). The default port, when taken
    (say by a second server on the host), gives a warning and no endpoint; a port given explicitly must
    be free.

    Raises:
        ConfigError: an explicitly given metrics port that cannot be bound.
    """
    port = config.metrics_port
    if port == 0 and config.metrics.port_file is None:
        logger.info("metrics endpoint off (--metrics-port 0)")
        return None
    host = config.metrics_host
    try:
        endpoint = start_endpoint(metrics, host, port)
    except OSError as exc:
        if config.metrics.port is None:
            logger.warning("metrics endpoint off: cannot listen on %s:%d (%s); give --metrics-port to choose "
                           "another port, or 0 to turn it off", host, port, exc)
            return None
        raise ConfigError(f"--metrics-port: cannot listen on {host}:{port}: {exc}") from None
    logger.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, endpoint.port)
    return endpoint


def _window_options(window_bytes: int) -> list[tuple[str, int]]:
    """A fixed HTTP/2 receive window per stream (0: gRPC's own, grown by BDP probing).

    What a client may send ahead of what a stream has read sits in the transport, on top of the
    ``max_in_flight_per_stream`` batches the servicer holds. gRPC's automatic window has no fixed
    cap: on a fast link it grows until one flooding connection can park hundreds of MiB here.
    """
    if window_bytes == 0:
        return []
    return [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", window_bytes)]


async def _unwind_cancelled_calls(timeout: float = 2.0) -> None:
    """Give handlers of calls still open after the grace period (cancelled by ``stop``) time to end.

    Their clients already have UNAVAILABLE; without this, ``asyncio.run`` tears the handlers down and
    grpc logs each one as an unhandled exception.
    """
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=timeout)


def _load_or_refuse(load: Callable[[pathlib.Path], Any], path: pathlib.Path | None, flag: str) -> Any:
    """``load(path)``, None without a path; ConfigError naming the flag when it cannot be used."""
    if path is None:
        return None
    try:
        return load(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{flag} {path}: {exc}") from None


def _pool_origin(config: ServerConfig) -> str:
    size = "" if config.transforms.pool_size is None else f", {config.transforms.pool_size} images"
    if config.transforms.pool_photos is not None:
        return f"cut from the photos in {config.transforms.pool_photos} at a secret seed{size}"
    return str(config.transforms.pool or f"bundled default{size}")


def _warm_pool(pools: PoolRegistry, shape: tuple[int, int, int]) -> None:
    try:
        pools.get(shape)
    except ServiceError as exc:  # a request for this shape will get the same answer
        logger.warning("could not build the public pool for images %s at start: %s", list(shape), exc)
    except Exception:
        logger.warning("could not build the public pool for images %s at start", list(shape), exc_info=True)


def write_port_file(path: pathlib.Path, port: int) -> None:
    """Write the port atomically: readers see no file or the whole number, never a partial write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(f"{port}\n")
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
