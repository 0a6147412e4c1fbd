"""Methods that own auxiliary networks (PeerAiD's peer, LAS-AT's strategy network): they train,
are saved and resumed with their optimiser state, are excluded from evaluation; and the pieces
of PeerAiD, LAS-AT and IGDM that the registry-wide tests do not reach."""

import pytest
import torch

from smaraad.config import preset_config
from smaraad.data import load_data
from smaraad.methods import METHODS, Context
from smaraad.methods.igdm import igdm_weight
from smaraad.methods.las_at import budgets, policy_attack, smoothed_ce
from smaraad.models import build_model
from smaraad.trainer import fit

AUX_METHODS = sorted(n for n, spec in METHODS.items() if spec.aux)
# Tiny fp32 CPU runs: 2 epochs of 2 steps; LAS-AT updates its policy every step, and its policy
# lr decays at the epoch where the run is resumed.
TINY = {"epochs": 2, "train_size": 240, "val_size": 40, "batch_size": 100, "attack_steps": 1,
        "val_pgd_steps": 1, "precision": "fp32", "channels_last": False, "device": "cpu"}
PARAMS = {"las_at": {"interval": 1, "steps_choices": [1, 2], "reward_steps": 1,
                     "reward_restarts": 1, "policy_lr": 0.05, "policy_lr_at": [0.5]}}


@pytest.fixture(scope="module")
def data():
    return load_data("embedded", val_size=40, n_train=240)


def config(name, **changes):
    return preset_config({"method": name, **TINY, **PARAMS.get(name, {}), **changes})


def weights(module):
    return clone(module.state_dict())


def clone(state_dict):
    return {k: v.clone() for k, v in state_dict.items()}


def test_the_aux_methods_are_registered():
    assert AUX_METHODS == ["las_at", "peeraid"]


@pytest.mark.parametrize("name", AUX_METHODS)
def test_a_resumed_run_continues_with_its_auxiliary_network_and_optimiser(name, data, tmp_path):
    """2 epochs straight vs killed after epoch 1 and resumed from the state on disk (loaded with
    weights_only=True): the same student and auxiliary weights, bit for bit."""
    cfg = config(name)
    final, last = {}, {}

    def report(metrics, state):
        if metrics["epoch"] == 1:
            torch.save(state, tmp_path / "state.pt")
        if metrics["epoch"] == cfg.epochs:
            final.update({k: clone(v["model"]) for k, v in state["aux"].items()})
            last.update(metrics)

    straight, _ = fit(cfg, data=data, log=None, report=report)
    straight_aux, final = dict(final), {}
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert set(state["aux"]) == set(straight_aux)
    for saved in state["aux"].values():
        assert {"model", "optimizer", "scheduler"} <= set(saved)
    resumed, _ = fit(cfg, data=data, log=None, resume=state,
                     report=lambda m, s: final.update(
                         {k: clone(v["model"]) for k, v in s["aux"].items()}))

    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"student {k}"
    moved = False
    for net, params in straight_aux.items():
        for k, a in params.items():
            assert torch.equal(a, final[net][k]), f"{net} {k}"
            moved |= not torch.equal(a, state["aux"][net]["model"][k])
    assert moved, "the auxiliary network must train after the resume"
    check_logged_apart(last)


def check_logged_apart(metrics):
    """Auxiliary terms are logged as train/<aux>/loss_<term>, outside train/loss."""
    aux_keys = [k for k in metrics if k.startswith("train/") and k.count("/") == 2]
    assert aux_keys and all("/loss_" in k for k in aux_keys)
    student = sum(v for k, v in metrics.items() if k.startswith("train/loss_"))
    assert metrics["train/loss"] == pytest.approx(student, rel=1e-5)


def test_the_strategy_network_learns_from_its_reward(data):
    cfg = config("las_at")
    torch.manual_seed(0)
    student = build_model("small_cnn", num_classes=10, center=True)
    aux = METHODS["las_at"].aux(cfg, data)
    ctx = Context(student=student, teacher=None, params=cfg.params, eps=8 / 255, step=2 / 255,
                  steps=1, aux=aux, student_optimizer=torch.optim.SGD(student.parameters(), 0.1))
    before = weights(aux["strategy"].module)
    x, y = data.train[0][:16].float() / 255, data.train[1][:16]
    terms = METHODS["las_at"].loss(ctx, x, y)
    assert ctx.state["las_at/step"] == 1 and ctx.state["las_at/reward"] > 0
    assert not any(v.requires_grad for k, v in terms.items() if "/" in k)  # logging only
    after = aux["strategy"].module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in student.parameters()), "the reward's step is on a copy"


def test_the_policy_attack_keeps_each_image_in_its_own_budget():
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10)
    x, y = torch.rand(6, 3, 16, 16), torch.randint(0, 10, (6,))
    p = METHODS["las_at"].make_params({"eps_choices_255": [2, 12], "steps_choices": [0, 3]})
    actions = [torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([1, 1, 1, 1, 0, 0]),
               torch.zeros(6, dtype=torch.long)]
    eps, step, steps = budgets(p, actions)
    x_adv = policy_attack(model, x, y, eps, step, steps, start_eps=0.0)
    dist = (x_adv - x).abs().flatten(1).amax(1)
    assert torch.all(dist <= eps.flatten() + 1e-6)
    assert torch.all(dist[4:] == 0), "no steps and no start: the image stays put"
    assert torch.all(dist[:4] > 0) and x_adv.min() >= 0 and x_adv.max() <= 1


def test_label_smoothing_puts_factor_on_the_true_class():
    logits = torch.zeros(2, 10)
    y = torch.tensor([3, 7])
    # uniform prediction: CE = log 10 whatever the smoothing
    assert smoothed_ce(logits, y, 0.7).item() == pytest.approx(torch.log(torch.tensor(10.)).item())
    logits[0, 3] = logits[1, 7] = 5.0
    assert smoothed_ce(logits, y, 1.0) < smoothed_ce(logits, y, 0.7)


def test_the_igdm_weight_ramps_linearly_over_the_run():
    spec = METHODS["igdm"]
    ctx = lambda e, **kw: Context(student=None, teacher=None, params=spec.make_params(kw),  # noqa
                                  eps=0, step=0, steps=0, epoch=e, epochs=10)
    assert [igdm_weight(ctx(e)) for e in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert igdm_weight(ctx(0, schedule="constant", igdm_alpha=3)) == 3.0


def test_the_policy_optimiser_takes_its_momentum_and_weight_decay():
    from types import SimpleNamespace

    from smaraad.methods.las_at import make_strategy

    data = SimpleNamespace(num_classes=10, mean=(0.0,) * 3, std=(1.0,) * 3, center=False)
    cfg = config("las_at", student="small_cnn", policy_momentum=0.5, policy_weight_decay=1e-3)
    group = make_strategy(cfg, data)["strategy"].optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["lr"]) == (0.5, 1e-3, 0.05)


class BF16Logits(torch.nn.Module):
    """A model whose logits come out in bf16, as under bf16 autocast, spread x10 so that x + d
    and x - d give logits of different sizes and signs (where a bf16 difference rounds)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return (10 * self.inner(x)).to(torch.bfloat16)


def igdm_setup(eps=64 / 255, step=32 / 255, **params):
    torch.manual_seed(0)
    student, teacher = (BF16Logits(build_model("small_cnn", num_classes=10)).eval()
                        for _ in range(2))
    teacher.requires_grad_(False)
    ctx = Context(student=student, teacher=teacher, params=METHODS["igdm"].make_params(params),
                  eps=eps, step=step, steps=2, epoch=9, epochs=10)
    return ctx, torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))


def test_igdm_takes_its_logit_differences_in_fp32():
    from smaraad.methods.common import adversarial, kl

    ctx, x, y = igdm_setup()
    torch.manual_seed(1)
    got = METHODS["igdm"].loss(ctx, x, y)["igdm"]
    torch.manual_seed(1)  # the same attack start: the same x'
    p = ctx.params
    x_adv = adversarial(ctx, x, y, attack=p.attack, start=p.start, student_mode=p.student_mode)
    with torch.no_grad():
        s = [ctx.student(v) for v in (x_adv, 2 * x - x_adv)]
        t = [ctx.teacher(v) for v in (x_adv, 2 * x - x_adv)]
        fp32 = kl(s[0].float() - s[1].float(), t[0].float() - t[1].float(), p.kl_reduction)
        bf16 = kl(s[0] - s[1], t[0] - t[1], p.kl_reduction)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.detach(), fp32, rtol=1e-6, atol=0)
    assert not torch.isclose(bf16, fp32, rtol=1e-6, atol=0), "bf16 differences round: the " \
                                                               "check would not see them"


def test_igdm_swap_budgets_swaps_the_training_attacks_eps_and_step_only():
    def igdm_terms(eps, step, **params):
        ctx, x, y = igdm_setup(eps, step, **params)
        torch.manual_seed(1)
        terms = METHODS["igdm"].loss(ctx, x, y)
        assert (ctx.eps, ctx.step) == (eps, step), "the caller's threat model is left alone"
        return {k: v.detach() for k, v in terms.items()}

    swapped = igdm_terms(8 / 255, 2 / 255, swap_budgets=True)
    torch.testing.assert_close(swapped, igdm_terms(2 / 255, 8 / 255), rtol=0, atol=0)
    assert swapped["kl_adv"] != igdm_terms(8 / 255, 2 / 255)["kl_adv"]
