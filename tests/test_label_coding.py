"""Label files that do not hold class indices as stored: 0/255 and 0/128/255 image masks, and values a
dataset.json declares.

One rule decodes them for the loader, the Predictor, the Evaluator and the overlays; predictions in
image formats are written back in the dataset's own values."""
from __future__ import annotations

import json
import math
from pathlib import Path

import data_helpers as h  # tests/ is on sys.path (pytest rootdir-relative import)
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from segflow.data.label_coding import LabelCoding
from segflow.data.loader import build_loaders
from segflow.evaluation.metrics import evaluate
from segflow.inference.records import PredictionRecord, PredictionSet
from segflow.nodes.data import MedicalSegmentationLoaderConfig as Config
from segflow.workflow.executor import run_workflow

GREY_3 = (0, 128, 255)


def quiet(*_):
    pass


def folder_dataset(root: Path, n: int = 6, levels=(0, 255), rgb: bool = False) -> Path:
    """images/ + masks/ with masks drawn in the grey `levels` (class c stored as levels[c])."""
    for i in range(n):
        image, label = h.case_2d(i, classes=len(levels))
        if rgb:  # a colour photograph-like image: three different channels
            image = np.stack([image, 255 - image, image // 2], axis=-1)
        h.save_png(root / "images" / f"case{i:02d}.png", image)
        h.save_png(root / "masks" / f"case{i:02d}.png", np.asarray(levels)[label])
    return root


def workflow(tmp_path: Path, data: Path, in_channels: int, classes: int) -> Path:
    nodes = [
        ("MedicalSegmentationLoader", "data_loader", {"data_dir": str(data), "image_size": 32, "batch_size": 4,
                                                      "augmentation": False, "val_fraction": 0.34, "seed": 0}),
        ("UNet2D", "model", {"in_channels": in_channels, "out_channels": classes, "base_channels": 8, "depth": 2}),
        ("LossFunction", "loss", {}),
        ("Optimizer", "optimizer", {"learning_rate": 0.01}),
        ("Trainer", "trainer", {"epochs": 2, "device": "cpu", "save_frequency": 0}),
        ("Predictor", "predictor", {"tta": False}),
        ("Evaluator", "evaluator", {"metrics": ["dice", "hd95"]}),
        ("SegmentationOverlay", "overlay", {"dpi": 30}),
    ]
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"workflow": "labels", "nodes": [{"type": t, "name": n, "config": c}
                                                                 for t, n, c in nodes]}))
    return path


@pytest.mark.parametrize("levels, rgb", [((0, 255), False), ((0, 255), True), (GREY_3, False)],
                         ids=["grey-0-255", "rgb-0-255", "grey-0-128-255"])
def test_grey_level_masks_train_predict_evaluate_and_overlay(tmp_path, monkeypatch, levels, rgb):
    monkeypatch.chdir(tmp_path)
    data = folder_dataset(tmp_path / "data", levels=levels, rgb=rgb)
    result = run_workflow(workflow(tmp_path, data, 3 if rgb else 1, len(levels)), device="cpu",
                          run_dir=tmp_path / "run", progress=False, log=quiet)
    metrics = result.outputs["evaluator"]["metrics"]
    assert all(math.isfinite(metrics["per_class"][name]["dice"]["mean"]) for name in metrics["per_class"])
    predictions = sorted((tmp_path / "run" / "predictions").glob("*.png"))
    assert metrics["num_evaluated"] == len(predictions) == result.outputs["data_loader"]["dataset_info"].num_val
    written = set().union(*(np.unique(np.asarray(Image.open(path))).tolist() for path in predictions))
    assert levels[-1] in written and written <= set(levels)  # viewable masks, in the dataset's own values
    assert result.outputs["overlay"]["images"][-1].name == "grid.png"


def test_three_grey_levels_are_decided_for_the_whole_dataset(tmp_path):
    """A mask without the middle class still reads 255 as class 2, not as the binary 0/255 rule's 1."""
    data = folder_dataset(tmp_path / "data", levels=GREY_3)
    _, label = h.case_2d(0)
    h.save_png(data / "masks" / "case00.png", label * 255)  # classes 0 and 2 only
    train, val, info = build_loaders(Config(data_dir=str(data), image_size=16, augmentation=False,
                                            val_fraction=0.34, seed=0, cache="memory"), log=quiet)
    assert info.num_classes == 3 and info.label_coding.values == GREY_3
    prepared = {p.case_id: p.label for p in val.dataset.source.memory + train.dataset.source.memory}
    assert set(np.unique(prepared["case00"]).tolist()) == {0, 2}
    assert set(np.unique(prepared["case01"]).tolist()) == {0, 1, 2}


def test_binary_masks_in_0_1_stay_class_indices(tmp_path):
    data = folder_dataset(tmp_path / "data", levels=(0, 1))
    _, _, info = build_loaders(Config(data_dir=str(data), image_size=16, augmentation=False, seed=0), log=quiet)
    assert info.num_classes == 2 and info.label_coding.identity


# --- the Evaluator and overlays read label files through the coding the records carry ---

def png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def grey_record(tmp: Path, pred: np.ndarray, label: np.ndarray, levels=(0, 255)) -> PredictionRecord:
    coding = LabelCoding(levels, "test")
    stored = np.asarray(levels)
    return PredictionRecord("c", png(tmp / "c_pred.png", stored[pred]), (png(tmp / "c_img.png", label * 90),),
                            png(tmp / "c_lab.png", stored[label]), label_coding=coding)


def test_evaluator_dice_of_a_0_255_prediction_equals_the_hand_computed_value(tmp_path):
    label = np.zeros((20, 20), np.int64)
    label[4:14, 4:14] = 1  # 100 pixels
    pred = np.zeros_like(label)
    pred[4:14, 8:18] = 1  # 100 pixels, 60 of them on the truth
    result = evaluate(PredictionSet([grey_record(tmp_path, pred, label)], num_classes=2), metrics=["dice", "iou"],
                      log=quiet)
    assert result["mean"]["dice"] == pytest.approx(2 * 60 / (100 + 100))
    assert result["mean"]["iou"] == pytest.approx(60 / 140)


def test_evaluator_reads_three_grey_levels_as_three_classes(tmp_path):
    label = np.zeros((12, 12), np.int64)
    label[2:8, 2:8], label[4:6, 4:6] = 1, 2
    result = evaluate(PredictionSet([grey_record(tmp_path, label, label, GREY_3)], num_classes=3),
                      metrics=["dice"], log=quiet)
    assert result["per_class"]["class_1"]["dice"]["mean"] == 1.0 == result["per_class"]["class_2"]["dice"]["mean"]


def test_overlay_of_a_perfect_0_255_prediction_scores_one(tmp_path):
    from segflow.evaluation import overlay

    label = np.zeros((20, 20), np.int64)
    label[5:15, 5:15] = 1
    record = grey_record(tmp_path, label, label)
    painter = overlay._Painter(2, (), dict(overlay.ERROR_COLOURS), 0.5)
    fig, tile = overlay._case_figure(overlay._pyplot(), painter, record, "auto", 1)
    assert fig._suptitle.get_text() == "c - foreground Dice 1.000" and tile[1] == 1.0


def test_a_value_outside_the_coding_names_the_file_and_the_values(tmp_path):
    label = np.zeros((8, 8), np.int64)
    record = grey_record(tmp_path, label, label)
    png(record.label_path, np.full((8, 8), 7))
    with pytest.raises(ValueError, match=r"c_lab.png holds value\(s\) \[7\].*0/255"):
        PredictionSet.load(record)


def test_coding_round_trip_and_a_class_without_a_stored_value():
    coding = LabelCoding(GREY_3, "test")
    classes = np.array([[0, 1], [2, 1]])
    stored = coding.encode(classes)
    assert stored.dtype == np.uint8 and stored.tolist() == [[0, 128], [255, 128]]
    np.testing.assert_array_equal(coding.decode(stored, "x.png"), classes)
    with pytest.raises(ValueError, match=r"class 3 has no value .*0/128/255 as classes 0/1/2 \(test\).*nifti or npy"):
        coding.encode(np.array([0, 3]))
    assert coding.for_prediction("p.nii.gz").identity and coding.for_prediction("p.PNG") == coding


# --- values a dataset.json declares ---

def test_dataset_json_label_values_are_read_as_classes_and_predictions_stay_indices(tmp_path, monkeypatch):
    """{"background": 0, "tumour": 255} in an nnU-Net dataset of NIfTI volumes: the loader trains on 0/1,
    NIfTI predictions hold class indices, and the Evaluator still decodes the 0/255 ground truth."""
    root = tmp_path / "Dataset002_Grey"
    for i in range(4):
        image, label = h.case_3d(i)
        h.save_nifti(root / "imagesTr" / f"p{i}_0000.nii.gz", image)
        h.save_nifti(root / "labelsTr" / f"p{i}.nii.gz", (label * 255).astype(np.uint8))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "tumour": 255}, "numTraining": 4}))
    _, val, info = build_loaders(Config(data_dir=str(root), image_size=8, augmentation=False, seed=0,
                                            val_fraction=0.25), log=quiet)
    assert info.num_classes == 2 and info.class_names == ["background", "tumour"]
    assert info.label_coding.values == (0, 255)
    assert set(np.unique(next(iter(val))["label"].numpy()).tolist()) == {0, 1}

    from segflow.inference.predict import predict
    from segflow.nodes.base import RunContext
    from segflow.nodes.inference import PredictorConfig

    class Perfect:  # predicts the ground truth of each validation case, so Dice must be 1
        def __init__(self, truth):
            self.truth = truth

        def __call__(self, image):
            import torch

            one_hot = torch.nn.functional.one_hot(self.truth.long(), 2).movedim(-1, 1).float()
            return one_hot * 20 - 10

        def to(self, _device):
            return self

        def eval(self):
            return self

    batch = next(iter(val))
    ctx = RunContext(run_dir=tmp_path / "run", workflow_name="t", log=quiet)
    settings = PredictorConfig(tta=False, device="cpu", roi_size=list(batch["image"].shape[2:]))
    pset = predict(settings, ctx, "predictor", Perfect(batch["label"][:, 0]), val, info)
    (record,) = pset.records
    assert set(np.unique(np.asanyarray(nib.load(record.prediction_path).dataobj)).tolist()) == {0, 1}
    result = evaluate(pset, metrics=["dice"], log=quiet)
    assert result["mean"]["dice"] == 1.0


def test_msd_labels_declared_with_gaps_name_the_classes_in_value_order(tmp_path):
    from segflow.data.layouts import find_cases

    root = h.msd_3d(tmp_path / "msd", n=2)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "255": "lesion", "128": "oedema"}
    (root / "dataset.json").write_text(json.dumps(meta))
    layout = find_cases(root)
    assert layout.class_names == ["background", "oedema", "lesion"] and layout.label_values == (0, 128, 255)
