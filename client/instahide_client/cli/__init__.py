"""The ``instahide`` command: encode images through the service, audit what leaks, check its health.

    instahide encode --target HOST:PORT --input in.npz --output out.npz [--return-keys | --key keys/ID] ...
    instahide keys create|list|get|delete|export|import ...
    instahide audit start|watch|get|list|cancel|delete ...
    instahide defend --target HOST:PORT --input outputs.npz --defense gauss:0.1 --output released.npz
    instahide info --target HOST:PORT [--json]
    instahide health --target HOST:PORT [--service NAME]

One module per command group (``encode``, ``keys``, ``audit``, ``defend``, ``info``, ``health``), each adding its
parser and its ``run``; ``common`` holds what they share. Every command takes the connection options: --target,
--token/--token-file, TLS (--ca-file, --tls, --cert-file/--key-file for mutual TLS, --server-name) and --timeout;
most also read INSTAHIDE_* variables.

Exit status: 0 on success, 1 when the RPC, the input or the output fails (or the server is not SERVING), 2 for a
usage error. Expected failures print one line, ``error: ...``, on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from instahide_client import __version__
from instahide_client.cli import audit, defend, encode, health, info, keys
from instahide_client.cli.common import CliError, check_tls_arguments
from instahide_client.errors import InstaHideError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instahide", description="Client for the instahide service.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (encode, keys, audit, defend, info, health):
        group.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        check_tls_arguments(parser, args)
    except SystemExit as exc:  # --help, --version, usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        status = args.run(args)
        sys.stdout.flush()  # here, where a reader that went away can be answered, not at the interpreter's exit
        return status
    except InstaHideError as exc:
        print(f"error: {exc}", file=sys.stderr)  # "<CODE>: <message>"
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`instahide audit list | head -1`): not an error of ours
        # Point stdout at devnull so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 1
