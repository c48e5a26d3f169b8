"""The server's Prometheus metrics: one ``ServerMetrics`` per server, in a registry of its own.

``build_server`` makes one and hands it to the pieces that update it (the encoder, the Encode servicer,
the audit runner, the gRPC metrics interceptor); ``serve`` exposes it over HTTP (``/metrics``). A
registry of its own, not prometheus-client's global one, so tests and several servers in one process
never collide. Base units (seconds, bytes); labels only with a small, fixed set of values — never a
request id, a peer or an audit id.

The standard process collector's ``process_*`` metrics (CPU seconds, resident and virtual memory, open file
descriptors, start time) are exported beside them.

Domain metrics (``instahide_*``):
  images_encoded_total{family,mode}   images encoded, by transform family (instahide | disguised_nets) and mode
                                      (InstaHide: cross | inside; DisguisedNets: rmt | aes)
  keys_stored{family}                 keys in this server's key store, by family (never a key id)
  encode_bytes_received_total         serialized EncodeRequest bytes, refused requests included
  encode_bytes_sent_total             serialized EncodeResponse bytes
  encode_batch_seconds                check + encode + serialize of one encoded batch
  encode_streams_in_flight            open Encode streams
  encode_batches_in_flight            Encode batches read but not yet answered, all streams (backpressure
                                      keeps it at most --max-in-flight-per-stream per stream)
  seeded_batches_total                batches encoded with an explicit seed
  encode_request_errors_total{code,field}
                                      Encode requests answered with a per-request error (the stream went on),
                                      by status code and the request field named (e.g. "images.shape")
  audit_queue_depth                   audits waiting for a worker
  audits_total{state}                 audits ended, by final state (succeeded | failed | cancelled)
  audit_seconds                       running time of each audit that ran
  audit_max_ssim{attack,bound}        the Max_SSIM of each succeeded reconstruction audit, per attack it ran
                                      (its registry name: ciphertext_only, pool_aware, ...); bound="true" for
                                      the attackers that hold the keys, "false" for the others
  audit_membership_auc{attack}        the AUC of each succeeded membership audit, per attack it ran
  device_info{device}                 1, for the device the server encodes on
  gpu_memory_bytes{kind}              torch's allocated / reserved CUDA memory (absent on CPU)
  build_info{version}                 1, for the installed instahide-server version
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from instahide_server.interceptors.metrics import GrpcMetrics

logger = logging.getLogger(__name__)

# One batch on a GPU takes well under a millisecond; a large one on a small CPU, seconds.
BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 float("inf"))
# A quick CPU audit takes about a second; a challenge-sized one, many minutes.
AUDIT_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
                 float("inf"))
KEY_FAMILIES = ("disguised_nets",)  # the families with stored keys
SSIM_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, float("inf"))
AUC_BUCKETS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0, float("inf"))


class ServerMetrics:
    """Every metric the server exports, registered in ``self.registry``."""

    def __init__(self, *, device: torch.device | None = None) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, fds, ...
        self.grpc = GrpcMetrics(registry)
        self.images_encoded = Counter("instahide_images_encoded_total", "Images encoded.", ("family", "mode"),
                                      registry=registry)
        self.keys_stored = Gauge("instahide_keys_stored", "Keys in the key store, by family.", ("family",),
                                 registry=registry)
        self.encode_bytes_received = Counter("instahide_encode_bytes_received_total",
                                             "Serialized Encode request bytes received.", registry=registry)
        self.encode_bytes_sent = Counter("instahide_encode_bytes_sent_total",
                                         "Serialized Encode response bytes sent.", registry=registry)
        self.encode_batch_seconds = Histogram("instahide_encode_batch_seconds",
                                              "Seconds to check, encode and serialize one batch.",
                                              buckets=BATCH_BUCKETS, registry=registry)
        self.encode_streams_in_flight = Gauge("instahide_encode_streams_in_flight", "Open Encode streams.",
                                              registry=registry)
        self.encode_batches_in_flight = Gauge("instahide_encode_batches_in_flight",
                                              "Encode batches read but not yet answered, all streams.",
                                              registry=registry)
        self.seeded_batches = Counter("instahide_seeded_batches_total",
                                      "Batches encoded with an explicit seed.", registry=registry)
        self.encode_request_errors = Counter("instahide_encode_request_errors_total",
                                             "Encode requests answered with a per-request error, by status code "
                                             "and request field.", ("code", "field"), registry=registry)
        self.audit_queue_depth = Gauge("instahide_audit_queue_depth", "Audits waiting for a worker.",
                                       registry=registry)
        self.audits = Counter("instahide_audits_total", "Audits ended, by final state.", ("state",),
                              registry=registry)
        self.audit_seconds = Histogram("instahide_audit_seconds", "Running seconds of each audit that ran.",
                                       buckets=AUDIT_BUCKETS, registry=registry)
        self.audit_max_ssim = Histogram("instahide_audit_max_ssim",
                                        "Max_SSIM of each succeeded audit, per attack it ran.", ("attack", "bound"),
                                        buckets=SSIM_BUCKETS, registry=registry)
        self.audit_membership_auc = Histogram("instahide_audit_membership_auc",
                                              "AUC of each succeeded membership audit, per attack it ran.",
                                              ("attack",), buckets=AUC_BUCKETS, registry=registry)
        info = Gauge("instahide_device_info", "1, for the device the server encodes on.", ("device",),
                     registry=registry)
        build = Gauge("instahide_build_info", "1, for the installed instahide-server version.", ("version",),
                      registry=registry)
        build.labels(version()).set(1)
        if device is not None:
            info.labels(str(device)).set(1)
            if device.type == "cuda":
                registry.register(_CudaMemoryCollector(device))


    def set_keys_stored(self, counts: dict[str, int]) -> None:
        """Set the keys-stored gauge from the store's counts (a family with none shows 0)."""
        for family in {*KEY_FAMILIES, *counts}:
            self.keys_stored.labels(family).set(counts.get(family, 0))


class _CudaMemoryCollector(Collector):
    """torch's allocated and reserved bytes on the device, read at scrape time."""

    def __init__(self, device: torch.device) -> None:
        self._device = device

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("instahide_gpu_memory_bytes", "CUDA memory held by torch, by kind.",
                                   labels=("kind",))
        family.add_metric(("allocated",), float(torch.cuda.memory_allocated(self._device)))
        family.add_metric(("reserved",), float(torch.cuda.memory_reserved(self._device)))
        yield family


class MetricsEndpoint:
    """``/metrics`` over HTTP, in a daemon thread; ``close`` stops it."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def start_endpoint(metrics: ServerMetrics, host: str, port: int) -> MetricsEndpoint:
    """Serve ``metrics`` on ``host:port`` (0 = a free port). Raises OSError when it cannot bind."""
    httpd, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsEndpoint(httpd, thread)


def version() -> str:
    """The installed instahide-server version (\"unknown\" when it is not installed)."""
    try:
        return importlib.metadata.version("instahide-server")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
