"""Named search spaces: one YAML file each under search_spaces/, validated strictly on load.

A space is either `kind: tune` (distributions searched by Optuna, early-stopped by ASHA) or
`kind: grid` (every combination of `grid` values times `seeds`, no early stopping: ablations and
method comparisons). Every parameter must be one the trainer knows for the space's method(s), every
range must be non-empty, and the paper's value of each searched parameter must lie inside its range,
because it is the first point evaluated.

A space may name its teachers (`teachers:`, name -> spec: a recipe mapping, a checkpoint path or
robustbench:NAME; smaraad/teacher_specs.py) and vary them like any parameter: the grid (or a
`choice` search) key `teacher` takes those names. It then means the teacher a trial distils from,
not the config's `teacher_arch` (which becomes that teacher's). `teacher_aa_n` sets on how
many validation images each teacher's own AutoAttack accuracy is measured (0 = none); `eval_n`
and `aa_n` size each trial's final evaluation where the command line does not (--eval-n, --aa-n).

`datasets:` maps a data set's name to top-level keys that replace the space's own when it runs on
that data set (`--dataset`, else the base's): a space keeps one meaning across data sets while
its teachers (trained at the data set's eps), budget and evaluation sizes follow the data set.
Every such overlay is validated when the space loads.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smaraad import metrics
from smaraad.config import ConfigError, TrainConfig, load_yaml_mapping
from smaraad.robustbench_teachers import is_zoo_spec
from smaraad.teacher_specs import TEACHER_KEY, parse_teachers

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
TOP_KEYS = {"description", "kind", "metric", "mode", "base", "search", "grid", "seeds", "asha",
            "num_samples", "teachers", "teacher_aa_n", "eval_n", "aa_n", "datasets"}
OVERLAY_KEYS = TOP_KEYS - {"kind", "datasets"}  # what a `datasets:` entry may replace
METRICS = tuple(metrics.VALIDATION)  # what a space can optimise: the trainer's validation metrics


class SpaceError(ConfigError):
    """An unknown space or an invalid space file."""


@dataclass(frozen=True)
class Dist:
    distribution: str
    low: float | None = None
    high: float | None = None
    values: tuple = ()

    def contains(self, value: Any) -> bool:
        if self.distribution == "choice":
            return value in self.values
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Space:
    name: str
    kind: str                       # "tune" or "grid"
    metric: str
    mode: str
    description: str = ""
    base: dict = field(default_factory=dict)     # flat TrainConfig values shared by all trials
    search: dict = field(default_factory=dict)   # name -> Dist (kind: tune)
    grid: dict = field(default_factory=dict)     # name -> list of values (kind: grid)
    seeds: tuple = (0,)
    grace_period: int = 1
    reduction_factor: float = 2.0
    num_samples: int = 8
    teacher: str | None = None      # base's `teacher: robustbench:NAME`, a model-zoo teacher
    teachers: dict = field(default_factory=dict)  # name -> TeacherSpec, in the file's order
    teacher_aa_n: int | None = None               # None: the command's default
    eval_n: int | None = None        # test images per trial's final evaluation (None: the
    aa_n: int | None = None          # command's default), and AutoAttack's share of them

    @property
    def variants(self) -> list[dict]:
        """Every combination of the grid's values (kind: grid)."""
        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*self.grid.values())]

    def paper_point(self) -> dict:
        """The paper's value of each searched parameter: Optuna's first point."""
        flat = _defaults(self.base)
        if self.teachers:  # no paper value for a teacher name: the space's first teacher
            flat[TEACHER_KEY] = next(iter(self.teachers))
        return {k: flat[k] for k in self.search}


def available() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str, dataset: str | None = None) -> Space:
    """Load a space by name (search_spaces/NAME.yaml) or by path, as run on `dataset` (None: the
    space's base data set, else embedded); SpaceError if anything is off."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SPACES_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise SpaceError(f"unknown space {name_or_path!r}; available: {', '.join(available())}")
    try:
        raw = load_yaml_mapping(str(path))
        overlays = _overlays(raw)
        for name, overlay in overlays.items():  # each data set's version must be valid too
            _validate(path.stem, {**raw, **overlay}, where=f"datasets.{name}: ")
        dataset = dataset or (raw.get("base") or {}).get("dataset", "embedded")
        return _validate(path.stem, {**raw, **overlays.get(dataset, {})})
    except ConfigError as exc:
        raise SpaceError(f"space {path.stem!r}: {exc}") from None


def _overlays(raw: dict) -> dict[str, dict]:
    """The space's `datasets:` mapping, popped from `raw`: data set name -> replaced keys."""
    from smaraad.data.registry import DATASETS

    overlays = raw.pop("datasets", None) or {}
    if not isinstance(overlays, dict):
        raise ConfigError("datasets: expected a mapping of data set names to keys to replace")
    for name, overlay in overlays.items():
        if name not in DATASETS:
            raise ConfigError(f"datasets: unknown data set {name!r}; allowed: "
                              f"{', '.join(DATASETS)}")
        bad = set(overlay) - OVERLAY_KEYS if isinstance(overlay, dict) else {"(not a mapping)"}
        if bad:
            raise ConfigError(f"datasets.{name}: cannot replace {sorted(bad)[0]!r}; allowed: "
                              f"{', '.join(sorted(OVERLAY_KEYS))}")
    return overlays


def _validate(name: str, raw: dict, where: str = "") -> Space:
    try:
        return _validate_raw(name, raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None


def _validate_raw(name: str, raw: dict) -> Space:
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(TOP_KEYS))}")
    kind = raw.get("kind")
    if kind not in ("tune", "grid"):
        raise ConfigError(f"kind: {kind!r}; allowed: tune, grid")
    metric, mode = raw.get("metric", "val/pgd_acc"), raw.get("mode", "max")
    if metric not in METRICS:
        raise ConfigError(f"metric: {metric!r}; allowed: {', '.join(METRICS)}")
    if mode not in ("max", "min"):
        raise ConfigError(f"mode: {mode!r}; allowed: max, min")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError("base: expected a mapping of config keys to values")
    teacher = base.get("teacher")
    if is_zoo_spec(teacher):  # a teacher by name, not an architecture to train
        base = {k: v for k, v in base.items() if k != "teacher"}
    _config(base)  # every base key must be valid on its own
    kw: dict[str, Any] = dict(name=name, kind=kind, metric=metric, mode=mode, base=base,
                              teacher=teacher if is_zoo_spec(teacher) else None,
                              description=str(raw.get("description", "")))
    if "teachers" in raw:
        kw["teachers"] = parse_teachers(raw["teachers"])
    for key in ("teacher_aa_n", "eval_n", "aa_n"):  # 0: no teacher AA; all images; all of eval_n
        if key in raw:
            n = raw[key]
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ConfigError(f"{key}: {n!r}; allowed: a whole number >= 0")
            kw[key] = n
    if kind == "tune":
        search = raw.get("search")
        if not isinstance(search, dict) or not search:
            raise ConfigError("search: a tune space needs at least one parameter to search")
        kw["search"] = {k: _dist(k, v) for k, v in search.items()}
        _check_teacher_key(kw.get("teachers", {}), kw["search"].get(TEACHER_KEY), "search")
        _check_known(base, {k: d for k, d in kw["search"].items()
                            if not (k == TEACHER_KEY and kw.get("teachers"))})
        asha = raw.get("asha") or {}
        bad = set(asha) - {"grace_period", "reduction_factor"}
        if bad:
            raise ConfigError(f"asha: unknown key {sorted(bad)[0]!r}; allowed: grace_period, "
                              "reduction_factor")
        kw["grace_period"] = _positive_int("asha.grace_period", asha.get("grace_period", 1))
        kw["reduction_factor"] = float(asha.get("reduction_factor", 2))
        if not kw["reduction_factor"] > 1:
            raise ConfigError("asha.reduction_factor: must be > 1")
        kw["num_samples"] = _positive_int("num_samples", raw.get("num_samples", 8))
        space = Space(**kw)
        for k, v in space.paper_point().items():
            if not space.search[k].contains(v):
                raise ConfigError(f"search.{k}: the paper's value {v} lies outside the range")
        return space
    grid = raw.get("grid")
    if not isinstance(grid, dict) or not grid or any(
            not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError("grid: a grid space needs a mapping of parameters to non-empty lists")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(f"seeds: {seeds!r}; allowed: a non-empty list of whole numbers >= 0")
    teachers = kw.get("teachers", {})
    _check_teacher_key(teachers, grid.get(TEACHER_KEY), "grid")
    space = Space(**kw, grid=grid, seeds=tuple(seeds))
    for variant in space.variants:  # every combination must make a valid config
        _config(base, variant, teachers)
    return space


def _config(base: dict, values: dict | None = None, teachers=()) -> TrainConfig:
    """The one check of a space's values: `values` over its base as a TrainConfig (ConfigError
    names a bad key or value); a `teacher` naming one of its teachers is not a config key."""
    merged = {**base, **(values or {})}
    return TrainConfig.from_flat({k: v for k, v in merged.items()
                                  if not (k == TEACHER_KEY and teachers)})


def _defaults(base: dict) -> dict:
    """The flat defaults (the paper's values) of the base's method."""
    return TrainConfig(method=base.get("method", TrainConfig.method)).to_flat()


def _check_teacher_key(teachers: dict, values, where: str) -> None:
    """With `teachers:`, the key `teacher` must name them; several teachers must be varied."""
    if not teachers:
        return
    if values is None:
        if len(teachers) > 1:
            raise ConfigError(f"teachers: {len(teachers)} teachers but the {where} has no key "
                              f"{TEACHER_KEY!r} naming them; add {TEACHER_KEY}: "
                              f"[{', '.join(teachers)}] or keep one teacher")
        return
    if isinstance(values, Dist):
        if values.distribution != "choice":
            raise ConfigError(f"search.{TEACHER_KEY}: distribution {values.distribution!r}; "
                              "a teacher is searched with choice over the teachers' names")
        values = list(values.values)
    unknown = [v for v in values if v not in teachers]
    if unknown:
        raise ConfigError(f"{where}.{TEACHER_KEY}: unknown teacher {unknown[0]!r}; allowed: "
                          f"{', '.join(teachers)}")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: {value!r}; allowed: a whole number >= 1")
    return value


def _dist(name: str, spec: Any) -> Dist:
    if not isinstance(spec, dict):
        raise ConfigError(f"search.{name}: expected a mapping with 'distribution'")
    kind = spec.get("distribution")
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"search.{name}: distribution {kind!r}; allowed: {', '.join(DISTRIBUTIONS)}")
    allowed = {"distribution", "values"} if kind == "choice" else {"distribution", "low", "high"}
    extra = set(spec) - allowed
    if extra:
        raise ConfigError(f"search.{name}: unknown key {sorted(extra)[0]!r} for {kind}; allowed: "
                          f"{', '.join(sorted(allowed))}")
    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"search.{name}: choice needs a non-empty list of values")
        return Dist(kind, values=tuple(values))
    low, high = spec.get("low"), spec.get("high")
    for bound, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"search.{name}.{bound}: expected a number, got {v!r}")
    if not low < high:
        raise ConfigError(f"search.{name}: empty or inverted range [{low}, {high}]; need low < high")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"search.{name}: loguniform needs low > 0, got {low}")
    if kind == "int" and (int(low) != low or int(high) != high):
        raise ConfigError(f"search.{name}: int bounds must be whole numbers")
    return Dist(kind, float(low), float(high))


def _check_known(base: dict, search: dict) -> None:
    """Each searched parameter must be a key the trainer knows, valid at both ends of its range."""
    method = base.get("method", TrainConfig.method)
    flat = _defaults(base)
    for k, d in search.items():
        if k not in flat:
            raise ConfigError(f"search.{k}: not a parameter of method {method!r}; known: "
                              f"{', '.join(sorted(flat))}")
        ends = d.values if d.distribution == "choice" else (d.low, d.high)
        for v in ends:
            _config(base, {k: int(v) if d.distribution == "int" else v})
