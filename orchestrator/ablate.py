"""`python -m orchestrator.ablate`: the paper's ablation (Figure 4) over seeds, no early stopping.

Default: the four variants kd, kd_align, sm, sm_align times seeds 0, 1, 2, each trained for the
full budget and evaluated on the test split with every attack; prints mean +- std per variant and
attack. `--space methods` runs the baseline comparison (Table 3) the same way; `--space teachers`
varies the teacher too (Figure 1: does a more robust teacher give a more robust student?).
"""

from __future__ import annotations

from typing import Sequence

from orchestrator import summary
from orchestrator.common import common_parser, resolve
from orchestrator.spaces import TEACHER_KEY, SpaceError, available, load_space
from orchestrator.tune import finish
from smaraad.cli import UsageError, command


EXIT_STATUS = ("exit status: 0 when every cell of the table (every variant x seed) finished; 1 "
               "when any is missing (a trial failed, or the run was interrupted: --resume "
               "continues it); 2 on a bad input")


def main(argv: Sequence[str] | None = None) -> int:
    p = common_parser("python -m orchestrator.ablate", __doc__.split("\n\n")[0])
    p.epilog = EXIT_STATUS
    p.add_argument("--space", default="ablation",
                   help=f"grid space name or YAML path; available: {', '.join(available())}")
    p.add_argument("--variants", help="comma-separated subset of the space's variants "
                   "(default: all)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the space's)")
    args = p.parse_args(argv)
    space = load_space(args.space, args.dataset)
    if space.kind != "grid":
        raise SpaceError(f"space {space.name!r} is a search space; run it with "
                         f"python -m orchestrator.tune --space {space.name}")
    key = next(iter(space.grid))
    variants = space.variants
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
        known = [str(v[key]) for v in variants]
        unknown = [w for w in wanted if w not in known]
        if unknown or not wanted:
            raise UsageError(f"--variants: unknown variant {unknown[0] if unknown else '(none)'!r}"
                             f"; allowed: {','.join(known)}")
        variants = [v for v in variants if str(v[key]) in wanted]
    seeds = space.seeds
    if args.seeds:
        try:
            seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        except ValueError:
            raise UsageError(f"--seeds: {args.seeds!r}; expected comma-separated whole numbers") \
                from None
        if not seeds or min(seeds) < 0:
            raise UsageError(f"--seeds: {args.seeds!r}; expected whole numbers >= 0")
    if args.smoke_test and not args.seeds:
        seeds = seeds[:1]
    if args.smoke_test and TEACHER_KEY in space.grid:  # two teachers still draw a line:
        names = list(dict.fromkeys(v[TEACHER_KEY] for v in variants))  # the first and the last
        kept = names[:1] + names[-1:] if len(names) > 1 else names
        variants = [v for v in variants if v[TEACHER_KEY] in kept]
    exp = resolve(args, space, kind="ablate", variants=variants, seeds=seeds)
    if args.plan:  # before the teacher, the data and Ray
        from orchestrator.plan import print_plan
        return print_plan(exp, runs_per_variant=len(seeds),
                          label=f"ablate --space {space.name}, {len(variants)} variants x "
                                f"{len(seeds)} seeds")

    from trainables.driver import execute
    rows, plan = execute(exp)
    print()
    print(summary.trials_table(rows, [*space.grid, "seed"], space.metric))
    print(f"\nmean +- std over seeds ({len(seeds)}), test split:")
    print(summary.by_variant(rows, key))
    if TEACHER_KEY in space.grid and key != TEACHER_KEY:
        print(summary.by_variant(rows, TEACHER_KEY))
    missing = summary.unfinished(rows)
    return finish(args, rows, exp,
                  incomplete=f"cells of the table are missing: {missing}" if missing else "")


if __name__ == "__main__":
    command(main)
