"""Strict configuration: every bad value is one error that names the key and what is allowed."""

import re

import pytest

from smaraad.config import ConfigError, TrainConfig, preset_config


def test_defaults_are_the_papers():
    cfg = TrainConfig.from_flat({"method": "smaraad_pp"})
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.epochs) == (
        0.1, 0.9, 5e-4, 256, 200)
    assert (cfg.eps_255, cfg.step_255, cfg.attack_steps) == (8, 2, 10)
    p = cfg.params
    assert (p.alpha, p.lam, p.gamma, p.c) == (1.0, 0.1, 1000.0, 2.0)
    from smaraad.trainer import milestones
    assert milestones(cfg) == [115, 160, 185]
    assert milestones(cfg.replace(epochs=20)) == [12, 16, 18]


def test_short_runs_keep_every_lr_decay():
    """Milestones that round to the same epoch both apply (3 epochs: 1.7, 2.4 -> epoch 2)."""
    from smaraad.trainer import milestones
    cfg = TrainConfig.from_flat({"method": "kd", "epochs": 3})
    assert milestones(cfg) == [2, 2, 3]
    import torch
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones(cfg), gamma=0.1)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.001])


def test_flat_dict_routes_keys_to_the_method_params():
    cfg = TrainConfig.from_flat({"method": "smaraad_pp", "alpha": 0.5, "lambda": 0.3,
                                 "gamma": 10, "lr": "5e-2"})
    assert cfg.params.alpha == 0.5 and cfg.params.lam == 0.3 and cfg.params.gamma == 10.0
    assert cfg.lr == 0.05
    assert cfg.diff() == {"alpha": 0.5, "lam": 0.3, "gamma": 10.0, "lr": 0.05}


def test_yaml_loading(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("method: smaraad\nalpha: 0.9\nweight_decay: 2e-4\n")
    cfg = TrainConfig.from_yaml(str(f))
    assert cfg.params.alpha == 0.9 and cfg.weight_decay == 2e-4
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        TrainConfig.from_yaml(str(bad))
    with pytest.raises(ConfigError, match="no such file"):
        TrainConfig.from_yaml(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("values, key, allowed", [
    ({"method": "smaraad", "alpha": 1.5}, "alpha", r"\[0, 1\]"),
    ({"method": "smaraad_pp", "lambda": 0.0}, "lam", r"\(0, 1\]"),
    ({"method": "smaraad_pp", "lambda": 1.2}, "lam", r"\(0, 1\]"),
    ({"method": "smaraad", "gamma": 0}, "gamma", r"\(0, inf\]"),
    ({"method": "smaraad", "c": 0.5}, "c", r"\[1, inf\]"),
    ({"eps_255": -1}, "eps_255", r"\[0, 255\]"),
    ({"student": "vgg"}, "student", "resnet18"),
    ({"method": "bogus"}, "method", "smaraad_pp"),
    ({"dataset": "mnist"}, "dataset", "cifar10"),
    ({"epochs": 2.5}, "epochs", "whole number"),
    ({"lr": "fast"}, "lr", "number"),
    ({"channels_last": "yes"}, "channels_last", "true or false"),
    ({"precision": "fp16"}, "precision", "bf16"),
    ({"colour": "red"}, "colour", "alpha"),
    ({"method": "pgd_at", "alpha": 0.5}, "alpha", "allowed for method 'pgd_at'"),
    ({"method": "smaraad", "cam_norm": "zscore"}, "cam_norm", "minmax"),
])
def test_bad_values_name_the_key_and_what_is_allowed(values, key, allowed):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_flat(values)
    message = str(info.value)
    assert key in message
    assert re.search(allowed, message), message


def test_configs_are_frozen():
    cfg = TrainConfig.from_flat({})
    with pytest.raises(Exception):
        cfg.lr = 1.0  # type: ignore[misc]


def test_embedded_preset_keeps_user_values_on_top():
    cfg = preset_config({"method": "smaraad", "epochs": 3})
    assert cfg.dataset == "embedded" and cfg.student == "small_cnn" and cfg.epochs == 3
    assert cfg.params.gamma == 1.0  # the embedded preset's measured gamma
    assert preset_config({"method": "smaraad", "gamma": 50}).params.gamma == 50
    paper = preset_config({"dataset": "cifar10", "method": "smaraad"})
    assert paper.params.gamma == 1000.0 and paper.student == "resnet18"


def test_a_config_written_with_the_former_teacher_key_still_loads():
    old = preset_config({"method": "kd"}).to_flat()
    old["teacher"] = old.pop("teacher_arch")  # how configs and checkpoints spelled it before
    assert TrainConfig.from_flat(old) == preset_config({"method": "kd"})
    assert TrainConfig.from_flat({"teacher": "small_cnn"}).teacher_arch == "small_cnn"
    with pytest.raises(ConfigError, match="'teacher' and 'teacher_arch' are one key"):
        TrainConfig.from_flat({"teacher": "small_cnn", "teacher_arch": "small_cnn"})


def test_with_values_lays_a_point_over_a_resolved_config_like_the_preset_does():
    point = {"gamma": 28.6, "lambda": 0.2, "seed": 3, "epochs": 2}
    template = preset_config({"method": "smaraad_pp"})
    assert template.with_values(point) == preset_config({"method": "smaraad_pp", **point})
    with pytest.raises(ConfigError, match="gamma"):
        template.with_values({"gamma": -1})
    with pytest.raises(ConfigError, match="unknown key 'scale'"):
        template.with_values({"scale": 10})
