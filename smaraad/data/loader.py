"""An in-memory batch loader with shuffling and augmentation done batched in torch.

Why not torch.utils.data.DataLoader: CIFAR fits in memory as uint8 (150 MB), and per-image
PIL transforms in worker processes cost more than the small models trained here on a 2-core
CPU. Keeping every random draw in one dedicated torch.Generator also makes an epoch a pure
function of the generator state, which a checkpoint can save and restore exactly.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor


class BatchLoader:
    """Iterates (x float32 in [0,1] (B,3,H,W), y int64 (B,)) over an in-memory uint8 tensor pair.

    shuffle + augmentation (random crop with `pad` zero-padding, horizontal flip) are done
    batched in torch with a dedicated torch.Generator, so epochs are reproducible and the
    loader state can be saved/restored (`state_dict` / `load_state_dict`).

    All of an epoch's random draws (order, crop offsets, flips) are taken when iteration
    starts, so the generator state after `iter(loader)` does not depend on how many batches
    the caller consumed -- a resumed run replays the same following epochs."""

    def __init__(self, data: tuple[Tensor, Tensor], batch_size: int, *, shuffle: bool,
                 augment: bool, pad: int | None = None, generator: torch.Generator | None = None,
                 device: str | torch.device = 'cpu', drop_last: bool = False):
        images, labels = data
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f'images must be uint8 (N,C,H,W), got {images.dtype} {tuple(images.shape)}')
        if labels.shape != images.shape[:1]:
            raise ValueError(f'labels shape {tuple(labels.shape)} does not match {images.shape[0]} images')
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self.images, self.labels = images, labels.long()
        self.batch_size = batch_size
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        # crop padding in pixels: 4 for 32x32 (the CIFAR standard), 2 for 16x16
        self.pad = images.shape[-1] // 8 if pad is None else pad
        if generator is None:  # seeded from torch's global RNG, so torch.manual_seed governs it
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,)).item()))
        self.generator = generator
        self.device = torch.device(device)

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def state_dict(self) -> dict:
        """The generator state: restoring it replays the next epoch exactly."""
        return {'generator': self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state['generator'])

    def __iter__(self):
        n = self.images.shape[0]
        g = self.generator
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self.augment:  # one crop offset (pixels, in [0, 2*pad]) and one flip per image
            offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g)
            flips = torch.rand(n, generator=g) < 0.5
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)
            if self.augment:
                x = _crop_flip(x, offsets[idx].to(self.device), flips[idx].to(self.device), self.pad)
            y = self.labels[idx.to(self.labels.device)].to(self.device, non_blocking=True)
            yield x.float().div_(255), y  # uint8 travels, float is made on the device


def _crop_flip(x: Tensor, offsets: Tensor, flips: Tensor, pad: int) -> Tensor:
    """Zero-pad a batch by `pad` pixels, cut an HxW window at each image's (row, col)
    offset and mirror the flagged images -- one gather, no per-image Python loop."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)           # (B, H)
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = torch.where(flips.view(-1, 1), w - 1 - cols, cols) + offsets[:, 1:2]  # (B, W)
    bi = torch.arange(b, device=x.device).view(-1, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, -1, 1, 1)
    return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
