"""Every search-space file loads; every kind of mistake in one is a clear SpaceError."""

import pytest
import yaml

from orchestrator.spaces import SpaceError, available, load_space


@pytest.mark.parametrize("name", available())
def test_every_space_file_loads(name):
    space = load_space(name)
    assert space.metric in ("val/pgd_acc", "val/clean_acc") and space.mode in ("max", "min")
    if space.kind == "tune":
        for key, value in space.paper_point().items():
            assert space.search[key].contains(value)
    else:
        assert space.variants and space.seeds


def test_named_spaces_exist_with_the_papers_values_inside():
    assert {"gamma_alpha", "lambda_c", "full", "ablation"} <= set(available())
    point = load_space("full").paper_point()
    assert point == {"alpha": 1.0, "lam": 0.1, "gamma": 1000.0, "c": 2.0, "lr": 0.1}
    assert [v["method"] for v in load_space("ablation").variants] == [
        "kd", "kd_align", "sm", "sm_align"]


def test_unknown_space_lists_the_available_ones():
    with pytest.raises(SpaceError, match="available: .*gamma_alpha"):
        load_space("nope")


GOOD = {"kind": "tune", "metric": "val/pgd_acc", "mode": "max", "base": {"method": "smaraad_pp"},
        "search": {"gamma": {"distribution": "loguniform", "low": 0.1, "high": 3000.0}}}


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, "unknown key 'colour'"),
    ({"kind": "random"}, "kind"),
    ({"metric": "test/pgd20_acc"}, "metric"),
    ({"search": {"gamma": {"distribution": "gaussian", "low": 1, "high": 2}}}, "distribution"),
    ({"search": {"gamma": {"distribution": "uniform", "low": 5.0, "high": 5.0}}}, "inverted"),
    ({"search": {"gamma": {"distribution": "uniform", "low": 5.0, "high": 1.0}}}, "inverted"),
    ({"search": {"gamma": {"distribution": "loguniform", "low": 0.0, "high": 1.0}}}, "low > 0"),
    ({"search": {"gamma": {"distribution": "choice", "values": []}}}, "non-empty"),
    ({"search": {"warp": {"distribution": "uniform", "low": 0, "high": 1}}}, "not a parameter"),
    ({"search": {"gamma": {"distribution": "uniform", "low": 0.1, "high": 10}}}, "paper's value"),
    ({"search": {"alpha": {"distribution": "uniform", "low": 0.5, "high": 2.0}}}, "alpha"),
    ({"search": {}}, "at least one"),
    ({"asha": {"grace": 2}}, "asha"),
])
def test_invalid_space_files_give_one_clear_error(tmp_path, change, message):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({**GOOD, **change}))
    with pytest.raises(SpaceError, match=message):
        load_space(str(f))


def test_invalid_yaml_and_bad_grids(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("kind: [tune\n")
    with pytest.raises(SpaceError, match="invalid YAML"):
        load_space(str(f))
    g = tmp_path / "grid.yaml"
    g.write_text(yaml.safe_dump({"kind": "grid", "grid": {"method": ["kd", "nonsense"]}}))
    with pytest.raises(SpaceError, match="nonsense"):
        load_space(str(g))
    g.write_text(yaml.safe_dump({"kind": "grid", "grid": {"method": ["kd"]}, "seeds": [-1]}))
    with pytest.raises(SpaceError, match="seeds"):
        load_space(str(g))


def test_a_space_follows_the_data_set_it_runs_on(tmp_path):
    """`datasets:` keys replace the space's own on that data set only; each is validated."""
    f = tmp_path / "g.yaml"
    raw = {"kind": "grid", "grid": {"method": ["kd", "sm"]}, "seeds": [0], "eval_n": 300,
           "datasets": {"fashion_mnist": {"seeds": [0, 1, 2], "eval_n": 2000,
                                          "base": {"epochs": 3}}}}
    f.write_text(yaml.safe_dump(raw))
    plain, fashion = load_space(str(f)), load_space(str(f), "fashion_mnist")
    assert (plain.seeds, plain.eval_n, plain.base) == ((0,), 300, {})
    assert (fashion.seeds, fashion.eval_n, fashion.base) == ((0, 1, 2), 2000, {"epochs": 3})
    assert load_space(str(f), "cifar10").seeds == (0,)
    for overlays, message in (({"mnist": {}}, "unknown data set 'mnist'"),
                              ({"fashion_mnist": {"kind": "tune"}}, "cannot replace 'kind'"),
                              ({"fashion_mnist": {"seeds": [-1]}}, "datasets.fashion_mnist: seeds")):
        f.write_text(yaml.safe_dump({**raw, "datasets": overlays}))
        with pytest.raises(SpaceError, match=message):
            load_space(str(f))


@pytest.mark.parametrize("name", ["ablation", "methods", "teachers"])
def test_the_three_campaigns_load_on_fashion_mnist(name):
    space = load_space(name, "fashion_mnist")
    assert len(space.seeds) >= 3 and space.variants
    if name == "teachers":
        assert len(space.teachers) >= 4 and {"kd", "ard", "rslad", "adaad", "smaraad",
                                              "smaraad_pp"} <= set(space.grid["method"])
        eps = [t.fields.get("eps_255") for t in space.teachers.values() if t.method == "pgd_at"]
        assert max(e or 25.5 for e in eps) == 25.5  # the strongest at Fashion-MNIST's eps 0.1
