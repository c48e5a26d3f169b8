"""Per-example statistics of a model's outputs that membership attacks score with.

Each takes log-probabilities along dim 1, (N, C) or (N, C, h, w), with the labels, and returns one number an
example: for segmentation the mean over its non-ignored pixels (Segmentations-Leak's loss map, averaged).

- ``label_log_probability``: log p_y, minus the cross-entropy loss (Yeom et al. 2018).
- ``label_probability``: p_y, the confidence on the label (Song & Mittal 2021).
- ``max_probability``: the largest posterior, the label-free confidence of ML-Leaks (Salem et al. 2019).
- ``negative_entropy``: -H(p) (Salem et al. 2019; TF-Privacy's threshold entropy attack).
- ``negative_modified_entropy``: -Mentr(p, y) = (1 - p_y) log p_y + sum_{i != y} p_i log(1 - p_i)
  (Song & Mittal 2021, "Systematic Evaluation of Privacy Risks of Machine Learning Models"), which falls
  with a wrong confident prediction where the entropy would not.
- ``logit_scaled_confidence``: log p_y - log sum_{i != y} p_i, LiRA's score, close to Gaussian per example
  across models (Carlini et al. 2022).
"""

from __future__ import annotations

import numpy as np


def label_log_probability(log_probabilities: np.ndarray, labels: np.ndarray, *, ignore_index: int = 255
                          ) -> np.ndarray:
    """(N,) log p_y (mean over non-ignored pixels for segmentation)."""
    return example_mean(_at_label(log_probabilities, labels, ignore_index), labels, ignore_index)


def label_probability(log_probabilities: np.ndarray, labels: np.ndarray, *, ignore_index: int = 255) -> np.ndarray:
    """(N,) p_y (mean over non-ignored pixels)."""
    return example_mean(np.exp(_at_label(log_probabilities, labels, ignore_index)), labels, ignore_index)


def max_probability(log_probabilities: np.ndarray, labels: np.ndarray, *, ignore_index: int = 255) -> np.ndarray:
    """(N,) max_c p_c (mean over non-ignored pixels)."""
    return example_mean(np.exp(log_probabilities.max(axis=1)), labels, ignore_index)


def negative_entropy(log_probabilities: np.ndarray, labels: np.ndarray, *, ignore_index: int = 255) -> np.ndarray:
    """(N,) sum_c p_c log p_c (mean over non-ignored pixels)."""
    return example_mean((np.exp(log_probabilities) * log_probabilities).sum(axis=1), labels, ignore_index)


def negative_modified_entropy(log_probabilities: np.ndarray, labels: np.ndarray, *, ignore_index: int = 255
                              ) -> np.ndarray:
    """(N,) -Mentr: (1 - p_y) log p_y + sum_{i != y} p_i log(1 - p_i) (mean over non-ignored pixels)."""
    probabilities = np.exp(log_probabilities.astype(np.float64))  # float32 rounds 1 - 1e-12 to 1
    log_complement = np.log1p(-np.minimum(probabilities, 1 - 1e-12))  # log(1 - p), finite at p = 1
    at_label = _label_mask(log_probabilities.shape, labels, ignore_index)
    terms = np.where(at_label, (1 - probabilities) * log_probabilities, probabilities * log_complement)
    return example_mean(terms.sum(axis=1), labels, ignore_index)


def logit_scaled_confidence(log_probabilities: np.ndarray, labels: np.ndarray, *, ignore_index: int = 255
                            ) -> np.ndarray:
    """(N,) log p_y - log sum_{i != y} p_i (mean over non-ignored pixels); from log-softmax outputs this equals
    z_y - logsumexp_{i != y} z_i of the logits exactly, where 1 - p_y would round to 0."""
    at_label = _label_mask(log_probabilities.shape, labels, ignore_index)
    others = np.where(at_label, -np.inf, log_probabilities)
    peak = others.max(axis=1, keepdims=True)
    log_others = np.squeeze(peak, 1) + np.log(np.exp(others - peak).sum(axis=1))
    return example_mean(_at_label(log_probabilities, labels, ignore_index) - log_others, labels, ignore_index)


def example_mean(values: np.ndarray, labels: np.ndarray, ignore_index: int) -> np.ndarray:
    """(N,) float64: ``values`` as they are for (N,), else each example's mean over its pixels whose label is not
    ``ignore_index``."""
    if values.ndim == 1:
        return values.astype(np.float64)
    counted = (labels != ignore_index).reshape(len(labels), -1)
    flat = np.where(counted, values.reshape(len(values), -1), 0).astype(np.float64)
    return flat.sum(axis=1) / counted.sum(axis=1)


def _label_mask(shape: tuple[int, ...], labels: np.ndarray, ignore_index: int) -> np.ndarray:
    """Bool, shaped as the outputs: True at each example's (pixel's) label class."""
    classes = np.arange(shape[1]).reshape(1, -1, *([1] * (len(shape) - 2)))
    return np.expand_dims(_counted_labels(labels, ignore_index), 1) == classes


def _at_label(log_probabilities: np.ndarray, labels: np.ndarray, ignore_index: int) -> np.ndarray:
    """log p at each example's (pixel's) label: (N,) or (N, h, w); ignored pixels read class 0 (then unused)."""
    index = np.expand_dims(_counted_labels(labels, ignore_index), 1)
    return np.take_along_axis(log_probabilities, index, axis=1).squeeze(1)


def _counted_labels(labels: np.ndarray, ignore_index: int) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    return labels if labels.ndim == 1 else np.where(labels == ignore_index, 0, labels)
