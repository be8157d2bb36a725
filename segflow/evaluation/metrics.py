"""Per-case, per-class segmentation metrics, streamed over a PredictionSet.

Overlap metrics are counted here (they are one line each from TP/FP/FN); the surface metrics
use MONAI's boundary distances (`get_edge_surface_distance`) and `compute_surface_dice` with the
case's voxel spacing, so distances are in physical units (mm for NIfTI, pixels for PNG).

Two 95th-percentile Hausdorff distances, because libraries disagree on the definition and the
two can differ by tens of mm on real labels:
  * "hd95": MONAI's `compute_hausdorff_distance(percentile=95)`: the 95th percentile of the
    distances from the predicted boundary to the true one, the same from the true boundary to
    the predicted one, and the larger of the two.
  * "hd95_pooled": medpy's `hd95` and seg-metrics': both directions' distances pooled into one
    set and its 95th percentile; usually the smaller, as one direction's far-off distances are
    diluted by the other direction's.
Both use the same boundaries (a mask minus its erosion) and a linearly interpolated percentile.

Every summary over cases (per_class mean/std/median) is a mean over cases: each case weighs
the same, however many voxels it has. It is not the Dice of all voxels pooled over the cases.

Data with regions or an ignore label (the PredictionSet's `labels`), as nnU-Net evaluates them: a
region is scored like a class, its mask in prediction and truth being the classes it unites
(`class` is then the region's channel, `class_name` its name); voxels whose truth is the ignore label
are left out of both masks, so nothing predicted there changes any metric.

Rules for empty masks (docs/evaluation.md), decided per case and class:
  * status "absent": neither prediction nor ground truth has the class. Every metric is NaN,
    the row is still written (with the flag) and counted in `n_absent`, and left out of means.
  * status "missed" (only ground truth) / "spurious" (only prediction): Dice, IoU and surface
    Dice are 0; the undefined one of precision/recall is 0 (sklearn's zero_division=0); both
    HD95s are the image diagonal in physical units, the largest distance the image allows.
  * status "ok": both present, every metric as defined.
"""
from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from segflow.workflow.files import atomic_write_text, write_json

ALL_METRICS = ("dice", "iou", "precision", "recall", "hd95", "surface_dice")  # the default set
HIGHER_IS_BETTER = {"dice": True, "iou": True, "precision": True, "recall": True, "hd95": False,
                    "hd95_pooled": False, "surface_dice": True}
HAUSDORFF = ("hd95", "hd95_pooled")
# Written into metrics.json: the Trainer's validation Dice pools voxels over cases, so its number
# differs from these on the same data, and a reader must be able to tell which one they hold
AVERAGING = {"per_class": "mean, std (population) and median over cases: each case counts once, however many "
                          "voxels it has (not pooled over the voxels of all cases)",
             "mean": "macro mean: the average over classes of the per-class means over cases"}


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _crop_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to their joint bounding box plus a one-voxel margin: the distances do not
    change, and a small structure in a large volume costs little."""
    union = pred | gt
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(idx[0] - 1, 0), idx[-1] + 2))
    box = tuple(box)
    return pred[box], gt[box]


def hausdorff95(distances: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Both HD95 definitions (module doc) from the directed boundary distances
    (predicted -> true, true -> predicted)."""
    pred_to_gt, gt_to_pred = (np.asarray(d, dtype=np.float64) for d in distances)
    return {"hd95": float(max(np.percentile(pred_to_gt, 95), np.percentile(gt_to_pred, 95))),
            "hd95_pooled": float(np.percentile(np.concatenate([pred_to_gt, gt_to_pred]), 95))}


def surface_metrics(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...],
                    tolerance: float, want: Iterable[str]) -> dict[str, float]:
    """HD95 (both definitions) and surface Dice of two non-empty boolean masks, in the units of `spacing`."""
    import torch
    from monai.metrics import compute_surface_dice
    from monai.metrics.utils import get_edge_surface_distance

    want = set(want)
    p, g = _crop_pair(pred, gt)
    tp = torch.from_numpy(np.ascontiguousarray(p)).float()  # as compute_hausdorff_distance hands them on
    tg = torch.from_numpy(np.ascontiguousarray(g)).float()
    out: dict[str, float] = {}
    with warnings.catch_warnings():  # MONAI's deprecation notes on its own internal arguments
        warnings.simplefilter("ignore")
        if want & set(HAUSDORFF):
            # the distances compute_hausdorff_distance takes its percentiles of, computed once for both
            _, distances, _ = get_edge_surface_distance(tp, tg, spacing=list(spacing), symmetric=True)
            out.update({k: v for k, v in hausdorff95(tuple(d.numpy() for d in distances)).items() if k in want})
        if "surface_dice" in want:
            out["surface_dice"] = float(compute_surface_dice(tp[None, None], tg[None, None],
                                                             [float(tolerance)], include_background=True,
                                                             spacing=list(spacing))[0, 0])
    return out


def class_metrics(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...], metrics: Iterable[str],
                  tolerance: float) -> dict[str, float | str]:
    """One row's values and status for the boolean masks of one class (see the module doc)."""
    metrics = tuple(metrics)
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    has_pred, has_gt = tp + fp > 0, tp + fn > 0
    row: dict[str, float | str] = {"tp": tp, "fp": fp, "fn": fn}
    if not has_pred and not has_gt:
        row["status"] = "absent"
        row.update({m: math.nan for m in metrics})
        return row
    row["status"] = "ok" if has_pred and has_gt else ("missed" if has_gt else "spurious")
    values = {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }
    if row["status"] == "ok":
        values.update(surface_metrics(pred, gt, spacing, tolerance, metrics))
    else:
        diagonal = float(math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing))))
        values.update({m: diagonal for m in HAUSDORFF})
        values["surface_dice"] = 0.0
    row.update({m: values[m] for m in metrics})
    return row


def _spacing_for(record, ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in (record.spacing or ()))[:ndim]
    return spacing + (1.0,) * (ndim - len(spacing))


def _summary(values: list[float]) -> dict[str, float | int]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "median": float(np.median(arr)), "n": int(arr.size)}


def summarise(rows: list[dict], class_names: list[str], metrics: Iterable[str]) -> tuple[dict, dict]:
    """(per-class {metric: mean/std/median/n} with n_absent, and the macro mean over classes).
    Rows with status "absent" are left out; a class absent everywhere has NaN means."""
    metrics = tuple(metrics)
    per_class: dict[str, dict] = {}
    for name in class_names:
        mine = [r for r in rows if r["class_name"] == name]
        counted = [r for r in mine if r["status"] != "absent"]
        entry: dict = {m: _summary([r[m] for r in counted]) for m in metrics}
        entry["n_absent"] = len(mine) - len(counted)
        entry["n_missed"] = sum(r["status"] == "missed" for r in mine)
        entry["n_spurious"] = sum(r["status"] == "spurious" for r in mine)
        per_class[name] = entry
    mean = {}
    for m in metrics:
        means = [per_class[c][m]["mean"] for c in class_names if not math.isnan(per_class[c][m]["mean"])]
        mean[m] = float(np.mean(means)) if means else math.nan
    return per_class, mean


def _scored(pset, include_background: bool) -> list[tuple[int, str, Callable[[np.ndarray], np.ndarray]]]:
    """(index, name, mask of a class map) of what is scored: each class (background only when asked), or
    for data with regions each region (index: its channel), as nnU-Net evaluates them."""
    if pset.labels.region_based:
        return [(i, r.name, lambda a, r=r: np.isin(a, r.classes)) for i, r in enumerate(pset.labels.regions)]
    names = list(pset.class_names) if len(pset.class_names) == pset.num_classes else \
        ["background" if c == 0 else f"class_{c}" for c in range(pset.num_classes)]
    return [(c, names[c], lambda a, c=c: a == c) for c in range(0 if include_background else 1, pset.num_classes)]


def _case_rows(pset, record, scored, metrics: tuple[str, ...], tolerance: float) -> list[dict]:
    """One case's rows. Voxels whose truth is the ignore label are left out of both masks, so nothing
    predicted there counts."""
    _, pred, label = pset.load(record)
    if pred.shape != label.shape:
        raise ValueError(
            f"case {record.case!r}: prediction {record.prediction_path} has shape {tuple(pred.shape)} but the "
            f"label {record.label_path} has {tuple(label.shape)}; predictions must be in the label's geometry")
    ignore = pset.labels.ignore
    known = None if ignore is None else label != ignore
    for arr, path, what in ((pred, record.prediction_path, "prediction"), (label, record.label_path, "label")):
        values = arr if known is None or what == "prediction" else arr[known]
        top = int(values.max()) if values.size else 0
        if top >= pset.num_classes or (values.size and int(values.min()) < 0):
            raise ValueError(f"case {record.case!r}: the {what} {path} holds class {top if top >= 0 else values.min()}, "
                             f"outside 0..{pset.num_classes - 1} (num_classes={pset.num_classes})")
    spacing = _spacing_for(record, label.ndim)
    rows = []
    for index, name, mask in scored:
        p, g = mask(pred), mask(label)
        if known is not None:
            p, g = p & known, g & known
        rows.append({"case": record.case, "class": index, "class_name": name,
                     **class_metrics(p, g, spacing, metrics, tolerance)})
    return rows


def evaluate(pset, *, metrics: Iterable[str] = ALL_METRICS, include_background: bool = False,
             surface_tolerance: float = 1.0, output_dir: Path | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Score every labelled case of `pset`, loading one case at a time; write metrics.csv/json
    to `output_dir` when given. Returns the `Metrics` dict (see docs/evaluation.md)."""
    metrics = tuple(metrics)
    scored = _scored(pset, include_background)
    rows: list[dict] = []
    skipped: list[str] = []
    for record in pset:
        if record.label_path is None:
            log(f"evaluation: case {record.case!r} has no ground truth; skipped")
            skipped.append(record.case)
            continue
        rows += _case_rows(pset, record, scored, metrics, surface_tolerance)
    per_class, mean = summarise(rows, [name for _, name, _ in scored], metrics)
    result = {
        "metrics": list(metrics),
        "include_background": include_background,
        "surface_tolerance": surface_tolerance,
        "units": "mm" if any(r.spacing for r in pset) else "pixels",
        "num_cases": len(pset),
        "num_evaluated": len(pset) - len(skipped),
        "skipped_no_label": skipped,
        "cases": rows,
        "per_class": per_class,
        "mean": mean,
        "averaging": AVERAGING,
    }
    if skipped:
        log(f"evaluation: {len(skipped)} of {len(pset)} case(s) had no ground truth and were skipped")
    if output_dir is not None:
        result["files"] = write(result, Path(output_dir))
    log(summary_table(result))
    return result


def write(result: dict, output_dir: Path) -> dict[str, str]:
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = output_dir / "metrics.csv", output_dir / "metrics.json"
    columns = ["case", "class", "class_name", "status", *result["metrics"], "tp", "fp", "fn"]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in result["cases"]:
        # NaN as an empty cell: pandas and spreadsheets read it back as missing
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    atomic_write_text(csv_path, text.getvalue())
    files = {"csv": str(csv_path), "json": str(json_path)}
    write_json(json_path, {**result, "files": files})
    return files


def summary_table(result: dict) -> str:
    """A small Markdown table under a line saying what is averaged: one row per class (mean ± std
    over cases) plus the macro mean over classes."""
    metrics = result["metrics"]
    caption = (f"evaluation: mean ± std over cases ({result['num_evaluated']} evaluated; each case counts once, "
               "not pooled over voxels); last row: mean over classes")
    lines = [caption, "| class | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]

    def cell(entry: dict) -> str:
        return "n/a" if math.isnan(entry["mean"]) else f"{entry['mean']:.4f} ± {entry['std']:.4f}"

    for name, entry in result["per_class"].items():
        lines.append(f"| {name} | " + " | ".join(cell(entry[m]) for m in metrics) + " |")
    macro = ("n/a" if math.isnan(result["mean"][m]) else f"{result['mean'][m]:.4f}" for m in metrics)
    lines.append("| **mean over classes** | " + " | ".join(macro) + " |")
    return "\n".join(lines)
