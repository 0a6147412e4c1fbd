"""WideResNet-34-10 and WideResNet-28-10: the teachers of the paper (TRADES layout).

Module names match the TRADES / RobustBench WideResNet (conv1, block1.layer.N.{bn1, relu1,
conv1, bn2, relu2, conv2, convShortcut}, block2, block3, bn1, fc) so their checkpoints load
strictly.  The blocks are pre-activation, so the last feature map is ReLU(bn1(block3)),
640 x 8 x 8 at 32x32 input (two stride-2 stages).

TRADES checkpoints also carry ``sub_block1``, a copy of block1 that its forward never calls.
We build it so those files load strictly, never call it, and freeze it (requires_grad=False):
it then gets no optimizer updates and no weight decay, and is left out of the trainable count,
which gives the published sizes (46.16M and 36.48M).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .common import CamNet


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a residual.

    When the shape changes, the 1x1 ``convShortcut`` reads the pre-activated input (as in
    TRADES), not the raw one.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_ch == out_ch and stride == 1
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class WideStage(nn.Module):
    """``n`` blocks held as ``.layer`` (the attribute name the checkpoints use)."""

    def __init__(self, n: int, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        blocks = [WideBasicBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1) for i in range(n)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(CamNet):
    """WRN-depth-widen for 32x32 inputs; depth = 6n + 4 (n blocks per stage)."""

    def __init__(self, arch: str, depth: int, widen: int, *, num_classes: int = 10,
                 channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, center: bool = False) -> None:
        super().__init__(arch, num_classes, mean, std, center, channels)
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = WideStage(n, widths[0], widths[1], stride=1)      # 32x32
        self.sub_block1 = WideStage(n, widths[0], widths[1], stride=1)  # unused, see module doc
        self.sub_block1.requires_grad_(False)
        self.block2 = WideStage(n, widths[1], widths[2], stride=2)      # 16x16
        self.block3 = WideStage(n, widths[2], widths[3], stride=2)      # 8x8
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """TRADES/WRN init: He-normal convs (fan_out), unit BN, zero classifier bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def trunk(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.relu(self.bn1(out))


def wrn34_10(**kwargs) -> WideResNet:
    """WRN-34-10 (46.16M trainable parameters at 10 classes)."""
    return WideResNet("wrn34_10", 34, 10, **kwargs)


def wrn28_10(**kwargs) -> WideResNet:
    """WRN-28-10 (36.48M trainable parameters at 10 classes)."""
    return WideResNet("wrn28_10", 28, 10, **kwargs)
