"""Label maps to region channels and back, on whatever device the tensors are (segflow.data.label_scheme
says what the regions are).

Labels travel as class-index maps (one byte a voxel) through the loader and its augmentation, whose
nearest-neighbour resampling keeps them exact; they become region channels only where they are used,
on the training device (`region_masks`): R comparisons, no extra bytes moved between processes.
"""
from __future__ import annotations

import numpy as np
import torch

from segflow.data.label_scheme import LabelScheme


def region_masks(label: torch.Tensor, labels: LabelScheme) -> torch.Tensor:
    """(B, R, *S) bool: voxel in region r, from class indices `label` (B, 1, *S)."""
    classes = label[:, 0]
    return torch.stack([torch.isin(classes, torch.tensor(r.classes, device=label.device)) for r in labels.regions], 1)


def known(label: torch.Tensor, labels: LabelScheme) -> torch.Tensor | None:
    """(B, 1, *S) bool: voxels with ground truth (not the ignore label); None when every voxel has it."""
    return None if labels.ignore is None else label != labels.ignore


def paint(region_probabilities: torch.Tensor, labels: LabelScheme, threshold: float = 0.5) -> torch.Tensor:
    """A class-index map (*S) from (R, *S) region probabilities by nnU-Net's rule: each region above
    `threshold` painted in region order as its regions_class_order class, later regions over earlier
    ones. Pass logits with threshold 0 (sigmoid 0.5)."""
    top = max(labels.paint, default=0)
    out = torch.zeros(region_probabilities.shape[1:], dtype=torch.uint8 if top < 256 else torch.int16,
                      device=region_probabilities.device)
    for channel, value in zip(region_probabilities, labels.paint):
        out[channel > threshold] = value
    return out


def region_masks_np(label: np.ndarray, labels: LabelScheme) -> list[np.ndarray]:
    """One boolean mask per region of a class-index map (numpy, for the Evaluator)."""
    return [np.isin(label, r.classes) for r in labels.regions]
