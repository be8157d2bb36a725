"""How a dataset's label files store its classes: the one rule every reader of label files shares.

Networks, losses and metrics count classes 0, 1, 2, ...; label files do not always hold those
numbers. Image masks are often drawn as grey levels so that they can be viewed (0/255 for one
foreground class, 0/128/255 for two), and a dataset.json may declare values such as
{"background": 0, "tumour": 255}. The loader decides a `LabelCoding` once per dataset (`decide`)
and records it in its DatasetInfo; the Predictor carries it in every PredictionRecord, so the
Evaluator and the overlays read ground truth exactly as training did, and predictions in image
formats are written back in the dataset's own values (`for_prediction`).

Stdlib only at import (numpy inside the methods): segflow.data.info refers to it, and node
modules and `segflow validate` import that without the heavy packages.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# Label files that are pictures; only these are drawn in grey levels, and predictions written in
# these formats are meant to be looked at, so they get the dataset's values back.
IMAGE_MASKS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# At most this many distinct values, 255 among them, in image masks are read as grey-level classes;
# more are taken as class indices as stored (a palette mask with 20 classes and 255 as its border).
MAX_GREY_LEVELS = 16


@dataclass(frozen=True)
class LabelCoding:
    """`values[c]` is the value class c is stored as; no values: the files hold class indices."""

    values: tuple[int, ...] = ()
    source: str = ""  # what decided it, for messages: "dataset.json labels", "the masks' grey levels"

    @property
    def identity(self) -> bool:
        return not self.values

    def describe(self) -> str:
        """"0/128/255 as classes 0/1/2 (the masks' grey levels)"; "class indices as stored" for identity."""
        if self.identity:
            return "class indices as stored"
        classes = "/".join(str(c) for c in range(len(self.values)))
        return f"{'/'.join(map(str, self.values))} as classes {classes}" + (f" ({self.source})" if self.source else "")

    def decode(self, stored: np.ndarray, path: str | Path) -> np.ndarray:
        """Class indices of a label array read from `path`; a value the coding does not know is an error."""
        if self.identity:
            return stored
        import numpy as np

        values = np.asarray(self.values)  # ascending (see `decide` and layouts._declared_classes)
        classes = np.searchsorted(values, stored).clip(0, len(values) - 1)
        unknown = values[classes] != stored
        if unknown.any():
            bad = np.unique(np.asarray(stored)[unknown])
            raise ValueError(f"{path} holds value(s) {bad[:5].tolist()} that are not class values of this dataset "
                             f"({self.describe()}); fix the label file or declare its values in dataset.json 'labels'")
        return classes.astype(np.uint8 if len(values) <= 256 else np.int16)

    def encode(self, classes: np.ndarray) -> np.ndarray:
        """The stored values of a class-index array (for writing predictions)."""
        if self.identity:
            return classes
        import numpy as np

        values = np.asarray(self.values)
        top = int(np.max(classes, initial=0))
        if top >= len(values):  # a model with more classes than the dataset's files have values for
            raise ValueError(f"class {top} has no value in this dataset's label files ({self.describe()}); "
                             "write the predictions as nifti or npy (output_format), which hold class indices")
        return values.astype(np.uint8 if values.max() < 256 else np.uint16)[classes]

    def for_prediction(self, path: str | Path) -> LabelCoding:
        """The coding a prediction file is stored in: the dataset's own values in image formats, viewable
        beside the masks; class indices in NIfTI and NumPy files, as other tools expect there."""
        return self if Path(path).name.lower().endswith(IMAGE_MASKS) else CLASS_INDICES


CLASS_INDICES = LabelCoding()  # label files that hold the class indices themselves (NIfTI, most datasets)


def decide(declared: tuple[int, ...] | None, source: str, mask_values: Iterable[int] | None,
           num_classes: int | None) -> LabelCoding:
    """The dataset's coding: the values its dataset.json declares (`declared`, in class order), else grey
    levels inferred from the union of its image masks' values (`mask_values`; None when the labels are
    not image masks), else class indices as stored.

    Grey levels: 255 among at most MAX_GREY_LEVELS values; class c is the c-th value in ascending
    order, 0 (background) always included. Decided over the whole dataset, so a 0/128/255 dataset
    reads a mask without the middle class as classes 0 and 2. A declared `num_classes` above 255
    means 255 is a class index, never a grey level.
    """
    if declared is not None:
        return LabelCoding(tuple(declared), source)
    levels = set(mask_values or ()) | {0}
    if 255 not in levels or len(levels) > MAX_GREY_LEVELS or (num_classes is not None and num_classes > 255):
        return CLASS_INDICES
    return LabelCoding(tuple(sorted(levels)), "the masks' grey levels")
