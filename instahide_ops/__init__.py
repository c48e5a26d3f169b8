"""instahide_ops: privacy transforms and the attacks that audit them, as functions over torch tensors (CPU or
CUDA), no gRPC.

- ``transforms/``: one subpackage per image-transform family (``transforms/instahide``), each registered by name.
- ``audits/``: one subpackage per audit kind (``audits/reconstruction``), each with a registry of attacks.
- shared: ``images`` (the [-1, 1] scale, exact resizing), ``photos`` (photos bundled in the dependencies),
  ``grid`` (pictures), ``errors``.
"""

from instahide_ops.errors import InstaHideOpsError, InvalidInputError

__all__ = ["InstaHideOpsError", "InvalidInputError"]
