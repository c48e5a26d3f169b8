"""``instahide_ops.audits.reconstruction.audit.LeakageReport`` → the ``AuditReport`` message."""

from __future__ import annotations

import numpy as np
from instahide_client._convert import to_tensor
from instahide_client.instahide.v1 import audit_pb2

from instahide_ops.audits.reconstruction.audit import AttackReport, LeakageReport


def report_message(report: LeakageReport) -> audit_pb2.AuditReport:
    """The wire form of a leakage report (the attacks that ran, device, grid, sizes, seconds and pool)."""
    message = audit_pb2.AuditReport(device=report.device, grid_png=report.grid_png, images=report.images,
                                    encodings=report.encodings, seconds=report.seconds,
                                    pool_images=report.pool_images, pool_fingerprint=report.pool_fingerprint)
    for name, attack in report.attacks().items():
        getattr(message, name).CopyFrom(attack_scores(attack))
    return message


def attack_scores(attack: AttackReport) -> audit_pb2.AttackScores:
    """One attack's challenge scores, recovery fractions, histogram, stage timings and recovered images."""
    recovery = attack.recovery
    scores = audit_pb2.AttackScores(
        recovered_above_0_5=_fraction(recovery.fractions, 0.5),
        recovered_above_0_8=_fraction(recovery.fractions, 0.8),
        stage_seconds={name: float(seconds) for name, seconds in attack.stage_seconds.items()},
        best_ssim=[float(v) for v in recovery.best_ssim.tolist()],
        best_match=[int(v) for v in recovery.best_match.tolist()],
        recovered=to_tensor(np.ascontiguousarray(attack.recovered.detach().cpu().numpy(), dtype=np.float32)),
    )
    if attack.public_coverage is not None:
        scores.public_coverage = attack.public_coverage
    if attack.scores is not None:
        scores.max_ssim = attack.scores.max_ssim
        scores.mean_ssim = attack.scores.mean_ssim
        scores.min_l2 = attack.scores.min_l2
        scores.mean_l2 = attack.scores.mean_l2
    edges = [float(v) for v in recovery.histogram_edges.tolist()]
    for lower, upper, count in zip(edges[:-1], edges[1:], recovery.histogram_counts.tolist(), strict=True):
        scores.best_ssim_histogram.add(lower=lower, upper=upper, count=int(count))
    return scores


def _fraction(fractions: dict[float, float], threshold: float) -> float:
    for key, value in fractions.items():
        if abs(float(key) - threshold) < 1e-9:
            return float(value)
    return 0.0
