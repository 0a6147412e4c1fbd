"""`python -m smaraad.train`: train one configuration and write DIR/metrics.json, DIR/checkpoint.pt.

With no options it trains (or reuses from the cache) a small PGD-AT teacher on the embedded data
set, then distils it into a small student with SmaraAD++ -- a laptop run of a few minutes on 2 CPU
cores. The state after every epoch is kept in DIR/state.pt; running the same command again after
an interruption resumes from it.

    python -m smaraad.train --method smaraad --epochs 8 --seed 1 --out runs/smaraad-1
    python -m smaraad.train --dataset cifar10 --student resnet18 --teacher-arch wrn34_10 \\
        --teacher teacher.pt --set gamma=100 --set alpha=0.9
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch

from smaraad.cli import Parser, parse_kv, run
from smaraad.config import ConfigError, TrainConfig, load_yaml_mapping, preset_config
from smaraad.evaluation import check_attacks
from smaraad.io import save_json, save_torch
from smaraad.methods import METHODS
from smaraad.models import save_checkpoint
from smaraad.trainer import fit, load_splits, training_precision

FINAL_ATTACKS = ("clean", "fgsm", "pgd20", "cw")


def parser() -> Parser:
    p = Parser(prog="python -m smaraad.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="smaraad_pp", help=f"one of: {', '.join(METHODS)}")
    p.add_argument("--dataset", default="embedded", help="embedded, cifar10 or cifar100")
    p.add_argument("--epochs", type=int, help="epochs (default: the data set's preset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--student", help="student architecture (default: the preset's)")
    p.add_argument("--teacher", metavar="PATH", help="teacher checkpoint (default: train and "
                   "cache a PGD-AT teacher)")
    p.add_argument("--teacher-arch", help="architecture of the teacher to train when none is given")
    p.add_argument("--teacher-method", default="pgd_at", help="how that teacher is trained: "
                   "pgd_at (default) or trades")
    p.add_argument("--config", metavar="YAML", help="a flat YAML mapping of config keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set gamma=100 (repeatable)")
    p.add_argument("--data-root", help="folder holding the CIFAR files")
    p.add_argument("--download", action="store_true", help="download CIFAR-10/100 into "
                   "--data-root if missing (torchvision's downloader, md5-checked)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/<method>-seed<S>)")
    p.add_argument("--attacks", default=",".join(FINAL_ATTACKS),
                   help="final test-split evaluation, from clean,fgsm,pgd20,cw,aa ('' = none; "
                        "AutoAttack costs minutes on a CPU: python -m smaraad.evaluate runs it)")
    p.add_argument("--eval-n", type=int, default=0, help="test images evaluated (0 = all)")
    p.add_argument("--aa-n", type=int, default=0, help="of those, the first N AutoAttack runs on "
                   "(0 = all)")
    return p


def config_from_args(args) -> TrainConfig:
    values = load_yaml_mapping(args.config) if args.config else {}
    values.update(method=args.method, dataset=values.get("dataset", args.dataset), seed=args.seed)
    for key, value in (("epochs", args.epochs), ("student", args.student),
                       ("teacher", args.teacher_arch), ("data_root", args.data_root),
                       ("device", args.device)):
        if value is not None:
            values[key] = value
    values.update(parse_kv(args.set))
    return preset_config(values)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cfg = config_from_args(args)
    attacks = [a for a in args.attacks.split(",") if a]
    if attacks:
        check_attacks(attacks)
    if args.eval_n < 0:
        raise ConfigError(f"--eval-n: {args.eval_n}; must be >= 0 (0 = the whole test split)")
    if args.aa_n < 0:
        raise ConfigError(f"--aa-n: {args.aa_n}; must be >= 0 (0 = all of --eval-n)")
    out = Path(args.out or f"runs/{cfg.method}-seed{cfg.seed}")
    if args.teacher and not Path(args.teacher).is_file():
        raise ConfigError(f"--teacher {args.teacher}: no such file")
    data = load_splits(cfg, download=args.download)  # fails early (missing CIFAR files) before anything is written

    resume = None
    state_file = out / "state.pt"
    if state_file.exists():
        resume = torch.load(state_file, weights_only=True)
        if resume.get("config") != cfg.to_flat():
            raise ConfigError(f"{out} holds a run with another configuration; choose another "
                              "--out or delete it")
        print(f"resuming {out} after epoch {resume['epoch']}")

    teacher = natural = None
    summary: dict = {}
    spec = METHODS[cfg.method]
    if spec.needs_teacher:
        from smaraad.teachers import provide_teacher
        t = provide_teacher(cfg, path=args.teacher, method=args.teacher_method)
        teacher = t.model
        summary.update(t.metrics, teacher_path=t.path)
        if spec.needs_natural_teacher:
            natural = provide_teacher(cfg, method="natural").model

    print(f"training {cfg.student} with {cfg.method} on {cfg.dataset} "
          f"({len(data.train[1])} train / {len(data.val[1])} val images, {cfg.epochs} epochs, "
          f"{training_precision(cfg)})")
    model, metrics = fit(cfg, teacher=teacher, natural_teacher=natural, data=data, resume=resume,
                         report=lambda m, state: save_torch(state_file, state))
    save_checkpoint(out / "checkpoint.pt", model, config=cfg.to_flat(),
                    extra={"teacher_path": summary["teacher_path"]} if teacher is not None else None)
    if attacks:
        from smaraad.evaluate import evaluate_checkpoint
        final = evaluate_checkpoint(str(out / "checkpoint.pt"), attacks=attacks, n=args.eval_n,
                                    aa_n=args.aa_n, seed=cfg.seed, splits=data, device=cfg.device,
                                    log=None)
        summary.update({k: v for k, v in final.items()
                        if k.startswith(("test/", "masking/", "aa/")) or k == "n"},
                       flags=final.get("flags", []))
        print(f"test (n = {final['n']}" + (f", AutoAttack on the first {final['aa/n']}"
                                            if "aa/n" in final else "") + "): "
              + "  ".join(f"{k[5:]} {v:.3f}" for k, v in final.items() if k.startswith("test/")))
    save_json(out / "metrics.json", {**metrics, **summary})
    print(f"wrote {out / 'metrics.json'} and {out / 'checkpoint.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
