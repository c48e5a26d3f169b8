"""``instahide audit ...``: start, watch, get, list, cancel and delete leakage audits.

    instahide audit start --images privates.npz [--k 6 --encodings-per-image 50 ...] [--attack NAME ...]
                          [--report-dir DIR]
    instahide audit watch|get|cancel|delete ID
    instahide audit list [--state running] [--limit N]

Attacks are named as the service's registry names them (``--attack``, ``--add-attack``, ``--skip-attack``); the
tables show the titles the service gives them.

Exit status as for the other commands; a followed audit that fails or is cancelled exits 1, and
Ctrl-C while following stops following only (exit 130; the audit goes on).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
from tqdm import tqdm

from instahide_client.audits import STATE_VALUES, Audit, AuditEvent, AuditReport
from instahide_client.cli.common import (
    CliError,
    client,
    connection_arguments,
    load_npz,
    model_outputs,
    non_negative_int,
    positive_int,
    seed,
)
from instahide_client.cli.keys import add_parameter_arguments, given_parameters, parameters
from instahide_client.client import InstaHideClient
from instahide_client.keys import METHODS

LEGACY_FLAGS = {"--no-key-aware": ("skip", "key_aware"), "--no-pool-aware": ("skip", "pool_aware"),
                "--photo-aware": ("add", "photo_aware")}
"""Flags from before attacks were named, kept working: each is a --skip-attack or --add-attack."""


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``audit`` command group to the top-level subparsers."""
    audit = commands.add_parser(
        "audit", help="leakage audits: attack a configuration before shipping it",
        description="The service plays the strongest attackers it has against an InstaHide configuration "
                    "and reports what leaks: the InstaHide Challenge's four metrics and the fraction of private "
                    "images recovered, for each attacker (and for a bound that holds the keys).")
    audit.set_defaults(run=run)
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    start = actions.add_parser(
        "start", help="upload private images and audit them",
        description="Upload `images` and `labels` from an .npz (or name a server-side --dataset), "
                    "then follow the audit and print the leakage summary.")
    connection_arguments(start)
    source = start.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="PRIVATES.npz",
                        help="arrays `images` (uint8 (N,H,W,C)) and `labels` (N,); with --encodings, "
                             "the originals (`labels` ignored)")
    source.add_argument("--dataset", metavar="NAME", help="a dataset on the server, under its data root")
    source.add_argument("--outputs", metavar="OUTPUTS.npz",
                        help="a membership audit of a model's outputs: arrays `outputs` (or `logits`) (N,C) or "
                             "(N,C,h,w), `labels`, `member` (bool (N,)), optionally `reference_outputs` "
                             "(K,N,...) and `reference_member` (K,N)")
    start.add_argument("--encodings", metavar="ENC.npz",
                       help="audit encodings made elsewhere: arrays `encodings` (or `encoded`, as `instahide "
                            "encode` writes them) (E,H,W,C) and `labels` (mixed, (E, classes)); needs --images for "
                            "the originals")
    start.add_argument("--mode", choices=("cross", "inside"), default="cross",
                       help="mixing mode under audit (default %(default)s)")
    start.add_argument("--k", type=positive_int, help="images per mix (default: the service's, 6)")
    start.add_argument("--encodings-per-image", type=positive_int, metavar="T",
                       help="encodings of each private image (default 50; with --encodings: E / N)")
    start.add_argument("--num-classes", type=positive_int, help="label width (default: max label + 1)")
    start.add_argument("--seed", type=seed, help="seed of the simulated keys (reproducible audit)")
    attacks = start.add_argument_group(
        "attacks", "by the service's names: ciphertext_only, pool_aware and key_aware (the bound) run by default; "
                   "photo_aware is slow and runs when asked for")
    attacks.add_argument("--attack", action="append", default=[], metavar="NAME",
                         help="run exactly these attacks (repeatable), each with what it starts from")
    attacks.add_argument("--add-attack", action="append", default=[], metavar="NAME",
                         help="run this attack beside the defaults (repeatable)")
    attacks.add_argument("--skip-attack", action="append", default=[], metavar="NAME",
                         help="leave this default attack out (repeatable)")
    attacks.add_argument("--no-key-aware", action="store_true", help="the same as --skip-attack key_aware")
    attacks.add_argument("--no-pool-aware", action="store_true", help="the same as --skip-attack pool_aware")
    attacks.add_argument("--photo-aware", action="store_true", help="the same as --add-attack photo_aware")
    membership = start.add_argument_group(
        "membership", "what a model's outputs reveal about its training set (with --outputs, or --dataset and "
                      "--membership)")
    membership.add_argument("--membership", action="store_true",
                            help="a membership audit (implied by --outputs; with --dataset, the dataset holds "
                                 "the arrays --outputs takes)")
    membership.add_argument("--defense", action="append", default=[], metavar="SPEC",
                            help="also audit the outputs under this defense (repeatable): argmax, gauss:SIGMA, "
                                 "topk:K, round:DECIMALS, temperature:T")
    membership.add_argument("--outputs-kind", choices=("auto", "logits", "probabilities"), default="auto",
                            help="how the outputs are given (default: probabilities when rows sum to 1; a "
                                 "`logits` array is read as logits)")
    membership.add_argument("--ignore-index", type=int, metavar="I",
                            help="segmentation: the label ignored in the maps (default 255)")
    disguised = start.add_argument_group(
        "DisguisedNets", "audit DisguisedNets instead of InstaHide: the service disguises each image once under a "
                         "fresh key of these parameters (or a stored key's, never its material); labels optional")
    disguised.add_argument("--disguise", choices=tuple(METHODS), metavar="METHOD",
                           help="audit DisguisedNets with this method: rmt or aes")
    disguised.add_argument("--key-params", metavar="KEY",
                           help="audit DisguisedNets with the parameters of stored key keys/ID (read with GetKey)")
    add_parameter_arguments(disguised)
    disguised.add_argument("--known-pairs", type=non_negative_int, metavar="M",
                           help="images the Level-2 attacker holds with their disguises (default 4; 0: none)")
    disguised.add_argument("--no-curves", action="store_true",
                           help="leave out the curves of SSIM against pairs held and noise")
    start.add_argument("--display-name", default="", help="a name for people")
    start.add_argument("--chunk-images", type=positive_int, default=1024,
                       help="images per upload message (default %(default)s)")
    _follow_arguments(start)
    start.add_argument("--detach", action="store_true", help="print the audit's name and return at once")
    start.add_argument("--fail-above", type=float, metavar="LEVEL",
                       help="exit 3 when the strongest attack without keys leaks above LEVEL: its Max_SSIM "
                            "(reconstruction) or AUC (membership); gates a pipeline")
    _json_argument(start)

    watch = actions.add_parser("watch", help="follow an audit to its end and print the summary")
    connection_arguments(watch)
    watch.add_argument("audit", metavar="ID", help="the audit, `ID` or `audits/ID`")
    _follow_arguments(watch)

    get = actions.add_parser("get", help="print an audit, or write its report with --report-dir")
    connection_arguments(get)
    get.add_argument("audit", metavar="ID", help="the audit, `ID` or `audits/ID`")
    get.add_argument("--report-dir", metavar="DIR",
                     help="write report.json, grid.png and recoveries.npz here")
    _json_argument(get)

    listing = actions.add_parser("list", help="list audits, newest first")
    connection_arguments(listing)
    listing.add_argument("--state", choices=tuple(STATE_VALUES), help="only audits in this state")
    listing.add_argument("--limit", type=positive_int, default=50, help="most audits shown (default %(default)s)")
    listing.add_argument("--json", action="store_true", help="one JSON object per audit and line")

    for action, text in (("cancel", "stop a queued or running audit"),
                         ("delete", "delete a finished audit and its report")):
        parser = actions.add_parser(action, help=text)
        connection_arguments(parser)
        parser.add_argument("audit", metavar="ID", help="the audit, `ID` or `audits/ID`")


def _json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print the audit (and its report's numbers) as one JSON object instead of a table")


def _follow_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report-dir", metavar="DIR",
                        help="when the audit succeeds, write report.json, grid.png, recoveries.npz (and for "
                             "DisguisedNets curves.png) here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``instahide audit <action>``."""
    actions = {"start": _start, "watch": _watch, "get": _get, "list": _list, "cancel": _cancel,
               "delete": _delete}
    with client(args) as service:
        try:
            return actions[args.audit_command](service, args)
        except ValueError as exc:  # a malformed audit id or option, found before any call
            raise CliError(str(exc)) from None


def _start(client: InstaHideClient, args: argparse.Namespace) -> int:
    if args.outputs or args.membership:
        return _start_membership(client, args)
    membership_flags = [flag for flag, on in (("--defense", args.defense), ("--outputs-kind",
                                                                             args.outputs_kind != "auto"),
                                              ("--ignore-index", args.ignore_index is not None)) if on]
    if membership_flags:
        raise CliError(f"{', '.join(membership_flags)}: membership options; add --outputs FILE (or --membership)")
    inputs: dict[str, np.ndarray | None] = {}
    if args.encodings:
        if not args.images:
            raise CliError("--encodings needs --images (the original private images)")
        originals = load_npz(args.images, ("images",))
        # `instahide encode` writes `encoded`; encodings made elsewhere may say `encodings`: either is read.
        encoded = load_npz(args.encodings, ("labels",), ("encodings", "encoded"))
        if "encodings" not in encoded and "encoded" not in encoded:
            raise CliError(f"{args.encodings} has neither `encodings` nor `encoded` (what `instahide encode` "
                           "writes)")
        inputs = {"images": originals["images"], "encodings": encoded.get("encodings", encoded.get("encoded")),
                  "encoding_labels": encoded["labels"]}
    disguised = _disguised_nets(client, args)
    if args.images and not args.encodings:
        # A DisguisedNets audit's labels are optional: they score the papers' attack success.
        inputs = load_npz(args.images, ("images",), ("labels",)) if disguised else \
            load_npz(args.images, ("images", "labels"))
        inputs.setdefault("labels", None)
    source = args.encodings or args.images or args.dataset
    instahide = {} if disguised else {"mode": args.mode, "k": args.k, "encodings_per_image": args.encodings_per_image,
                                      "num_classes": args.num_classes}
    try:
        audit = client.start_audit(
            **inputs, dataset=args.dataset, seed=args.seed, **instahide, **disguised,
            **_attack_options(args), display_name=args.display_name,
            chunk_images=args.chunk_images, timeout=args.timeout)
    except (ValueError, TypeError) as exc:
        raise CliError(f"{source}: {exc}") from None
    print(f"started {audit.name}", file=sys.stderr)
    if args.detach:
        print(audit.name)
        print(f"follow it with: instahide audit watch {audit.id} --target {args.target}", file=sys.stderr)
        return 0
    return _follow(client, audit.name, args)


def _start_membership(client: InstaHideClient, args: argparse.Namespace) -> int:
    if args.images:
        raise CliError("--membership audits model outputs: give --outputs FILE (or --dataset NAME), not --images")
    others = [flag for flag, on in (("--encodings", args.encodings), ("--mode", args.mode != "cross"),
                                    ("--k", args.k), ("--encodings-per-image", args.encodings_per_image),
                                    ("--num-classes", args.num_classes), ("--disguise", args.disguise),
                                    ("--key-params", args.key_params), ("--known-pairs", args.known_pairs is not None),
                                    ("--no-curves", args.no_curves)) if on] + given_parameters(args)
    if others:
        raise CliError(f"{', '.join(others)}: reconstruction options, not a membership audit's")
    inputs: dict = {}
    kind = args.outputs_kind
    if args.outputs:
        arrays = load_npz(args.outputs, ("labels", "member"), ("outputs", "logits", "reference_outputs",
                                                               "reference_member"))
        outputs, logits = model_outputs(arrays, args.outputs)
        kind = "logits" if logits and kind == "auto" else kind
        references = {"reference_outputs": model_outputs({"outputs": arrays["reference_outputs"]}, args.outputs)[0],
                      "reference_member": arrays.get("reference_member")} if "reference_outputs" in arrays else {}
        inputs = {"outputs": outputs, "labels": arrays["labels"], "member": arrays["member"], **references}
    source = args.outputs or args.dataset
    try:
        audit = client.start_membership_audit(
            **inputs, dataset=args.dataset, defenses=args.defense, outputs_kind=kind,
            ignore_index=args.ignore_index, seed=args.seed, **_attack_options(args),
            display_name=args.display_name, chunk_examples=args.chunk_images, timeout=args.timeout)
    except (ValueError, TypeError) as exc:
        raise CliError(f"{source}: {exc}") from None
    print(f"started {audit.name}", file=sys.stderr)
    if args.detach:
        print(audit.name)
        return 0
    return _follow(client, audit.name, args)


def _disguised_nets(client: InstaHideClient, args: argparse.Namespace) -> dict:
    """start_audit's DisguisedNets options from the flags ({} for an InstaHide audit); CliError for flags that
    do not go together."""
    flags = given_parameters(args) + [flag for flag, on in (("--known-pairs", args.known_pairs is not None),
                                                            ("--no-curves", args.no_curves)) if on]
    if not (args.disguise or args.key_params):
        if flags:
            raise CliError(f"{', '.join(flags)}: DisguisedNets options; add --disguise METHOD or --key-params KEY")
        return {}
    if args.disguise and args.key_params:
        raise CliError("--disguise and --key-params both name the parameters; give one")
    instahide = [flag for flag, on in (("--encodings", args.encodings), ("--mode", args.mode != "cross"),
                                       ("--k", args.k), ("--encodings-per-image", args.encodings_per_image),
                                       ("--num-classes", args.num_classes)) if on]
    if instahide:
        raise CliError(f"{', '.join(instahide)}: InstaHide's options, not a DisguisedNets audit's")
    if args.key_params:
        if given_parameters(args):
            raise CliError(f"{', '.join(given_parameters(args))}: --key-params takes the stored key's parameters")
        params = client.get_key(args.key_params if args.key_params.startswith("keys/") else f"keys/{args.key_params}",
                                timeout=args.timeout).params
    else:
        params = parameters(args, args.disguise)
    return {"disguised_nets": params, "known_pairs": args.known_pairs, "skip_curves": args.no_curves}


def _attack_options(args: argparse.Namespace) -> dict[str, list[str]]:
    """The attacks to run from the flags: ``--attack`` names them all; otherwise the defaults, with
    ``--add-attack``/``--skip-attack`` (and the older flags that mean them)."""
    extra, skipped = list(args.add_attack), list(args.skip_attack)
    for flag, (change, name) in LEGACY_FLAGS.items():
        if getattr(args, flag.removeprefix("--").replace("-", "_")):
            (extra if change == "add" else skipped).append(name)
    if args.attack and (extra or skipped):
        raise CliError("--attack names every attack to run; drop --add-attack, --skip-attack and the --no-* / "
                       "--photo-aware flags, or name the attacks you want with --attack")
    return {"attacks": args.attack, "extra_attacks": extra, "skipped_attacks": skipped}


def _watch(client: InstaHideClient, args: argparse.Namespace) -> int:
    return _follow(client, args.audit, args)


class _ProgressBar:
    """A tqdm bar over the audit's overall fraction, the stage name as its description.

    Drawn at the first event (so a call that fails at once prints its error line only).
    """

    def __init__(self, quiet: bool) -> None:
        self._quiet = quiet
        self._bar: tqdm | None = None
        self._label = ""

    def __call__(self, event: AuditEvent) -> None:
        if self._bar is None:
            self._bar = tqdm(total=100, unit="%", file=sys.stderr, disable=self._quiet,
                             bar_format="{desc:<12} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
        label = (event.progress.stage or event.state) if event.state == "running" else event.state
        done = 100.0 if event.state == "succeeded" else min(100.0, max(0.0, 100.0 * event.progress.fraction))
        self._bar.update(done - self._bar.n)
        if label != self._label:  # a new stage: show it at once (updates alone are rate-limited)
            self._label = label
            self._bar.set_description_str(label, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _follow(client: InstaHideClient, name: str, args: argparse.Namespace) -> int:
    """Show the audit's progress until it ends, then its summary (and report folder)."""
    bar = _ProgressBar(args.quiet)
    try:
        audit = client.wait_audit(name, progress=bar, summary_only=not args.report_dir)
    except KeyboardInterrupt:
        bar.close()
        audit_id = name.removeprefix("audits/")
        print(f"stopped following audits/{audit_id}; it goes on on the server.\n"
              f"cancel it with: instahide audit cancel {audit_id} --target {args.target}", file=sys.stderr)
        return 130
    finally:
        bar.close()
    return _finish(audit, args.report_dir, as_json=getattr(args, "json", False),
                   fail_above=getattr(args, "fail_above", None))


def _finish(audit: Audit, report_dir: str | None, *, as_json: bool = False,
            fail_above: float | None = None) -> int:
    if audit.state == "succeeded" and audit.report is not None:
        print(json.dumps(audit_json(audit), allow_nan=False) if as_json else format_summary(audit.report))
        if report_dir:
            _write_report(audit, report_dir)
        return _gate(audit.report, fail_above)
    if as_json:
        print(json.dumps(audit_json(audit), allow_nan=False))
    reason = f": {audit.error}" if audit.error else ""
    print(f"error: {audit.name} {audit.state}{reason}", file=sys.stderr)
    return 1


LEAKED = 3  # the exit status of an audit that leaked above --fail-above


def _gate(report: AuditReport, fail_above: float | None) -> int:
    """0, or ``LEAKED`` (with a line on stderr) when the strongest attack without keys leaks above the level."""
    if fail_above is None:
        return 0
    name, scores = report.strongest_attack_without_keys()
    if report.membership is not None:
        name, scores = max(((n, r.scores) for n, r in report.results.items() if not r.bound),
                           key=lambda item: item[1].auc)
        measure, value = "AUC", scores.auc
    else:
        measure, value = "Max_SSIM", scores.max_ssim
    if not value > fail_above:
        return 0
    print(f"leak: {report.results[name].title} {measure} {value:.4f} > {fail_above:g} (--fail-above)",
          file=sys.stderr)
    return LEAKED


def audit_json(audit: Audit) -> dict:
    """The audit and, once it has one, its report's numbers (``AuditReport.to_dict``), JSON-ready."""
    out = audit.to_dict()
    if audit.report is not None:
        out["report"] = audit.report.to_dict()
    return out


def _write_report(audit: Audit, report_dir: str) -> None:
    try:
        paths = audit.write_report(report_dir)
    except OSError as exc:
        raise CliError(f"cannot write {report_dir}: {exc.strerror or exc}") from None
    print(f"wrote {', '.join(p.name for p in paths)} to {report_dir}", file=sys.stderr)


def _get(client: InstaHideClient, args: argparse.Namespace) -> int:
    audit = client.get_audit(args.audit, summary_only=not args.report_dir, timeout=args.timeout)
    print(json.dumps(audit_json(audit), allow_nan=False) if args.json else format_audit(audit))
    if args.report_dir:
        if audit.report is None:
            raise CliError(f"{audit.name} has no report yet (state {audit.state})")
        _write_report(audit, args.report_dir)
    return 0


def _list(client: InstaHideClient, args: argparse.Namespace) -> int:
    audits = []
    for audit in client.list_audits(state=args.state, page_size=min(args.limit, 1000), timeout=args.timeout):
        audits.append(audit)
        if len(audits) >= args.limit:
            break
    if args.json:
        for audit in audits:
            print(json.dumps(audit_json(audit), allow_nan=False))
        return 0
    rows = [(a.name, a.state, _when(a.create_time), *_headline(a.report)) for a in audits]
    print(_table(("name", "state", "created", "images", "strongest_attack", "leakage"), rows))
    return 0


def _headline(report: AuditReport | None) -> tuple[str, str, str]:
    """Images (examples), and the attack without keys that leaked most with its Max_SSIM (a membership audit: its
    TPR at 1 % FPR); "-" without a report."""
    if report is None:
        return "-", "-", "-"
    name, scores = report.strongest_attack_without_keys()
    if report.membership is not None:
        return str(report.membership.examples), report.results[name].title, f"TPR@1%FPR {_rate(scores.tpr(0.01))}"
    return str(report.images), report.results[name].title, _number(scores.max_ssim)


def _cancel(client: InstaHideClient, args: argparse.Namespace) -> int:
    audit = client.cancel_audit(args.audit, timeout=args.timeout)
    print(f"{audit.name} {audit.state}")
    return 0


def _delete(client: InstaHideClient, args: argparse.Namespace) -> int:
    client.delete_audit(args.audit, timeout=args.timeout)
    print(f"deleted audits/{args.audit.removeprefix('audits/')}")
    return 0


# -- formatting ---------------------------------------------------------------------------------------

def _number(value: float, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _when(t) -> str:
    return "-" if t is None else t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in (header, *rows)]
    return "\n".join(lines)


def _rate(value: float | None) -> str:
    return "n/e" if value is None else f"{value:.2%}"


def format_membership(report: AuditReport) -> str:
    """A membership audit's table: one row per attack (AUC, advantage, TPR at low FPR, seconds), the task, sizes
    and utility, then each defense's utility and its strongest attack."""
    summary = report.membership
    assert summary is not None
    rows = [(result.title, _number(s.auc), _number(s.advantage), _rate(s.tpr(0.1)), _rate(s.tpr(0.01)),
             _rate(s.tpr(0.001)), f"{sum(s.stage_seconds.values()):.1f}")
            for result in report.results.values() for s in (result.scores,)]
    lines = [_table(("attack", "AUC", "advantage", "TPR@10%FPR", "TPR@1%FPR", "TPR@0.1%FPR", "seconds"), rows),
             f"device: {report.device}  task: {summary.task}  examples: {summary.examples} ({summary.members} "
             f"members)  references: {summary.references}  {summary.utility_name}: {summary.utility:.4f}  "
             f"seconds: {report.seconds:.1f}"]
    if summary.defenses:
        defended = []
        for outcome in summary.defenses:
            name, best = max(outcome.attacks.items(), key=lambda item: (item[1].tpr(0.01) or 0.0, item[1].auc))
            defended.append((outcome.name, _number(outcome.utility), name, _number(best.auc), _rate(best.tpr(0.01))))
        lines.append(_table(("defense", summary.utility_name, "strongest attack", "AUC", "TPR@1%FPR"), defended))
    return "\n".join(lines)


def format_summary(report: AuditReport) -> str:
    """The leakage table: one row per attack, then the device, sizes and the pool mixed in, then, for each attack that
    looks for public images, the share of the encodings it found one in (a membership audit: ``format_membership``)."""
    if report.membership is not None:
        return format_membership(report)
    rows = [(result.title, _number(s.max_ssim), _number(s.mean_ssim), _number(s.min_l2), _number(s.mean_l2),
             f"{s.recovered_above_0_5:.1%}", f"{s.recovered_above_0_8:.1%}",
             f"{sum(s.stage_seconds.values()):.1f}")
            for result in report.results.values() for s in (result.scores,)]
    table = _table(("attack", "Max_SSIM", "Mean_SSIM", "Min_L2", "Mean_L2", "recovered>0.5", ">0.8", "seconds"),
                   rows)
    pool = f"  pool: {report.pool_images} images ({report.pool_fingerprint[:12]})" if report.pool_images else ""
    found = "".join(f"\n{result.title} found public images in {result.scores.public_coverage:.0%} of the encodings"
                    for result in report.results.values() if result.scores.public_coverage is not None)
    disguised = "".join(f"\n{result.title}: {details}" for result in report.results.values()
                        for details in [_disguise_details(result.scores)] if details)
    sizes = (f"images: {report.images}  attacked: {report.encodings}  known pairs: {report.known_pairs}"
             if report.curves or report.known_pairs or disguised else
             f"images: {report.images}  encodings: {report.encodings}")
    return (f"{table}\n"
            f"device: {report.device}  {sizes}  seconds: {report.seconds:.1f}{pool}{found}{disguised}")


def _disguise_details(scores) -> str:
    """A DisguisedNets attack's permutation found, codebook hit rate and attack success, in words ("" for none)."""
    parts = []
    if scores.permutation_accuracy is not None:
        parts.append(f"permutation {scores.permutation_accuracy:.0%} right")
    if scores.hit_rate is not None:
        parts.append(f"codebook hit rate {scores.hit_rate:.1%}")
    if scores.attack_success is not None:
        success = scores.attack_success
        parts.append(f"attack success {success['success']:.2f} (accuracy {success['recovered_accuracy']:.2f} on "
                     f"recoveries, {success['original_accuracy']:.2f} on originals, chance {success['chance']:.2f})")
    return ", ".join(parts)


def format_audit(audit: Audit) -> str:
    """An audit for people: name, state, times, spec, progress or error, and the summary."""
    spec = audit.spec
    source = (f"dataset {spec.dataset}" if spec.dataset else
              "precomputed encodings" if spec.precomputed_encodings else
              "uploaded outputs" if spec.kind == "membership" else "uploaded images")
    if spec.kind == "membership":
        configuration = f"defenses {', '.join(spec.defenses) or 'none'}"
    elif spec.disguised_nets is not None:
        params = spec.disguised_nets
        rows, cols = params["block"]
        configuration = (f"DisguisedNets {params['method']} {rows}x{cols}, noise {params['noise']:g}, scale "
                         f"{params['scale']}, {spec.known_pairs} known pairs")
    else:
        configuration = f"mode {spec.mode}, k {spec.k or 'default'}, T {spec.encodings_per_image or 'E/N'}"
    lines = [
        f"{audit.name}  {audit.state}" + (f"  ({spec.display_name})" if spec.display_name else ""),
        f"created {_when(audit.create_time)}  started {_when(audit.start_time)}  ended {_when(audit.end_time)}",
        f"{spec.kind} of {source}; {configuration}, "
        f"seed {'none' if spec.seed is None else spec.seed}; attacks {', '.join(spec.attacks) or 'default'}",
    ]
    if audit.state in ("queued", "running"):
        lines.append(f"progress: {audit.progress.stage or audit.state} {audit.progress.fraction:.0%}")
    if audit.error:
        lines.append(f"error: {audit.error}")
    if audit.report is not None:
        lines.append(format_summary(audit.report))
    return "\n".join(lines)
