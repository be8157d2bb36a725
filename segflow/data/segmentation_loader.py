"""The loader a MedicalSegmentationLoader hands on as `train_loader` and `val_loader`.

A torch DataLoader subclass rather than a wrapper, so everything that uses a DataLoader keeps
working unchanged: iteration, len(), `.dataset`, `.batch_size`, `.sampler` (the Trainer's
set_epoch), the generators a checkpoint saves, and isinstance checks in other nodes. What it adds
is one declared field, `batch_augment`, instead of an attribute set on a plain DataLoader.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

# image, label = batch_augment(image, label), on whole batches already on the training device
BatchAugmentFn = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


class SegmentationLoader(DataLoader):
    """A DataLoader of segmentation batches that declares the augmentation its consumer runs.

    `batch_augment` is None, or for a training loader with `augmentation_on: device` the
    BatchAugment the workers left out: the consumer applies it to each training batch on its device.
    """

    batch_augment: BatchAugmentFn | None

    def __init__(self, dataset: Any, *, batch_augment: BatchAugmentFn | None = None, **settings: Any):
        super().__init__(dataset, **settings)
        self.batch_augment = batch_augment


def batch_augment_of(loader: Any) -> BatchAugmentFn | None:
    """The device-side augmentation `loader` declares. A plain DataLoader (from a test or another
    node) declares none, so its batches are used as they come."""
    return loader.batch_augment if isinstance(loader, SegmentationLoader) else None
