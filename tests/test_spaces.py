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
