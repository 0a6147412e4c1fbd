"""The one vocabulary of evaluation metrics: every layer that names a metric reads it from here.

`TEACHER` holds a teacher's own figures (logged as `teacher/...`), one meaning per key: what the
trainer's validation measured of it, what an experiment measured of it at the students' threat
model, and RobustBench's leaderboard figures.

`REGISTRY` maps a metric's short name to its `Metric`: how it is computed (an attack built from
the evaluation's eps/seed, or a quantity the suite derives itself, like the CAM distance), the key
it is logged under, its title in tables and figures, its direction, the sanity orderings it takes
part in, and where it is shown. The suite (smaraad/evaluation.py), its sanity flags
(smaraad/sanity.py), the train command's output, the trials' progress lines, the orchestrator's
summary tables and the analysis report all iterate this registry when they run, so adding a metric
is one entry here, e.g.

    REGISTRY["pgd50"] = Metric("pgd50", "PGD-50", attack=lambda c: partial(
        pgd, eps=c.eps, step=c.eps / 4, steps=50), at_most=("pgd20",))

`VALIDATION` holds the per-epoch validation metrics the trainer reports (the ones a search space
can optimise); they are computed by smaraad/trainer.py, not by the suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

from smaraad.attacks import cw_inf, fgsm, pgd


@dataclass(frozen=True)
class AttackContext:
    """What an attack is built from: the L_inf budget, the seed, AutoAttack's version."""
    eps: float
    seed: int = 0
    aa_version: str = "standard"
    aa_attacks: Sequence[str] | None = None


@dataclass(frozen=True)
class Metric:
    """One evaluation metric.

    attack: builds the Attack (model, x, y) -> x_adv from an AttackContext; returns None for the
      unattacked (clean) images. A metric without `attack` is derived by the suite itself.
    field: the result key after the split prefix (`test/<field>`); default `<name>_acc`.
    at_most: metrics this one can never exceed beyond noise (a stronger attack leaves no more
      images correct than a weaker one on the same images): the sanity orderings.
    blackbox: also evaluated as a transfer attack from a source model (`blackbox/<field>`).
    costly: left out of the train command's default evaluation (AutoAttack: minutes on a CPU).
    headline: shown in the trials' progress lines and the trials table.
    summary: a column of the summary and report tables (mean +- std over seeds).
    percent: a fraction shown as a percentage; else a raw value (4 digits).
    """
    name: str
    title: str
    attack: Callable[[AttackContext], Callable | None] | None = None
    field: str = ""
    higher_is_better: bool = True
    at_most: tuple[str, ...] = ()
    blackbox: bool = False
    costly: bool = False
    headline: bool = False
    summary: bool = True
    percent: bool = True
    words: str = ""         # axis label, e.g. "PGD-20 accuracy" (default: "<title> accuracy")

    def __post_init__(self):
        object.__setattr__(self, "field", self.field or f"{self.name}_acc")
        object.__setattr__(self, "words", self.words or f"{self.title} accuracy")

    def key(self, prefix: str = "test/") -> str:
        return f"{prefix}{self.field}"

    @property
    def column(self) -> str:
        """The table column title: its unit or its direction."""
        if self.percent:
            return f"{self.title} (%)"
        return f"{self.title} (lower is better)" if not self.higher_is_better else self.title


def _step(c: AttackContext) -> float:
    """PGD and CW_inf step eps/4 (2/255 at 8/255: the AD papers' convention)."""
    return c.eps / 4


def _autoattack(c: AttackContext):
    from smaraad.autoattack import autoattack  # pyautoattack: only where AA runs

    return partial(autoattack, eps=c.eps, version=c.aa_version, attacks=c.aa_attacks, seed=c.seed)


REGISTRY: dict[str, Metric] = {m.name: m for m in (
    Metric("clean", "Clean", attack=lambda c: None, headline=True, words="clean accuracy"),
    Metric("fgsm", "FGSM", attack=lambda c: partial(fgsm, eps=c.eps), at_most=("clean",)),
    Metric("pgd20", "PGD-20", attack=lambda c: partial(pgd, eps=c.eps, step=_step(c), steps=20),
           at_most=("fgsm",), blackbox=True, headline=True),
    Metric("cw", "CW-inf", attack=lambda c: partial(cw_inf, eps=c.eps, step=_step(c), steps=20),
           at_most=("clean",), blackbox=True),
    Metric("aa", "AA", attack=_autoattack, at_most=("pgd20", "cw"), costly=True, headline=True,
           words="AutoAttack accuracy"),
    # Eq. 6-7's L_align between the student's and the teacher's CAMs on the PGD-20 examples
    Metric("cam_dist", "CAM dist.", field="cam_dist", higher_is_better=False, percent=False,
           words="MSE to the teacher's CAM"),
)}

VALIDATION: dict[str, Metric] = {m.field: m for m in (
    Metric("pgd", "val PGD", field="val/pgd_acc", words="val PGD accuracy"),
    Metric("clean", "val clean", field="val/clean_acc", words="val clean accuracy"),
)}



@dataclass(frozen=True)
class TeacherMetric:
    """One figure of a teacher, logged as `teacher/<field>`.

    source: "train" -- the trainer's validation metric `of` (a trained teacher's last epoch; a
      model-zoo teacher validated once the same way); "eval" -- the suite's attack `of` on the
      first n validation images at the experiment's eps (orchestrator experiments; `of` "aa_n":
      how many images AutoAttack ran on); "leaderboard" -- RobustBench's figure `of` (percent).
    """
    field: str
    source: str
    of: str
    words: str

    @property
    def key(self) -> str:
        return f"teacher/{self.field}"


TEACHER: dict[str, TeacherMetric] = {m.field: m for m in (
    TeacherMetric("val_clean_acc", "train", "val/clean_acc", "the trainer's validation clean accuracy"),
    TeacherMetric("val_pgd_acc", "train", "val/pgd_acc",
                  "the trainer's validation PGD accuracy (val_pgd_steps steps of 2/255)"),
    TeacherMetric("eval_clean_acc", "eval", "clean", "clean accuracy, experiment's validation images"),
    TeacherMetric("eval_pgd20_acc", "eval", "pgd20",
                  "PGD-20 accuracy at the students' eps, experiment's validation images"),
    TeacherMetric("eval_aa_acc", "eval", "aa", "AutoAttack accuracy on the first teacher_aa_n"),
    TeacherMetric("eval_aa_n", "eval", "aa_n", "images the teacher's AutoAttack ran on"),
    TeacherMetric("leaderboard_clean_acc", "leaderboard", "clean_acc",
                  "RobustBench's clean accuracy"),
    TeacherMetric("leaderboard_aa_acc", "leaderboard", "autoattack_acc",
                  "RobustBench's AutoAttack accuracy"),
)}


def is_teacher_key(key: str) -> bool:
    return any(m.key == key for m in TEACHER.values())


def teacher_figures(source: str, values: dict) -> dict[str, float]:
    """The TEACHER entries of `source` found in `values` (keyed by each entry's `of`), under their
    teacher/ keys."""
    return {m.key: values[m.of] for m in TEACHER.values()
            if m.source == source and values.get(m.of) is not None}


def attack_names() -> tuple[str, ...]:
    """Every metric computed by an attack, in registry order: the suite's vocabulary."""
    return tuple(m.name for m in REGISTRY.values() if m.attack is not None)


def default_attacks(*, costly: bool = True) -> tuple[str, ...]:
    return tuple(n for n in attack_names() if costly or not REGISTRY[n].costly)


def orderings() -> tuple[tuple[str, str], ...]:
    """(weaker, stronger) pairs: acc(stronger) <= acc(weaker) + noise."""
    return tuple((w, m.name) for m in REGISTRY.values() for w in m.at_most)


def blackbox_names() -> tuple[str, ...]:
    return tuple(m.name for m in REGISTRY.values() if m.blackbox)


def transfer(m: Metric) -> Metric:
    """The black-box transfer form of `m` (the paper's Table 5): its examples made on a source
    model (a trial's teacher, or a checkpoint), scored on the student; a trial logs it as
    `test/transfer_<field>` (the suite computes it as `blackbox/<field>`)."""
    return Metric(f"transfer_{m.name}", f"Transfer {m.title}", field=f"transfer_{m.field}",
                  words=f"transfer {m.words}")


def transfer_metrics() -> list[Metric]:
    return [transfer(m) for m in REGISTRY.values() if m.blackbox]


def transfer_keys() -> dict[str, str]:
    """The suite's black-box keys -> the trial's transfer keys, e.g. blackbox/pgd20_acc ->
    test/transfer_pgd20_acc."""
    return {m.key("blackbox/"): transfer(m).key() for m in REGISTRY.values() if m.blackbox}


BEST_OF = ("clean", "pgd20")  # scored again on the best-on-validation weights (robust overfitting)
# The epoch of those weights: logged as `test/best_epoch`, kept out of the tables (not a score)
BEST_EPOCH = Metric("best_epoch", "Best epoch", field="best_epoch", percent=False, summary=False,
                    words="epoch of the best validation PGD accuracy")


def best(m: Metric) -> Metric:
    """`m` measured on the best-on-validation checkpoint rather than the last one: a trial logs
    it as `test/best_<field>` (smaraad/trainer.py's `BestState` chooses the checkpoint)."""
    return Metric(f"best_{m.name}", f"Best-val {m.title}", field=f"best_{m.field}",
                  words=f"{m.words} (best-val checkpoint)")


def best_metrics() -> list[Metric]:
    return [best(REGISTRY[n]) for n in BEST_OF]


def summary_metrics() -> list[Metric]:
    """The columns of the summary and report tables: the registry's, then the transfer forms,
    then the best-on-validation checkpoint's."""
    return [m for m in REGISTRY.values() if m.summary] + transfer_metrics() + best_metrics()


def headline_keys(prefix: str = "test/") -> list[str]:
    return [m.key(prefix) for m in REGISTRY.values() if m.headline]


def by_key(key: str) -> Metric | None:
    """The metric logged under `key` (`test/pgd20_acc`, `val/pgd_acc`), or None."""
    if key in VALIDATION:
        return VALIDATION[key]
    field = key.split("/", 1)[-1]
    return next((m for m in [*REGISTRY.values(), *transfer_metrics(), *best_metrics(), BEST_EPOCH]
                 if m.field == field), None)
