"""Results in the community's formats: RobustBench `model_info` per trial, a FastAT-style
benchmark per experiment. Both are validated against their JSON Schemas (analysis/schemas/)
before they are written, so a file that exists is a file that conforms.

model_info (one per finished trial): RobustBench's fields (link, name, authors, additional_data,
number_forward_passes, dataset, venue, architecture, eps, clean_acc, reported, autoattack_acc,
footnote, unreliable) plus threat_model and ours: method, teacher, seed, n (test images of the
evaluation), aa_n (the first of those AutoAttack ran on), autoattack_version (the attack set,
"standard") and pyautoattack_version (the package the experiment ran with, from its parent's
provenance tag). Decisions:
  - eps: "k/255" when the budget is a whole number of 1/255 steps (RobustBench's CIFAR style,
    "8/255"), else the decimal budget on [0, 1] pixels, 4 significant digits (its MNIST style,
    "0.3"; Fashion-MNIST's 25.5/255 gives "0.1").
  - clean_acc / autoattack_acc: percent strings with two decimals of the test metrics; null
    when the trial did not run that attack (--attacks), as n is when it logged no image count. `reported` repeats our AA number
    (RobustBench's "what the paper reported": this run is the report).
  - additional_data false, number_forward_passes 1: our students train on their data set's
    training split only and are deterministic single-pass classifiers.
  - unreliable: true when the trial's evaluation raised sanity flags (smaraad/sanity.py), which
    say the numbers may be wrong (gradient masking, an attack weaker than a weaker one).

benchmark (one per experiment): data set -> method -> {protocol, seeds: {seed: values}, and
{mean, std} per value}, the layout of FastAT's benchmark_data.json. Values: clean, pgd20, aa
and the best-on-validation checkpoint's best_clean, best_pgd20 (test accuracies in percent),
train_time_s (`time/train_s`: training and per-epoch validation) and peak_memory_mb
(`memory/peak_mb`, see trainables/trial.py). std is the sample std (ddof 1), null for one seed.
A "method" is the variant; with several teachers it is "<variant> <- <teacher>", and in a tune
experiment "<method> <trial id>" (every trial is its own configuration).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import jsonschema
import pandas as pd

from smaraad.methods import METHODS

SCHEMAS = Path(__file__).resolve().parent / "schemas"
THREAT_MODEL = "Linf"  # every attack of the registry is L_inf
AA_SET = "standard"    # the suite's AutoAttack version (smaraad/metrics.py AttackContext)
BENCHMARK = {  # benchmark value -> (logged metric, percent)
    "clean": ("test/clean_acc", True), "pgd20": ("test/pgd20_acc", True),
    "aa": ("test/aa_acc", True), "best_clean": ("test/best_clean_acc", True),
    "best_pgd20": ("test/best_pgd20_acc", True), "train_time_s": ("time/train_s", False),
    "peak_memory_mb": ("memory/peak_mb", False)}


@lru_cache(maxsize=None)
def schema(name: str) -> dict:
    """The JSON Schema `name` ("model_info" or "benchmark") from analysis/schemas/."""
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def validate(document: dict, name: str) -> None:
    """jsonschema.ValidationError unless `document` conforms to schema `name`."""
    jsonschema.validate(document, schema(name))


def eps_string(eps_255: float) -> str:
    """The budget the RobustBench way (see the module docstring): 8 -> "8/255", 25.5 -> "0.1"."""
    if float(eps_255).is_integer():
        return f"{int(eps_255)}/255"
    return f"{eps_255 / 255:.4g}"


def percent(fraction) -> str | None:
    """0.4712 -> "47.12"; None / NaN -> None."""
    if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)):
        return None
    return f"{100 * float(fraction):.2f}"


def _metric(trial, key: str):
    value = trial.get(f"metrics.{key}")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _count(value) -> int | None:
    return None if value is None else int(value)


def model_info(trial: pd.Series, *, experiment: str, parent_tags: dict) -> dict:
    """The RobustBench model_info of one finished trial (a row of RunsTable.trials)."""
    aa = _metric(trial, "test/aa_acc")
    n = _count(_metric(trial, "n"))
    aa_n = _count(_metric(trial, "aa/n")) or (n if aa is not None else None)
    flags = trial.get("flags") or "none"
    teacher = _teacher(trial)
    notes = [f"{trial['variant']} from teacher {teacher}, seed {trial['seed']}",
             f"test accuracy on {n} images" + (f", AutoAttack on the first {aa_n}" if aa_n else
                                                 ", no AutoAttack")]
    if flags != "none":
        notes.append(f"sanity flags: {flags}")
    info = {
        "link": "", "name": f"{experiment}/{trial['trial_id']}", "authors": "",
        "additional_data": False, "number_forward_passes": 1,
        "dataset": trial.get("params.dataset", ""), "venue": "",
        "architecture": trial.get("params.student", ""), "threat_model": THREAT_MODEL,
        "eps": eps_string(float(trial.get("params.eps_255", 8.0))),
        "clean_acc": percent(_metric(trial, "test/clean_acc")),
        "reported": percent(aa), "autoattack_acc": percent(aa),
        "footnote": "; ".join(notes) + ".", "unreliable": flags != "none",
        "method": trial.get("params.method", ""), "teacher": teacher,
        "seed": int(trial["seed"]), "n": n, "aa_n": aa_n, "autoattack_version": AA_SET,
        "pyautoattack_version": parent_tags.get("versions.pyautoattack") or _installed(),
    }
    validate(info, "model_info")
    return info


def _teacher(trial: pd.Series) -> str:
    """The trial's teacher as it logged it (its name, else the config's teacher architecture),
    "none" for a method that distils from none (the experiment's teacher is still in its params)."""
    spec = METHODS.get(trial.get("params.method", ""))
    if spec is not None and not (spec.needs_teacher or spec.needs_natural_teacher):
        return "none"
    return str(trial.get("params.teacher") or trial.get("params.teacher_arch") or "none")


def _installed() -> str:
    """pyautoattack's version here: for runs logged before the parent recorded it."""
    try:
        return metadata.version("pyautoattack")
    except metadata.PackageNotFoundError:
        return "not installed"


def group_label(trial: pd.Series, *, tune: bool, teachers: bool) -> str:
    """The benchmark's "method" of a trial (see the module docstring)."""
    if tune:
        return f"{trial.get('params.method', trial['variant'])} {trial['trial_id']}"
    if teachers:
        return f"{trial['variant']} <- {trial.get('params.teacher', 'none')}"
    return str(trial["variant"])


def _values(trial: pd.Series) -> dict:
    out = {}
    for name, (key, pct) in BENCHMARK.items():
        v = _metric(trial, key)
        out[name] = None if v is None else float(v) * (100.0 if pct else 1.0)
    return out


def _summary(values: list) -> dict:
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None}
    series = pd.Series(present, dtype=float)
    return {"mean": float(series.mean()),
            "std": float(series.std(ddof=1)) if len(present) > 1 else None}


def benchmark(done: pd.DataFrame, *, tune: bool) -> dict:
    """The experiment's benchmark document from its finished trials (RunsTable.finished)."""
    teachers = "params.teacher" in done.columns and done["params.teacher"].nunique() > 1
    doc: dict = {}
    for _, trial in done.iterrows():
        dataset = doc.setdefault(str(trial.get("params.dataset", "")), {})
        label = group_label(trial, tune=tune, teachers=teachers)
        entry = dataset.setdefault(label, {"protocol": _protocol(trial), "seeds": {}})
        entry["seeds"][str(int(trial["seed"]))] = _values(trial)
    for methods in doc.values():
        for entry in methods.values():
            for name in BENCHMARK:
                entry[name] = _summary([v[name] for v in entry["seeds"].values()])
    validate(doc, "benchmark")
    return doc


def _protocol(trial: pd.Series) -> dict:
    n = _count(_metric(trial, "n"))
    aa = _metric(trial, "test/aa_acc") is not None
    return {"threat_model": THREAT_MODEL, "eps": eps_string(float(trial.get("params.eps_255", 8.0))),
            "n": n, "aa_n": _count(_metric(trial, "aa/n")) or (n if aa else None),
            "teacher": _teacher(trial),
            "student": str(trial.get("params.student", ""))}


def write_json(path: Path, document: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return str(path)
