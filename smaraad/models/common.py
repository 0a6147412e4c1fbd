"""Shared pieces of every network: input normalisation and the CAM-ready base class.

Normalisation lives inside the model so that attacks, data loaders and evaluation all
work on raw images in [0, 1] and the epsilon ball (e.g. 8/255) is measured in pixel
units, whatever statistics a model was trained with.
"""

from __future__ import annotations

import copy
import warnings
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

IN_CHANNELS = 3  # the default stem: RGB (a grayscale data set builds its models with channels=1)


def _per_channel(values: Sequence[float] | None, channels: int, fill: float,
                 what: str) -> tuple[float, ...]:
    """A per-channel statistic as a tuple of `channels` plain floats (`fill` each when None)."""
    if values is None:
        return (fill,) * channels
    try:
        out = tuple(float(v) for v in values)
    except TypeError as err:
        raise ValueError(f"{what} must be a sequence of {channels} numbers, got {values!r}") from err
    if len(out) != channels:
        raise ValueError(f"{what} must have {channels} values (one per input channel), "
                         f"got {len(out)}")
    return out


class Normalize(nn.Module):
    """Maps images in [0, 1] to network input: optional per-image centring, then (x - mean) / std.

    The statistics are buffers so they follow ``.to(device)``, but non-persistent: they are
    not in ``state_dict()``, which keeps our keys identical to third-party checkpoints (which
    would otherwise fail strict loading).  Checkpoints store them explicitly instead.
    ``mean``/``std`` None are 0 and 1 for each of ``channels``.

    ``center=True`` first subtracts each image's own per-channel spatial mean.  On synthetic
    data whose classes differ by shape, the mean colour is a nuisance that kept training from
    starting; removing it inside the model keeps attacks honest (they still act on [0, 1]).
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 center: bool = False, channels: int = IN_CHANNELS) -> None:
        super().__init__()
        mean_t = _per_channel(mean, channels, 0.0, "mean")
        std_t = _per_channel(std, channels, 1.0, "std")
        if min(std_t) <= 0.0:
            raise ValueError(f"std must be positive, got {std_t}")
        self.center = bool(center)
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean_t).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std_t).view(1, channels, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected images of shape (B, {self.channels}, H, W), got {tuple(x.shape)}")
        if self.center:
            x = x - x.mean(dim=(2, 3), keepdim=True)
        return (x - self.mean) / self.std

    def stats(self) -> tuple[list[float], list[float]]:
        """(mean, std) as plain float lists, the form checkpoints store."""
        return self.mean.flatten().tolist(), self.std.flatten().tolist()

    def extra_repr(self) -> str:
        mean, std = self.stats()
        return f"mean={mean}, std={std}, center={self.center}"


class CamNet(nn.Module):
    """A classifier whose logits are ``fc(global_avg_pool(fmap))`` of its last feature map.

    That structure is what makes Class Activation Maps exact: CAM_c = sum_k fc.weight[c, k] *
    fmap[:, k].  Subclasses build ``self.fc`` and implement ``trunk`` (normalised input ->
    last feature map, after its final ReLU); the base class adds normalisation, pooling and
    the three entry points, so every architecture exposes the same interface.
    """

    fc: nn.Linear

    def __init__(self, arch: str, num_classes: int, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, center: bool = False,
                 channels: int = IN_CHANNELS) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.arch = arch
        self.num_classes = num_classes
        self.normalize = Normalize(mean, std, center, channels)

    @property
    def in_channels(self) -> int:
        """Channels of the images it takes (its stem's input): 3 RGB, 1 grayscale."""
        return self.normalize.channels

    def trunk(self, x: Tensor) -> Tensor:
        """Normalised input (B, C, H, W) -> last feature map (B, K, h, w)."""
        raise NotImplementedError

    @property
    def feature_channels(self) -> int:
        """K, the number of channels of the last feature map (= fc.in_features)."""
        return self.fc.in_features

    def features(self, x: Tensor) -> Tensor:
        """Last feature map (B, K, h, w) for images x in [0, 1]."""
        return self.trunk(self.normalize(x))

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, fmap) from a single pass, so CAM losses need no second forward."""
        fmap = self.features(x)
        logits = self.fc(F.adaptive_avg_pool2d(fmap, 1).flatten(1))
        return logits, fmap

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]


def conv_bn(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Bias-free conv ('same' padding) + BatchNorm, the unit every small block repeats."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    )


def fold_batchnorm(model: nn.Module, *, rtol: float = 1e-4) -> nn.Module:
    """A frozen eval-mode copy of `model` with each BatchNorm folded into the conv before it.

    In eval mode BN is an affine map per channel, so conv -> BN equals one conv with rescaled
    weights and a bias: the same function with fewer passes over memory (a frozen teacher that an
    attack differentiates through at every step runs ~20% faster on a CPU). Pairs are found as a
    Conv2d registered right before a BatchNorm2d of its width (conv_bn, BasicBlock's conv1/bn1,
    a pre-activation block's conv1/bn2). The copy is checked against the original in float64 on
    the CPU (so TF32 or bf16 kernels cannot blur the check), logits and feature map, on random
    images; where they disagree by more than `rtol` (a block whose forward does not chain the
    pair) a warning says so and the unfolded copy is returned. `model` itself is not changed.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval().requires_grad_(False)
    for parent in list(folded.modules()):
        kids = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(kids, kids[1:]):
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and conv.out_channels == bn.num_features and bn.track_running_stats):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
    if _same_function(model, folded, rtol):
        return folded
    warnings.warn(f"fold_batchnorm: folding would change {type(model).__name__}'s outputs; "
                  "its BatchNorms are kept", RuntimeWarning, stacklevel=2)
    return copy.deepcopy(model).eval().requires_grad_(False)


def _same_function(a: nn.Module, b: nn.Module, rtol: float) -> bool:
    side = getattr(a, "input_size", None) or 16  # a zoo net may pool with a fixed window
    channels = getattr(a, "in_channels", IN_CHANNELS)
    probe = torch.rand(4, channels, side, side, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)
    a64, b64 = (copy.deepcopy(m).eval().to("cpu", torch.float64) for m in (a, b))
    run = lambda m: m.forward_features(probe) if isinstance(m, CamNet) else (m(probe),)  # noqa: E731
    with torch.no_grad():
        for want, got in zip(run(a64), run(b64)):
            if not torch.allclose(got, want, rtol=rtol, atol=rtol * want.abs().max().item()):
                return False
    return True
