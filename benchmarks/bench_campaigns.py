"""Each campaign's wall time on this machine against its budget: estimated from measured parts, or
measured end to end with --run.

Campaigns (`python -m orchestrator.ablate ... --dataset DATASET`) and budgets on 2 CPU cores:
the default ablation (4 variants x 3 seeds) 30 min, `--space methods` 2 h, `--space teachers` 2 h.
The tune (`--campaigns gamma_alpha`: `python -m orchestrator.tune --space gamma_alpha`) has no
budget and no estimate: --run runs it and keeps it like the others.

Estimate (default): the campaign's trials are resolved as `ablate` resolves them (its space with the
data set's overlay, the preset, the space's eval_n / aa_n); then, on this machine, with one torch
thread per trial (as Ray runs them, --cpus-per-trial 1, two at a time on 2 cores):
- one training step per method of the campaign, at the preset's batch, attack and precision, on
  random images of the data set's shape with freshly built models, timed after one warm-up step
  (random weights change no pass count: the cost per image is the same as a trained model's);
- the per-epoch validation (PGD at val_pgd_steps) and the final evaluation's clean, FGSM, PGD-20,
  CW and PGD-50 masking passes, timed on PROBE images and scaled to the campaign's counts;
- AutoAttack on the first aa_n images: its cost grows with the fraction of images that stay
  robust, so it is timed on `--aa-model` (a trained checkpoint; default: none, then the figure
  is AA_S_PER_IMAGE, measured on a PGD-AT small_cnn at 47 % robustness, and is printed as such);
- the teachers: each is trained once (PGD-AT of the teacher arch at the teacher epochs), timed
  like the students' steps, with the driver's two threads.
Wall = Ray's start + teachers + (trials / concurrency) x (training + validation + evaluation).
Everything measured here on a loaded machine is an upper bound; on an idle one the estimate drops.

--run runs the campaign itself (`python -m orchestrator.ablate`, fresh teacher cache unless
--keep-cache) and prints its measured wall time against the budget; with --out DIR its stores,
teachers and report are kept in DIR (docs/results/ is made from them) and a stopped campaign resumes.

    python benchmarks/bench_campaigns.py [--dataset fashion_mnist] [--aa-model ckpt.pt] \
        [--run [--out DIR]] [--campaigns ablation,methods,teachers]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from orchestrator.spaces import TEACHER_KEY, load_space
from smaraad.attacks import from_255, pgd
from smaraad.config import preset_config
from smaraad.cost import make_context, train_step
from smaraad.data.registry import dataset
from smaraad.evaluation import accuracy, attack_table
from smaraad.trainer import training_precision

CAMPAIGNS = (("ablation", 30 * 60), ("methods", 2 * 3600), ("teachers", 2 * 3600))
TUNES = ("gamma_alpha",)  # run and kept with --run; no budget
CONCURRENCY = 2        # trials at once: 2 cores, one per trial
RAY_START_S = 20       # Ray's start and the driver's setup, measured in docs/measurements.md
PROBE = 64             # images each evaluation pass is timed on
AA_S_PER_IMAGE = 0.39  # s per image of AutoAttack standard, 2 threads, eps 0.1, a PGD-AT small_cnn
#                        at 47 % robust accuracy (100 Fashion-MNIST test images: 38.7 s)
EVAL_PASSES = ("clean", "fgsm", "pgd20", "cw")


def step_seconds(method: str, cfg, teacher: str | None, entry, threads: int) -> float:
    """Seconds per training image of one real step of `method` (after a warm-up step)."""
    torch.set_num_threads(threads)
    ctx = make_context(method, cfg.student, teacher, num_classes=entry.classes,
                       params=vars(cfg.params), steps=cfg.attack_steps, eps_255=cfg.eps_255,
                       step_255=cfg.step_255, epochs=cfg.epochs, channels=entry.channels)
    opt = torch.optim.SGD(ctx.student.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(cfg.batch_size, entry.channels, entry.image_size, entry.image_size)
    y = torch.randint(0, entry.classes, (cfg.batch_size,))
    amp = training_precision(cfg) == "bf16"
    times = []
    for _ in range(2):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            train_step(method, ctx, x, y, opt)
        times.append(time.perf_counter() - t)
    return times[-1] / cfg.batch_size


def eval_seconds(cfg, entry, threads: int) -> dict[str, float]:
    """Seconds per image of each final-evaluation pass and of one validation pass (fp32)."""
    from smaraad.models import build_model

    torch.set_num_threads(threads)
    model = build_model(cfg.student, num_classes=entry.classes, channels=entry.channels).eval()
    data = (torch.randint(0, 256, (PROBE, entry.channels, entry.image_size, entry.image_size),
                          dtype=torch.uint8), torch.randint(0, entry.classes, (PROBE,)))
    eps = from_255(cfg.eps_255)
    table = attack_table(eps=eps, seed=0)
    attacks = {name: table[name] for name in EVAL_PASSES}
    attacks["pgd50_masking"] = lambda m, x, y: pgd(m, x, y, eps=eps, step=eps / 4, steps=50)
    attacks["val"] = lambda m, x, y: pgd(m, x, y, eps=eps, step=eps / 4, steps=cfg.val_pgd_steps)
    out = {}
    for name, attack in attacks.items():
        t = time.perf_counter()
        accuracy(model, data, attack=attack)
        out[name] = (time.perf_counter() - t) / PROBE
    out["val"] += out["clean"]  # validation is clean + PGD
    return out


def aa_seconds(path: str | None, cfg, entry, threads: int, n: int = 20) -> tuple[float, str]:
    """AutoAttack seconds per image: timed on a trained checkpoint's test images, else the stated
    figure (at 2 threads; one thread assumed 1.6x slower)."""
    if not path:
        return AA_S_PER_IMAGE * (1.6 if threads == 1 else 1.0), \
            f"{AA_S_PER_IMAGE} s/image (stated figure; pass --aa-model to measure)"
    from smaraad.data import load_data
    from smaraad.evaluation import evaluate_suite
    from smaraad.models import load_checkpoint

    torch.set_num_threads(threads)
    model = load_checkpoint(path)
    test = load_data(entry.name, val_size=0, n_train=2).test
    t = time.perf_counter()
    r = evaluate_suite(model, test, attacks=("aa",), eps=from_255(cfg.eps_255), n=n, seed=0,
                       check_masking=False)
    s = (time.perf_counter() - t) / n
    return s, f"{s:.2f} s/image measured on {path} ({r['test/aa_acc']:.2f} robust, n={n})"


def estimate(space_name: str, budget: float, data_name: str, aa_model: str | None,
             log=print) -> float:
    space = load_space(space_name, data_name)
    entry = dataset(data_name)
    seeds = len(space.seeds)
    variants = [{k: v for k, v in var.items() if not (k == TEACHER_KEY and space.teachers)}
                for var in space.variants]
    configs = [preset_config({"dataset": data_name, **space.base, **v}) for v in variants]
    first = configs[0]
    images = (first.train_size or entry.train_images)
    val = int(first.val_size) if first.val_size >= 1 else round(first.val_size * images)
    images -= val
    val = min(val, first.val_max or val)
    eval_n = space.eval_n or entry.test_images
    aa_n = space.aa_n if space.aa_n is not None else entry.aa_n
    aa_n = min(aa_n or eval_n, eval_n)
    per_image = {}
    for cfg in configs:
        if cfg.method not in per_image:
            per_image[cfg.method] = step_seconds(cfg.method, cfg, cfg.teacher_arch, entry,
                                                 threads=1)
    ev = eval_seconds(first, entry, threads=1)
    aa_s, aa_note = aa_seconds(aa_model, first, entry, threads=1)
    trial_eval = sum(ev[p] for p in EVAL_PASSES) * eval_n + ev["pgd50_masking"] * min(256, eval_n) \
        + aa_s * aa_n
    trials = [per_image[c.method] * images * c.epochs + ev["val"] * val * c.epochs + trial_eval
              for c in configs for _ in range(seeds)]
    teacher_cfg = preset_config({"dataset": data_name, "method": "pgd_at",
                                 "student": first.teacher_arch})
    teacher_s = step_seconds("pgd_at", teacher_cfg, None, entry, threads=2) * images
    specs = [t.fields for t in space.teachers.values() if t.kind == "recipe"] or [{}]
    teacher_epochs = sum(t.get("epochs", teacher_cfg.epochs) for t in specs) / len(specs)
    n_teachers = len(specs)
    teachers = n_teachers * (teacher_s + ev["val"] / 2 * val) * teacher_epochs
    wall = RAY_START_S + teachers + sum(trials) / CONCURRENCY
    log(f"\n{space_name} on {data_name}: {len(trials)} trials ({len(configs)} variants x {seeds} "
        f"seeds), {images} training images x {first.epochs} epochs, student {first.student}, "
        f"teacher {first.teacher_arch}, {first.attack_steps}-step attack, eval n={eval_n}, AA n={aa_n}")
    for method, s in per_image.items():
        log(f"  training step {method:<11} {s * 1e3:7.2f} ms/image (1 thread)")
    log(f"  validation {ev['val'] * 1e3:.2f} ms/image; final evaluation "
        + ", ".join(f"{p} {ev[p] * 1e3:.2f}" for p in EVAL_PASSES)
        + f" ms/image; AutoAttack {aa_note}")
    log(f"  teachers: {n_teachers} x {teacher_epochs} epochs = {teachers / 60:.1f} min (2 threads)")
    log(f"  trials: {sum(trials) / 60:.1f} core-min, {CONCURRENCY} at a time; mean trial "
        f"{sum(trials) / len(trials) / 60:.2f} min (evaluation {trial_eval / 60:.2f})")
    verdict = "within" if wall <= budget else "OVER"
    log(f"  estimated wall {wall / 60:.1f} min against a budget of {budget / 60:.0f} min: {verdict}")
    return wall


def run_campaign(space_name: str, budget: float | None, data_name: str, keep_cache: bool,
                 out: str | None = None, results: str | None = None, log=print) -> float:
    """Run the campaign and time it. With `out`, its Ray storage, MLflow store, teacher cache and
    report are kept there (the results a campaign is run for), a campaign already started there
    resumes (`--resume`), and every run of it, stopped ones included (SIGINT, SIGTERM), is listed
    in `out/<name>.runs.json` with its machine, commit and wall time: the campaign's wall time is
    their sum. With `results` too, the report and that list go to `results/<campaign>/`."""
    with tempfile.TemporaryDirectory(prefix="bench-campaign-") as tmp:
        root = Path(out).resolve() if out else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        name = f"bench-{space_name}"
        resume = (root / "ray" / name).exists()
        cache = root / "cache" if out else root
        env = dict(os.environ, **({} if keep_cache else {"SMARAAD_CACHE": str(cache)}))
        command = "orchestrator.tune" if load_space(space_name).kind == "tune" else \
            "orchestrator.ablate"
        cmd = [sys.executable, "-m", command, "--space", space_name, "--dataset",
               data_name, "--storage-path", str(root / "ray"), "--tracking-uri",
               f"sqlite:///{root}/mlflow.db", "--name", name]
        cmd += ["--resume"] if resume else []
        cmd += [] if out else ["--no-report"]
        run = {"campaign": space_name, "dataset": data_name,
               "command": " ".join(["python", "-m", *cmd[2:]]), "budget_s": budget,
               "resumed": resume, "load_at_start": round(os.getloadavg()[0], 2),
               "started": utc_now(), **machine()}  # the code as it starts
        ledger = root / f"{name}.runs.json"
        t = time.perf_counter()
        status = "stopped"
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the finally below
        try:
            subprocess.run(cmd, env=env, check=True, cwd=root if out else None)
            status = "finished"
        finally:
            wall = time.perf_counter() - t
            if out:
                record_run(ledger, {**run, "wall_s": round(wall, 1), "status": status,
                                    "ended": utc_now()})
    total = sum(r["wall_s"] for r in json.loads(ledger.read_text())) if out else wall
    verdict = ("no budget" if budget is None else
               f"against {budget / 60:.0f} min: {'within' if total <= budget else 'OVER'}")
    log(f"{space_name} on {data_name}: measured wall {total / 60:.1f} min {verdict}"
        + (f" ({wall / 60:.1f} min in this run, the rest in earlier ones)" if resume else ""))
    if results:
        keep_results(root / "reports" / name, Path(results) / space_name, ledger)
    return total


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def record_run(ledger: Path, run: dict) -> None:
    """Append one run of a campaign to its list."""
    runs = json.loads(ledger.read_text()) if ledger.exists() else []
    ledger.write_text(json.dumps([*runs, run], indent=2) + "\n")


def machine() -> dict:
    """What a campaign's figures were measured on."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 platform.machine()) if Path("/proc/cpuinfo").exists() else platform.machine()
    return {"cpu": model, "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "commit": commit}


def keep_results(report: Path, dest: Path, ledger: Path) -> None:
    """Copy a campaign's report (tables, statistics, verdicts, the community formats) to `dest`
    and its runs (each with its machine, commit and wall time; a campaign spread over several
    runs lists each) to `dest/campaign.json`."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(report, dest, dirs_exist_ok=True)
    runs = json.loads(ledger.read_text())
    total = round(sum(r["wall_s"] for r in runs), 1)
    (dest / "campaign.json").write_text(json.dumps({"runs": runs, "wall_s": total}, indent=2)
                                        + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--campaigns", default=",".join(c for c, _ in CAMPAIGNS),
                   help=f"of {', '.join([c for c, _ in CAMPAIGNS] + list(TUNES))} (the tune only "
                        "with --run)")
    p.add_argument("--aa-model", help="a trained checkpoint to time AutoAttack on")
    p.add_argument("--run", action="store_true", help="run each campaign and time it")
    p.add_argument("--keep-cache", action="store_true", help="with --run: reuse cached teachers")
    p.add_argument("--out", help="with --run: keep each campaign's stores here, resuming it")
    p.add_argument("--results", help="with --out: copy each report and a record of the run here "
                   "(e.g. docs/results/fashion_mnist)")
    args = p.parse_args()
    if args.results and not (args.run and args.out):
        p.error("--results needs --run and --out (the report and the runs it copies live there)")
    wanted = [c.strip() for c in args.campaigns.split(",") if c.strip()]
    known = [c for c, _ in CAMPAIGNS] + list(TUNES)
    unknown = [c for c in wanted if c not in known]
    if unknown or not wanted:
        p.error(f"--campaigns: unknown {unknown[0] if unknown else '(none)'!r}; allowed: "
                f"{', '.join(known)}")
    if not args.run and any(c in TUNES for c in wanted):
        p.error("--campaigns: a tune has no estimate; run it with --run")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, load average {load:.1f} at start")
    for name, budget in (*CAMPAIGNS, *((t, None) for t in TUNES)):
        if name in wanted:
            (run_campaign(name, budget, args.dataset, args.keep_cache, args.out,
                          args.results) if args.run
             else estimate(name, budget, args.dataset, args.aa_model))


if __name__ == "__main__":
    main()
