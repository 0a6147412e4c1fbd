"""The robustness suite: keys, cam distance on the PGD-20 examples, determinism, sanity flags, CLI."""

import json
import subprocess
import sys

import pytest
import torch
from test_attacks import ConstantModel, held_out, natural_model, one_thread  # noqa: F401

from smaraad.attacks import pgd
from smaraad.cli import run
from smaraad.evaluate import main
from smaraad.evaluation import ATTACKS, cam_distance, evaluate_best, evaluate_suite
from smaraad.models import build_model, save_checkpoint
from smaraad.sanity import SanityWarning, sanity_flags, tolerance

EPS = 8 / 255


def small_resnet(seed: int = 1):
    torch.manual_seed(seed)
    return build_model("small_resnet", num_classes=10).eval()


def test_suite_reports_every_key_and_cam_dist_on_the_same_pgd20_examples():
    model, (x, y) = natural_model(), held_out()
    teacher, source = small_resnet(), build_model("small_cnn", num_classes=10)
    r = evaluate_suite(model, (x, y), n=24, teacher=teacher, source=source, batch_size=32)
    for name in ATTACKS:
        assert 0.0 <= r[f"test/{name}_acc"] <= 1.0 and r[f"time/{name}_s"] >= 0.0
    assert r["test/clean_acc"] > 0.9 and r["test/pgd20_acc"] <= 0.1 and r["test/aa_acc"] <= 0.1
    assert {"blackbox/pgd20_acc", "blackbox/cw_acc", "masking/pgd20_acc", "masking/pgd50_acc",
            "test/cam_dist"} <= set(r)
    assert (r["n"], r["seed"], r["masking/n"]) == (24, 0, 24) and isinstance(r["flags"], list)
    # the suite seeds torch before PGD-20; one batch of 24 draws the same random start here
    torch.manual_seed(0)
    xf = x[:24].float() / 255
    x_adv = pgd(model, xf, y[:24], eps=EPS, step=EPS / 4, steps=20)
    expected = cam_distance(model, teacher, x_adv, y[:24]).mean().item()
    assert r["test/cam_dist"] == pytest.approx(expected, rel=1e-5)
    assert cam_distance(model, teacher, xf, y[:24]).mean().item() != pytest.approx(expected)


def test_suite_is_deterministic_and_leaves_the_callers_rng_alone():
    model, data = natural_model(), held_out()
    kw = dict(attacks=("clean", "fgsm", "pgd20", "cw"), n=64, eps=4 / 255, prefix="val/",
              teacher=small_resnet())
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = evaluate_suite(model, data, seed=5, **kw)
    assert torch.equal(torch.get_rng_state(), before)
    second = evaluate_suite(model, data, seed=5, **kw)
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert strip(first) == strip(second)
    assert "val/pgd20_acc" in first and "val/cam_dist" in first and "test/clean_acc" not in first


def test_constant_model_keeps_its_accuracy_under_every_attack_and_aa_flags_zero_gradients():
    """Standard AutoAttack runs every sub-attack on every image here (none is ever fooled), so
    n is tiny; its zero-gradient warnings come back as flags."""
    x, y = held_out()
    with pytest.warns(SanityWarning, match="zero gradient"):
        r = evaluate_suite(ConstantModel(), (x, y), n=4, check_masking=False)
    accs = {r[f"test/{name}_acc"] for name in ATTACKS}
    assert len(accs) == 1 and 0 < accs.pop() < 1
    assert any(f.startswith("autoattack: ") for f in r["flags"])


def test_aa_n_runs_autoattack_on_a_prefix_and_reports_the_others_on_that_prefix():
    model, data = natural_model(), held_out()
    kw = dict(attacks=("clean", "pgd20", "aa"), n=40, aa_version="custom",
              aa_attacks=("apgd-ce",), check_masking=False)
    full, sub = evaluate_suite(model, data, **kw), evaluate_suite(model, data, aa_n=12, **kw)
    assert "aa/n" not in full and (sub["n"], sub["aa/n"]) == (40, 12)
    # the cheap attacks still see all 40 images; AA and the subset numbers see the first 12
    assert sub["test/clean_acc"] == full["test/clean_acc"]
    assert sub["test/pgd20_acc"] == full["test/pgd20_acc"]
    alone = evaluate_suite(model, (data[0][:12], data[1][:12]), **kw)
    assert sub["test/aa_acc"] == alone["test/aa_acc"]
    assert sub["aa/clean_acc"] == alone["test/clean_acc"]
    assert sub["aa/pgd20_acc"] == alone["test/pgd20_acc"]


def test_flags_compare_aa_on_its_own_subset():
    # AA on 100 of 1000 images: 0.48 is below PGD-20 on the same 100 (0.50), although above
    # PGD-20 on all 1000 (0.30) by more than the noise of 1000 images
    r = {"n": 1000, "test/pgd20_acc": 0.30, "test/aa_acc": 0.48, "aa/n": 100,
         "aa/pgd20_acc": 0.50}
    assert sanity_flags(r) == []
    flags = sanity_flags({**r, "aa/pgd20_acc": 0.30})
    assert len(flags) == 1 and "(n=100)" in flags[0]
    # without PGD-20 on the subset there is nothing to compare AA with
    assert sanity_flags({k: v for k, v in r.items() if k != "aa/pgd20_acc"}) == []


@pytest.mark.parametrize("kw, match", [(dict(attacks=("clean", "pgd10")), "allowed: clean"),
                                       (dict(n=-1), "n and aa_n must be"),
                                       (dict(aa_n=-2), "n and aa_n must be"),
                                       (dict(cam_class="max"), "allowed: label"),
                                       (dict(aa_version="fast"), "allowed: standard")])
def test_suite_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        evaluate_suite(ConstantModel(), held_out(), **kw)


# ---------------------------------------------------------------------------------------------
# Sanity flags on constructed numbers
# ---------------------------------------------------------------------------------------------

CONSISTENT = {"n": 1000, "test/clean_acc": 0.85, "test/fgsm_acc": 0.60, "test/pgd20_acc": 0.52,
              "test/cw_acc": 0.50, "test/aa_acc": 0.48, "blackbox/pgd20_acc": 0.70,
              "blackbox/cw_acc": 0.71, "masking/pgd20_acc": 0.52, "masking/pgd50_acc": 0.51,
              "masking/n": 256}


def test_flags_stay_quiet_on_consistent_numbers_and_within_noise():
    assert sanity_flags(CONSISTENT) == []
    noisy = {**CONSISTENT, "test/aa_acc": 0.50 + tolerance(0.5, 1000) * 0.9}  # AA a hair above CW
    assert sanity_flags(noisy) == []


@pytest.mark.parametrize("changes, words", [
    ({"test/aa_acc": 0.56}, ["aa accuracy 0.5600 is above pgd20", "above cw"]),
    ({"test/pgd20_acc": 0.65}, ["pgd20 accuracy 0.6500 is above fgsm"]),
    ({"test/fgsm_acc": 0.90}, ["fgsm accuracy 0.9000 is above clean"]),
    ({"blackbox/pgd20_acc": 0.40}, ["black-box pgd20 accuracy 0.4000 is below white-box"]),
    ({"masking/pgd50_acc": 0.70}, ["rises with more PGD steps"]),
])
def test_flags_fire_on_inconsistent_numbers(changes, words):
    flags = sanity_flags({**CONSISTENT, **changes})
    assert len(flags) == len(words)
    for flag, word in zip(flags, words):
        assert word in flag


def test_flag_tolerance_shrinks_with_n():
    r = {"n": 50, "test/pgd20_acc": 0.50, "test/aa_acc": 0.58}
    assert sanity_flags(r) == []  # 8 points is within the noise of 50 images
    assert len(sanity_flags({**r, "n": 5000})) == 1


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(root / "teacher.pt", small_resnet())
    config = {"dataset": "embedded", "val_size": 500.0, "split_seed": 0, "eps_255": 8.0,
              "teacher_path": str(root / "teacher.pt")}
    save_checkpoint(root / "student.pt", natural_model(), config=config)
    save_checkpoint(root / "source.pt", build_model("small_cnn", num_classes=10))
    (root / "corrupt.pt").write_bytes(b"not a torch file")
    return root


def test_cli_writes_every_key(checkpoints, tmp_path, capsys):
    out = tmp_path / "eval.json"
    argv = ["--checkpoint", str(checkpoints / "student.pt"), "--n", "16", "--source",
            str(checkpoints / "source.pt"), "--device", "cpu", "--aa-version", "apgd-ce",
            "--out", str(out)]
    assert run(main, argv) == 0
    r = json.loads(out.read_text())
    keys = {f"test/{a}_acc" for a in ATTACKS} | {"test/cam_dist", "blackbox/pgd20_acc",
                                                  "blackbox/cw_acc", "n", "seed", "flags"}
    assert keys <= set(r) and r["n"] == 16 and r["dataset"] == "embedded"
    assert r["teacher"] == str(checkpoints / "teacher.pt")  # from the checkpoint's config
    printed = capsys.readouterr().out
    assert "test/aa_acc" in printed and "test/cam_dist" in printed and "wrote" in printed

    sub = tmp_path / "sub.json"
    assert run(main, [*argv[:-1], str(sub), "--aa-n", "5", "--attacks", "clean,pgd20,aa"]) == 0
    r = json.loads(sub.read_text())
    assert (r["n"], r["aa/n"]) == (16, 5) and {"aa/clean_acc", "aa/pgd20_acc"} <= set(r)
    assert "on the first 5" in capsys.readouterr().out

    val = tmp_path / "val.json"
    assert run(main, [*argv[:-1], str(val), "--split", "val", "--attacks", "clean",
                      "--teacher", "none"]) == 0
    r = json.loads(val.read_text())
    assert "val/clean_acc" in r and "val/cam_dist" not in r


def test_split_val_is_the_trainers_validation_set_also_for_capped_runs():
    """A run with train_size holds its validation images out of the capped set: --split val must
    rebuild exactly those, not a split of the full set that overlaps the run's training images."""
    from smaraad.config import preset_config
    from smaraad.evaluate import _splits
    from smaraad.trainer import load_splits

    cfg = preset_config({"method": "kd", "train_size": 800, "val_size": 100})
    held = load_splits(cfg)
    rebuilt = _splits("embedded", cfg.to_flat(), None)
    assert torch.equal(rebuilt.val[0], held.val[0]) and torch.equal(rebuilt.val[1], held.val[1])


@pytest.mark.parametrize("args, words", [
    (["--checkpoint", "{ckpt}/missing.pt"], "not found"),
    (["--checkpoint", "{ckpt}/corrupt.pt"], "corrupt"),
    (["--checkpoint", "{ckpt}/student.pt", "--attacks", "clean,pgd7"], "allowed: clean, fgsm"),
    (["--checkpoint", "{ckpt}/student.pt", "--n", "-3"], "--n must be >= 0"),
    (["--checkpoint", "{ckpt}/student.pt", "--aa-n", "-1"], "--aa-n must be >= 0"),
    (["--checkpoint", "{ckpt}/student.pt", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--checkpoint", "{ckpt}/student.pt", "--dataset", "mnist"], "invalid choice"),
    (["--checkpoint", "{ckpt}/student.pt", "--dataset", "cifar10", "--data-root", "{tmp}"],
     "not found"),
    (["--checkpoint", "{ckpt}/student.pt", "--source", "{ckpt}/missing.pt"], "--source"),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(args, words, checkpoints, tmp_path,
                                                              capsys):
    out = tmp_path / "eval.json"
    argv = [a.format(ckpt=checkpoints, tmp=tmp_path) for a in args] + ["--out", str(out)]
    assert run(main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err
    assert not out.exists()


def test_cli_as_a_process_exits_2_on_a_missing_checkpoint(tmp_path):
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "smaraad.evaluate", "--checkpoint",
                           str(tmp_path / "none.pt"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and not out.exists()
    assert proc.stderr.count("\n") == 1


def test_the_best_weights_are_scored_unless_they_are_the_last_ones():
    """evaluate_best scores the best-on-validation weights with clean and PGD-20 on the same
    images; when the best epoch is the last the weights are the same, so the last scores are taken
    (the test's fake ones prove no attack ran)."""
    model, (x, y) = natural_model(), held_out()
    data = (x[:64], y[:64])
    fake = {"test/clean_acc": 0.123, "test/pgd20_acc": 0.045}
    same = evaluate_best(model, 5, data, eps=8 / 255, last=fake, last_epoch=5)
    assert same == {"test/best_clean_acc": 0.123, "test/best_pgd20_acc": 0.045,
                    "test/best_epoch": 5}
    scored = evaluate_best(model, 3, data, eps=8 / 255, last=fake, last_epoch=5)
    direct = evaluate_suite(model, data, attacks=("clean", "pgd20"), eps=8 / 255,
                            check_masking=False)
    assert scored["test/best_clean_acc"] == direct["test/clean_acc"] > 0.9
    assert scored["test/best_pgd20_acc"] == direct["test/pgd20_acc"] < 0.5
    assert scored["test/best_epoch"] == 3
    assert evaluate_best(None, 0, data, eps=8 / 255) == {}
