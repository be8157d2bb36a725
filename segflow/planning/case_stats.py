"""One case's share of the fingerprint: its geometry, its nonzero crop, its classes, and a sample
of its foreground intensities.

Read through segflow's own readers, so the axis order (and the spacing order) is the one the
loader trains in: arrays as stored in the file, spacing in the same order.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from segflow.data.label_coding import LabelCoding
from segflow.data.layouts import Case
from segflow.data.readers import read
from segflow.planning.errors import PlanError

# nnU-Net samples foreground intensities rather than keeping them all (fingerprint_extractor.py:
# "it is also not critically important to get all pixels as long as there are enough").
FOREGROUND_SAMPLES = 10_000


@dataclass
class CaseStats:
    case_id: str
    files: list[str]  # the image files, then the label file: what errors and the cache key name
    dims: int
    channels: int
    shape: list[int]  # spatial shape as stored
    shape_after_crop: list[int]  # after cropping to the nonzero region of all channels
    spacing: list[float] | None  # None: the file format has none (PNG, NumPy)
    class_voxels: dict[str, int]  # class value -> voxel count, classes present only
    foreground: list[np.ndarray]  # per channel, at most FOREGROUND_SAMPLES foreground intensities

    def as_json(self) -> dict:
        """Everything but the intensity samples, which only the dataset-wide statistics keep."""
        keep = ("case_id", "files", "dims", "channels", "shape", "shape_after_crop", "spacing", "class_voxels")
        out = {k: getattr(self, k) for k in keep}
        out["classes_present"] = sorted(int(k) for k in self.class_voxels)
        out["relative_size_after_crop"] = float(np.prod(self.shape_after_crop) / np.prod(self.shape))
        return out


def analyse_case(case: Case, coding: LabelCoding, samples: int = FOREGROUND_SAMPLES,
                 ignore: int | None = None) -> CaseStats:
    """`ignore`: the ignore label's class index; its voxels are neither foreground nor a class."""
    label_file = read(case.label, is_label=True)
    label = _class_indices(label_file.array, case, coding)
    image, spacing = _channels(case, label.shape)
    if spacing is None:
        spacing = label_file.spacing
    if spacing is not None:
        _check_spacing(spacing, case)
    crop = _nonzero_box(image)
    fg = (label[crop] > 0) & (label[crop] != (-1 if ignore is None else ignore))
    rng = np.random.default_rng(zlib.crc32(case.case_id.encode()))  # seeded per case: order-independent
    n_fg = int(fg.sum())
    pick = np.sort(rng.choice(n_fg, samples, replace=False)) if n_fg > samples else slice(None)
    foreground = [channel[crop][fg][pick].astype(np.float64) for channel in image]
    counts = np.bincount(label.ravel())
    return CaseStats(case.case_id, [str(p) for p in case.images] + [str(case.label)], label.ndim, image.shape[0],
                     list(label.shape), [s.stop - s.start for s in crop],
                     None if spacing is None else [float(s) for s in spacing],
                     {str(k): int(v) for k, v in enumerate(counts) if v and k != ignore}, foreground)


def _class_indices(label: np.ndarray, case: Case, coding: LabelCoding) -> np.ndarray:
    """Integer class indices as the loader reads them: through the dataset's label coding (0/255 masks
    are classes 0/1, see segflow.data.label_coding)."""
    values = np.unique(label)
    if values.size and values.min() < 0:
        raise PlanError(f"case {case.case_id}: label {case.label} has negative values {values[values < 0][:5].tolist()}")
    return coding.decode(label, case.label).astype(np.int64, copy=False)


def _channels(case: Case, shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """(C, *S) float32 image of every channel file, and the first spacing a file states."""
    channels, spacing = [], None
    for path in case.images:
        loaded = read(path)
        arr = loaded.array
        has_channels = loaded.channels if loaded.channels is not None else arr.ndim == len(shape) + 1
        arr = arr if has_channels else arr[None]
        if arr.shape[1:] != shape:
            raise PlanError(f"case {case.case_id}: image shape {tuple(arr.shape[1:])} from {path} does not match "
                            f"label shape {tuple(shape)} from {case.label}")
        if spacing is None and loaded.spacing is not None:
            spacing = loaded.spacing
        channels.append(arr.astype(np.float32, copy=False))
    image = np.concatenate(channels) if len(channels) > 1 else channels[0]
    if not np.all(np.isfinite(image)):
        raise PlanError(f"case {case.case_id}: image {case.images[0]} contains NaN or infinite values")
    return image, spacing


def _check_spacing(spacing, case: Case) -> None:
    if any(not math.isfinite(s) or s <= 0 for s in spacing):
        raise PlanError(f"case {case.case_id}: the header of {case.images[0]} gives voxel spacing "
                        f"{tuple(spacing)}; every spacing must be a positive number. Fix the header (e.g. "
                        "pixdim in NIfTI) or remove the case")


def _nonzero_box(image: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of voxels that are nonzero in any channel (nnU-Net's crop_to_nonzero; filling
    holes in the mask, as it does, cannot change the box). An all-zero image keeps its whole extent."""
    nonzero = np.any(image != 0, axis=0)
    box = []
    for axis in range(nonzero.ndim):
        hits = np.flatnonzero(np.any(nonzero, axis=tuple(a for a in range(nonzero.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, nonzero.shape[axis]))
    return tuple(box)
