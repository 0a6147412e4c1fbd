"""Tests for smaraad.data: the embedded generator, CIFAR reading, splits and the loader."""
import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smaraad.data import DATASETS, BatchLoader, DataError, Splits, load_data

SMALL = dict(n_train=600)  # embedded images per call: keeps each call ~0.2 s


def _rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(row.numpy()) for row in images.flatten(1)}


# ----------------------------------------------------------------------------- embedded
def test_embedded_defaults_shapes_and_dtypes():
    s = load_data('embedded')
    assert isinstance(s, Splits) and s.name == 'embedded' and s.synthetic and s.center
    assert s.num_classes == 10 and 'embedded' in DATASETS
    assert s.train[0].shape == (4500, 3, 16, 16) and s.val[0].shape == (500, 3, 16, 16)
    assert s.test[0].shape == (1000, 3, 16, 16)
    for x, y in (s.train, s.val, s.test):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and y.shape == x.shape[:1]
        assert int(y.min()) >= 0 and int(y.max()) < 10
    for split, (x, _) in (('train', s.train), ('val', s.val), ('test', s.test)):
        m = s.masks[split]
        assert m.dtype == torch.bool and m.shape == (x.shape[0], 16, 16)
        assert bool((m.flatten(1).sum(1) > 0).all())  # every image has an object
    mean = (s.train[0].double() / 255).mean(dim=(0, 2, 3))
    assert torch.allclose(torch.tensor(s.mean, dtype=torch.float64), mean, atol=1e-9)
    assert all(0.05 < v < 0.5 for v in s.std)


def test_embedded_is_deterministic_and_depends_on_data_seed():
    a, b = load_data('embedded', **SMALL), load_data('embedded', **SMALL)
    for split in ('train', 'val', 'test'):
        assert torch.equal(getattr(a, split)[0], getattr(b, split)[0])
        assert torch.equal(getattr(a, split)[1], getattr(b, split)[1])
        assert torch.equal(a.masks[split], b.masks[split])
    c = load_data('embedded', data_seed=1, **SMALL)
    assert not torch.equal(a.train[0], c.train[0]) and not torch.equal(a.test[0], c.test[0])


def test_embedded_classes_balanced():
    s = load_data('embedded', val_size=0, **SMALL)
    assert s.train[1].bincount(minlength=10).tolist() == [60] * 10
    assert s.test[1].bincount(minlength=10).tolist() == [100] * 10


def test_embedded_object_stands_out_by_more_than_eps():
    """Robust training at eps = 8/255 needs objects far brighter or darker than that."""
    s = load_data('embedded', val_size=0, **SMALL)
    lum = s.train[0].double().mean(1) / 255
    m = s.masks['train']
    core = F.max_pool2d((~m).float().unsqueeze(1), 3, 1, 1).squeeze(1) == 0  # away from edges
    keep = core.flatten(1).any(1)
    obj = (lum * core).sum((1, 2))[keep] / core.sum((1, 2))[keep]
    bg = (lum * ~m).sum((1, 2))[keep] / (~m).sum((1, 2))[keep]
    assert (obj - bg).abs().median() > 0.3 and (obj - bg).abs().quantile(0.05) > 0.2


def test_embedded_overrides():
    s = load_data('embedded', num_classes=20, n_train=200, image_size=32, val_size=40)
    assert s.num_classes == 20 and s.train[0].shape == (160, 3, 32, 32)
    assert s.val[0].shape == (40, 3, 32, 32) and s.masks['val'].shape == (40, 32, 32)
    assert int(s.train[1].max()) < 20
    with pytest.raises(DataError):
        load_data('embedded', num_classes=1, n_train=100)


def test_split_is_a_partition_of_the_training_set():
    full = load_data('embedded', val_size=0, **SMALL)
    s = load_data('embedded', val_size=0.25, seed=3, **SMALL)
    assert s.val[0].shape[0] == 150 and s.train[0].shape[0] == 450
    train, val = _rows(s.train[0]), _rows(s.val[0])
    assert not train & val and train | val == _rows(full.train[0])
    assert not val & _rows(full.test[0])
    assert torch.equal(s.test[0], full.test[0])  # the test set never moves


def test_split_follows_seed_and_data_does_not():
    a = load_data('embedded', seed=0, **SMALL)
    b = load_data('embedded', seed=0, **SMALL)
    c = load_data('embedded', seed=1, **SMALL)
    assert torch.equal(a.val[0], b.val[0]) and torch.equal(a.train[1], b.train[1])
    assert _rows(a.val[0]) != _rows(c.val[0])
    # the training seed moves images between train and val, never changes them
    assert _rows(a.train[0]) | _rows(a.val[0]) == _rows(c.train[0]) | _rows(c.val[0])
    assert torch.equal(a.test[0], c.test[0]) and torch.equal(a.masks['test'], c.masks['test'])


def test_bad_names_and_sizes():
    with pytest.raises(DataError, match='embedded, cifar10, cifar100'):
        load_data('mnist')
    with pytest.raises(DataError):
        load_data('embedded', val_size=600, **SMALL)
    with pytest.raises(DataError):
        load_data('embedded', val_size=1.5, **SMALL)
    with pytest.raises(DataError, match='holds out no image'):
        load_data('embedded', val_size=0.0001, **SMALL)  # rounds to 0 of 600
    assert issubclass(DataError, ValueError)


# ----------------------------------------------------------------------------- cifar
class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes, like the real CIFAR files (pickled under
    Python 2): torchvision reads them with encoding='latin1' and gets str keys."""
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        n = len(obj)
        head = (pickle.SHORT_BINSTRING + bytes([n]) if n < 256
                else pickle.BINSTRING + struct.pack('<i', n))
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump(path, obj):
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _cifar_rows(ids: np.ndarray) -> np.ndarray:
    """(N, 3072) uint8 rows, 1024 R then 1024 G then 1024 B, each row-major 32x32.
    Pixel p of image id: R = (p + id) % 256, G = (3p + 7) % 256, B = 255 - R; R[0:2]
    carry the id (id % 256, id // 256) so every image can be traced back."""
    p = np.arange(1024)
    r = (p[None, :] + ids[:, None]) % 256
    r[:, 0], r[:, 1] = ids % 256, ids // 256
    g = np.broadcast_to((3 * p + 7) % 256, r.shape)
    return np.concatenate([r, g, 255 - r], axis=1).astype(np.uint8)


def _write_cifar10(root, per_batch=4, n_test=6):
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    for b in range(5):
        ids = np.arange(b * per_batch, (b + 1) * per_batch)
        _dump(folder / f'data_batch_{b + 1}', {b'batch_label': b'training batch', b'data': _cifar_rows(ids),
                                              b'labels': [int(i) % 10 for i in ids]})
    ids = 1000 + np.arange(n_test)
    _dump(folder / 'test_batch', {b'data': _cifar_rows(ids), b'labels': [int(i) % 10 for i in ids]})
    _dump(folder / 'batches.meta', {b'label_names': [b'c%d' % i for i in range(10)]})


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision checks md5 sums of the real files; accept any file that exists."""
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cifar, 'check_integrity', lambda path, md5=None: os.path.isfile(path))


def test_cifar10_reads_real_layout(tmp_path, no_md5):
    _write_cifar10(tmp_path)
    s = load_data('cifar10', root=str(tmp_path), val_size=5, seed=0)
    assert s.num_classes == 10 and not s.synthetic and not s.center and s.masks is None
    assert s.train[0].shape == (15, 3, 32, 32) and s.val[0].shape == (5, 3, 32, 32)
    assert s.test[0].shape == (6, 3, 32, 32) and s.train[0].dtype == torch.uint8
    x, y = torch.cat([s.train[0], s.val[0]]), torch.cat([s.train[1], s.val[1]])
    ids = x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()
    assert sorted(ids.tolist()) == list(range(20))  # val came from the training batches
    assert torch.equal(y, ids % 10)
    expected = torch.from_numpy(_cifar_rows(ids.numpy())).view(-1, 3, 32, 32)
    assert torch.equal(x, expected)
    assert x[0, 0, 1, 5] == (32 + 5 + ids[0]) % 256 and x[0, 1, 2, 3] == (3 * 67 + 7) % 256
    test_ids = s.test[0][:, 0, 0, 0].long() + 256 * s.test[0][:, 0, 0, 1].long()
    assert test_ids.tolist() == list(range(1000, 1006)) and s.test[1].tolist() == [i % 10 for i in range(1000, 1006)]


def test_cifar100_reads_fine_labels(tmp_path, no_md5):
    folder = tmp_path / 'cifar-100-python'
    folder.mkdir()
    ids = np.arange(12)
    _dump(folder / 'train', {b'data': _cifar_rows(ids), b'fine_labels': [int(i) * 7 for i in ids],
                             b'coarse_labels': [int(i) % 20 for i in ids]})
    _dump(folder / 'test', {b'data': _cifar_rows(ids[:4] + 500), b'fine_labels': [99, 0, 1, 2],
                            b'coarse_labels': [0, 0, 0, 0]})
    _dump(folder / 'meta', {b'fine_label_names': [b'f%d' % i for i in range(100)]})
    s = load_data('cifar100', root=tmp_path, val_size=0.25, n_train=8)
    assert s.num_classes == 100 and s.train[0].shape[0] == 6 and s.val[0].shape[0] == 2
    x, y = torch.cat([s.train[0], s.val[0]]), torch.cat([s.train[1], s.val[1]])
    assert torch.equal(y, x[:, 0, 0, 0].long() * 7)
    assert s.test[1].tolist() == [99, 0, 1, 2]


def test_cifar_missing_or_incomplete(tmp_path, monkeypatch):
    monkeypatch.setenv('SMARAAD_DATA', str(tmp_path / 'nowhere'))
    with pytest.raises(DataError, match='CIFAR-10 not found under .*nowhere; pass --download') as err:
        load_data('cifar10')
    message = str(err.value)  # both ways out: the flag, or the files placed by hand (and where from)
    assert os.path.join(str(tmp_path / 'nowhere'), 'cifar-10-batches-py') in message
    assert 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz' in message
    (tmp_path / 'cifar-100-python').mkdir()
    with pytest.raises(DataError, match='CIFAR-100 under .* incomplete or corrupted'):
        load_data('cifar100', root=tmp_path)
    with pytest.raises(DataError):
        load_data('cifar10', root=tmp_path, image_size=16)


# ----------------------------------------------------------------------------- loader
def _toy(n=50, size=8):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8), torch.arange(n)


def test_loader_covers_each_example_once_in_01():
    x, y = _toy()
    loader = BatchLoader((x, y), 7, shuffle=True, augment=False,
                         generator=torch.Generator().manual_seed(1))
    batches = list(loader)
    assert len(batches) == len(loader) == 8
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(50)) and seen.tolist() != list(range(50))
    for xb, yb in batches:
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert float(xb.min()) >= 0 and float(xb.max()) <= 1
        assert torch.equal((xb * 255).round().to(torch.uint8), x[yb])
    assert len(BatchLoader((x, y), 7, shuffle=True, augment=False, drop_last=True)) == 7
    assert sum(len(b[1]) for b in BatchLoader((x, y), 7, shuffle=True, augment=False, drop_last=True)) == 49


def test_loader_same_seed_same_batches():
    data = _toy()
    runs = [list(BatchLoader(data, 16, shuffle=True, augment=True,
                             generator=torch.Generator().manual_seed(5))) for _ in range(2)]
    for (xa, ya), (xb, yb) in zip(*runs):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_augmentation_is_a_padded_crop_or_its_mirror():
    x, y = _toy(n=40)
    loader = BatchLoader((x, y), 40, shuffle=False, augment=True,
                         generator=torch.Generator().manual_seed(2))
    assert loader.pad == 1  # image_size // 8
    (xb, yb), = list(loader)
    assert xb.shape == (40, 3, 8, 8) and torch.equal(yb, y)
    got = (xb * 255).round().to(torch.uint8)
    assert not torch.equal(got, x)  # augmentation changed something
    padded = F.pad(x, (1, 1, 1, 1))
    for i in range(40):
        windows = [padded[i, :, r:r + 8, c:c + 8] for r in range(3) for c in range(3)]
        candidates = windows + [w.flip(-1) for w in windows]
        assert any(torch.equal(got[i], w) for w in candidates)


def test_loader_state_restores_next_epoch():
    loader = BatchLoader(_toy(), 16, shuffle=True, augment=True,
                         generator=torch.Generator().manual_seed(9))
    list(loader)  # epoch 1
    state = loader.state_dict()
    first = list(loader)
    loader.load_state_dict(state)
    second = list(loader)
    for (xa, ya), (xb, yb) in zip(first, second):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(torch.cat([b[1] for b in first]), torch.cat([b[1] for b in list(loader)]))


# ----------------------------------------------------------------------------- --download
def test_download_with_files_in_place_reads_them(tmp_path, no_md5):
    """--download on a folder that already holds the files fetches nothing (torchvision checks
    them first) and reads them."""
    _write_cifar10(tmp_path)
    s = load_data('cifar10', root=str(tmp_path), val_size=5, download=True)
    assert s.train[0].shape == (15, 3, 32, 32) and s.test[0].shape == (6, 3, 32, 32)


@pytest.fixture
def unreachable(monkeypatch):
    """torchvision's downloader pointed at a local port nobody listens on: the failure of a
    machine without network, reached in milliseconds and never a real download."""
    import torchvision.datasets as tv
    for cls in (tv.CIFAR10, tv.CIFAR100):
        monkeypatch.setattr(cls, 'url', f'http://127.0.0.1:9/{cls.filename}')


def test_download_without_network_is_one_data_error(tmp_path, unreachable):
    unreachable_url = r'could not download CIFAR-100 from http://127\.0\.0\.1:9/'
    with pytest.raises(DataError, match=unreachable_url) as err:
        load_data('cifar100', root=str(tmp_path), download=True)
    assert 'cifar-100-python' in str(err.value) and '\n' not in str(err.value)


@pytest.mark.parametrize('command', ['smaraad.train', 'smaraad.evaluate', 'orchestrator.ablate',
                                     'orchestrator.tune'])
def test_every_data_command_downloads_or_says_how(command, tmp_path, unreachable, monkeypatch,
                                                  capsys):
    """Each command that reads data takes --download; without files, and with --download but no
    network, it prints one line on stderr and exits 2, leaving nothing behind."""
    import importlib

    from conftest import run_cli

    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(command).main
    if command == 'smaraad.evaluate':
        from smaraad.models import build_model, save_checkpoint
        save_checkpoint(str(tmp_path / 'm.pt'), build_model('small_cnn', num_classes=10),
                        config={'dataset': 'cifar10'})
        argv = ['--checkpoint', str(tmp_path / 'm.pt'), '--out', str(tmp_path / 'e.json')]
    else:
        argv = ['--name', 'x', '--storage-path', str(tmp_path / 'ray'),
                '--tracking-uri', f'sqlite:///{tmp_path / "mlflow.db"}'] \
            if command.startswith('orchestrator') else ['--out', str(tmp_path / 'run')]
    argv += ['--dataset', 'cifar10', '--data-root', str(tmp_path / 'data')]
    before = set(tmp_path.iterdir())
    for extra, expected in (([], 'pass --download'), (['--download'], 'could not download')):
        code, out, err = run_cli(main, argv + extra, capsys)
        assert code == 2 and expected in err and 'cifar-10-batches-py' in err, err
        assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err
    assert set(tmp_path.iterdir()) - before <= {tmp_path / 'data'}  # at most the empty data root


@pytest.mark.parametrize('name', list(DATASETS))
def test_every_layer_reads_a_data_set_from_its_registry_entry(name):
    """The config's choices, the preset and threat model a run starts from, --plan's sizes and
    shape and the options' help all come from the entry."""
    from orchestrator.plan import shape, train_images
    from smaraad.cli import Parser
    from smaraad.config import DATASETS as CONFIG_DATASETS, PRESETS, preset_config
    from smaraad.options import add_run_options

    entry = DATASETS[name]
    assert name in CONFIG_DATASETS and entry.preset in PRESETS
    cfg = preset_config({'dataset': name})
    assert (cfg.eps_255, cfg.step_255, cfg.attack_steps) == (
        entry.eps_255, entry.step_255, entry.attack_steps)
    assert shape(cfg) == (entry.image_size, entry.classes, entry.channels)
    n = min(entry.train_images, cfg.train_size or entry.train_images)
    assert train_images(cfg) == n - (int(cfg.val_size) if cfg.val_size >= 1
                                      else round(cfg.val_size * n))
    help_text = add_run_options(Parser(prog='x'), attacks=(), eval_n_default='',
                                aa_n_default='').format_help()
    assert name in help_text
