"""Evaluator: metrics against hand-computed values, empty-class rules, written files, the node."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segflow.evaluation.metrics import class_metrics, evaluate
from segflow.inference.records import PredictionRecord, PredictionSet
from segflow.nodes.base import RunContext
from segflow.nodes.evaluation import Evaluator, EvaluatorConfig

SPACING = (0.5, 2.0, 3.0)


def nifti(path: Path, arr: np.ndarray, spacing=SPACING) -> Path:
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))
    return path


def png(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def record3d(tmp: Path, case: str, pred: np.ndarray, label: np.ndarray | None, spacing=SPACING) -> PredictionRecord:
    image = nifti(tmp / f"{case}_img.nii.gz", np.zeros(pred.shape), spacing)
    return PredictionRecord(case, nifti(tmp / f"{case}_pred.nii.gz", pred, spacing), (image,),
                            nifti(tmp / f"{case}_lab.nii.gz", label, spacing) if label is not None else None,
                            spacing=tuple(nib.load(str(image)).header.get_zooms()))


def slab(z: int, shape=(8, 8, 8)) -> np.ndarray:
    a = np.zeros(shape, bool)
    a[2:7, 2:7, z] = True  # one voxel thick: every voxel is on the surface
    return a


# --- hand-computed surface distances with anisotropic spacing (0.5, 2.0, 3.0) mm ---

def test_hd95_and_surface_dice_of_a_slab_shifted_along_the_coarse_axis():
    # every predicted voxel is 2 slices = 6 mm from the truth, and vice versa
    row = class_metrics(slab(4), slab(2), SPACING, ["hd95", "surface_dice"], tolerance=5.9)
    assert row["status"] == "ok" and row["hd95"] == pytest.approx(6.0)
    assert row["surface_dice"] == 0.0
    assert class_metrics(slab(4), slab(2), SPACING, ["surface_dice"], tolerance=6.0)["surface_dice"] == 1.0


@pytest.mark.parametrize("axis, mm", [(0, 0.5), (1, 2.0)])
def test_hd95_uses_each_axis_own_spacing(axis, mm):
    gt = np.zeros((10, 10, 3), bool)
    gt[3:6, 3:6, 1] = True
    pred = np.roll(gt, 1, axis=axis)  # one voxel along x (0.5 mm) or y (2 mm)
    row = class_metrics(pred, gt, SPACING, ["hd95"], tolerance=1.0)
    # the shifted square's far edge is one voxel from the truth's: the largest (and 95th) distance
    assert row["hd95"] == pytest.approx(mm)


def test_hd95_is_the_95th_percentile_not_the_maximum():
    gt = slab(2)
    pred = gt.copy()
    pred[7, 7, 7] = True  # one stray voxel far away: 26 predicted surface voxels, 25 at distance 0
    row = class_metrics(pred, gt, SPACING, ["hd95", "surface_dice"], tolerance=1.0)
    assert row["hd95"] == pytest.approx(0.0)  # numpy's 95th percentile of 25 zeros and one outlier
    # surface Dice: (25 of the 26 predicted + all 25 true surface voxels within 1 mm) / (26 + 25)
    assert row["surface_dice"] == pytest.approx(50 / 51)


# --- the two HD95 definitions, against distances computed here from scratch ---

def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask minus its erosion (face-connected), as MONAI and medpy take a surface."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


def directed_distances(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """From each boundary point of `a` to the nearest boundary point of `b`, in mm: by brute force
    over all point pairs, checked against scipy's distance transform."""
    from scipy import ndimage

    pa, pb = (np.argwhere(boundary(m)) * np.asarray(spacing) for m in (a, b))
    brute = np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1)).min(axis=1)
    edt = ndimage.distance_transform_edt(~boundary(b), sampling=spacing)[boundary(a)]
    np.testing.assert_allclose(brute, edt, rtol=1e-9)
    return brute


def protruding_pair(ndim: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """The truth a box; the prediction the box plus a long thin protrusion, whose far boundary
    is more than 5 % of the predicted boundary but less than 5 % of both boundaries together."""
    if ndim == 2:
        gt = np.zeros((24, 20), bool)
        gt[4:12, 4:16] = True
        pred = gt.copy()
        pred[12:20, 8:11] = True
        return pred, gt, (2.0, 0.7)
    gt = np.zeros((14, 16, 12), bool)
    gt[3:9, 3:12, 3:8] = True
    pred = gt.copy()
    pred[9:13, 6:9, 4:7] = True
    return pred, gt, (2.5, 0.8, 1.5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's notes on its own internal arguments
@pytest.mark.parametrize("ndim, hd95, pooled", [(2, 15.1, 13.5), (3, 7.5, 5.0)])
def test_hd95_is_monais_larger_directed_percentile_and_hd95_pooled_is_medpys(ndim, hd95, pooled):
    import torch
    from monai.metrics import compute_hausdorff_distance

    pred, gt, spacing = protruding_pair(ndim)
    to_gt, to_pred = directed_distances(pred, gt, spacing), directed_distances(gt, pred, spacing)
    row = class_metrics(pred, gt, spacing, ["hd95", "hd95_pooled"], tolerance=1.0)
    assert row["hd95"] == pytest.approx(max(np.percentile(to_gt, 95), np.percentile(to_pred, 95)))
    assert row["hd95_pooled"] == pytest.approx(np.percentile(np.concatenate([to_gt, to_pred]), 95))
    assert (row["hd95"], row["hd95_pooled"]) == (pytest.approx(hd95), pytest.approx(pooled))  # they differ here
    monai = compute_hausdorff_distance(torch.from_numpy(pred)[None, None].float(),
                                       torch.from_numpy(gt)[None, None].float(), include_background=True,
                                       percentile=95, spacing=list(spacing))
    assert row["hd95"] == pytest.approx(float(monai[0, 0]))


def test_hd95_pooled_through_the_node_and_for_one_sided_classes(tmp_path):
    pred, gt, spacing = protruding_pair(3)
    rec = record3d(tmp_path, "p", pred.astype(np.uint8), gt.astype(np.uint8), spacing)
    result = evaluate(PredictionSet([rec], spatial_dims=3), metrics=EvaluatorConfig(
        metrics="HD95, hd95-pooled").metrics, output_dir=tmp_path / "out", log=lambda s: None)
    assert result["metrics"] == ["hd95", "hd95_pooled"]
    assert result["per_class"]["class_1"]["hd95_pooled"]["mean"] == pytest.approx(5.0)
    with open(tmp_path / "out" / "metrics.csv") as f:
        assert float(next(csv.DictReader(f))["hd95_pooled"]) == pytest.approx(5.0)
    missed = class_metrics(np.zeros_like(gt), gt, spacing, ["hd95", "hd95_pooled"], 1.0)
    assert missed["hd95_pooled"] == missed["hd95"] == pytest.approx(math.hypot(14 * 2.5, 16 * 0.8, 12 * 1.5))


def test_overlap_metrics_on_known_counts():
    gt = np.zeros((10, 10), bool)
    gt[:, :4] = True  # 40 pixels
    pred = np.zeros((10, 10), bool)
    pred[:, 2:8] = True  # 60 pixels; 20 overlap
    row = class_metrics(pred, gt, (1.0, 1.0), ["dice", "iou", "precision", "recall"], 1.0)
    assert (row["tp"], row["fp"], row["fn"]) == (20, 40, 20)
    assert row["dice"] == pytest.approx(40 / 100)
    assert row["iou"] == pytest.approx(20 / 80)
    assert row["precision"] == pytest.approx(20 / 60)
    assert row["recall"] == pytest.approx(20 / 40)


def test_one_sided_and_absent_classes():
    empty = np.zeros((4, 6), bool)
    some = empty.copy()
    some[1, 1:3] = True
    metrics = ["dice", "iou", "precision", "recall", "hd95", "surface_dice"]
    missed = class_metrics(empty, some, (1.0, 2.0), metrics, 1.0)
    assert missed["status"] == "missed"
    assert [missed[m] for m in ("dice", "iou", "precision", "recall", "surface_dice")] == [0.0] * 5
    assert missed["hd95"] == pytest.approx(math.hypot(4 * 1.0, 6 * 2.0))  # the image diagonal in mm
    assert class_metrics(some, empty, (1.0, 2.0), metrics, 1.0)["status"] == "spurious"
    absent = class_metrics(empty, empty, (1.0, 2.0), metrics, 1.0)
    assert absent["status"] == "absent" and all(math.isnan(absent[m]) for m in metrics)


# --- the whole set: streaming, aggregates and files ---

def make_set(tmp: Path) -> PredictionSet:
    # 3 classes; class 2 exists only in case "b", where it is predicted perfectly
    a_gt, a_pred = np.zeros((8, 8, 8), np.uint8), np.zeros((8, 8, 8), np.uint8)
    a_gt[slab(2)] = 1
    a_pred[slab(4)] = 1
    b_gt = np.zeros((8, 8, 8), np.uint8)
    b_gt[slab(3)] = 1
    b_gt[0, 0, 0:2] = 2
    records = [record3d(tmp, "a", a_pred, a_gt), record3d(tmp, "b", b_gt.copy(), b_gt),
               record3d(tmp, "c", a_pred, None)]
    return PredictionSet(records, num_classes=3, spatial_dims=3, class_names=("bg", "liver", "tumour"))


def test_evaluate_aggregates_skips_unlabelled_and_writes_csv_and_json(tmp_path):
    pset = make_set(tmp_path)
    lines: list[str] = []
    result = evaluate(pset, surface_tolerance=1.0, output_dir=tmp_path / "out", log=lines.append)
    assert result["num_cases"] == 3 and result["num_evaluated"] == 2 and result["skipped_no_label"] == ["c"]
    assert any("'c' has no ground truth" in line for line in lines)
    assert [(r["case"], r["class_name"], r["status"]) for r in result["cases"]] == [
        ("a", "liver", "ok"), ("a", "tumour", "absent"), ("b", "liver", "ok"), ("b", "tumour", "ok")]
    liver, tumour = result["per_class"]["liver"], result["per_class"]["tumour"]
    assert liver["dice"]["mean"] == pytest.approx(0.5) and liver["dice"]["std"] == pytest.approx(0.5)
    assert liver["hd95"]["mean"] == pytest.approx(3.0)  # (6 mm + 0 mm) / 2
    assert tumour["dice"]["n"] == 1 and tumour["n_absent"] == 1 and tumour["dice"]["mean"] == 1.0
    assert result["mean"]["dice"] == pytest.approx((0.5 + 1.0) / 2)  # macro mean over classes
    assert result["units"] == "mm"

    with open(tmp_path / "out" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[1]["status"] == "absent" and rows[1]["dice"] == ""
    assert float(rows[0]["hd95"]) == pytest.approx(6.0)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["cases"][1]["dice"] is None  # NaN written as null, valid JSON
    assert saved["per_class"]["tumour"]["n_absent"] == 1 and saved["mean"]["dice"] == pytest.approx(0.75)


def test_means_are_named_as_means_over_cases_in_the_files_and_the_log(tmp_path):
    # the Trainer's validation Dice pools voxels over cases; these must say that they do not
    lines: list[str] = []
    result = evaluate(make_set(tmp_path), metrics=["dice"], output_dir=tmp_path / "out", log=lines.append)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["averaging"] == result["averaging"]
    assert "over cases" in saved["averaging"]["per_class"] and "not pooled" in saved["averaging"]["per_class"]
    assert "over classes" in saved["averaging"]["mean"]
    table = lines[-1].splitlines()
    assert "mean ± std over cases" in table[0] and "not pooled over voxels" in table[0]
    assert table[-1].startswith("| **mean over classes** | 0.7500")


def test_include_background_and_metric_subset(tmp_path):
    pset = make_set(tmp_path)
    result = evaluate(pset, metrics=["dice"], include_background=True, output_dir=None, log=lambda s: None)
    assert list(result["per_class"]) == ["bg", "liver", "tumour"]
    assert set(result["cases"][0]) >= {"dice"} and "hd95" not in result["cases"][0]


def test_2d_png_cases_in_pixels(tmp_path):
    gt = np.zeros((12, 12), np.uint8)
    gt[2:6, 2:6] = 1
    pred = np.roll(gt, 2, axis=1)
    rec = PredictionRecord("p", png(tmp_path / "p.png", pred), (png(tmp_path / "i.png", gt * 100),),
                           png(tmp_path / "l.png", gt))
    result = evaluate(PredictionSet([rec]), output_dir=None, log=lambda s: None)
    row = result["cases"][0]
    assert row["dice"] == pytest.approx(0.5) and row["hd95"] == pytest.approx(2.0) and result["units"] == "pixels"


def test_shape_mismatch_and_out_of_range_class_name_the_case(tmp_path):
    a = record3d(tmp_path, "bad", np.zeros((8, 8, 8)), np.zeros((8, 8, 6)))
    with pytest.raises(ValueError, match=r"case 'bad'.*shape"):
        evaluate(PredictionSet([a], num_classes=2), log=lambda s: None)
    lab = np.zeros((8, 8, 8))
    lab[0, 0, 0] = 5
    b = record3d(tmp_path, "five", np.zeros((8, 8, 8)), lab)
    with pytest.raises(ValueError, match=r"case 'five'.*class 5.*num_classes=2"):
        evaluate(PredictionSet([b], num_classes=2), log=lambda s: None)


def test_config_defaults_strings_and_spellings():
    cfg = EvaluatorConfig()
    assert cfg.metrics == ["dice", "iou", "precision", "recall", "hd95", "surface_dice"]
    assert cfg.include_background is False and cfg.output_dir == "evaluation"
    cfg = EvaluatorConfig(metrics='["Dice", "jaccard", "HD95", "nsd"]', surface_tolerance="2.5",
                          include_background="true")
    assert cfg.metrics == ["dice", "iou", "hd95", "surface_dice"]
    assert cfg.surface_tolerance == 2.5 and cfg.include_background is True
    assert EvaluatorConfig(metrics="dice, iou").metrics == ["dice", "iou"]
    with pytest.raises(ValueError):
        EvaluatorConfig(metrics=["accuracy"])
    with pytest.raises(ValueError):
        EvaluatorConfig(surface_tolerance=-1)


def test_evaluator_node_writes_inside_the_run_dir(tmp_path):
    pset = make_set(tmp_path)
    ctx = RunContext(run_dir=tmp_path / "run", workflow_name="t", log=lambda s: None)
    out = Evaluator("evaluator", EvaluatorConfig(metrics=["dice", "hd95"]), ctx).run(predictions=pset)
    metrics = out["metrics"]
    assert Path(metrics["files"]["csv"]) == tmp_path / "run" / "evaluation" / "metrics.csv"
    assert (tmp_path / "run" / "evaluation" / "metrics.json").exists()
    assert metrics["per_class"]["liver"]["hd95"]["n"] == 2
