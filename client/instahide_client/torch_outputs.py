"""What a membership audit needs, computed from a torch model (the ``[torch]`` extra).

    >>> arrays = membership_inputs(model, train_loader, held_out_loader)   # doctest: +SKIP
    >>> audit = client.start_membership_audit(**arrays, defenses=["gauss:0.1"])  # doctest: +SKIP

The model runs here, on your device, in eval mode without gradients; only its outputs leave. Only this module and
``torch_data`` import torch; ``import instahide_client`` never does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised by the no-torch test
    raise ImportError("instahide_client.torch_outputs needs torch: pip install 'instahide-client[torch]'") from exc


def model_outputs(model: torch.nn.Module, loader: Iterable[Any], *,
                  device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """The model's outputs (float32, (N, C) or (N, C, h, w) as the model gives them) and the labels, over every
    ``(inputs, labels)`` batch of ``loader``, in order. The model's training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    try:
        with torch.no_grad():
            for batch in loader:
                inputs, targets = batch[0], batch[1]
                outputs.append(model(inputs.to(device)).float().cpu().numpy())
                labels.append(np.asarray(targets.cpu().numpy() if torch.is_tensor(targets) else targets,
                                         dtype=np.int64))
    finally:
        model.train(was_training)
    if not outputs:
        raise ValueError("the loader gave no batches")
    return np.concatenate(outputs), np.concatenate(labels)


def membership_inputs(model: torch.nn.Module, members: Iterable[Any], non_members: Iterable[Any], *,
                      device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """``outputs``, ``labels`` and ``member`` of a membership audit: the model's outputs on examples it was
    trained on (``members``) and on examples it was not (``non_members``), each a loader of ``(inputs, labels)``."""
    inside, inside_labels = model_outputs(model, members, device=device)
    outside, outside_labels = model_outputs(model, non_members, device=device)
    return {"outputs": np.concatenate([inside, outside]), "labels": np.concatenate([inside_labels, outside_labels]),
            "member": np.concatenate([np.ones(len(inside), bool), np.zeros(len(outside), bool)])}
