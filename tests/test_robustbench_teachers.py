"""RobustBench teachers by name, offline: random weights written in robustbench's own cache
layout, loaded through robustbench's real loader, wrapped for Eq. 6, distilled from, shipped to a
trial as plain data, and run through `tune` on test-written CIFAR-10 files."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from conftest import run_cli
from smaraad import robustbench_teachers as zoo
from smaraad.models import HookedCamNet, NotCamReady, build_model

ROOT = Path(__file__).resolve().parent.parent
SMALL = "Sehwag2021Proxy_R18"  # a ResNet-18 entry of the CIFAR-10 Linf zoo: the cheap one


def zoo_net(name: str, dataset: str = "cifar10", seed: int = 0):
    torch.manual_seed(seed)
    return zoo.zoo_entry(name, dataset)["model"]().eval()


def write_weights(teacher_dir: Path, name: str, dataset: str = "cifar10", seed: int = 0):
    """The zoo architecture's random state_dict as a DataParallel checkpoint, where robustbench's
    load_model looks for NAME; returns the unwrapped network that holds the same weights."""
    net = zoo_net(name, dataset, seed)
    file = zoo.weights_file(name, dataset, teacher_dir)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, file)
    return net


def images(n: int, seed: int = 1):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_a_zoo_file_loads_through_robustbench_with_its_logits_and_cam(tmp_path):
    net = write_weights(tmp_path, SMALL)
    model = zoo.load(SMALL, "cifar10", tmp_path)
    x = images(3)
    with torch.no_grad():
        logits, fmap = model.forward_features(x)
        assert torch.equal(logits, net(x)) and torch.equal(model(x), logits)
    assert fmap.shape == (3, 512, 4, 4) and model.fc.weight.shape == (10, 512)
    pooled = model.fc(F.adaptive_avg_pool2d(fmap, 1).flatten(1))  # Eq. 6's premise, exactly
    torch.testing.assert_close(pooled, logits, rtol=1e-5, atol=1e-5)
    assert model.arch == f"robustbench:{SMALL}" and model.num_classes == 10


@pytest.mark.parametrize("name,dataset,channels", [
    ("Zhang2019Theoretically", "cifar10", 640),             # WideResNet(34, 10, sub_block1)
    ("Gowal2021Improving_28_10_ddpm_100m", "cifar10", 640),  # DMWideResNet, Swish, mean/std inside
    ("Cui2023Decoupled_WRN-28-10", "cifar100", 640),         # DMWideResNet, 100 classes
])
def test_wide_zoo_nets_expose_their_last_map_and_classifier(name, dataset, channels):
    net = zoo_net(name, dataset)
    model = zoo.wrap(net, name, dataset)
    head = net.fc if hasattr(net, "fc") else net.logits
    assert model.fc is head  # the network's own classifier: CAM weights are not a copy
    x = images(1)
    with torch.no_grad():
        logits, fmap = model.forward_features(x)
        assert torch.equal(logits, net(x))
    assert fmap.shape == (1, channels, 8, 8)
    torch.testing.assert_close(model.fc(fmap.mean(dim=(2, 3))), logits, rtol=1e-5, atol=1e-5)


def test_one_distillation_step_from_a_zoo_teacher(tmp_path):
    from smaraad.methods import METHODS, Context
    from smaraad.trainer import prepare_teacher

    write_weights(tmp_path, SMALL)
    teacher = prepare_teacher(zoo.load(SMALL, "cifar10", tmp_path), torch.device("cpu"), 10)
    assert isinstance(teacher, HookedCamNet)  # BN folding kept the wrapper (checked at 32x32)
    student = build_model("small_cnn", num_classes=10).train()
    spec = METHODS["smaraad_pp"]
    ctx = Context(student=student, teacher=teacher, params=spec.make_params({}), eps=8 / 255,
                  step=2 / 255, steps=1)
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    terms = spec.loss(ctx, x, y)
    assert "guide_align_adv" in terms  # Eq. 7 on the zoo teacher's CAM, weighted by Eq. 10
    total = torch.stack(list(terms.values())).sum()
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_a_zoo_teacher_travels_as_plain_data(tmp_path):
    from trainables.trial import TeacherWeights

    write_weights(tmp_path, SMALL, seed=3)
    model = zoo.load(SMALL, "cifar10", tmp_path)
    shipped = TeacherWeights.of(model, metrics={}, path="p")
    assert shipped.zoo == ("robustbench", SMALL, "cifar10", "Linf")
    assert all(isinstance(v, torch.Tensor) for v in shipped.state_dict.values())
    rebuilt = shipped.build()
    x = images(2)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_provide_teacher_evaluates_a_zoo_teacher_once_on_the_validation_split(tmp_path,
                                                                             monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    from smaraad.config import preset_config
    from smaraad.evaluation import accuracy
    from smaraad.teachers import provide_teacher
    from smaraad.trainer import load_splits
    from test_data import _write_cifar10

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    _write_cifar10(tmp_path / "data", per_batch=4, n_test=4)
    net = write_weights(tmp_path / "w", SMALL, seed=5)
    cfg = preset_config({"dataset": "cifar10", "data_root": str(tmp_path / "data"), "val_size": 8,
                         "student": "small_cnn", "device": "cpu", "val_pgd_steps": 2})
    lines = []
    t = provide_teacher(cfg, path=f"robustbench:{SMALL}", teacher_dir=tmp_path / "w",
                        log=lines.append)
    assert t.path == str(zoo.weights_file(SMALL, "cifar10", tmp_path / "w"))
    assert t.metrics["teacher/val_clean_acc"] == accuracy(net, load_splits(cfg).val)
    assert 0.0 <= t.metrics["teacher/val_pgd_acc"] <= 1.0
    assert t.metrics["teacher/leaderboard_aa_acc"] == zoo.leaderboard(SMALL, "cifar10")[
        "teacher/leaderboard_aa_acc"]
    assert any("evaluating" in ln for ln in lines)
    lines.clear()
    again = provide_teacher(cfg, path=f"robustbench:{SMALL}", teacher_dir=tmp_path / "w",
                            log=lines.append)
    assert again.metrics == t.metrics and not any("evaluating" in ln for ln in lines)


def test_a_net_without_a_pooled_map_is_refused():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 30 * 30, 10))
    with pytest.raises(NotCamReady, match="global average pool"):
        HookedCamNet(net, arch="x")


def test_requests_that_cannot_work_are_one_line_each(tmp_path, monkeypatch):
    with pytest.raises(zoo.ZooError, match=r"close names: .*Chen2021LTD_WRN34_20"):
        zoo.check("robustbench:Chen2021LTD_WRN34_2O", "cifar10", tmp_path)
    with pytest.raises(zoo.ZooError, match="cifar10 or cifar100; --dataset is 'embedded'"):
        zoo.check(f"robustbench:{SMALL}", "embedded", tmp_path)
    with pytest.raises(zoo.ZooError, match=r"it is one of cifar100/Linf"):
        zoo.check("robustbench:Cui2023Decoupled_WRN-34-10_autoaug", "cifar10", tmp_path)
    expected = tmp_path / "cifar10" / "Linf" / f"{SMALL}.pt"
    with pytest.raises(zoo.ZooError, match=re.escape(f"no weights at {expected}; pass --download")):
        zoo.load(SMALL, "cifar10", tmp_path)
    expected.parent.mkdir(parents=True)
    torch.save({"state_dict": build_model("small_cnn").state_dict()}, expected)
    with pytest.raises(zoo.ZooError, match="does not fit its architecture"):
        zoo.load(SMALL, "cifar10", tmp_path)
    monkeypatch.setitem(sys.modules, "robustbench", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "robustbench.utils", raising=False)
    with pytest.raises(zoo.ZooError, match=re.escape('pip install -e ".[robustbench]"')):
        zoo.check(f"robustbench:{SMALL}", "cifar10", tmp_path)


def test_the_docs_table_is_the_zoo_and_the_leaderboard():
    rows = re.findall(r"^\| `robustbench:(\S+)` \| (cifar10|cifar100) \| [^|]+ \| ([\d.]+) \| "
                      r"([\d.]+) \|", (ROOT / "docs" / "teachers.md").read_text(), re.M)
    assert len(rows) >= 7
    for name, dataset, clean, aa in rows:
        zoo.zoo_entry(name, dataset)  # raises for a name the zoo lacks
        board = zoo.leaderboard(name, dataset)
        assert board["teacher/leaderboard_clean_acc"] == pytest.approx(float(clean) / 100)
        assert board["teacher/leaderboard_aa_acc"] == pytest.approx(float(aa) / 100)


def test_a_bad_teacher_name_stops_tune_before_anything_is_written(tmp_path, capsys, monkeypatch):
    from orchestrator import tune

    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(tune.main, ["--dataset", "cifar10", "--teacher", "robustbench:Nope",
                                         "--teacher-dir", str(tmp_path / "w"), "--smoke-test"],
                             capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "robustbench:Nope" in err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def zoo_cifar(tmp_path, monkeypatch):
    """A folder with test-written CIFAR-10 files under data/ and SMALL's zoo file under w/."""
    import torchvision.datasets.cifar as tv_cifar
    from test_data import _write_cifar10

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    monkeypatch.chdir(tmp_path)
    _write_cifar10(tmp_path / "data", per_batch=8, n_test=8)
    write_weights(tmp_path / "w", SMALL)
    return tmp_path


ZOO_DATA = ["--dataset", "cifar10", "--teacher-dir", "w", "--data-root", "data", "--student",
            "small_cnn", "--epochs", "1", "--set", "attack_steps=1", "--set", "batch_size=16",
            "--set", "val_size=8"]
ZOO_RUN = ["--teacher", f"robustbench:{SMALL}", *ZOO_DATA]


def run_zoo_experiment(main, argv, root: Path, name: str, capsys):
    """Run tune's or ablate's main on argv, logging under root; its (parent, trial) MLflow runs."""
    import ray
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    try:
        code, out, err = run_cli(main, [*argv, "--name", name, "--tracking-uri", uri,
                                        "--storage-path", str(root / "ray"), "--no-report"],
                                 capsys)
    finally:
        ray.shutdown()
    assert code == 0, err
    c = MlflowClient(tracking_uri=uri)
    runs = c.search_runs([c.get_experiment_by_name(name).experiment_id])
    return (next(r for r in runs if "mlflow.parentRunId" not in r.data.tags),
            next(r for r in runs if "mlflow.parentRunId" in r.data.tags))


@pytest.mark.slow
def test_smoke_tune_with_a_zoo_teacher_from_a_space_base(zoo_cifar, capsys):
    from orchestrator import tune

    space = zoo_cifar / "zoo.yaml"
    space.write_text("kind: tune\nbase: {method: smaraad_pp, teacher: robustbench:%s}\n"
                     "search:\n  gamma: {distribution: loguniform, low: 10.0, high: 3000.0}\n"
                     % SMALL)
    argv = [*ZOO_DATA, "--space", str(space), "--smoke-test", "--num-samples", "1", "--eval-n",
            "8", "--attacks", "clean,pgd20"]
    parent, child = run_zoo_experiment(tune.main, argv, zoo_cifar, "zoo", capsys)
    assert parent.data.params["teacher"] == f"robustbench:{SMALL}"
    assert parent.data.metrics["teacher/leaderboard_clean_acc"] == pytest.approx(0.8459)
    assert "teacher/val_pgd_acc" not in parent.data.metrics  # measured once: by the experiment
    for key in ("teacher/eval_clean_acc", "teacher/eval_pgd20_acc"):
        assert 0.0 <= parent.data.metrics[key] <= 1.0
        assert child.data.metrics[key] == parent.data.metrics[key]
    assert child.info.status == "FINISHED"
    assert child.data.params["teacher"] == f"robustbench:{SMALL}"
    assert {"test/cam_dist", "train/loss_guide_align_adv"} <= set(child.data.metrics)


@pytest.mark.slow
def test_train_then_evaluate_its_student_with_a_zoo_teacher(zoo_cifar, capsys):
    import json

    from smaraad import evaluate, train

    attacks = ["clean", "fgsm", "pgd20", "cw", "aa"]
    code, out, err = run_cli(train.main, [*ZOO_RUN, "--attacks", ",".join(attacks), "--eval-n",
                                          "8", "--aa-n", "2", "--out", "run"], capsys)
    assert code == 0, err
    written = json.loads((zoo_cifar / "run" / "metrics.json").read_text())
    assert {f"test/{a}_acc" for a in attacks} <= set(written)
    assert written["test/cam_dist"] >= 0  # the zoo teacher's CAMs, read back from its spec
    raw = torch.load(zoo_cifar / "run" / "checkpoint.pt", weights_only=True)
    file = zoo.weights_file(SMALL, "cifar10", zoo_cifar / "w")
    assert raw["teacher"] == {"spec": f"robustbench:{SMALL}", "file": str(file),
                              "arch": f"robustbench:{SMALL}"}
    code, out, err = run_cli(evaluate.main, ["--checkpoint", "run/checkpoint.pt", "--out",
                                             "eval.json", "--attacks", "clean,pgd20", "--n", "8",
                                             "--data-root", "data"], capsys)
    assert code == 0, err
    result = json.loads((zoo_cifar / "eval.json").read_text())
    assert result["teacher"] == str(file)
    assert result["test/cam_dist"] == pytest.approx(written["test/cam_dist"])


@pytest.mark.slow
def test_ablate_with_a_zoo_teacher_and_transfer_from_it(zoo_cifar, capsys):
    from orchestrator import ablate

    space = zoo_cifar / "zoo_grid.yaml"
    space.write_text(f"kind: grid\nbase: {{teacher: robustbench:{SMALL}}}\n"
                     "grid:\n  method: [kd]\n")
    argv = [*ZOO_DATA, "--space", str(space), "--smoke-test", "--eval-n", "8", "--attacks",
            "clean,pgd20", "--transfer-from", "teacher"]
    _, child = run_zoo_experiment(ablate.main, argv, zoo_cifar, "zab", capsys)
    assert child.info.status == "FINISHED", child.data.tags.get("smaraad.error")
    assert child.data.tags["smaraad.transfer_from"] == "teacher default"
    assert {"test/transfer_pgd20_acc", "test/transfer_cw_acc", "test/cam_dist",
            "teacher/eval_pgd20_acc"} <= set(child.data.metrics)
