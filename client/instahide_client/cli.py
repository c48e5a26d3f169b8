"""The ``instahide`` command: encode an .npz of images through the service, audit what leaks, or
check its health.

    instahide encode --target HOST:PORT --input in.npz --output out.npz [--return-keys] ...
    instahide audit start|watch|get|list|cancel|delete ...   (see ``_audit_cli``)
    instahide health --target HOST:PORT [--service NAME]

Every command takes the connection options: --target, --token/--token-file, TLS (--ca-file, --tls,
--cert-file/--key-file for mutual TLS, --server-name) and --timeout; most also read INSTAHIDE_* variables.

Exit status: 0 on success, 1 when the RPC, the input or the output fails (or the server is not
SERVING), 2 for a usage error. Expected failures print one line, ``error: ...``, on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from instahide_client import __version__, _audit_cli
from instahide_client.client import DEFAULT_MAX_MESSAGE_BYTES, InstaHideClient
from instahide_client.errors import InstaHideError
from instahide_client.tokens import read_token_file

DEFAULT_TARGET = "127.0.0.1:50051"


class CliError(Exception):
    """An expected failure: printed as ``error: <message>``, exit status 1."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64), got {value}")
    return value


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--target", default=os.environ.get("INSTAHIDE_TARGET", DEFAULT_TARGET),
                       help="HOST:PORT of the service (env INSTAHIDE_TARGET; default %(default)s)")
    tokens = group.add_mutually_exclusive_group()
    tokens.add_argument("--token", help="bearer token (env INSTAHIDE_TOKEN; prefer --token-file, "
                                        "command lines are visible to other users)")
    tokens.add_argument("--token-file", metavar="PATH", help="file holding the bearer token")
    group.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="deadline of the call (for encode: the whole stream); default none "
                            "(health: 10 s)")
    group.add_argument("--ca-file", metavar="PATH", default=os.environ.get("INSTAHIDE_CA_FILE"),
                       help="PEM root certificates the server's certificate must chain to; enables TLS "
                            "(env INSTAHIDE_CA_FILE)")
    group.add_argument("--tls", action="store_true",
                       help="TLS with the system's root certificates (implied by --ca-file and --cert-file)")
    group.add_argument("--cert-file", metavar="PATH", default=os.environ.get("INSTAHIDE_CERT_FILE"),
                       help="PEM client certificate, for a server that requires mutual TLS; needs --key-file "
                            "(env INSTAHIDE_CERT_FILE)")
    group.add_argument("--key-file", metavar="PATH", default=os.environ.get("INSTAHIDE_KEY_FILE"),
                       help="PEM private key of --cert-file (env INSTAHIDE_KEY_FILE)")
    group.add_argument("--server-name", metavar="NAME", default=os.environ.get("INSTAHIDE_SERVER_NAME"),
                       help="name the server's certificate must carry, when it differs from the target's host "
                            "(env INSTAHIDE_SERVER_NAME)")
    group.add_argument("--max-message-bytes", type=_positive_int, default=DEFAULT_MAX_MESSAGE_BYTES,
                       help="largest gRPC message sent or received (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instahide", description="Client for the instahide service.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    encode = commands.add_parser(
        "encode", help="encode the images of an .npz file",
        description="Encode `images` (uint8 (N,H,W,C)) and `labels` (N,) from an .npz file. The output "
                    ".npz holds `encoded`, `labels` (mixed, float32 (N, num_classes)) and, with "
                    "--return-keys, the key record as `keys_*` arrays (private indices index the "
                    "input images). It is written atomically, readable by its owner only.")
    _connection_arguments(encode)
    encode.add_argument("--input", required=True, metavar="IN.npz", help="arrays `images` and `labels`")
    encode.add_argument("--output", required=True, metavar="OUT.npz", help="where to write the encodings")
    encode.add_argument("--mode", choices=("cross", "inside"), default="cross",
                        help="cross-dataset (public pool) or inside-dataset mixing (default %(default)s)")
    encode.add_argument("--k", type=_positive_int, help="images mixed per encoding (service default)")
    encode.add_argument("--private-per-mix", type=_positive_int,
                        help="private images per cross-mode mix (service default)")
    encode.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="element type of the encodings (default %(default)s)")
    encode.add_argument("--batch-size", type=_positive_int, default=1024,
                        help="images per request (default %(default)s)")
    encode.add_argument("--num-classes", type=_positive_int, help="label width (default: max label + 1)")
    encode.add_argument("--return-keys", action="store_true", help="also write the key record")
    encode.add_argument("--seed", type=_seed, help="reproducible keys (flagged as seeded); default: CSPRNG")
    encode.add_argument("--no-sign-flip", action="store_true", help="do not apply the random sign mask")
    encode.add_argument("--quiet", action="store_true", help="no progress bar")

    _audit_cli.add_parser(commands, _connection_arguments)

    health = commands.add_parser("health", help="print the server's serving status",
                                 description="Print SERVING / NOT_SERVING / ...; exit 0 only when SERVING.")
    _connection_arguments(health)
    health.add_argument("--service", default="", help="service name to check (default: the server)")
    return parser


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            return read_token_file(args.token_file)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    return args.token or os.environ.get("INSTAHIDE_TOKEN") or None


def _read_pem(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:  # the message names the file, never its content
        raise CliError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _check_tls_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (exit 2) for TLS options that cannot work together."""
    if bool(args.cert_file) != bool(args.key_file):
        given, missing = ("--cert-file", "--key-file") if args.cert_file else ("--key-file", "--cert-file")
        parser.error(f"{given} needs {missing} too (a client certificate and its key; "
                     "env INSTAHIDE_CERT_FILE / INSTAHIDE_KEY_FILE)")
    if args.server_name and not (args.tls or args.ca_file or args.cert_file):
        parser.error("--server-name applies to TLS only; give --ca-file or --tls")


def _client(args: argparse.Namespace) -> InstaHideClient:
    return InstaHideClient(args.target, token=_token(args), max_message_bytes=args.max_message_bytes,
                           root_certificates=_read_pem(args.ca_file, "CA file"), tls=args.tls,
                           certificate_chain=_read_pem(args.cert_file, "certificate file"),
                           private_key=_read_pem(args.key_file, "key file"), server_name=args.server_name or None)


def load_input(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``images`` and ``labels`` from an .npz file; CliError with a one-line reason otherwise."""
    try:
        data = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # numpy raises ValueError, BadZipFile, EOFError... for a bad file
        raise CliError(f"cannot read {path}: not an .npz archive ({exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise CliError(f"{path} is a single array, not an .npz archive with `images` and `labels`")
    with data:
        missing = [name for name in ("images", "labels") if name not in data.files]
        if missing:
            raise CliError(f"{path} has no {' or '.join(f'`{m}`' for m in missing)} array "
                           f"(it has: {', '.join(data.files) or 'nothing'})")
        try:
            return data["images"], data["labels"]
        except Exception as exc:
            raise CliError(f"cannot read {path}: {exc}") from None


@contextlib.contextmanager
def atomic_output(path: str):
    """Yield a temporary file beside ``path``; it replaces ``path`` only when the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def run_encode(args: argparse.Namespace) -> int:
    images, labels = load_input(args.input)
    with atomic_output(args.output) as out_file, _client(args) as client:
        # The temporary output exists before the call, so an unwritable folder fails fast.
        with tqdm(total=len(images), unit="img", desc="encode", file=sys.stderr,
                  disable=args.quiet) as bar:
            try:
                result = client.encode(
                    images, labels, batch_size=args.batch_size, num_classes=args.num_classes,
                    mode=args.mode, k=args.k, private_per_mix=args.private_per_mix,
                    sign_flip=not args.no_sign_flip, output_dtype=args.dtype,
                    return_keys=args.return_keys, seed=args.seed, timeout=args.timeout,
                    progress=bar.update)
            except (ValueError, TypeError) as exc:
                raise CliError(f"{args.input}: {exc}") from None
        np.savez(out_file, **result.arrays())
    if not args.quiet:
        print(f"wrote {len(result.encoded)} encodings to {args.output}", file=sys.stderr)
    return 0


def run_health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.health(args.service, timeout=10.0 if args.timeout is None else args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check_tls_arguments(parser, args)
    except SystemExit as exc:  # --help, --version, usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    run = {"encode": run_encode, "audit": _audit_cli.run, "health": run_health}[args.command]
    try:
        return run(args)
    except InstaHideError as exc:
        print(f"error: {exc}", file=sys.stderr)  # "<CODE>: <message>"
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
