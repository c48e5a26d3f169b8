"""``instahide health``: the server's serving status (grpc.health.v1)."""

from __future__ import annotations

import argparse

from instahide_client.cli.common import client, connection_arguments


def add_parser(commands: argparse._SubParsersAction) -> None:
    health = commands.add_parser("health", help="print the server's serving status",
                                 description="Print SERVING / NOT_SERVING / ...; exit 0 only when SERVING.")
    connection_arguments(health)
    health.add_argument("--service", default="", help="service name to check (default: the server)")
    health.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with client(args) as service:
        status = service.health(args.service, timeout=10.0 if args.timeout is None else args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1
