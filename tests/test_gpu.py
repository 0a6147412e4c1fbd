"""The CUDA path: bf16 autocast, channels_last, BatchNorm folding, fractional GPUs, AutoAttack on
the GPU and the loader feeding it. The CUDA cases are marked `gpu` (selected with `-m gpu`,
skipped where no GPU is visible); every test that does not compare devices also runs on the CPU,
in the normal suite.

Numerical comparisons switch TF32 off (PyTorch runs fp32 convolutions on TF32 tensor cores by
default), so "fp32" means fp32 and a difference is the one under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from smaraad.models import MODELS

GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                            reason="needs CUDA: torch.cuda.is_available() is False here")]
DEVICES = ["cpu", pytest.param("cuda", marks=GPU)]
ROOT = Path(__file__).resolve().parent.parent
STEPS = {"cuda": 30, "cpu": 12}  # training steps compared between fp32 and bf16 (CPUs without
#                                 bf16 hardware emulate it, ~10x slower)
TUNE_TIMEOUT_S = 240  # the quarter-GPU tune; below gpu_check's pytest part (benchmarks/gpu_check.py)


@pytest.fixture(autouse=True)
def strict_fp32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    # (flags only: setting them initialises no CUDA, so the CPU cases run on any machine)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def train_losses(device: str, *, bf16: bool = False, channels_last: bool = False,
                 steps: int = 0, method: str = "smaraad_pp"):
    """`steps` (0: STEPS of the device) SGD steps of `method` (small_cnn <- small_resnet, 16x16,
    64 images a batch, 3 attack steps) on fixed random batches: (the loss of every step, the
    trained student)."""
    from smaraad.cost import make_context
    from smaraad.methods import METHODS
    from smaraad.models import fold_batchnorm

    torch.manual_seed(0)
    ctx = make_context(method, "small_cnn", "small_resnet", num_classes=10, steps=3,
                       step_255=4.0, params={"gamma": 1.0, "rho_form": "pearson"})
    memory = torch.channels_last if channels_last else torch.contiguous_format
    ctx.student.to(device, memory_format=memory)
    ctx.teacher = fold_batchnorm(ctx.teacher.to(device)).to(memory_format=memory)
    opt = torch.optim.SGD(ctx.student.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    data = [(torch.rand(64, 3, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g))
            for _ in range(4)]
    losses = []
    for i in range(steps or STEPS[torch.device(device).type]):
        x, y = (t.to(device) for t in data[i % len(data)])
        torch.manual_seed(100 + i)  # the same attack start in both runs of a comparison
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                            enabled=bf16):
            terms = METHODS[method].loss(ctx, x, y)
        loss = torch.stack(list(terms.values())).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, ctx.student


def relative_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(y), 1e-6) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_training_stays_close_to_fp32(device):
    fp32, _ = train_losses(device)
    bf16, _ = train_losses(device, bf16=True)
    assert torch.isfinite(torch.tensor(bf16)).all()
    assert relative_gap(bf16, fp32) < 0.05, (bf16, fp32)
    assert fp32[-1] < fp32[0] and bf16[-1] < bf16[0]  # both learn


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_gives_the_same_result(device):
    steps = 10 if device == "cuda" else 4
    plain, a = train_losses(device, steps=steps)
    last, b = train_losses(device, steps=steps, channels_last=True)
    assert relative_gap(last, plain) < 1e-3, (last, plain)
    x = torch.rand(8, 3, 16, 16, device=device)
    torch.testing.assert_close(b.eval()(x.contiguous(memory_format=torch.channels_last)),
                               a.eval()(x), rtol=1e-2, atol=1e-3)


def foldable(model: torch.nn.Module) -> int:
    """BatchNorms that can fold: registered right after a conv of their width whose output they
    take (post-activation conv -> BN). A pre-activation block's BN before its conv (BN -> ReLU
    -> conv, as in WideResNet) keeps its statistics: nothing before it to fold into."""
    count = 0
    for parent in model.modules():
        kids = list(parent.children())
        count += sum(isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.BatchNorm2d)
                     and a.out_channels == b.num_features for a, b in zip(kids, kids[1:]))
    return count


def norms(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_fold_batchnorm_folds_what_can_fold_and_keeps_the_function(arch, device):
    from smaraad.models import build_model, fold_batchnorm

    torch.manual_seed(0)
    model = build_model(arch).to(device)
    with torch.no_grad():  # running statistics as after training: not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    before = norms(model)
    folded = fold_batchnorm(model)
    assert foldable(model) > 0
    assert norms(folded) == before - foldable(model)  # every foldable one, and no other
    assert norms(model) == before  # the caller's model is left intact
    assert all(p.device.type == device for p in folded.parameters())
    x = torch.rand(4, 3, 32, 32, device=device)
    with torch.no_grad():
        (za, fa), (zb, fb) = model.forward_features(x), folded.forward_features(x)
    torch.testing.assert_close(zb, za, rtol=1e-4, atol=1e-4 * za.abs().max().item())
    torch.testing.assert_close(fb, fa, rtol=1e-4, atol=1e-4 * fa.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
def test_loader_batches_are_the_same_bits_wherever_the_training_set_is_kept(device):
    from smaraad.data import BatchLoader

    g = torch.Generator().manual_seed(0)
    data = (torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (300,), generator=g))

    def epochs(where, resident):
        loader = BatchLoader(data, 64, shuffle=True, augment=True, device=where,
                             generator=torch.Generator().manual_seed(5), resident=resident)
        return loader, [(x.cpu(), y.cpu()) for _ in range(2) for x, y in loader]

    kept_loader, kept = epochs(device, None if device == "cuda" else True)
    assert kept_loader.resident and kept_loader.images.device.type == device
    copied_loader, copied = epochs(device, False)
    assert copied_loader.pin == (device == "cuda") and not copied_loader.images.is_cuda
    _, host = epochs("cpu", False)
    for (xa, ya), (xb, yb), (xc, yc) in zip(kept, copied, host, strict=True):
        assert torch.equal(xa, xc) and torch.equal(xb, xc)
        assert torch.equal(ya, yc) and torch.equal(yb, yc)
        exact = ((xc * 255).round().double() / 255).float()  # each value k / 255, rounded once
        assert torch.equal(xc, exact)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares CUDA with the CPU")
def test_autoattack_on_cuda_matches_the_cpu():
    """The same briefly trained model, 64 images, seed 0: per-image verdicts may differ only at
    the decision boundary. APGD and Square draw their random starts on the attack's device (CUDA's
    Philox stream is not the CPU's Mersenne Twister for the same seed) and the GPU sums in another
    order, so an image robust by a hair on one device can fall on the other. Allowed: the
    robust counts differ by at most 2 of 64 (3 pp) and the clean predictions agree exactly."""
    from smaraad.autoattack import autoattack
    from smaraad.config import preset_config
    from smaraad.data import load_data
    from smaraad.trainer import fit

    cfg = preset_config({"dataset": "embedded", "method": "pgd_at",  # the preset: 8 epochs
                         "train_size": 1500, "device": "cuda", "precision": "fp32"})
    model, _ = fit(cfg, log=None)
    splits = load_data("embedded", n_train=1500)
    x = splits.test[0][:64].float() / 255
    y = splits.test[1][:64]
    verdicts = {}
    for device in ("cuda", "cpu"):
        m = model.to(device).eval()
        with torch.no_grad():
            clean = m(x.to(device)).argmax(1).cpu()
        x_adv = autoattack(m, x.to(device), y.to(device), seed=0)
        with torch.no_grad():
            verdicts[device] = (clean, (m(x_adv).argmax(1).cpu() == y))
    assert torch.equal(verdicts["cuda"][0], verdicts["cpu"][0])
    robust = {d: int(v[1].sum()) for d, v in verdicts.items()}
    assert robust["cpu"] > 0, "a model with no robust image would make the comparison vacuous"
    assert abs(robust["cuda"] - robust["cpu"]) <= 2, robust


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="shares a GPU")
def test_four_trials_share_one_gpu_at_a_quarter_each(tmp_path):
    """A real tune on the embedded data: four trials at --gpus-per-trial 0.25 are all running at
    one moment (each trial's MLflow run spans its training and evaluation)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    cmd = [sys.executable, "-m", "orchestrator.tune", "--space", "gamma_alpha", "--smoke-test",
           "--num-samples", "4", "--epochs", "3", "--gpus-per-trial", "0.25",
           "--cpus-per-trial", "1", "--max-concurrent", "4", "--name", "quarter",
           "--tracking-uri", f"sqlite:///{db}", "--storage-path", str(tmp_path / "ray"),
           "--no-report", "--aa-n", "16"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TUNE_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    c = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = c.search_runs([c.get_experiment_by_name("quarter").experiment_id])
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    last_start = max(r.info.start_time for r in trials)
    first_end = min(r.info.end_time for r in trials)
    assert last_start < first_end, "the four trials did not run at the same time"
