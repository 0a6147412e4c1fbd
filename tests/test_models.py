"""Tests for smaraad.models: every registered model, checkpoints and third-party imports.

Big models are built and run once per module (fixtures below) at batch 2, so the file
stays fast on 2 CPU cores; round trips and imports use the small models (or a tiny WRN).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

from smaraad.models import (MODELS, CheckpointError, build_model, count_parameters, fold_batchnorm,
                            import_state_dict, load_checkpoint, read_checkpoint, save_checkpoint)
from smaraad.models.wrn import WideResNet

# Trainable parameters at 10 classes (published CIFAR sizes for the paper's models).
EXPECTED_PARAMS = {
    "resnet18": 11_173_962,
    "mobilenetv2": 2_296_922,
    "wrn34_10": 46_160_474,
    "wrn28_10": 36_479_194,
    "small_cnn": 33_626,
    "small_resnet": 308_650,
}
EXPECTED_MILLIONS = {"resnet18": 11.17, "mobilenetv2": 2.30, "wrn34_10": 46.16, "wrn28_10": 36.48}
# (channels K, side of the last map) at 32x32 input
EXPECTED_FMAP_32 = {"resnet18": (512, 4), "mobilenetv2": (1280, 4), "wrn34_10": (640, 8),
                    "wrn28_10": (640, 8), "small_cnn": (64, 8), "small_resnet": (128, 8)}
SMALL = ("small_cnn", "small_resnet")
BATCH = 2


class NeedsCode:
    """A class a weights_only load must refuse to unpickle."""


@pytest.fixture(scope="module")
def runs():
    """Per model: one eval-mode pass with input gradient, computed lazily and cached."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            torch.manual_seed(0)
            model = build_model(name).eval()
            x = torch.rand(BATCH, 3, 32, 32, requires_grad=True)
            logits, fmap = model.forward_features(x)
            (grad,) = torch.autograd.grad(logits.sum(), x)
            with torch.no_grad():
                plain = model(x)
            cache[name] = {"model": model, "logits": logits.detach(), "fmap": fmap.detach(),
                           "grad": grad, "plain": plain}
        return cache[name]

    return get


def test_registry_names():
    assert set(MODELS) == set(EXPECTED_PARAMS)


def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match="unknown model 'resnet50'; allowed: ") as info:
        build_model("resnet50")
    assert all(name in str(info.value) for name in MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_and_features(name, runs):
    run = runs(name)
    channels, side = EXPECTED_FMAP_32[name]
    assert run["logits"].shape == (BATCH, 10)
    assert run["fmap"].shape == (BATCH, channels, side, side)
    assert run["model"].fc.weight.shape == (10, channels) == (10, run["model"].feature_channels)
    assert run["model"].arch == name and run["model"].num_classes == 10
    assert torch.isfinite(run["logits"]).all() and torch.isfinite(run["fmap"]).all()
    assert (run["fmap"] >= 0).all(), "the last map must be taken after its ReLU"


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_equals_forward_features(name, runs):
    run = runs(name)
    torch.testing.assert_close(run["plain"], run["logits"])


@pytest.mark.parametrize("name", list(MODELS))
def test_gradient_reaches_input(name, runs):
    grad = runs(name)["grad"]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_count(name, runs):
    count = count_parameters(runs(name)["model"])
    assert count == EXPECTED_PARAMS[name]
    if name in EXPECTED_MILLIONS:
        assert round(count / 1e6, 2) == EXPECTED_MILLIONS[name]


@pytest.mark.parametrize("name", list(MODELS))
def test_100_classes_changes_only_fc(name, runs):
    ten = runs(name)["model"]
    hundred = build_model(name, num_classes=100)
    k = ten.feature_channels
    assert count_parameters(hundred) - count_parameters(ten) == 90 * (k + 1)
    shapes10 = {n: t.shape for n, t in ten.state_dict().items()}
    shapes100 = {n: t.shape for n, t in hundred.state_dict().items()}
    assert shapes10.keys() == shapes100.keys()
    assert [n for n in shapes10 if shapes10[n] != shapes100[n]] == ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("name", SMALL)
def test_small_models_at_16x16(name):
    model = build_model(name).eval()
    logits, fmap = model.forward_features(torch.rand(BATCH, 3, 16, 16))
    assert logits.shape == (BATCH, 10)
    assert fmap.shape[2:] == (4, 4)


def test_normalisation_inside_model():
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    model = build_model("small_cnn", mean=mean.tolist(), std=std.tolist()).eval()
    assert not any(k.startswith("normalize") for k in model.state_dict())
    x = torch.rand(BATCH, 3, 16, 16)
    expected = model.trunk((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    torch.testing.assert_close(model.features(x), expected)
    with pytest.raises(ValueError, match="std must be positive"):
        build_model("small_cnn", std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="3 values"):
        build_model("small_cnn", mean=(0.5,))


def test_center_removes_each_images_mean_colour():
    model = build_model("small_cnn", center=True).eval()
    x = torch.rand(BATCH, 3, 16, 16) * 0.5
    shift = torch.tensor([0.3, -0.1, 0.2]).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x + shift), model(x))


def test_wrn_layout_matches_trades():
    keys = set(build_model("wrn28_10").state_dict())
    for key in ("conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.conv1.weight",
                "block1.layer.0.bn2.running_var", "block1.layer.0.conv2.weight",
                "block1.layer.0.convShortcut.weight", "block2.layer.0.convShortcut.weight",
                "block3.layer.3.conv2.weight", "sub_block1.layer.3.conv2.weight",
                "bn1.weight", "fc.weight", "fc.bias"):
        assert key in keys, key
    assert "block1.layer.1.convShortcut.weight" not in keys


def test_wrn_sub_block1_is_frozen_and_unused():
    torch.manual_seed(0)
    model = WideResNet("wrn10_1", 10, 1).eval()
    assert not any(p.requires_grad for p in model.sub_block1.parameters())
    x = torch.rand(BATCH, 3, 32, 32)
    before = model(x)
    with torch.no_grad():
        for p in model.sub_block1.parameters():
            p.add_(1.0)
    torch.testing.assert_close(model(x), before)


# ---------------------------------------------------------------- our checkpoints

def _perturbed(name: str, **kwargs):
    """A model whose BN running statistics differ from their initial values."""
    torch.manual_seed(1)
    model = build_model(name, **kwargs).train()
    with torch.no_grad():
        model(torch.rand(8, 3, 16, 16))
    return model.eval()


@pytest.mark.parametrize("name", SMALL)
def test_round_trip(name, tmp_path):
    model = _perturbed(name, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7), center=True)
    path = tmp_path / "sub" / "ckpt.pt"
    save_checkpoint(path, model, config={"lr": 0.1, "milestones": [115, 160]}, extra={"epoch": 3})
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"], "no temp file may remain"
    loaded = load_checkpoint(path)
    assert not loaded.training and loaded.arch == name
    assert loaded.normalize.stats() == model.normalize.stats() and loaded.normalize.center
    x = torch.rand(BATCH, 3, 16, 16)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    raw = read_checkpoint(path)  # weights_only=True: plain types only
    assert raw["config"] == {"lr": 0.1, "milestones": [115, 160]} and raw["epoch"] == 3


def test_save_rejects_bad_payloads(tmp_path):
    model = build_model("small_cnn")
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "a.pt", model, extra={"arch": "x"})
    with pytest.raises(TypeError, match="config\\['obj'\\]"):
        save_checkpoint(tmp_path / "a.pt", model, config={"obj": NeedsCode()})
    assert list(tmp_path.iterdir()) == []


def _bad_files(tmp_path):
    """name -> (path, pattern the message must match)."""
    good = _perturbed("small_cnn")
    ok = tmp_path / "ok.pt"
    save_checkpoint(ok, good)
    payload = read_checkpoint(ok)
    files = {"missing": (tmp_path / "missing.pt", "not found")}
    (tmp_path / "corrupt.pt").write_bytes(bytes(range(256)) * 4)
    files["corrupt"] = (tmp_path / "corrupt.pt", "corrupt or not a torch file")
    (tmp_path / "truncated.pt").write_bytes(ok.read_bytes()[:1000])
    files["truncated"] = (tmp_path / "truncated.pt", "corrupt or not a torch file")
    torch.save({**payload, "obj": NeedsCode()}, tmp_path / "code.pt")
    files["needs_code"] = (tmp_path / "code.pt", "NeedsCode.*needs code")
    torch.save({**payload, "arch": "small_resnet"}, tmp_path / "wrong_arch.pt")
    files["wrong_arch"] = (tmp_path / "wrong_arch.pt", "does not fit small_resnet.*expected shape")
    wide = build_model("small_cnn", num_classes=100)
    torch.save({**payload, "state_dict": wide.state_dict()}, tmp_path / "wrong_classes.pt")
    files["wrong_classes"] = (tmp_path / "wrong_classes.pt",
                              re.escape("'fc.weight' expected shape (10, 64), found (100, 64)"))
    torch.save({**payload, "arch": "vgg"}, tmp_path / "unknown_arch.pt")
    files["unknown_arch"] = (tmp_path / "unknown_arch.pt", "unknown arch 'vgg'")
    torch.save({k: v for k, v in payload.items() if k != "mean"}, tmp_path / "no_mean.pt")
    files["missing_keys"] = (tmp_path / "no_mean.pt", "lacks keys \\['mean'\\]")
    return files


@pytest.mark.parametrize("kind", ["missing", "corrupt", "truncated", "needs_code", "wrong_arch",
                                  "wrong_classes", "unknown_arch", "missing_keys"])
def test_bad_checkpoint_raises_clear_error(kind, tmp_path):
    path, pattern = _bad_files(tmp_path)[kind]
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(path)
    assert path.name in str(info.value)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------- third-party imports

LAYOUTS = {
    "raw": lambda sd: sd,
    "state_dict_module": lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 5},
    "net": lambda sd: {"net": sd, "acc": 0.9},
    "model_prefix": lambda sd: {"model": {"model." + k: v for k, v in sd.items()}},
    "module_model_prefix": lambda sd: {"state_dict": {"module.model." + k: v for k, v in sd.items()}},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_import_layouts(layout, tmp_path):
    source = _perturbed("small_resnet")
    path = tmp_path / f"{layout}.pt"
    torch.save(LAYOUTS[layout](source.state_dict()), path)
    model = import_state_dict(path, arch="small_resnet")
    assert not model.training
    x = torch.rand(BATCH, 3, 16, 16)
    torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_import_renames_kuangliu_linear(tmp_path):
    source = build_model("mobilenetv2").eval()
    sd = {("linear." + k[3:] if k.startswith("fc.") else k): v for k, v in source.state_dict().items()}
    torch.save({"net": {"module." + k: v for k, v in sd.items()}}, tmp_path / "kuangliu.pt")
    model = import_state_dict(tmp_path / "kuangliu.pt", arch="mobilenetv2")
    torch.testing.assert_close(model.fc.weight, source.fc.weight)


def test_import_wrn_without_sub_block1_or_bn_counters(tmp_path, monkeypatch):
    """RobustBench WRNs omit sub_block1; pre-0.4.1 files lack num_batches_tracked."""
    monkeypatch.setitem(MODELS, "wrn10_1", lambda **kw: WideResNet("wrn10_1", 10, 1, **kw))
    torch.manual_seed(2)
    source = MODELS["wrn10_1"]().eval()
    sd = {k: v for k, v in source.state_dict().items()
          if not k.startswith("sub_block1.") and not k.endswith("num_batches_tracked")}
    torch.save({"model": {"model." + k: v for k, v in sd.items()}}, tmp_path / "rb.pt")
    model = import_state_dict(tmp_path / "rb.pt", arch="wrn10_1")
    x = torch.rand(BATCH, 3, 32, 32)
    torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
    del sd["block2.layer.0.conv1.weight"]
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="broken.pt.*1 missing keys"):
        import_state_dict(tmp_path / "broken.pt", arch="wrn10_1")


def test_import_errors(tmp_path):
    torch.save({"note": "no tensors here"}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="empty.pt.*has no state_dict"):
        import_state_dict(tmp_path / "empty.pt", arch="small_cnn")
    torch.save({"net": build_model("small_cnn").state_dict(), "obj": NeedsCode()}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="code.pt.*needs code"):
        import_state_dict(tmp_path / "code.pt", arch="small_cnn")
    torch.save(build_model("small_cnn").state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(CheckpointError, match="cnn.pt.*does not fit small_resnet"):
        import_state_dict(tmp_path / "cnn.pt", arch="small_resnet")
    with pytest.raises(CheckpointError, match="unknown arch 'vgg'"):
        import_state_dict(tmp_path / "cnn.pt", arch="vgg")


@pytest.mark.parametrize("name", list(MODELS))
def test_fold_batchnorm_keeps_the_function_and_removes_the_post_conv_norms(name, runs):
    model = copy.deepcopy(runs(name)["model"])
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial statistics, so a wrong fold would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    folded = fold_batchnorm(model)
    x = torch.rand(BATCH, 3, 32, 32)
    with torch.no_grad():
        (z, f), (zf, ff) = model.forward_features(x), folded.forward_features(x)
    assert torch.allclose(zf, z, rtol=1e-4, atol=1e-4 * z.abs().max().item())
    assert torch.allclose(ff, f, rtol=1e-4, atol=1e-4 * f.abs().max().item())
    norms = lambda m: sum(isinstance(k, torch.nn.BatchNorm2d) for k in m.modules())  # noqa: E731
    assert norms(folded) < norms(model)
    if name in (*SMALL, "resnet18", "mobilenetv2"):  # post-activation: every BN follows a conv
        assert norms(folded) == 0
    assert not any(p.requires_grad for p in folded.parameters()) and not folded.training
    assert any(p.requires_grad for p in model.parameters())  # the original is left alone


def test_fold_batchnorm_returns_the_plain_copy_when_a_block_does_not_chain_conv_and_norm():
    class Parallel(torch.nn.Module):  # conv and bn registered in a row, but both read x
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3)
            self.bn.running_mean.fill_(0.5)

        def forward(self, x):
            return (self.conv(x) * self.bn(x)).mean(dim=(2, 3))

    model = Parallel()  # in train mode: the fold must not switch the caller's module
    with pytest.warns(RuntimeWarning, match="BatchNorms are kept"):
        folded = fold_batchnorm(model)
    assert isinstance(folded.bn, torch.nn.BatchNorm2d) and model.training
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(folded(x), model.eval()(x))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_takes_one_channel_images_through_its_stem(name):
    """A grayscale data set's images go through every model as one channel, normalised inside
    the model with its one mean and std; three-channel images are refused."""
    model = build_model(name, channels=1, mean=(0.3,), std=(0.4,)).eval()
    assert model.in_channels == 1
    stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.in_channels == 1
    x = torch.rand(BATCH, 1, 28, 28)
    with torch.no_grad():
        assert model(x).shape == (BATCH, 10)
        torch.testing.assert_close(model.normalize(x), (x - 0.3) / 0.4)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.rand(BATCH, 3, 28, 28))


def test_a_checkpoint_records_its_channels_and_an_older_one_loads_as_rgb(tmp_path):
    gray = build_model("small_cnn", channels=1, mean=(0.3,), std=(0.4,)).eval()
    save_checkpoint(tmp_path / "gray.pt", gray)
    assert read_checkpoint(tmp_path / "gray.pt")["channels"] == 1
    assert load_checkpoint(tmp_path / "gray.pt").in_channels == 1
    rgb = build_model("small_cnn").eval()
    save_checkpoint(tmp_path / "rgb.pt", rgb)
    raw = read_checkpoint(tmp_path / "rgb.pt")
    del raw["channels"]  # as written before grayscale data sets
    torch.save(raw, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt")
    x = torch.rand(BATCH, 3, 16, 16)
    assert old.in_channels == 3
    torch.testing.assert_close(old(x), rgb(x), rtol=0, atol=0)
