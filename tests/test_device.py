"""Where a run trains and what it reserves, checked on the CPU: the device a trial is placed on
(from the GPU ids Ray gave it, also inside real Ray tasks), the per-trial resources chosen from a
cluster's, and a state saved on a GPU resuming on a machine without one."""

from __future__ import annotations

import zipfile

import pytest
import torch

from smaraad.cli import UsageError
from smaraad.config import ConfigError, preset_config
from smaraad.io import load_torch, save_torch
from smaraad.trainer import fit, placed_device
from trainables.resources import Cluster, check_device, plan_resources


@pytest.mark.parametrize("name, ids, count, want", [
    ("auto", [], 1, "cpu"),            # Ray gave no GPU, the node's GPU is visible: the CPU
    ("auto", [], 8, "cpu"),
    ("auto", ["3"], 1, "cuda:0"),      # its own GPU (CUDA_VISIBLE_DEVICES=3): cuda:0 inside
    ("auto", None, 2, "cuda:0"),       # a plain command holds what it sees
    ("auto", None, 0, "cpu"),
    ("cpu", ["0"], 1, "cpu"),
    ("cuda", ["0"], 1, "cuda:0"),
    ("cuda:1", ["4", "5"], 2, "cuda:1"),
])
def test_a_run_trains_where_it_was_placed(name, ids, count, want):
    assert placed_device(name, ids, count) == torch.device(want)


@pytest.mark.parametrize("name, ids, count, message", [
    ("cuda", [], 1, "holds no GPU"),
    ("cuda:0", [], 4, "holds no GPU"),
    ("cuda:1", ["0"], 1, "sees 1 GPU"),
    ("cuda", None, 0, "CUDA is not available"),
    ("gpu", None, 0, "not a device"),
])
def test_a_device_the_run_does_not_hold_is_one_config_error(name, ids, count, message):
    with pytest.raises(ConfigError, match=message) as err:
        placed_device(name, ids, count)
    assert "allowed: auto, cpu" in str(err.value)


@pytest.fixture(scope="module")
def ray_with_a_gpu():
    """A private Ray instance that declares one GPU (the resource is bookkeeping: no CUDA here),
    so tasks get real accelerator ids and Ray's real CUDA_VISIBLE_DEVICES handling."""
    import ray

    ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_inside_ray_a_task_without_a_gpu_sees_the_node_gpus_and_trains_on_the_cpu(
        ray_with_a_gpu):
    ray = ray_with_a_gpu

    @ray.remote
    def where(visible_count: int):
        import os
        from smaraad.trainer import placed_device
        ids = ray.get_runtime_context().get_accelerator_ids()["GPU"]
        return ids, os.environ.get("CUDA_VISIBLE_DEVICES"), str(
            placed_device("auto", ids, visible_count))

    env = {"env_vars": {"CUDA_VISIBLE_DEVICES": "0"}}  # the node's GPU, as on a GPU machine
    ids, visible, device = ray.get(where.options(num_gpus=0, runtime_env=env).remote(1))
    assert (ids, visible, device) == ([], "0", "cpu")  # Ray left the variable alone
    ids, visible, device = ray.get(where.options(num_gpus=1).remote(1))
    assert (ids, visible, device) == (["0"], "0", "cuda:0")


CPU_NODE = Cluster(cpus=2, gpus=0, node_cpus=2)
GPU_NODE = Cluster(cpus=16, gpus=1, node_cpus=16)


def test_a_lone_trial_gets_every_core_and_no_gpu_on_a_cpu_machine():
    res = plan_resources(CPU_NODE, trials=1)
    assert (res.cpus, res.gpus, res.concurrent) == (2, 0, 1)
    res = plan_resources(CPU_NODE, trials=8)
    assert (res.cpus, res.gpus, res.concurrent) == (1, 0, 2)


def test_on_a_gpu_node_trials_take_a_whole_gpu_or_a_share():
    assert plan_resources(GPU_NODE, trials=1) == plan_resources(GPU_NODE, 1, gpus=1.0)
    assert plan_resources(GPU_NODE, trials=1).cpus == 16
    many = plan_resources(GPU_NODE, trials=20)
    assert (many.gpus, many.concurrent, many.cpus) == (0.25, 4, 4)
    two = plan_resources(GPU_NODE, trials=2)
    assert (two.gpus, two.concurrent, two.cpus) == (0.5, 2, 8)
    eight = plan_resources(Cluster(cpus=64, gpus=8, node_cpus=64), trials=8)
    assert (eight.gpus, eight.concurrent, eight.cpus) == (1.0, 8, 8)


def test_given_values_are_kept_and_a_reservation_fits_one_node():
    res = plan_resources(GPU_NODE, trials=8, cpus=2, gpus=0, max_concurrent=3)
    assert (res.cpus, res.gpus, res.concurrent) == (2, 0, 3)
    two_nodes = Cluster(cpus=16, gpus=0, node_cpus=8)
    assert plan_resources(two_nodes, trials=1).cpus == 8


def test_freed_cores_go_to_the_running_trials_once_no_trial_waits():
    from trainables.resources import spare_threads

    one_left = {"node": ["c"]}
    assert spare_threads(one_left, {"node": 2}, reserved=1, waiting=True) == {"c": 1}
    assert spare_threads(one_left, {"node": 2}, reserved=1, waiting=False) == {"c": 2}
    three = {"a": ["t1", "t2", "t3"], "b": ["t4"]}  # per node, never below the reservation
    assert spare_threads(three, {"a": 8, "b": 16}, reserved=2, waiting=False) == {
        "t1": 2, "t2": 2, "t3": 2, "t4": 16}
    assert spare_threads(three, {"a": 4}, reserved=2, waiting=False)["t4"] == 2


def test_a_cuda_device_without_gpus_per_trial_is_refused_before_the_run():
    check_device("auto", 0)
    check_device("cuda:0", 0.25)
    with pytest.raises(UsageError, match="allowed: auto, cpu$"):
        check_device("cuda", 0)
    with pytest.raises(UsageError, match="allowed: auto, cpu, cuda, cuda:0, cuda:1$"):
        check_device("cuda:2", 2)


def tag_storages_for_cuda(src, dst) -> None:
    """Rewrite a torch.save file so that every storage says it was saved on cuda:0, as a state
    written on a GPU does (pickle protocol 2 stores the location as a BINUNICODE string)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info, data)


TINY = {"method": "pgd_at", "epochs": 2, "train_size": 300, "val_size": 60, "batch_size": 60,
        "attack_steps": 1, "val_pgd_steps": 1, "device": "cpu"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_state_saved_on_a_gpu_resumes_on_the_cpu(tmp_path):
    cfg = preset_config(TINY)
    straight, _ = fit(cfg, log=None)
    saved = tmp_path / "cpu.pt"
    fit(cfg, log=None, report=lambda m, s: save_torch(saved, s) if m["epoch"] == 1 else None)
    tag_storages_for_cuda(saved, tmp_path / "state.pt")
    with pytest.raises(RuntimeError, match="deserialize object on a CUDA device"):
        torch.load(tmp_path / "state.pt", weights_only=True)  # what a plain load does here
    resumed, _ = fit(cfg, log=None, resume=load_torch(tmp_path / "state.pt"))
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_non_finite_loss_fails_at_the_next_check_naming_its_epoch_step_and_terms():
    from smaraad.trainer import DivergedError, FiniteWatch

    watch = FiniteWatch(every=4)
    one = torch.tensor(1.0)
    for _ in range(2):
        watch.step(one + one, {"ce": one, "kl": one}, epoch=2)
    watch.step(torch.tensor(float("nan")), {"ce": one, "kl": torch.tensor(float("nan"))}, 2)
    with pytest.raises(DivergedError, match=r"loss is nan at epoch 3, step 3 \(ce=1, kl=nan\)"):
        watch.step(one + one, {"ce": one, "kl": one}, epoch=2)  # the 4th step checks


def test_a_diverging_run_stops_with_the_epoch_named():
    from smaraad.trainer import DivergedError

    cfg = preset_config({**TINY, "lr": 1e30, "epochs": 1})
    with pytest.raises(DivergedError, match=r"at epoch 1, step \d+ \(ce_adv="):
        fit(cfg, log=None)


def test_cams_are_fp32_under_autocast():
    from smaraad.losses import cam

    g = torch.Generator().manual_seed(0)
    fmap, weight = torch.randn(4, 64, 8, 8, generator=g), torch.randn(10, 64, generator=g)
    classes = torch.tensor([0, 3, 5, 9])
    plain = cam(fmap, weight, classes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = cam(fmap, weight, classes)
    assert under.dtype == torch.float32 and torch.equal(under, plain)


def test_the_soft_rank_backward_is_fp32_under_autocast():
    from smaraad.losses import soft_rank

    u = torch.randn(8, 10, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    w = torch.randn(8, 10, generator=torch.Generator().manual_seed(1))

    def grad():
        return torch.autograd.grad((soft_rank(u, 3.0) * w).sum(), u)[0]

    plain = grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = grad()
    assert under.dtype == torch.float32 and torch.equal(under, plain)


@pytest.mark.parametrize("shape, size", [((3, 4, 4), 8), ((2, 8, 8), 32), ((2, 5, 7), 9)])
def test_the_matrix_resize_is_torch_bilinear_interpolation(shape, size):
    import torch.nn.functional as F
    from smaraad.losses import linear_resize

    m = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = F.interpolate(m.unsqueeze(1), size=(size, size), mode="bilinear",
                         align_corners=False).squeeze(1)
    got = linear_resize(shape[1], size, m) @ m @ linear_resize(shape[2], size, m).T
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_deterministic_is_a_switch_that_leaves_the_teacher_cache_alone():
    from smaraad.teachers import cache_key, teacher_config

    on = preset_config({**TINY, "deterministic": True})
    off = preset_config(TINY)
    assert teacher_config(on).deterministic and not teacher_config(off).deterministic
    assert cache_key(teacher_config(on)) == cache_key(teacher_config(off))
    with pytest.raises(ConfigError, match="deterministic"):
        preset_config({**TINY, "deterministic": "sometimes"})


@pytest.mark.parametrize("name, part", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM"), ("NVIDIA A100 80GB PCIe", "A100 PCIe"),
    ("NVIDIA H100", None), ("NVIDIA L4", None)])
def test_the_gpu_part_is_named_before_its_peak_is_used(name, part):
    from orchestrator.plan import GPU_PEAKS, gpu_model

    assert gpu_model(name) == part
    if part:
        assert GPU_PEAKS[part]["bf16"] > GPU_PEAKS[part]["tf32"] > GPU_PEAKS[part]["fp32"]


def test_a_trial_worker_of_the_local_instance_runs_at_the_drivers_niceness():
    """Ray's default would start it at 15, behind every other process on the machine."""
    import os

    import ray

    from trainables.session import init_ray

    init_ray(None, 1)
    try:
        niceness = ray.get(ray.remote(lambda: os.nice(0)).remote())
    finally:
        ray.shutdown()
    assert niceness == os.nice(0) == 0
