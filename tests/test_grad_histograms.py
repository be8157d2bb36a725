"""Monitoring: gradient histograms per named part in TensorBoard at the configured epochs, and the
learning rate of every optimizer parameter group, named by the group."""
from __future__ import annotations

import pytest
import torch
import toy
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_trainer import run_trainer

from segflow.networks.factory import build_network
from segflow.networks.parts import part_of, parts_of
from segflow.nodes.networks import UNet2DConfig
from segflow.nodes.optim import OptimizerConfig
from segflow.optim.optimizer import build_optimizer
from segflow.training.grad_histograms import GradientHistograms, histogram, layer_groups


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    return acc


def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("UNet2D", UNet2DConfig(base_channels=4, depth=3))


@pytest.mark.parametrize("histc", [True, False], ids=["histc", "sorted"])  # the CPU's way, and the GPU's
def test_histogram_matches_histc_and_skips_non_finite_values(histc):
    torch.manual_seed(0)
    grads = [torch.randn(40, 3) * 2, torch.rand(7) - 5, torch.tensor([float("nan"), float("inf"), -float("inf"), 1.5])]
    got = histogram(grads, bins=16, histc=histc).read()
    finite = torch.cat([g.flatten() for g in grads])
    finite = finite[finite.isfinite()]
    assert got["num"] == finite.numel() == 128 and sum(got["bucket_counts"]) == 128
    assert (got["min"], got["max"]) == (finite.min().item(), finite.max().item())
    assert got["sum"] == pytest.approx(finite.sum().item(), rel=1e-5)
    assert got["sum_squares"] == pytest.approx(finite.square().sum().item(), rel=1e-5)
    assert got["bucket_limits"][-1] == finite.max().item()
    expected = torch.histc(finite, bins=16, min=finite.min().item(), max=finite.max().item())
    assert got["bucket_counts"] == expected.long().tolist()
    same = histogram([torch.full((5,), 0.25)], bins=4, histc=histc).read()  # one value: a narrow range around it
    assert same["bucket_counts"] == [5, 0, 0, 0] and same["min"] == same["max"] == 0.25
    assert histogram([torch.tensor([float("nan")])], histc=histc).read() is None


def test_layer_groups_are_the_named_parts_or_top_level_modules():
    model = unet()
    parts = parts_of(model)
    groups = layer_groups(model)
    assert list(groups) == ["encoder", "decoder", "head"]
    assert all({part_of(n, parts) for n, p in model.named_parameters() if any(p is q for q in groups[g])} == {g}
               for g in groups)
    assert list(layer_groups(toy.tiny_net())) == ["0", "2"]


def test_captured_once_at_the_last_optimizer_step_of_due_epochs():
    model = toy.tiny_net()
    model(torch.randn(1, 1, 8, 8)).sum().backward()
    hist = GradientHistograms(model, every=3, accumulation_steps=2)
    due = []
    for epoch in range(1, 8):
        hist.start_epoch(epoch, batches=5)  # optimizer steps 0, 1, 2 (the last after one batch)
        for step in range(3):
            hist.after_unscale(step)
            if hist.captured:
                due.append((epoch, step))
                hist.take()
    assert due == [(3, 2), (6, 2)]


def test_histograms_per_part_at_the_interval_and_the_lr_of_every_group(tmp_path):
    model = unet()
    opt = build_optimizer(model, OptimizerConfig(learning_rate=1e-2, param_groups=[
        {"pattern": "encoder", "lr": 1e-3, "name": "enc"}, {"pattern": "head", "lr": 2e-3}]))
    _, history = run_trainer(tmp_path, model=model, opt=opt, loaders=toy.loaders(8, 4), epochs=4, validate_every=4,
                             grad_histogram_every=2, lr_schedule="cosine", log_images=False)
    acc = events(tmp_path)
    assert sorted(acc.Tags()["histograms"]) == ["grad/decoder", "grad/encoder", "grad/head"]
    sizes = {part: sum(p.numel() for n, p in model.named_parameters() if part_of(n, parts_of(model)) == part)
             for part in ("encoder", "decoder", "head")}
    for part, size in sizes.items():
        logged = acc.Histograms(f"grad/{part}")
        assert [h.step for h in logged] == [2, 4]
        assert all(h.histogram_value.num == size == sum(h.histogram_value.bucket) for h in logged)
        assert all(h.histogram_value.max > h.histogram_value.min for h in logged)
    for name, factor in (("enc", 1.0), ("head", 2.0), ("rest", 10.0)):  # relative to group 0's lr
        scalars = acc.Scalars(f"train/lr/{name}")
        assert [s.step for s in scalars] == [1, 2, 3, 4]
        assert [s.value for s in scalars] == pytest.approx([r["lr"] * factor for r in history], rel=1e-6)
        assert [r[f"lr/{name}"] for r in history] == pytest.approx([r["lr"] * factor for r in history])
    assert history[0]["lr"] == 1e-3 and history[-1]["lr"] < history[1]["lr"]  # group 0's, scheduled


def test_frozen_parts_and_interval_zero_log_no_histogram(tmp_path):
    model = unet()
    opt = build_optimizer(model, OptimizerConfig(learning_rate=1e-2, freeze=["encoder"]))
    _, history = run_trainer(tmp_path / "frozen", model=model, opt=opt, loaders=toy.loaders(8, 4), epochs=1,
                             log_images=False)
    acc = events(tmp_path / "frozen")
    assert sorted(acc.Tags()["histograms"]) == ["grad/decoder", "grad/head"]
    assert not any(k.startswith("lr/") for k in history[0])  # one group: train/lr alone
    assert not any(t.startswith("train/lr/") for t in acc.Tags()["scalars"])
    run_trainer(tmp_path / "off", loaders=toy.loaders(8, 4), epochs=2, grad_histogram_every=0, log_images=False)
    assert events(tmp_path / "off").Tags()["histograms"] == []
