"""Any third-party CNN classifier as a CamNet: its last feature map read by a forward hook.

Eq. 6 needs, for a teacher, the feature map A^k that its classifier pools and the classifier's
weights w. Model zoos (RobustBench's WideResNet, DMWideResNet, ResNet-18, PreActResNet...) end
their forward with `linear(avg_pool(act(bn(out))))` in their own code, their own normalisation
inside. Rather than re-implement each architecture, `HookedCamNet` runs the network's own forward
untouched and reads the map off the module that produced it:

- at construction one probe image finds the classifier (the last nn.Linear whose output is the
  logits) and the map (the last 4-D output of a module with as many channels as that classifier
  has inputs); a network whose final activation is functional (F.relu after a registered
  BatchNorm) gets that ReLU applied to the captured map;
- the pair is accepted only if classifier(global_avg_pool(map)) reproduces the network's logits
  on the probe, so CAM_c = sum_k w[c, k] A^k is exact for it; otherwise one UserError says so.

Logits are always the network's own; the wrapper's Normalize is the identity (the network
normalises inside), so attacks still act on [0, 1] images.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from smaraad.errors import UserError

from .common import IN_CHANNELS, CamNet

PROBE_RTOL = 1e-4  # pooled-map logits vs the network's, relative to the largest logit


class NotCamReady(UserError):
    """A network whose logits are not a linear map of a pooled feature map (no exact CAM)."""


class HookedCamNet(CamNet):
    """`net` (images in [0, 1] -> logits) with `forward_features` returning (logits, last map).

    `input_size` is the image side the network needs (RobustBench's CIFAR nets pool with a fixed
    8x8 window, so 32); probes (here and in fold_batchnorm) use it. `source` is plain data naming
    where the network came from, e.g. ("robustbench", name, dataset, threat model), so the model
    can be rebuilt from its state_dict elsewhere (a Ray trial) without pickling a module.
    """

    def __init__(self, net: nn.Module, *, arch: str, input_size: int = 32,
                 source: tuple = ()) -> None:
        net = net.eval()
        map_name, fc_name, relu = find_layout(net, input_size, arch)
        fc = net.get_submodule(fc_name)
        super().__init__(arch, num_classes=fc.out_features)
        self.net = net
        self.map_name, self.fc_name, self.map_relu = map_name, fc_name, relu
        self.input_size = input_size
        self.source = tuple(source)

    @property
    def fc(self) -> nn.Linear:  # the network's own classifier: CAM weights, not a copy
        return self.net.get_submodule(self.fc_name)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        seen: list[Tensor] = []
        hook = self.net.get_submodule(self.map_name).register_forward_hook(
            lambda _m, _i, out: seen.append(out))
        try:
            logits = self.net(x)
        finally:
            hook.remove()
        fmap = seen[-1]
        return logits, fmap.relu() if self.map_relu else fmap

    def features(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[1]

    def forward(self, x: Tensor) -> Tensor:  # no hook needed for logits alone
        return self.net(x)


def find_layout(net: nn.Module, input_size: int, what: str) -> tuple[str, str, bool]:
    """(map module name, classifier module name, apply ReLU to the map) for `net`, verified."""
    calls: list[tuple[str, nn.Module, Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, _i, out, n=n: calls.append((n, m, out)))
             for n, m in net.named_modules() if n]
    p = next(net.parameters())
    probe = torch.rand(1, IN_CHANNELS, input_size, input_size,
                       generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
    try:
        with torch.no_grad():
            logits = net(probe)
    finally:
        for h in hooks:
            h.remove()
    heads = [(n, m) for n, m, out in calls if isinstance(m, nn.Linear)
             and isinstance(out, Tensor) and out.shape == logits.shape and torch.equal(out, logits)]
    if not heads:
        raise NotCamReady(f"{what}: its logits do not come from a final nn.Linear layer, so "
                          "Eq. 6's CAM is undefined for it; choose a convolutional entry")
    fc_name, fc = heads[-1]
    maps = [(n, out) for n, _m, out in calls if isinstance(out, Tensor) and out.dim() == 4
            and out.shape[1] == fc.in_features]
    tol = PROBE_RTOL * logits.abs().max().item() + 1e-6
    for map_name, fmap in maps[-1:]:
        for relu in (False, True):
            a = fmap.relu() if relu else fmap
            pooled = fc(F.adaptive_avg_pool2d(a, 1).flatten(1))
            if (pooled - logits).abs().max().item() <= tol:
                return map_name, fc_name, relu
    raise NotCamReady(f"{what}: no feature map feeds its classifier {fc_name!r} through a "
                      "global average pool, so Eq. 6's CAM is undefined for it; choose a "
                      "convolutional entry")
