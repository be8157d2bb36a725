"""Validation metrics accumulated on the device: one confusion matrix, read once per epoch.

Counts are summed over the whole validation set before dividing (nnU-Net's "pseudo Dice" during
training), so a small case does not weigh as much as a large one and no per-step host sync is
needed. A class absent from both prediction and label has no defined Dice: it is NaN per class and
left out of the foreground mean.
"""
from __future__ import annotations

import math

import torch


class ConfusionMeter:
    def __init__(self, num_classes: int, device: torch.device):
        self.n = max(2, num_classes)
        self.matrix = torch.zeros(self.n * self.n, dtype=torch.int64, device=device)

    def update(self, logits: torch.Tensor, label: torch.Tensor) -> None:
        """`logits` (B, C, *spatial); `label` (B, 1, *spatial) class indices. One output channel
        means a sigmoid binary model: foreground where the logit is positive."""
        if logits.shape[1] == 1:
            pred = (logits[:, 0] > 0).long()
        else:
            pred = logits.argmax(1)
        truth = label[:, 0].long() if label.dim() == logits.dim() else label.long()
        index = (truth * self.n + pred).reshape(-1)
        # scatter-add has no data-dependent output size, so unlike bincount it never syncs on CUDA
        self.matrix.index_add_(0, index, torch.ones_like(index))

    def compute(self) -> dict[str, float]:
        """Per-class and foreground-mean dice, iou, precision, recall, and pixel accuracy."""
        m = self.matrix.reshape(self.n, self.n).double().cpu()  # rows: truth, columns: prediction
        tp = m.diag()
        fp = m.sum(0) - tp
        fn = m.sum(1) - tp
        nan = torch.tensor(float("nan"), dtype=torch.float64)

        def ratio(num, den):
            return torch.where(den > 0, num / den.clamp(min=1), nan)

        per = {
            "dice": ratio(2 * tp, 2 * tp + fp + fn),
            "iou": ratio(tp, tp + fp + fn),
            "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn),
        }
        total = m.sum()
        out: dict[str, float] = {"accuracy": float(tp.sum() / total) if total > 0 else math.nan}
        for name, values in per.items():
            fg = values[1:]
            fg = fg[~fg.isnan()]
            out[name] = float(fg.mean()) if len(fg) else math.nan
            for c, v in enumerate(values.tolist()):
                out[f"{name}_{c}"] = v
        return out
