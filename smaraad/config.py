"""Typed, frozen run configuration with the paper's defaults, loaded strictly.

One `TrainConfig` describes one training run. Its fields are the training recipe (Sec. 4.1 of the
paper); the method's own hyperparameters (alpha, lambda, gamma, c, ...) live in the method's params
dataclass (smaraad/methods/) and are carried in `TrainConfig.params`.

Both load from a flat mapping, the shape a Ray trial or a YAML file gives: a key that names a
training field goes to the training config, one that names a field of the method's params goes to
the params, anything else is an error. Every error is a `ConfigError` that names the key and what is
allowed; the command-line entry points turn it into one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from smaraad.data.registry import DATASETS as DATASET_REGISTRY, DEFAULT_DATASET  # noqa: F401
from smaraad.fields import ConfigError, build, check_fields, choice, num  # noqa: F401
from smaraad.methods import METHODS
from smaraad.methods.base import PAPER_LR_MILESTONES
from smaraad.models import MODELS


# ---------------------------------------------------------------------------------------------
# The training recipe (paper Sec. 4.1) -- defaults are the paper's
# ---------------------------------------------------------------------------------------------


DATASETS = tuple(DATASET_REGISTRY)  # smaraad/data/registry.py
PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class TrainConfig:
    method: str = choice("smaraad_pp", tuple(METHODS), "training method (registry name)")
    dataset: str = choice("cifar10", DATASETS, "data set")
    data_root: str = field(default="", metadata=dict(doc="data set folder; '' = $SMARAAD_DATA or "
                                                        "./data (Fashion-MNIST: then Debian's)"))
    train_size: int = num(0, 0, None, doc="cap on training-set images before the validation "
                                          "split (0 = all): quick runs")
    val_size: float = num(0.1, 0, None, lo_open=True,
                          doc="validation hold-out of the training set: fraction < 1 or a count")
    student: str = choice("resnet18", tuple(MODELS), "student (or trained model) architecture")
    teacher_arch: str = choice("wrn34_10", tuple(MODELS), "architecture of a teacher trained for "
                               "this run (a given teacher brings its own)")
    epochs: int = num(200, 1, None, doc="training epochs")
    batch_size: int = num(256, 1, None, doc="images per step")
    lr: float = num(0.1, 0, None, lo_open=True, doc="initial SGD learning rate")
    momentum: float = num(0.9, 0, 1, hi_open=True, doc="SGD momentum")
    weight_decay: float = num(5e-4, 0, None, doc="SGD weight decay")
    lr_milestones: tuple = field(default=PAPER_LR_MILESTONES,
                                 metadata=dict(doc="lr /10 points as fractions of the run "
                                                   "(paper: 115, 160, 185 of 200)"))
    lr_decay: float = num(0.1, 0, 1, lo_open=True, doc="lr factor at each milestone")
    eps_255: float = num(8.0, 0, 255, doc="L_inf budget in 1/255 units (8 = 8/255)")
    step_255: float = num(2.0, 0, 255, lo_open=True, doc="PGD step in 1/255 units")
    attack_steps: int = num(10, 0, None, doc="PGD steps of the training attack (Eq. 8)")
    val_pgd_steps: int = num(10, 1, None, doc="PGD steps for val/pgd_acc")
    val_max: int = num(0, 0, None, doc="cap on validation images per epoch (0 = all)")
    seed: int = num(0, 0, None, doc="seeds init, data order and attacks")
    split_seed: int = num(0, 0, None, doc="seeds the validation split (shared by all seeds and "
                                        "the teacher, so none trains on another's validation)")
    device: str = field(default="auto", metadata=dict(doc="auto, cpu, cuda or cuda:N"))
    precision: str = choice("fp32", PRECISIONS, "training arithmetic: fp32; bf16 autocast; auto = "
                            "bf16 where the device computes it natively (CUDA with bf16, a CPU "
                            "with AMX or AVX512-BF16), else fp32. Evaluation is always fp32")
    channels_last: bool = choice(False, (True, False), "channels_last memory format for training")
    deterministic: bool = choice(False, (True, False), "CUDA: deterministic kernels only (cuDNN "
                                 "and cuBLAS), so a rerun or a resumed run repeats bit for bit; "
                                 "off, cuDNN picks its fastest kernels (cudnn.benchmark) and a "
                                 "resumed CUDA run is not bit-exact. The CPU is deterministic")
    params: Any = field(default=None, metadata=dict(doc="the method's hyperparameters"))

    def __post_init__(self):
        if self.params is None:
            spec = METHODS.get(self.method)
            if spec is not None:
                object.__setattr__(self, "params", spec.make_params({}))
        if self.val_size >= 1 and float(self.val_size) != int(self.val_size):
            raise ConfigError(f"val_size: {self.val_size!r} must be a fraction in (0, 1) or a "
                              "whole count of images")
        if any(not 0 < m <= 1 for m in self.lr_milestones):
            raise ConfigError(f"lr_milestones: {self.lr_milestones!r}; allowed: fractions in (0, 1]")

    # ---- loading -----------------------------------------------------------------------------

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """From a flat mapping (a Ray trial's config, a YAML file): training keys and the method's
        hyperparameter keys side by side, each spelled as a field or as one of its ALIASES."""
        values = canonical(values)
        nested = values.pop("params", None) or {}
        if not isinstance(nested, Mapping):
            raise ConfigError(f"params: expected a mapping, got {nested!r}")
        method = values.get("method", cls.method)
        if method not in METHODS:
            raise ConfigError(f"method: {method!r} is not allowed; allowed: {', '.join(METHODS)}")
        spec = METHODS[method]
        train_keys = {f.name for f in dataclasses.fields(cls)} - {"params"}
        p_keys = {f.name for f in dataclasses.fields(spec.params)}
        p_values = dict(nested)
        t_values = {}
        for k, v in values.items():
            if k not in train_keys and k not in p_keys:
                raise ConfigError(f"unknown key {k!r}; allowed for method {method!r}: "
                                  f"{', '.join(sorted(train_keys | p_keys))}")
            (t_values if k in train_keys else p_values)[k] = v
        return build(cls, t_values, params=spec.make_params(p_values))

    @classmethod
    def from_yaml(cls, path: str) -> "TrainConfig":
        return cls.from_flat(load_yaml_mapping(path))

    def with_values(self, values: Mapping[str, Any]) -> "TrainConfig":
        """A copy with `values` applied (training keys and this method's hyperparameter keys, by
        name or alias), checked like from_flat, without a round trip through a flat mapping:
        how a trial lays its searched or grid values over the experiment's resolved config."""
        values = canonical(values)
        p_keys = {f.name for f in dataclasses.fields(self.params)}
        train_keys = {f.name for f in dataclasses.fields(self)} - {"params", "method"}
        unknown = sorted(set(values) - p_keys - train_keys)
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}; allowed for method {self.method!r}: "
                              f"{', '.join(sorted(train_keys | p_keys))}")
        def keep(obj, given):
            return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
                    if f.name not in given}
        p_values = {k: v for k, v in values.items() if k in p_keys}
        t_values = {k: v for k, v in values.items() if k in train_keys}
        params = build(type(self.params), p_values, **keep(self.params, p_values))
        return build(TrainConfig, t_values, **{**keep(self, t_values), "params": params})

    def replace(self, **changes) -> "TrainConfig":
        """A copy with flat changes applied (validated like from_flat)."""
        return TrainConfig.from_flat({**self.to_flat(), **changes})

    # ---- writing -----------------------------------------------------------------------------

    def to_flat(self) -> dict[str, Any]:
        """Training fields and method hyperparameters side by side (plain types only)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "params"}
        out["lr_milestones"] = list(self.lr_milestones)
        out.update(dataclasses.asdict(self.params))
        return out

    def diff(self) -> dict[str, Any]:
        """The keys whose value differs from the default of this method (what MLflow logs)."""
        base = TrainConfig(method=self.method).to_flat()
        return {k: v for k, v in self.to_flat().items() if base.get(k) != v}


TRAIN_KEYS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) - {"params"}
ALIASES = {"lambda": "lam",            # the paper's name of SmaraAD++'s exponent (a Python keyword)
           "teacher": "teacher_arch"}  # the field's name in configs and checkpoints written before


def canonical_key(key: str) -> str:
    return ALIASES.get(key, key)


def canonical(values: Mapping[str, Any]) -> dict[str, Any]:
    """A flat mapping with every alias replaced by its field's name; ConfigError where both
    spellings are given."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = canonical_key(key)
        if name in out:
            alias = next(a for a, n in ALIASES.items() if n == name)
            raise ConfigError(f"{alias!r} and {name!r} are one key; give it once")
        out[name] = value
    return out


def load_yaml_mapping(path: str) -> dict[str, Any]:
    """Read a YAML mapping with yaml.safe_load; any problem is one ConfigError naming the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; give a YAML file") from None
    except OSError as exc:  # unreadable, or under a file (NotADirectoryError)
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------
# Presets: the paper's setting, and the embedded laptop setting (chosen by measurement)
# ---------------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "embedded": {
        "dataset": "embedded",
        "student": "small_cnn",
        "teacher_arch": "small_resnet",
        "epochs": 8,
        "batch_size": 128,
        "lr": 0.05,
        "val_pgd_steps": 10,
        "val_size": 500,
        "precision": "auto",
        "channels_last": True,
    },
    "fashion_mnist": {
        "dataset": "fashion_mnist",
        "student": "small_cnn",
        "teacher_arch": "small_resnet",
        "train_size": 10_000,
        "val_size": 1000,
        "epochs": 8,
        "batch_size": 128,
        "lr": 0.05,
        "val_pgd_steps": 10,
        "precision": "auto",
        "channels_last": True,
    },
}
"""`embedded`: the synthetic data set with the small models, sized for 2 CPU cores. Its values were
chosen by measurement (README, "Embedded preset"); the method hyperparameters it changes (gamma)
are applied by `preset_config`. It trains in bf16 where the CPU computes bf16 natively (AMX or
AVX512-BF16: about 2x faster there, the same accuracy in the measurements) and in fp32 elsewhere;
every evaluation is fp32.

`fashion_mnist`: Fashion-MNIST at its standard threat model (eps 0.1, the data set's registry
entry), sized for 2 CPU cores; each value, its source and its measured figure are in
docs/fashion_mnist.md. Every preset starts from its data set's threat model (eps, the training
attack's step and steps), then its own values."""

EMBEDDED_METHOD_PARAMS: dict[str, Any] = {"gamma": 1.0, "rho_form": "pearson"}


def preset_for(dataset: str) -> str:
    """The preset of a data set (its registry entry's); "paper" for a name not registered (the
    config then refuses it)."""
    entry = DATASET_REGISTRY.get(dataset)
    return entry.preset if entry else "paper"


def preset_values(dataset: str) -> dict[str, Any]:
    """The data set's threat model overlaid with its preset: the values a run on it starts from."""
    entry = DATASET_REGISTRY.get(dataset)
    return {**(entry.threat_model if entry else {}), **PRESETS[preset_for(dataset)]}


METHOD_OVERRIDES = "method_overrides"
"""A flat key holding {method: {key: value}}: values meant only for the methods that have the key
(`--set scale=10` in an experiment over several methods reaches RSLAD and MTARD, not PGD-AT)."""


def preset_config(values: Mapping[str, Any]) -> TrainConfig:
    """A TrainConfig from user values laid over, from the bottom: the preset of their data set, the
    embedded preset's method params, the method's defaults for the data set
    (`MethodSpec.dataset_defaults`: e.g. RSLAD's scale 10 on CIFAR-100), then the values
    `method_overrides` holds for this method; the user's flat values win over all of them."""
    values = canonical(values)
    overrides = values.pop(METHOD_OVERRIDES, None) or {}
    if not isinstance(overrides, Mapping) or not all(isinstance(v, Mapping)
                                                     for v in overrides.values()):
        raise ConfigError(f"{METHOD_OVERRIDES}: {overrides!r}; expected a mapping of method "
                          "names to mappings of keys to values")
    dataset = values.get("dataset", DEFAULT_DATASET)
    method = values.get("method", TrainConfig.method)
    base = preset_values(dataset)
    spec = METHODS.get(method)
    if spec is not None:
        if preset_for(dataset) == "embedded":
            names = {f.name for f in dataclasses.fields(spec.params)}
            base.update({k: v for k, v in EMBEDDED_METHOD_PARAMS.items() if k in names})
        base.update(spec.dataset_defaults.get(dataset, {}))
    base.update(overrides.get(method, {}))
    return TrainConfig.from_flat({**base, **values})


def method_keys(method: str) -> frozenset[str]:
    """The hyperparameter keys of a registered method (its params dataclass's fields)."""
    return frozenset(f.name for f in dataclasses.fields(METHODS[method].params))
