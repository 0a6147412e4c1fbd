"""`python -m smaraad.train`: train one configuration and write DIR/metrics.json, DIR/checkpoint.pt
(the last epoch's weights) and DIR/best.pt (the epoch of highest validation PGD accuracy).

With no options it trains (or reuses from the cache) a small PGD-AT teacher on the embedded data
set, then distils it into a small student with SmaraAD++ -- a laptop run of a few minutes on 2 CPU
cores. The state after every epoch is kept in DIR/state.pt; running the same command again after
an interruption resumes from it.

    python -m smaraad.train --method smaraad --epochs 8 --seed 1 --out runs/smaraad-1
    python -m smaraad.train --dataset cifar10 --student resnet18 --teacher-arch wrn34_10 \\
        --teacher teacher.pt --set gamma=100 --set alpha=0.9
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from smaraad import metrics
from smaraad.attacks import from_255
from smaraad.cli import Parser, command
from smaraad.config import ConfigError, TrainConfig, canonical, load_yaml_mapping, preset_config
from smaraad.evaluation import evaluate_best
from smaraad.io import load_torch, save_json, save_torch
from smaraad.methods import METHODS
from smaraad.models import save_checkpoint
from smaraad.options import RunOptions, add_run_options, check_teacher, run_options
from smaraad.paths import folder_or_absent, writable_dir
from smaraad.trainer import BestState, fit, load_splits, resolve_device, training_precision


def parser() -> Parser:
    p = Parser(prog="python -m smaraad.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="smaraad_pp", help=f"one of: {', '.join(METHODS)}")
    # AutoAttack costs minutes on a CPU: not in the default ('' = no evaluation at all)
    add_run_options(p, attacks=metrics.default_attacks(costly=False),
                    eval_n_default="0 = all", aa_n_default="0 = all")
    p.add_argument("--config", metavar="YAML", help="a flat YAML mapping of config keys")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/<method>-seed<S>)")
    return p


def options_from_args(args) -> tuple[TrainConfig, RunOptions]:
    base = load_yaml_mapping(args.config) if args.config else {}
    extra = {"method": args.method, **({"device": args.device} if args.device else {})}
    opts = run_options(args, base=base, extra=extra, allow_no_attacks=True)
    return preset_config(opts.values), opts


def config_from_args(args) -> TrainConfig:
    return options_from_args(args)[0]


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cfg, opts = options_from_args(args)
    attacks, eval_n, aa_n = opts.attacks, opts.eval_n or 0, opts.aa_n or 0
    out = Path(args.out or f"runs/{cfg.method}-seed{cfg.seed}")
    writable_dir(out, "--out")
    check_teacher(opts.teacher, cfg.dataset, opts.teacher_dir, opts.download)
    if args.data_root:
        folder_or_absent(args.data_root, "--data-root")
    data = load_splits(cfg, download=opts.download)  # fails early (missing CIFAR files) before anything is written

    resume = None
    state_file = out / "state.pt"
    if state_file.exists():
        resume = load_torch(state_file)
        if canonical(resume.get("config") or {}) != cfg.to_flat():
            raise ConfigError(f"{out} holds a run with another configuration; choose another "
                              "--out or delete it")
        print(f"resuming {out} after epoch {resume['epoch']}")

    teacher = natural = None
    summary: dict = {}
    spec = METHODS[cfg.method]
    if spec.needs_teacher:
        from smaraad.teachers import provide_teacher, teacher_record
        t = provide_teacher(cfg, path=opts.teacher, method=opts.teacher_method,
                            epochs=opts.teacher_epochs, teacher_dir=opts.teacher_dir,
                            download=opts.download, data=data)
        teacher = t.model
        summary.update(t.metrics, teacher_path=t.path)
        record = teacher_record(opts.teacher, t.path, t.model.arch)
        if spec.needs_natural_teacher:
            natural = provide_teacher(cfg, method="natural", epochs=opts.teacher_epochs).model

    print(f"training {cfg.student} with {cfg.method} on {cfg.dataset} "
          f"({len(data.train[1])} train / {len(data.val[1])} val images, {cfg.epochs} epochs, "
          f"{training_precision(cfg)})")
    best = BestState()
    model, metrics = fit(cfg, teacher=teacher, natural_teacher=natural, data=data, resume=resume,
                         report=lambda m, state: save_torch(state_file, state), best=best)
    extra = {"teacher": record} if teacher is not None else {}
    save_checkpoint(out / "checkpoint.pt", model, config=cfg.to_flat(), extra=extra or None)
    best_model = best.model_like(model)
    if best_model is not None:
        save_checkpoint(out / "best.pt", best_model, config=cfg.to_flat(),
                        extra={**extra, "best": best.record()})
        summary["best"] = best.record()
    if attacks:
        from smaraad.evaluate import evaluate_checkpoint
        final = evaluate_checkpoint(str(out / "checkpoint.pt"), attacks=attacks, n=eval_n,
                                    aa_n=aa_n, seed=cfg.seed, splits=data, device=cfg.device,
                                    log=None)
        final.update(evaluate_best(best_model, best.epoch, data.test, eps=from_255(cfg.eps_255),
                                   n=eval_n, device=resolve_device(cfg.device), seed=cfg.seed,
                                   last=final, last_epoch=cfg.epochs))
        print(f"test (n = {final['n']}" + (f", AutoAttack on the first {final['aa/n']}"
                                            if "aa/n" in final else "") + "): "
              + "  ".join(f"{k[5:]} {v:.3g}" for k, v in final.items() if k.startswith("test/")))
        summary.update({k: v for k, v in final.items()
                        if k.startswith(("test/", "masking/", "aa/")) or k == "n"},
                       flags=final.get("flags", []))
    save_json(out / "metrics.json", {**metrics, **summary})
    print(f"wrote {out / 'metrics.json'}, {out / 'checkpoint.pt'}"
          + (f" and {out / 'best.pt'} (epoch {best.epoch})" if best_model is not None else ""))
    return 0


if __name__ == "__main__":
    command(main)
