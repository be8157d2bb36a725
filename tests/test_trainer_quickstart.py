"""The run directory of a real workflow (workflows/quickstart.json, shrunk) holds every Trainer artefact."""
import json
from pathlib import Path

import pytest

executor = pytest.importorskip("segflow.workflow.executor")
ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_run_directory(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)  # the phantom data is written under the working directory
    lines = []
    run = tmp_path / "run"
    executor.run_workflow(ROOT / "workflows" / "quickstart.json", device="cpu", run_dir=run, progress=False,
                          log=lines.append,
                          sets=["trainer.epochs=2", "trainer.save_frequency=1", "data_loader.image_size=32"])
    for name in ("history.csv", "history.json", "metrics.json", "loss.png", "metrics.png", "lr.png",
                 "checkpoints/last.pt", "checkpoints/best.pt", "checkpoints/epoch_0002.pt"):
        assert (run / name).is_file(), name
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert any(l.startswith("epoch 2/2: train_loss") for l in lines)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train/loss", "val/loss", "val/dice", "val/iou", "val/precision", "val/recall", "val/accuracy",
            "train/lr", "train/grad_norm", "time/epoch_seconds"} <= set(events.Tags()["scalars"])
    assert events.Tags()["images"]
