"""Teachers: trained once and cached by config, or imported from the layouts seen in the wild."""

import argparse

import pytest
import torch

from smaraad.config import preset_config
from smaraad.models import CheckpointError, build_model
from smaraad.teachers import cache_key, provide_teacher, teacher_config

STUDENT = {"method": "kd", "teacher": "small_cnn", "train_size": 300, "val_size": 100}


def test_a_teacher_is_trained_once_then_reused(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SMARAAD_CACHE", str(tmp_path))  # a cache of its own: whatever ran before
    cfg = preset_config(STUDENT)
    first = provide_teacher(cfg, epochs=1, log=print)
    again = provide_teacher(cfg, epochs=1, log=print)
    assert first.trained and not again.trained and first.path == again.path
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
    assert set(first.metrics) == {"teacher/val_clean_acc", "teacher/val_pgd_acc"}
    assert again.metrics == pytest.approx(first.metrics)
    assert "teacher: training" in capsys.readouterr().out


def test_the_cache_key_follows_the_full_teacher_config():
    cfg = preset_config(STUDENT)
    base = cache_key(teacher_config(cfg, epochs=1))
    assert base == cache_key(teacher_config(cfg.replace(seed=7), epochs=1))  # student seed: no
    assert base != cache_key(teacher_config(cfg, epochs=2))
    assert base != cache_key(teacher_config(cfg, method="trades", epochs=1))
    assert base != cache_key(teacher_config(cfg.replace(eps_255=4), epochs=1))


@pytest.mark.parametrize("native", [True, False])
def test_the_cache_key_holds_the_precision_a_teacher_was_trained_in(monkeypatch, native):
    from smaraad import trainer

    monkeypatch.setattr(trainer, "native_bf16", lambda device: native)
    cfg = preset_config(STUDENT)
    key = {p: cache_key(teacher_config(cfg.replace(precision=p), epochs=1))
           for p in ("fp32", "bf16", "auto")}
    assert key["fp32"] != key["bf16"]
    assert key["auto"] == (key["bf16"] if native else key["fp32"])
    assert key["fp32"] == cache_key(teacher_config(cfg.replace(precision="fp32",
                                                               channels_last=False), epochs=1))


@pytest.mark.parametrize("layout", ["raw", "state_dict_module", "net"])
def test_third_party_layouts_import(tmp_path, layout):
    source = build_model("small_cnn").eval()
    sd = source.state_dict()
    obj = {"raw": sd, "net": {"net": sd, "epoch": 3},
           "state_dict_module": {"state_dict": {f"module.{k}": v for k, v in sd.items()}}}[layout]
    path = tmp_path / "teacher.pt"
    torch.save(obj, path)
    t = provide_teacher(preset_config(STUDENT), path=str(path))
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(t.model(x), source(x))


def test_a_mismatched_or_code_carrying_file_is_refused(tmp_path):
    wrong = tmp_path / "wrong.pt"
    torch.save(build_model("small_resnet").state_dict(), wrong)
    with pytest.raises(CheckpointError, match="wrong.pt"):
        provide_teacher(preset_config(STUDENT), path=str(wrong))

    evil = tmp_path / "evil.pt"  # unpickling a Namespace needs code: weights_only refuses it
    torch.save({"state_dict": argparse.Namespace(lr=0.1)}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        provide_teacher(preset_config(STUDENT), path=str(evil))
