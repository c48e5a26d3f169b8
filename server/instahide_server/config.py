"""The server's frozen configuration: ``settings.SETTINGS`` read from flags and ``INSTAHIDE_*`` variables.

Precedence, per setting: a flag given on the command line, else its environment variable, else the table's
default. The bearer token has two sources: ``--token-file`` / ``INSTAHIDE_TOKEN_FILE`` (a file holding it) wins
over ``INSTAHIDE_TOKEN`` (the token itself). Settings land in sections (``config.transport.port``,
``config.audits.queue_size``) as the table says.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from instahide_server.settings import DEFAULT_METRICS_PORT, MIB, SETTINGS, Setting

DEFAULT_PRINCIPAL = "default"  # who holds the token of a one-token file or INSTAHIDE_TOKEN
PRINCIPAL_PATTERN = re.compile(r"[A-Za-z0-9._@-]{1,64}")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the flag or variable."""


def _defaults(section: str) -> dict[str, Any]:
    return {s.attr: s.default for s in SETTINGS if s.section == section}


@dataclass(frozen=True)
class TransportConfig:
    """Where and how the server listens (``settings`` section "transport")."""

    host: str
    port: int
    port_file: pathlib.Path | None
    token_file: pathlib.Path | None
    tls_cert_file: pathlib.Path | None
    tls_key_file: pathlib.Path | None
    tls_client_ca_file: pathlib.Path | None
    health_port: int | None
    health_port_file: pathlib.Path | None
    max_message_bytes: int
    max_concurrent_rpcs: int | None
    max_concurrent_streams: int | None
    stream_window_bytes: int
    # principal -> bearer token, from token_file or INSTAHIDE_TOKEN (principal "default"); None: no auth
    tokens: dict[str, str] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TransformConfig:
    """The transforms' device resources: the public pool and the encoding threads ("transforms")."""

    pool: pathlib.Path | None
    pool_photos: pathlib.Path | None
    pool_size: int | None
    cache_dir: pathlib.Path | None
    max_pool_shapes: int
    warm_shapes: tuple[tuple[int, int, int], ...]
    workers: int
    max_images_per_request: int
    max_in_flight_per_stream: int


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint ("metrics")."""

    port: int | None  # None: DEFAULT_METRICS_PORT if free (else a warning); 0: no endpoint
    host: str | None  # None: the transport's host
    port_file: pathlib.Path | None


@dataclass(frozen=True)
class AuditConfig:
    """The audit runner and its store ("audits")."""

    state_dir: pathlib.Path | None  # None: the per-user state folder
    data_root: pathlib.Path | None
    workers: int | None  # None: one per CUDA device, else 1
    queue_size: int
    timeout_seconds: float
    max_images: int
    pool_memory_mib: int
    refine_sets: int
    refine_steps: int
    retention_days: float
    db_max_bytes: int

    @property
    def pool_memory_bytes(self) -> int:
        return self.pool_memory_mib * MIB


@dataclass(frozen=True)
class KeysConfig:
    """The key store ("keys"); it lives in the audits' state directory."""

    kek_file: pathlib.Path | None  # None: STATE_DIR/key-encryption-key
    import_dir: pathlib.Path | None


_SECTIONS = {"transport": TransportConfig, "transforms": TransformConfig, "metrics": MetricsConfig,
             "audits": AuditConfig, "keys": KeysConfig}


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs to start; immutable once built (``from_args_and_env``)."""

    device: str = "auto"
    log_level: str = "INFO"
    grace_seconds: float = 30.0
    transport: TransportConfig = field(default_factory=lambda: TransportConfig(**_defaults("transport")))
    transforms: TransformConfig = field(default_factory=lambda: TransformConfig(**_defaults("transforms")))
    metrics: MetricsConfig = field(default_factory=lambda: MetricsConfig(**_defaults("metrics")))
    audits: AuditConfig = field(default_factory=lambda: AuditConfig(**_defaults("audits")))
    keys: KeysConfig = field(default_factory=lambda: KeysConfig(**_defaults("keys")))

    @classmethod
    def from_args_and_env(cls, args: Any, environ: Mapping[str, str] | None = None) -> ServerConfig:
        """Merge parsed flags (``None`` = not given) with ``INSTAHIDE_*`` variables and the defaults.

        Raises:
            ConfigError: a value that does not parse or is out of range, naming its source.
        """
        environ = os.environ if environ is None else environ
        sections: dict[str, dict[str, Any]] = {name: _defaults(name) for name in (*_SECTIONS, "server")}
        for setting in SETTINGS:
            flag_value = getattr(args, setting.name, None)
            if flag_value is not None:
                value, source = _parse(setting, flag_value, setting.flag), setting.flag
            elif environ.get(setting.env):
                value, source = _parse(setting, environ[setting.env], setting.env), setting.env
            else:
                continue
            problem = setting.check(value) if setting.check is not None else None
            if problem:
                raise ConfigError(f"{source}: {problem}")
            sections[setting.section][setting.attr] = value
        transport = sections["transport"]
        if transport["token_file"] is not None:
            transport["tokens"] = read_tokens(transport["token_file"])
        elif environ.get("INSTAHIDE_TOKEN"):
            transport["tokens"] = {DEFAULT_PRINCIPAL: environ["INSTAHIDE_TOKEN"].strip()}
        if sections["audits"]["state_dir"] is None:
            sections["audits"]["state_dir"] = default_state_dir(environ)
        config = cls(**sections["server"], **{name: kind(**sections[name]) for name, kind in _SECTIONS.items()})
        config.check()
        return config

    def check(self) -> None:
        """Raise ConfigError for settings that do not fit together (each one's own range is its ``check``)."""
        t, p = self.transport, self.transforms
        if t.health_port_file is not None and t.health_port is None:
            raise ConfigError("--health-port-file needs --health-port (0 picks a free port)")
        if (t.tls_cert_file is None) != (t.tls_key_file is None):
            given, missing = (("--tls-cert-file", "--tls-key-file") if t.tls_key_file is None
                              else ("--tls-key-file", "--tls-cert-file"))
            raise ConfigError(f"{given} needs {missing} too (TLS takes a certificate and its key)")
        if t.tls_client_ca_file is not None and t.tls_cert_file is None:
            raise ConfigError("--tls-client-ca-file (mutual TLS) needs --tls-cert-file and --tls-key-file: "
                              "the server must have its own certificate")
        if t.tokens is not None and not all(t.tokens.values()):
            raise ConfigError("the bearer token is empty")
        if p.pool is not None and p.pool_photos is not None:
            raise ConfigError("--pool and --pool-photos both name the public pool: give one (--pool for the "
                              "pool's images, --pool-photos for photos to cut it from)")
        if p.pool_size is not None and p.pool is not None:
            raise ConfigError("--pool-size sizes a pool the server cuts (the bundled one or --pool-photos); "
                              "--pool gives the pool's images, so its size is theirs")

    @property
    def metrics_port(self) -> int:
        """The metrics port to bind: the setting, or ``DEFAULT_METRICS_PORT`` when it is not set."""
        return DEFAULT_METRICS_PORT if self.metrics.port is None else self.metrics.port

    @property
    def metrics_host(self) -> str:
        """The metrics endpoint's address: the setting, or the transport's host."""
        return self.metrics.host if self.metrics.host is not None else self.transport.host

    @property
    def state_dir(self) -> pathlib.Path:
        """The audit database's folder: the setting, or the per-user state folder."""
        return self.audits.state_dir if self.audits.state_dir is not None else default_state_dir(os.environ)


def default_state_dir(environ: Mapping[str, str]) -> pathlib.Path:
    """``$XDG_STATE_HOME/instahide``, else ``~/.local/state/instahide``."""
    base = environ.get("XDG_STATE_HOME")
    if base and pathlib.Path(base).is_absolute():  # the XDG spec ignores relative values
        return pathlib.Path(base) / "instahide"
    return pathlib.Path.home() / ".local" / "state" / "instahide"


def _parse(setting: Setting, value: Any, source: str) -> Any:
    try:
        return setting.parse(str(value))
    except ValueError as exc:
        raise ConfigError(f"{source}: cannot use {value!r}: {exc}") from None


def read_tokens(path: pathlib.Path) -> dict[str, str]:
    """Principals and their bearer tokens from a tokens file: one bare token (principal "default"), or lines of
    ``principal token`` (blank lines and ``#`` comments skipped). ConfigError names the file and line, never a
    token."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    lines = [(number, line.split()) for number, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise ConfigError(f"the token file {path} is empty")
    if len(lines) == 1 and len(lines[0][1]) == 1:
        return {DEFAULT_PRINCIPAL: lines[0][1][0]}
    tokens: dict[str, str] = {}
    for number, words in lines:
        if len(words) != 2 or not PRINCIPAL_PATTERN.fullmatch(words[0]):
            raise ConfigError(f"the token file {path}, line {number}: expected 'principal token' (a principal of "
                              "letters, digits and . _ @ -), or a file of one bare token")
        if words[0] in tokens:
            raise ConfigError(f"the token file {path}, line {number}: principal {words[0]!r} appears twice")
        if words[1] in tokens.values():
            raise ConfigError(f"the token file {path}, line {number}: two principals share one token")
        tokens[words[0]] = words[1]
    return tokens


assert {(s.section, s.attr) for s in SETTINGS} == {
    *(("server", f.name) for f in fields(ServerConfig) if f.name not in _SECTIONS),
    *((name, f.name) for name, kind in _SECTIONS.items() for f in fields(kind) if f.name != "tokens"),
}, "every setting has a config attribute and every attribute a setting"
