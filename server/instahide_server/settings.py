"""Every server setting, declared once.

This table makes the command-line flags (``--max-message-bytes``), their ``INSTAHIDE_*`` variables
(``INSTAHIDE_MAX_MESSAGE_BYTES``), ``instahide-server --help`` and the settings table of docs/operations.md
(``python -m instahide_server.settings`` prints it; a test fails when the doc drifts). A flag wins over its
variable, a variable over the default. Nothing here imports torch: ``--help`` and a bad flag answer at once.

Ranges that one setting alone decides are checked here (``Setting.check``); those that concern several
settings together are checked by ``config.ServerConfig.check``.
"""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MIB = 1 << 20
DEFAULT_METRICS_PORT = 9464  # the port OpenTelemetry's Prometheus exporter also defaults to

SECTIONS = {
    "server": "Server",
    "transport": "Transport: address, TLS, health port, limits",
    "transforms": "Transforms: device, public pool, encoding",
    "metrics": "Metrics",
    "audits": "Audits",
    "keys": "Keys: the store of long-lived transform keys (DisguisedNets)",
}


@dataclass(frozen=True)
class Setting:
    """One setting: its flag, variable, type, default, check and help.

    Attributes:
        name: the flag without its dashes, underscored: ``max_message_bytes`` is ``--max-message-bytes`` and
            ``INSTAHIDE_MAX_MESSAGE_BYTES``.
        section: the config section it lands in (``SECTIONS``), as ``config.ServerConfig.<section>.<attr>``.
        attr: its attribute there.
        parse: text (of a flag or variable) to value; ValueError for text it cannot use.
        default: the value when neither is given (None: off, or worked out at start, as ``default_text`` says).
        help: what it does, for ``--help`` and the docs.
        default_text: how ``--help`` and the docs show the default, when not the value itself.
        metavar: the flag's argument in ``--help``.
        check: the complaint about a value out of range, or None.
    """

    name: str
    section: str
    attr: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    default_text: str | None = None
    metavar: str | None = None
    check: Callable[[Any], str | None] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "INSTAHIDE_" + self.name.upper()

    @property
    def shown_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        return "none" if self.default is None else str(self.default)


def at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v is None or v >= low else f"must be at least {low}, got {v}"


def port_number(value: int | None) -> str | None:
    return None if value is None or 0 <= value <= 65535 else f"must be in [0, 65535], got {value}"


def device_name(value: str) -> str:
    prefix, _, index = value.partition(":")
    if value in ("auto", "cpu", "cuda") or (prefix == "cuda" and index.isdigit()):
        return value
    raise ValueError("expected auto, cpu, cuda or cuda:N")


def shapes(value: str) -> tuple[tuple[int, int, int], ...]:
    """"32x32x3,64x64x3" → ((32, 32, 3), (64, 64, 3)); "" or "none" → ()."""
    if value.strip().lower() in ("", "none"):
        return ()
    out = []
    for item in value.split(","):
        dims = item.strip().lower().split("x")
        if len(dims) != 3 or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise ValueError(f"expected HxWxC shapes like 32x32x3, got {item.strip()!r}")
        out.append((int(dims[0]), int(dims[1]), int(dims[2])))
    return tuple(out)


def log_level(value: str) -> str:
    level = value.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def window(value: int) -> str | None:
    return None if value == 0 or 65535 <= value < 2**31 else f"must be 0 or in [65535, 2**31), got {value}"


Path = pathlib.Path
S = Setting
SETTINGS: tuple[Setting, ...] = (
    # server
    S("device", "server", "device", device_name, "auto",
      "auto (CUDA when present, else the CPU), cpu, cuda or cuda:N: where images are encoded and attacked"),
    S("log_level", "server", "log_level", log_level, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    S("grace_seconds", "server", "grace_seconds", float, 30.0,
      "on SIGTERM: health turns NOT_SERVING, new calls get UNAVAILABLE and in-flight calls get this long to "
      "finish (one still open then ends UNAVAILABLE), then the server exits 0", check=at_least(0)),
    # transport
    S("host", "transport", "host", str, "127.0.0.1", "address to listen on"),
    S("port", "transport", "port", int, 50051, "port to listen on; 0 picks a free one", check=port_number),
    S("port_file", "transport", "port_file", Path, None, "write the bound port to this file once serving",
      metavar="PATH"),
    S("token_file", "transport", "token_file", Path, None,
      "require 'authorization: Bearer <token>', with the token in this file (or the token itself in "
      "INSTAHIDE_TOKEN); or lines of 'principal token', each principal seeing only its own keys; health stays "
      "open for probes", metavar="PATH"),
    S("tls_cert_file", "transport", "tls_cert_file", Path, None,
      "serve TLS with this PEM certificate chain, leaf first; needs --tls-key-file", default_text="none (plaintext)",
      metavar="PATH"),
    S("tls_key_file", "transport", "tls_key_file", Path, None,
      "the certificate's private key, unencrypted PEM (readable by the service user only; never logged)",
      metavar="PATH"),
    S("tls_client_ca_file", "transport", "tls_client_ca_file", Path, None,
      "mutual TLS: require a client certificate signed by a CA in this file (needs --tls-cert-file)",
      metavar="PATH"),
    S("health_port", "transport", "health_port", int, None,
      "also serve grpc.health.v1 alone, in plaintext, on this port: for probes that cannot do (m)TLS, and "
      "outside --max-concurrent-rpcs; 0 picks a free port", check=port_number),
    S("health_port_file", "transport", "health_port_file", Path, None,
      "write the bound health port to this file once serving (needs --health-port)", metavar="PATH"),
    S("max_message_bytes", "transport", "max_message_bytes", int, 64 * MIB,
      "largest message received or sent; gRPC's own 4 MiB breaks at about 340 float32 32x32x3 images",
      default_text="67108864 (64 MiB)", check=at_least(64 * 1024)),
    S("max_concurrent_rpcs", "transport", "max_concurrent_rpcs", int, None,
      "calls in progress at once, server-wide (a stream counts for its whole life); more answer "
      "RESOURCE_EXHAUSTED, health checks included", default_text="no limit", check=at_least(1)),
    S("max_concurrent_streams", "transport", "max_concurrent_streams", int, None,
      "calls at once on one client connection (HTTP/2); the client queues the rest", default_text="no limit",
      check=at_least(1)),
    S("stream_window_bytes", "transport", "stream_window_bytes", int, 4 * MIB,
      "HTTP/2 receive window per stream: what a client may send ahead of the server reading it; 0 lets gRPC "
      "grow it by BDP probing, with no fixed cap", default_text="4194304 (4 MiB)", check=window),
    # transforms
    S("pool", "transforms", "pool", Path, None,
      "the public pool: a .npy of uint8 (P, H, W, C) or a folder of images of one size",
      default_text="the bundled pool", metavar="PATH"),
    S("pool_photos", "transforms", "pool_photos", Path, None,
      "instead of --pool: a folder of photos to cut the pool from, at a seed drawn from the CSPRNG at each "
      "start and kept in memory only; audits can then run the photo-aware attack", metavar="DIR"),
    S("pool_size", "transforms", "pool_size", int, None,
      "images in a pool the server cuts (the bundled one or --pool-photos); a larger pool mixes each public "
      "image into fewer encodings (docs/operations.md: memory)", default_text="2048", check=at_least(1)),
    S("cache_dir", "transforms", "cache_dir", Path, None, "where the bundled pool is cached",
      default_text="$INSTAHIDE_CACHE_DIR, else ~/.cache/instahide", metavar="DIR"),
    S("max_pool_shapes", "transforms", "max_pool_shapes", int, 8,
      "public pools (one per image shape) kept at once, the least recently used dropped", check=at_least(1)),
    S("warm_shapes", "transforms", "warm_shapes", shapes, ((32, 32, 3),),
      "image shapes whose pool is built in the background at start: comma-separated HxWxC, or none",
      default_text="32x32x3", metavar="SHAPES"),
    S("workers", "transforms", "workers", int, max(1, min(4, os.cpu_count() or 1)),
      "encoding threads, off the event loop", default_text="cores, at most 4", check=at_least(1)),
    S("max_images_per_request", "transforms", "max_images_per_request", int, 65536,
      "more images in one request answer RESOURCE_EXHAUSTED", check=at_least(1)),
    S("max_in_flight_per_stream", "transforms", "max_in_flight_per_stream", int, 4,
      "batches read but not yet answered, per stream (backpressure)", check=at_least(1)),
    # metrics
    S("metrics_port", "metrics", "port", int, None,
      "serve Prometheus metrics on http://HOST:PORT/metrics; 0 turns it off (or, with --metrics-port-file, "
      "binds a free port). The default port, when taken, gives a warning and no metrics; a port given "
      "explicitly must be free", default_text=str(DEFAULT_METRICS_PORT), check=port_number),
    S("metrics_host", "metrics", "host", str, None, "address the metrics endpoint listens on",
      default_text="the same as --host"),
    S("metrics_port_file", "metrics", "port_file", Path, None, "write the bound metrics port to this file",
      metavar="PATH"),
    # audits
    S("state_dir", "audits", "state_dir", Path, None,
      "folder of the audit database (instahide.db) and the key store (keys.db), SQLite; when it cannot be used, "
      "audits and keys are disabled (UNAVAILABLE) and InstaHide encoding goes on",
      default_text="$XDG_STATE_HOME/instahide, else ~/.local/state/instahide",
      metavar="DIR"),
    S("data_root", "audits", "data_root", Path, None,
      "folder of server-side datasets (.npz) that audits may name; none: audits upload their inputs",
      metavar="DIR"),
    S("audit_workers", "audits", "workers", int, None, "audits run at once",
      default_text="one per CUDA device, else 1", check=at_least(1)),
    S("audit_queue_size", "audits", "queue_size", int, 16,
      "audits waiting for a worker; more answer RESOURCE_EXHAUSTED", check=at_least(1)),
    S("audit_timeout_seconds", "audits", "timeout_seconds", float, 3600.0,
      "a running audit taking longer fails with 'time limit exceeded'",
      check=lambda v: None if v > 0 else f"must be positive, got {v}"),
    S("audit_max_images", "audits", "max_images", int, 10000,
      "images (or encodings) in one audit; more answer RESOURCE_EXHAUSTED", check=at_least(2)),
    S("audit_pool_memory_mib", "audits", "pool_memory_mib", int, 1024,
      "memory each search of a public pool by an attack may hold: the pool's Gram matrix is kept only when it "
      "fits, larger pools are searched in smaller batches (a quarter more for shared rows); the key-aware "
      "bound solves the reused public images whose normal matrix fits in it", check=at_least(1)),
    S("audit_refine_sets", "audits", "refine_sets", int, 0,
      "sets the ciphertext-only attack simulates to train a refiner of its recoveries: a stronger attacker "
      "at the cost of one more attack per set (4 sets add about 5 minutes to a 100 x 50 audit on two CPU "
      "cores); 0 turns it off", check=at_least(0)),
    S("audit_refine_steps", "audits", "refine_steps", int, 1200, "training steps of that refiner",
      check=at_least(1)),
    S("audit_retention_days", "audits", "retention_days", float, 30.0,
      "ended audits older than this are deleted; 0 keeps them forever", check=at_least(0)),
    S("audit_db_max_bytes", "audits", "db_max_bytes", int, 0,
      "cap on the audit database's size: past it new audits answer UNAVAILABLE, as on a full disk; 0: none",
      check=at_least(0)),
    # keys
    S("key_encryption_key_file", "keys", "kek_file", Path, None,
      "the key-encryption key (32 bytes, base64) that wraps every stored key with AES-GCM; created (mode 0600) "
      "on first start when absent; a missing or different one for a store that holds keys refuses the start. "
      "Replicas that share keys mount the same one", default_text="STATE_DIR/key-encryption-key",
      metavar="PATH"),
    S("key_import_dir", "keys", "import_dir", Path, None,
      "at start, import every key exported into this folder (`instahide keys export`; sealed under the same "
      "key-encryption key), each owned by its exporter: replicas that mount the same folder serve the same keys; "
      "a file that does not open refuses the start", metavar="DIR"),
)
del S
BY_NAME = {setting.name: setting for setting in SETTINGS}


def markdown_table() -> str:
    """The settings as the Markdown table of docs/operations.md, section by section."""
    lines = []
    for section, title in SECTIONS.items():
        lines += [f"**{title}**", "", "| flag | variable | default | meaning |", "|---|---|---|---|"]
        for s in (s for s in SETTINGS if s.section == section):
            lines.append(f"| `{s.flag}` | `{s.env}` | {s.shown_default} | {s.help} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
