"""Atomic writes: a file appears whole or not at all, so a run killed mid-write loses nothing."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, then rename it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: str | os.PathLike) -> Any:
    """A state saved by `save_torch` (or torch.save), its tensors on the CPU: a run saved on a GPU
    resumes on a machine without one, and one saved on the CPU resumes on a GPU (the trainer moves
    every tensor to its device: load_state_dict copies into the model's and the optimisers'
    tensors). Plain data only (weights_only=True): loading never runs code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_json(path: str | os.PathLike, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")
    atomic_write(path, write)
