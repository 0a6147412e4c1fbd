"""`--plan`: the FLOP count of a step against an independent count, and the command's promises
(no data, no teacher, no Ray, nothing written, exit 0; a bad option still exit 2)."""

from __future__ import annotations

import re
import sys

import pytest

from orchestrator import ablate, tune
from orchestrator.spaces import load_space
from smaraad.cost import forward_flops, step_flops
from conftest import run_cli

PAIR = dict(student="small_cnn", teacher="small_resnet", num_classes=10, image_size=16)
K = 2  # attack steps in the unit tests: enough to tell the attack's passes from the outer loss

# Forward-equivalents of one step per image (student, teacher), derived from each method's loss
# at its defaults, with k attack steps: an attack step is a forward and a backward to the input
# (1 + 1); the outer loss's student forward + backward is 1 + 2 (weights and input); a no_grad
# teacher forward is 1. The student's first convolution needs no input gradient in the outer
# backward, so the real count is a little lower: TOLERANCE.
PASSES = {
    "smaraad_pp": lambda k: (2 * k + 6, 2 * k + 1),   # attack through both; x' and x outer terms
    "smaraad": lambda k: (2 * k + 3, 2 * k + 1),
    "adaad": lambda k: (2 * k + 3, 2 * k + 1),         # attack KL on the moving teacher
    "pgd_at": lambda k: (2 * k + 3, 0),
    "trades": lambda k: (2 * k + 1 + 6, 0),            # S(x) target once; CE(x) and KL(x') terms
    "ard": lambda k: (2 * k + 3, 1),                   # T(x) only
    "rslad": lambda k: (2 * k + 6, 2),                 # T(x) for the attack and for the loss
    "iad": lambda k: (2 * k + 6, 2),                   # last epoch: introspection on, T(x) + T(x')
    "mtard": lambda k: (2 * k + 6, 2),                 # T_adv(x') + T_nat(x) (same arch here)
}
TOLERANCE = 0.06


def independent(method: str, k: int, student: str, teacher: str, num_classes: int,
                image_size: int) -> float:
    fs = forward_flops(student, num_classes=num_classes, image_size=image_size)
    ft = forward_flops(teacher, num_classes=num_classes, image_size=image_size)
    a, b = PASSES[method](k)
    return a * fs + b * ft


@pytest.mark.parametrize("method", sorted(PASSES))
def test_step_count_matches_the_forward_equivalents(method):
    got = step_flops(method, PAIR["student"], PAIR["teacher"], num_classes=10, image_size=16,
                     steps=K, epochs=10)
    want = independent(method, K, **PAIR)
    assert want * (1 - TOLERANCE) <= got <= want * 1.001, (got, want)


def test_fake_count_equals_a_real_step_and_extrapolation_is_exact():
    """Fake tensors count what a real CPU step computes; F(0) + k (F(1) - F(0)) is the count of
    the whole attack."""
    kw = dict(num_classes=10, image_size=16, steps=3, epochs=10)
    fake = step_flops("smaraad_pp", "small_cnn", "small_resnet", mode="fake", **kw)
    real = step_flops("smaraad_pp", "small_cnn", "small_resnet", mode="cpu", extrapolate=False,
                      **kw)
    assert fake == real > 0


def test_paper_forward_flops():
    """The forward passes the issue's 3.2e11 estimate is built from, at 32x32."""
    got = {a: forward_flops(a, num_classes=10) / 1e9 for a in ("resnet18", "mobilenetv2")}
    assert got == pytest.approx({"resnet18": 1.111, "mobilenetv2": 0.182}, rel=0.01)


@pytest.fixture
def empty_dirs(tmp_path, monkeypatch):
    data, cache, work = (tmp_path / d for d in ("data", "cache", "work"))
    for d in (data, cache, work):
        d.mkdir()
    monkeypatch.setenv("SMARAAD_DATA", str(data))
    monkeypatch.setenv("SMARAAD_CACHE", str(cache))
    monkeypatch.chdir(work)
    yield data, cache, work
    for d in (data, cache, work):
        assert list(d.iterdir()) == [], f"--plan wrote into {d}"
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized(), "--plan started Ray"


FLOP_LINE = re.compile(r"^step FLOP per image: (\S+) (\d\.\d+e\+\d\d)$", re.M)


@pytest.mark.slow
def test_tune_plan_needs_no_data_no_teacher(empty_dirs, capsys):
    code, out, err = run_cli(tune.main, ["--space", "full", "--dataset", "cifar10", "--student",
                                         "small_cnn", "--teacher-arch", "small_resnet",
                                         "--plan"], capsys)
    assert code == 0, err
    lines = FLOP_LINE.findall(out)
    assert [m for m, _ in lines] == ["smaraad_pp"]
    want = independent("smaraad_pp", 10, "small_cnn", "small_resnet", 10, 32)
    assert want * (1 - TOLERANCE) <= float(lines[0][1]) <= want * 1.01
    assert "trials x epochs: 16 x 200 = 3200" in out
    assert "45000 training images" in out
    for gpu in ("H100 SXM", "A100 SXM", "H200 SXM"):
        assert re.search(rf"^  {gpu}\s+\S+ [hd]\s+\S+ [hd]\s+\S+ [hd]$", out, re.M), out
    assert re.search(r"^CPU step: \S+ s measured", out, re.M)
    assert "teacher:" not in out  # nothing provided, nothing trained


@pytest.mark.slow
def test_ablate_plan_counts_every_method(empty_dirs, capsys):
    code, out, err = run_cli(ablate.main, ["--space", "methods", "--dataset", "cifar100",
                                           "--student", "small_cnn", "--teacher-arch",
                                           "small_resnet", "--seeds", "0", "--epochs", "4",
                                           "--plan"], capsys)
    assert code == 0, err
    counted = dict(FLOP_LINE.findall(out))
    methods = load_space("methods").grid["method"]  # the space's every method, new ones included
    assert set(counted) == set(methods) and {"peeraid", "las_at", "igdm"} <= set(counted)
    assert f"trials x epochs: {len(methods)} x 4 = {4 * len(methods)}" in out
    total = float(re.search(r"^total: (\S+) FLOP", out, re.M).group(1))
    assert total == pytest.approx(sum(map(float, counted.values())) * 45000 * 4, rel=0.01)


def test_plan_with_a_bad_option_is_still_a_usage_error(empty_dirs, capsys):
    code, out, err = run_cli(tune.main, ["--space", "full", "--plan", "--cpus-per-trial", "-1"],
                             capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "--cpus-per-trial" in err
