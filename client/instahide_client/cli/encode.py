"""``instahide encode``: encode the images of an .npz through the service (InstaHide, or DisguisedNets under a
stored key with ``--key``)."""

from __future__ import annotations

import argparse
import sys

import numpy as np
from tqdm import tqdm

from instahide_client.cli.common import CliError, atomic_output, client, connection_arguments, load_npz, positive_int
from instahide_client.cli.common import seed as seed_value


def add_parser(commands: argparse._SubParsersAction) -> None:
    encode = commands.add_parser(
        "encode", help="encode the images of an .npz file",
        description="Encode `images` (uint8 (N,H,W,C)) and `labels` (N,) from an .npz file with InstaHide, or "
                    "with --key under a stored DisguisedNets key (`labels` then optional). The output .npz holds "
                    "`encoded`, `labels` (InstaHide: mixed, float32 (N, num_classes); --key: as given) and, with "
                    "--return-keys, the key record as `keys_*` arrays (private indices index the input images). "
                    "It is written atomically, readable by its owner only.")
    connection_arguments(encode)
    encode.add_argument("--input", required=True, metavar="IN.npz", help="arrays `images` and `labels`")
    encode.add_argument("--output", required=True, metavar="OUT.npz", help="where to write the encodings")
    encode.add_argument("--key", metavar="keys/ID",
                        help="disguise with this stored DisguisedNets key (`instahide keys create`) instead of "
                             "InstaHide; only --dtype, --batch-size and --quiet apply then")
    encode.add_argument("--mode", choices=("cross", "inside"), default="cross",
                        help="cross-dataset (public pool) or inside-dataset mixing (default %(default)s)")
    encode.add_argument("--k", type=positive_int, help="images mixed per encoding (service default)")
    encode.add_argument("--private-per-mix", type=positive_int,
                        help="private images per cross-mode mix (service default)")
    encode.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="element type of the encodings (default %(default)s)")
    encode.add_argument("--batch-size", type=positive_int, default=1024,
                        help="images per request (default %(default)s)")
    encode.add_argument("--num-classes", type=positive_int, help="label width (default: max label + 1)")
    encode.add_argument("--return-keys", action="store_true", help="also write the key record")
    encode.add_argument("--seed", type=seed_value, help="reproducible keys (flagged as seeded); default: CSPRNG")
    encode.add_argument("--no-sign-flip", action="store_true", help="do not apply the random sign mask")
    encode.add_argument("--quiet", action="store_true", help="no progress bar")
    encode.set_defaults(run=run)


INSTAHIDE_ONLY = ("return_keys", "seed", "no_sign_flip", "k", "private_per_mix", "num_classes")


def run(args: argparse.Namespace) -> int:
    if args.key is not None:
        given = [f"--{name.replace('_', '-')}" for name in INSTAHIDE_ONLY if getattr(args, name) not in (None, False)]
        if given or args.mode != "cross":
            raise CliError(f"--key disguises with a stored DisguisedNets key; {', '.join(given or ['--mode'])} "
                           "applies to InstaHide only")
    arrays = load_npz(args.input, ("images",) if args.key else ("images", "labels"), ("labels",))
    images, labels = arrays["images"], arrays.get("labels")
    with atomic_output(args.output) as out_file, client(args) as service:
        # The temporary output exists before the call, so an unwritable folder fails fast.
        with tqdm(total=len(images), unit="img", desc="encode", file=sys.stderr, disable=args.quiet) as bar:
            try:
                if args.key is not None:
                    result = service.encode(images, labels, key=args.key, batch_size=args.batch_size,
                                            output_dtype=args.dtype, timeout=args.timeout, progress=bar.update)
                else:
                        result = service.encode(
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
