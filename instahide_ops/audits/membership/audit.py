"""A membership audit as one call: run the attacks on the owner's outputs, measure them, re-audit each defense.

``audit_membership`` hands every chosen attack the same view (``attack.MembershipView``), measures its scores
(``metrics.membership_metrics``: LiRA's TPR at low FPR first, AUC and advantage next) on the whole set and on
slices (by class and by whether the model is right, TF-Privacy's slicing: misclassified examples leak most),
and draws every attack's ROC on linear and log-log axes (LiRA's figure). Each output defense
(``transforms.defenses``) is then applied to the outputs and to the reference models' (the attacker knows the
mechanism, so its reference models release the same way) and the attacks run again, beside the defense's
utility cost. ``bench/membership.py`` and the audit service both call this, so their numbers agree.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from instahide_ops.audits.membership.attack import (
    MembershipAttack,
    MembershipResult,
    MembershipView,
    choose_membership_attacks,
)
from instahide_ops.audits.membership.data import MembershipData
from instahide_ops.audits.membership.metrics import MembershipMetrics, membership_metrics
from instahide_ops.audits.progress import CancelToken, StageTracker
from instahide_ops.grid import encode_png
from instahide_ops.plot import line_plot
from instahide_ops.transforms.defenses import Defense, apply_defense, utility

AuditProgressCallback = Callable[[str, float, float], None]
"""Called with (stage, fraction of the stage, fraction of the whole audit)."""

HEADLINE_FPR = 0.01
LOG_FLOOR = 1e-5  # the log-log ROC's lower corner, LiRA's


@dataclass(frozen=True)
class MembershipAttackReport:
    """How one attack did.

    Attributes:
        attack: the registered attack (name, title, threat).
        metrics: on the whole audit set.
        slices: "class=<c>" (classification), "correct", "incorrect" -> metrics on that slice; None where the slice
            lacks members or non-members.
        scores: (N,) float64 each example's risk score (higher: more exposed).
        seconds: the attack's wall time.
    """

    attack: MembershipAttack
    metrics: MembershipMetrics
    slices: dict[str, MembershipMetrics | None]
    scores: np.ndarray
    seconds: float

    def to_dict(self) -> dict:
        return {**self.metrics.to_dict(), "seconds": self.seconds,
                "slices": {name: None if m is None else m.to_dict() for name, m in self.slices.items()}}


@dataclass(frozen=True)
class DefenseReport:
    """The attacks re-run on defended outputs, and what the defense costs.

    Attributes:
        defense: the defense applied.
        utility_name, utility: "accuracy" or "miou" of the defended outputs against the labels.
        attacks: attack name -> its report on the defended outputs.
    """

    defense: Defense
    utility_name: str
    utility: float
    attacks: dict[str, MembershipAttackReport]

    def to_dict(self) -> dict:
        return {"defense": str(self.defense), self.utility_name: self.utility,
                "attacks": {name: report.to_dict() for name, report in self.attacks.items()}}


@dataclass(frozen=True)
class MembershipReport:
    """An audit's result.

    Attributes:
        task: "classification" or "segmentation".
        examples, members, references: N, how many are members, K.
        utility_name, utility: "accuracy" or "miou" of the undefended outputs.
        attacks: attack name -> its report, in run order.
        defenses: one report a defense, in the order given.
        roc_png: every attack's ROC (undefended) on linear and on log-log axes (1e-5..1), side by side.
        device: where the defenses ran; seconds: the audit's wall time.
    """

    task: str
    examples: int
    members: int
    references: int
    utility_name: str
    utility: float
    attacks: dict[str, MembershipAttackReport]
    defenses: list[DefenseReport]
    roc_png: bytes
    device: str
    seconds: float

    def strongest(self) -> MembershipAttackReport:
        """The attack with the highest TPR at 1 % FPR (not estimable counts lowest), the AUC breaking ties."""
        return strongest(self.attacks.values())

    def summary(self) -> dict:
        """The headline numbers, JSON-ready (no scores, no curves)."""
        return {"task": self.task, "examples": self.examples, "members": self.members,
                "references": self.references, self.utility_name: self.utility, "device": self.device,
                "seconds": self.seconds, "strongest": self.strongest().attack.name,
                "attacks": {name: report.to_dict() for name, report in self.attacks.items()},
                "defenses": [defense.to_dict() for defense in self.defenses]}


def strongest(reports: Sequence[MembershipAttackReport] | object) -> MembershipAttackReport:
    """Of attack reports, the highest TPR at 1 % FPR, then the highest AUC (the earlier one on a full tie)."""
    def key(report: MembershipAttackReport) -> tuple[float, float]:
        tpr = report.metrics.tpr_at_fpr.get(HEADLINE_FPR)
        return (-np.inf if tpr is None else tpr, report.metrics.auc)
    return max(reports, key=key)  # type: ignore[arg-type]


def audit_membership(data: MembershipData, *, attacks: Sequence[str] = (), extra: Sequence[str] = (),
                     skipped: Sequence[str] = (), defenses: Sequence[Defense] = (), seed: int | None = None,
                     device: torch.device | str = "cpu", progress: AuditProgressCallback | None = None,
                     cancel: CancelToken | None = None) -> MembershipReport:
    """Run membership attacks on ``data``, measure them, and re-audit each defense.

    Args:
        data: the outputs, labels and membership (and optionally reference models' outputs).
        attacks, extra, skipped: which attacks run (``attack.choose_membership_attacks``).
        defenses: output defenses to re-audit, each with its utility.
        seed: the trained attacks' folds and the defenses' noise (None: fresh randomness).
        device: where the defenses run.
        progress: (stage, stage fraction, overall fraction); stages are each attack by name, then
            "defense:<spec>" per defense, then "scoring".
        cancel: stops the audit (AttackCancelled) at its next progress report.

    Raises:
        InvalidInputError: bad data (``field`` names it), an unknown attack or one the data cannot feed, a defense
            the outputs cannot take.
    """
    start = time.perf_counter()
    data.check()
    chosen = choose_membership_attacks(data, attacks, extra, skipped)
    weights = ({attack.name: 1.0 for attack in chosen} | {f"defense:{d}": float(len(chosen)) for d in defenses}
               | {"scoring": 1.0})
    tracker = StageTracker(_OverallProgress(progress, weights), cancel)
    results = {}
    for attack in chosen:
        with tracker.stage(attack.name):
            results[attack.name] = attack.run(MembershipView(data, seed), cancel=cancel)
    generator = torch.Generator().manual_seed(seed if seed is not None else secrets.randbits(63))
    defended = []
    for defense in defenses:
        with tracker.stage(f"defense:{defense}") as report:
            released = defended_data(data, defense, device=device, generator=generator)
            defended_results = {}
            for i, attack in enumerate(chosen):
                defended_results[attack.name] = attack.run(MembershipView(released, seed), cancel=cancel)
                report((i + 1) / len(chosen))
            name, value = utility(released.probabilities(), np.asarray(data.labels), ignore_index=data.ignore_index)
            defended.append(DefenseReport(defense, name, value, attack_reports(chosen, defended_results, released)))
    with tracker.stage("scoring"):
        reports = attack_reports(chosen, results, data)
        roc_png = encode_png(roc_picture(reports))
        utility_name, value = utility(data.probabilities(), np.asarray(data.labels), ignore_index=data.ignore_index)
    return MembershipReport(task=data.task, examples=data.examples, members=int(data.is_member.sum()),
                            references=data.references, utility_name=utility_name, utility=value, attacks=reports,
                            defenses=defended, roc_png=roc_png, device=_device_name(device),
                            seconds=time.perf_counter() - start)


def defended_data(data: MembershipData, defense: Defense, *, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> MembershipData:
    """``data`` with its outputs, and its references' outputs, released under ``defense`` (probabilities)."""
    def release(probabilities: np.ndarray) -> np.ndarray:
        released = apply_defense(torch.from_numpy(probabilities).to(device), defense, generator=generator)
        return released.cpu().numpy()

    references = data.reference_probabilities()
    return dataclasses.replace(data, outputs=release(data.probabilities()), outputs_are="probabilities",
                               reference_outputs=None if references is None else
                               np.stack([release(outputs) for outputs in references]))


def attack_reports(chosen: Sequence[MembershipAttack], results: dict[str, MembershipResult], data: MembershipData
                   ) -> dict[str, MembershipAttackReport]:
    """Each attack's metrics on the whole set and on its slices."""
    member = data.is_member
    slices = example_slices(data)
    reports = {}
    for attack in chosen:
        scores = np.asarray(results[attack.name].scores, dtype=np.float64)
        reports[attack.name] = MembershipAttackReport(
            attack, membership_metrics(scores, member),
            {name: _sliced_metrics(scores[where], member[where]) for name, where in slices.items()},
            scores, results[attack.name].seconds)
    return reports


def example_slices(data: MembershipData) -> dict[str, np.ndarray]:
    """Slice name -> (N,) bool: "class=<c>" for each class present (classification), "correct" and "incorrect"
    (classification: the top class is the label; segmentation: most non-ignored pixels are right)."""
    labels = np.asarray(data.labels)
    predicted = data.log_probabilities().argmax(axis=1)
    if data.task == "classification":
        right = predicted == labels
        slices = {f"class={c}": labels == c for c in np.unique(labels)}
    else:
        counted = labels != data.ignore_index
        right = ((predicted == labels) & counted).reshape(len(labels), -1).sum(1) * 2 > counted.reshape(
            len(labels), -1).sum(1)
        slices = {}
    return slices | {"correct": right, "incorrect": ~right}


def roc_picture(reports: dict[str, MembershipAttackReport]) -> np.ndarray:
    """(300, 960, 3) uint8 RGB: every attack's ROC on linear axes beside the same on log-log axes (1e-5..1)."""
    curves = {name: list(zip(r.metrics.fpr.tolist(), r.metrics.tpr.tolist(), strict=True))
              for name, r in reports.items()}
    linear = line_plot(curves | {"chance": [(0.0, 0.0), (1.0, 1.0)]}, title="ROC", x_label="false positive rate",
                       y_label="TPR", x_range=(0.0, 1.0), x_ticks=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), markers=False)
    # log axes: points without a true positive have no place (a line from the corner would invent a slope); those
    # without a false positive sit on the floor, where they show the TPR an attack reaches before its first one
    positive = {name: [(x, y) for x, y in points if y > 0] for name, points in curves.items()}
    log_log = line_plot(positive | {"chance": [(LOG_FLOOR, LOG_FLOOR), (1.0, 1.0)]}, title="ROC (log-log)",
                        x_label="false positive rate", y_label="TPR", x_range=(LOG_FLOOR, 1.0),
                        y_range=(LOG_FLOOR, 1.0), log_x=True, log_y=True, markers=False)
    return np.concatenate([linear, log_log], axis=1)


class _OverallProgress:
    """Turns (stage, fraction) reports into (stage, fraction, overall fraction) by the stages' weights."""

    def __init__(self, callback: AuditProgressCallback | None, weights: dict[str, float]) -> None:
        self._callback = callback
        self._weights = weights
        self._before, done = {}, 0.0
        for stage, weight in weights.items():
            self._before[stage] = done
            done += weight
        self._total = done

    def __call__(self, stage: str, fraction: float) -> None:
        if self._callback is not None:
            overall = (self._before[stage] + self._weights[stage] * fraction) / self._total
            self._callback(stage, fraction, min(1.0, overall))


def _sliced_metrics(scores: np.ndarray, member: np.ndarray) -> MembershipMetrics | None:
    return membership_metrics(scores, member) if 0 < member.sum() < len(member) else None


def _device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
