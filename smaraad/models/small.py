"""Two small networks for CPU-scale experiments (a student and a teacher).

The paper's models need a GPU; these keep the same structure (conv trunk -> ReLU'd feature
map -> global average pool -> linear), so CAMs and every loss work unchanged, but train in
seconds on 2 CPU cores.  Both downsample exactly twice, so a 16x16 image ends as a 4x4 map
(8x8 at 32x32): enough spatial resolution for CAM alignment to mean something.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .common import CamNet, conv_bn
from .resnet import BasicBlock


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(*conv_bn(in_ch, out_ch, 3, stride), nn.ReLU())


class SmallCNN(CamNet):
    """Plain 4-conv student, 33,626 parameters at 10 classes; last map 64 x H/4 x W/4."""

    def __init__(self, *, num_classes: int = 10, channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 center: bool = False) -> None:
        super().__init__("small_cnn", num_classes, mean, std, center, channels)
        self.body = nn.Sequential(
            _conv_bn_relu(channels, 16),
            _conv_bn_relu(16, 32, stride=2),
            _conv_bn_relu(32, 32),
            _conv_bn_relu(32, 64, stride=2),
        )
        self.fc = nn.Linear(64, num_classes)

    def trunk(self, x: Tensor) -> Tensor:
        return self.body(x)


class SmallResNet(CamNet):
    """Three-stage residual teacher (one BasicBlock per stage), 308,650 parameters at 10 classes.

    Last map 128 x H/4 x W/4; about 9x the student's size, the same teacher/student ratio
    order as WRN-34-10 / ResNet-18 (4x) and WRN / MobileNetV2 (20x).
    """

    def __init__(self, *, num_classes: int = 10, channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 center: bool = False) -> None:
        super().__init__("small_resnet", num_classes, mean, std, center, channels)
        self.stem = _conv_bn_relu(channels, 32)
        self.stages = nn.Sequential(
            BasicBlock(32, 32, stride=1),
            BasicBlock(32, 64, stride=2),
            BasicBlock(64, 128, stride=2),
        )
        self.fc = nn.Linear(128, num_classes)

    def trunk(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))
