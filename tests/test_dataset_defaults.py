"""Dataset-aware method defaults, and --set in experiments over several methods.

Where a baseline's reference script changes a constant on CIFAR-100 (RSLAD's and MTARD's x10,
AdaAD's batchmean KL), the default follows the data set and the user's value still wins.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import run_cli
from smaraad.config import METHOD_OVERRIDES, ConfigError, TrainConfig, method_keys, preset_config
from smaraad.methods import METHODS, Context

CIFAR100 = {"rslad": {"scale": 10.0}, "mtard": {"scale": 10.0},
            "adaad": {"kl_reduction": "batchmean"}}


@pytest.mark.parametrize("method", sorted(CIFAR100))
def test_cifar100_defaults_follow_the_reference_and_the_user_wins(method):
    (key, value), = CIFAR100[method].items()
    c100 = preset_config({"method": method, "dataset": "cifar100"}).to_flat()
    c10 = preset_config({"method": method, "dataset": "cifar10"}).to_flat()
    default = getattr(METHODS[method].params(), key)
    assert c100[key] == value and c10[key] == default != value
    # the switch stays: the user's value wins over the data set's default
    assert preset_config({"method": method, "dataset": "cifar100", key: default}).to_flat()[key] \
        == default
    # nothing else moves with the data set but the data set itself
    assert {k for k in c100 if c100[k] != c10[k]} == {key, "dataset"}


def test_only_those_methods_change_on_cifar100():
    changed = {m for m in METHODS
               if preset_config({"method": m, "dataset": "cifar100"}).params
               != preset_config({"method": m, "dataset": "cifar10"}).params}
    assert changed == set(CIFAR100)
    for name, spec in METHODS.items():  # every dataset default is a valid value of a real field
        for dataset, values in spec.dataset_defaults.items():
            assert dataset in ("embedded", "cifar10", "cifar100")
            assert set(values) <= method_keys(name)
            spec.make_params(values)


def test_train_command_applies_the_default_and_keeps_set():
    from smaraad.train import config_from_args, parser

    def scale(*argv):
        return config_from_args(parser().parse_args(["--method", "rslad", *argv])).params.scale

    assert scale("--dataset", "cifar100") == 10.0
    assert scale("--dataset", "cifar100", "--set", "scale=1") == 1.0
    assert scale("--dataset", "cifar10") == 1.0


def test_adaad_on_cifar100_is_the_batchmean_kl_100x_the_element_mean():
    """The reference's CIFAR-100 branch divides the summed KL by B, its CIFAR-10 branch by B x C."""
    from smaraad.models import build_model

    torch.manual_seed(0)
    student, teacher = (build_model("small_cnn", num_classes=100).eval() for _ in range(2))
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 100, (4,))

    def loss(cfg: TrainConfig):
        torch.manual_seed(1)
        ctx = Context(student=student, teacher=teacher, params=cfg.params, eps=8 / 255,
                      step=2 / 255, steps=1)
        return METHODS["adaad"].loss(ctx, x, y)["kl_adv"]

    c100 = preset_config({"method": "adaad", "dataset": "cifar100"})
    mean = dataclasses.replace(c100.params, kl_reduction="mean")
    c10_form = dataclasses.replace(c100, params=mean)
    torch.testing.assert_close(loss(c100), 100 * loss(c10_form))


def test_method_overrides_reach_only_their_method():
    over = {METHOD_OVERRIDES: {"rslad": {"scale": 3}}, "dataset": "cifar100"}
    assert preset_config({**over, "method": "rslad"}).params.scale == 3
    assert preset_config({**over, "method": "rslad", "scale": 2}).params.scale == 2  # flat wins
    assert preset_config({**over, "method": "mtard"}).params.scale == 10  # its own default
    with pytest.raises(ConfigError, match=METHOD_OVERRIDES):
        preset_config({METHOD_OVERRIDES: {"rslad": 3}})


# ------------------------------------------------------------------------- --set in experiments
def resolved(tmp_path, *argv):
    from orchestrator.common import common_parser, resolve
    from orchestrator.spaces import load_space

    args = common_parser("test", "").parse_args(
        ["--storage-path", str(tmp_path / "ray"), "--tracking-uri",
         f"sqlite:///{tmp_path / 'mlflow.db'}", *argv])
    space = load_space("methods")
    return space, resolve(args, space, kind="ablate", variants=space.variants, seeds=space.seeds)


def test_set_in_a_methods_grid_reaches_every_method_that_has_the_key(tmp_path):
    from trainables.driver import point_config

    space, r = resolved(tmp_path, "--dataset", "cifar100", "--set", "scale=10",
                        "--set", "alpha=0.5", "--set", "epochs=3")
    _, plain = resolved(tmp_path, "--dataset", "cifar100")
    for v in space.variants:
        cfg, ref = point_config(r.configs, v), point_config(plain.configs, v)
        assert cfg.epochs == 3  # a training key: every trial
        have = {k for k in ("scale", "alpha") if k in method_keys(cfg.method)}
        expect = {**ref.to_flat(), "epochs": 3, **({"scale": 10.0} if "scale" in have else {}),
                  **({"alpha": 0.5} if "alpha" in have else {})}
        assert cfg.to_flat() == expect, cfg.method
    assert {v["method"] for v in space.variants if "scale" in method_keys(v["method"])} \
        == {"rslad", "mtard"}


def test_set_of_a_key_no_method_has_is_one_line(tmp_path, capsys, monkeypatch):
    from orchestrator import ablate, tune

    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(ablate.main, ["--space", "methods", "--set", "nonsense=1",
                                           "--storage-path", str(tmp_path / "ray")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--set nonsense: no method of this experiment has that key" in err
    assert "scale (rslad, mtard)" in err  # who has a key like it
    # a one-method experiment: scale is SmaraAD++'s key nowhere, so it is refused too
    code, out, err = run_cli(tune.main, ["--space", "full", "--set", "scale=10",
                                         "--storage-path", str(tmp_path / "ray")], capsys)
    assert code == 2 and "--set scale: no method of this experiment" in err
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()
