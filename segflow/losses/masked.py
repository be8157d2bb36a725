"""The loss terms of `SegmentationLoss` for data with regions or an ignore label.

Targets are explicit channels: one per region (multi-hot, sigmoid) or one-hot classes. Voxels of the
ignore label count in no term: Dice and Tversky see the probabilities and the targets multiplied by
the known-voxel mask (as nnU-Net's loss_mask), cross-entropy skips them (ignore_index), binary
cross-entropy and focal average over the known voxels only. Each masked voxel's terms are multiplied
by exactly 0, so the gradients there are exactly 0 (a softmax voxel depends on its own logits only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segflow.data.label_scheme import LabelScheme
from segflow.data.regions import known, region_masks


@dataclass
class Target:
    hot: torch.Tensor  # float (B, K, *S): region channels, or classes one-hot (one channel: the foreground)
    mask: torch.Tensor | None  # float (B, 1, *S): 1 where the voxel has ground truth; None without ignore label
    label: torch.Tensor  # long (B, 1, *S) class indices as given (the ignore label included)


class SchemeTerms:
    """Builds the target once per loss call (`start`), then computes each term on it (`term`)."""

    def __init__(self, labels: LabelScheme, opts: dict, label_smoothing: float):
        self.labels, self.opts, self.label_smoothing = labels, opts, label_smoothing
        self._modules: dict[tuple[str, bool, int], nn.Module] = {}
        self.target: Target | None = None

    def check(self, logits: torch.Tensor, label: torch.Tensor, class_weights: torch.Tensor | None) -> None:
        """Label and channels fit (first call only: reading the label waits for the GPU)."""
        c, labels = logits.shape[1], self.labels
        if labels.region_based and c != len(labels.regions):
            raise ValueError(f"loss: the network outputs {c} channel(s) but the data has {len(labels.regions)} regions "
                             f"({', '.join(labels.names())}); set the network's out_channels to {len(labels.regions)}")
        lab = label if labels.ignore is None else label.masked_fill(label == labels.ignore, 0)
        top = int(lab.max())
        if not labels.region_based and top >= max(c, 2):
            raise ValueError(f"loss: the label holds class index {top} but the network outputs {c} channel(s); "
                             f"set the network's out_channels to the number of classes ({top + 1})")
        want = c if labels.region_based else max(c, 2)
        if class_weights is not None and class_weights.numel() != want:
            what = "region, in region order" if labels.region_based else "class, background first"
            raise ValueError(f"LossFunction.class_weights has {class_weights.numel()} values but the network outputs "
                             f"{want} {'regions' if labels.region_based else 'classes'}; give one weight per {what}")

    def start(self, label: torch.Tensor, channels: int, binary: bool) -> None:
        mask = known(label, self.labels)
        clean = label if mask is None else label * mask
        if self.labels.region_based:
            hot = region_masks(clean, self.labels)
        elif channels == 1:
            hot = clean > 0
        else:
            hot = F.one_hot(clean[:, 0], channels).movedim(-1, 1)
        self.target = Target(hot.float(), None if mask is None else mask.float(), label)

    def term(self, name: str, logits: torch.Tensor, binary: bool, class_weights: torch.Tensor | None) -> torch.Tensor:
        t = self.target
        assert t is not None, "start() first"
        hot, mask = t.hot.to(logits.dtype), None if t.mask is None else t.mask.to(logits.dtype)
        if name == "ce":
            return self._ce(logits, hot, mask, binary, class_weights)
        if name == "focal":
            values = self._module("focal", binary, logits.shape[1], class_weights)(logits, hot)
            if logits.shape[1] == 1 and class_weights is not None:  # MONAI weighs channels; one channel: per voxel
                w = class_weights.to(logits)
                mask = (w[1] * hot + w[0] * (1 - hot)) * (1 if mask is None else mask)
            return _masked_mean(values, mask)
        probs = torch.sigmoid(logits) if binary else torch.softmax(logits, 1)
        if mask is not None:
            probs, hot = probs * mask, hot * mask
        return self._module(name, binary, logits.shape[1], None)(probs, hot)

    def _ce(self, logits, hot, mask, binary: bool, class_weights) -> torch.Tensor:
        ls = self.label_smoothing
        if not binary:  # softmax: torch skips the ignore label itself, and weighs as with plain labels
            w = None if class_weights is None else class_weights.to(logits)
            ignore = -100 if self.labels.ignore is None else self.labels.ignore
            return F.cross_entropy(logits, self.target.label[:, 0], weight=w, label_smoothing=ls, ignore_index=ignore)
        bce = F.binary_cross_entropy_with_logits(logits, hot * (1 - ls) + 0.5 * ls, reduction="none")
        weight = torch.ones_like(bce) if mask is None else mask.expand_as(bce)
        if class_weights is not None:
            c = logits.shape[1]
            w = class_weights.to(logits)
            w = w[1] * hot + w[0] * (1 - hot) if c == 1 else w.view(1, c, *([1] * (logits.ndim - 2)))
            weight = weight * w
        return (bce * weight).sum() / weight.sum().clamp(min=1e-8)

    def _module(self, name: str, binary: bool, c: int, class_weights) -> nn.Module:
        """MONAI's term on probabilities and explicit targets (focal: on logits, per element)."""
        key = (name, binary, c)
        if key not in self._modules:
            from monai.losses import DiceLoss, FocalLoss, TverskyLoss

            o = self.opts
            background = True if self.labels.region_based or c == 1 else o["include_background"]
            plain = dict(sigmoid=False, softmax=False, to_onehot_y=False, include_background=background,
                         smooth_nr=o["smooth"], smooth_dr=o["smooth"])
            if name == "dice":
                module = DiceLoss(**plain)
            elif name == "tversky":
                module = TverskyLoss(**plain, alpha=o["tversky_alpha"], beta=o["tversky_beta"])
            else:
                weight = None if class_weights is None or c == 1 else class_weights.tolist()
                module = FocalLoss(include_background=True, to_onehot_y=False, gamma=o["gamma"], alpha=o["alpha"],
                                   weight=weight, use_softmax=not binary, reduction="none")
            self._modules[key] = module
        return self._modules[key]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean over every element of `values` (B, K, *S) whose voxel has ground truth (weighted by
    `mask`, which is 0 where it has none)."""
    if mask is None:
        return values.mean()
    weight = mask.expand_as(values)
    return (values * weight).sum() / weight.sum().clamp(min=1e-8)
