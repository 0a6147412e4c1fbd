"""Writes tests/fixtures/golden_losses.json: every registered method's loss terms on fixed inputs.

Adding a method: register it in smaraad/methods/__init__.py, run

    PYTHONPATH=. python tests/make_golden.py

and commit the fixture with the method (test_golden_loss covers every registered name; one with no
entry fails). The writer keeps no list of methods; SECOND_STEP is only for a method whose state
moves between steps. Cast logits with smaraad.losses.at_least_fp32, never `.float()`: `.float()`
lowers this float64 computation to fp32 and the value stops being portable across CPUs.
Rewrite the fixture only when a change of some method's loss is intended (say which in the commit);
tests/test_baselines.py reads it and never writes it.

The setup below (`run`) is shared with the tests so the writer and the reader cannot drift apart:
small_cnn student and small_resnet teachers, 8 fixed 16x16 images, PGD with 2 steps at eps 8/255,
step 2/255, epoch 6 of 10 (IAD's introspection term is on). Everything is float64 and every
weight comes from `torch.rand` (see `portable`), so x' and the losses are the same on any CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from smaraad.config import TrainConfig
from smaraad.methods import METHODS, Context
from smaraad.models import build_model

FIXTURE = Path(__file__).parent / "fixtures" / "golden_losses.json"
EPOCH, EPOCHS = 6, 10
SECOND_STEP = {"mtard": "mtard@step2"}  # extra keys: methods whose state moves between steps
VARIANTS = {"las_at@policy": ("las_at", {"interval": 1})}  # extra keys: a setting's own path
DATA = SimpleNamespace(num_classes=10, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), center=False)
RTOL, ATOL = 1e-9, 1e-15  # float64 summation-order noise is ~1e-15; one flipped sign step ~1e-7


def portable(model: nn.Module, seed: int) -> nn.Module:
    """`model` in float64 with every conv and linear weight and bias redrawn as U(-b, b),
    b = 1/sqrt(fan_in) (torch's default bound), from float64 `torch.rand`.

    torch's own init (`uniform_(-b, b)`) rounds differently with and without FMA: the same seed
    gives weights that differ in the last bit between AVX-512, AVX2 and plain kernels, which a few
    sign steps later is a different x'. `torch.rand` draws the same bits everywhere, and the affine
    map below is two correctly rounded operations. Batch-norm weights stay exactly 1 and 0.
    """
    g = torch.Generator().manual_seed(seed)
    model = model.double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64)
                                .mul_(2.0).sub_(1.0).mul_(bound))
    return model


def models():
    """(student in train mode, adversarial teacher, natural teacher), each from its own seed."""
    student = portable(build_model("small_cnn", num_classes=10), 0).train()
    teacher = portable(build_model("small_resnet", num_classes=10), 1).eval().requires_grad_(False)
    natural = portable(build_model("small_resnet", num_classes=10), 2).eval().requires_grad_(False)
    return student, teacher, natural


def batch(seed: int, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 10, (n,), generator=g)


def run(name: str, *, calls: int = 1, epoch: int = EPOCH, epochs: int = EPOCHS, **params):
    """Evaluate method `name` on fresh models: `calls` losses on batches 0, 1, ... sharing one
    Context (no optimiser step between them). Returns (last terms, student, ctx)."""
    spec = METHODS[name]
    student, teacher, natural = models()
    cfg = TrainConfig.from_flat({"method": name, "student": "small_cnn", "epochs": epochs,
                                 **params})
    aux = spec.aux(cfg, DATA) if spec.aux else {}  # a method's own networks (PeerAiD, LAS-AT)
    for seed, net in enumerate(aux.values(), start=4):
        portable(net.module, seed).train()
    ctx = Context(student=student, teacher=teacher if spec.needs_teacher else None,
                  natural_teacher=natural if spec.needs_natural_teacher else None,
                  params=cfg.params, eps=8 / 255, step=2 / 255, steps=2,
                  epoch=epoch, epochs=epochs, aux=aux,
                  student_optimizer=torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9,
                                                    weight_decay=5e-4))
    torch.manual_seed(3)  # the attacks' random starts
    terms = {}
    for i in range(calls):
        x, y = batch(i)
        terms = spec.loss(ctx, x, y)
    return terms, student, ctx


def as_floats(terms) -> dict[str, float]:
    return {k: float(v.item()) for k, v in sorted(terms.items())}


def golden() -> dict[str, dict[str, float]]:
    out = {}
    for name in sorted(METHODS):
        terms = run(name)[0]
        lowered = sorted(k for k, v in terms.items() if v.dtype != torch.float64)
        assert not lowered, f"{name}: terms {lowered} left float64 (a `.float()` in the loss?)"
        out[name] = as_floats(terms)
    for name, key in SECOND_STEP.items():
        out[key] = as_floats(run(name, calls=2)[0])
    for key, (name, params) in VARIANTS.items():
        out[key] = as_floats(run(name, **params)[0])
    return out


if __name__ == "__main__":
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    data = {"_about": f"written by tests/make_golden.py with torch {torch.__version__}, float64; "
                      f"compared by tests/test_baselines.py with rtol {RTOL:g}, atol {ATOL:g}",
            "terms": golden()}
    FIXTURE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(data['terms'])} entries to {FIXTURE}")
