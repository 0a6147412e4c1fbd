"""An in-memory batch loader with shuffling and augmentation done batched in torch.

Why not torch.utils.data.DataLoader: CIFAR fits in memory as uint8 (150 MB), and per-image
PIL transforms in worker processes cost more than the small models trained here on a 2-core
CPU. Keeping every random draw in one dedicated torch.Generator also makes an epoch a pure
function of the generator state, which a checkpoint can save and restore exactly.

On a GPU the uint8 training set is kept on the device when it fits (CIFAR: 150 MB), so a batch is
one gather there and nothing crosses the bus per step; otherwise each batch is copied from pinned
memory without blocking. Every random draw stays on the CPU generator, so the batches are the
same either way (tests/test_gpu.py, tests/test_loader_device.py).
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor


RESIDENT_SHARE = 0.25  # of the GPU's free memory a resident training set may take
# byte -> float in [0, 1], each k / 255 correctly rounded to float32, made once on the CPU: the
# batches are looked up in it on every device, so they are bit-equal everywhere (a division on
# the device is not: CUDA divides by a scalar as a multiply by its reciprocal, one ulp off the
# quotient for 126 of the 256 bytes)
UNIT_TABLE = (torch.arange(256, dtype=torch.float64) / 255).to(torch.float32)


def unit_floats(x: Tensor, table: Tensor = UNIT_TABLE) -> Tensor:
    """uint8 images as float32 in [0, 1] on x's device, through UNIT_TABLE (`table`: a copy of
    it already on that device)."""
    return table.to(x.device)[x.long()]


def fits_on(images: Tensor, device: torch.device) -> bool:
    """Whether `images` should live on `device`: a CUDA device with room to spare."""
    if device.type != 'cuda':
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() <= RESIDENT_SHARE * free


class BatchLoader:
    """Iterates (x float32 in [0,1] (B,3,H,W), y int64 (B,)) over an in-memory uint8 tensor pair.

    shuffle + augmentation (random crop with `pad` zero-padding, horizontal flip) are done
    batched in torch with a dedicated torch.Generator, so epochs are reproducible and the
    loader state can be saved/restored (`state_dict` / `load_state_dict`).

    All of an epoch's random draws (order, crop offsets, flips) are taken when iteration
    starts, so the generator state after `iter(loader)` does not depend on how many batches
    the caller consumed -- a resumed run replays the same following epochs.

    `resident`: keep the images and labels on `device` (None = when the device is a GPU and
    they take at most RESIDENT_SHARE of its free memory)."""

    def __init__(self, data: tuple[Tensor, Tensor], batch_size: int, *, shuffle: bool,
                 augment: bool, pad: int | None = None, generator: torch.Generator | None = None,
                 device: str | torch.device = 'cpu', drop_last: bool = False,
                 resident: bool | None = None):
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
        self.resident = fits_on(images, self.device) if resident is None else resident
        if self.resident:
            self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
        # pinned batches copy asynchronously; pinning needs CUDA
        self.pin = self.device.type == 'cuda' and not self.resident
        self.table = UNIT_TABLE.to(self.device)

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
        # one copy per epoch, sliced and indexed on the device per batch (a copy per batch from
        # pageable memory would make the host wait for the device at every step)
        order_on = order.to(self.device)
        if self.augment:
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        for i in range(len(self)):
            part = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx, on_device = order[part], order_on[part]
            x = self._take(self.images, idx, on_device)
            if self.augment:
                x = _crop_flip(x, offsets[on_device], flips[on_device], self.pad)
            y = self._take(self.labels, idx, on_device)
            yield unit_floats(x, self.table), y  # uint8 travels, float is made on the device

    def _take(self, t: Tensor, idx: Tensor, on_device: Tensor) -> Tensor:
        """t[idx] on the loader's device: a gather where t lives there, else a host gather and
        a (pinned, non-blocking on CUDA) copy."""
        if t.device == self.device:
            return t[on_device]
        part = t[idx.to(t.device)]
        if self.pin:
            part = part.pin_memory()
        return part.to(self.device, non_blocking=self.pin)


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
