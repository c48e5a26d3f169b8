"""``instahide defend``: apply an output defense to a model's outputs before releasing them."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from instahide_client.cli.common import (
    CliError,
    atomic_output,
    client,
    connection_arguments,
    load_npz,
    model_outputs,
    positive_int,
)
from instahide_client.cli.common import seed as seed_value
from instahide_client.defenses import OUTPUT_KINDS


def add_parser(commands: argparse._SubParsersAction) -> None:
    defend = commands.add_parser(
        "defend", help="apply an output defense to a model's outputs",
        description="Apply an output defense to `outputs` (or `logits`): float (N, C) or (N, C, h, w), classes on "
                    "axis 1, from an .npz file. The output .npz holds `defended` (probabilities, same shape) and "
                    "`labels` when the input had them. The same defenses are audited by `instahide audit start "
                    "--membership --defense ...`.")
    connection_arguments(defend)
    defend.add_argument("--input", required=True, metavar="IN.npz", help="array `outputs` or `logits` (+ `labels`)")
    defend.add_argument("--output", required=True, metavar="OUT.npz", help="where to write the defended outputs")
    defend.add_argument("--defense", required=True, metavar="SPEC",
                        help="argmax, gauss:SIGMA, topk:K, round:DECIMALS or temperature:T")
    defend.add_argument("--outputs-kind", choices=tuple(OUTPUT_KINDS), default="auto",
                        help="logits or probabilities (default: probabilities when rows sum to 1; `logits` "
                             "arrays are read as logits)")
    defend.add_argument("--seed", type=seed_value, help="reproducible noise; default: the server's CSPRNG")
    defend.add_argument("--batch-size", type=positive_int, default=1024, help="outputs per request")
    defend.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    arrays = load_npz(args.input, (), ("outputs", "logits", "labels"))
    outputs, logits = model_outputs(arrays, args.input)
    kind = "logits" if logits and args.outputs_kind == "auto" else args.outputs_kind
    with atomic_output(args.output) as out_file, client(args) as service:
        try:
            defended = service.defend(outputs, args.defense, labels=arrays.get("labels"), outputs_kind=kind,
                                      seed=args.seed, batch_size=args.batch_size, timeout=args.timeout)
        except (ValueError, TypeError) as exc:
            raise CliError(f"{args.input}: {exc}") from None
        extra = {"labels": arrays["labels"]} if "labels" in arrays else {}
        np.savez(out_file, defended=defended, **extra)
    print(f"wrote {len(defended)} defended outputs ({args.defense}) to {args.output}", file=sys.stderr)
    return 0
