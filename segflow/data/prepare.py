"""Decode one case, check it, and bring it to the form the datasets sample from.

Checks made here are the up-front data checks: shapes of image vs label, channel counts,
finite intensities, label values within the declared classes. Each error names the case
and the file. Deterministic work (resampling, normalisation) happens once per case, so the
result is what the memory and disk caches keep.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segflow.data.intensity import ONLY_3D, ChannelPlan, check_channel_count, nonzero_mask, zscore_inside
from segflow.data.itk_io import detached_data_files
from segflow.data.label_coding import CLASS_INDICES, IMAGE_MASKS, LabelCoding
from segflow.data.layouts import Case
from segflow.data.readers import read, split_name

MAX_FG_INDICES = 200_000  # enough foreground centres to sample patches from; bounds memory
MIN_FG_PER_CLASS = 10_000  # each class keeps at least this many (nnU-Net samples 10,000 per class and case)


@dataclass(frozen=True)
class PrepSpec:
    spatial_dims: int | None  # None: take it from the data
    normalization: str = "zscore"  # zscore | zscore_nonzero | minmax | ct | ct_zscore | none
    ct_window: tuple[float, float] = (-175.0, 250.0)
    intensity: tuple[float, float] | None = None  # ct_zscore: the dataset's (mean, std) after clipping
    channels: ChannelPlan | None = None  # settings per channel, in place of the three above (intensity.per_channel)
    target_spacing: tuple[float, ...] | None = None
    num_classes: int | None = None  # declared classes incl. background; None: infer
    label_source: str = "labels"  # what declared the classes, for messages
    label_coding: LabelCoding = CLASS_INDICES  # how the label files store the classes, decided per dataset
    ignore_label: int | None = None  # class index of voxels without ground truth (one past the last class)


@dataclass
class Prepared:
    case_id: str
    image: np.ndarray  # float32 (C, *spatial)
    label: np.ndarray | None  # uint8 / int16 (*spatial), class indices; None for a test image without one
    spacing: tuple[float, ...] | None
    affine: np.ndarray | None
    fg: np.ndarray | None  # flat indices of (a sample of) each foreground class's voxels, in class order
    max_label: int
    # one row per foreground class present: (class, end of its run in fg, its voxel count); None without a label
    fg_classes: np.ndarray | None = None


def prepare_case(case: Case, spec: PrepSpec) -> Prepared:
    if case.label is None:
        return _prepare_unlabelled(case, spec)
    label_file = read(case.label, is_label=True)
    label = label_file.array
    dims = label.ndim
    if spec.spatial_dims is not None and dims != spec.spatial_dims:
        raise ValueError(
            f"case {case.case_id}: label {case.label} is {dims}-D but spatial_dims is {spec.spatial_dims}; "
            "set spatial_dims to auto or to the data's dimension"
        )
    channels = []
    geometry = None  # spacing/affine: the image's own (DICOM, NIfTI), else the label's
    for path in case.images:
        loaded = read(path)
        if geometry is None and loaded.spacing is not None:
            geometry = (loaded.spacing, loaded.affine)
        arr = loaded.array
        has_channels = loaded.channels if loaded.channels is not None else arr.ndim == dims + 1
        if not has_channels:
            arr = arr[None]
        if arr.shape[1:] != label.shape:
            raise ValueError(
                f"case {case.case_id}: image shape {tuple(arr.shape[1:])} from {path} does not match "
                f"label shape {tuple(label.shape)} from {case.label}"
            )
        channels.append(arr.astype(np.float32, copy=False))
    image = np.concatenate(channels, axis=0) if len(channels) > 1 else channels[0]
    if not np.all(np.isfinite(image)):
        raise ValueError(f"case {case.case_id}: image {case.images[0]} contains NaN or infinite values")
    label = _label_values(label, case, spec)
    spacing, affine = geometry or (label_file.spacing, label_file.affine)
    image, label, affine, spacing = _normalised_at_spacing(image, label, affine, spacing, spec, case.case_id)
    # for foreground-centred patches (3-D, 2-D patches); never centred on the ignore label
    fg, fg_classes = foreground_index(label, case.case_id, spec.ignore_label)
    return Prepared(case.case_id, image, label, spacing, affine, fg, _max_class(label, spec.ignore_label), fg_classes)


def _max_class(label: np.ndarray, ignore: int | None) -> int:
    """The highest class the label holds; the ignore label is not a class."""
    if ignore is None:
        return int(label.max(initial=0))
    return int(np.max(label, initial=0, where=label != ignore))


def _prepare_unlabelled(case: Case, spec: PrepSpec) -> Prepared:
    """A test image without ground truth: the image alone decides the dimension (its reader knows
    whether it has a channel axis; for NumPy files spatial_dims must say)."""
    channels, geometry, dims = [], None, spec.spatial_dims
    for path in case.images:
        loaded = read(path)
        arr = loaded.array
        if geometry is None and loaded.spacing is not None:
            geometry = (loaded.spacing, loaded.affine)
        if loaded.channels is None:  # NumPy: no header to tell channels from space
            if dims is None:
                raise ValueError(f"case {case.case_id}: {path} has no label to tell its dimension from; "
                                 "set spatial_dims to 2 or 3")
            has_channels = arr.ndim == dims + 1
        else:
            has_channels = loaded.channels
        if not has_channels:
            arr = arr[None]
        if dims is None:
            dims = arr.ndim - 1
        if arr.ndim - 1 != dims:
            raise ValueError(f"case {case.case_id}: image {path} is {arr.ndim - 1}-D but spatial_dims is {dims}; "
                             "set spatial_dims to auto or to the data's dimension")
        if channels and arr.shape[1:] != channels[0].shape[1:]:
            raise ValueError(f"case {case.case_id}: image shape {tuple(arr.shape[1:])} from {path} does not match "
                             f"{tuple(channels[0].shape[1:])} from {case.images[0]}")
        channels.append(arr.astype(np.float32, copy=False))
    image = np.concatenate(channels, axis=0) if len(channels) > 1 else channels[0]
    if not np.all(np.isfinite(image)):
        raise ValueError(f"case {case.case_id}: image {case.images[0]} contains NaN or infinite values")
    spacing, affine = geometry or (None, None)
    image, _, affine, spacing = _normalised_at_spacing(image, None, affine, spacing, spec, case.case_id)
    return Prepared(case.case_id, image, None, spacing, affine, None, 0)


def _label_values(label: np.ndarray, case: Case, spec: PrepSpec) -> np.ndarray:
    label = spec.label_coding.decode(label, case.label)
    values = np.unique(label)
    if values.size and values.min() < 0:
        raise ValueError(f"case {case.case_id}: label {case.label} has negative values {values[values < 0][:5].tolist()}")
    if spec.ignore_label is not None:
        above = values[values > spec.ignore_label]
        if above.size:
            raise ValueError(f"case {case.case_id}: label {case.label} has values {above[:5].tolist()} above the ignore "
                             f"label {spec.ignore_label}; as in nnU-Net the ignore label must be the highest value")
        values = values[values != spec.ignore_label]
    if spec.num_classes is not None:
        bad = values[values >= spec.num_classes]
        if bad.size:
            read_as = "" if spec.label_coding.identity else f", read as {spec.label_coding.describe()}"
            raise ValueError(
                f"case {case.case_id}: label {case.label} has values {bad[:5].tolist()} outside the declared "
                f"classes 0..{spec.num_classes - 1} ({spec.label_source}{read_as}); fix the label file or the class list"
            )
    top = max(int(values.max(initial=0)), spec.ignore_label or 0)
    return label.astype(np.uint8 if top < 256 else np.int16, copy=False)


def mask_values(cases: list[Case], threads: int = 1) -> set[int] | None:
    """The values found in the cases' label files when they are image masks (PNG/JPG/TIFF), for
    label_coding.decide to tell grey levels from class indices; None for other label files."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [c.label for c in cases if c.label is not None]
    if not paths or not all(split_name(p.name)[1] in IMAGE_MASKS for p in paths):
        return None

    def values(path: Path) -> set[int]:
        try:
            return set(np.unique(read(path, is_label=True).array).tolist())
        except (ValueError, FileNotFoundError):
            return set()  # the case's own check reports the unreadable file, beside every other failure

    with ThreadPoolExecutor(threads) as pool:
        return set().union(*pool.map(values, paths))


def _normalised_at_spacing(image, label, affine, spacing, spec: PrepSpec, case_id: str):
    """(image, label, affine, spacing): normalised, and resampled to spec.target_spacing when it is set.
    Volumes are normalised first, as nnU-Net does: the nonzero mask of zscore_nonzero must fit the
    image it was found on, which interpolation would blur. 2-D images are normalised last, so they stay
    exactly in [0, 1] for their augmentation."""
    dims = image.ndim - 1
    if dims == 3:
        image = normalize_case(image, spec, case_id)
    if spec.target_spacing is not None and spacing is not None:
        image, label, affine = _resample(image, label, affine, spacing, spec.target_spacing)
        spacing = tuple(float(s) for s in spec.target_spacing)
    if dims == 2:
        image = normalize_case(image, spec, case_id)
    return image, label, affine, spacing


def _resample(image, label, affine, spacing, target):
    """To `target` spacing by nnU-Net's rules (segflow.data.resample): cubic images, one-hot linear
    labels, nearest along a coarse slice axis; the affine describes the new grid."""
    from segflow.data.resample import to_spacing

    if len(target) != len(spacing):
        raise ValueError(f"target_spacing {tuple(target)} has {len(target)} values but the data is {len(spacing)}-D")
    if affine is None:
        affine = np.diag([*spacing, 1.0])
    if affine.shape[0] != len(spacing) + 1:  # 2-D NIfTI slice: keep the in-plane part
        affine = np.delete(np.delete(affine, 2, 0), 2, 1)
    return to_spacing(image, label, affine, spacing, target)


def normalize_case(image: np.ndarray, spec: PrepSpec, case_id: str = "?") -> np.ndarray:
    """`image` (C, *S) normalised by the spec: one way for every channel, or each channel its own way
    (spec.channels). zscore_nonzero's mask is found once, on the raw channels together."""
    for_2d = image.ndim == 3
    if spec.channels is None:
        return normalize(image, spec.normalization, spec.ct_window, for_2d=for_2d, intensity=spec.intensity)
    check_channel_count(spec.channels, image.shape[0], case_id)
    mask = nonzero_mask(image) if not for_2d and any(c.word == "zscore_nonzero" for c in spec.channels.channels) \
        else None
    out = np.empty(image.shape, np.float32)
    for i, channel in enumerate(spec.channels.channels):
        out[i] = normalize(image[i:i + 1], channel.word, channel.window, for_2d=for_2d, intensity=channel.intensity,
                           mask=mask, channel=i)[0]
    return out


def normalize(image: np.ndarray, method: str, ct_window=(-175.0, 250.0), for_2d: bool = False,
              intensity: tuple[float, float] | None = None, mask: np.ndarray | None = None,
              channel: int | None = None) -> np.ndarray:
    """Per-case, per-channel intensity normalisation of `image` (C, *S), every channel by `method`.

    2-D images are kept in [0, 1] here (z-score is applied after augmentation, see
    `zscore`), because albumentations' brightness/contrast/gamma expect that range.
    ct_zscore (3-D only, for that reason) clips to `ct_window` and z-scores with the dataset-wide
    `intensity` (mean, std), as nnU-Net normalises CT: the same mapping for every case.
    zscore_nonzero (3-D only) z-scores inside `mask` (default: the image's own nonzero mask) and
    zeroes the rest (segflow.data.intensity). `channel` names the channel in messages.
    """
    image = image.astype(np.float32, copy=True)
    which = "" if channel is None else f"channel {channel}: "
    if method in ONLY_3D and for_2d:
        hint = "use ct with the same ct_window" if method == "ct_zscore" else "use zscore"
        raise ValueError(f"{which}normalization {method} is for 3-D data (2-D images stay in [0, 1] for "
                         f"augmentation); {hint}")
    if method in ("ct", "ct_zscore") and ct_window is None:
        raise ValueError(f"{which}normalization {method} needs a ct_window")
    if method == "none":
        return image
    if method == "ct":
        lo, hi = ct_window
        return np.clip((image - lo) / (hi - lo), 0.0, 1.0)
    if method == "ct_zscore":
        if intensity is None:
            raise ValueError(f"{which}normalization ct_zscore needs intensity_mean and intensity_std")
        mean, std = intensity
        return ((np.clip(image, *ct_window) - mean) / max(std, 1e-8)).astype(np.float32, copy=False)
    if method == "zscore_nonzero":
        inside = nonzero_mask(image) if mask is None else mask
        return np.stack([zscore_inside(c, inside) for c in image])
    if method == "minmax" or for_2d:
        lo = image.min(axis=tuple(range(1, image.ndim)), keepdims=True)
        hi = image.max(axis=tuple(range(1, image.ndim)), keepdims=True)
        return (image - lo) / np.maximum(hi - lo, 1e-8)
    if method == "zscore":
        return zscore(image)
    raise ValueError(f"normalization must be zscore, zscore_nonzero, minmax, ct, ct_zscore or none; got {method!r}")


def zscore(image: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Per-channel (C, *S) z-score with the mean and std of `reference` (default: the image itself);
    a patch takes its whole image's statistics, so it is scaled as the whole image is at validation."""
    ref = image if reference is None else np.asarray(reference)
    axes = tuple(range(1, ref.ndim))
    mean = ref.mean(axis=axes, keepdims=True)
    std = ref.std(axis=axes, keepdims=True)
    return ((image - mean) / np.maximum(std, 1e-8)).astype(np.float32, copy=False)


def foreground_index(label: np.ndarray, case_id: str, ignore: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Where each foreground class lies, for patch centres: the flat indices of its voxels (a seeded
    sample when there are many; every class keeps at least MIN_FG_PER_CLASS so small ones stay
    drawable), runs concatenated in class order, and a table of (class, end of its run, voxel count).
    Voxels of the `ignore` label are not foreground."""
    flat = np.asarray(label).reshape(-1)
    where = np.flatnonzero(flat if ignore is None else (flat != 0) & (flat != ignore))
    classes = flat[where]
    order = np.argsort(classes, kind="stable")  # by class, ascending index within a class
    where, classes = where[order], classes[order]
    values, starts, counts = np.unique(classes, return_index=True, return_counts=True)
    cap = max(MIN_FG_PER_CLASS, MAX_FG_INDICES // max(len(values), 1))
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    runs, table, end = [], [], 0
    for value, start, count in zip(values, starts, counts):
        run = where[start:start + count]
        if count > cap:
            run = np.sort(rng.choice(run, cap, replace=False))
        end += run.size
        runs.append(run)
        table.append((int(value), end, int(count)))
    fg = np.concatenate(runs) if runs else np.zeros(0, np.int64)
    return fg.astype(np.int64, copy=False), np.asarray(table, np.int64).reshape(-1, 3)


# Raised when what a cached case holds changes (2: foreground indices for 2-D cases too;
# 3: nnU-Net's resampling rules for target_spacing; 4: foreground indices per class; 5: volumes normalised
# before resampling).
CACHE_VERSION = 5


def cache_key(case: Case, spec: PrepSpec) -> str:
    """Changes when a file or a preprocessing setting changes, so a stale disk cache is never used."""
    parts = [f"v{CACHE_VERSION}", repr(spec)]
    for p in [*case.images, *([case.label] if case.label is not None else [])]:
        for f in [p, *detached_data_files(p)]:  # a .nhdr/.mhd header's voxels live in another file
            st = f.stat() if f.exists() else None
            parts.append(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}" if st else f"{f}:missing")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def save_prepared(folder: Path, prep: Prepared) -> None:
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "image.npy", prep.image)
    if prep.label is not None:
        np.save(tmp / "label.npy", prep.label)
    np.save(tmp / "fg.npy", prep.fg if prep.fg is not None else np.zeros(0, np.int64))
    np.save(tmp / "fg_classes.npy", prep.fg_classes if prep.fg_classes is not None else np.zeros((0, 3), np.int64))
    meta = {"case_id": prep.case_id, "spacing": prep.spacing, "max_label": prep.max_label,
            "affine": None if prep.affine is None else np.asarray(prep.affine).tolist(), "has_fg": prep.fg is not None}
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        tmp.rename(folder)
    except OSError:  # another worker or rank wrote the same case first
        shutil.rmtree(tmp, ignore_errors=True)


def load_prepared(folder: Path) -> Prepared:
    meta = json.loads((folder / "meta.json").read_text())
    # memory-mapped: 3-D patches read only the voxels they need
    return Prepared(
        meta["case_id"],
        np.load(folder / "image.npy", mmap_mode="r"),
        np.load(folder / "label.npy", mmap_mode="r") if (folder / "label.npy").exists() else None,
        None if meta["spacing"] is None else tuple(meta["spacing"]),
        None if meta["affine"] is None else np.asarray(meta["affine"]),
        np.load(folder / "fg.npy") if meta["has_fg"] else None,
        meta["max_label"],
        np.load(folder / "fg_classes.npy") if meta["has_fg"] else None,
    )
