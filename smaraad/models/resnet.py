"""CIFAR ResNet-18: the student of the paper.

The CIFAR variant (as in kuangliu/pytorch-cifar, used by every AD repository) has a 3x3
stride-1 stem and no max-pool, so a 32x32 image ends as a 512 x 4 x 4 map.  Module names
follow that layout (conv1, bn1, layer1..4, shortcut.0/1) so its checkpoints import; only its
classifier ``linear`` is called ``fc`` here (the checkpoint importer renames it).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from .common import CamNet, conv_bn


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; the shortcut is a 1x1 conv + BN when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        reshapes = stride != 1 or in_ch != out_ch
        self.shortcut = conv_bn(in_ch, out_ch, kernel=1, stride=stride) if reshapes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    """A stage of BasicBlocks; only the first one may downsample (stride) or widen."""
    layers = [BasicBlock(in_ch, out_ch, stride)]
    layers += [BasicBlock(out_ch, out_ch, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet18(CamNet):
    """ResNet-18 for 32x32 inputs: 11,173,962 parameters at 10 classes, last map 512 x 4 x 4."""

    def __init__(self, *, num_classes: int = 10, channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 center: bool = False) -> None:
        super().__init__("resnet18", num_classes, mean, std, center, channels)
        self.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = make_stage(64, 64, 2, stride=1)    # 32x32
        self.layer2 = make_stage(64, 128, 2, stride=2)   # 16x16
        self.layer3 = make_stage(128, 256, 2, stride=2)  # 8x8
        self.layer4 = make_stage(256, 512, 2, stride=2)  # 4x4
        self.fc = nn.Linear(512, num_classes)

    def trunk(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(out))))
