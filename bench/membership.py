"""Membership-inference audits on CPU-sized models: every attack's AUC and TPR at low FPR, and what defenses cost.

Everything is trained here from what scikit-learn and this file bundle, so nothing is downloaded:

- Classification on scikit-learn's ``load_digits`` (1,797 8×8 digits, 10 classes). A target model trains on a
  random half (the members; it overfits, as the models LiRA audits do) and answers for all 1,797; ``--references``
  reference models train the same way on random halves of their own, whose in/out masks LiRA (online, offline)
  and RMIA read (Carlini et al. 2022, "Membership Inference Attacks From First Principles"). Two sets, so the
  figures are not tuned to one: ``digits_mlp`` (a one-hidden-layer MLP, 128 units; the defenses are swept on it) and
  ``digits_cnn``, held out: a small CNN, another seed for the member split, the weights and the references.
  Target: LiRA online's TPR at 1 % FPR at least 3× the loss threshold's.
- Segmentation on ``shapes``: textured discs, squares and diamonds (3 classes and background) on sinusoidal
  backgrounds with pixel noise, 32×32, a 6×6 void patch labelled 255 in half the images. A small U-Net trains on
  half (the members) and answers with per-pixel posteriors. Target: Segmentations-Leak's CNN on the structured loss
  map (He et al., ECCV 2020) above the whole-image loss threshold's AUC; its posterior CNN beside it.
- Defenses, re-audited with their utility cost (accuracy, mIoU): Segmentations-Leak's Gaussian noise
  (σ in ``--sigmas``) and argmax, on digits_mlp (every attack, references released the same way) and on shapes
  (the loss threshold and the loss-map CNN). ``--plot`` writes AUC and TPR at 1 % FPR against σ (σ = 0: no
  defense) beside the utility, one panel a task, as one PNG.
- Time: one 10,000-example classification audit (default attacks, no references) on the outputs of an MLP
  trained on half of a ``make_classification`` set (20 informative features, 10 classes); target <= 60 s.

TPR at 0.1 % FPR needs 1,000 non-members: the digits sets have 898, so it is reported as not estimable (None).
The audit is ``instahide_ops.audits.membership.audit.audit_membership``, the call the service makes. The last
line of output is one JSON object.

Usage: python bench/membership.py [--seed 0] [--references 16] [--sigmas 0.01 0.05 0.1 0.3] [--plot PATH]
                                  [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits, make_classification
from torch import nn

from instahide_ops.audits.membership import MembershipData
from instahide_ops.audits.membership.audit import MembershipReport, audit_membership
from instahide_ops.grid import encode_png
from instahide_ops.plot import line_plot
from instahide_ops.transforms.defenses import Defense, utility

HEADLINE_FPR, LOW_FPR = 0.01, 0.001
LIRA_OVER_LOSS_TARGET = 3.0
TIMED_EXAMPLES, TIMED_TARGET_SECONDS = 10_000, 60.0
SEGMENTATION_CLASSES, SIDE, IGNORE = 4, 32, 255


def member_mask(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) bool: a random half."""
    mask = np.zeros(n, bool)
    mask[rng.permutation(n)[: n // 2]] = True
    return mask


def fit(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, steps: int, batch: int | None = None,
        learning_rate: float = 1e-3, seed: int, ignore_index: int = -100) -> nn.Module:
    """Adam on the cross-entropy, no regularisation: the model overfits its training set, as an audit wants."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    for _ in range(steps):
        rows = slice(None) if batch is None else torch.randint(len(inputs), (batch,), generator=generator)
        loss = F.cross_entropy(model(inputs[rows]), labels[rows], ignore_index=ignore_index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


# Classification: digits.

def digits_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def digits_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4, 10))


DIGITS_SETS = {"digits_mlp": (digits_mlp, 0), "digits_cnn": (digits_cnn, 1)}
"""name -> (architecture, offset added to --seed): the held-out set differs in model and in every random draw."""


def digits_data(architecture, seed: int, references: int) -> MembershipData:
    """The target's and ``references`` reference models' logits on every digit, with their in/out masks."""
    digits = load_digits()
    inputs = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    labels = torch.from_numpy(digits.target).long()
    rng = np.random.default_rng(seed)

    def logits_of(mask: np.ndarray) -> np.ndarray:
        model_seed = int(rng.integers(2**31))
        torch.manual_seed(model_seed)
        model = fit(architecture(), inputs[mask], labels[mask], steps=600, batch=128, learning_rate=3e-3,
                    seed=model_seed)
        with torch.no_grad():
            return model(inputs).double().numpy()

    member = member_mask(len(labels), rng)
    target = logits_of(member)
    reference_member = np.stack([member_mask(len(labels), rng) for _ in range(references)])
    reference_outputs = np.stack([logits_of(mask) for mask in reference_member])
    return MembershipData(target, digits.target.astype(np.int64), member, reference_outputs, reference_member,
                          outputs_are="logits")


# Segmentation: textured shapes.

def shapes_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, SIDE, SIDE) float32 images and (n, SIDE, SIDE) int64 label maps (0 background, 1 disc, 2 square,
    3 diamond, IGNORE on a void patch); one to three shapes an image, each of a random colour and stripe
    texture, on a sinusoidal background, with Gaussian pixel noise."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:SIDE, :SIDE].astype(np.float64)
    images = np.zeros((n, 3, SIDE, SIDE), np.float32)
    labels = np.zeros((n, SIDE, SIDE), np.int64)
    for i in range(n):
        frequency, phase = rng.uniform(0.2, 0.8, 2), rng.uniform(0, 2 * np.pi)
        background = 0.5 + 0.25 * np.sin(frequency[0] * columns + frequency[1] * rows + phase)
        image = background[None] * rng.uniform(0.5, 1.0, (3, 1, 1))
        for _ in range(rng.integers(1, 4)):
            shape = int(rng.integers(1, SEGMENTATION_CLASSES))
            centre_row, centre_column = rng.uniform(6, SIDE - 6, 2)
            radius = rng.uniform(3, 8)
            if shape == 1:
                inside = np.hypot(rows - centre_row, columns - centre_column) < radius
            elif shape == 2:
                inside = np.maximum(np.abs(rows - centre_row), np.abs(columns - centre_column)) < radius
            else:
                inside = np.abs(rows - centre_row) + np.abs(columns - centre_column) < 1.2 * radius
            stripes = 0.15 * np.sin(rng.uniform(0.5, 2.0) * (rows if shape == 3 else columns))
            image[:, inside] = rng.uniform(0.2, 0.9, (3, 1)) + stripes[inside][None]
            labels[i][inside] = shape
        image += rng.normal(0, 0.15, image.shape)
        if rng.random() < 0.5:
            top, left = rng.integers(0, SIDE - 6, 2)
            labels[i, top:top + 6, left:left + 6] = IGNORE
        images[i] = image
    return images, labels


class SmallUNet(nn.Module):
    """Two 3×3 convolutions, a pooled stage of two more, upsampled and concatenated back, a 1×1 classifier."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.full = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.coarse = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(3 * width, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, SEGMENTATION_CLASSES, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        full = self.full(images)
        coarse = F.interpolate(self.coarse(F.max_pool2d(full, 2)), scale_factor=2.0)
        return self.head(torch.cat([full, coarse], dim=1))


def shapes_data(seed: int, *, examples: int, steps: int) -> MembershipData:
    """A small U-Net's posteriors on every image of a shapes set, trained on a random half."""
    images, labels = shapes_set(examples, seed)
    member = member_mask(examples, np.random.default_rng(seed))
    torch.manual_seed(seed)
    inputs, targets = torch.from_numpy(images), torch.from_numpy(labels)
    model = fit(SmallUNet(), inputs[member], targets[member], steps=steps, batch=32, learning_rate=2e-3, seed=seed,
                ignore_index=IGNORE)
    with torch.no_grad():
        posteriors = torch.softmax(model(inputs), dim=1).numpy()
    return MembershipData(posteriors, labels, member, outputs_are="probabilities")


# Timing.

def timed_data(seed: int) -> MembershipData:
    """An MLP's logits on a 10,000-example ``make_classification`` set, trained on a random half."""
    features, labels = make_classification(TIMED_EXAMPLES, n_features=40, n_informative=20, n_classes=10,
                                           random_state=seed)
    inputs, targets = torch.from_numpy(features).float(), torch.from_numpy(labels).long()
    member = member_mask(TIMED_EXAMPLES, np.random.default_rng(seed))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 10))
    model = fit(model, inputs[member], targets[member], steps=300, seed=seed)
    with torch.no_grad():
        return MembershipData(model(inputs).double().numpy(), labels.astype(np.int64), member, outputs_are="logits")


# Reporting.

def attack_figures(report: MembershipReport) -> dict:
    return {name: {"auc": round(r.metrics.auc, 4), "advantage": round(r.metrics.advantage, 4),
                   "tpr_at_1pct": _rounded(r.metrics.tpr_at_fpr.get(HEADLINE_FPR)),
                   "tpr_at_0.1pct": _rounded(r.metrics.tpr_at_fpr.get(LOW_FPR)), "seconds": round(r.seconds, 2)}
            for name, r in report.attacks.items()}


def defense_figures(report: MembershipReport) -> list[dict]:
    rows = [{"defense": "none", report.utility_name: round(report.utility, 4), "attacks": attack_figures(report)}]
    for defense in report.defenses:
        rows.append({"defense": str(defense.defense), defense.utility_name: round(defense.utility, 4),
                     "attacks": {name: {"auc": round(r.metrics.auc, 4),
                                        "tpr_at_1pct": _rounded(r.metrics.tpr_at_fpr.get(HEADLINE_FPR))}
                                 for name, r in defense.attacks.items()}})
    return rows


def sweep_panel(report: MembershipReport, attacks: dict[str, str], *, title: str) -> np.ndarray:
    """AUC and TPR at 1 % FPR of ``attacks`` (name -> legend label) and the utility, against σ (0: undefended)."""
    rows = [(0.0, report.utility, report.attacks)] + [
        (d.defense.value, d.utility, d.attacks) for d in report.defenses if d.defense.kind == "gauss"]
    series = {report.utility_name: [(sigma, value) for sigma, value, _ in rows]}
    for name, label in attacks.items():
        series[f"{label} AUC"] = [(sigma, r[name].metrics.auc) for sigma, _, r in rows]
        series[f"{label} TPR@1%"] = [(sigma, r[name].metrics.tpr_at_fpr.get(HEADLINE_FPR) or 0.0)
                                    for sigma, _, r in rows]
    return line_plot(series, title=title, x_label="Gaussian sigma", y_label="")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def git_commit() -> str | None:
    """The short commit of the tree this runs from, "-dirty" when tracked files differ from it; None outside git."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=pathlib.Path(__file__).resolve().parent)
    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode:
            return None
        return head.stdout.strip() + ("-dirty" if git("diff-index", "--quiet", "HEAD", "--").returncode else "")
    except (OSError, subprocess.SubprocessError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--references", type=int, default=16)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.01, 0.05, 0.1, 0.3])
    parser.add_argument("--plot", type=pathlib.Path, help="write the defense sweep here (PNG)")
    parser.add_argument("--quick", action="store_true", help="8 references, a smaller shapes set: a smoke run")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's choice); on a shared "
                        "machine 1 avoids threads spinning against other work")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    references = 8 if args.quick else args.references
    defenses = [Defense("gauss", sigma) for sigma in args.sigmas] + [Defense("argmax")]
    started = time.perf_counter()
    summary: dict = {"benchmark": "membership", "device": "cpu", "cpu": platform.processor() or platform.machine(),
                     "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "commit": git_commit(), "seed": args.seed, "references": references}

    classification = {}
    for name, (architecture, offset) in DIGITS_SETS.items():
        data = digits_data(architecture, args.seed + offset, references)
        report = audit_membership(data, defenses=defenses if name == "digits_mlp" else (), seed=args.seed)
        figures = attack_figures(report)
        lira, loss = figures["lira_online"]["tpr_at_1pct"], figures["loss"]["tpr_at_1pct"]
        ratio = round(lira / loss, 2) if loss else None  # None: the loss threshold finds no member at 1 % FPR
        classification[name] = {"held_out": offset != 0, report.utility_name: round(report.utility, 4),
                                "attacks": figures, "lira_over_loss_at_1pct": ratio,
                                "target_met": lira > 0 and lira >= LIRA_OVER_LOSS_TARGET * loss}
        if report.defenses:
            classification[name]["defenses"] = defense_figures(report)
            digits_report = report
        print(f"{name}: {report.utility_name} {report.utility:.3f}, LiRA online TPR@1% {lira}, loss {loss}, "
              f"ratio {ratio}", flush=True)
    summary["classification"] = classification

    data = shapes_data(args.seed, examples=160 if args.quick else 240, steps=300 if args.quick else 600)
    report = audit_membership(data, seed=args.seed)
    figures = attack_figures(report)
    member = data.is_member
    summary["segmentation"] = {"set": "shapes", report.utility_name: round(report.utility, 4),
                               "miou_members": round(utility(data.outputs[member], data.labels[member])[1], 4),
                               "miou_non_members": round(utility(data.outputs[~member], data.labels[~member])[1], 4),
                               "attacks": figures,
                               "target_met": figures["loss_map_cnn"]["auc"] > figures["loss"]["auc"]}
    print(f"shapes: mIoU {report.utility:.3f}, loss AUC {figures['loss']['auc']}, loss-map CNN AUC "
          f"{figures['loss_map_cnn']['auc']}, posterior CNN AUC {figures['posterior_cnn']['auc']}", flush=True)
    shapes_report = audit_membership(data, attacks=("loss", "loss_map_cnn"), defenses=defenses, seed=args.seed)
    summary["segmentation"]["defenses"] = defense_figures(shapes_report)

    timed = timed_data(args.seed)
    report = audit_membership(timed, seed=args.seed)
    summary["timed"] = {"examples": TIMED_EXAMPLES, "attacks": list(report.attacks),
                        "seconds": round(report.seconds, 2), "target_met": report.seconds <= TIMED_TARGET_SECONDS}
    print(f"timed: {TIMED_EXAMPLES} examples, {report.seconds:.1f} s", flush=True)

    if args.plot:
        picture = np.concatenate([
            sweep_panel(digits_report, {"loss": "loss", "lira_online": "LiRA"}, title="digits_mlp: Gaussian defense"),
            sweep_panel(shapes_report, {"loss": "loss", "loss_map_cnn": "CNN"}, title="shapes: Gaussian defense"),
        ], axis=0)
        args.plot.write_bytes(encode_png(picture))
        summary["plot"] = str(args.plot)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
