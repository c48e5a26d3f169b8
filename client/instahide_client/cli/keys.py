"""``instahide keys``: the service's stored DisguisedNets keys (create, list, get, delete, export, import).

A key's material never reaches the client: ``create`` prints the new key's name, ``get`` and ``list`` its
parameters and fingerprint, and ``export`` writes it sealed under the server's key-encryption key, for
``import`` on a replica that shares that key-encryption key.
"""

from __future__ import annotations

import argparse
import json
import sys

from instahide_client.cli.common import CliError, atomic_output, client, connection_arguments, positive_int
from instahide_client.cli.common import seed as seed_value
from instahide_client.keys import MATRICES, METHODS, StoredKey


def _sides(text: str, *, counts: tuple[int, ...]) -> tuple[int, ...]:
    """Positive integers separated by commas or x, as many as one of ``counts``."""
    try:
        dims = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if len(dims) not in counts or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected {' or '.join(map(str, counts))} positive integers, got {text!r}")
    return dims


def _shape(text: str) -> tuple[int, ...]:
    return _sides(text, counts=(3,))  # H,W,C


def _block(text: str) -> tuple[int, ...]:
    dims = _sides(text, counts=(1, 2))  # a side, or rows,cols
    return dims * 2 if len(dims) == 1 else dims


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


PARAMETER_DEFAULTS = {"block": (4, 4), "matrix": "orthogonal", "noise": 0.0, "matrix_per_channel": False,
                      "no_permute": False, "aes_key_per_block": False, "scale": 1, "salt_pepper": 0.0}


def add_parameter_arguments(parser: argparse.ArgumentParser) -> None:
    """A DisguisedNets key's parameter flags (all but the method), each None when not given (see ``parameters``)."""
    parser.add_argument("--block", type=_block, metavar="S|R,S",
                        help="block side, or rows,cols; must divide the image (default 4)")
    parser.add_argument("--matrix", choices=tuple(MATRICES), help="RMT matrices (default orthogonal)")
    parser.add_argument("--noise", type=_non_negative,
                        help="RMT noise bound on the 0-255 scale, fresh per call (default 0: none)")
    parser.add_argument("--matrix-per-channel", action="store_true", default=None,
                        help="RMT: one matrix per channel too")
    parser.add_argument("--no-permute", action="store_true", default=None, help="keep blocks in place")
    parser.add_argument("--aes-key-per-block", action="store_true", default=None,
                        help="AES: one AES key per block position")
    parser.add_argument("--scale", type=positive_int,
                        help="AES: encrypt each pixel as an FxF cell, keep each cell's mean (default 1: off)")
    parser.add_argument("--salt-pepper", type=_non_negative, metavar="P",
                        help="AES: salt-and-pepper rate before encryption (default 0)")


def given_parameters(args: argparse.Namespace) -> list[str]:
    """The parameter flags given on the command line."""
    return [f"--{name.replace('_', '-')}" for name in PARAMETER_DEFAULTS if getattr(args, name) is not None]


def parameters(args: argparse.Namespace, method: str) -> dict:
    """``disguised_nets_params``' options from the flags, defaults where not given."""
    value = {name: default if getattr(args, name) is None else getattr(args, name)
             for name, default in PARAMETER_DEFAULTS.items()}
    return {"method": method, "block": value["block"], "permute": not value["no_permute"], "matrix": value["matrix"],
            "noise": value["noise"], "matrix_per_channel": value["matrix_per_channel"],
            "aes_key_per_block": value["aes_key_per_block"], "scale": value["scale"],
            "salt_pepper": value["salt_pepper"]}


def add_parser(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="create, list, read, delete, export and import stored keys",
                               description=__doc__.split("\n\n")[1] if __doc__ else None)
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a DisguisedNets key; prints its name",
                                description="Create a DisguisedNets key for images of one shape, from the "
                                            "server's CSPRNG. Prints the key's name (keys/ID).")
    create.add_argument("--shape", type=_shape, required=True, metavar="H,W,C", help="image shape, e.g. 32,32,3")
    create.add_argument("--method", choices=tuple(METHODS), default="rmt",
                        help="rmt: per-block random projection (float output); aes: AES-128-ECB (uint8 output); "
                             "default %(default)s")
    add_parameter_arguments(create)
    create.add_argument("--seed", type=seed_value, help="reproducible material (flagged seeded); default CSPRNG")
    create.add_argument("--display-name", default="", help="a label for people")
    create.add_argument("--json", action="store_true", help="print the key's description as JSON")
    create.set_defaults(run=run_create)

    listing = actions.add_parser("list", help="list your keys, newest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(run=run_list)

    get = actions.add_parser("get", help="describe one key (never its material)")
    get.add_argument("name", metavar="KEY", help="keys/ID or ID")
    get.add_argument("--json", action="store_true", help="print JSON")
    get.set_defaults(run=run_get)

    delete = actions.add_parser("delete", help="delete a key from this server")
    delete.add_argument("name", metavar="KEY", help="keys/ID or ID")
    delete.set_defaults(run=run_delete)

    export = actions.add_parser("export", help="write a key sealed under the server's key-encryption key",
                                description="Write the key, sealed under the server's key-encryption key, to a "
                                            "file a replica with the same key-encryption key imports.")
    export.add_argument("name", metavar="KEY", help="keys/ID or ID")
    export.add_argument("--output", required=True, metavar="FILE", help="where to write it (mode 0600)")
    export.set_defaults(run=run_export)

    imported = actions.add_parser("import", help="import a key exported by a server with the same KEK")
    imported.add_argument("input", metavar="FILE", help="a file written by `instahide keys export`")
    imported.set_defaults(run=run_import)

    for parser in (create, listing, get, delete, export, imported):
        connection_arguments(parser)


def _print(key: StoredKey, as_json: bool) -> None:
    print(json.dumps(key.to_dict()) if as_json else key.summary())


def run_create(args: argparse.Namespace) -> int:
    with client(args) as service:
        try:
            key = service.create_key(args.shape, **parameters(args, args.method), seed=args.seed,
                                     display_name=args.display_name, timeout=args.timeout)
        except (ValueError, TypeError) as exc:
            raise CliError(str(exc)) from None
    print(json.dumps(key.to_dict()) if args.json else key.name)
    return 0


def run_list(args: argparse.Namespace) -> int:
    with client(args) as service:
        for key in service.list_keys(timeout=args.timeout):
            _print(key, args.json)
    return 0


def run_get(args: argparse.Namespace) -> int:
    with client(args) as service:
        _print(service.get_key(_name(args.name), timeout=args.timeout), args.json)
    return 0


def run_delete(args: argparse.Namespace) -> int:
    with client(args) as service:
        service.delete_key(_name(args.name), timeout=args.timeout)
    print(f"deleted {_name(args.name)}", file=sys.stderr)
    return 0


def run_export(args: argparse.Namespace) -> int:
    with atomic_output(args.output) as out_file, client(args) as service:
        key, wrapped = service.export_key(_name(args.name), timeout=args.timeout)
        out_file.write(wrapped)
    print(f"wrote {key.name} (fingerprint {key.fingerprint[:16]}) sealed to {args.output}", file=sys.stderr)
    return 0


def run_import(args: argparse.Namespace) -> int:
    try:
        with open(args.input, "rb") as file:
            wrapped = file.read()
    except OSError as exc:
        raise CliError(f"cannot read {args.input}: {exc.strerror or exc}") from None
    with client(args) as service:
        key = service.import_key(wrapped, timeout=args.timeout)
    print(key.name)
    return 0


def _name(text: str) -> str:
    text = text.strip()
    if not text:
        raise CliError("expected a key name keys/ID or its ID")
    return text if text.startswith("keys/") else "keys/" + text
