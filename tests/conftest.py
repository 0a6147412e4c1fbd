"""Shared test setup: an isolated teacher cache, and the real command lines run in-process."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Teachers trained by the tests are cached in a session folder, never in ~/.cache; Ray
    workers inherit the variable because it is set before any ray.init."""
    os.environ["SMARAAD_CACHE"] = str(tmp_path_factory.mktemp("smaraad-cache"))
    yield


def run_cli(main, argv, capsys):
    """Run a command's main through smaraad.cli.run; return (exit code, stdout, stderr)."""
    from smaraad.cli import run

    code = run(main, argv)
    out, err = capsys.readouterr()
    return code, out, err
