"""Resuming with another number of epochs: the lr schedule is that of the new length, and the log says so."""
import pytest
import torch
import toy

from segflow.nodes.base import RunContext
from segflow.nodes.training import Trainer


def _run(run_dir, epochs, resume=None, **cfg):
    torch.manual_seed(0)
    model = toy.tiny_net()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    log = []
    ctx = RunContext(run_dir=run_dir, workflow_name="t", device="cpu", progress=False, resume=resume, log=log.append)
    out = Trainer("trainer", Trainer.Config(epochs=epochs, **cfg), ctx).run(
        model=model, train_loader=toy.loaders(n_train=8, n_val=4)[0], val_loader=toy.loaders(n_train=8, n_val=4)[1],
        loss_fn=toy.CrossEntropy(), optimizer=optimizer)
    return [row["lr"] for row in out["history"]], log


@pytest.mark.parametrize("settings, line", [
    ({"lr_schedule": "cosine"},
     "Trainer 'trainer': epochs 2 -> 3: the cosine schedule is recomputed for 3 epochs; epoch 3 lr 7.50e-04"),
    ({"lr_schedule": "cosine", "warmup_epochs": 1},
     "Trainer 'trainer': epochs 2 -> 3: the cosine schedule is recomputed for 3 epochs; epoch 3 lr 1.50e-03"),
    ({"lr_schedule": "poly"},
     "Trainer 'trainer': epochs 2 -> 3: the poly schedule is recomputed for 3 epochs; epoch 3 lr 1.12e-03"),
    ({"lr_schedule": "step", "step_size": 1, "gamma": 0.5},
     "Trainer 'trainer': epochs 2 -> 3: the step schedule does not depend on the number of epochs; "
     "epoch 3 lr 7.50e-04"),
    # no epoch after the first improves by min_delta: the lr is halved after epoch 2
    ({"lr_schedule": "plateau", "lr_patience": 0, "min_delta": 10, "early_stopping": False, "factor": 0.5},
     "Trainer 'trainer': epochs 2 -> 3: the plateau schedule keeps its state; epoch 3 lr 1.50e-03"),
])
def test_resumed_with_more_epochs_trains_at_the_lr_of_the_new_length(tmp_path, settings, line):
    _run(tmp_path / "short", 2, **settings)
    resumed, log = _run(tmp_path / "longer", 3, resume=str(tmp_path / "short" / "checkpoints" / "last.pt"), **settings)
    straight, _ = _run(tmp_path / "straight", 3, **settings)
    assert resumed[2:] == straight[2:]  # epoch 3, the one it trained
    assert any(message.startswith(line) for message in log), log


def test_resumed_with_the_same_epochs_says_nothing_about_the_schedule(tmp_path):
    straight, _ = _run(tmp_path / "a", 3, lr_schedule="cosine", save_frequency=1)
    resumed, log = _run(tmp_path / "b", 3, resume=str(tmp_path / "a" / "checkpoints" / "epoch_0002.pt"),
                        lr_schedule="cosine")
    assert resumed == straight
    assert not any("schedule" in message and "->" in message for message in log), log


def test_a_checkpoint_from_before_schedules_recorded_their_settings(tmp_path):
    """Such files hold the number of epochs in the Trainer config only: still recomputed and said."""
    _run(tmp_path / "short", 2, lr_schedule="cosine")
    last = tmp_path / "short" / "checkpoints" / "last.pt"
    data = torch.load(last, weights_only=True)
    del data["scheduler"]["settings"]
    torch.save(data, last)
    resumed, log = _run(tmp_path / "longer", 3, resume=str(last), lr_schedule="cosine")
    straight, _ = _run(tmp_path / "straight", 3, lr_schedule="cosine")
    assert resumed[2:] == straight[2:]
    assert ("Trainer 'trainer': epochs 2 -> 3: the cosine schedule is recomputed for 3 epochs; epoch 3 lr 7.50e-04"
            in log)
