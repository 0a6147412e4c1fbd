"""Model registry and public API.

Every model is a CamNet: it takes images in [0, 1] (normalisation is inside), returns logits,
and exposes its last feature map so CAMs (Eq. 6 of the paper) come from the same forward pass.
The registry is a plain dict from name to constructor; tests iterate over it.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from .common import CamNet, Normalize, fold_batchnorm
from .hooked import HookedCamNet, NotCamReady
from .mobilenetv2 import MobileNetV2
from .resnet import ResNet18
from .small import SmallCNN, SmallResNet
from .wrn import wrn28_10, wrn34_10

MODELS: dict[str, Callable[..., CamNet]] = {
    "resnet18": ResNet18,        # student, 11.17M params, last map 512 x 4 x 4 at 32x32
    "mobilenetv2": MobileNetV2,  # student, 2.30M params, last map 1280 x 4 x 4
    "wrn34_10": wrn34_10,        # teacher, 46.16M params, last map 640 x 8 x 8
    "wrn28_10": wrn28_10,        # teacher, 36.48M params, last map 640 x 8 x 8
    "small_cnn": SmallCNN,       # CPU student, 33.6k params, last map 64 x H/4 x W/4
    "small_resnet": SmallResNet,  # CPU teacher, 309k params, last map 128 x H/4 x W/4
}


def build_model(name: str, *, num_classes: int = 10, channels: int = 3,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                center: bool = False) -> CamNet:
    """Construct a registered model whose stem takes `channels` (the data set's: 3 RGB, 1
    grayscale); ``mean``/``std`` are the per-channel statistics of [0, 1] images (None: 0 and 1)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, channels=channels, mean=mean, std=std,
                        center=center)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (a WRN's unused, frozen sub_block1 is not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Imported last: checkpoint.py builds models through the registry defined above.
from .checkpoint import (  # noqa: E402
    CheckpointError,
    import_state_dict,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

__all__ = [
    "MODELS", "CamNet", "HookedCamNet", "NotCamReady", "Normalize", "fold_batchnorm",
    "CheckpointError", "build_model", "count_parameters",
    "import_state_dict", "load_checkpoint", "read_checkpoint", "save_checkpoint",
]
