"""Checkpoint files: atomic writes survive an interrupted save; loads are weights-only; RNG round trip."""
import dataclasses
import random

import numpy as np
import pytest
import torch

from segflow.networks.description import NetworkDescription, describe
from segflow.training import checkpoint


def test_interrupted_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.atomic_save({"format": checkpoint.FORMAT, "epoch": 1, "w": torch.ones(1000)}, path)
    before = path.read_bytes()

    real_save = torch.save

    def dies_midway(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.truncate(f.tell() // 2)  # half the bytes are on disk when the "crash" comes
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(checkpoint.torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_save({"format": checkpoint.FORMAT, "epoch": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.setattr(checkpoint.torch, "save", real_save)

    assert path.read_bytes() == before
    assert checkpoint.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


class _CtrlCWhileSaved:
    """Pickles as a plain dict, pressing Ctrl-C (SIGINT to this process) while it is being written."""

    def __reduce__(self):
        import signal

        signal.raise_signal(signal.SIGINT)
        return dict, ((("written", True),),)


def test_ctrl_c_during_a_write_finishes_the_file_then_interrupts(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    # torch.save used to turn the KeyboardInterrupt into a RuntimeError ("unexpected pos") and drop
    # the new file; the interrupt now waits for the write and arrives as a KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_save({"model": {"w": torch.ones(3)}, "extra": _CtrlCWhileSaved()}, target)
    saved = torch.load(target, weights_only=False)  # the test's own file; its dict is rebuilt by a call
    assert saved["extra"] == {"written": True} and torch.equal(saved["model"]["w"], torch.ones(3))
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_ctrl_c_while_best_is_written_waits_for_last_too(tmp_path):
    # the Trainer's epoch writes best.pt then last.pt inside one held block: a Ctrl-C during best.pt
    # used to arrive before last.pt existed, so --resume auto found nothing in a first epoch
    with pytest.raises(KeyboardInterrupt):
        with checkpoint.ctrl_c_after():
            checkpoint.atomic_save({"epoch": 1, "extra": _CtrlCWhileSaved()}, tmp_path / "best.pt")
            checkpoint.atomic_save({"epoch": 1}, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.parametrize("failure", [RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"),
                                     OSError(28, "No space left on device")])
def test_a_full_disk_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "last.pt"
    checkpoint.atomic_save({"format": checkpoint.FORMAT, "epoch": 1}, path)

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise failure

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(OSError, match=r"cannot write .*last.pt: the disk is full .*the previous last.pt is intact"):
        checkpoint.atomic_save({"format": checkpoint.FORMAT, "epoch": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.atomic_save({"format": checkpoint.FORMAT, "w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="cannot read checkpoint .*last.pt"):
        checkpoint.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        checkpoint.load_checkpoint(tmp_path / "nope.pt")


class Custom:
    pass


def test_loads_weights_only_and_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "obj": Custom()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        checkpoint.load_checkpoint(path)


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    gen = torch.Generator().manual_seed(7)
    loader = torch.utils.data.DataLoader(list(range(10)), shuffle=True, generator=gen)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = checkpoint.capture_rng([loader])
    checkpoint.atomic_save({"format": checkpoint.FORMAT, "rng": state}, tmp_path / "r.pt")
    want = (random.random(), np.random.rand(), torch.rand(1).item(), list(loader))
    random.seed(9), np.random.seed(9), torch.manual_seed(9), gen.manual_seed(9)
    checkpoint.restore_rng(checkpoint.load_checkpoint(tmp_path / "r.pt")["rng"], [loader])
    assert (random.random(), np.random.rand(), torch.rand(1).item(), list(loader)) == want


def test_signature_difference_names_what_changed():
    a = torch.nn.Conv2d(1, 8, 3)
    b = torch.nn.Conv2d(1, 16, 3)
    diff = checkpoint.signature_difference(checkpoint.model_signature(a), checkpoint.model_signature(b))
    assert "weight" in diff and "(8, 1, 3, 3)" in diff and "(16, 1, 3, 3)" in diff
    unet = NetworkDescription("UNet2D", spatial_dims=2, in_channels=1, out_channels=2)
    describe(a, dataclasses.replace(unet, config={"base_channels": 8, "in_channels": 1}))
    describe(b, dataclasses.replace(unet, config={"base_channels": 16, "in_channels": 1}))
    diff = checkpoint.signature_difference(checkpoint.model_signature(a), checkpoint.model_signature(b))
    assert diff == "the model config changed (base_channels: 8 in the checkpoint, 16 now)"
    assert checkpoint.signature_difference(checkpoint.model_signature(a), checkpoint.model_signature(a)) is None


def test_prune_keeps_the_newest_periodic_files(tmp_path):
    for e in (2, 4, 6, 8):
        (tmp_path / checkpoint.periodic_name(e)).write_bytes(b"x")
    (tmp_path / "last.pt").write_bytes(b"x")
    checkpoint.prune_periodic(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0006.pt", "epoch_0008.pt", "last.pt"]
