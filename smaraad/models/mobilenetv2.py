"""CIFAR MobileNetV2: the second student of the paper.

The CIFAR variant (kuangliu/pytorch-cifar) keeps a stride-1 stem and uses stride 1 in the
24-channel stage, so a 32x32 image is downsampled only 3 times and ends as 1280 x 4 x 4.
The final ReLU(bn2(conv2(.))) is applied inside ``trunk`` so the CAM sees the same map the
classifier pools.  Module names follow that layout (only ``linear`` is called ``fc``).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from .common import CamNet, conv_bn

# (expansion, out_channels, num_blocks, stride of the first block), CIFAR strides
CIFAR_CFG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),   # stride 1 here (2 on ImageNet): keeps 32x32 -> 4x4 at the end
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), with a residual at stride 1.

    At stride 1 the residual always exists; if the width changes it goes through a 1x1
    conv + BN (the CIFAR variant's choice, which the published checkpoints carry).
    """

    def __init__(self, in_ch: int, out_ch: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = expansion * in_ch
        self.stride = stride
        self.conv1 = nn.Conv2d(in_ch, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        if stride == 1 and in_ch != out_ch:
            self.shortcut = conv_bn(in_ch, out_ch, kernel=1)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))  # linear bottleneck: no ReLU
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(CamNet):
    """MobileNetV2 for 32x32 inputs: 2,296,922 parameters at 10 classes, last map 1280 x 4 x 4."""

    def __init__(self, *, num_classes: int = 10, channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 center: bool = False) -> None:
        super().__init__("mobilenetv2", num_classes, mean, std, center, channels)
        self.conv1 = nn.Conv2d(channels, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, in_ch = [], 32
        for expansion, out_ch, count, first_stride in CIFAR_CFG:
            for i in range(count):
                blocks.append(InvertedResidual(in_ch, out_ch, expansion, first_stride if i == 0 else 1))
                in_ch = out_ch
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.fc = nn.Linear(1280, num_classes)

    def trunk(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return F.relu(self.bn2(self.conv2(out)))
