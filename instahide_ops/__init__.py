"""instahide_ops: InstaHide as functions over torch tensors (CPU or CUDA), no gRPC.

One module per concept: ``encode`` (the mixing rule), ``keys`` (one-time key
material), ``pool`` (public image pools), ``errors``.
"""

from instahide_ops.encode import DEFAULT_K, MAX_K, MODES, EncodeParams, EncodeResult, apply_keys, encode, mix_labels
from instahide_ops.errors import InstaHideOpsError, InvalidInputError
from instahide_ops.keys import EncodeKeys, RandomSource

__all__ = [
    "DEFAULT_K",
    "MAX_K",
    "MODES",
    "EncodeKeys",
    "EncodeParams",
    "EncodeResult",
    "InstaHideOpsError",
    "InvalidInputError",
    "RandomSource",
    "apply_keys",
    "encode",
    "mix_labels",
]
