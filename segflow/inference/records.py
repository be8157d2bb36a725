"""What flows along a `Predictions` link: a list of small records pointing at files on disk.

The Predictor writes each case's prediction as soon as it is made and keeps only its record,
so evaluating hundreds of volumes never holds them all in memory; every consumer (Evaluator,
SegmentationOverlay, ...) loads one case at a time with `PredictionSet.load`. The set can be
iterated any number of times, by any number of consumers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class PredictionRecord:
    case: str
    prediction_path: Path  # label map, in the input's own format and geometry (NIfTI / PNG / ...)
    image_paths: tuple[Path, ...]  # the input image file(s), one per channel where the layout splits them
    label_path: Path | None = None  # ground truth, when the data has it
    probabilities_path: Path | None = None  # optional .npy / .nii.gz of class probabilities (C, *S)
    spacing: tuple[float, ...] | None = None  # physical voxel size, for HD95 and surface Dice


@dataclass
class PredictionSet:
    records: list[PredictionRecord] = field(default_factory=list)
    num_classes: int = 2  # background included
    spatial_dims: int = 2
    class_names: tuple[str, ...] = ()
    output_dir: Path | None = None

    def __iter__(self) -> Iterator[PredictionRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    @staticmethod
    def load(record: PredictionRecord):
        """(image (C, *S) float32, prediction (*S) int64, label (*S) int64 or None) as numpy arrays, for one case,
        read through segflow.data.readers, in the file's own geometry."""
        import numpy as np

        from segflow.data.readers import read

        images = [read(p, is_label=False) for p in record.image_paths]
        image = np.concatenate([im.array if im.channels else im.array[None] for im in images]).astype(np.float32)
        prediction = read(record.prediction_path, is_label=True).array.astype(np.int64)
        label = read(record.label_path, is_label=True).array.astype(np.int64) if record.label_path else None
        return image, prediction, label
