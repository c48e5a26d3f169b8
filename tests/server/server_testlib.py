"""Helpers for the server tests: requests, channels and whole streams over the generated stubs."""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
import urllib.request
from collections.abc import Iterable, Iterator, Sequence

import grpc
import numpy as np
from instahide_client.instahide.v1 import instahide_pb2, tensor_pb2, transform_pb2, transform_pb2_grpc
from instahide_client.tensors import to_numpy, to_tensor
from prometheus_client.parser import text_string_to_metric_families
from serverproc import run_server, start_server  # noqa: F401 - re-exported to the server tests

MIB = 1 << 20
NUM_CLASSES = 10
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]


def images(n: int = 8, shape: Sequence[int] = (32, 32, 3), *, seed: int = 0) -> np.ndarray:
    """A uint8 (n, *shape) batch of random pixels."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def config(*, output_dtype: int = 0, **instahide) -> transform_pb2.EncodeConfig:
    """An InstaHide EncodeConfig of ``instahide`` (InstaHideConfig's fields) with num_classes=NUM_CLASSES unless
    given."""
    instahide.setdefault("num_classes", NUM_CLASSES)
    return transform_pb2.EncodeConfig(output_dtype=output_dtype, instahide=instahide_pb2.InstaHideConfig(**instahide))


def request(request_id: str, batch: np.ndarray | None = None, *, labels: Sequence[int] | None = None,
            cfg: transform_pb2.EncodeConfig | None = None, tensor: tensor_pb2.Tensor | None = None,
            ) -> transform_pb2.EncodeRequest:
    """A request for ``batch`` (default: 8 random 32×32×3 images) with labels i % NUM_CLASSES."""
    if tensor is None:
        batch = images() if batch is None else batch
        tensor = to_tensor(batch)
    n = int(tensor.shape[0]) if len(tensor.shape) else 0
    labels = [i % NUM_CLASSES for i in range(n)] if labels is None else list(labels)
    message = transform_pb2.EncodeRequest(request_id=request_id, images=tensor, labels=labels)
    if cfg is not None:
        message.config.CopyFrom(cfg)
    return message


@contextlib.contextmanager
def channel(target: str, *, max_bytes: int = 64 * MIB) -> Iterator[grpc.Channel]:
    """An insecure channel with explicit message limits."""
    options = [("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes)]
    with grpc.insecure_channel(target, options=options) as chan:
        yield chan


def encode_all(target: str, requests: Iterable[transform_pb2.EncodeRequest], *, metadata=None,
               timeout: float = 60.0) -> list[transform_pb2.EncodeResponse]:
    """Run one Encode stream to the end and return its responses."""
    with channel(target) as chan:
        stub = transform_pb2_grpc.TransformServiceStub(chan)
        return list(stub.Encode(iter(requests), metadata=metadata, timeout=timeout))


def ok(response: transform_pb2.EncodeResponse) -> transform_pb2.EncodeResponse:
    """Assert a response carries no error and return it."""
    assert not response.HasField("error"), response.error
    return response


def encoded(response: transform_pb2.EncodeResponse) -> np.ndarray:
    return to_numpy(ok(response).encoded)


@contextlib.contextmanager
def start_env_server(tmp_path: pathlib.Path, env: dict[str, str], timeout: float = 60.0,
                     ) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``python -m instahide_server`` with no flags at all: every setting from ``INSTAHIDE_*``."""
    port_file = tmp_path / "env-port"
    with run_server([], port_file=port_file, log_path=tmp_path / "env-server.log",
                    env={"INSTAHIDE_PORT_FILE": str(port_file), **env},
                    host=env.get("INSTAHIDE_HOST", "127.0.0.1"), timeout=timeout) as server:
        yield server.target, server.process


def metric(metrics_port: int, name: str, **labels: str) -> float:
    """One sample of the server's ``/metrics`` (0 when absent), e.g. ``metric(port, "x_total", mode="cross")``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def rss_mib(pid: int) -> float:
    """A process's resident memory (VmRSS), in MiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
