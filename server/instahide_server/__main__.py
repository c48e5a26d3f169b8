"""``instahide-server`` (``python -m instahide_server``): flags and ``INSTAHIDE_*`` variables → a server.

Every flag has an environment variable (``--max-message-bytes`` ↔ ``INSTAHIDE_MAX_MESSAGE_BYTES``);
a flag wins over its variable, a variable over the default. Exits 0 after a clean SIGTERM/SIGINT
drain, 2 on unusable settings (an unusable state directory is not one: it disables audits only).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from instahide_server.config import DEFAULT_METRICS_PORT, MIB, ConfigError, ServerConfig
from instahide_server.tls import load_tls

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    """The command line; every default is None so the config can tell "not given" from a value."""
    parser = argparse.ArgumentParser(
        prog="instahide-server",
        description="InstaHide encoding and leakage audits over gRPC. Each flag also reads INSTAHIDE_<FLAG> "
                    "(e.g. INSTAHIDE_PORT).",
    )
    add = parser.add_argument
    add("--host", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, help="port to listen on; 0 picks a free one (default 50051)")
    add("--port-file", help="write the bound port to this file once serving")
    add("--device", help="auto | cpu | cuda | cuda:N (default auto: CUDA when available, else CPU)")
    add("--pool", help="public pool: a .npy file or a folder of images (default: the bundled pool)")
    add("--pool-photos", metavar="DIR",
        help="a folder of photos to cut the public pool from, at a secret seed drawn at each start (instead of "
             "--pool); audits can then play the attacker who holds these photos but not the pool")
    add("--pool-size", type=int, metavar="N",
        help="images in the pool the server cuts, bundled or from --pool-photos (default 2048); a larger pool "
             "reuses each public image in fewer encodings")
    add("--cache-dir", help="where the bundled pool is cached (default ~/.cache/instahide)")
    add("--token-file", help="require 'authorization: Bearer <token>' with the token in this file "
                             "(INSTAHIDE_TOKEN_FILE; or the token itself in INSTAHIDE_TOKEN)")
    add("--max-message-bytes", type=int, help=f"largest message received or sent (default {64 * MIB})")
    add("--max-images-per-request", type=int, help="more images in one request answer RESOURCE_EXHAUSTED "
                                                   "(default 65536)")
    add("--max-in-flight-per-stream", type=int,
        help="requests read but not yet answered, per stream (default 4)")
    add("--max-concurrent-rpcs", type=int,
        help="calls in progress at once, server-wide (an Encode or WatchAudit stream counts for its whole "
             "life); more answer RESOURCE_EXHAUSTED, health checks included (default: no limit)")
    add("--max-concurrent-streams", type=int,
        help="HTTP/2 streams (calls) at once on one client connection; a client queues the rest until "
             "one ends (default: gRPC's, no limit)")
    add("--stream-window-bytes", type=int,
        help="HTTP/2 receive window per stream: bytes a client may send ahead of what the server has read "
             f"(default {4 * MIB}; 0 lets gRPC grow it by BDP probing, with no fixed cap)")
    add("--max-pool-shapes", type=int, help="public pools (one per image shape) kept at once (default 8)")
    add("--warm-shapes", help="image shapes whose public pool is built in the background at start, "
                              "comma-separated HxWxC, or 'none' (default 32x32x3)")
    add("--workers", type=int, help="encoding threads (default: cores, at most 4)")
    add("--grace-seconds", type=float, help="time in-flight calls get to finish on SIGTERM (default 30)")
    add("--log-level", help="DEBUG | INFO | WARNING | ERROR (default INFO)")
    security = parser.add_argument_group("transport security", "PEM files; without them the port is "
                                         "plaintext (fine on loopback, a warning on any other address)")
    add = security.add_argument
    add("--tls-cert-file", help="serve TLS with this certificate chain (leaf first); needs --tls-key-file")
    add("--tls-key-file", help="the certificate's private key, unencrypted PEM (keep it readable by the "
                               "service user only; it is never logged)")
    add("--tls-client-ca-file", help="mutual TLS: require a client certificate signed by a CA in this file "
                                     "(needs --tls-cert-file and --tls-key-file)")
    add("--health-port", type=int,
        help="also serve grpc.health.v1 alone, in plaintext, on this port: for probes that cannot present "
             "a client certificate or trust the CA, and outside --max-concurrent-rpcs; 0 picks a free port "
             "(default: none, health is on the main port only)")
    add("--health-port-file", help="write the bound health port to this file once serving")
    metrics = parser.add_argument_group("metrics")
    add = metrics.add_argument
    add("--metrics-port", type=int, help="serve Prometheus metrics on http://HOST:PORT/metrics; 0 turns it off, "
                                         "or with --metrics-port-file binds a free port "
                                         f"(default {DEFAULT_METRICS_PORT}; when that one is taken, a warning "
                                         "and no metrics; a port given explicitly must be free)")
    add("--metrics-host", help="address the metrics endpoint listens on (default: the same as --host)")
    add("--metrics-port-file", help="write the bound metrics port to this file once serving")
    audits = parser.add_argument_group("audits")
    add = audits.add_argument
    add("--state-dir", help="folder of the audit database, instahide.db (default $XDG_STATE_HOME/instahide, "
                            "else ~/.local/state/instahide); when it cannot be written, audits are disabled "
                            "(UNAVAILABLE) and encoding goes on")
    add("--data-root", help="folder of server-side datasets (.npz with images and labels) that audits may "
                            "name; default none (audits must upload their images)")
    add("--audit-workers", type=int, help="audits run at once (default: one per CUDA device, else 1)")
    add("--audit-queue-size", type=int, help="audits waiting for a worker; more answer RESOURCE_EXHAUSTED "
                                             "(default 16)")
    add("--audit-timeout-seconds", type=float, help="a running audit taking longer fails with "
                                                    "'time limit exceeded' (default 3600)")
    add("--audit-max-images", type=int, help="images (or encodings) in one audit; more answer "
                                             "RESOURCE_EXHAUSTED (default 10000)")
    add("--audit-pool-memory-mib", type=int, help="memory each pool-aware attack's searches of the public pool may "
                                                  "hold: the pool's Gram matrix is kept only when it fits, and "
                                                  "larger pools are searched in smaller batches, with up to a "
                                                  "quarter more for shared rows; the key-aware bound solves the "
                                                  "reused public images whose normal matrix fits in it "
                                                  f"(default {ServerConfig.audit_pool_memory_mib})")
    add("--audit-refine-sets", type=int, help="sets the audits' ciphertext-only attack simulates to train a refiner "
                                              "of its recoveries, a stronger attacker at the cost of one more attack "
                                              "per set; 0 turns it off (default 0)")
    add("--audit-refine-steps", type=int, help="training steps of that refiner "
                                               f"(default {ServerConfig.audit_refine_steps})")
    add("--audit-retention-days", type=float, help="ended audits older than this are deleted; 0 keeps them "
                                                   "forever (default 30)")
    add("--audit-db-max-bytes", type=int, help="cap on the audit database's size: past it new audits answer "
                                               "UNAVAILABLE, as on a full disk (default 0: no cap)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse settings, configure logging and serve until SIGTERM/SIGINT."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = ServerConfig.from_args_and_env(args)
        load_tls(config)  # fail now, before the slow imports, on a missing or mismatched certificate or key
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=config.log_level, format=_LOG_FORMAT, stream=sys.stderr)
    logging.getLogger(__name__).info("starting with %s", config)

    from instahide_server.server import serve  # heavy imports (torch) after the flags are checked

    try:
        asyncio.run(serve(config))
    except ConfigError as exc:
        logging.getLogger(__name__).error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
