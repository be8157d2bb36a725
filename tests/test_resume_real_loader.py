"""Exact resume with segflow's own loader: N+M epochs straight == N epochs, stop, resume from the
checkpoint, M more, bit for bit (history without timings, and the final weights).

The runs use MedicalSegmentationLoader's loaders (build_loaders on a small phantom) with patch
sampling, worker augmentation (albumentations 2-D, MONAI 3-D), device augmentation, 0 workers and
2 persistent workers, and a network with dropout. The stopped run ends by an exception right after
the checkpoints of epoch N are written; the resumed run builds new loaders, model and optimizer, as
a new process would, and resumes from the stopped run's `epoch_000N.pt`. One CPU thread, so the
arithmetic itself is deterministic.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segflow.data.loader import build_loaders
from segflow.nodes.base import RunContext
from segflow.nodes.data import MedicalSegmentationLoaderConfig
from segflow.nodes.training import Trainer
from segflow.training import checkpoint
from segflow.training.artefacts import TIMING_KEYS

N, M = 2, 1


class Stopped(Exception):
    pass


def _net(dims: int, out_channels: int) -> torch.nn.Module:
    conv, drop = (torch.nn.Conv2d, torch.nn.Dropout2d) if dims == 2 else (torch.nn.Conv3d, torch.nn.Dropout3d)
    return torch.nn.Sequential(conv(1, 4, 3, padding=1), torch.nn.ReLU(), drop(0.2), conv(4, out_channels, 1))


class CrossEntropy(torch.nn.Module):
    def forward(self, logits, label):
        return torch.nn.functional.cross_entropy(logits, label[:, 0])


def _train(run_dir: Path, loader: dict, resume: Path | None = None, stop_after: int | None = None,
           monkeypatch=None) -> dict:
    """Train N+M epochs (or stop after `stop_after`); the last checkpoint."""
    if stop_after is not None:
        real_save = checkpoint.atomic_save

        def save_then_stop(obj, path):
            real_save(obj, path)
            if Path(path).name == checkpoint.periodic_name(stop_after):  # the last file of the epoch
                raise Stopped

        monkeypatch.setattr(checkpoint, "atomic_save", save_then_stop)
    train, val, info = build_loaders(MedicalSegmentationLoaderConfig(**loader), log=lambda *_: None)
    torch.manual_seed(0)
    model = _net(info.spatial_dims, info.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ctx = RunContext(run_dir=run_dir, workflow_name="resume", device="cpu", resume=str(resume) if resume else None,
                     progress=False, log=lambda *_: None)
    cfg = Trainer.Config(epochs=N + M, lr_schedule="cosine", save_frequency=1, early_stopping=False, seed=7)
    try:
        Trainer("trainer", cfg, ctx).run(model=model, train_loader=train, val_loader=val, loss_fn=CrossEntropy(),
                                         optimizer=optimizer)
    except Stopped:
        pass
    finally:
        monkeypatch and monkeypatch.undo()
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def _history(last: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in last["history"]]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CASES = {
    "2d-resize-worker-augmentation-0-workers": ("phantom2d", dict(image_size=32, augmentation_strength="strong",
                                                                   num_workers=0)),
    "2d-resize-worker-augmentation-2-persistent-workers": ("phantom2d", dict(image_size=32, num_workers=2,
                                                                              augmentation_strength="strong")),
    "2d-patches": ("phantom2d", dict(image_size=24, size_mode="patches", samples_per_volume=2, num_workers=0)),
    "3d-patches-augmentation-off": ("phantom3d", dict(image_size=16, augmentation=False, samples_per_volume=2,
                                                      num_workers=0)),
    "3d-patches-worker-augmentation-2-workers": ("phantom3d", dict(image_size=16, augmentation_strength="strong",
                                                                   num_workers=2)),
    "2d-device-augmentation": ("phantom2d", dict(image_size=32, augmentation_strength="strong",
                                                 augmentation_on="device", num_workers=0)),
    "3d-device-augmentation": ("phantom3d", dict(image_size=16, augmentation_strength="strong",
                                                 augmentation_on="device", num_workers=0)),
}


@pytest.mark.parametrize("case", CASES)
def test_resumed_run_matches_a_straight_run_bit_for_bit(case, request, tmp_path, monkeypatch, one_thread):
    data, settings = CASES[case]
    loader = dict(data_dir=str(request.getfixturevalue(data)), batch_size=2, seed=3, **settings)
    straight = _train(tmp_path / "straight", loader)
    _train(tmp_path / "resumed", loader, stop_after=N, monkeypatch=monkeypatch)
    periodic = tmp_path / "resumed" / "checkpoints" / checkpoint.periodic_name(N)
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == N
    resumed = _train(tmp_path / "resumed", loader, resume=periodic)

    assert len(_history(straight)) == N + M
    assert _history(resumed) == _history(straight)
    assert straight["model"].keys() == resumed["model"].keys()
    for name, weights in straight["model"].items():
        assert torch.equal(weights, resumed["model"][name]), name
