"""What a defense costs: the released outputs' accuracy (classification) or mean IoU (segmentation)."""

from __future__ import annotations

import numpy as np

from instahide_ops.errors import InvalidInputError


def utility(probabilities: np.ndarray, labels: np.ndarray, *, ignore_index: int = 255) -> tuple[str, float]:
    """("accuracy", fraction of argmax predictions equal to the label) for (N, C) outputs and (N,) labels;
    ("miou", mean over classes of intersection over union) for (N, C, h, w) outputs and (N, h, w) label maps.

    Segmentation skips pixels labelled ``ignore_index`` and averages over the classes present in the labels or
    the predictions (a class absent from both has no IoU), as scikit-learn's ``jaccard_score(average="macro")``
    over the kept pixels does. NaN when no pixel is kept.
    """
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    if probabilities.ndim not in (2, 4) or labels.shape != probabilities.shape[:1] + probabilities.shape[2:]:
        raise InvalidInputError(f"expected labels of shape (N,) for (N, C) outputs or (N, h, w) for "
                                f"(N, C, h, w), got {list(labels.shape)} for {list(probabilities.shape)}",
                                field="labels")
    predictions = probabilities.argmax(1)
    if probabilities.ndim == 2:
        return "accuracy", float(np.mean(predictions == labels))
    kept = labels != ignore_index
    truth, predicted = labels[kept].astype(np.int64), predictions[kept]
    classes = probabilities.shape[1]
    if truth.size and (truth.min() < 0 or truth.max() >= classes):
        raise InvalidInputError(f"label maps must hold classes in [0, {classes}) or {ignore_index}", field="labels")
    confusion = np.bincount(truth * classes + predicted, minlength=classes * classes).reshape(classes, classes)
    overlap = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - overlap
    present = union > 0
    return "miou", float(np.mean(overlap[present] / union[present])) if present.any() else float("nan")
