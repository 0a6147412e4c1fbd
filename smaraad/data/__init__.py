"""Datasets as in-memory uint8 tensors, split into train / validation / test.

    splits = load_data('embedded')            # synthetic shapes, no download (the default)
    splits = load_data('cifar10', root='data', download=True)
    splits = load_data('fashion_mnist')       # --data-root, $SMARAAD_DATA or Debian's files
    loader = BatchLoader(splits.train, 128, shuffle=True, augment=True)

The validation split is a seeded hold-out of the TRAINING set, so checkpoints and
hyperparameters are chosen without touching the test set, which only final evaluation reads.
"""
import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from .cifar import DataError
from .loader import BatchLoader
from .registry import DATASETS, Dataset, dataset

__all__ = ['DATASETS', 'Dataset', 'dataset', 'load_data', 'Splits', 'BatchLoader', 'DataError',
           'describe', 'split_digest']


@dataclass(frozen=True)
class Splits:
    train: tuple[Tensor, Tensor]      # (images uint8 (N,C,H,W), labels int64 (N,)), validation removed
    val: tuple[Tensor, Tensor]        # seeded hold-out of the TRAINING set (never from test)
    test: tuple[Tensor, Tensor]       # test split: only final evaluation touches it
    num_classes: int
    mean: tuple[float, ...]           # per-channel mean of the train split, [0,1] units
    std: tuple[float, ...]            # per-channel std of the train split, [0,1] units
    center: bool                      # model should subtract each image's mean colour (embedded)
    name: str
    masks: dict[str, Tensor] | None   # embedded only: split -> (N,H,W) bool object masks
    synthetic: bool

    @property
    def channels(self) -> int:
        """Image channels (3 RGB, 1 grayscale): what a model's stem takes."""
        return self.train[0].shape[1]


def load_data(name: str, *, root: str | None = None, val_size: int | float = 0.1, seed: int = 0,
              download: bool = False, num_classes: int | None = None, n_train: int | None = None,
              image_size: int | None = None, data_seed: int = 0) -> Splits:
    """Load dataset `name` (smaraad/data/registry.py) and split off a validation set.

    `seed` only chooses the validation split; the images themselves depend on `data_seed`
    (embedded: the generator's seed; a data set read from files: which subset `n_train` keeps),
    so runs that differ in training seed see the same data. `val_size` is a count or a fraction
    of the training set. num_classes / n_train / image_size override the embedded defaults; for
    a data set read from files, n_train keeps a random subset of the training set and the other
    two must match it."""
    info = dataset(name)
    if n_train is not None and n_train < 2:
        raise DataError(f'n_train must be >= 2, got {n_train}')
    if info.synthetic:
        k = info.classes if num_classes is None else num_classes
        train, test, (train_masks, test_masks) = info.load(
            num_classes=k, n_train=info.train_images if n_train is None else n_train,
            image_size=info.image_size if image_size is None else image_size,
            data_seed=data_seed)
    else:
        train, test, k = _from_files(info, root, download, num_classes, n_train, image_size,
                                     data_seed)
        train_masks = test_masks = None

    train_idx, val_idx = _split_indices(train[1].numel(), val_size, seed)
    mean, std = _channel_stats(train[0][train_idx])
    masks = None
    if train_masks is not None:
        masks = {'train': train_masks[train_idx], 'val': train_masks[val_idx], 'test': test_masks}
    return Splits(train=(train[0][train_idx], train[1][train_idx]),
                  val=(train[0][val_idx], train[1][val_idx]), test=test, num_classes=k,
                  mean=mean, std=std, center=info.center, name=name, masks=masks,
                  synthetic=info.synthetic)


DIGEST_CHARS = 16


def split_digest(images: Tensor, labels: Tensor) -> str:
    """The first DIGEST_CHARS hex digits of SHA-256 over one split's images and labels, their
    dtypes and shapes included: two subsets of one data set never share it. (MLflow's own NumPy
    digest hashes only the first 10,000 elements of the flattened array, the first few images.)"""
    h = hashlib.sha256()
    for t in (images, labels):
        array = t.detach().cpu().contiguous().numpy()
        h.update(repr((array.dtype.str, array.shape)).encode())
        h.update(array.tobytes())
    return h.hexdigest()[:DIGEST_CHARS]


def describe(splits: Splits) -> dict:
    """What identifies the data a run saw, for a tracking record: the name, the title, the
    source, the image shape, the split sizes and each split's digest (`split_digest`)."""
    info = dataset(splits.name)
    parts = {k: getattr(splits, k) for k in ('train', 'val', 'test')}
    return {'name': splits.name, 'title': info.title, 'source': info.source,
            'shape': list(splits.train[0].shape[1:]), 'classes': splits.num_classes,
            'sizes': {k: len(y) for k, (_, y) in parts.items()},
            'digests': {k: split_digest(x, y) for k, (x, y) in parts.items()}}


def _from_files(info: Dataset, root, download, num_classes, n_train, image_size, data_seed):
    if num_classes not in (None, info.classes):
        raise DataError(f'{info.title} has {info.classes} classes; num_classes={num_classes} '
                        'is not possible')
    if image_size not in (None, info.image_size):
        raise DataError(f'{info.title} images are {info.image_size}x{info.image_size}; '
                        f'image_size={image_size} is not supported')
    train, test = info.load(root, download)
    if n_train is not None and n_train < train[1].numel():
        g = torch.Generator().manual_seed(data_seed)
        keep = torch.randperm(train[1].numel(), generator=g)[:n_train].sort().values
        train = (train[0][keep], train[1][keep])
    return train, test, info.classes


def _split_indices(n: int, val_size: int | float, seed: int) -> tuple[Tensor, Tensor]:
    """(train, val) index sets from a seeded permutation, each sorted to keep data order."""
    if isinstance(val_size, float):
        if not 0.0 <= val_size < 1.0:
            raise DataError(f'val_size as a fraction must be in [0, 1), got {val_size}')
        n_val = round(val_size * n)
    else:
        n_val = int(val_size)
    if not 0 <= n_val < n:
        raise DataError(f'val_size={val_size} leaves no training data out of {n} images')
    if val_size and n_val == 0:  # a fraction that rounds to nothing: tuning would be blind
        raise DataError(f'val_size={val_size} holds out no image of {n}; ask for at least one')
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _channel_stats(images: Tensor, chunk: int = 5000) -> tuple[tuple, tuple]:
    """Per-channel mean and std in [0,1] units, accumulated in float64 over chunks so
    that 50k CIFAR images never exist as one float copy (600 MB)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros(images.shape[1], dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].to(torch.float64) / 255
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp(min=0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
