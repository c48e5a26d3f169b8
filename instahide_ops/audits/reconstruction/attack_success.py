"""The DisguisedNets papers' "attack success": how well a classifier trained on clean images recognises the
recoveries, relative to the originals.

A classifier that knows the task is trained on clean originals and applied to held-out originals and to their
recoveries; success is its accuracy on the recoveries divided by its accuracy on the originals (1: the recoveries
serve the task as well as the images; the chance level's ratio: nothing recognisable). Here the classifier is
scikit-learn's logistic regression on standardised 8×8 thumbnails, k-fold over the audit's own labelled images
(every image is scored by a classifier that never saw it), so the figure needs no outside data set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

THUMBNAIL = 8
MAX_FOLDS = 5


@dataclass(frozen=True)
class AttackSuccess:
    """Accuracy on the originals and on the recoveries (held-out, over the folds), their ratio, and chance (the
    commonest class's share)."""

    original_accuracy: float
    recovered_accuracy: float
    success: float
    chance: float

    def to_dict(self) -> dict[str, float]:
        return {"original_accuracy": self.original_accuracy, "recovered_accuracy": self.recovered_accuracy,
                "success": self.success, "chance": self.chance}


def _features(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) in [-1, 1] → (N, 8·8·C) area-averaged thumbnails."""
    thumbs = [cv2.resize(np.ascontiguousarray(image, dtype=np.float32), (THUMBNAIL, THUMBNAIL),
                         interpolation=cv2.INTER_AREA) for image in images]
    return np.stack(thumbs).reshape(len(images), -1)


def attack_success(originals: np.ndarray, recovered: np.ndarray, labels: np.ndarray, *,
                   seed: int = 0) -> AttackSuccess | None:
    """The papers' metric for recoveries of ``originals`` (both (N, H, W, C) in [-1, 1], aligned) with ``labels``.

    Images of a class with a single image are left out (they can be neither trained on nor tested). None when the
    labels cannot train and test a classifier (fewer than two classes of two images), or when it is not clearly
    better than chance on the originals (within two standard errors: the ratio would mean nothing).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels).reshape(-1)
    classes, counts = np.unique(labels, return_counts=True)
    kept = np.isin(labels, classes[counts >= 2])  # a class of one image can be neither trained on nor tested
    labels, counts = labels[kept], counts[counts >= 2]
    if len(counts) < 2:
        return None
    clean, attacked = _features(np.asarray(originals)[kept]), _features(np.asarray(recovered)[kept])
    right_original = right_recovered = 0
    folds = StratifiedKFold(n_splits=min(MAX_FOLDS, int(counts.min())), shuffle=True, random_state=seed)
    for train, test in folds.split(clean, labels):
        scaler = StandardScaler().fit(clean[train])
        model = LogisticRegression(max_iter=2000).fit(scaler.transform(clean[train]), labels[train])
        right_original += int((model.predict(scaler.transform(clean[test])) == labels[test]).sum())
        right_recovered += int((model.predict(scaler.transform(attacked[test])) == labels[test]).sum())
    chance = float(counts.max() / counts.sum())
    original_accuracy = right_original / len(labels)
    # A classifier within two standard errors of chance on the originals recognises nothing: no ratio then.
    if original_accuracy - chance < 2 * math.sqrt(chance * (1 - chance) / len(labels)):
        return None
    recovered_accuracy = right_recovered / len(labels)
    return AttackSuccess(original_accuracy, recovered_accuracy, recovered_accuracy / original_accuracy, chance)
