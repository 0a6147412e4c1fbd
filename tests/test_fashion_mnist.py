"""Fashion-MNIST: the idx reader on files written here (always), on Debian's real files (where
`apt-get install dataset-fashion-mnist` put them; a skip that says so elsewhere), the checks that
refuse other data, the error that names the three ways to get it, and a training run with no
network on grayscale images."""
import gzip
import struct

import numpy as np
import pytest
import torch

from smaraad.data import DataError, describe, load_data
from smaraad.data import fashion_mnist as fm

REAL = fm.DEBIAN_DIR
HAVE_REAL = fm.find_folder([REAL]) is not None


def _images(n: int, offset: int) -> np.ndarray:
    """(n, 28, 28) uint8; image i carries its id (offset + i) in pixels (0, 0) to (0, 2), base
    256, and a fixed pattern elsewhere, so every image can be traced back after the split."""
    ids = offset + np.arange(n)
    x = np.broadcast_to((np.arange(28 * 28) % 251).astype(np.uint8), (n, 28 * 28)).copy()
    x[:, 0], x[:, 1], x[:, 2] = ids % 256, ids // 256 % 256, ids // 65536
    return x.reshape(n, 28, 28)


def _write(path, array: np.ndarray, compress: bool) -> None:
    head = struct.pack(f'>{1 + array.ndim}I', 0x0800 + array.ndim, *array.shape)
    data = head + array.tobytes()
    if compress:
        with gzip.open(f'{path}.gz', 'wb', compresslevel=1) as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def write_fashion(folder, *, compress=True, labels=None):
    """The four idx files in `folder`: 60,000 + 10,000 images, training labels 9, 0, 1, ... (the
    real file's first label, 6,000 per class) unless `labels` is given."""
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = (np.arange(60_000) + 9) % 10 if labels is None else labels
    for (images, label_file), n, offset, y in (
            (fm.FILES['train'], 60_000, 0, train_labels),
            (fm.FILES['test'], 10_000, 60_000, np.arange(10_000) % 10)):
        _write(folder / images, _images(n, offset), compress)
        _write(folder / label_file, y.astype(np.uint8), compress)
    return folder


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    return write_fashion(tmp_path_factory.mktemp('fmnist'))


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    monkeypatch.setattr(fm, 'DEBIAN_DIR', tmp_path / 'no-debian')
    monkeypatch.delenv('SMARAAD_DATA', raising=False)


def _ids(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long() + 65536 * x[:, 0, 0, 2].long()


# ----------------------------------------------------------------------------- written files
def test_written_gz_files_read_as_grayscale_splits(written):
    s = load_data('fashion_mnist', root=str(written), val_size=1000, seed=0)
    assert s.name == 'fashion_mnist' and s.channels == 1 and s.num_classes == 10
    assert not s.synthetic and not s.center and s.masks is None
    assert s.train[0].shape == (59_000, 1, 28, 28) and s.val[0].shape == (1000, 1, 28, 28)
    assert s.test[0].shape == (10_000, 1, 28, 28) and s.train[0].dtype == torch.uint8
    ids = torch.cat([_ids(s.train[0]), _ids(s.val[0])])
    assert sorted(ids.tolist()) == list(range(60_000))  # val came from the training file
    labels = torch.cat([s.train[1], s.val[1]])[ids.argsort()]
    assert torch.equal(labels, (torch.arange(60_000) + 9) % 10)
    assert torch.equal(_ids(s.test[0]), 60_000 + torch.arange(10_000))
    assert s.test[0][3, 0, 5, 7] == (5 * 28 + 7) % 251  # row-major pixels
    assert len(s.mean) == len(s.std) == 1


def test_torchvision_layout_uncompressed_and_train_size(tmp_path, no_debian):
    write_fashion(tmp_path / 'FashionMNIST' / 'raw', compress=False)
    s = load_data('fashion_mnist', root=str(tmp_path), val_size=100, n_train=1000)
    assert s.train[0].shape == (900, 1, 28, 28) and s.test[0].shape[0] == 10_000
    assert len(set(_ids(s.train[0]).tolist()) | set(_ids(s.val[0]).tolist())) == 1000


def test_smaraad_data_is_looked_in(written, monkeypatch):
    monkeypatch.setenv('SMARAAD_DATA', str(written))
    monkeypatch.setattr(fm, 'DEBIAN_DIR', written / 'absent')
    assert load_data('fashion_mnist', val_size=10, n_train=100).train[0].shape[0] == 90


def test_mnist_shaped_files_are_refused(tmp_path, no_debian):
    """Same shapes, MNIST's unbalanced classes and first label 5: refused, not trained on."""
    labels = np.r_[5, np.arange(59_999) % 10]
    write_fashion(tmp_path, labels=labels)
    with pytest.raises(DataError, match='not Fashion-MNIST.*MNIST files'):
        load_data('fashion_mnist', root=str(tmp_path))


def test_missing_files_name_the_three_ways(tmp_path, no_debian):
    with pytest.raises(DataError) as err:
        load_data('fashion_mnist', root=str(tmp_path))
    msg = str(err.value)
    assert '--download' in msg and 'apt-get install dataset-fashion-mnist' in msg
    assert '--data-root' in msg and '\n' not in msg


def test_a_truncated_file_is_one_data_error(tmp_path, no_debian):
    write_fashion(tmp_path, compress=False)
    f = tmp_path / fm.FILES['test'][0]
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(DataError, match='values after the header'):
        load_data('fashion_mnist', root=str(tmp_path))


def test_describe_names_the_data_and_its_digest_follows_the_split(written):
    a = describe(load_data('fashion_mnist', root=str(written), val_size=100, n_train=500))
    b = describe(load_data('fashion_mnist', root=str(written), val_size=100, n_train=500, seed=1))
    assert a['name'] == 'fashion_mnist' and a['shape'] == [1, 28, 28] and a['classes'] == 10
    assert a['sizes'] == {'train': 400, 'val': 100, 'test': 10_000}
    assert a['digests']['train'] != b['digests']['train']
    assert a['digests']['test'] == b['digests']['test']  # the same test split


def test_train_command_runs_on_grayscale_files_with_no_network(written, tmp_path, capsys):
    """`python -m smaraad.train --dataset fashion_mnist` from local files: a one-channel model,
    its checkpoint records the channel and evaluates."""
    from conftest import run_cli
    from smaraad.models import load_checkpoint, read_checkpoint
    from smaraad.train import main

    out = tmp_path / 'run'
    code, stdout, err = run_cli(main, [
        '--dataset', 'fashion_mnist', '--data-root', str(written), '--method', 'pgd_at',
        '--student', 'small_cnn', '--epochs', '1', '--set', 'train_size=300',
        '--set', 'val_size=60', '--set', 'batch_size=60', '--set', 'attack_steps=1',
        '--set', 'precision=fp32', '--attacks', 'clean,pgd20', '--eval-n', '40',
        '--out', str(out)], capsys)
    assert code == 0, err
    assert 'fashion_mnist (240 train / 60 val images' in stdout
    assert read_checkpoint(out / 'checkpoint.pt')['channels'] == 1
    model = load_checkpoint(out / 'checkpoint.pt')
    assert model.in_channels == 1 and model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


# ----------------------------------------------------------------------------- real files
@pytest.mark.skipif(not HAVE_REAL, reason=f'Debian\'s Fashion-MNIST files are not in {REAL} '
                    '(apt-get install dataset-fashion-mnist); the written-file tests above ran')
def test_debian_files_are_fashion_mnist(monkeypatch, tmp_path):
    monkeypatch.delenv('SMARAAD_DATA', raising=False)
    s = load_data('fashion_mnist', root=str(tmp_path / 'empty'), val_size=0)
    assert s.train[0].shape == (60_000, 1, 28, 28) and s.test[0].shape == (10_000, 1, 28, 28)
    assert s.train[1][:5].tolist() == [9, 0, 0, 3, 0]
    assert s.train[1].bincount().tolist() == [6000] * 10
    assert s.test[1].bincount().tolist() == [1000] * 10
    assert 0.2 < s.mean[0] < 0.4 and 0.25 < s.std[0] < 0.45  # mostly dark backgrounds
