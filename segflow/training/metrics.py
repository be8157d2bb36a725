"""Validation metrics accumulated on the device: confusion matrices, read once per epoch.

Two kinds of Dice, because people compare them with the Evaluator's and they differ:

* pooled (`dice`, `iou`, ... and their per-class columns): counts summed over every validation
  voxel before dividing (nnU-Net's "pseudo Dice" during training), so a large case weighs more
  than a small one;
* per case (`dice_case_mean`, `dice_case_mean_<c>`): each case's Dice per class, averaged over the
  cases that have the class in their label or prediction, then over the foreground classes: the
  Evaluator's `dice` mean, every case weighing the same.

A class absent from both prediction and label has no defined Dice: it is NaN and left out of the
means. The matrices stay on the device (one per validated image, n×n counts each), so no step
waits for the host; `compute` reads them with one copy.
"""
from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import torch

from segflow.workflow import distributed

# What the history columns are, for metrics.json and the docs (docs/training.md says the same).
METRIC_DEFINITIONS = {
    "val_dice": "Dice of all validation voxels pooled (one confusion matrix over the validation set), "
                "mean over foreground classes; val_dice_<c> per class",
    "val_dice_case_mean": "mean over validation cases of each case's Dice (per class over the cases that have "
                          "the class, then the mean over foreground classes), as the Evaluator's dice mean; "
                          "val_dice_case_mean_<c> per class",
    "val_dice_<region>": "data with regions: one region's Dice (its sigmoid above 0.5 against the classes it "
                         "unites), pooled over the validation voxels; val_dice and val_dice_case_mean are then "
                         "means over the regions; ignore-label voxels count nowhere",
}


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), torch.tensor(math.nan, dtype=torch.float64))


def _foreground_mean(values: torch.Tensor) -> float:
    fg = values[1:]
    fg = fg[~fg.isnan()]
    return float(fg.mean()) if len(fg) else math.nan


def _case_ids(cases: Any, images: int) -> list[str] | None:
    """The batch's "case" ids as strings, or None when it has no usable ones."""
    if isinstance(cases, torch.Tensor):  # a CPU tensor from the DataLoader's collate: no device sync
        cases = cases.tolist()
    if isinstance(cases, (list, tuple)) and len(cases) == images and all(isinstance(c, (str, int)) for c in cases):
        return [str(c) for c in cases]
    return None


class ConfusionMeter:
    """`ignore`: the ignore label's class index; its voxels are counted nowhere."""

    def __init__(self, num_classes: int, device: torch.device, ignore: int | None = None):
        self.n = max(2, num_classes)
        self.ignore = ignore
        self.matrix = torch.zeros(self.cells, dtype=torch.int64, device=device)  # pooled
        self.image_matrices: list[torch.Tensor] = []  # (images, n*n) per batch
        self.case_ids: list[Hashable] = []  # one per validated image: the batch's id, or a number
        self.unnamed = 0  # images without a case id, each its own case

    @property
    def cells(self) -> int:
        """Counts kept per image."""
        return self.n * self.n

    def update(self, logits: torch.Tensor, label: torch.Tensor, cases: Any = None) -> None:
        """`logits` (B, C, *spatial); `label` (B, 1, *spatial) class indices. One output channel
        means a sigmoid binary model: foreground where the logit is positive. `cases`: the batch's
        case ids (images of one case are counted together); without them each image is a case."""
        if logits.shape[1] == 1:
            pred = (logits[:, 0] > 0).long()
        else:
            pred = logits.argmax(1)
        truth = label[:, 0].long() if label.dim() == logits.dim() else label.long()
        counted = None
        if self.ignore is not None:  # ignored voxels go to cell 0 with weight 0
            counted = (truth != self.ignore).reshape(-1).long()
            truth = truth.masked_fill(truth == self.ignore, 0)
        images, cells = pred.shape[0], self.cells
        index = (truth * self.n + pred).reshape(images, -1)
        index += torch.arange(images, device=pred.device)[:, None] * cells  # in place: volumes can be large
        index = index.reshape(-1)
        # scatter-add has no data-dependent output size, so unlike bincount it never syncs on CUDA
        per_image = torch.zeros(images * cells, dtype=torch.int64, device=pred.device)
        per_image.index_add_(0, index, torch.ones_like(index) if counted is None else counted)
        self._add(per_image.reshape(images, cells), cases)

    def _add(self, per_image: torch.Tensor, cases: Any) -> None:
        """The batch's counts (images, cells), and the case each image belongs to."""
        images = per_image.shape[0]
        self.matrix += per_image.sum(0)
        self.image_matrices.append(per_image)
        ids = _case_ids(cases, images)
        if ids is None:  # numbers: they cannot meet a dataset's ids, which are strings
            ids = list(range(self.unnamed, self.unnamed + images))
            self.unnamed += images
        self.case_ids += ids

    def compute(self, across_processes: bool = False) -> dict[str, float]:
        """Pooled per-class and foreground-mean dice, iou, precision, recall, pixel accuracy, and the
        per-case Dice means. Across processes the pooled matrix is summed and the cases gathered."""
        pooled, images, ids = self.read(across_processes)
        return {**pooled_metrics(pooled.reshape(self.n, self.n)),
                **case_dice_means(images.reshape(-1, self.n, self.n), ids)}

    def read(self, across_processes: bool) -> tuple[torch.Tensor, torch.Tensor, list[Hashable]]:
        """(pooled counts (cells,), per-image counts (images, cells), the images' case ids) on the host."""
        if across_processes:
            distributed.all_reduce_(self.matrix)
        cells = self.cells
        read = torch.cat([self.matrix[None], *self.image_matrices]).double().cpu()  # the one host read
        pooled, images = read[0], read[1:].reshape(-1, cells)
        ids: list[Hashable] = self.case_ids
        if across_processes:  # unnamed images are numbered per rank: the rank keeps them apart
            parts = distributed.gather_objects((images, self.case_ids))
            images = torch.cat([m.reshape(-1, cells) for m, _ in parts])
            ids = [c if isinstance(c, str) else (rank, c) for rank, (_, part) in enumerate(parts) for c in part]
        return pooled, images, ids


def pooled_metrics(m: torch.Tensor) -> dict[str, float]:
    """Per-class and foreground-mean dice, iou, precision, recall, and pixel accuracy of one confusion
    matrix `m` (rows: truth, columns: prediction)."""
    tp = m.diag()
    fp = m.sum(0) - tp
    fn = m.sum(1) - tp
    per = {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }
    total = m.sum()
    out: dict[str, float] = {"accuracy": float(tp.sum() / total) if total > 0 else math.nan}
    for name, values in per.items():
        out[name] = _foreground_mean(values)
        for c, v in enumerate(values.tolist()):
            out[f"{name}_{c}"] = v
    return out


def case_dice_means(matrices: torch.Tensor, case_ids: list[Hashable]) -> dict[str, float]:
    """`dice_case_mean` and `dice_case_mean_<c>` from one (n, n) matrix per image, the images of one
    case id summed first (2-D slices of one volume, a case split over processes)."""
    n = matrices.shape[-1]
    rows: dict[Hashable, int] = {}
    index = torch.tensor([rows.setdefault(c, len(rows)) for c in case_ids], dtype=torch.int64)
    per_case = torch.zeros(len(rows), n, n, dtype=torch.float64).index_add_(0, index, matrices.double())
    tp = per_case.diagonal(dim1=1, dim2=2)
    fp = per_case.sum(1) - tp
    fn = per_case.sum(2) - tp
    dice = _ratio(2 * tp, 2 * tp + fp + fn)  # (cases, classes); NaN where a case lacks the class
    counted = (~dice.isnan()).sum(0)
    class_means = torch.where(counted > 0, dice.nan_to_num(0.0).sum(0) / counted.clamp(min=1),
                              torch.tensor(math.nan, dtype=torch.float64))
    out = {"dice_case_mean": _foreground_mean(class_means)}
    for c, v in enumerate(class_means.tolist()):
        out[f"dice_case_mean_{c}"] = v
    return out
