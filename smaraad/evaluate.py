"""`python -m smaraad.evaluate`: the robustness suite on a checkpoint, written to a JSON file.

Clean, FGSM, PGD-20, CW_inf and AutoAttack (standard) accuracy at the checkpoint's eps (8/255 by
default), the CAM distance to the teacher the checkpoint names, black-box transfer from --source,
and sanity flags. The data set and its validation split default to the ones the checkpoint was
trained with, so --split val is the trainer's own validation split.

    python -m smaraad.evaluate --checkpoint runs/smaraad_pp-seed0/checkpoint.pt --out eval.json
    python -m smaraad.evaluate --checkpoint s.pt --attacks clean,pgd20 --n 1000 --source t.pt \\
        --split val --out val.json
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

from smaraad.attacks import from_255
from smaraad.autoattack import AA_VERSIONS, check_version
from smaraad.cli import Parser, UsageError, command
from smaraad.config import DATASETS, DEFAULT_DATASET, preset_config
from smaraad.errors import UserError
from smaraad import metrics
from smaraad.evaluation import CAM_CLASSES, check_attacks, evaluate_suite
from smaraad.io import save_json
from smaraad.models import CheckpointError, load_checkpoint, read_checkpoint
from smaraad.paths import folder_or_absent, writable_file
from smaraad.sanity import SanityWarning
from smaraad.teachers import recorded_teacher

AUTO = "auto"  # --teacher default: the teacher named in the checkpoint's config, if any
SPLITS = ("test", "val")


def parser() -> Parser:
    p = Parser(prog="python -m smaraad.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="model to evaluate")
    p.add_argument("--out", required=True, metavar="FILE.json", help="where to write the results")
    p.add_argument("--dataset", choices=DATASETS, help="default: the checkpoint's")
    p.add_argument("--split", choices=SPLITS, default="test",
                   help="test, or the trainer's validation split (default: test)")
    p.add_argument("--attacks", default=",".join(metrics.attack_names()),
                   help=f"comma-separated, from: {', '.join(metrics.attack_names())} "
                        "(default: all)")
    p.add_argument("--n", type=int, default=0, help="first N images of the split (0 = all)")
    p.add_argument("--aa-n", type=int, default=0, help="AutoAttack on only the first N of those "
                   "(0 = all); the other attacks are then also reported on that subset")
    p.add_argument("--seed", type=int, default=0, help="seeds every attack's randomness")
    p.add_argument("--source", metavar="PATH", help="checkpoint whose PGD-20/CW examples are "
                   "transferred to the model (black-box)")
    p.add_argument("--teacher", default=AUTO, metavar="PATH",
                   help="teacher for cam_dist; 'auto' (default) = the teacher the checkpoint "
                        "records (ours or robustbench:NAME), 'none' = no cam_dist")
    p.add_argument("--cam-class", choices=CAM_CLASSES, default="label",
                   help="class whose weights form the CAMs (default: label)")
    p.add_argument("--eps-255", type=float, help="L_inf budget in 1/255 (default: the "
                   "checkpoint's eps_255, else 8)")
    p.add_argument("--aa-version", default="standard",
                   help=f"{', '.join(AA_VERSIONS)}, or a comma list of pyautoattack attacks "
                        "(apgd-ce,square,...) for a cheaper custom run; reported numbers: standard")
    p.add_argument("--data-root", metavar="DIR", help="folder holding the data set's files")
    p.add_argument("--download", action="store_true", help="download the data set's files into "
                   "--data-root if missing (torchvision's downloader, md5-checked)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=256)
    return p


def aa_choice(text: str) -> tuple[str, list[str] | None]:
    """--aa-version as (version, attacks): a named version, or a custom list of attacks."""
    if text in AA_VERSIONS:
        return text, None
    return "custom", [a.strip() for a in text.split(",") if a.strip()]


def _load(path: str, what: str):
    try:
        return load_checkpoint(path)
    except CheckpointError as err:  # a UserError already; the prefix says which of three files
        raise CheckpointError(f"{what}: {err}") from None


def recorded(raw: dict) -> dict | None:
    """The teacher a student checkpoint names: its `teacher` record (smaraad.teachers.
    teacher_record), or, in checkpoints written before it, the path under teacher_path."""
    if isinstance(raw.get("teacher"), dict):
        return raw["teacher"]
    path = (raw.get("config") or {}).get("teacher_path") or raw.get("teacher_path")
    return {"spec": path, "file": path} if path else None


DATA_KEYS = ("data_root", "train_size", "val_size", "split_seed")  # what places the split


def _splits(dataset: str, config: dict, data_root: str | None, download: bool = False):
    """The data split the way the trainer held it out: `load_splits` on the checkpoint config's
    data keys (train_size, val_size, split_seed; the preset's where the config lacks them), so
    --split val is its validation set and never overlaps its training images."""
    from smaraad.trainer import load_splits  # CIFAR loading pulls in torchvision: lazily

    keys = {k: config[k] for k in DATA_KEYS if config.get(k) not in (None, "")}
    if data_root:
        keys["data_root"] = data_root
    # DataError (a missing data set names --download and the files' place) is a UserError
    return load_splits(preset_config({**keys, "dataset": dataset}), download=download)


def evaluate_checkpoint(path: str, *, dataset: str | None = None, split: str = "test",
                        attacks: Sequence[str] | None = None, n: int = 0, aa_n: int = 0,
                        seed: int = 0,
                        source: str | None = None, teacher: str | None = AUTO,
                        cam_class: str = "label", eps_255: float | None = None,
                        aa_version: str = "standard", data_root: str | None = None,
                        device: str = "auto", batch_size: int = 256, splits=None,
                        download: bool = False,
                        log: Callable[[str], None] | None = print) -> dict:
    """Run `evaluate_suite` on the checkpoint at `path`; every user mistake is a UserError raised
    before any attack runs. `splits` (a smaraad.data.Splits) skips loading the data again, for
    the training command; teacher=AUTO takes the teacher the checkpoint records, None skips
    cam_dist. Returns the suite's dict plus what was evaluated (checkpoint, dataset, split...)."""
    from smaraad.trainer import resolve_device  # the trainer pulls in methods and data: lazily

    try:
        names = check_attacks([a.strip() for a in attacks or metrics.attack_names()])
        version, aa_attacks = aa_choice(aa_version)
        if "aa" in names:
            check_version(version, aa_attacks)
    except ValueError as err:
        raise UsageError(str(err)) from None
    for bad, message in ((n < 0, f"--n must be >= 0 (0 = all images), got {n}"),
                         (aa_n < 0, f"--aa-n must be >= 0 (0 = all of --n), got {aa_n}"),
                         (batch_size < 1, f"--batch-size must be >= 1, got {batch_size}"),
                         (eps_255 is not None and not 0 <= eps_255 <= 255,
                          f"--eps-255 must be in [0, 255], got {eps_255}"),
                         (split not in SPLITS, f"unknown split {split!r}; allowed: test, val"),
                         (cam_class not in CAM_CLASSES, f"unknown cam class {cam_class!r}; "
                                                        f"allowed: {', '.join(CAM_CLASSES)}")):
        if bad:
            raise UsageError(message)
    raw = read_checkpoint(path)  # CheckpointError, a UserError: one line, exit 2
    config = raw.get("config") or {}
    dataset = dataset or config.get("dataset", DEFAULT_DATASET)
    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    model = _load(path, "--checkpoint")
    teacher_model = None
    if teacher == AUTO:
        record = recorded(raw)
        teacher = record and record["file"]
        if teacher and not Path(teacher).is_file():
            if log:
                log(f"note: the checkpoint's teacher {teacher} is missing; no cam_dist")
            teacher = None
        if teacher:
            try:
                teacher_model = recorded_teacher(record, dataset)
            except UserError as err:
                raise UserError(f"the checkpoint's teacher: {err}") from None
    elif teacher:
        teacher_model = _load(teacher, "--teacher")
    source_model = _load(source, "--source") if source else None
    dev = resolve_device(device)
    if splits is None:
        splits = _splits(dataset, config, data_root, download)
    for what, m in (("model", model), ("teacher", teacher_model), ("source", source_model)):
        if m is not None and m.num_classes != splits.num_classes:
            raise UserError(f"the {what} has {m.num_classes} classes, {dataset} has "
                            f"{splits.num_classes}")
    eps_255 = float(eps_255 if eps_255 is not None else config.get("eps_255", 8.0))
    result = evaluate_suite(model, getattr(splits, split), attacks=names, eps=from_255(eps_255),
                            n=n, aa_n=aa_n, batch_size=batch_size, device=dev, seed=seed,
                            teacher=teacher_model, source=source_model, cam_class=cam_class,
                            prefix=f"{split}/", aa_version=version, aa_attacks=aa_attacks)
    return {**result, "checkpoint": str(path), "arch": model.arch, "dataset": dataset,
            "split": split, "eps_255": eps_255, "attacks": list(names), "aa_version": aa_version,
            "teacher": teacher if teacher_model is not None else None, "source": source}


def format_table(r: dict) -> str:
    """The accuracies, the cam distance and the flags as aligned text."""
    prefix = f"{r['split']}/"
    lines = [f"{r['arch']} from {r['checkpoint']}: {r['dataset']}/{r['split']}, n={r['n']}, "
             f"eps {r['eps_255']:g}/255, seed {r['seed']}"
             + (f", AutoAttack {r['aa_version']}" if "aa" in r["attacks"] else "")
             + (f" on the first {r['aa/n']}" if "aa/n" in r else ""),
             f"{'attack':<20}{'accuracy':>9}{'time':>10}"]
    rows = [(metrics.REGISTRY[a].key(prefix), a) for a in metrics.attack_names()] + [
        (metrics.REGISTRY[a].key("blackbox/"), f"blackbox_{a}") for a in metrics.blackbox_names()]
    for key, name in (row for row in rows if row[0] in r):
        t = r.get(f"time/{name}_s")
        lines.append(f"{key:<20}{r[key]:>9.4f}{'' if t is None else f'{t:>9.1f}s'}")
    if f"{prefix}cam_dist" in r:
        lines.append(f"{prefix + 'cam_dist':<20}{r[prefix + 'cam_dist']:>9.4f}")
    if "masking/n" in r:
        lines.append(f"masking check on {r['masking/n']} images: PGD-20 "
                     f"{r['masking/pgd20_acc']:.4f}, PGD-50 {r['masking/pgd50_acc']:.4f}")
    lines += [f"flag: {f}" for f in r["flags"]] or ["flags: none"]
    return "\n".join(lines)


def check_paths(args) -> None:
    """--out and --data-root before anything runs (an --out that cannot be written would
    otherwise fail after the whole evaluation); the checkpoint loader checks the three models."""
    writable_file(args.out, "--out")
    if args.data_root:
        folder_or_absent(args.data_root, "--data-root")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_paths(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SanityWarning)  # the table below lists every flag
        result = evaluate_checkpoint(
            args.checkpoint, dataset=args.dataset, split=args.split, attacks=args.attacks.split(","),
            n=args.n, aa_n=args.aa_n, seed=args.seed, source=args.source,
            teacher=None if args.teacher == "none" else args.teacher, cam_class=args.cam_class,
            eps_255=args.eps_255, aa_version=args.aa_version, data_root=args.data_root,
            device=args.device, batch_size=args.batch_size, download=args.download)
    print(format_table(result))
    save_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    command(main)
