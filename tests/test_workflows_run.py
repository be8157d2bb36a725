"""The shipped workflows run end to end from the command line on phantom data, with --set
overrides for size and epochs (the three seed_*.json examples among them)."""
import json
from pathlib import Path

import numpy as np
import pytest

from segflow.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path, name, *sets):
    run_dir = tmp_path / "run"
    args = ["run", str(ROOT / "workflows" / name), "--device", "cpu", "--no-progress", "--run-dir", str(run_dir)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return run_dir, json.loads((run_dir / "history.json").read_text())


def phantom(tmp_path, kind, cases):
    return [f"data_loader.data_dir={tmp_path / kind}", f"data_loader.synthetic={kind}",
            f"data_loader.synthetic_cases={cases}"]


@pytest.mark.parametrize("name", ["seed_unet.json", "seed_small_dataset.json"])
def test_seed_2d_unet_configurations_train(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    run_dir, history = run(tmp_path, name, *phantom(tmp_path, "phantom2d", 12), "data_loader.image_size=32",
                           "model.base_channels=8", "trainer.epochs=2")
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(0.0 <= row["val_dice"] <= 1.0 for row in history)
    # checkpoint_dir (seed_unet.json's, or the default) is relative, so it lives inside the run directory
    assert (run_dir / "checkpoints" / ("unet" if name == "seed_unet.json" else "") / "last.pt").is_file()


def test_seed_swin_unetr_configuration_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir, history = run(tmp_path, "seed_swin_unetr.json", *phantom(tmp_path, "phantom3d", 4),
                           "data_loader.image_size=64", "data_loader.batch_size=1", "model.img_size=64",
                           "model.embed_dim=12", "trainer.epochs=1", "trainer.warmup_epochs=0")
    assert len(history) == 1 and history[0]["train_loss"] > 0
    checkpoint = run_dir / "checkpoints" / "swin_unetr" / "last.pt"
    assert checkpoint.is_file()

    # and the prediction workflow applies it to the unlabelled test volumes, keeping each input's affine
    import nibabel as nib

    out = tmp_path / "predict"
    sets = [*phantom(tmp_path, "phantom3d", 4), "data_loader.image_size=64", "model.feature_size=12",
            f"weights.checkpoint_path={checkpoint}", "predictor.roi_size=[64, 64, 64]", "predictor.tta=false"]
    assert main(["run", str(ROOT / "workflows" / "predict_swin_unetr.json"), "--device", "cpu", "--no-progress",
                 "--run-dir", str(out), *sum((["--set", s] for s in sets), [])]) == 0
    predictions = sorted((out / "predictions").glob("*.nii.gz"))
    assert [p.name for p in predictions] == ["phantom_004.nii.gz", "phantom_005.nii.gz"]  # imagesTs, after 4 training
    for prediction in predictions:
        source = nib.load(tmp_path / "phantom3d" / "imagesTs" / prediction.name)
        written = nib.load(prediction)
        assert written.shape == source.shape and (written.affine == source.affine).all()


@pytest.mark.parametrize("size_mode", ["resize", "patches"])
def test_predict_unet_workflow_predicts_the_unlabelled_test_images(tmp_path, monkeypatch, size_mode):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    data = [*phantom(tmp_path, "phantom2d", 6), "data_loader.image_size=32", f"data_loader.size_mode={size_mode}"]
    train_dir, history = run(tmp_path, "quickstart.json", *data, "model.base_channels=8", "trainer.epochs=1")
    assert 0 <= history[-1]["val_dice"] <= 1  # patches: whole validation images through sliding windows
    out = tmp_path / "predict"
    sets = [*data, "model.base_channels=8", f"weights.checkpoint_path={train_dir / 'checkpoints' / 'best.pt'}"]
    assert main(["run", str(ROOT / "workflows" / "predict_unet.json"), "--device", "cpu", "--no-progress",
                 "--run-dir", str(out), *sum((["--set", s] for s in sets), [])]) == 0
    test_images = json.loads((tmp_path / "phantom2d" / "dataset.json").read_text())["test"]
    predictions = sorted((out / "predictions").glob("*.png"))
    assert [p.name for p in predictions] == sorted(Path(t).name for t in test_images)
    for prediction in predictions:
        with Image.open(prediction) as pred, Image.open(tmp_path / "phantom2d" / "imagesTs" / prediction.name) as src:
            assert pred.size == src.size  # each image's own size, not image_size 32
            assert set(np.unique(np.asarray(pred))) <= {0, 1}
    assert len({Image.open(p).size for p in predictions}) > 1  # the test images differ in size
    assert sorted(p.name for p in (out / "overlays").glob("*.png")) == sorted([*(p.name for p in predictions), "grid.png"])


def test_3d_phantom_workflow_learns_with_augmentation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, history = run(tmp_path, "phantom3d_unet.json", *phantom(tmp_path, "phantom3d", 8), "trainer.epochs=6")
    assert history[-1]["val_dice"] > 0.6
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_train_predict_evaluate_overlay_export_then_evaluate_from_the_checkpoint(tmp_path, monkeypatch):
    import csv

    from PIL import Image

    monkeypatch.chdir(tmp_path)
    data = phantom(tmp_path, "phantom2d", 10)
    run_dir, history = run(tmp_path, "train_evaluate_unet.json", *data, "data_loader.image_size=32",
                           "trainer.epochs=3", "overlay.max_images=2")
    assert len(history) == 3
    predictions = sorted((run_dir / "predictions").glob("*.png"))
    assert len(predictions) == 2  # val_fraction 0.2 of 10 cases
    source = tmp_path / "phantom2d" / "imagesTr" / predictions[0].name
    assert Image.open(predictions[0]).size == Image.open(source).size  # the case's own size, not image_size 32
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    with open(run_dir / "evaluation" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["case"] for r in rows} == {p.stem for p in predictions}
    assert 0.0 <= metrics["mean"]["dice"] <= 1.0 and metrics["num_evaluated"] == 2
    overlays = sorted(p.name for p in (run_dir / "overlays").glob("*.png"))
    assert overlays == sorted([*(p.name for p in predictions), "grid.png"])
    assert (run_dir / "export" / "model.onnx").stat().st_size > 0

    # the same weights, loaded by CheckpointLoader in a workflow that does not train, score the same
    eval_dir = tmp_path / "eval"
    last = run_dir / "checkpoints" / "last.pt"  # the weights the Trainer handed on (no early stopping)
    assert main(["run", str(ROOT / "workflows" / "evaluate_unet.json"), "--device", "cpu", "--no-progress",
                 "--run-dir", str(eval_dir), "--set", f"weights.checkpoint_path={last}", *sum(
                     (["--set", s] for s in [*data, "data_loader.image_size=32", "predictor.tta=[\"flip\"]"]), [])]) == 0
    again = json.loads((eval_dir / "evaluation" / "metrics.json").read_text())
    assert again["mean"]["dice"] == pytest.approx(metrics["mean"]["dice"], abs=1e-6)


def test_cross_validation_folds_then_an_ensemble_of_them_predicts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = [*phantom(tmp_path, "phantom2d", 6), "data_loader.image_size=32"]
    best, vals = [], []
    for fold in (0, 1):
        out = tmp_path / f"fold_{fold}"
        assert main(["run", str(ROOT / "workflows" / "quickstart.json"), "--device", "cpu", "--no-progress",
                     "--run-dir", str(out), *sum((["--set", s] for s in [
                         *data, "model.base_channels=8", "trainer.epochs=1", f"data_loader.fold={fold}",
                         "data_loader.num_folds=2"]), [])]) == 0
        split = json.loads((out / "split.json").read_text())
        assert split["fold"] == fold and len(split["val"]) == 3 and not set(split["val"]) & set(split["train"])
        vals.append(set(split["val"]))
        best.append(str(out / "checkpoints" / "best.pt"))
    assert not vals[0] & vals[1] and len(vals[0] | vals[1]) == 6  # each case validated once
    out = tmp_path / "predict"
    sets = [*data, "model.base_channels=8", f"weights.checkpoint_path={json.dumps(best)}", "predictor.tta=false"]
    assert main(["run", str(ROOT / "workflows" / "predict_unet.json"), "--device", "cpu", "--no-progress",
                 "--run-dir", str(out), *sum((["--set", s] for s in sets), [])]) == 0
    test_images = json.loads((tmp_path / "phantom2d" / "dataset.json").read_text())["test"]
    assert len(list((out / "predictions").glob("*.png"))) == len(test_images)
