"""Writes tests/fixtures/golden_losses.json: every registered method's loss terms on fixed inputs.

Run by hand, and only when a change of some method's loss is intended (say which in the commit):

    PYTHONPATH=. python tests/make_golden.py

tests/test_baselines.py reads the fixture and never writes it; a method missing from it fails.
The setup below (`run`) is shared with the tests so the writer and the reader cannot drift apart:
fresh models from fixed seeds (small_cnn student, small_resnet teachers), 8 fixed 16x16 images,
PGD with 2 steps at eps 8/255, step 2/255, epoch 6 of 10 (IAD's introspection term is on).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from smaraad.methods import METHODS, Context
from smaraad.models import build_model

FIXTURE = Path(__file__).parent / "fixtures" / "golden_losses.json"
EPOCH, EPOCHS = 6, 10
SECOND_STEP = {"mtard": "mtard@step2"}  # extra keys: methods whose state moves between steps


def models():
    """(student in train mode, adversarial teacher, natural teacher), each from its own seed."""
    torch.manual_seed(0)
    student = build_model("small_cnn", num_classes=10).train()
    torch.manual_seed(1)
    teacher = build_model("small_resnet", num_classes=10).eval().requires_grad_(False)
    torch.manual_seed(2)
    natural = build_model("small_resnet", num_classes=10).eval().requires_grad_(False)
    return student, teacher, natural


def batch(seed: int, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def run(name: str, *, calls: int = 1, epoch: int = EPOCH, epochs: int = EPOCHS, **params):
    """Evaluate method `name` on fresh models: `calls` losses on batches 0, 1, ... sharing one
    Context (no optimiser step between them). Returns (last terms, student, ctx)."""
    spec = METHODS[name]
    student, teacher, natural = models()
    ctx = Context(student=student, teacher=teacher if spec.needs_teacher else None,
                  natural_teacher=natural if spec.needs_natural_teacher else None,
                  params=spec.make_params(params), eps=8 / 255, step=2 / 255, steps=2,
                  epoch=epoch, epochs=epochs)
    torch.manual_seed(3)  # the attacks' random starts
    terms = {}
    for i in range(calls):
        x, y = batch(i)
        terms = spec.loss(ctx, x, y)
    return terms, student, ctx


def as_floats(terms) -> dict[str, float]:
    return {k: float(v.item()) for k, v in sorted(terms.items())}


def golden() -> dict[str, dict[str, float]]:
    out = {name: as_floats(run(name)[0]) for name in sorted(METHODS)}
    for name, key in SECOND_STEP.items():
        out[key] = as_floats(run(name, calls=2)[0])
    return out


if __name__ == "__main__":
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    data = {"_about": f"written by tests/make_golden.py with torch {torch.__version__}; "
                      "compared by tests/test_baselines.py with rtol 1e-4",
            "terms": golden()}
    FIXTURE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(data['terms'])} entries to {FIXTURE}")
