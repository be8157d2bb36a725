"""The loader a MedicalSegmentationLoader hands on as `train_loader` and `val_loader`.

A torch DataLoader subclass rather than a wrapper, so everything that uses a DataLoader keeps
working unchanged: iteration, len(), `.dataset`, `.batch_size`, `.sampler` (the Trainer's
set_epoch), the generators a checkpoint saves, and isinstance checks in other nodes. What it adds
are declared fields, `batch_augment` and `labels`, instead of attributes set on a plain DataLoader.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from segflow.data.label_scheme import PLAIN, LabelScheme

# image, label = batch_augment(image, label), on whole batches already on the training device
BatchAugmentFn = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


class SegmentationLoader(DataLoader):
    """A DataLoader of segmentation batches that declares the augmentation its consumer runs.

    `batch_augment` is None, or for a training loader with `augmentation_on: device` the
    BatchAugment the workers left out: the consumer applies it to each training batch on its device.
    """

    batch_augment: BatchAugmentFn | None
    labels: LabelScheme  # regions and ignore label of the batches' labels (segflow.data.label_scheme)

    def __init__(self, dataset: Any, *, batch_augment: BatchAugmentFn | None = None, labels: LabelScheme = PLAIN,
                 **settings: Any):
        super().__init__(dataset, **settings)
        self.batch_augment = batch_augment
        self.labels = labels


def batch_augment_of(loader: Any) -> BatchAugmentFn | None:
    """The device-side augmentation `loader` declares. A plain DataLoader (from a test or another
    node) declares none, so its batches are used as they come."""
    return loader.batch_augment if isinstance(loader, SegmentationLoader) else None


def labels_of(loader: Any) -> LabelScheme:
    """The regions and ignore label of `loader`'s labels; plain classes for any other loader."""
    return loader.labels if isinstance(loader, SegmentationLoader) else PLAIN
