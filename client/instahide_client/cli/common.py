"""What every ``instahide`` command shares: the connection options, the client they make, reading an .npz,
writing a file atomically, and ``CliError`` (printed as one ``error: ...`` line, exit status 1)."""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile

import numpy as np

from instahide_client.client import DEFAULT_MAX_MESSAGE_BYTES, InstaHideClient
from instahide_client.tokens import read_token_file

DEFAULT_TARGET = "127.0.0.1:50051"


class CliError(Exception):
    """An expected failure: printed as ``error: <message>``, exit status 1."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer at least 0, got {value}")
    return value


def model_outputs(arrays: dict[str, np.ndarray], path: str) -> tuple[np.ndarray, bool]:
    """A file's model outputs, ``outputs`` or else ``logits``, as float32 unless float16, and whether they came
    as ``logits``; CliError when it has neither."""
    if "outputs" not in arrays and "logits" not in arrays:
        raise CliError(f"{path} has neither `outputs` nor `logits`")
    logits = "outputs" not in arrays
    outputs = np.asarray(arrays["logits" if logits else "outputs"])
    return (outputs if outputs.dtype == np.float16 else outputs.astype(np.float32, copy=False)), logits


def seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64), got {value}")
    return value


def connection_arguments(parser: argparse.ArgumentParser) -> None:
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
    group.add_argument("--max-message-bytes", type=positive_int, default=DEFAULT_MAX_MESSAGE_BYTES,
                       help="largest gRPC message sent or received (default %(default)s)")


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


def check_tls_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (exit 2) for TLS options that cannot work together."""
    if bool(args.cert_file) != bool(args.key_file):
        given, missing = ("--cert-file", "--key-file") if args.cert_file else ("--key-file", "--cert-file")
        parser.error(f"{given} needs {missing} too (a client certificate and its key; "
                     "env INSTAHIDE_CERT_FILE / INSTAHIDE_KEY_FILE)")
    if args.server_name and not (args.tls or args.ca_file or args.cert_file):
        parser.error("--server-name applies to TLS only; give --ca-file or --tls")


def client(args: argparse.Namespace) -> InstaHideClient:
    return InstaHideClient(args.target, token=_token(args), max_message_bytes=args.max_message_bytes,
                           root_certificates=_read_pem(args.ca_file, "CA file"), tls=args.tls,
                           certificate_chain=_read_pem(args.cert_file, "certificate file"),
                           private_key=_read_pem(args.key_file, "key file"), server_name=args.server_name or None)


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




def load_npz(path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays ``required`` (and those of ``optional`` present) of an .npz file; CliError with a one-line
    reason otherwise."""
    try:
        data = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # numpy raises ValueError, BadZipFile, EOFError... for a bad file
        raise CliError(f"cannot read {path}: not an .npz archive ({exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise CliError(f"{path} is a single array, not an .npz archive with {', '.join(f'`{r}`' for r in required)}")
    with data:
        missing = [name for name in required if name not in data.files]
        if missing:
            raise CliError(f"{path} has no {' or '.join(f'`{m}`' for m in missing)} array "
                           f"(it has: {', '.join(data.files) or 'nothing'})")
        try:
            return {name: data[name] for name in (*required, *optional) if name in data.files}
        except Exception as exc:
            raise CliError(f"cannot read {path}: {exc}") from None
