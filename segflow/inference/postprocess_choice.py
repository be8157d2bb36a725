"""Choosing the post-processing on validation cases, by nnU-Net's rule (`determine_postprocessing`):

1. keep the largest component of all foreground classes taken together, in every case; chosen when
   the mean Dice over the foreground classes rises strictly and no class's mean Dice falls;
2. with more than one foreground class, then for each class in turn (on the output of step 1 when
   it was chosen): keep that class's largest component; chosen when that class's mean Dice rises
   strictly.

A class's mean Dice is the mean over the cases that have the class in their label or prediction
(a case with neither has no Dice), as the Evaluator's; the foreground mean is the mean of the class
means. Keeping a class's largest component only turns that class's voxels into background, so no
other class's Dice moves and the per-class trials do not depend on each other: each case is
counted once (`count_case`), keeping a few numbers per class, and every trial is decided from them
(`choose`), without holding the label maps.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from segflow.inference.postprocess import PostProcessing, outside_largest_component, step_name


@dataclass(frozen=True)
class CaseCounts:
    """One case's (true positives, predicted voxels, true voxels) per class, shape (classes, 3): as
    predicted (`plain`), after the foreground's largest component (`foreground`), and row c after
    class c's own largest component, applied to `plain` (`own_plain`) and to `foreground`
    (`own_foreground`)."""

    case: str
    plain: np.ndarray
    foreground: np.ndarray
    own_plain: np.ndarray
    own_foreground: np.ndarray


def _rates(truth: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """(n, 3): each foreground class's (tp, predicted voxels, true voxels); row 0 stays 0."""
    out = np.zeros((n, 3), dtype=np.int64)
    for c in range(1, n):
        p, t = pred == c, truth == c
        out[c] = np.count_nonzero(p & t), np.count_nonzero(p), np.count_nonzero(t)
    return out


def _without(rates: np.ndarray, truth: np.ndarray, pred: np.ndarray, removed: np.ndarray | None) -> np.ndarray:
    """`rates` once the `removed` voxels are predicted as background: their true positives become false
    negatives, and each class predicts fewer voxels."""
    if removed is None:
        return rates
    gone = _rates(truth[removed], pred[removed], len(rates))
    out = rates.copy()
    out[:, 0] -= gone[:, 0]
    out[:, 1] -= gone[:, 1]
    return out


def _own_components(rates: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Row c: class c's rates after keeping class c's largest component."""
    rows = rates.copy()
    for c in range(1, len(rates)):
        removed = outside_largest_component(pred == c)
        if removed is not None:
            rows[c] = _without(rates, truth, pred, removed)[c]
    return rows


def count_case(pred: np.ndarray, truth: np.ndarray, num_classes: int, case: str = "") -> CaseCounts:
    """Count one case: `pred` and `truth` are class-index maps of one shape; values at or above
    `num_classes` in `truth` are an error."""
    n = max(2, num_classes)
    if pred.shape != truth.shape:
        raise ValueError(f"case {case}: prediction {pred.shape} and label {truth.shape} differ in shape")
    if truth.size and int(truth.max()) >= n:
        raise ValueError(f"case {case}: the label has class {int(truth.max())}, the model predicts {n} classes")
    plain = _rates(truth, pred, n)
    removed = outside_largest_component(pred != 0)
    foreground = _without(plain, truth, pred, removed)
    if n == 2:  # one foreground class: its own component is the foreground's
        return CaseCounts(case, plain, foreground, foreground, foreground)
    own_plain = _own_components(plain, truth, pred)
    if removed is None:
        return CaseCounts(case, plain, foreground, own_plain, own_plain)
    fg_pred = np.where(removed, 0, pred).astype(pred.dtype, copy=False)
    return CaseCounts(case, plain, foreground, own_plain, _own_components(foreground, truth, fg_pred))


def class_means(rows: list[np.ndarray]) -> np.ndarray:
    """Mean Dice over cases per class (NaN where no case has the class) from `_rates` rows."""
    counts = np.stack(rows).astype(np.float64)  # (cases, classes, 3)
    tp, predicted, true = counts[..., 0], counts[..., 1], counts[..., 2]
    den = predicted + true  # 2 tp + fp + fn
    dice = np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class no case has: NaN, said in the report
        return np.nanmean(dice, axis=0)


def _mean(values: np.ndarray) -> float:
    fg = values[1:][~np.isnan(values[1:])]
    return float(fg.mean()) if fg.size else math.nan


def _table(values: np.ndarray) -> dict[str, float | None]:
    return {str(c): (None if math.isnan(v) else float(v)) for c, v in enumerate(values) if c}


def choose(cases: list[CaseCounts], num_classes: int,
           class_names: tuple[str, ...] | list[str] = ()) -> tuple[PostProcessing, list[str]]:
    """The rule (module doc) and one log line per trial; the PostProcessing's report holds the Dice
    before and after per class, and every trial."""
    n = max(2, num_classes)
    if not cases:
        return PostProcessing((), {"cases": 0}), ["no validation case with a label: no post-processing chosen"]
    foreground = tuple(range(1, n))
    plain, after_fg = class_means([c.plain for c in cases]), class_means([c.foreground for c in cases])
    worse = [c for c in foreground if after_fg[c] < plain[c]]
    take_fg = _mean(after_fg) > _mean(plain) and not worse
    steps: list[tuple[int, ...]] = [foreground] if take_fg else []
    trials = [{"classes": list(foreground), "mean_dice_before": _mean(plain), "mean_dice_after": _mean(after_fg),
               "dice_before": _table(plain), "dice_after": _table(after_fg), "chosen": take_fg}]
    name = step_name(foreground, class_names, n)
    lines = [f"{name}: mean Dice {_change(_mean(plain), _mean(after_fg))}, "
             + ("chosen" if take_fg else "not chosen" + (f" (class {worse[0]} got worse)" if worse else ""))]
    current = after_fg if take_fg else plain
    final = current.copy()
    if len(foreground) > 1:
        own = class_means([c.own_foreground if take_fg else c.own_plain for c in cases])
        for c in foreground:
            chosen = bool(own[c] > current[c])
            if chosen:
                steps.append((c,))
                final[c] = own[c]
            trials.append({"classes": [c], "dice_before": _nan_free(current[c]), "dice_after": _nan_free(own[c]),
                           "chosen": chosen})
            lines.append(f"{step_name((c,), class_names)}: Dice {_change(current[c], own[c])}, "
                         + ("chosen" if chosen else "not chosen"))
    report = {"cases": len(cases),
              "dice": {"before": {"mean": _nan_free(_mean(plain)), "classes": _table(plain)},
                       "after": {"mean": _nan_free(_mean(final)), "classes": _table(final)}},
              "trials": trials}
    if class_names:
        report["class_names"] = {str(c): str(class_names[c]) for c in foreground if c < len(class_names)}
    return PostProcessing(tuple(steps), report), lines


def _nan_free(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _change(before: float, after: float) -> str:
    """'0.8123 -> 0.8456 (+0.0333)'; the difference in 3 significant digits, since a gain too small to
    show in 4 decimals still decides."""
    if math.isnan(before) or math.isnan(after):
        return f"{before:.4f} -> {after:.4f}"
    return f"{before:.4f} -> {after:.4f} ({after - before:+.3g})"
