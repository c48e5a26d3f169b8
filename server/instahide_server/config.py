"""The server's frozen configuration, built from command-line flags and ``INSTAHIDE_*`` variables.

Precedence, per setting: a flag given on the command line, else its environment variable, else the
default below. The token is the one setting with two sources: ``--token-file`` /
``INSTAHIDE_TOKEN_FILE`` (a file holding the token) wins over ``INSTAHIDE_TOKEN`` (the token itself).
The state directory, when neither ``--state-dir`` nor ``INSTAHIDE_STATE_DIR`` is given, is the
per-user state folder: ``$XDG_STATE_HOME/instahide``, else ``~/.local/state/instahide``.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from instahide_client.tokens import read_token_file

MIB = 1 << 20
DEFAULT_METRICS_PORT = 9464  # the port OpenTelemetry's Prometheus exporter also defaults to


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the flag or variable."""


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs to start; immutable once built."""

    host: str = "127.0.0.1"
    port: int = 50051  # 0 binds an ephemeral port
    port_file: pathlib.Path | None = None  # the bound port is written here once serving
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    pool: pathlib.Path | None = None  # .npy or folder of images; None = the bundled default pool
    pool_photos: pathlib.Path | None = None  # folder of photos to cut the pool from at a secret seed
    pool_size: int | None = None  # images in a pool the server cuts (default or from pool_photos); None = ops' default
    cache_dir: pathlib.Path | None = None  # where the default pool is cached; None = ops' default
    token: str | None = field(default=None, repr=False)  # bearer token; None disables auth
    # Transport security: PEM files (read and checked by tls.load_tls). Paths only; the key never sits here.
    tls_cert_file: pathlib.Path | None = None  # certificate chain, leaf first; with tls_key_file turns TLS on
    tls_key_file: pathlib.Path | None = None
    tls_client_ca_file: pathlib.Path | None = None  # mutual TLS: client certificates signed by this CA required
    max_message_bytes: int = 64 * MIB  # applies to received and sent messages
    max_images_per_request: int = 65536
    max_in_flight_per_stream: int = 4
    max_concurrent_rpcs: int | None = None  # calls in progress at once, server-wide; None = unlimited
    max_concurrent_streams: int | None = None  # HTTP/2 streams per client connection; None = gRPC's (no limit)
    stream_window_bytes: int = 4 * MIB  # HTTP/2 receive window per stream; 0 = gRPC's automatic (BDP) window
    # A second, plaintext port serving grpc.health.v1 only: reachable by probes that cannot do (m)TLS and
    # not counted against max_concurrent_rpcs. None = no such port; 0 = a free one (see health_port_file).
    health_port: int | None = None
    health_port_file: pathlib.Path | None = None  # the bound health port is written here once serving
    max_pool_shapes: int = 8  # distinct (H, W, C) pools kept; least recently used dropped beyond
    warm_shapes: tuple[tuple[int, int, int], ...] = ((32, 32, 3),)  # pools built in the background at start
    workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    grace_seconds: float = 30.0
    log_level: str = "INFO"
    # Metrics (Prometheus text on http://metrics_host:metrics_port/metrics).
    metrics_port: int | None = None  # None = DEFAULT_METRICS_PORT if free (else a warning); 0 = no endpoint
    metrics_host: str | None = None  # None = the same as host
    metrics_port_file: pathlib.Path | None = None  # the bound metrics port is written here once serving
    # Audits.
    state_dir: pathlib.Path | None = None  # the audit database's folder; None = the per-user state folder
    data_root: pathlib.Path | None = None  # server-side datasets an audit may name; None = none allowed
    audit_workers: int | None = None  # audits run at once; None = one per CUDA device, else 1
    audit_queue_size: int = 16  # audits waiting for a worker; more answer RESOURCE_EXHAUSTED
    audit_timeout_seconds: float = 3600.0  # a running audit past this fails with "time limit exceeded"
    audit_max_images: int = 10000  # private images (or encodings) in one audit
    # Working memory of each pool-aware attack's pursuits over the public pool (pursuit.PoolGram): the pool's
    # Gram matrix is kept only when it fits, batches shrink to fit, and shared rows take up to a quarter more.
    # pursuit.WORKING_BYTES in MiB, written out so that reading the settings does not import torch.
    audit_pool_memory_mib: int = 1024
    # The ciphertext-only attack's self-refinement (attacks.self_refine): simulated sets, 0 = off; training steps.
    # On two CPU cores 4 sets and 1,200 steps add about 5 minutes to a 100 × 50 audit.
    audit_refine_sets: int = 0
    audit_refine_steps: int = 1200
    audit_retention_days: float = 30.0  # ended audits older than this are deleted; 0 keeps them forever
    audit_db_max_bytes: int = 0  # cap on the audit database's size (writes past it fail as on a full disk); 0 = none

    @classmethod
    def from_args_and_env(cls, args: Any, environ: Mapping[str, str] | None = None) -> ServerConfig:
        """Merge parsed flags (``None`` = not given) with ``INSTAHIDE_*`` variables and defaults.

        Raises:
            ConfigError: a value that does not parse or is out of range, naming its source.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in _SETTINGS:
            flag_value = getattr(args, spec.name, None)
            if flag_value is not None:
                values[spec.name] = _convert(spec, flag_value, f"--{spec.name.replace('_', '-')}")
            elif spec.env in environ and environ[spec.env] != "":
                values[spec.name] = _convert(spec, environ[spec.env], spec.env)
        token_file = getattr(args, "token_file", None) or environ.get("INSTAHIDE_TOKEN_FILE") or None
        if token_file is not None:
            values["token"] = _read_token(pathlib.Path(token_file))
        elif environ.get("INSTAHIDE_TOKEN"):
            values["token"] = environ["INSTAHIDE_TOKEN"].strip()
        if "state_dir" not in values:
            values["state_dir"] = default_state_dir(environ)
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Raise ConfigError when a setting is out of range."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if self.health_port is not None and not 0 <= self.health_port <= 65535:
            raise ConfigError(f"health_port must be in [0, 65535], got {self.health_port}")
        if self.health_port_file is not None and self.health_port is None:
            raise ConfigError("--health-port-file needs --health-port (0 picks a free port)")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be in [0, 65535], got {self.metrics_port}")
        if self.device != "auto" and self.device != "cpu" and not _is_cuda_name(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.max_message_bytes < 64 * 1024:
            raise ConfigError(f"max_message_bytes must be at least 65536, got {self.max_message_bytes}")
        for name in ("max_images_per_request", "max_in_flight_per_stream", "max_pool_shapes", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_concurrent_rpcs", "max_concurrent_streams"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (leave it unset for no limit), "
                                  f"got {getattr(self, name)}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given, missing = (("--tls-cert-file", "--tls-key-file") if self.tls_key_file is None
                              else ("--tls-key-file", "--tls-cert-file"))
            raise ConfigError(f"{given} needs {missing} too (TLS takes a certificate and its key)")
        if self.pool is not None and self.pool_photos is not None:
            raise ConfigError("--pool and --pool-photos both name the public pool: give one (--pool for the "
                              "pool's images, --pool-photos for photos to cut it from)")
        if self.pool_size is not None and self.pool is not None:
            raise ConfigError("--pool-size sizes a pool the server cuts (the bundled one or --pool-photos); "
                              "--pool gives the pool's images, so its size is theirs")
        if self.pool_size is not None and self.pool_size < 1:
            raise ConfigError(f"pool_size must be at least 1, got {self.pool_size}")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError("--tls-client-ca-file (mutual TLS) needs --tls-cert-file and --tls-key-file: "
                              "the server must have its own certificate")
        if self.stream_window_bytes != 0 and not 65535 <= self.stream_window_bytes < 2**31:
            raise ConfigError(f"stream_window_bytes must be 0 or in [65535, 2**31), got {self.stream_window_bytes}")
        if self.grace_seconds < 0:
            raise ConfigError(f"grace_seconds must not be negative, got {self.grace_seconds}")
        if self.token is not None and not self.token:
            raise ConfigError("the bearer token is empty")
        if self.audit_workers is not None and self.audit_workers < 1:
            raise ConfigError(f"audit_workers must be at least 1, got {self.audit_workers}")
        if self.audit_queue_size < 1:
            raise ConfigError(f"audit_queue_size must be at least 1, got {self.audit_queue_size}")
        if self.audit_pool_memory_mib < 1:
            raise ConfigError(f"audit_pool_memory_mib must be at least 1, got {self.audit_pool_memory_mib}")
        if self.audit_refine_sets < 0:
            raise ConfigError(f"audit_refine_sets must not be negative, got {self.audit_refine_sets}")
        if self.audit_refine_steps < 1:
            raise ConfigError(f"audit_refine_steps must be at least 1, got {self.audit_refine_steps}")
        if self.audit_max_images < 2:
            raise ConfigError(f"audit_max_images must be at least 2, got {self.audit_max_images}")
        if not self.audit_timeout_seconds > 0:
            raise ConfigError(f"audit_timeout_seconds must be positive, got {self.audit_timeout_seconds}")
        if not self.audit_retention_days >= 0:
            raise ConfigError(f"audit_retention_days must not be negative, got {self.audit_retention_days}")
        if self.audit_db_max_bytes < 0:
            raise ConfigError(f"audit_db_max_bytes must not be negative, got {self.audit_db_max_bytes}")

    @property
    def audit_pool_memory_bytes(self) -> int:
        """``audit_pool_memory_mib`` in bytes."""
        return self.audit_pool_memory_mib * MIB

    @property
    def resolved_metrics_host(self) -> str:
        """``metrics_host``, or ``host`` when it is not set."""
        return self.metrics_host if self.metrics_host is not None else self.host

    @property
    def resolved_state_dir(self) -> pathlib.Path:
        """``state_dir``, or the per-user state folder when it is not set."""
        return self.state_dir if self.state_dir is not None else default_state_dir(os.environ)


def default_state_dir(environ: Mapping[str, str]) -> pathlib.Path:
    """``$XDG_STATE_HOME/instahide``, else ``~/.local/state/instahide``."""
    base = environ.get("XDG_STATE_HOME")
    if base and pathlib.Path(base).is_absolute():  # the XDG spec ignores relative values
        return pathlib.Path(base) / "instahide"
    return pathlib.Path.home() / ".local" / "state" / "instahide"


@dataclass(frozen=True)
class _Setting:
    name: str
    convert: Callable[[str], Any]

    @property
    def env(self) -> str:
        return "INSTAHIDE_" + self.name.upper()


def _shapes(value: str) -> tuple[tuple[int, int, int], ...]:
    """"32x32x3,64x64x3" → ((32, 32, 3), (64, 64, 3)); "" or "none" → ()."""
    if value.strip().lower() in ("", "none"):
        return ()
    shapes = []
    for item in value.split(","):
        dims = item.strip().lower().split("x")
        if len(dims) != 3 or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise ValueError(f"expected HxWxC shapes like 32x32x3, got {item.strip()!r}")
        shapes.append((int(dims[0]), int(dims[1]), int(dims[2])))
    return tuple(shapes)


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"unknown log level {value!r}")
    return level


_SETTINGS = (
    _Setting("host", str),
    _Setting("port", int),
    _Setting("port_file", pathlib.Path),
    _Setting("device", str),
    _Setting("pool", pathlib.Path),
    _Setting("pool_photos", pathlib.Path),
    _Setting("pool_size", int),
    _Setting("cache_dir", pathlib.Path),
    _Setting("max_message_bytes", int),
    _Setting("max_images_per_request", int),
    _Setting("max_in_flight_per_stream", int),
    _Setting("max_concurrent_rpcs", int),
    _Setting("max_concurrent_streams", int),
    _Setting("tls_cert_file", pathlib.Path),
    _Setting("tls_key_file", pathlib.Path),
    _Setting("tls_client_ca_file", pathlib.Path),
    _Setting("health_port", int),
    _Setting("health_port_file", pathlib.Path),
    _Setting("stream_window_bytes", int),
    _Setting("max_pool_shapes", int),
    _Setting("warm_shapes", _shapes),
    _Setting("workers", int),
    _Setting("grace_seconds", float),
    _Setting("log_level", _log_level),
    _Setting("metrics_port", int),
    _Setting("metrics_host", str),
    _Setting("metrics_port_file", pathlib.Path),
    _Setting("state_dir", pathlib.Path),
    _Setting("data_root", pathlib.Path),
    _Setting("audit_workers", int),
    _Setting("audit_queue_size", int),
    _Setting("audit_timeout_seconds", float),
    _Setting("audit_max_images", int),
    _Setting("audit_pool_memory_mib", int),
    _Setting("audit_refine_sets", int),
    _Setting("audit_refine_steps", int),
    _Setting("audit_retention_days", float),
    _Setting("audit_db_max_bytes", int),
)
assert {s.name for s in _SETTINGS} | {"token"} == {f.name for f in fields(ServerConfig)}


def _convert(spec: _Setting, value: Any, source: str) -> Any:
    try:
        return spec.convert(str(value))
    except ValueError as exc:
        raise ConfigError(f"{source}: cannot use {value!r}: {exc}") from None


def _read_token(path: pathlib.Path) -> str:
    try:
        return read_token_file(path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _is_cuda_name(device: str) -> bool:
    if device == "cuda":
        return True
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()
