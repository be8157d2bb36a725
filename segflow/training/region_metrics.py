"""Validation metrics for region-based training: each region is a binary problem of its own.

A region is predicted where its sigmoid is above 0.5 (its logit above 0); its truth is the label's
classes it unites. Per image and region the meter keeps a 2 x 2 confusion matrix (ignore-label voxels
counted nowhere) on the device, and reads them with `ConfusionMeter`'s one host copy. The history gets,
per region by name, what the class columns are for plain classes: `val_dice_whole_tumor` (pooled over
the validation voxels), `val_iou_...`, `val_precision_...`, `val_recall_...`,
`val_dice_case_mean_...`; `val_dice` and `val_dice_case_mean` are the means over the regions.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from segflow.data.label_scheme import LabelScheme
from segflow.data.regions import known, region_masks
from segflow.training.metrics import ConfusionMeter, case_dice_means, pooled_metrics

POOLED = ("dice", "iou", "precision", "recall")


class RegionMeter(ConfusionMeter):
    def __init__(self, labels: LabelScheme, device: torch.device):
        self.labels = labels
        self.regions = len(labels.regions)
        super().__init__(2, device)

    @property
    def cells(self) -> int:
        return self.regions * 4  # per region: (truth, prediction) = (0, 0), (0, 1), (1, 0), (1, 1)

    def update(self, logits: torch.Tensor, label: torch.Tensor, cases: Any = None) -> None:
        truth = region_masks(label.long(), self.labels).flatten(2)  # (B, R, N)
        index = truth.long() * 2 + (logits > 0).flatten(2).long()
        counted = known(label, self.labels)
        cells = [(index == k) if counted is None else (index == k) & counted.flatten(2) for k in range(4)]
        self._add(torch.stack([c.sum(-1) for c in cells], -1).reshape(index.shape[0], -1), cases)

    def compute(self, across_processes: bool = False) -> dict[str, float]:
        pooled, images, ids = self.read(across_processes)
        pooled, images = pooled.reshape(self.regions, 2, 2), images.reshape(-1, self.regions, 2, 2)
        out: dict[str, float] = {}
        for r, region in enumerate(self.labels.regions):
            one = pooled_metrics(pooled[r])
            out.update({f"{m}_{region.key}": one[f"{m}_1"] for m in POOLED})
            out[f"dice_case_mean_{region.key}"] = case_dice_means(images[:, r], ids)["dice_case_mean_1"]
        for m in (*POOLED, "dice_case_mean"):
            values = [out[f"{m}_{r.key}"] for r in self.labels.regions if not math.isnan(out[f"{m}_{r.key}"])]
            out[m] = sum(values) / len(values) if values else math.nan
        return out


def meter_for(labels: LabelScheme, channels: int, device: torch.device) -> ConfusionMeter:
    """The validation meter for data with `labels`: per region, else per class (without the ignore label)."""
    if labels.region_based:
        return RegionMeter(labels, device)
    return ConfusionMeter(channels, device, labels.ignore)
