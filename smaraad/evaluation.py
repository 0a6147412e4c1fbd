"""Accuracy under attack, in batches, eval mode, no parameter gradients.

`accuracy` is the one function the trainer's per-epoch validation, the final evaluation and the
orchestrator all use to turn (model, images, attack) into a fraction.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from smaraad.attacks import model_mode

Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]


def batches(data: tuple[Tensor, Tensor], batch_size: int, device: torch.device):
    """Yield (x float in [0, 1], y) on `device` from uint8 (N, 3, H, W) images, in order."""
    images, labels = data
    for i in range(0, len(labels), batch_size):
        x = images[i:i + batch_size].to(device, non_blocking=True)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        yield x, labels[i:i + batch_size].to(device, non_blocking=True)


def correct(model: nn.Module, x: Tensor, y: Tensor, attack: Attack | None = None) -> Tensor:
    """Per-image correctness (B,) bool of `model` on x, or on attack(model, x, y)."""
    with model_mode(model, False):
        if attack is not None:
            x = attack(model, x, y)
        with torch.no_grad():
            return model(x).argmax(dim=1) == y


def accuracy(model: nn.Module, data: tuple[Tensor, Tensor], *, attack: Attack | None = None,
             batch_size: int = 256, device: torch.device | str = "cpu", limit: int = 0) -> float:
    """Fraction of the first `limit` (0 = all) images classified correctly, optionally attacked."""
    if limit:
        data = (data[0][:limit], data[1][:limit])
    hits = torch.zeros((), dtype=torch.long, device=device)
    for x, y in batches(data, batch_size, torch.device(device)):
        hits += correct(model, x, y, attack).sum()
    return hits.item() / max(1, len(data[1]))
