"""torch Datasets over prepared cases: 2-D resized samples, 2-D and 3-D patches, whole cases.

The training datasets make every random draw of a sample (patch position, augmentation) from
generators restarted for that sample's key (epoch, index), which the loader's `EpochSampler` hands
them (see `segflow.data.draws`): a sample is a function of (seed, epoch, index), whichever process
makes it, so a run is reproducible for a given `seed` and resumes exactly from its epoch number.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from segflow.data.augment import draw_from
from segflow.data.draws import SampleRandom, sample_key
from segflow.data.layouts import Case
from segflow.data.prepare import Prepared, PrepSpec, load_prepared, prepare_case, zscore


class CaseSource:
    """Prepared cases by index: held in memory, memory-mapped from the disk cache, or decoded
    from the original files on every access (cache "none")."""

    def __init__(self, cases: list[Case], spec: PrepSpec, memory: list[Prepared] | None = None,
                 disk: list[Path] | None = None, num_classes: int = 2):
        self.cases, self.spec, self.memory, self.disk = cases, spec, memory, disk
        # labels leave the loader as small integers: a batch crosses from worker processes to the
        # training process and to the GPU at 1/8 the bytes of int64 (a 96^3 batch of 2: 1.8 MB, not
        # 14 MB); consumers widen them on their device (`label.long()`)
        self.label_dtype = torch.uint8 if num_classes <= 256 else torch.int16

    def __len__(self) -> int:
        return len(self.cases)

    def get(self, i: int) -> Prepared:
        if self.memory is not None:
            return self.memory[i]
        if self.disk is not None:
            return load_prepared(self.disk[i])
        return prepare_case(self.cases[i], self.spec)


class _Seeded(Dataset):
    """A dataset whose samples draw from `self.draws`, restarted per sample by `_start`."""

    def _seed(self, seed: int) -> None:
        self.draws = SampleRandom(seed)
        draw_from(self.transform, self.draws)

    def _start(self, key) -> int:
        """Restart the random draws for the sample `key` (see `draws.sample_key`); its index."""
        epoch, index = sample_key(key)
        self.draws.start(epoch, index)
        return index


class Slices2D(_Seeded):
    """2-D samples resized (and augmented, for training) to the pipeline's output size."""

    def __init__(self, source: CaseSource, transform, zscore_after: bool, repeats: int = 1, seed: int = 0,
                 raw_range: bool = False):
        self.source, self.transform, self.zscore_after, self.repeats = source, transform, zscore_after, repeats
        # normalization "none": albumentations' intensity transforms expect [0, 1] and clip float
        # images to it, so raw intensities go through the transform mapped onto [0, 1] by their whole
        # image's per-channel range, and are mapped back afterwards
        self.raw_range = raw_range
        self._stats: dict[int, dict[str, np.ndarray]] = {}  # per case, filled lazily in each process
        self._seed(seed)

    def __len__(self) -> int:
        return len(self.source) * self.repeats

    def _sample(self, prep: Prepared) -> tuple[np.ndarray, np.ndarray | None]:
        """(image (C, H, W), label (H, W) or None) before the transform: the whole image."""
        return np.asarray(prep.image), None if prep.label is None else np.asarray(prep.label)

    # patches scale by their whole image (Patches2D); a resized image is its own whole image
    whole_image_zscore = False

    def _case_stats(self, case: int, prep: Prepared) -> dict[str, np.ndarray]:
        """Per-channel min, range, mean and std of the case's whole image, computed once per case
        in each process rather than for every sample (on a 320² image they cost as much as cutting
        and augmenting a 256² patch)."""
        stats = self._stats.get(case)
        if stats is None:
            whole = np.asarray(prep.image, dtype=np.float32)
            lo = whole.min(axis=(1, 2), keepdims=True)
            stats = dict(lo=lo, span=np.maximum(whole.max(axis=(1, 2), keepdims=True) - lo, 1e-8),
                         mean=whole.mean(axis=(1, 2), keepdims=True),
                         std=np.maximum(whole.std(axis=(1, 2), keepdims=True), 1e-8))
            self._stats[case] = stats
        return stats

    def __getitem__(self, key) -> dict:
        case = self._start(key) // self.repeats
        prep = self.source.get(case)
        image, label = self._sample(prep)
        span = None
        if self.raw_range and self.transform is not None:
            stats = self._case_stats(case, prep)
            span = (stats["lo"], stats["span"])
            image = (image - span[0]) / span[1]
        image = np.ascontiguousarray(np.moveaxis(image, 0, -1), dtype=np.float32)  # HWC for albumentations
        if self.transform is None:  # a patch with augmentation off: nothing to do
            out = {"image": image, "mask": label}
        elif label is None:  # a test image without ground truth: the sample has no "label"
            out = self.transform(image=image)
        else:
            out = self.transform(image=image, mask=label)
        img = np.moveaxis(out["image"], -1, 0) if out["image"].ndim == 3 else out["image"][None]
        if span is not None:
            img = img * span[1] + span[0]
        if self.zscore_after and self.whole_image_zscore:  # as `WholeCases` scales it at validation
            stats = self._case_stats(case, prep)
            img = (img - stats["mean"]) / stats["std"]
        elif self.zscore_after:
            img = zscore(img)
        item = {"image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)), "case": prep.case_id}
        if label is not None:
            item["label"] = _tensor(out["mask"][None], self.source.label_dtype)
        return item


class Patches2D(Slices2D):
    """Random 2-D patches at the image's own resolution (size_mode "patches"), `repeats` per image
    per epoch, foreground-weighted like `Patches3D`, then the preset's transforms at that size."""

    whole_image_zscore = True

    def __init__(self, source: CaseSource, patch: tuple[int, int], centres: Centres, transform,
                 zscore_after: bool, repeats: int = 1, seed: int = 0, raw_range: bool = False):
        self.patch, self.centres = tuple(patch), centres
        super().__init__(source, transform, zscore_after, repeats, seed, raw_range)

    def _sample(self, prep: Prepared) -> tuple[np.ndarray, np.ndarray | None]:
        return sample_patch(prep, self.patch, self.centres, self.draws.numpy)


class Patches3D(_Seeded):
    """Random patches, `repeats` per volume per epoch, centred as `centres` says (see `Centres`)."""

    def __init__(self, source: CaseSource, patch: tuple[int, ...], centres: Centres, transform,
                 repeats: int = 1, seed: int = 0):
        self.source, self.patch, self.transform, self.repeats = source, tuple(patch), transform, repeats
        self.centres = centres
        self._seed(seed)

    def __len__(self) -> int:
        return len(self.source) * self.repeats

    def __getitem__(self, key) -> dict:
        prep = self.source.get(self._start(key) // self.repeats)
        image, label = sample_patch(prep, self.patch, self.centres, self.draws.numpy)
        sample = {"image": image, "label": label[None]}
        if self.transform is not None:
            sample = self.transform(sample)
        return {"image": _tensor(sample["image"], torch.float32),
                "label": _tensor(sample["label"], self.source.label_dtype), "case": prep.case_id}


class WholeCases(Dataset):
    """Whole prepared cases (3-D volumes, or 2-D images with size_mode "patches") for validation and
    prediction: batch size 1, sliding-window inference. `zscore_after`: 2-D images are kept in
    [0, 1] for augmentation, so z-score normalisation is applied here, as `Slices2D` does."""

    def __init__(self, source: CaseSource, zscore_after: bool = False):
        self.source, self.zscore_after = source, zscore_after

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        prep = self.source.get(index)
        image = zscore(np.asarray(prep.image, dtype=np.float32)) if self.zscore_after else prep.image
        item = {"image": _tensor(image, torch.float32), "case": prep.case_id}
        if prep.label is not None:  # test images without ground truth have no "label"
            item["label"] = _tensor(prep.label[None], self.source.label_dtype)
        if prep.affine is not None:
            item["affine"] = torch.as_tensor(np.asarray(prep.affine), dtype=torch.float64)
        return item


@dataclass(frozen=True)
class Centres:
    """Where training patches are centred: a fraction `p_fg` (the loader's pos / (pos + neg)) on a
    foreground voxel, the rest anywhere. `by_class`: the foreground voxel's class is drawn first,
    uniformly among the classes the case contains, then a voxel of it (nnU-Net's oversampling, so
    small classes are seen as often as large ones); otherwise any foreground voxel, uniformly."""

    p_fg: float
    by_class: bool = False

    @classmethod
    def of(cls, pos: float, neg: float, by_class: bool = False) -> Centres:
        return cls(pos / (pos + neg) if pos + neg > 0 else 0.0, by_class)

    def foreground(self, prep: Prepared, rng: np.random.Generator) -> int | None:
        """A flat index of a foreground voxel, or None for a patch centred anywhere."""
        fg, table = prep.fg, prep.fg_classes
        if self.p_fg <= 0 or fg is None or not fg.size or rng.random() >= self.p_fg:
            return None
        if table is None or not (self.by_class or _sampled(table)):
            return int(fg[rng.integers(fg.size)])  # every voxel kept: uniform over the foreground
        if self.by_class:
            row = int(rng.integers(len(table)))
        else:  # runs were thinned: weigh each class's run by its true voxel count
            row = int(rng.choice(len(table), p=table[:, 2] / table[:, 2].sum()))
        start = int(table[row - 1, 1]) if row else 0
        return int(fg[start + rng.integers(int(table[row, 1]) - start)])


def _sampled(table: np.ndarray) -> bool:
    """Whether some class's run holds fewer indices than the class has voxels."""
    return bool(np.any(np.diff(table[:, 1], prepend=0) < table[:, 2]))


def sample_patch(prep: Prepared, patch: tuple[int, ...], centres: Centres, rng: np.random.Generator):
    """Cut one patch by slicing the (possibly memory-mapped) arrays, zero-padding volumes smaller
    than the patch. Slicing rather than MONAI's crop transforms avoids converting the whole
    volume to a tensor for every sample."""
    shape = prep.label.shape
    fg = centres.foreground(prep, rng)
    if fg is not None:
        centre = np.unravel_index(fg, shape)
    else:
        centre = tuple(int(rng.integers(s)) for s in shape)
    starts = [min(max(c - p // 2, 0), max(s - p, 0)) for c, p, s in zip(centre, patch, shape)]
    region = tuple(slice(b, b + p) for b, p in zip(starts, patch))
    image = np.asarray(prep.image[(slice(None), *region)], dtype=np.float32)
    label = np.asarray(prep.label[region])
    pad = [(0, p - s) for p, s in zip(patch, label.shape)]
    if any(after for _, after in pad):
        # pad symmetrically so small volumes sit in the middle of the patch
        pad = [((p - s) // 2, p - s - (p - s) // 2) for p, s in zip(patch, label.shape)]
        image = np.pad(image, [(0, 0), *pad])
        label = np.pad(label, pad)
    return image, label


def _tensor(x, dtype) -> torch.Tensor:
    if hasattr(x, "as_tensor"):  # MONAI MetaTensor -> plain tensor, as the batch contract says
        x = x.as_tensor()
    if not isinstance(x, torch.Tensor):
        x = np.asarray(x)
        if not x.flags.writeable:  # memory-mapped disk cache: copy out before handing to torch
            x = x.copy()
    return torch.as_tensor(x).to(dtype).contiguous()


def collate(items: list[dict]) -> dict:
    """torch's default collation, except that a batch mixing labelled and unlabelled test images
    drops "label" (the Predictor finds each case's label file through the dataset's cases)."""
    from torch.utils.data import default_collate

    if any("label" not in it for it in items):
        items = [{k: v for k, v in it.items() if k != "label"} for it in items]
    return default_collate(items)


def worker_init(worker_id: int) -> None:
    from segflow.data.allocator import keep_freed_sample_memory

    keep_freed_sample_memory()  # inherited when workers are forked; needed when they are spawned
