"""The training loop and the single-run command."""

import json

import pytest
import torch

from conftest import run_cli
from smaraad import train, trainer
from smaraad.config import preset_config
from smaraad.data import load_data
from smaraad.models import build_model, load_checkpoint, save_checkpoint
from smaraad.trainer import BestState, fit, load_splits

TINY = {"epochs": 2, "train_size": 400, "val_size": 100, "batch_size": 100, "attack_steps": 1,
        "val_pgd_steps": 2}


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_model("small_cnn", center=True).eval()


def test_every_epoch_reports_the_documented_metrics(teacher):
    cfg = preset_config({"method": "smaraad_pp", **TINY})
    seen = []
    fit(cfg, teacher=teacher, report=lambda m, s: seen.append((m, s)), log=None)
    assert [m["epoch"] for m, _ in seen] == [1, 2]
    metrics, state = seen[-1]
    for key in ("epoch", "lr", "train/loss", "val/clean_acc", "val/pgd_acc",
                "train/loss_guide_sm_adv", "train/loss_guide_align_adv", "train/loss_self_ce"):
        assert key in metrics, key
    assert 0 <= metrics["val/pgd_acc"] <= metrics["val/clean_acc"] + 0.1 <= 1.1
    terms = sum(v for k, v in metrics.items() if k.startswith("train/loss_"))
    assert metrics["train/loss"] == pytest.approx(terms, rel=1e-5)
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "config"} <= set(state)


def test_resuming_from_the_reported_state_continues_the_same_run(teacher, tmp_path):
    cfg = preset_config({"method": "smaraad", **TINY})
    straight, _ = fit(cfg, teacher=teacher, log=None)
    # the state goes through disk the way checkpoints do, loaded with weights_only=True
    fit(cfg, teacher=teacher, log=None,
        report=lambda m, s: torch.save(s, tmp_path / "state.pt") if m["epoch"] == 1 else None)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed, _ = fit(cfg, teacher=teacher, resume=state, log=None)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_best_state_keeps_the_highest_validation_epoch_and_ties_go_later():
    model = build_model("small_cnn")
    best = BestState()
    kept = []
    for epoch, score in enumerate([0.30, 0.50, 0.40, 0.50, 0.20], start=1):
        with torch.no_grad():
            model.fc.bias.fill_(epoch)  # each epoch's weights are recognisable
        kept.append(best.offer(epoch, {"val/pgd_acc": score}, model))
    assert kept == [True, True, False, True, False]
    assert (best.epoch, best.score) == (4, 0.50)  # the tie at 0.50: the later epoch
    assert torch.all(best.model["fc.bias"] == 4) and torch.all(model.fc.bias == 5)
    assert torch.all(best.model_like(model).fc.bias == 4)
    assert BestState().model_like(model) is None  # nothing validated yet


def test_fit_keeps_the_best_epoch_and_a_resumed_run_keeps_it_too(teacher, tmp_path):
    cfg = preset_config({"method": "kd", **TINY, "epochs": 3})
    seen, best = [], BestState()
    fit(cfg, teacher=teacher, log=None, best=best, report=lambda m, s: (
        seen.append((m["val/pgd_acc"], {k: v.clone() for k, v in s["model"].items()})),
        torch.save(s, tmp_path / f"state{m['epoch']}.pt")))
    scores = [score for score, _ in seen]
    expected = max(range(3), key=lambda i: (scores[i], i))  # highest, the later of ties
    assert (best.epoch, best.score) == (expected + 1, scores[expected])
    for k, v in seen[expected][1].items():
        assert torch.equal(best.model[k], v), k
    # resumed after epoch 2 (through disk, weights_only): the best of epochs 1-2 is not forgotten
    resumed = BestState()
    fit(cfg, teacher=teacher, log=None, best=resumed,
        resume=torch.load(tmp_path / "state2.pt", weights_only=True))
    assert (resumed.epoch, resumed.score) == (best.epoch, best.score)
    for k, v in best.model.items():
        assert torch.equal(resumed.model[k], v), k


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_is_bf16_exactly_where_the_hardware_has_it(teacher, monkeypatch, native):
    def weights(precision):
        cfg = preset_config({"method": "smaraad", **TINY, "epochs": 1, "precision": precision,
                             "channels_last": False})
        return torch.cat([p.flatten() for p in fit(cfg, teacher=teacher, log=None)[0].parameters()])

    monkeypatch.setattr(trainer, "native_bf16", lambda device: native)
    fp32, bf16, auto = weights("fp32"), weights("bf16"), weights("auto")
    assert not torch.equal(fp32, bf16)  # bf16 autocast really changed the arithmetic
    assert torch.equal(auto, bf16 if native else fp32)


def test_channels_last_training_matches_the_default_layout(teacher):
    def weights(channels_last):
        cfg = preset_config({"method": "kd", **TINY, "epochs": 1, "precision": "fp32",
                             "channels_last": channels_last})
        return torch.cat([p.flatten() for p in fit(cfg, teacher=teacher, log=None)[0].parameters()])

    assert torch.allclose(weights(True), weights(False), atol=1e-4)


def test_a_teacher_with_another_class_count_is_refused():
    cfg = preset_config({"method": "kd", **TINY})
    with pytest.raises(ValueError, match="classes"):
        fit(cfg, teacher=build_model("small_cnn", num_classes=5), log=None)


def test_validation_split_is_held_out_of_training():
    cfg = preset_config({"method": "pgd_at", **TINY})
    data = load_splits(cfg)
    full = load_data("embedded", n_train=400, val_size=100, seed=cfg.split_seed)
    assert torch.equal(data.val[0], full.val[0])
    train_rows = {bytes(x.numpy()) for x in data.train[0]}
    assert not any(bytes(x.numpy()) in train_rows for x in data.val[0])


def test_train_command_writes_metrics_and_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "teacher"
    code, stdout, err = run_cli(train.main, [
        "--method", "pgd_at", "--epochs", "1", "--out", str(out), "--attacks", "clean,pgd20",
        *sum((["--set", f"{k}={v}"] for k, v in TINY.items() if k != "epochs"), [])], capsys)
    assert code == 0, err
    assert "epoch   1/1" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"val/clean_acc", "val/pgd_acc", "train/loss_ce_adv", "test/clean_acc",
            "test/pgd20_acc"} <= set(metrics)
    model = load_checkpoint(out / "checkpoint.pt")
    assert not model.training and model.arch == "small_cnn"
    assert load_checkpoint(out / "best.pt").arch == "small_cnn"  # the best-val weights beside it
    assert metrics["best"] == {"epoch": 1, "metric": "val/pgd_acc", "score": metrics["val/pgd_acc"]}
    # the best weights are scored as a trial scores them; with one epoch they are the last ones
    assert metrics["test/best_epoch"] == 1
    assert (metrics["test/best_clean_acc"], metrics["test/best_pgd20_acc"]) == (
        metrics["test/clean_acc"], metrics["test/pgd20_acc"])

    student = tmp_path / "student"
    code, stdout, err = run_cli(train.main, [
        "--method", "smaraad_pp", "--epochs", "1", "--teacher", str(out / "checkpoint.pt"),
        "--out", str(student), "--attacks", "clean,aa", "--eval-n", "12", "--aa-n", "3",
        *sum((["--set", f"{k}={v}"] for k, v in TINY.items() if k != "epochs"), [])], capsys)
    assert code == 0, err
    assert "test (n = 12, AutoAttack on the first 3)" in stdout
    metrics = json.loads((student / "metrics.json").read_text())
    assert (metrics["n"], metrics["aa/n"]) == (12, 3) and "aa/clean_acc" in metrics
    for term in ("guide_const", "guide_sm_adv", "guide_align_adv", "self_rho", "self_ce"):
        assert f"train/loss_{term}" in metrics
    assert metrics["teacher_path"] == str(out / "checkpoint.pt")


@pytest.mark.parametrize("argv, message", [
    (["--set", "alpha=2"], "alpha"),
    (["--method", "nope"], "method"),
    (["--set", "lambda=0"], "lam"),
    (["--set", "gamma=-1"], "gamma"),
    (["--set", "c=0.5"], "c"),
    (["--set", "eps_255=-2"], "eps_255"),
    (["--student", "vgg11"], "student"),
    (["--dataset", "imagenet"], "dataset"),
    (["--attacks", "clean,deepfool"], "unknown attack"),
    (["--teacher", "missing.pt"], "no such file"),
])
def test_bad_configs_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code, _, err = run_cli(train.main, [*argv, "--out", str(out)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_corrupt_teacher_file_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(train.main, ["--teacher", str(bad), "--out", str(tmp_path / "o")],
                           capsys)
    assert code == 2 and "teacher.pt" in err and "Traceback" not in err
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(wrong, build_model("small_cnn", num_classes=3))
    code, _, err = run_cli(train.main, ["--teacher", str(wrong), "--out", str(tmp_path / "o"),
                                        "--epochs", "1"], capsys)
    assert code == 2 and "classes" in err
