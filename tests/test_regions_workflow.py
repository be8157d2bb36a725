"""A BraTS-like dataset with nested regions in nnU-Net v2 layout, from `segflow validate` to trained
regions, painted label maps and per-region scores."""
from __future__ import annotations

import json

import data_helpers as h  # tests/ is on sys.path (pytest rootdir-relative import)
import numpy as np
import pytest
import torch

from segflow.cli import main
from segflow.data.label_scheme import LabelScheme, Region
from segflow.data.readers import read
from segflow.data.regions import paint

REGIONS = ("whole_tumor", "tumor_core", "enhancing_tumor")


def _workflow(root, epochs: int, **loader) -> dict:
    return {"workflow": "brats_regions", "nodes": [
        {"type": "MedicalSegmentationLoader", "name": "data", "config": {
            "data_dir": str(root), "image_size": 16, "batch_size": 2, "samples_per_volume": 2, "val_fraction": 0.34,
            "augmentation": False, "seed": 0, **loader}},
        {"type": "UNet3D", "name": "model", "config": {"in_channels": 4, "out_channels": 3, "base_channels": 8,
                                                       "depth": 3, "num_res_units": 1}},
        {"type": "LossFunction", "name": "loss", "config": {}},
        {"type": "Optimizer", "name": "optimizer", "config": {"learning_rate": 0.01}},
        {"type": "Trainer", "name": "trainer", "config": {"epochs": epochs, "save_frequency": 0,
                                                          "monitor": "val_dice_enhancing_tumor"}},
        {"type": "Predictor", "name": "predictor", "config": {"save_probabilities": True}},
        {"type": "Evaluator", "name": "evaluator", "config": {"metrics": ["dice"]}}]}


def _run(tmp_path, workflow: dict) -> tuple:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow))
    assert main(["validate", str(path)]) == 0
    run_dir = tmp_path / "run"
    assert main(["run", str(path), "--device", "cpu", "--no-progress", "--run-dir", str(run_dir)]) == 0
    history = json.loads((run_dir / "history.json").read_text())
    return run_dir, history, json.loads((run_dir / "evaluation" / "metrics.json").read_text())


def test_brats_like_regions_train_predict_in_class_order_and_score_per_region(tmp_path):
    root = h.brats_nnunet(tmp_path / "brats", n=6, size=16)
    run_dir, history, metrics = _run(tmp_path, _workflow(root, epochs=4))
    last = history[-1]
    assert all(last[f"val_dice_{r}"] > 0 for r in REGIONS)  # each region learnt something
    assert last["val_dice"] == pytest.approx(np.mean([last[f"val_dice_{r}"] for r in REGIONS]))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert list(metrics["per_class"]) == list(REGIONS)
    assert all(metrics["per_class"][r]["dice"]["mean"] > 0 for r in REGIONS)
    labels = LabelScheme(tuple(Region(n, c) for n, c in zip(REGIONS, [(1, 2, 3), (2, 3), (3,)])), (1, 2, 3))
    for case in json.loads((run_dir / "split.json").read_text())["val"]:
        predicted = read(run_dir / "predictions" / f"{case}.nii.gz", is_label=True).array
        probabilities = np.load(run_dir / "predictions" / f"{case}_probabilities.npy")
        assert probabilities.shape == (3, 16, 16, 16)  # one sigmoid per region, not one per class
        repainted = paint(torch.from_numpy(probabilities.astype(np.float32)), labels).numpy()
        near_half = (np.abs(probabilities.astype(np.float32) - 0.5) < 1e-3).any(0)  # float16 may round across 0.5
        assert np.array_equal(predicted[~near_half], repainted[~near_half]) and near_half.mean() < 0.01
        assert set(np.unique(predicted)) <= {0, 1, 2, 3}


@pytest.mark.slow
def test_msd_regions_with_an_ignore_label_from_loader_settings_train(tmp_path):
    root = h.brats_msd(tmp_path / "msd", n=6, size=16)
    for path in sorted((root / "labelsTr").glob("*.nii.gz")):  # a slab of every case left unannotated
        label = read(path, is_label=True).array
        label[:, :, :4] = 4
        h.save_nifti(path, label, np.eye(4))
    run_dir, history, metrics = _run(tmp_path, _workflow(root, epochs=4, regions=h.BRATS_REGIONS,
                                                         regions_class_order=[1, 2, 3], ignore_label=4))
    assert all(history[-1][f"val_dice_{r}"] > 0 for r in REGIONS)
    assert all(metrics["per_class"][r]["dice"]["mean"] > 0 for r in REGIONS)
    for case in json.loads((run_dir / "split.json").read_text())["val"]:
        assert 4 not in np.unique(read(run_dir / "predictions" / f"{case}.nii.gz", is_label=True).array)
