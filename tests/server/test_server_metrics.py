"""Prometheus metrics over a real server process: exact counts after a known client run, and units."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from instahide_client.instahide.v1 import audit_pb2, audit_pb2_grpc, instahide_pb2, reconstruction_pb2
from instahide_client.tensors import to_tensor
from instahide_server.interceptors.metrics import (
    BIDI_STREAM,
    CLIENT_STREAM,
    SERVER_STREAM,
    UNARY,
    GrpcMetrics,
    MetricsInterceptor,
    grpc_type,
    split_method,
)
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from server_testlib import INVALID_ARGUMENT, channel, config, encode_all, images, ok, request, start_server

ENCODE = ("bidi_stream", "instahide.v1.TransformService", "Encode")
START_AUDIT = ("client_stream", "instahide.v1.AuditService", "StartAudit")
WATCH_AUDIT = ("server_stream", "instahide.v1.AuditService", "WatchAudit")
HEALTH_CHECK = ("unary", "grpc.health.v1.Health", "Check")
GET_AUDIT = ("unary", "instahide.v1.AuditService", "GetAudit")
BATCH_SIZES = (4, 6, 3)  # the good batches of the Encode stream; one bad item among them


class Scrape:
    """One ``/metrics`` scrape: samples by (name, labels)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for family in self.families for s in family.samples}

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def grpc(self, name: str, key: tuple[str, str, str], **labels: str) -> float:
        grpc_type_, service, method = key
        return self.value(name, grpc_type=grpc_type_, grpc_service=service, grpc_method=method, **labels)


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return Scrape(response.read().decode())


def scrape_until(port: int, ready, timeout: float = 10.0) -> Scrape:
    """Scrape until ``ready(scrape)``: a stream's end is counted just after its client sees it."""
    deadline = time.monotonic() + timeout
    while True:
        result = scrape(port)
        if ready(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_pool_path):
    """A server, a known client run against it, and the scrapes taken before and after."""
    tmp_path = tmp_path_factory.mktemp("metrics")
    port_file = tmp_path / "metrics-port"
    with start_server(tmp_path, "--pool", str(small_pool_path), "--metrics-port", "0",
                      "--metrics-port-file", str(port_file)) as server:
        port = int(port_file.read_text())
        before = scrape(port)
        requests = [request("req-a", images(BATCH_SIZES[0]), cfg=config(seed=11)),
                    request("req-bad", images(1)),  # one image: refused with INVALID_ARGUMENT, stream goes on
                    request("req-b", images(BATCH_SIZES[1])),
                    request("req-c", images(BATCH_SIZES[2]))]
        responses = encode_all(server.target, requests)
        with channel(server.target) as chan:
            health = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=10)
            stub = audit_pb2_grpc.AuditServiceStub(chan)
            pixels = np.random.default_rng(0).integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
            spec = audit_pb2.AuditSpec(skipped_attacks=["key_aware"],
                                       reconstruction=reconstruction_pb2.ReconstructionSpec(
                                           instahide=instahide_pb2.InstaHideConfig(k=4, seed=1),
                                           encodings_per_image=3))
            chunks = [reconstruction_pb2.ReconstructionChunk(images=to_tensor(pixels[:5]), labels=[0, 1, 2, 3, 4]),
                      reconstruction_pb2.ReconstructionChunk(images=to_tensor(pixels[5:]), labels=[5, 6, 7])]
            audit = stub.StartAudit(iter([audit_pb2.StartAuditRequest(spec=spec),
                                          *(audit_pb2.StartAuditRequest(reconstruction=c) for c in chunks)]),
                                    timeout=60).audit
            events = list(stub.WatchAudit(audit_pb2.WatchAuditRequest(name=audit.name), timeout=60))
            report = stub.GetAudit(audit_pb2.GetAuditRequest(name=audit.name, summary_only=True),
                                   timeout=10).audit.report
            with pytest.raises(grpc.RpcError) as missing:
                stub.GetAudit(audit_pb2.GetAuditRequest(name="audits/" + "0" * 32), timeout=10)
        # Each call's end is counted just after its client sees its status: wait for the last ones.
        after = scrape_until(port, lambda s: s.grpc("grpc_server_handled_total", WATCH_AUDIT, grpc_code="OK") >= 1
                             and s.grpc("grpc_server_handled_total", GET_AUDIT, grpc_code="NOT_FOUND") >= 1
                             and s.grpc("grpc_server_handled_total", GET_AUDIT, grpc_code="OK") >= 1
                             and s.value("instahide_audits_total", state="succeeded") >= 1)
        yield {"before": before, "after": after, "responses": responses, "health": health, "audit": audit,
               "report": report, "events": events, "missing": missing.value, "requests": requests, "log": server.log()}


def test_the_exposition_parses_and_carries_the_families(run):
    names = {family.name for family in run["after"].families}
    for name in ("grpc_server_started", "grpc_server_handled", "grpc_server_msg_received", "grpc_server_msg_sent",
                 "grpc_server_handling_seconds", "instahide_images_encoded", "instahide_encode_bytes_received",
                 "instahide_encode_bytes_sent", "instahide_encode_batch_seconds", "instahide_encode_streams_in_flight",
                 "instahide_seeded_batches", "instahide_audit_queue_depth", "instahide_audits",
                 "instahide_audit_seconds", "instahide_audit_max_ssim", "instahide_device_info",
                 "instahide_build_info", "process_cpu_seconds", "process_resident_memory_bytes"):
        assert name in names, name
    assert run["after"].value("process_resident_memory_bytes") > 10 * 2**20  # a live Python process with torch
    assert run["after"].value("instahide_device_info", device="cpu") == 1
    assert "instahide_gpu_memory_bytes" not in names  # CPU server
    (build,) = [s for f in run["after"].families if f.name == "instahide_build_info" for s in f.samples]
    assert build.value == 1 and build.labels["version"]
    assert "metrics on http://127.0.0.1:" in run["log"]


def test_nothing_counted_before_the_first_call(run):
    before = run["before"]
    assert before.grpc("grpc_server_started_total", ENCODE) == 0
    assert before.value("instahide_images_encoded_total", family="instahide", mode="cross") == 0
    assert before.value("instahide_encode_streams_in_flight") == 0


def test_encode_stream_counts(run):
    after, responses, requests = run["after"], run["responses"], run["requests"]
    assert [r.HasField("error") for r in responses] == [False, True, False, False]
    assert responses[1].error.code == INVALID_ARGUMENT
    images_sent = sum(ok(r).encoded.shape[0] for i, r in enumerate(responses) if i != 1)
    assert images_sent == sum(BATCH_SIZES)
    assert after.value("instahide_images_encoded_total", family="instahide", mode="cross") == images_sent
    assert after.grpc("grpc_server_started_total", ENCODE) == 1
    assert after.grpc("grpc_server_handled_total", ENCODE, grpc_code="OK") == 1  # a per-item error is no failure
    assert sum(v for (name, labels), v in after.samples.items() if name == "grpc_server_handled_total"
               and ("grpc_method", "Encode") in labels) == 1
    assert after.grpc("grpc_server_msg_received_total", ENCODE) == len(requests)
    assert after.grpc("grpc_server_msg_sent_total", ENCODE) == len(responses)
    assert after.grpc("grpc_server_handling_seconds_count", ENCODE) == 1
    assert after.value("instahide_encode_batch_seconds_count") == len(BATCH_SIZES)  # encoded batches only
    assert after.value("instahide_seeded_batches_total") == 3  # the seeded config covers the whole stream
    refused = {labels: v for (name, labels), v in after.samples.items()
               if name == "instahide_encode_request_errors_total"}
    assert list(refused.values()) == [1]  # the one refused batch, by its code and field
    (labels,) = refused
    assert dict(labels) == {"code": "INVALID_ARGUMENT", "field": responses[1].error.field}
    assert after.value("instahide_encode_bytes_received_total") == sum(r.ByteSize() for r in requests)
    assert after.value("instahide_encode_bytes_sent_total") == sum(r.ByteSize() for r in responses)
    assert after.value("instahide_encode_streams_in_flight") == 0


def test_unary_and_error_codes(run):
    after = run["after"]
    assert run["health"].status == health_pb2.HealthCheckResponse.SERVING
    for name in ("grpc_server_started_total", "grpc_server_msg_received_total", "grpc_server_msg_sent_total",
                 "grpc_server_handling_seconds_count"):
        assert after.grpc(name, HEALTH_CHECK) == 1, name
    assert after.grpc("grpc_server_handled_total", HEALTH_CHECK, grpc_code="OK") == 1
    assert run["missing"].code() == grpc.StatusCode.NOT_FOUND
    assert after.grpc("grpc_server_handled_total", GET_AUDIT, grpc_code="NOT_FOUND") == 1
    assert after.grpc("grpc_server_handled_total", GET_AUDIT, grpc_code="OK") == 1
    assert after.grpc("grpc_server_msg_sent_total", GET_AUDIT) == 1  # the found audit's only


def test_audit_counts(run):
    after, events = run["after"], run["events"]
    assert events[-1].state == audit_pb2.AUDIT_STATE_SUCCEEDED
    assert after.grpc("grpc_server_handled_total", START_AUDIT, grpc_code="OK") == 1
    assert after.grpc("grpc_server_msg_received_total", START_AUDIT) == 3
    assert after.grpc("grpc_server_msg_sent_total", START_AUDIT) == 1
    assert after.grpc("grpc_server_msg_sent_total", WATCH_AUDIT) == len(events)
    assert after.grpc("grpc_server_handled_total", WATCH_AUDIT, grpc_code="OK") == 1
    assert after.value("instahide_audits_total", state="succeeded") == 1
    assert after.value("instahide_audit_seconds_count") == 1
    # One observation per attack that ran (the spec leaves the key-aware bound out), of its reported Max_SSIM.
    rows = {row.attack: row for row in run["report"].attacks}
    assert list(rows) == ["ciphertext_only", "pool_aware"]
    for attack, row in rows.items():
        assert after.value("instahide_audit_max_ssim_count", attack=attack, bound="false") == 1, attack
        assert after.value("instahide_audit_max_ssim_sum", attack=attack, bound="false") == pytest.approx(
            row.reconstruction.max_ssim), attack
    assert not any(name.startswith("instahide_audit_max_ssim") and ("attack", "key_aware") in labels
                   for name, labels in after.samples)
    assert after.value("instahide_audit_queue_depth") == 0


def test_no_label_carries_a_request_or_audit_id(run):
    after = run["after"]
    values = {value for _, labels in after.samples for _, value in labels}
    ids = {r.request_id for r in run["requests"]} | {run["audit"].name, run["audit"].name.removeprefix("audits/")}
    assert not values & ids
    assert not any("req-" in value or "audits/" in value or "ipv4:" in value for value in values)


def test_an_explicit_taken_metrics_port_is_refused(tmp_path, small_pool_path, run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with (pytest.raises(RuntimeError, match="metrics-port"),
              start_server(tmp_path, "--pool", str(small_pool_path), "--metrics-port", str(busy))):
            pass


def test_refused_calls_are_counted_with_their_code(tmp_path, small_pool_path):
    token_file = tmp_path / "token"
    token_file.write_text("metrics-test-token\n")
    port_file = tmp_path / "metrics-port"
    with start_server(tmp_path, "--pool", str(small_pool_path), "--token-file", str(token_file),
                      "--metrics-port", "0", "--metrics-port-file", str(port_file)) as server:
        with pytest.raises(grpc.RpcError) as caught:
            encode_all(server.target, [request("r", cfg=config())])
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        after = scrape_until(int(port_file.read_text()),
                             lambda s: s.grpc("grpc_server_handled_total", ENCODE, grpc_code="UNAUTHENTICATED") >= 1)
    assert after.grpc("grpc_server_handled_total", ENCODE, grpc_code="UNAUTHENTICATED") == 1
    assert after.grpc("grpc_server_started_total", ENCODE) == 1
    assert after.value("instahide_encode_streams_in_flight") == 0


# Units.

def _handler(request_streaming: bool, response_streaming: bool) -> grpc.RpcMethodHandler:
    async def behavior(request, context):
        return None

    factory = {(False, False): grpc.unary_unary_rpc_method_handler,
               (True, False): grpc.stream_unary_rpc_method_handler,
               (False, True): grpc.unary_stream_rpc_method_handler,
               (True, True): grpc.stream_stream_rpc_method_handler}[(request_streaming, response_streaming)]
    return factory(behavior)


def test_grpc_type_of_each_handler_kind():
    assert grpc_type(_handler(False, False)) == UNARY == "unary"
    assert grpc_type(_handler(True, False)) == CLIENT_STREAM == "client_stream"
    assert grpc_type(_handler(False, True)) == SERVER_STREAM == "server_stream"
    assert grpc_type(_handler(True, True)) == BIDI_STREAM == "bidi_stream"


def test_split_method():
    assert split_method("/instahide.v1.TransformService/Encode") == ("instahide.v1.TransformService", "Encode")
    assert split_method("/grpc.health.v1.Health/Check") == ("grpc.health.v1.Health", "Check")


class _Context:
    def __init__(self) -> None:
        self._code = None

    def code(self):
        return self._code


async def _intercept(behavior_kind: str, handler_factory, behavior, method: str = "/s.Svc/M"):
    registry = CollectorRegistry()

    async def continuation(details):
        return handler_factory(behavior)

    details = SimpleNamespace(method=method, invocation_metadata=())
    handler = await MetricsInterceptor(GrpcMetrics(registry)).intercept_service(continuation, details)
    return registry, getattr(handler, behavior_kind)


def _sample(registry: CollectorRegistry, name: str, **labels) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_a_stream_cancelled_midway_is_handled_once_as_cancelled():
    async def responses(request, context):
        yield 1
        yield 2
        yield 3

    async def main():
        registry, wrapped = await _intercept("unary_stream", grpc.unary_stream_rpc_method_handler, responses)
        gen = wrapped(object(), _Context())
        assert await anext(gen) == 1
        await gen.aclose()  # what happens to an abandoned stream
        return registry

    registry = asyncio.run(main())
    labels = {"grpc_type": "server_stream", "grpc_service": "s.Svc", "grpc_method": "M"}
    assert _sample(registry, "grpc_server_started_total", **labels) == 1
    assert _sample(registry, "grpc_server_handled_total", **labels, grpc_code="CANCELLED") == 1
    assert _sample(registry, "grpc_server_msg_received_total", **labels) == 1
    assert _sample(registry, "grpc_server_msg_sent_total", **labels) == 0  # not yet acknowledged as written
    assert _sample(registry, "grpc_server_handling_seconds_count", **labels) == 1
