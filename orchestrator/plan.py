"""`--plan`: what an experiment will cost, printed before anything is trained or downloaded.

Runs after the inputs are validated and before the teacher, the data or Ray: it needs neither
the data on disk nor a teacher. Per method of the experiment it counts one real training step's
FLOPs per image (smaraad/cost.py, on fake tensors of the data set's shape), multiplies by
training images x epochs x trials, and turns the total into wall time on named GPUs at a stated
utilisation; it measures one real fp32 step on this CPU (CPU_BATCH images, one attack step)
and states the whole step's time at the FLOP rate measured.

Counted: training steps only. Per-epoch validation (PGD on the held-out split) and the final
evaluation (AutoAttack) come on top. A tune's total is an upper bound: ASHA stops trials early,
and searched values that change the passes (alpha < 1 adds the clean terms) are counted at the
paper's point.
"""

from __future__ import annotations

import dataclasses

import torch

from smaraad.cost import cpu_step_seconds, step_flops
from smaraad.data.registry import dataset
from trainables.driver import Experiment
from trainables.points import point_config

UTILISATION = 0.40   # of the dense peak: what well-fed convolutional training typically sustains
CPU_BATCH = 2        # images in the measured CPU step
MEASURED_ATTACK_STEPS = 1  # the measured CPU step's attack: the whole attack of a WRN-34-10
#                            teacher takes minutes on a laptop; its FLOP rate carries over

# Dense peaks in TFLOP/s (no structured sparsity), from NVIDIA's data sheets: H100 SXM5 (H100
# Tensor Core GPU datasheet): FP32 67, TF32 tensor 494.7, BF16 tensor 989.4; A100 SXM4 (A100
# datasheet): FP32 19.5, TF32 156, BF16 312; H200 SXM (H200 datasheet): the H100 SXM's compute
# (FP32 67, TF32 494.7, BF16 989.4; it differs in memory: 141 GB HBM3e at 4.8 TB/s). "fp32" is the
# CUDA cores' rate; PyTorch runs fp32 convolutions on TF32 tensor cores by default
# (torch.backends.cudnn.allow_tf32 = True), so a fp32 run sits between the two columns.
# The PCIe and NVL cards run the same chips at lower clocks and power: H100 PCIe (datasheet: FP32
# 51, TF32 756 and BF16 1,513 with sparsity, halved here), H100 NVL and H200 NVL (FP32 60, TF32
# 835 and BF16 1,671 with sparsity), A100 PCIe (the A100 SXM's figures).
GPU_PEAKS = {
    "H100 SXM": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
    "A100 SXM": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
    "H200 SXM": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
    "A100 PCIe": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
}


def gpu_model(device_name: str) -> str | None:
    """The GPU_PEAKS entry of a CUDA device name (torch.cuda.get_device_name: "NVIDIA H100 80GB
    HBM3" is the SXM part, "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200",
    "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"), or None where the name does not say which
    part it is: a fraction of the wrong part's peak would misstate the utilisation."""
    name = device_name.upper()
    for chip in ("H100", "H200", "A100"):
        if chip not in name:
            continue
        if "NVL" in name:
            variant = "NVL"
        elif "PCIE" in name:
            variant = "PCIe"
        elif "SXM" in name or "HBM3" in name or chip == "H200":  # H200: SXM unless named NVL
            variant = "SXM"
        else:
            return None
        model = f"{chip} {variant}"
        return model if model in GPU_PEAKS else None
    return None


def train_images(cfg) -> int:
    """Images one epoch trains on: the training set (capped by train_size) less validation,
    as smaraad.data splits it."""
    n = dataset(cfg.dataset).train_images
    if cfg.train_size:
        n = min(n, cfg.train_size)
    val = int(cfg.val_size) if cfg.val_size >= 1 else round(cfg.val_size * n)
    return n - val


def shape(cfg) -> tuple[int, int, int]:
    """(image side, classes, channels) of the data set, known without its files."""
    entry = dataset(cfg.dataset)
    return entry.image_size, entry.classes, entry.channels


def teacher_arch(cfg, spec) -> str:
    """The teacher a run will use: our checkpoint's own arch when the (first) teacher spec names
    one, else the architecture a recipe trains or a teacher file is imported into."""
    if spec is not None and spec.kind == "path":
        from smaraad.models import CheckpointError, read_checkpoint
        try:
            return read_checkpoint(spec.path)["arch"]
        except (CheckpointError, KeyError, TypeError):
            pass
    if spec is not None and spec.kind == "recipe":
        return spec.fields.get("arch", cfg.teacher_arch)
    return cfg.teacher_arch


def fmt_hours(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:.3g} h" if h < 48 else f"{h / 24:.3g} d"


def print_plan(exp: Experiment, *, runs_per_variant: int, label: str, log=print) -> int:
    """Print the plan of an experiment that `resolve` validated; return 0."""
    variants = exp.variants
    configs = [point_config(exp.configs, v, exp.teachers) for v in (variants or [{}])]
    key = next(iter(variants[0]), None) if variants else None
    trials = len(configs) * runs_per_variant
    epochs = configs[0].epochs
    first = configs[0]
    size, classes, channels = shape(first)
    images = train_images(first)
    teacher = teacher_arch(first, next(iter(exp.teachers.values()), None))
    log(f"plan: {label} on {first.dataset} ({images} training images per epoch, "
        f"{channels}x{size}x{size}, {classes} classes), student {first.student}, teacher {teacher}")
    log(f"trials x epochs: {trials} x {epochs} = {trials * epochs} trial-epochs")
    total, per_image = 0.0, {}
    for cfg, v in zip(configs, variants or [{}]):
        name = cfg.method if key in (None, "method") else f"{cfg.method}[{key}={v[key]}]"
        flops = step_flops(cfg.method, cfg.student, teacher, num_classes=classes, image_size=size,
                           channels=channels, steps=cfg.attack_steps, eps_255=cfg.eps_255, step_255=cfg.step_255,
                           epochs=cfg.epochs, params=_params(cfg))
        per_image[name] = flops
        log(f"step FLOP per image: {name} {flops:.2e}")
        total += flops * images * cfg.epochs * runs_per_variant
    log(f"total: {total:.3g} FLOP (step FLOP per image x {images} images x {epochs} epochs x "
        f"{runs_per_variant} run(s) of each of {len(configs)} configuration(s); training steps "
        "only: validation and the final evaluation come on top)")
    log(f"wall time at {UTILISATION:.0%} of the dense peak, one GPU, trials one after another:")
    precisions = ("fp32", "tf32", "bf16")
    log("  " + f"{'GPU':<10}" + "".join(f"{p:>12}" for p in precisions))
    for gpu, peaks in GPU_PEAKS.items():
        cells = [fmt_hours(total / (peaks[p] * 1e12 * UTILISATION)) for p in precisions]
        log("  " + f"{gpu:<10}" + "".join(f"{c:>12}" for c in cells))
    name = next(iter(per_image))
    measured = min(first.attack_steps, MEASURED_ATTACK_STEPS)
    kw = dict(num_classes=classes, image_size=size, channels=channels, steps=measured, eps_255=first.eps_255,
              step_255=first.step_255, epochs=first.epochs, params=_params(first))
    log(f"measuring one real fp32 step of {name} with {measured} attack step(s) on this CPU "
        f"({CPU_BATCH} images, {torch.get_num_threads()} threads)...")
    seconds = cpu_step_seconds(first.method, first.student, teacher, batch=CPU_BATCH, **kw)
    rate = step_flops(first.method, first.student, teacher, **kw) * CPU_BATCH / seconds
    full = per_image[name] * CPU_BATCH / rate
    log(f"CPU step: {seconds:.3g} s measured ({rate / 1e9:.3g} GFLOP/s); the full step "
        f"({first.attack_steps} attack steps) at that rate: {full:.3g} s for {CPU_BATCH} images, "
        f"one epoch {fmt_hours(full / CPU_BATCH * images)}")
    return 0


def _params(cfg) -> dict:
    return dataclasses.asdict(cfg.params)
