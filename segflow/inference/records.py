"""What flows along a `Predictions` link: a list of small records pointing at files on disk.

The Predictor writes each case's prediction as soon as it is made and keeps only its record,
so evaluating hundreds of volumes never holds them all in memory; every consumer (Evaluator,
SegmentationOverlay, ...) loads one case at a time with `PredictionSet.load`. The set can be
iterated any number of times, by any number of consumers.

Each record carries the dataset's `LabelCoding` (segflow.data.label_coding), so `load` reads ground
truth saved as 0/255 masks (or any values the dataset declares) as the class indices training used.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from segflow.data.label_coding import CLASS_INDICES, LabelCoding
from segflow.data.label_scheme import PLAIN, LabelScheme


@dataclass(frozen=True)
class PredictionRecord:
    case: str
    prediction_path: Path  # label map, in the input's own format and geometry (NIfTI / PNG / ...)
    image_paths: tuple[Path, ...]  # the input image file(s), one per channel where the layout splits them
    label_path: Path | None = None  # ground truth, when the data has it
    probabilities_path: Path | None = None  # optional .npy / .nii.gz of class probabilities (C, *S)
    spacing: tuple[float, ...] | None = None  # physical voxel size, for HD95 and surface Dice
    label_coding: LabelCoding = CLASS_INDICES  # how the label file (and an image-format prediction) store classes


@dataclass
class PredictionSet:
    records: list[PredictionRecord] = field(default_factory=list)
    num_classes: int = 2  # background included
    spatial_dims: int = 2
    class_names: tuple[str, ...] = ()
    output_dir: Path | None = None
    labels: LabelScheme = PLAIN  # regions and ignore label of the data: what the Evaluator scores and overlays show

    def __iter__(self) -> Iterator[PredictionRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    @staticmethod
    def load(record: PredictionRecord):
        """(image (C, *S) float32, prediction (*S) int64, label (*S) int64 or None) as numpy arrays, for one case,
        read through segflow.data.readers, in the file's own geometry; prediction and label are class
        indices, decoded with the record's label coding."""
        import numpy as np

        from segflow.data.readers import read

        images = [read(p, is_label=False) for p in record.image_paths]
        image = np.concatenate([im.array if im.channels else im.array[None] for im in images]).astype(np.float32)
        coding = record.label_coding
        stored = read(record.prediction_path, is_label=True).array
        prediction = coding.for_prediction(record.prediction_path).decode(stored, record.prediction_path)
        label = None
        if record.label_path:
            label = coding.decode(read(record.label_path, is_label=True).array, record.label_path).astype(np.int64)
        return image, prediction.astype(np.int64), label
