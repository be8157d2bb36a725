"""Metrics, pictures and ensembles on regions and with an ignore label: validation meters, the
Evaluator, overlays, sigmoid averaging, and the Trainer's static check of the loss against the data."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segflow.data.label_scheme import LabelScheme, Region
from segflow.evaluation import overlay
from segflow.evaluation.metrics import evaluate
from segflow.inference.ensemble import Ensemble, follow_labels
from segflow.inference.records import PredictionRecord, PredictionSet
from segflow.inference.tta import to_probabilities
from segflow.training.metrics import ConfusionMeter
from segflow.training.region_metrics import RegionMeter
from segflow.workflow import spec
from segflow.workflow.errors import WorkflowError

BRATS = LabelScheme((Region("whole_tumor", (1, 2, 3)), Region("tumor_core", (2, 3)), Region("enhancing_tumor", (3,))),
                    (1, 2, 3))
CPU = torch.device("cpu")


def _maps(seed: int, shape=(2, 1, 8, 8, 6), classes: int = 4) -> torch.Tensor:
    return torch.randint(0, classes, shape, generator=torch.Generator().manual_seed(seed))


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return 2 * np.count_nonzero(pred & truth) / (np.count_nonzero(pred) + np.count_nonzero(truth))


def test_region_meter_scores_each_region_as_its_own_binary_problem():
    label = _maps(0)
    logits = torch.randn(2, 3, 8, 8, 6, generator=torch.Generator().manual_seed(1))
    meter = RegionMeter(BRATS, CPU)
    meter.update(logits, label, ["a", "b"])
    out = meter.compute()
    truth = label[:, 0].numpy()
    for r, region in enumerate(BRATS.regions):
        expected = _dice(logits[:, r].numpy() > 0, np.isin(truth, region.classes))
        assert out[f"val_dice_{region.key}".removeprefix("val_")] == pytest.approx(expected)
    assert out["dice"] == pytest.approx(np.mean([out[f"dice_{r.key}"] for r in BRATS.regions]))
    assert set(out) >= {"dice_case_mean_tumor_core", "iou_enhancing_tumor", "recall_whole_tumor"}


@pytest.mark.parametrize("labels, channels", [(LabelScheme(BRATS.regions, BRATS.paint, 4), 3),
                                              (LabelScheme(ignore=4), 4)])
def test_validation_metrics_do_not_see_ignored_voxels(labels, channels):
    label = _maps(2)
    label[..., :2] = 4
    logits = torch.randn(2, channels, 8, 8, 6, generator=torch.Generator().manual_seed(3))
    changed = logits.clone()
    changed[..., :2] = torch.randn(2, channels, 8, 8, 2) * 5
    meters = [RegionMeter(labels, CPU) if labels.regions else ConfusionMeter(channels, CPU, labels.ignore)
              for _ in range(3)]
    meters[0].update(logits, label)
    meters[1].update(changed, label)
    plain = LabelScheme(labels.regions, labels.paint)
    cropped = RegionMeter(plain, CPU) if labels.regions else ConfusionMeter(channels, CPU)
    cropped.update(logits[..., 2:], label[..., 2:])
    first = meters[0].compute()
    assert first == meters[1].compute() == cropped.compute()


# ---- the Evaluator ---------------------------------------------------------------------------------

def _nifti(path: Path, arr: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), np.eye(4)), str(path))
    return path


def _pset(tmp: Path, pred: np.ndarray, label: np.ndarray, labels: LabelScheme) -> PredictionSet:
    record = PredictionRecord("c", _nifti(tmp / "pred.nii.gz", pred), (_nifti(tmp / "img.nii.gz", pred * 0),),
                              _nifti(tmp / "lab.nii.gz", label), spacing=(1.0, 1.0, 1.0))
    return PredictionSet([record], num_classes=4, spatial_dims=3, output_dir=tmp, labels=labels)


def test_evaluator_scores_regions_from_the_label_maps(tmp_path):
    truth, pred = _maps(4)[0, 0].numpy(), _maps(5)[0, 0].numpy()
    result = evaluate(_pset(tmp_path, pred, truth, BRATS), metrics=["dice", "hd95"], log=lambda _: None)
    assert list(result["per_class"]) == ["whole_tumor", "tumor_core", "enhancing_tumor"]
    for row, region in zip(result["cases"], BRATS.regions):
        assert row["dice"] == pytest.approx(_dice(np.isin(pred, region.classes), np.isin(truth, region.classes)))


@pytest.mark.parametrize("labels", [LabelScheme(ignore=4), LabelScheme(BRATS.regions, BRATS.paint, 4)])
def test_evaluator_metrics_are_unchanged_where_the_truth_is_ignored(tmp_path, labels):
    truth, pred = _maps(6)[0, 0].numpy(), _maps(7)[0, 0].numpy()
    truth[:, :, :2] = 4
    other = pred.copy()
    other[:, :, :2] = 3 - other[:, :, :2]  # a different prediction where there is no ground truth
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    kw = dict(metrics=["dice", "precision", "hd95", "surface_dice"], log=lambda _: None)
    first = evaluate(_pset(tmp_path / "a", pred, truth, labels), **kw)
    second = evaluate(_pset(tmp_path / "b", other, truth, labels), **kw)
    assert first["cases"] == second["cases"] and first["mean"] == second["mean"]
    whole = first["cases"][0]  # class 1, or the whole tumour: counted over the annotated voxels only
    assert whole["tp"] + whole["fn"] == np.count_nonzero(np.isin(truth, (1, 2, 3) if labels.regions else (1,)))


# ---- overlays, ensembles, TTA ------------------------------------------------------------------------

def test_overlays_draw_regions_and_leave_ignored_voxels_out_of_the_errors(tmp_path):
    labels = LabelScheme(BRATS.regions, BRATS.paint, 4)
    painter = overlay._Painter(4, (), dict(overlay.ERROR_COLOURS), 0.5, labels)
    assert painter.class_names == ["background", "whole_tumor", "tumor_core", "enhancing_tumor"]
    pred, label = painter.shown(np.array([0, 1, 2, 3, 1]), np.array([0, 1, 3, 2, 4]))
    assert pred.tolist() == [0, 1, 2, 3, 1] and label.tolist() == [0, 1, 3, 2, overlay.IGNORED]
    assert overlay.error_codes(pred, label).tolist() == [0, 1, 4, 4, 0]
    truth = _maps(8)[0, 0].numpy()
    truth[:, :, :2] = 4
    paths = overlay.render_overlays(_pset(tmp_path, _maps(9)[0, 0].numpy(), truth, labels), tmp_path / "png",
                                    log=lambda _: None)
    assert [p.name for p in paths] == ["c.png", "grid.png"] and all(p.stat().st_size > 0 for p in paths)


def test_region_probabilities_and_ensembles_average_sigmoids():
    logits = torch.tensor([[[-2.0]], [[0.5]], [[3.0]]])[None]  # (1, 3, 1, 1): three regions
    assert torch.allclose(to_probabilities(logits, sigmoid=True), torch.sigmoid(logits))

    class Const(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, x):
            return self.value.expand(x.shape[0], -1, *x.shape[2:])

    ensemble = Ensemble([Const(logits[0]), Const(-logits[0])])
    follow_labels(ensemble, True)
    mean = (torch.sigmoid(logits) + torch.sigmoid(-logits)) / 2
    assert torch.allclose(torch.sigmoid(ensemble(torch.zeros(1, 1, 1, 1))), mean, atol=1e-6)


# ---- validate: the loss against the data --------------------------------------------------------------

@pytest.mark.parametrize("loss, loader, code", [
    ({"sigmoid": False}, {"regions": {"wt": [1, 2], "et": [2]}, "regions_class_order": [1, 2]}, "loss_label_mismatch"),
    ({"loss_type": "combined", "dice_weight": 1, "boundary_weight": 1}, {"ignore_label": 2}, "loss_label_mismatch"),
    ({"class_weights": [1, 2, 3]}, {"regions": {"wt": [1, 2], "et": [2]}, "regions_class_order": [1, 2]},
     "loss_label_mismatch"),
    ({}, {"regions": {"wt": [1, 2], "et": [2]}, "regions_class_order": [1, 2]}, None),
])
def test_validate_refuses_a_loss_that_cannot_follow_the_data(loss, loader, code):
    text = json.dumps({"workflow": "w", "nodes": [
        {"type": "MedicalSegmentationLoader", "name": "data", "config": {"data_dir": "d", **loader}},
        {"type": "UNet2D", "name": "model", "config": {"out_channels": 2}},
        {"type": "LossFunction", "name": "loss", "config": loss},
        {"type": "Optimizer", "name": "optimizer", "config": {}},
        {"type": "Trainer", "name": "trainer", "config": {}}]})
    try:
        spec.loads(text, "wf.json")
        found = []
    except WorkflowError as e:
        found = [(i.code, i.path) for i in e.issues if i.severity == "error"]
    assert found == ([(code, "nodes[4].config")] if code else [])
