"""Per-case, per-class segmentation metrics, streamed over a PredictionSet.

Overlap metrics are counted here (they are one line each from TP/FP/FN); the surface metrics
use MONAI's `compute_hausdorff_distance` (95th percentile) and `compute_surface_dice` with the
case's voxel spacing, so distances are in physical units (mm for NIfTI, pixels for PNG).

Rules for empty masks (docs/evaluation.md), decided per case and class:
  * status "absent": neither prediction nor ground truth has the class. Every metric is NaN,
    the row is still written (with the flag) and counted in `n_absent`, and left out of means.
  * status "missed" (only ground truth) / "spurious" (only prediction): Dice, IoU and surface
    Dice are 0; the undefined one of precision/recall is 0 (sklearn's zero_division=0); HD95
    is the image diagonal in physical units, the largest distance the image allows.
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

ALL_METRICS = ("dice", "iou", "precision", "recall", "hd95", "surface_dice")
HIGHER_IS_BETTER = {"dice": True, "iou": True, "precision": True, "recall": True, "hd95": False, "surface_dice": True}


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


def surface_metrics(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...],
                    tolerance: float, want: Iterable[str]) -> dict[str, float]:
    """HD95 and surface Dice of two non-empty boolean masks, in the units of `spacing`."""
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    want = set(want)
    p, g = _crop_pair(pred, gt)
    tp = torch.from_numpy(np.ascontiguousarray(p))[None, None].float()
    tg = torch.from_numpy(np.ascontiguousarray(g))[None, None].float()
    out: dict[str, float] = {}
    with warnings.catch_warnings():  # MONAI's deprecation notes on its own internal arguments
        warnings.simplefilter("ignore")
        if "hd95" in want:
            out["hd95"] = float(compute_hausdorff_distance(tp, tg, include_background=True, percentile=95,
                                                           spacing=list(spacing))[0, 0])
        if "surface_dice" in want:
            out["surface_dice"] = float(compute_surface_dice(tp, tg, [float(tolerance)], include_background=True,
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
        values["hd95"] = float(math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing))))
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


def evaluate(pset, *, metrics: Iterable[str] = ALL_METRICS, include_background: bool = False,
             surface_tolerance: float = 1.0, output_dir: Path | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Score every labelled case of `pset`, loading one case at a time; write metrics.csv/json
    to `output_dir` when given. Returns the `Metrics` dict (see docs/evaluation.md)."""
    metrics = tuple(metrics)
    first = 0 if include_background else 1
    classes = list(range(first, pset.num_classes))
    names = list(pset.class_names) if len(pset.class_names) == pset.num_classes else \
        ["background" if c == 0 else f"class_{c}" for c in range(pset.num_classes)]
    rows: list[dict] = []
    skipped: list[str] = []
    for record in pset:
        if record.label_path is None:
            log(f"evaluation: case {record.case!r} has no ground truth; skipped")
            skipped.append(record.case)
            continue
        _, pred, label = pset.load(record)
        if pred.shape != label.shape:
            raise ValueError(
                f"case {record.case!r}: prediction {record.prediction_path} has shape {tuple(pred.shape)} but the "
                f"label {record.label_path} has {tuple(label.shape)}; predictions must be in the label's geometry")
        for arr, path, what in ((pred, record.prediction_path, "prediction"), (label, record.label_path, "label")):
            top = int(arr.max()) if arr.size else 0
            if top >= pset.num_classes or (arr.size and int(arr.min()) < 0):
                raise ValueError(f"case {record.case!r}: the {what} {path} holds class {top if top >= 0 else arr.min()}, "
                                 f"outside 0..{pset.num_classes - 1} (num_classes={pset.num_classes})")
        spacing = _spacing_for(record, label.ndim)
        for c in classes:
            row = {"case": record.case, "class": c, "class_name": names[c]}
            row.update(class_metrics(pred == c, label == c, spacing, metrics, surface_tolerance))
            rows.append(row)
        del pred, label
    per_class, mean = summarise(rows, [names[c] for c in classes], metrics)
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
    """A small Markdown table: one row per class plus the mean, mean ± std per metric."""
    metrics = result["metrics"]
    lines = ["| class | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]

    def cell(entry: dict) -> str:
        return "n/a" if math.isnan(entry["mean"]) else f"{entry['mean']:.4f} ± {entry['std']:.4f}"

    for name, entry in result["per_class"].items():
        lines.append(f"| {name} | " + " | ".join(cell(entry[m]) for m in metrics) + " |")
    lines.append("| **mean** | " + " | ".join("n/a" if math.isnan(result["mean"][m]) else f"{result['mean'][m]:.4f}"
                                             for m in metrics) + " |")
    return "\n".join(lines)
