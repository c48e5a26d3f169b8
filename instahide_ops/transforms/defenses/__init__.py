"""Output defenses: what a model owner releases instead of its raw posteriors, to blunt membership inference.

Every defense maps probabilities (N, C) or (N, C, h, w), classes along dim 1, to what is released:

- ``argmax``: the predicted class one-hot (Segmentations-Leak's Argmax defense);
- ``gauss:σ``: ``p + N(0, σ²)``, clamped at 1e-6 and renormalised per pixel, exactly as Segmentations-Leak's
  code does (He et al., "Segmentations-Leak: Membership Inference Attacks and Defenses in Semantic Image
  Segmentation", ECCV 2020);
- ``topk:k``: the k largest probabilities, renormalised (Shokri et al., S&P 2017, restrict the posterior);
- ``round:d``: rounded to d decimals, as released (not renormalised);
- ``temperature:T``: ``softmax(log p / T)``, sharper below T = 1.

``utility`` measures what a defense costs: accuracy for classification, mean IoU for segmentation.
"""

from instahide_ops.transforms.defenses.defense import KINDS, Defense, apply_defense, as_probabilities, parse_defense
from instahide_ops.transforms.defenses.utility import utility

__all__ = ["KINDS", "Defense", "apply_defense", "as_probabilities", "parse_defense", "utility"]
