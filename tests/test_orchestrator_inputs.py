"""Bad input to `tune` and `ablate`: one line on stderr, exit code 2, nothing written."""

import socket

import pytest

from conftest import run_cli
from orchestrator import ablate, tune


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


BAD_TUNE = [
    (["--space", "nope"], "available: "),
    (["--space", "ablation"], "is a grid"),
    (["--num-samples", "0"], "--num-samples"),
    (["--epochs", "many"], "invalid int value"),
    (["--cpus-per-trial", "-1"], "--cpus-per-trial"),
    (["--objectives", "val/pgd_acc"], "--objectives"),
    (["--objectives", "val/pgd_acc,test/aa_acc"], "--objectives"),
    (["--attacks", "clean,deepfool"], "unknown attack"),
    (["--dataset", "mnist"], "dataset"),
    (["--set", "alpha=3"], "alpha"),
    (["--set", "gamma"], "key=value"),
    (["--eval-n", "-5"], "--eval-n"),
    (["--aa-n", "-5"], "--aa-n"),
    (["--resume", "--name", "never-ran"], "no experiment to resume"),
    (["--tracking-uri", "http://127.0.0.1:{port}"], "no MLflow server answers"),
    (["--tracking-uri", "sqlite:////no/such/folder/m.db"], "does not exist"),
    (["--address", "127.0.0.1:{port}"], "no Ray cluster answers"),
    (["--teacher", "missing.pt"], "no such file"),
]


@pytest.mark.parametrize("argv, message", BAD_TUNE)
def test_tune_rejects_bad_input(workdir, capsys, argv, message):
    argv = [a.format(port=closed_port()) for a in argv]
    code, _, err = run_cli(tune.main, argv, capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert list(workdir.iterdir()) == []  # nothing written


BAD_ABLATE = [
    (["--variants", "kd,bogus"], "allowed: kd,kd_align,sm,sm_align"),
    (["--seeds", "one,two"], "--seeds"),
    (["--space", "gamma_alpha"], "is a search space"),
    (["--max-concurrent", "0"], "--max-concurrent"),
]


@pytest.mark.parametrize("argv, message", BAD_ABLATE)
def test_ablate_rejects_bad_input(workdir, capsys, argv, message):
    code, _, err = run_cli(ablate.main, argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert list(workdir.iterdir()) == []


def test_an_invalid_space_file_is_one_error(workdir, capsys):
    bad = workdir / "space.yaml"
    bad.write_text("kind: tune\nsearch: {gamma: {distribution: uniform, low: 5, high: 1}}\n")
    code, _, err = run_cli(tune.main, ["--space", str(bad)], capsys)
    assert code == 2 and "inverted" in err
    assert sorted(p.name for p in workdir.iterdir()) == ["space.yaml"]
