"""The CUDA path: run with `python -m pytest -m gpu` on a machine with a GPU. Skipped without one
(CI never has a GPU); the default run leaves them out by marker as well."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_helpers import run_quickstart

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def quickstart(tmp_path, *sets, device="cuda"):
    return run_quickstart(tmp_path, *sets, device=device)


def test_quickstart_on_cuda_with_bf16_reaches_the_cpu_bar(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir, history = quickstart(tmp_path)  # mixed_precision auto -> bf16 on GPUs that have it
    assert max(row["val_dice"] for row in history) >= 0.85
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["gpu_memory_mb"] > 0
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["cuda_available"] and env["gpus"]


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_learns_like_eager(tmp_path, monkeypatch, mode):
    monkeypatch.chdir(tmp_path)
    _, eager = quickstart(tmp_path / "eager", "trainer.epochs=4")
    _, compiled = quickstart(tmp_path / "compiled", "trainer.epochs=4", f"trainer.compile={mode}")
    assert abs(compiled[-1]["val_dice"] - eager[-1]["val_dice"]) < 0.05


def test_fp16_with_grad_scaler_and_channels_last(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, history = quickstart(tmp_path, "trainer.mixed_precision=fp16", "trainer.channels_last=true", "trainer.epochs=4")
    assert all(row["train_loss"] == row["train_loss"] for row in history)  # no NaN
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def one_gpu_ddp(tmp_path, *sets):
    """The quickstart as a 1-process torchrun job on nccl, 2 epochs; the finished subprocess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sets = (f"data_loader.data_dir={tmp_path / 'p2d'}", "trainer.epochs=2", *sets)
    cmd = [sys.executable, "-m", "segflow", "run", str(ROOT / "workflows" / "quickstart.json"), "--device", "cuda",
           "--no-progress", "--run-dir", str(tmp_path / "run"), "--nproc-per-node", "1",
           *sum((["--set", s] for s in sets), [])]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_one_gpu_ddp_through_nccl(tmp_path):
    one_gpu_ddp(tmp_path)
    env_record = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env_record["distributed"] == {"world_size": 1, "backend": "nccl"}


def test_one_gpu_ddp_with_sync_batchnorm(tmp_path):
    """SyncBatchNorm in a 1-process nccl job (with one process it normalises like BatchNorm): the swap
    before DDP on CUDA, and checkpoints that load into a plain model."""
    from segflow.networks.factory import build_network
    from segflow.nodes.networks import UNet2DConfig

    done = one_gpu_ddp(tmp_path, "model.norm=batch", "trainer.sync_batchnorm=true")
    assert "find_unused_parameters false (auto: every trainable parameter gets a gradient), " \
           "sync_batchnorm true (set in the workflow, " in done.stdout
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    plain = build_network("UNet2D", UNet2DConfig(in_channels=1, out_channels=2, base_channels=16, depth=4,
                                                 norm="batch"))
    plain.load_state_dict(last["model"])  # strict: the same keys as a model that never had SyncBatchNorm
    assert all(row["train_loss"] == row["train_loss"] for row in last["history"])  # no NaN


def _augment_without_sync(aug, image, label, seed):
    torch.manual_seed(seed)
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside raises
    try:
        return aug(image, label)
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("dims", [2, 3])
def test_batch_augment_on_cuda_never_waits_for_the_gpu(dims):
    from segflow.data.batch_augment import BatchAugment

    label = (torch.rand((4, 1) + (32,) * dims, device="cuda") > 0.5).long()
    image = label.float()
    for strength in ("light", "medium", "strong"):
        aug = BatchAugment(dims, strength, zscore_after=dims == 2)
        aug(image, label)  # warm-up: library handles and kernels load outside the checked region
        torch.cuda.synchronize()
        first = _augment_without_sync(aug, image, label, seed=0)
        again = _augment_without_sync(aug, image, label, seed=0)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
        assert first[1].dtype == torch.int64 and set(first[1].unique().tolist()) <= {0, 1}
        assert bool(torch.isfinite(first[0]).all())


def test_quickstart_with_device_augmentation_learns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, history = quickstart(tmp_path, "data_loader.augmentation_on=device", "data_loader.augmentation_strength=medium")
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert max(row["val_dice"] for row in history) >= 0.8


def test_boundary_loss_on_cuda_never_waits_for_the_gpu():
    from segflow.losses.segmentation import BoundaryLoss, signed_distance_torch

    label = (torch.rand((2, 1, 40, 40, 24), device="cuda") > 0.9).long()
    probs = torch.rand((2, 2, 40, 40, 24), device="cuda").softmax(1)
    loss = BoundaryLoss()
    expected = BoundaryLoss(on_device=False)(probs.cpu(), label.cpu())
    loss(probs, label)  # warm-up outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside raises
    try:
        got = loss(probs, label)
        signed_distance_torch(label[:, 0] > 0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)


def test_gradient_histograms_never_wait_for_the_gpu():
    """Captured at the step with kernels alone (read after the epoch's own sync), in deterministic mode too,
    and equal to the CPU's."""
    from segflow.training.grad_histograms import GradientHistograms, histogram

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1)).cuda()
    model(torch.randn(2, 1, 32, 32, device="cuda")).square().mean().backward()
    hist = GradientHistograms(model, every=1, accumulation_steps=1)
    hist.start_epoch(1, batches=1)
    hist.after_unscale(0)  # warm-up outside the checked region
    hist.take()
    torch.cuda.synchronize()
    torch.use_deterministic_algorithms(True)
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside raises
    try:
        hist.after_unscale(0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
        torch.use_deterministic_algorithms(False)
    for group, captured in hist.take().items():
        on_gpu = captured.read()
        on_cpu = histogram([p.grad.cpu() for p in model[int(group)].parameters()], histc=False).read()
        assert on_gpu["bucket_counts"] == on_cpu["bucket_counts"] and on_gpu["num"] == on_cpu["num"]
        assert on_gpu["sum"] == pytest.approx(on_cpu["sum"], rel=1e-4, abs=1e-6)

