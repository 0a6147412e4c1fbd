"""Teacher specs: which teacher a student distils from, as data, so an experiment can vary it.

A spec is one of
- a recipe: a small mapping {arch, method, epochs, eps_255, step_255, attack_steps, seed}, every
  key optional (the experiment's teacher_arch, pgd_at, the preset's epochs, the students' eps,
  the preset's attack step and steps, seed 0), trained once by `provide_teacher` and cached under
  its full config;
- a checkpoint path (ours, or third-party weights imported into the experiment's teacher arch);
- a RobustBench model, "robustbench:NAME", which `provide_teacher` loads by that path.

Each has a stable short `label` for tables and figures ("pgd_at eps4", "file:wrn.pt",
"rb:Carmon2019Unlabeled"). A spec is parsed once where it is given (a space's `teachers:`, or
--teacher) and `provide` turns it into a teacher once: provided, then measured by
`teacher_metrics` at the experiment's threat model, whatever it was trained at (a teacher trained
at eps 2/255 is judged at the students' eps, so every teacher sits on one axis of Figure 1).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from smaraad.config import ConfigError, TrainConfig
from smaraad.metrics import TEACHER, attack_names, teacher_figures
from smaraad.robustbench_teachers import PREFIX
from smaraad.teachers import TEACHER_METHODS, Teacher, cache_dir, provide_teacher

RECIPE_KEYS = ("arch", "method", "eps_255", "step_255", "attack_steps", "epochs", "seed")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a grid value, a run name's part, a tag
DEFAULT_NAME = "default"  # the single teacher of an experiment whose space names none
TEACHER_KEY = "teacher"  # in a space with `teachers:`, the grid/search key naming one of them
_SHORT = {"eps_255": "eps", "step_255": "step", "attack_steps": "steps", "epochs": "e",
          "seed": "seed"}


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    kind: str                 # "recipe", "path" or "robustbench"
    recipe: tuple = ()        # sorted (key, value) pairs of the keys given (kind recipe)
    path: str = ""            # the checkpoint, or "robustbench:NAME"

    @property
    def fields(self) -> dict:
        return dict(self.recipe)

    @property
    def method(self) -> str:
        return self.fields.get("method", "pgd_at")

    @property
    def label(self) -> str:
        """Short, stable, readable: the recipe's method and the keys it sets, in a fixed order."""
        if self.kind == "robustbench":
            return "rb:" + self.path[len(PREFIX):]
        if self.kind == "path":
            return "file:" + Path(self.path).name
        f = self.fields
        parts = [self.method] + ([f["arch"]] if "arch" in f else [])
        parts += [f"{_SHORT[k]}{_num(f[k])}" for k in RECIPE_KEYS[2:] if k in f]
        return " ".join(parts)

    @property
    def id(self) -> str:
        """8 hex digits of the spec's content (not its name): equal specs, equal ids."""
        blob = json.dumps([self.kind, list(self.recipe), self.path]).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    def overrides(self) -> dict:
        """The recipe as flat teacher-config keys (arch names the trained network)."""
        out = {k: v for k, v in self.fields.items() if k not in ("arch", "method", "epochs")}
        if "arch" in self.fields:
            out.update(student=self.fields["arch"], teacher_arch=self.fields["arch"])
        return out


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def parse_teacher(name: str, raw: Any) -> TeacherSpec:
    """One spec from YAML or the command line; ConfigError naming what is wrong and what is
    allowed."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"teachers: name {name!r}; allowed: letters, digits, '_', '.', '-' "
                          "(starting with a letter or digit)")
    if isinstance(raw, str):
        if raw.startswith(PREFIX):
            if not raw[len(PREFIX):].strip():
                raise ConfigError(f"teachers.{name}: {raw!r} names no model; expected "
                                  "robustbench:NAME")
            return TeacherSpec(name, "robustbench", path=raw)
        if not raw.strip():
            raise ConfigError(f"teachers.{name}: empty checkpoint path")
        return TeacherSpec(name, "path", path=raw)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"teachers.{name}: {raw!r}; expected a checkpoint path, "
                          "robustbench:NAME or a recipe mapping with keys "
                          f"{', '.join(RECIPE_KEYS)}")
    unknown = sorted(set(raw) - set(RECIPE_KEYS))
    if unknown:
        raise ConfigError(f"teachers.{name}: unknown key {unknown[0]!r}; allowed: "
                          f"{', '.join(RECIPE_KEYS)}")
    method = raw.get("method", "pgd_at")
    if method not in TEACHER_METHODS:
        raise ConfigError(f"teachers.{name}.method: {method!r}; allowed: "
                          f"{', '.join(TEACHER_METHODS)}")
    for key in ("epochs", "attack_steps", "seed"):
        v = raw.get(key, 1)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"teachers.{name}.{key}: {v!r}; expected a whole number")
    for key in ("eps_255", "step_255"):
        if key in raw and (isinstance(raw[key], bool) or not isinstance(raw[key], (int, float))):
            raise ConfigError(f"teachers.{name}.{key}: {raw[key]!r}; expected a number")
    canonical = {**raw, "method": method}  # equal ids with or without the default method
    spec = TeacherSpec(name, "recipe", recipe=tuple(sorted(
        (k, float(v) if k in ("eps_255", "step_255") else v) for k, v in canonical.items())))
    try:  # ranges (epochs >= 1, eps in [0, 255], a known arch) as the trainer checks them
        TrainConfig.from_flat({"method": method, **spec.overrides(),
                               **({"epochs": raw["epochs"]} if "epochs" in raw else {})})
    except ConfigError as exc:
        raise ConfigError(f"teachers.{name}: {exc}") from None
    return spec


def parse_teachers(raw: Any) -> dict[str, TeacherSpec]:
    """A space's `teachers:` mapping (name -> spec), in its order."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("teachers: expected a mapping of names to specs (a recipe mapping, a "
                          "checkpoint path or robustbench:NAME)")
    return {str(k): parse_teacher(str(k), v) for k, v in raw.items()}


def from_options(path: str | None, method: str = "pgd_at") -> TeacherSpec:
    """The single teacher of --teacher PATH / --teacher-method: the one-spec special case."""
    if path:
        return parse_teacher(DEFAULT_NAME, path)
    return parse_teacher(DEFAULT_NAME, {"method": method})


def provide(spec: TeacherSpec, student: TrainConfig, *, data, epochs: int | None = None,
            max_epochs: int | None = None, log: Callable[[str], None] | None = print,
            teacher_dir=None, download: bool = False, measure_n: int = 0,
            measure_aa_n: int = 0) -> Teacher:
    """The spec's teacher (imported, cached or trained now), measured once on data.val at the
    student's eps (`teacher_metrics`; its figures join those it brings). A recipe's own epochs
    win over `epochs` (the experiment's --teacher-epochs); `max_epochs` caps both (smoke runs).
    A robustbench:NAME spec reads its weights under `teacher_dir` (fetched when `download`)."""
    from smaraad.trainer import resolve_device

    if spec.kind != "recipe":
        t = provide_teacher(student, path=spec.path, log=log, teacher_dir=teacher_dir,
                            download=download, data=data, validate_zoo=False)
    else:
        n = spec.fields.get("epochs", epochs)
        if max_epochs is not None:
            n = min(n if n is not None else max_epochs, max_epochs)
        t = provide_teacher(student, method=spec.method, epochs=n, overrides=spec.overrides(),
                            log=log)
    t.metrics = {**t.metrics, **teacher_metrics(
        t, data.val, eps_255=student.eps_255, n=measure_n, aa_n=measure_aa_n,
        device=str(resolve_device(student.device)))}
    return t


def teacher_metrics(teacher: Teacher, val, *, eps_255: float, n: int = 0, aa_n: int = 0,
                    device: str = "cpu") -> dict:
    """The teacher's figures of source "eval" in smaraad.metrics.TEACHER: each one's attack on the
    first n validation images (0 = all) at the experiment's eps, AutoAttack on the first aa_n of
    them (0 = none). Cached as JSON beside the teacher cache, keyed by the weights file's content
    hash, these settings and the figures asked."""
    from smaraad.evaluation import evaluate_suite  # attacks pull in pyautoattack: lazily

    wanted = [m.of for m in TEACHER.values() if m.source == "eval"]
    attacks = tuple(a for a in wanted if a in attack_names() and (a != "aa" or aa_n))
    key = _eval_key(teacher.path, eps_255=eps_255, n=n, aa_n=aa_n, labels=len(val[1]),
                    attacks=attacks)
    file = cache_dir() / "evals" / f"{key}.json"
    if key and file.exists():
        return json.loads(file.read_text())
    r = evaluate_suite(teacher.model.eval(), val, attacks=attacks, eps=eps_255 / 255, n=n,
                       aa_n=aa_n, device=device, seed=0, prefix="val/", check_masking=False)
    found = {a: r[f"val/{a}_acc"] for a in attacks}
    if "aa" in attacks:
        found["aa_n"] = r.get("aa/n", r["n"])
    out = teacher_figures("eval", found)
    if key:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(out))
    return out


def _eval_key(path: str, **settings) -> str:
    """'' for a teacher with no file (nothing to key on: evaluated every time)."""
    if not path or not Path(path).is_file():
        return ""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    blob = json.dumps({"weights": digest, **settings}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
