"""``instahide info``: what the server is and runs (InfoService.GetServerInfo)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from instahide_client.cli.common import client, connection_arguments


def add_parser(commands: argparse._SubParsersAction) -> None:
    info = commands.add_parser(
        "info", help="print what the server is and runs",
        description="Print the server's version, device, transport and authentication, limits, the transform "
                    "families with their parameters' defaults and ranges (for Encode and for audits), the public "
                    "pools built so far, and the audit kinds with their attacks. No secret is ever shown.")
    connection_arguments(info)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with client(args) as service:
        described = service.server_info(timeout=10.0 if args.timeout is None else args.timeout)
    print(json.dumps(described) if args.json else format_info(described))
    return 0


def format_info(info: dict[str, Any]) -> str:
    """The server's description for people."""
    security, limits, audits = info["security"], info["limits"], info["audits"]
    auth = f"tokens ({security['principals']} principals)" if security["token_auth"] else "none"
    lines = [f"instahide-server {info['version']} on {info['device']}; transport {security['transport']}, "
             f"auth {auth}; keys {'on' if info['keys_enabled'] else 'off'}",
             f"limits: messages {limits['max_message_bytes']} bytes, {limits['max_images_per_request']} images a "
             f"request, {limits['max_audit_images']} images an audit, {limits['max_in_flight_per_stream']} requests "
             "in flight a stream"]
    for family in info["families"]:
        lines.append(f"family {family['name']}: {family['description']}")
        for p in family["parameters"]:
            audit = f"; audits {p['audit_range']}" if p["audit_range"] else ""
            default = f" = {p['default_value']}" if p["default_value"] else ""
            lines.append(f"  {p['name']}{default}  ({p['encode_range']}{audit})")
    for pool in info["pools"]:
        lines.append(f"pool for {'x'.join(map(str, pool['image_shape']))}: {pool['images']} images "
                     f"({pool['fingerprint'][:12]})")
    lines.append(f"audits: {'on' if audits['enabled'] else 'off'}, {audits['workers']} workers")
    for kind in audits["kinds"]:
        names = [f"{a['name']}{'*' if a['default_attack'] else ''}{' (bound)' if a['bound'] else ''}"
                 for a in kind["attacks"]]
        lines.append(f"  {kind['name']}: {', '.join(names)}   (* runs by default)")
    return "\n".join(lines)
