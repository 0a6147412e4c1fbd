"""CIFAR-10 / CIFAR-100 read through torchvision from a local folder, as uint8 tensors.

torchvision owns the file format, its downloader and its md5 checks; this module only turns its
arrays into tensors and turns its failures (files missing, corrupted, no network) into one
DataError that names both ways out: --download, or the files placed by hand.
"""
import os

import torch
from torch import Tensor

from smaraad.errors import UserError

CIFAR = {  # name -> (display name, folder torchvision reads, number of classes)
    'cifar10': ('CIFAR-10', 'cifar-10-batches-py', 10),
    'cifar100': ('CIFAR-100', 'cifar-100-python', 100),
}


class DataError(UserError):
    """A dataset cannot be provided as asked (unknown name, missing files, bad option).

    Defined here, beside the one loader that touches the file system, and re-exported
    as smaraad.data.DataError."""


def default_root() -> str:
    """Where datasets live unless told: $SMARAAD_DATA, else ./data."""
    return os.environ.get('SMARAAD_DATA', './data')


def load_cifar(name: str, root: str | os.PathLike | None = None, download: bool = False
               ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Return ((train images, labels), (test images, labels)) for 'cifar10' or 'cifar100'.

    Images are uint8 (N, 3, 32, 32), labels int64 (N,); CIFAR-100 uses the 100 fine labels."""
    from torchvision import datasets  # import here: the embedded dataset needs no torchvision

    title, folder, _ = CIFAR[name]
    root = os.fspath(default_root() if root is None else root)
    cls = datasets.CIFAR10 if name == 'cifar10' else datasets.CIFAR100
    place = (f'or place the extracted {cls.filename} ({cls.url}) under '
             f'{os.path.join(root, folder)} as torchvision lays it out')
    if not download and not os.path.isdir(os.path.join(root, folder)):
        raise DataError(f'{title} not found under {root}; pass --download to fetch it into '
                        f'--data-root (torchvision, md5-checked), {place}')
    try:
        splits = [cls(root, train=train, download=download and train) for train in (True, False)]
    except RuntimeError as err:  # torchvision: missing file or md5 mismatch
        raise DataError(f'{title} under {root} is incomplete or corrupted ({err}); pass '
                        f'--download to fetch it again, {place}') from err
    except OSError as err:  # download failed (no network, disk full, server down)
        raise DataError(f'could not download {title} from {cls.url} into {root} ({err}); '
                        f'without a network, {place.removeprefix("or ")}') from err
    return tuple(_to_tensors(ds) for ds in splits)


def _to_tensors(ds) -> tuple[Tensor, Tensor]:
    """torchvision keeps .data as (N, 32, 32, 3) uint8 numpy and .targets as a list."""
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets, dtype=torch.int64)
