"""Paths a user gives on a command line, checked before anything is written.

Each check raises UsageError (one line, exit 2) naming the option, the path and what is wrong:
a folder that is a file or lies under one, a folder that cannot be written, a file that is a
folder or is missing. Every command (train, evaluate, tune, ablate, report) calls these on its
paths first, so that a bad path fails in a second with nothing created, not after minutes of
training or Ray's start-up with a traceback. Nothing here creates anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from smaraad.cli import UsageError


def cache_root() -> Path:
    """$SMARAAD_CACHE, or ~/.cache/smaraad: the root of every cache (trained teachers, their
    evaluations, RobustBench weights)."""
    return Path(os.environ.get("SMARAAD_CACHE") or Path.home() / ".cache" / "smaraad")


def default_tracking_uri() -> str:
    """The commands' MLflow store when --tracking-uri is not given: mlflow.db in the working
    directory, as an absolute SQLite URI so every trial's directory agrees."""
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def fail_fast_tracking(uri: str) -> None:
    """An MLflow server (http(s) URI) that stops answering fails a call in seconds instead of
    MLflow's default minutes of retries; the user's own settings of the two variables win."""
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _deepest_folder(path: str | os.PathLike, option: str, *, of_file: bool = False) -> Path:
    """The deepest part of `path` (of its folder where `of_file`) that exists, which must be a
    folder: a file there or above is refused (pathlib's exists() is False under a file)."""
    target = Path(path).expanduser().absolute()
    start = target.parent if of_file else target
    found = next((p for p in (start, *start.parents) if p.exists()), Path(start.anchor))
    if not found.is_dir():
        where = "is a file" if found == target else f"lies under the file {found}"
        raise UsageError(f"{option} {path}: {where}, not a folder")
    return found


def _writable(found: Path, path: str | os.PathLike, option: str) -> None:
    if not os.access(found, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: folder {found} is not writable; give a folder "
                         "you can write to")


def writable_dir(path: str | os.PathLike, option: str) -> Path:
    """`path` (absolute) as a folder that exists and can be written, or can be created: every
    part that exists is a folder, and the deepest one can be written."""
    _writable(_deepest_folder(path, option), path, option)
    return Path(path).expanduser().absolute()


def writable_file(path: str | os.PathLike, option: str, *, parent_must_exist: bool = False) -> Path:
    """`path` (absolute) as a file that can be written: not a folder, its folder writable or
    creatable (or existing, where `parent_must_exist`: SQLite creates no folders)."""
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name")
    found = _deepest_folder(path, option, of_file=True)
    if parent_must_exist and found != target.parent:
        raise UsageError(f"{option} {path}: folder {target.parent} does not exist")
    _writable(found, path, option)
    return target


def existing_file(path: str | os.PathLike, option: str) -> Path:
    """`path` as a file that exists (a checkpoint, a YAML file): not missing, not a folder."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file")
    if not target.is_file():
        _deepest_folder(path, option, of_file=True)  # "lies under the file ..." where it does
        raise UsageError(f"{option} {path}: no such file")
    return target


def folder_or_absent(path: str | os.PathLike, option: str) -> Path:
    """`path` (absolute) as a folder to read from, which may not exist yet (a data root that a
    download fills): only a file at or above it is refused."""
    _deepest_folder(path, option)
    return Path(path).expanduser().absolute()
