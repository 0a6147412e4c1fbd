"""Robust teachers: trained once with PGD-AT through the same trainer, cached by config.

A student run needs an adversarially trained teacher, and the public AD repositories' checkpoint
links are dead. `provide_teacher` either loads the checkpoint the user names, or trains one with
`pgd_at` (or any teacher-free method, e.g. TRADES) and caches it on disk under a key derived from
the teacher's full config, so every trial and every later run reuses it. The teacher's own
validation accuracy (the paper's Table 2) travels in the checkpoint and is reported with every
student run. `path="robustbench:NAME"` takes a community teacher from RobustBench's model zoo
instead (smaraad/robustbench_teachers.py), with its leaderboard figures and the same validation
accuracy measured here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from smaraad.config import DEFAULT_DATASET, ConfigError, TrainConfig, preset_config
from smaraad.data import registry as data_registry
from smaraad.models import import_state_dict, load_checkpoint, read_checkpoint, save_checkpoint
from smaraad.metrics import is_teacher_key, teacher_figures
from smaraad.paths import cache_root
from smaraad.robustbench_teachers import is_zoo_spec

TEACHER_SEED = 0  # one teacher per data set and recipe, shared by every student seed
TEACHER_METHODS = ("pgd_at", "trades", "natural")  # teacher-free methods that can train one


def cache_dir() -> Path:
    """The teachers' cache: <cache root>/teachers (smaraad.paths.cache_root)."""
    return cache_root() / "teachers"


def teacher_config(student: TrainConfig, *, method: str = "pgd_at", epochs: int | None = None,
                   overrides: dict | None = None) -> TrainConfig:
    """The teacher recipe for a student run: the data set's preset (not the student's epochs, so
    that short student runs share one teacher), the student run's data, split and threat model,
    its `teacher_arch`, a teacher-free method and a fixed seed. `overrides` (flat config
    keys: a teacher spec's eps_255, seed, attack_steps...) are laid over that last."""
    shared = ("dataset", "data_root", "train_size", "val_size", "split_seed", "eps_255", "device",
              "precision", "channels_last", "deterministic")
    values = {k: getattr(student, k) for k in shared}
    values.update(method=method, student=student.teacher_arch, teacher_arch=student.teacher_arch,
                  seed=TEACHER_SEED)
    if epochs is not None:
        values["epochs"] = epochs
    values.update(overrides or {})
    return preset_config(values)


def cache_key(cfg: TrainConfig) -> str:
    """A stable hash of the full teacher config. The device, the memory layout and the choice of
    deterministic CUDA kernels are left out (they change no result beyond the last bits); the
    precision goes in as what it resolves to here (fp32 or bf16), so
    `auto` on a CPU with bf16 and on one without are two teachers, and `auto` and `bf16` one."""
    from smaraad.trainer import training_precision  # the trainer imports models: lazily

    flat = {k: v for k, v in cfg.to_flat().items()
            if k not in {"device", "channels_last", "deterministic"}}
    flat["teacher"] = flat.pop("teacher_arch")  # hashed under its former name: caches stay valid
    flat["precision"] = training_precision(cfg)
    blob = json.dumps(flat, sort_keys=True, default=str).encode()
    return f"{cfg.dataset}-{cfg.student}-{cfg.method}-{hashlib.sha256(blob).hexdigest()[:16]}"


@dataclass
class Teacher:
    model: nn.Module
    path: str                 # where its weights are on disk
    metrics: dict             # its own figures: smaraad.metrics.TEACHER keys
    trained: bool = False     # True when this call trained it


def provide_teacher(student: TrainConfig, *, path: str | None = None, method: str = "pgd_at",
                    epochs: int | None = None, overrides: dict | None = None,
                    log: Callable[[str], None] | None = print,
                    teacher_dir: str | os.PathLike | None = None, download: bool = False,
                    data=None, validate_zoo: bool = True) -> Teacher:
    """Load the teacher at `path`, else the cached one for this config, else train and cache it.

    path="robustbench:NAME" takes RobustBench's NAME for the student's data set (its weights
    under `teacher_dir`, fetched when `download`), evaluated once on the validation split of
    `data` (the student's splits; loaded when None): smaraad.robustbench_teachers. An experiment
    that measures its teachers itself (teacher_specs.provide) passes validate_zoo=False, so a
    zoo teacher is measured once."""
    if method not in TEACHER_METHODS:
        raise ConfigError(f"teacher method {method!r}; allowed: {', '.join(TEACHER_METHODS)}")
    if is_zoo_spec(path):
        return _from_zoo(student, path, teacher_dir=teacher_dir, download=download,
                         data=data if validate_zoo else False, log=log)
    if path:
        return _from_file(path, arch=student.teacher_arch, dataset=student.dataset)
    cfg = teacher_config(student, method=method, epochs=epochs, overrides=overrides)
    file = cache_dir() / f"{cache_key(cfg)}.pt"
    if file.exists():
        if log:
            log(f"teacher: cached {cfg.student} ({cfg.method}) at {file}")
        return _from_file(str(file))
    from smaraad.trainer import fit  # the trainer imports this package's models; keep it lazy

    if log:
        log(f"teacher: training {cfg.student} with {cfg.method} for {cfg.epochs} epochs "
            f"on {cfg.dataset} (cached at {file} for later runs)")
    model, last = fit(cfg, log=(lambda line: log("teacher " + line)) if log else None)
    own = teacher_figures("train", last)
    file.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(str(file), model, config=cfg.to_flat(), extra={"metrics": own})
    return Teacher(model, str(file), own, trained=True)


def teacher_record(spec: str | None, file: str, arch: str) -> dict:
    """How a student checkpoint names its teacher (its extra key "teacher"): the spec it was given
    (robustbench:NAME, or a checkpoint path), the weights file and the architecture, so that
    `recorded_teacher` rebuilds it the way the run read it, zoo teachers included."""
    file = str(Path(file).resolve())  # the run may have named it relative to its folder
    return {"spec": spec or file, "file": file, "arch": arch}


def recorded_teacher(record: dict, dataset: str) -> nn.Module:
    """The teacher a `teacher_record` names (UserError if its file cannot be read)."""
    if is_zoo_spec(record.get("spec")):
        from smaraad import robustbench_teachers as zoo
        return zoo.load(zoo.zoo_name(record["spec"]), dataset, zoo.dir_of(record["file"]))
    return _from_file(record["file"], arch=record.get("arch") or None, dataset=dataset).model


def _from_file(path: str, *, arch: str | None = None, dataset: str = DEFAULT_DATASET) -> Teacher:
    """Our own checkpoint, or third-party weights (TRADES state_dict, {'state_dict': ...} with
    'module.' prefixes, {'net': ...}, RobustBench files) imported into `arch`. Both are read with
    weights_only=True; a file that fits neither is one CheckpointError naming it."""
    raw = read_checkpoint(path)
    if arch is not None and not {"arch", "state_dict", "num_classes"} <= set(raw):
        entry = data_registry.dataset(dataset)
        model = import_state_dict(path, arch=arch, num_classes=entry.classes,
                                  channels=entry.channels)
        return Teacher(model, path, {})
    metrics = {k: float(v) for k, v in (raw.get("metrics") or {}).items()
               if is_teacher_key(k)}
    return Teacher(load_checkpoint(path), path, metrics)


def _from_zoo(student: TrainConfig, spec: str, *, teacher_dir, download: bool, data,
              log: Callable[[str], None] | None) -> Teacher:
    """A RobustBench teacher with its leaderboard figures and its accuracy on our validation
    split (clean and PGD, as `validate` measures a trained teacher), the latter cached per
    weights file and split so a later run does not attack the teacher again; data=False leaves
    the validation out (the caller measures the teacher itself)."""
    from smaraad import robustbench_teachers as zoo
    from smaraad.trainer import load_splits, resolve_device, validate

    name = zoo.zoo_name(spec)
    model = zoo.load(name, student.dataset, teacher_dir, download=download)
    file = zoo.weights_file(name, student.dataset, teacher_dir or zoo.default_dir())
    shared = ("dataset", "data_root", "train_size", "val_size", "split_seed", "eps_255",
              "val_pgd_steps", "val_max")
    stat = file.stat()
    key = json.dumps({"spec": spec, "size": stat.st_size, "mtime": stat.st_mtime_ns,
                      **{k: getattr(student, k) for k in shared}}, sort_keys=True, default=str)
    record = cache_dir() / f"robustbench-{student.dataset}-{name}-" \
        f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if data is False:
        own = {}
    elif record.exists():
        own = json.loads(record.read_text())
    else:
        data = data if data is not None else load_splits(student)
        device = resolve_device(student.device)
        if log:
            log(f"teacher: evaluating {spec} on {len(data.val[1])} validation images "
                f"(clean, PGD-{student.val_pgd_steps})")
        own = teacher_figures("train", validate(model.to(device), data, student, device))
        model.cpu()
        from smaraad.io import save_json
        save_json(record, own)
    if log:
        log(f"teacher: {spec} from {file}")
    return Teacher(model, str(file), {**zoo.leaderboard(name, student.dataset), **own})
