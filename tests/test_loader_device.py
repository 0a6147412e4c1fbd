"""The loader's batches do not depend on where the training set is kept (host or device)."""

import torch

from smaraad.data import BatchLoader
from smaraad.data.loader import fits_on


def batches(resident, device="cpu"):
    """Two epochs of a fixed set, as (x, y) on the CPU."""
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (37, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (37,), generator=g)
    loader = BatchLoader((images, labels), 8, shuffle=True, augment=True, generator=g,
                         device=device, resident=resident)
    return [(x.cpu(), y.cpu()) for _ in range(2) for x, y in loader], loader


def test_resident_and_host_copies_give_the_same_batches():
    kept, loader = batches(True)
    copied, _ = batches(False)
    assert loader.resident and len(kept) == 10
    for (xa, ya), (xb, yb) in zip(kept, copied, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_only_a_gpu_keeps_the_set_resident_by_default():
    _, loader = batches(None)
    assert not loader.resident and not loader.pin
    assert not fits_on(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.device("cpu"))


def test_every_byte_becomes_its_correctly_rounded_fraction():
    """The batches hold k / 255 rounded once to float32 (not a device's division), so the CPU and
    every accelerator give the same bits."""
    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(2, 3, 1, 1)
    loader = BatchLoader((images, torch.zeros(2, dtype=torch.long)), 2, shuffle=False,
                         augment=False)
    (x, _), = list(loader)
    exact = (torch.arange(256, dtype=torch.float64) / 255).to(torch.float32).view(16, 16)
    assert x.dtype == torch.float32 and torch.equal(x, exact.expand(2, 3, 16, 16))
