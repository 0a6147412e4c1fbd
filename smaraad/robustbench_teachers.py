"""Teachers from RobustBench's model zoo by name: `--teacher robustbench:NAME`.

The `robustbench` package (an extra: pip install -e ".[robustbench]") owns the names, the
architectures (its WideResNet, DMWideResNet, ResNet-18, ...), the cache layout
`<teacher dir>/<dataset>/<threat model>/<NAME>.pt` and the downloader; this module only checks
the request, loads through `robustbench.utils.load_model`, and wraps the network as a
HookedCamNet so Eq. 6 reads its last feature map and classifier weights (its own normalisation
stays inside it).

Safety: robustbench's own `torch.load` passes no `weights_only`. Before it runs, every file is
read here with torch.load(weights_only=True) (smaraad.models.read_checkpoint): a file that needs
code to unpickle is refused with one error, so robustbench's load only ever sees tensors and
plain types (and on torch >= 2.6 its load defaults to weights_only=True as well). The file is
thus read twice; one swapped between the two reads is not guarded against.

The data set is the run's (cifar10 or cifar100); the threat model is THREAT_MODEL (the
paper's L_inf, 8/255). Leaderboard figures come from robustbench_leaderboard.json, extracted
from RobustBench's model_info (the PyPI package ships none).
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import warnings
from pathlib import Path

from torch import nn

from smaraad import metrics
from smaraad.errors import UserError
from smaraad.models import HookedCamNet, read_checkpoint
from smaraad.paths import cache_root

PREFIX = "robustbench:"
THREAT_MODEL = "Linf"
ZOO_CLASSES = {"cifar10": 10, "cifar100": 100}
INPUT_SIZE = 32  # RobustBench's CIFAR nets pool their last map with a fixed 8x8 (or 4x4) window
INSTALL = 'pip install -e ".[robustbench]"'
LEADERBOARD = Path(__file__).with_name("robustbench_leaderboard.json")


class ZooError(UserError):
    """A `robustbench:NAME` teacher that cannot be provided; the message says the way out."""


def is_zoo_spec(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def zoo_name(spec: str) -> str:
    name = spec[len(PREFIX):].strip()
    if not name:
        raise ZooError(f"--teacher {spec!r}: expected robustbench:NAME, e.g. "
                       "robustbench:Chen2021LTD_WRN34_20 (docs/teachers.md)")
    return name


def default_dir() -> Path:
    """<cache root>/robustbench (smaraad.paths.cache_root)."""
    return cache_root() / "robustbench"


def weights_file(name: str, dataset: str, teacher_dir, threat_model: str = THREAT_MODEL) -> Path:
    """Where robustbench's load_model looks for (and downloads) NAME's weights."""
    return Path(teacher_dir) / dataset / threat_model / f"{name}.pt"


def dir_of(file) -> Path:
    """The teacher folder holding a weights file in robustbench's layout (`weights_file`'s
    inverse)."""
    return Path(file).parents[2]


def import_robustbench():
    """Import robustbench (lazily: the core needs it only for these teachers).

    robustbench 1.1.1 imports `autoattack`, the module name of AutoAttack's GitHub install,
    while the dependency it declares, pyautoattack, ships the same code as `pyautoattack`; where
    no `autoattack` is importable the one is registered under the other's name. Its import-time
    warnings (pkg_resources, torch.jit) are silenced."""
    try:
        import autoattack  # noqa: F401
    except ImportError:
        try:
            import pyautoattack
            import pyautoattack.state
        except ImportError:
            pass
        else:
            sys.modules.setdefault("autoattack", pyautoattack)
            sys.modules.setdefault("autoattack.state", pyautoattack.state)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import robustbench.utils as rb_utils
            from robustbench.model_zoo import model_dicts
    except ImportError as err:
        raise ZooError(f"robustbench teachers need the robustbench package ({err}); install it "
                       f"with {INSTALL}") from None
    return rb_utils, model_dicts


def zoo_entry(name: str, dataset: str, threat_model: str = THREAT_MODEL) -> dict:
    """NAME's entry in robustbench's zoo ({'model': constructor, 'gdrive_id': ...}), checked."""
    if dataset not in ZOO_CLASSES:
        raise ZooError(f"robustbench:{name}: RobustBench's models are trained on "
                       f"{' or '.join(ZOO_CLASSES)}; --dataset is {dataset!r}")
    _, zoo = import_robustbench()
    by_name = {(d.value, t.value): models for d, per in zoo.items() for t, models in per.items()}
    models = by_name[(dataset, threat_model)]
    if name not in models:
        other = [f"{d}/{t}" for (d, t), m in by_name.items() if name in m]
        close = difflib.get_close_matches(name, list(models), n=5, cutoff=0.6)
        raise ZooError(f"robustbench:{name}: not a {dataset} {threat_model} entry of RobustBench's "
                       "model zoo" + (f" (it is one of {', '.join(other)})" if other else "")
                       + f"; close names: {', '.join(close) or 'none'} (docs/teachers.md)")
    entry = models[name]
    if isinstance(entry.get("gdrive_id"), list):
        raise ZooError(f"robustbench:{name}: an ensemble of networks has no single feature map "
                       "for Eq. 6; choose a single-network entry (docs/teachers.md)")
    if entry.get("gdrive_id") is None:
        raise ZooError(f"robustbench:{name}: robustbench serves it through timm's hub, not the "
                       "--teacher-dir cache; choose another entry (docs/teachers.md)")
    return entry


def check(spec: str, dataset: str, teacher_dir=None, download: bool = False) -> Path:
    """Everything knowable before a run starts: the name, the data set, the file (or --download)."""
    name = zoo_name(spec)
    zoo_entry(name, dataset)
    file = weights_file(name, dataset, teacher_dir or default_dir())
    if not file.is_file() and not download:
        raise ZooError(f"robustbench:{name}: no weights at {file}; pass --download to fetch them "
                       "with robustbench's downloader, or place the file there (--teacher-dir "
                       "sets the folder: <dir>/<dataset>/Linf/<NAME>.pt)")
    return file


def load(name: str, dataset: str, teacher_dir=None, *, download: bool = False,
         threat_model: str = THREAT_MODEL) -> HookedCamNet:
    """NAME's trained network through robustbench's own loader, wrapped for Eq. 6, eval mode."""
    rb_utils, _ = import_robustbench()
    entry = zoo_entry(name, dataset, threat_model)
    teacher_dir = Path(teacher_dir or default_dir())
    file = weights_file(name, dataset, teacher_dir, threat_model)
    if not file.is_file():
        check(PREFIX + name, dataset, teacher_dir, download)
        _download(entry["gdrive_id"], file, rb_utils)
    read_checkpoint(file)  # weights_only=True: refuses a file that would run code
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = rb_utils.load_model(name, model_dir=str(teacher_dir), dataset=dataset,
                                      threat_model=threat_model)
    except (RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ZooError(f"robustbench:{name}: {file} does not fit its architecture "
                       f"({first})") from None
    return wrap(net, name, dataset, threat_model)


def rebuild(source: tuple, state_dict: dict) -> HookedCamNet:
    """The teacher again from plain data, e.g. in a Ray trial: robustbench's architecture for
    source = ("robustbench", NAME, dataset, threat model), then these weights (no file, no net)."""
    _, name, dataset, threat_model = source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = zoo_entry(name, dataset, threat_model)["model"]()
    model = wrap(net, name, dataset, threat_model)
    model.load_state_dict(state_dict)
    return model.eval()


def wrap(net: nn.Module, name: str, dataset: str, threat_model: str = THREAT_MODEL) -> HookedCamNet:
    model = HookedCamNet(net, arch=PREFIX + name, input_size=INPUT_SIZE,
                         source=("robustbench", name, dataset, threat_model))
    if model.num_classes != ZOO_CLASSES[dataset]:
        raise ZooError(f"robustbench:{name}: it has {model.num_classes} classes, {dataset} has "
                       f"{ZOO_CLASSES[dataset]}")
    return model


def leaderboard(name: str, dataset: str) -> dict:
    """The TEACHER figures of source "leaderboard" (fractions) where RobustBench lists NAME."""
    row = json.loads(LEADERBOARD.read_text()).get(dataset, {}).get(name) or {}
    return metrics.teacher_figures("leaderboard", {k: v / 100 for k, v in row.items()
                                                   if isinstance(v, (int, float))})


def _download(gdrive_id: str, file: Path, rb_utils) -> None:
    """robustbench's downloader into FILE.part, renamed into place only when complete."""
    file.parent.mkdir(parents=True, exist_ok=True)
    part = file.with_name(file.name + ".part")
    try:
        rb_utils.download_gdrive_new(gdrive_id, part)
        if not part.is_file() or part.stat().st_size == 0:
            raise OSError("nothing was downloaded")
        os.replace(part, file)
    except Exception as err:  # gdown raises its own errors, requests' and OSError
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ZooError(f"could not download {file.stem} into {file} ({first}); place the file "
                       "there by hand") from None
    finally:
        part.unlink(missing_ok=True)
