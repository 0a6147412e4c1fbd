"""Dataset-aware method defaults, checked against the table in docs/baselines.md, and --set in
experiments over several methods.

The table "Defaults that follow the data set" is the record of each method's constants per data
set, with the reference file and line; these tests parse it and hold the registry to it, so a
default that drifts from its reference (or a data-set default nobody documented) fails here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from smaraad.config import METHOD_OVERRIDES, ConfigError, TrainConfig, method_keys, preset_config
from smaraad.methods import METHODS, Context

DOC = Path(__file__).resolve().parents[1] / "docs" / "baselines.md"
COLUMNS = {"CIFAR-10": "cifar10", "CIFAR-100": "cifar100", "embedded": "embedded"}


def markdown_table(header_start: str) -> list[dict[str, str]]:
    """The rows of the docs table whose header row starts with `header_start`, as dicts keyed by
    the header's cells."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    header = cells(lines[start])
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, cells(line))))
    return rows


def parse_value(text: str):
    """A table cell as a value: `a..b` (whole numbers, inclusive) as a tuple of floats, `a/b` as
    a float, numbers, true/false, else the word."""
    text = text.strip("`")
    if m := re.fullmatch(r"(\d+)\.\.(\d+)", text):
        return tuple(float(v) for v in range(int(m[1]), int(m[2]) + 1))
    if m := re.fullmatch(r"(\d+)/(\d+)", text):
        return int(m[1]) / int(m[2])
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        return text


def same(registry, table) -> bool:
    if isinstance(table, float) and not isinstance(registry, bool):
        return isinstance(registry, (int, float)) and math.isclose(registry, table, rel_tol=1e-12)
    return registry == table


def defaults_table() -> list[tuple[str, str, dict[str, object]]]:
    """(method, key, {data set: value}) for every method and key of the table."""
    out = []
    for row in markdown_table("| method | key |"):
        for method in re.findall(r"`([a-z_]+)`", row["method"]):
            key = row["key"].strip("`")
            out.append((method, key, {d: parse_value(row[c]) for c, d in COLUMNS.items()}))
    return out


TABLE = defaults_table()
CHANGED = {(m, k): v for m, k, v in TABLE if v["cifar10"] != v["cifar100"]}


def params(method: str, dataset: str):
    return preset_config({"method": method, "dataset": dataset}).params


def test_the_table_covers_every_method_and_cites_a_source():
    assert {m for m, _, _ in TABLE} == set(METHODS)
    for row in markdown_table("| method | key |"):
        assert row["source (repository, file:line)"], row


@pytest.mark.parametrize("method,key,values", TABLE, ids=[f"{m}.{k}" for m, k, _ in TABLE])
def test_the_registry_holds_the_tables_value_on_every_data_set(method, key, values):
    if key == "-":  # a method without hyperparameters
        assert not dataclasses.fields(METHODS[method].params)
        return
    for dataset, value in values.items():
        got = getattr(params(method, dataset), key)
        assert same(got, value), f"{method}.{key} on {dataset}: registry {got!r}, table {value!r}"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_nothing_changes_with_the_data_set_unless_the_table_says_so(method):
    documented = {k for m, k, _ in TABLE if m == method}
    base = params(method, "cifar10")
    for dataset in ("cifar100", "embedded"):
        other = params(method, dataset)
        moved = {f.name for f in dataclasses.fields(base)
                 if getattr(base, f.name) != getattr(other, f.name)}
        assert moved <= documented, f"{method} on {dataset}: {sorted(moved - documented)} " \
                                    "change without a row in docs/baselines.md"


@pytest.mark.parametrize("method,key", sorted(CHANGED), ids=[f"{m}.{k}" for m, k in CHANGED])
def test_the_users_value_wins_over_the_data_sets_default(method, key):
    c10 = CHANGED[(method, key)]["cifar10"]
    user = preset_config({"method": method, "dataset": "cifar100", key: c10}).params
    assert same(getattr(user, key), c10)


def test_every_dataset_default_is_a_valid_value_of_a_real_field():
    from smaraad.config import DATASETS

    for name, spec in METHODS.items():
        for dataset, values in spec.dataset_defaults.items():
            assert dataset in DATASETS
            assert set(values) <= method_keys(name)
            spec.make_params(values)


def test_las_at_action_spaces_are_the_tables():
    from smaraad.methods.las_at import ACTION_SPACES

    rows = markdown_table("| action space |")
    assert {r["action space"].strip("`") for r in rows} == set(ACTION_SPACES)
    for r in rows:
        p = METHODS["las_at"].make_params({"action_space": r["action space"].strip("`")})
        assert p.choices() == tuple(parse_value(r[c]) for c in
                                    ("eps (1/255)", "steps", "step size (1/255)"))
    # a list set by the user replaces that list only
    p = METHODS["las_at"].make_params({"action_space": "argparse_cifar100", "steps_choices": [2]})
    assert p.choices()[1] == (2.0,) and p.choices()[0] == parse_value(rows[3]["eps (1/255)"])


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
    from trainables.points import point_config

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
