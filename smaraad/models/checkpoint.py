"""Saving, loading and importing model weights, safely and with errors a person can act on.

Our checkpoints are plain dicts {'arch', 'num_classes', 'channels', 'mean', 'std', 'center',
'state_dict', 'config', **extra} ('channels', the images' channels, is absent from checkpoints
written before grayscale data sets: those load as 3, RGB) holding only tensors and plain Python types, so they always load with
``torch.load(weights_only=True)``: a checkpoint never runs code.  Writes are atomic (temp
file in the same directory, then ``os.replace``), so a crash never leaves half a file where
a resumed run or an evaluation would find it.  Every loading failure is one CheckpointError
that names the file and says what was expected.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from smaraad.errors import UserError

from . import MODELS, build_model
from .common import CamNet

REQUIRED_KEYS = ("arch", "num_classes", "mean", "std", "center", "state_dict")
RESERVED_KEYS = REQUIRED_KEYS + ("config", "channels")
# Containers that third-party files wrap their state_dict in, tried in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "net", "model")
# Prefixes left by nn.DataParallel / DDP ('module.') and by RobustBench-style wrappers ('model.').
STRIP_PREFIXES = ("module.", "model.")
# kuangliu/pytorch-cifar calls the classifier 'linear'; ours is 'fc' (the CAM weights).
FC_ALIASES = {"resnet18": "linear.", "mobilenetv2": "linear."}
_PLAIN_SCALARS = (type(None), bool, int, float, str)


class CheckpointError(UserError):
    """A checkpoint file that cannot become the requested model; the message names the file.

    A UserError (hence a ValueError): command lines print it as one line, not a traceback.
    """


def save_checkpoint(path: str | os.PathLike, model: CamNet, *, config: dict | None = None,
                    extra: dict | None = None) -> None:
    """Atomically write ``model`` (weights + everything needed to rebuild it) to ``path``.

    ``config`` and ``extra`` must hold only plain types and tensors (checked here, so the
    error comes at save time rather than when a later ``weights_only`` load refuses the file).
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"extra may not use the reserved keys {clash}; reserved: {list(RESERVED_KEYS)}")
    _check_plain(config or {}, "config")
    _check_plain(extra, "extra")
    mean, std = model.normalize.stats()
    payload = {
        "arch": model.arch,
        "num_classes": model.num_classes,
        "channels": model.in_channels,
        "mean": mean,
        "std": std,
        "center": model.normalize.center,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": dict(config or {}),
        **extra,
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is meant to be shared
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict (tensors on CPU), for callers that need 'config' or extras."""
    obj = _safe_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(obj).__name__}, expected a dict "
                              f"with keys {list(REQUIRED_KEYS)}")
    return obj


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> CamNet:
    """Rebuild the model saved by ``save_checkpoint``: strict weights, on ``map_location``, eval mode."""
    ckpt = read_checkpoint(path)
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint '{path}' lacks keys {missing}; expected a SmaraAD checkpoint "
                              f"with keys {list(REQUIRED_KEYS)} (use import_state_dict for third-party files)")
    arch = ckpt["arch"]
    if not isinstance(arch, str) or arch not in MODELS:
        raise CheckpointError(f"checkpoint '{path}' is for unknown arch {arch!r}; allowed: {sorted(MODELS)}")
    try:
        model = build_model(arch, num_classes=ckpt["num_classes"], channels=ckpt.get("channels", 3),
                            mean=ckpt["mean"], std=ckpt["std"], center=ckpt["center"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint '{path}' has invalid metadata: {err}") from err
    _load_strict(model, ckpt["state_dict"], path)
    return model.to(map_location).eval()


def import_state_dict(path: str | os.PathLike, *, arch: str, num_classes: int = 10,
                      channels: int = 3, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None, center: bool = False) -> CamNet:
    """Load third-party CIFAR weights into our ``arch``; returns the model in eval mode.

    Accepted layouts: a raw state_dict (TRADES), or a dict wrapping it under 'state_dict',
    'model_state_dict', 'net' or 'model' (RobustBench-style), with any 'module.' / 'model.'
    prefixes.  Loading is strict except for keys a file may legitimately lack: BatchNorm's
    'num_batches_tracked' (older PyTorch) and a WRN's unused 'sub_block1' (RobustBench omits it).
    Third-party models usually expect raw [0, 1] input, hence the identity mean/std default.
    """
    if arch not in MODELS:
        raise CheckpointError(f"cannot import '{path}': unknown arch {arch!r}; allowed: {sorted(MODELS)}")
    state_dict = _strip_prefixes(_find_state_dict(_safe_load(path), path))
    alias = FC_ALIASES.get(arch)
    if alias is not None:
        state_dict = {("fc." + k[len(alias):] if k.startswith(alias) else k): v for k, v in state_dict.items()}
    model = build_model(arch, num_classes=num_classes, channels=channels, mean=mean, std=std,
                        center=center)
    tolerated = re.compile(r"(^|\.)num_batches_tracked$|^sub_block1\.")
    _load_strict(model, state_dict, path, tolerated_missing=tolerated)
    return model.eval()


def _safe_load(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True; every failure becomes one CheckpointError."""
    file = Path(path)
    if not file.is_file():
        what = "is a directory, not a file" if file.is_dir() else "not found"
        raise CheckpointError(f"checkpoint '{file}' {what}")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError... here
        text = str(err)
        needs_code = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if needs_code:
            raise CheckpointError(
                f"checkpoint '{file}' contains an object of class {needs_code.group(1)} that needs code to "
                f"unpickle, refused under weights_only=True; expected only tensors and plain types") from err
        unpickler = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        first_sentence = text.strip().split(". ")[0].splitlines()[0][:160] if text.strip() else ""
        detail = (unpickler.group(1).strip() if unpickler else first_sentence) or "empty or truncated"
        raise CheckpointError(f"checkpoint '{file}' is corrupt or not a torch file "
                              f"({type(err).__name__}: {detail})") from err


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if _is_tensor_dict(obj.get(key)):
                return dict(obj[key])
        found = sorted(str(k) for k in obj)[:10]
    else:
        found = type(obj).__name__
    raise CheckpointError(f"checkpoint '{path}' has no state_dict: expected a dict of tensors or one under "
                          f"{list(WRAPPER_KEYS)}, found {found}")


def _strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes shared by every key (repeatedly: 'module.model.' happens)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                stripped = True
    return state_dict


def _load_strict(model: nn.Module, state_dict: Any, path: str | os.PathLike,
                 tolerated_missing: re.Pattern | None = None) -> None:
    """Strict load whose error says which keys differ and the first shape that does not fit."""
    target = f"{getattr(model, 'arch', type(model).__name__)} with {getattr(model, 'num_classes', '?')} classes"
    if not _is_tensor_dict(state_dict):
        raise CheckpointError(f"checkpoint '{path}': 'state_dict' is not a dict of tensors (expected {target})")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict
               and not (tolerated_missing is not None and tolerated_missing.search(k))]
    unexpected = [k for k in state_dict if k not in expected]
    problems = []
    bad_shape = next((k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape), None)
    if bad_shape is not None:
        problems.append(f"'{bad_shape}' expected shape {tuple(expected[bad_shape].shape)}, "
                        f"found {tuple(state_dict[bad_shape].shape)}")
    if missing:
        problems.append(f"{len(missing)} missing keys (first: '{missing[0]}')")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: '{unexpected[0]}')")
    if problems:
        raise CheckpointError(f"checkpoint '{path}' does not fit {target}: " + "; ".join(problems))
    full = {k: state_dict.get(k, expected[k]) for k in expected}  # tolerated gaps keep the model's values
    model.load_state_dict(full, strict=True)


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is built only from tensors and plain Python types."""
    if isinstance(value, (_PLAIN_SCALARS, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} must be a str or int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}; checkpoints hold only "
                    "tensors, None, bool, int, float, str, list, tuple and dict (so weights_only loading works)")
