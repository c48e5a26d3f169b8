"""Leakage audits as plain dataclasses: ``Audit``, its ``AuditReport`` and what ``watch_audit`` yields.

Everything here is converted from the ``instahide.v1`` audit messages; nothing holds a proto. A report is a
row per attack that ran, named as the service's registry names it (``report.results``; each row says
whether it is a bound, an attacker holding the keys), so no attack is named here. The report writes itself
to a folder (``report.json``, ``grid.png``, ``recoveries.npz``) so anyone can read the numbers and rescore
the recovered images.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from instahide_client._types import MODE_NAMES
from instahide_client.defenses import defense_name
from instahide_client.instahide.v1 import audit_pb2, membership_pb2
from instahide_client.keys import params_dict
from instahide_client.tensors import optional_numpy

STATES: dict[int, str] = {
    audit_pb2.AUDIT_STATE_UNSPECIFIED: "unspecified",
    audit_pb2.AUDIT_STATE_QUEUED: "queued",
    audit_pb2.AUDIT_STATE_RUNNING: "running",
    audit_pb2.AUDIT_STATE_SUCCEEDED: "succeeded",
    audit_pb2.AUDIT_STATE_FAILED: "failed",
    audit_pb2.AUDIT_STATE_CANCELLED: "cancelled",
}
STATE_VALUES: dict[str, int] = {name: value for value, name in STATES.items() if value}
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
METRICS = ("max_ssim", "mean_ssim", "min_l2", "mean_l2")
NAME_PREFIX = "audits/"

REPORT_JSON = "report.json"
GRID_PNG = "grid.png"
CURVES_PNG = "curves.png"
ROC_PNG = "roc.png"
SCORES_NPZ = "scores.npz"
RECOVERIES_NPZ = "recoveries.npz"


def audit_name(name_or_id: str) -> str:
    """The resource name ``audits/{id}`` of ``"audits/{id}"`` or ``"{id}"``.

    Raises:
        ValueError: an empty id, or a name of another collection.

    Examples:
        >>> audit_name("abc"), audit_name("audits/abc")
        ('audits/abc', 'audits/abc')
    """
    if not isinstance(name_or_id, str):
        raise TypeError(f"audit name must be a str, got {type(name_or_id).__name__}")
    audit_id = name_or_id.strip()
    if audit_id.startswith(NAME_PREFIX):
        audit_id = audit_id[len(NAME_PREFIX):]
    if not audit_id or "/" in audit_id:
        raise ValueError(f"expected an audit id or 'audits/{{id}}', got {name_or_id!r}")
    return NAME_PREFIX + audit_id


def state_name(value: int) -> str:
    """"queued", "running", "succeeded", "failed", "cancelled" (or "unspecified")."""
    return STATES.get(value, f"unknown({value})")


def state_value(name: str) -> int:
    """The ``AuditState`` value of a lowercase state name; ValueError for an unknown one."""
    try:
        return STATE_VALUES[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown audit state {name!r}; expected one of "
                         f"{', '.join(map(repr, STATE_VALUES))}") from None


def _time(msg: audit_pb2.Audit, name: str) -> dt.datetime | None:
    if not msg.HasField(name):
        return None
    return getattr(msg, name).ToDatetime(tzinfo=dt.UTC)


def json_number(value: float | int | None) -> float | int | None:
    """A JSON-clean number: NaN and ±inf become None (JSON has neither)."""
    if value is None:
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class AuditSpec:
    """What an audit was asked to do, with the defaults the service resolved.

    Attributes:
        kind: "reconstruction" (what an attacker recovers of the images).
        mode: "cross" or "inside".
        k: images per mix.
        encodings_per_image: encodings made of each private image (T); None for precomputed
            encodings that left it to the service (E / N).
        num_classes: label width, or None (inferred by the service).
        dataset: server-side dataset name, "" when the images were uploaded.
        precomputed_encodings: the upload carried encodings made elsewhere.
        seed: the simulated deployment's key seed, or None (fresh keys).
        attacks: the attacks the audit runs, by registry name (as the service resolved them).
        display_name: a name for people.
        transform: the family audited: "instahide" or "disguised_nets".
        disguised_nets: DisguisedNets: the key parameters audited (``keys.disguised_nets_params``' options).
        known_pairs: DisguisedNets: images the Level-2 attacker held.
        defenses: membership: the output defenses audited ("gauss:0.1", "argmax", ...).
    """

    kind: str = "reconstruction"
    mode: str = "cross"
    k: int | None = None
    encodings_per_image: int | None = None
    num_classes: int | None = None
    dataset: str = ""
    precomputed_encodings: bool = False
    seed: int | None = None
    attacks: tuple[str, ...] = ()
    display_name: str = ""
    transform: str = "instahide"
    disguised_nets: dict[str, Any] | None = None
    known_pairs: int | None = None
    defenses: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, msg: audit_pb2.AuditSpec) -> AuditSpec:
        kind = msg.WhichOneof("kind") or "reconstruction"
        if kind == "membership":
            spec = msg.membership
            return cls(kind=kind, dataset=msg.dataset, attacks=tuple(msg.attacks), display_name=msg.display_name,
                       seed=int(spec.seed) if spec.HasField("seed") else None, transform="",
                       defenses=tuple(defense_name(d) for d in spec.defenses))
        reconstruction = msg.reconstruction
        if reconstruction.WhichOneof("transform") == "disguised_nets":
            audited = reconstruction.disguised_nets
            return cls(kind=kind, dataset=msg.dataset, attacks=tuple(msg.attacks), display_name=msg.display_name,
                       seed=int(audited.seed) if audited.HasField("seed") else None, transform="disguised_nets",
                       disguised_nets=params_dict(audited.params), known_pairs=int(audited.known_pairs))
        config = reconstruction.instahide
        return cls(
            kind=kind,
            mode=MODE_NAMES.get(config.mode, str(config.mode)),
            k=int(config.k) or None,
            encodings_per_image=int(reconstruction.encodings_per_image) or None,
            num_classes=int(config.num_classes) or None,
            dataset=msg.dataset,
            precomputed_encodings=bool(reconstruction.precomputed_encodings),
            seed=int(config.seed) if config.HasField("seed") else None,
            attacks=tuple(msg.attacks),
            display_name=msg.display_name,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["attacks"] = list(self.attacks)
        out["defenses"] = list(self.defenses)
        if self.disguised_nets is not None:
            out["disguised_nets"] = {**self.disguised_nets, "block": list(self.disguised_nets["block"])}
        return out


@dataclass(frozen=True)
class AuditProgress:
    """How far an audit is: the current stage, its fraction done and the whole audit's."""

    stage: str = ""
    stage_fraction: float = 0.0
    fraction: float = 0.0

    @classmethod
    def from_proto(cls, msg: audit_pb2.AuditProgress) -> AuditProgress:
        return cls(msg.stage, float(msg.stage_fraction), float(msg.fraction))


@dataclass(frozen=True)
class AttackScores:
    """How one attack did on a reconstruction audit, scored as the InstaHide Challenge scores.

    Attributes:
        max_ssim: mean over encodings of the best SSIM against the encoding's private images.
        mean_ssim: mean over encodings of the mean SSIM against its private images.
        min_l2: mean over encodings of the smaller per-pixel MSE (on [-1, 1]).
        mean_l2: mean over encodings of the mean per-pixel MSE.
        recovered_above_0_5: fraction of private images whose best recovery has SSIM above 0.5.
        recovered_above_0_8: the same above 0.8.
        histogram: ``(lower, upper, count)`` buckets of the private images' best SSIMs over [-1, 1].
        stage_seconds: seconds per attack stage.
        best_ssim: (P,) float64, each private image's best SSIM over all recoveries.
        best_match: (P,) int64, the index into ``recovered`` of that best recovery.
        recovered: (M, H, W, C) float32 in [-1, 1], or None in a summary.
        public_coverage: share of the encodings in which the attack found a public image among what it holds
            (the photo-aware attack: crops of the photos); None for the attacks that look for none.
        hit_rate: DisguisedNets AES: the share of disguised codewords the known-pair codebook decrypted.
        permutation_accuracy: DisguisedNets: the share of block positions whose move the attack found.
        attack_success: DisguisedNets: the papers' metric (original_accuracy, recovered_accuracy, success,
            chance), None where the labels cannot train a classifier.
    """

    max_ssim: float
    mean_ssim: float
    min_l2: float
    mean_l2: float
    recovered_above_0_5: float
    recovered_above_0_8: float
    histogram: list[tuple[float, float, int]]
    stage_seconds: dict[str, float]
    best_ssim: np.ndarray
    best_match: np.ndarray
    recovered: np.ndarray | None
    public_coverage: float | None = None
    hit_rate: float | None = None
    permutation_accuracy: float | None = None
    attack_success: dict[str, float] | None = None

    @classmethod
    def from_proto(cls, row: audit_pb2.AttackResult) -> AttackScores:
        msg = row.reconstruction
        recovered = optional_numpy(msg, "recovered")
        return cls(
            max_ssim=float(msg.max_ssim),
            mean_ssim=float(msg.mean_ssim),
            min_l2=float(msg.min_l2),
            mean_l2=float(msg.mean_l2),
            recovered_above_0_5=float(msg.recovered_above_0_5),
            recovered_above_0_8=float(msg.recovered_above_0_8),
            histogram=[(float(b.lower), float(b.upper), int(b.count)) for b in msg.best_ssim_histogram],
            stage_seconds={str(k): float(v) for k, v in row.stage_seconds.items()},
            best_ssim=np.asarray(msg.best_ssim, dtype=np.float64),
            best_match=np.asarray(msg.best_match, dtype=np.int64),
            recovered=recovered,
            public_coverage=float(msg.public_coverage) if msg.HasField("public_coverage") else None,
            hit_rate=float(msg.hit_rate) if msg.HasField("hit_rate") else None,
            permutation_accuracy=float(msg.permutation_accuracy) if msg.HasField("permutation_accuracy") else None,
            attack_success={name: float(getattr(msg.attack_success, name)) for name in
                            ("original_accuracy", "recovered_accuracy", "success", "chance")}
            if msg.HasField("attack_success") else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The numbers, JSON-clean (NaN → None); the arrays are left to ``recoveries.npz``."""
        return {
            **{name: json_number(getattr(self, name)) for name in METRICS},
            "recovered_above_0_5": json_number(self.recovered_above_0_5),
            "recovered_above_0_8": json_number(self.recovered_above_0_8),
            "best_ssim_histogram": [{"lower": json_number(lo), "upper": json_number(hi), "count": int(n)}
                                    for lo, hi, n in self.histogram],
            "stage_seconds": {k: json_number(v) for k, v in self.stage_seconds.items()},
            "seconds": json_number(sum(self.stage_seconds.values())),
            "private_images": int(self.best_ssim.size),
            "recovered_images": None if self.recovered is None else int(self.recovered.shape[0]),
            **{name: json_number(getattr(self, name)) for name in ("public_coverage", "hit_rate",
                                                                    "permutation_accuracy")
               if getattr(self, name) is not None},
            **({} if self.attack_success is None else
               {"attack_success": {k: json_number(v) for k, v in self.attack_success.items()}}),
        }

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """``{prefix}_recovered`` (when present), ``{prefix}_best_match`` and ``{prefix}_best_ssim``."""
        out: dict[str, np.ndarray] = {}
        if self.recovered is not None:
            out[f"{prefix}_recovered"] = np.asarray(self.recovered, dtype=np.float32)
        out[f"{prefix}_best_match"] = self.best_match
        out[f"{prefix}_best_ssim"] = self.best_ssim
        return out


@dataclass(frozen=True)
class MembershipScores:
    """How one attack told members from non-members on a membership audit.

    Attributes:
        auc: area under the ROC curve (0.5: guessing).
        advantage: max over thresholds of TPR − FPR.
        tpr_at_fpr: FPR -> the TPR at it (None: too few non-members to estimate it).
        roc_fpr, roc_tpr: the ROC curve.
        slices: name ("class=3", "correct", "incorrect", ...) -> (examples, AUC or None, advantage or None).
        stage_seconds: seconds the attack took.
        risk_scores: (N,) float32 each example's membership score (higher: likelier a member), None in a summary.
    """

    auc: float
    advantage: float
    tpr_at_fpr: dict[float, float | None]
    roc_fpr: np.ndarray
    roc_tpr: np.ndarray
    slices: dict[str, tuple[int, float | None, float | None]]
    stage_seconds: dict[str, float]
    risk_scores: np.ndarray | None

    @classmethod
    def from_message(cls, msg: membership_pb2.MembershipScores, stage_seconds: dict[str, float]) -> MembershipScores:
        return cls(float(msg.auc), float(msg.advantage),
                   {float(p.fpr): float(p.tpr) if p.HasField("tpr") else None for p in msg.tpr_at_fpr},
                   np.asarray(msg.roc_fpr, dtype=np.float64), np.asarray(msg.roc_tpr, dtype=np.float64),
                   {s.name: (int(s.examples), float(s.auc) if s.HasField("auc") else None,
                             float(s.advantage) if s.HasField("advantage") else None) for s in msg.slices},
                   stage_seconds, optional_numpy(msg, "risk_scores"))

    def tpr(self, fpr: float) -> float | None:
        """The TPR at ``fpr`` (one of the reported FPRs), None when not estimable."""
        return self.tpr_at_fpr.get(fpr)

    def to_dict(self) -> dict[str, Any]:
        return {"auc": json_number(self.auc), "advantage": json_number(self.advantage),
                "tpr_at_fpr": {f"{fpr:g}": json_number(tpr) for fpr, tpr in self.tpr_at_fpr.items()},
                "slices": {name: {"examples": n, "auc": json_number(auc), "advantage": json_number(adv)}
                           for name, (n, auc, adv) in self.slices.items()},
                "seconds": json_number(sum(self.stage_seconds.values()))}

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """``{prefix}_risk_scores`` (when present), ``{prefix}_roc_fpr`` and ``{prefix}_roc_tpr``."""
        out = {f"{prefix}_roc_fpr": self.roc_fpr, f"{prefix}_roc_tpr": self.roc_tpr}
        if self.risk_scores is not None:
            out[f"{prefix}_risk_scores"] = np.asarray(self.risk_scores, dtype=np.float64)
        return out


@dataclass(frozen=True)
class DefenseOutcome:
    """A membership audit's result under one output defense: its utility and every attack's scores."""

    name: str
    utility: float
    attacks: dict[str, MembershipScores]

    def to_dict(self) -> dict[str, Any]:
        return {"utility": json_number(self.utility), "attacks": {n: s.to_dict() for n, s in self.attacks.items()}}


@dataclass(frozen=True)
class MembershipSummary:
    """What a membership audit reports beside its attacks' rows."""

    task: str
    examples: int
    members: int
    references: int
    utility_name: str
    utility: float
    roc_png: bytes
    defenses: list[DefenseOutcome]

    @classmethod
    def from_message(cls, msg: membership_pb2.MembershipReport) -> MembershipSummary:
        return cls(msg.task, int(msg.examples), int(msg.members), int(msg.references), msg.utility_name,
                   float(msg.utility), bytes(msg.roc_png),
                   [DefenseOutcome(d.name, float(d.utility),
                                   {n: MembershipScores.from_message(s, {}) for n, s in d.attacks.items()})
                    for d in msg.defenses])

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "examples": self.examples, "members": self.members,
                "references": self.references, self.utility_name: json_number(self.utility),
                "defenses": {d.name: d.to_dict() for d in self.defenses}}


@dataclass(frozen=True)
class AttackResult:
    """One attack that ran, as the service names and describes it.

    Attributes:
        name: its registry name, e.g. "pool_aware".
        title: its name for people, e.g. "pool-aware".
        threat: what its attacker holds, in a sentence.
        bound: it holds the keys: an upper bound (a leaked key store), not what the encodings give away.
        scores: how it did (``AttackScores`` in a reconstruction audit, ``MembershipScores`` in a membership one).
    """

    name: str
    title: str
    threat: str
    bound: bool
    scores: AttackScores | MembershipScores

    @classmethod
    def from_proto(cls, row: audit_pb2.AttackResult) -> AttackResult:
        scores = MembershipScores.from_message(row.membership, {k: float(v) for k, v in row.stage_seconds.items()}) \
            if row.HasField("membership") else AttackScores.from_proto(row)
        return cls(row.attack, row.title or row.attack, row.threat, bool(row.bound), scores)


@dataclass(frozen=True, kw_only=True)
class AuditReport:
    """The leakage report of a finished audit.

    Attributes:
        results: every attack that ran, by name, in the order it ran.
        device: where the attack ran, e.g. "cuda:0 (NVIDIA H100)" or "cpu".
        seconds: the whole audit, queue excluded.
        kind: the audit's kind ("reconstruction").
        grid_png: PNG of private images over their best recoveries by the strongest attack without keys
            (``grid_attack``; b"" in a summary).
        grid_attack: the attack the grid shows.
        images: private images audited.
        encodings: encodings attacked.
        pool_images, pool_fingerprint: the public pool the audited encodings mixed in, the one the server
            encodes this image shape with (its fingerprint is ``KeyRecord.pool_fingerprint``); 0 and "" for
            precomputed encodings, whose pool the server does not know.
        known_pairs: DisguisedNets: images the Level-2 attacker held (not attacked).
        curves: DisguisedNets: points (attack, axis, value, mean_ssim) of SSIM against pairs held and noise.
        curves_png: those curves drawn (b"" in a summary), written as ``curves.png``.
        membership: a membership audit's task, sizes, utility, ROC picture and defenses (None otherwise).
        audit: the owning audit's name, state, times and spec (JSON-ready), written into report.json.

    ``report.<attack name>`` is that attack's scores (``report.ciphertext_only.max_ssim``, ``report.lira_online.auc``).
    """

    results: dict[str, AttackResult]
    device: str
    seconds: float
    kind: str = "reconstruction"
    grid_png: bytes = b""
    grid_attack: str = ""
    images: int = 0
    encodings: int = 0
    pool_images: int = 0
    pool_fingerprint: str = ""
    known_pairs: int = 0
    curves: list[dict[str, Any]] = field(default_factory=list)
    curves_png: bytes = b""
    membership: MembershipSummary | None = None
    audit: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_proto(cls, msg: audit_pb2.AuditReport, *, audit: dict[str, Any] | None = None) -> AuditReport:
        kind = msg.WhichOneof("kind") or "reconstruction"
        reconstruction = msg.reconstruction
        return cls(
            results={row.attack: AttackResult.from_proto(row) for row in msg.attacks},
            device=msg.device,
            seconds=float(msg.seconds),
            kind=kind,
            grid_png=bytes(reconstruction.grid_png),
            grid_attack=reconstruction.grid_attack,
            images=int(reconstruction.images),
            encodings=int(reconstruction.encodings),
            pool_images=int(reconstruction.pool_images),
            pool_fingerprint=reconstruction.pool_fingerprint,
            known_pairs=int(reconstruction.known_pairs),
            curves=[{"attack": p.attack, "axis": p.axis, "value": float(p.value), "mean_ssim": float(p.mean_ssim)}
                    for p in reconstruction.curves],
            curves_png=bytes(reconstruction.curves_png),
            membership=MembershipSummary.from_message(msg.membership) if kind == "membership" else None,
            audit=dict(audit or {}),
        )

    def __getattr__(self, name: str) -> AttackScores:
        results = self.__dict__.get("results", {})
        if name in results:
            return results[name].scores
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (attacks in this report: "
                             f"{', '.join(results) or 'none'})")

    def attacks(self) -> dict[str, AttackScores]:
        """The scores of the attacks that ran, by name, in the order they ran."""
        return {name: result.scores for name, result in self.results.items()}

    def strongest_attack_without_keys(self) -> tuple[str, AttackScores | MembershipScores]:
        """The attack without keys that leaked most, as ``(name, scores)``: the highest Max_SSIM (reconstruction),
        or the highest TPR at 1 % FPR, then AUC (membership).

        This is the report's headline: the leakage to an attacker who holds no key. The earlier attack wins a
        tie, and a NaN never wins.
        """
        keyless = [(name, result.scores) for name, result in self.results.items() if not result.bound]
        if not keyless:
            raise ValueError("no attack without keys ran")
        return max(keyless, key=lambda item: _strength(item[1]))

    def to_dict(self) -> dict[str, Any]:
        """Every number of the report, JSON-clean, with the audit's name, state, times and spec."""
        out: dict[str, Any] = {}
        if self.audit:
            out["audit"] = self.audit
        if self.membership is not None:
            out.update({"kind": self.kind, "device": self.device, "seconds": json_number(self.seconds),
                        **self.membership.to_dict()})
            for name, result in self.results.items():
                out[name] = {"title": result.title, "threat": result.threat, **result.scores.to_dict()}
            out["files"] = {"roc": ROC_PNG if self.membership.roc_png else None, "scores": SCORES_NPZ}
            return out
        out.update({"kind": self.kind, "device": self.device, "images": self.images, "encodings": self.encodings,
                    "seconds": json_number(self.seconds), "pool_images": self.pool_images,
                    "pool_fingerprint": self.pool_fingerprint, "grid_attack": self.grid_attack})
        if self.known_pairs:
            out["pairs_held"] = self.known_pairs  # not "known_pairs": that is an attack's name
        for name, result in self.results.items():
            out[name] = {"title": result.title, "threat": result.threat, "bound": result.bound,
                         **result.scores.to_dict()}
        if self.curves:
            out["curves"] = [{**point, "mean_ssim": json_number(point["mean_ssim"])} for point in self.curves]
        out["files"] = {"grid": GRID_PNG if self.grid_png else None, "recoveries": RECOVERIES_NPZ,
                        **({"curves": CURVES_PNG} if self.curves_png else {})}
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays of ``recoveries.npz``: ``<attack>_recovered``, ``_best_match``, ``_best_ssim``; of a
        membership audit's ``scores.npz``: ``<attack>_risk_scores``, ``_roc_fpr``, ``_roc_tpr``."""
        out: dict[str, np.ndarray] = {}
        for name, scores in self.attacks().items():
            out.update(scores.arrays(name))
        return out

    def write(self, report_dir: str | os.PathLike) -> list[Path]:
        """Write ``report.json``, ``grid.png`` (when the report has one) and ``recoveries.npz``; for a membership
        audit ``report.json``, ``roc.png`` and ``scores.npz``.

        Each file is written to a temporary file beside it and renamed into place, so a reader
        never sees half a file; the folder is created when missing. Files are readable by their
        owner only (the recoveries are pictures of private images).

        Returns:
            The paths written.

        Raises:
            OSError: the folder or a file cannot be written.
        """
        directory = Path(report_dir)
        directory.mkdir(parents=True, exist_ok=True)
        written = [_atomic_write(directory / REPORT_JSON,
                                 (json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n").encode())]
        if self.grid_png:
            written.append(_atomic_write(directory / GRID_PNG, self.grid_png))
        if self.curves_png:
            written.append(_atomic_write(directory / CURVES_PNG, self.curves_png))
        if self.membership is not None and self.membership.roc_png:
            written.append(_atomic_write(directory / ROC_PNG, self.membership.roc_png))
        buffer = io.BytesIO()
        np.savez(buffer, **self.arrays())
        arrays = SCORES_NPZ if self.membership is not None else RECOVERIES_NPZ
        written.append(_atomic_write(directory / arrays, buffer.getvalue()))
        return written


def _strength(scores: AttackScores | MembershipScores) -> tuple[float, ...]:
    """How much an attack leaked, for ordering (NaN and not-estimable lowest)."""
    def finite(value: float | None) -> float:
        return value if value is not None and math.isfinite(value) else -math.inf

    if isinstance(scores, MembershipScores):
        return finite(scores.tpr(0.01)), finite(scores.auc)
    return (finite(scores.max_ssim),)


def _atomic_write(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


@dataclass(frozen=True)
class Audit:
    """An audit resource.

    Attributes:
        name: "audits/{id}".
        id: the id alone.
        state: "queued", "running", "succeeded", "failed" or "cancelled".
        create_time, start_time, end_time: timezone-aware UTC datetimes, or None when not reached.
        spec: what was asked.
        progress: where it is.
        error: why it failed ("" otherwise).
        report: the leakage report once succeeded, else None.
    """

    name: str
    id: str
    state: str
    create_time: dt.datetime | None
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    spec: AuditSpec
    progress: AuditProgress
    error: str = ""
    report: AuditReport | None = None

    @property
    def done(self) -> bool:
        """True once the audit has ended (succeeded, failed or cancelled)."""
        return self.state in FINAL_STATES

    @classmethod
    def from_proto(cls, msg: audit_pb2.Audit) -> Audit:
        name = msg.name
        audit = cls(
            name=name,
            id=name[len(NAME_PREFIX):] if name.startswith(NAME_PREFIX) else name,
            state=state_name(msg.state),
            create_time=_time(msg, "create_time"),
            start_time=_time(msg, "start_time"),
            end_time=_time(msg, "end_time"),
            spec=AuditSpec.from_proto(msg.spec),
            progress=AuditProgress.from_proto(msg.progress),
            error=msg.error,
        )
        if msg.HasField("report"):
            report = AuditReport.from_proto(msg.report, audit=audit.to_dict())
            audit = replace(audit, report=report)
        return audit

    def to_dict(self) -> dict[str, Any]:
        """Name, state, times (ISO 8601), spec, progress and error, JSON-ready (no report)."""
        def iso(t: dt.datetime | None) -> str | None:
            return None if t is None else t.isoformat()
        return {
            "name": self.name, "state": self.state, "create_time": iso(self.create_time),
            "start_time": iso(self.start_time), "end_time": iso(self.end_time), "error": self.error,
            "spec": self.spec.to_dict(),
            "progress": {"stage": self.progress.stage, "stage_fraction": json_number(self.progress.stage_fraction),
                         "fraction": json_number(self.progress.fraction)},
        }

    def write_report(self, report_dir: str | os.PathLike) -> list[Path]:
        """``self.report.write(report_dir)``; ValueError when the audit has no report."""
        if self.report is None:
            raise ValueError(f"{self.name} has no report (state {self.state})")
        return self.report.write(report_dir)


@dataclass(frozen=True)
class AuditEvent:
    """One progress event of :meth:`InstaHideClient.watch_audit`.

    Attributes:
        state: the audit's state at this event.
        progress: its progress at this event.
        error: set on the last event when the audit failed.
    """

    state: str
    progress: AuditProgress
    error: str = ""

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @classmethod
    def from_proto(cls, msg: audit_pb2.WatchAuditResponse) -> AuditEvent:
        return cls(state_name(msg.state), AuditProgress.from_proto(msg.progress), msg.error)
