"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from its four idx files, as uint8 tensors.

The files are looked for, in order, in the data root (--data-root, else $SMARAAD_DATA, else
./data) and in Debian's folder (`apt-get install dataset-fashion-mnist` puts them in DEBIAN_DIR);
in each folder flat (Debian's layout) or under FashionMNIST/raw/ (torchvision's), each file
compressed (.gz) or not. `download=True` fetches the missing files with torchvision's
`datasets.FashionMNIST` into the data root (md5-checked). Debian's .gz are recompressed, so they
fail torchvision's md5 sums: they are read here directly (gzip + the idx parser below), never
copied or written to.

The idx format (LeCun's MNIST page): a big-endian header of a magic number (0x0803 images,
0x0801 labels) and one uint32 per dimension, then the uint8 values in row-major order.

What was read is checked to be Fashion-MNIST (`check`): 60,000 training and 10,000 test images
of 28x28, 6,000 training images of each class, the first training label 9 (Ankle boot). Plain
MNIST has the same shapes but unbalanced classes and first label 5, so a folder of MNIST files
(which some public code fetches by mistake) is refused rather than trained on.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .cifar import DataError, default_root

DEBIAN_DIR = Path('/usr/share/datasets/fashion-mnist')
TORCHVISION_SUBDIR = Path('FashionMNIST', 'raw')
FILES = {  # split -> (images file, labels file), without .gz
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
SIZES = {'train': 60_000, 'test': 10_000}
SIDE = 28
CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker',
           'Bag', 'Ankle boot')
FIRST_TRAIN_LABEL = 9  # Ankle boot: the published training file's first label
_MAGIC = {3: 0x0803, 1: 0x0801}  # dimensions -> magic number of a uint8 idx file


def load_fashion_mnist(root: str | os.PathLike | None = None, download: bool = False
                       ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """((train images, labels), (test images, labels)): images uint8 (N, 1, 28, 28), labels int64."""
    root = Path(default_root() if root is None else root)
    folder = find_folder([root, DEBIAN_DIR])
    if folder is None and download:
        _download(root)
        folder = find_folder([root])
    if folder is None:
        raise DataError(f'Fashion-MNIST not found in {root} nor {DEBIAN_DIR}; either pass '
                        f'--download (torchvision, md5-checked, into --data-root), or '
                        f'apt-get install dataset-fashion-mnist, or place the four idx files '
                        f'({", ".join(n for pair in FILES.values() for n in pair)}, .gz or not) '
                        f'in --data-root or $SMARAAD_DATA')
    splits = {split: (read_idx(_file(folder, images), 3), read_idx(_file(folder, labels), 1))
              for split, (images, labels) in FILES.items()}
    check(splits, folder)
    return tuple((torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y).long())
                 for x, y in splits.values())


def find_folder(candidates) -> Path | None:
    """The first folder, flat or under FashionMNIST/raw/, that holds all four files."""
    for base in candidates:
        for folder in (Path(base), Path(base) / TORCHVISION_SUBDIR):
            if all(_file(folder, name) for pair in FILES.values() for name in pair):
                return folder
    return None


def _file(folder: Path, name: str) -> Path | None:
    """`name` in `folder`, decompressed or .gz (the decompressed one first), or None."""
    return next((p for p in (folder / name, folder / f'{name}.gz') if p.is_file()), None)


def read_idx(path: Path, dims: int) -> np.ndarray:
    """A uint8 idx file of `dims` dimensions (gzip-compressed when it ends in .gz)."""
    opener = gzip.open if path.suffix == '.gz' else open
    try:
        with opener(path, 'rb') as fh:
            data = fh.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f'{path}: cannot be read ({err})') from err
    head = 4 + 4 * dims
    if len(data) < head:
        raise DataError(f'{path}: {len(data)} bytes, too short for an idx header')
    magic, *shape = struct.unpack(f'>{1 + dims}I', data[:head])
    if magic != _MAGIC[dims]:
        raise DataError(f'{path}: magic number {magic:#06x}, expected {_MAGIC[dims]:#06x} '
                        f'(uint8 idx with {dims} dimension{"s" * (dims > 1)})')
    if len(data) - head != int(np.prod(shape)):
        raise DataError(f'{path}: {len(data) - head} values after the header, the header '
                        f'says {shape}')
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(shape).copy()


def check(splits: dict, folder: Path) -> None:
    """Refuse files that are not Fashion-MNIST (see the module docstring); one DataError."""
    for split, (x, y) in splits.items():
        if x.shape != (SIZES[split], SIDE, SIDE) or y.shape != (SIZES[split],):
            raise DataError(f'{folder}: {split} files hold images {x.shape} and labels {y.shape}; '
                            f'Fashion-MNIST has ({SIZES[split]}, {SIDE}, {SIDE}) and '
                            f'({SIZES[split]},)')
    labels = splits['train'][1]
    counts = np.bincount(labels, minlength=len(CLASSES))
    per_class = SIZES['train'] // len(CLASSES)
    if len(counts) != len(CLASSES) or (counts != per_class).any() \
            or labels[0] != FIRST_TRAIN_LABEL:
        raise DataError(f'{folder}: the training labels are not Fashion-MNIST\'s ({per_class} of '
                        f'each of {len(CLASSES)} classes, the first {FIRST_TRAIN_LABEL}; found '
                        f'counts {counts.tolist()}, first {labels[0]}): MNIST files?')


def _download(root: Path) -> None:
    """torchvision's downloader: the .gz files, md5-checked, decompressed into root/FashionMNIST/raw."""
    from torchvision import datasets  # only here: reading needs no torchvision

    try:
        datasets.FashionMNIST(str(root), train=True, download=True)
    except (RuntimeError, OSError) as err:  # md5 mismatch; no network, disk full
        raise DataError(f'could not download Fashion-MNIST into {root} ({err}); without a '
                        f'network, apt-get install dataset-fashion-mnist or place the four idx '
                        f'files in --data-root') from err
