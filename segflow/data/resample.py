"""Resampling to a target spacing and back to a case's own grid, by nnU-Net's rules.

The rules (nnU-Net v2, nnunetv2/preprocessing/resampling/default_resampling.py and the default plans'
resampling kwargs), written here from their description:

* New shape: round(old_shape * old_spacing / new_spacing) per axis (nnU-Net's compute_new_shape).
* The new grid covers the same physical extent as the old one (voxel corners stay where they were,
  as skimage's resize and scipy's zoom(grid_mode=True) place them): output voxel o samples the old
  voxel coordinate (o + 0.5) * old_n / new_n - 0.5. The spacing becomes old_spacing * old_n / new_n
  (the target up to the rounding of the shape) and the first voxel centre moves by half the change of
  spacing; the direction is kept. `resampled_affine` writes exactly that, so the way back (from the
  two affines) lands on the source grid.
* Separate z: when the current spacing, else the target spacing, is anisotropic (max / min > 3,
  ANISO_THRESHOLD) and exactly one axis has the largest spacing, that coarse axis is resampled on its
  own with nearest neighbour (order 0) and the other axes with the full order (get_do_separate_z,
  get_lowres_axis). Interpolating across thick slices smears structures that do not continue from one
  slice to the next. Only for 3-D data: 2-D images have no slice axis.
* Images: order 3 (cubic B-spline), edge values repeated outside (skimage's mode "edge").
* Probabilities going back to the source grid: order 1, separate z as above, then argmax (nnU-Net's
  resampling_fn_probabilities kwargs: order 1, order_z 0).
* Labels: each class present is resampled as a one-hot mask with order 1 and every voxel takes the
  class with the largest interpolated value. nnU-Net thresholds each mask at 0.5 in label order, which
  leaves junction voxels where no class reaches 0.5 as background; the argmax gives them the strongest
  class instead. Either way only classes present in the input can appear.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

ANISO_THRESHOLD = 3.0  # nnU-Net's ANISO_THRESHOLD: spacing ratio above which an axis counts as coarse


def new_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's compute_new_shape (Python's round, as there); at least one voxel per axis."""
    return tuple(max(1, int(round(s / t * n))) for n, s, t in zip(shape, spacing, target))


def coarse_axis(spacing: Sequence[float], target: Sequence[float]) -> int | None:
    """The axis to resample separately with nearest neighbour, or None (nnU-Net's separate-z rule)."""
    if len(spacing) != 3:
        return None
    for candidate in (spacing, target):  # the current spacing decides first, as in nnU-Net
        values = np.asarray(candidate, dtype=float)
        if values.max() / values.min() > ANISO_THRESHOLD:
            coarse = np.flatnonzero(values == values.max())
            # two equally coarse axes (e.g. 0.24 x 1.25 x 1.25): no single slice axis, resample jointly
            return int(coarse[0]) if coarse.size == 1 else None
    return None


def grid_map(shape: Sequence[int], out_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset): output voxel o samples input coordinate scale * o + offset, extent kept."""
    scale = np.asarray(shape, dtype=float) / np.asarray(out_shape, dtype=float)
    return scale, 0.5 * scale - 0.5


def resampled_affine(affine: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The affine of the output grid: its voxel o is the input's voxel scale * o + offset."""
    d = len(scale)
    out = np.array(affine, dtype=float, copy=True)
    out[:d, :d] = affine[:d, :d] * scale  # each direction column stretched by its axis' scale
    out[:d, d] = affine[:d, :d] @ offset + affine[:d, d]
    return out


def axis_aligned_map(src_affine: np.ndarray, dst_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, offset) taking a voxel of the dst grid to the src grid's voxel coordinate, or None when
    the two grids are rotated against each other (not a per-axis scale and shift)."""
    d = src_affine.shape[0] - 1
    m = np.linalg.inv(src_affine) @ dst_affine
    scale = np.diag(m)[:d]
    if not np.allclose(m[:d, :d], np.diag(scale), atol=1e-4 * np.abs(scale).max()):
        return None
    # snapped to 1e-9 voxel: the inverse's rounding noise would otherwise decide nearest-neighbour ties
    # (a coordinate of exactly k + 0.5) differently from the same map computed from the shapes
    return np.round(scale, 9), np.round(m[:d, d], 9)


def spacing_of(affine: np.ndarray) -> tuple[float, ...]:
    d = affine.shape[0] - 1
    return tuple(float(v) for v in np.linalg.norm(affine[:d, :d], axis=0))


def resample(data: np.ndarray, scale, offset, out_shape: Sequence[int], order: int,
             axis: int | None = None) -> np.ndarray:
    """(C, *S) float data -> (C, *out_shape) float32: order `order` along every axis, except nearest
    neighbour along `axis` when given (separate z)."""
    out = np.empty((data.shape[0], *out_shape), dtype=np.float32)
    if axis is None:
        for c, channel in enumerate(data):
            # a 1-D matrix is a diagonal one: scipy then resamples axis by axis, which is much faster
            ndimage.affine_transform(channel, scale, offset, output_shape=tuple(out_shape), output=out[c],
                                     order=order, mode="nearest")
        return out
    # nearest along the coarse axis is a choice of source slices (scipy's order 0 rounds halves up);
    # each slice needed is resampled in-plane once, then the slices are laid out along the axis
    n = data.shape[axis + 1]
    picks = np.clip(np.floor(scale[axis] * np.arange(out_shape[axis]) + offset[axis] + 0.5), 0, n - 1).astype(int)
    needed, where = np.unique(picks, return_inverse=True)
    keep = [a for a in range(3) if a != axis]
    plane_shape = tuple(out_shape[a] for a in keep)
    for c, channel in enumerate(data):
        planes = np.ascontiguousarray(np.moveaxis(channel, axis, 0)[needed])  # contiguous slices: fast to read
        moved = np.empty((len(needed), *plane_shape), dtype=np.float32)
        for i, plane in enumerate(planes):
            ndimage.affine_transform(plane, scale[keep], offset[keep], output_shape=plane_shape, output=moved[i],
                                     order=order, mode="nearest")
        out[c] = np.moveaxis(moved[where.ravel()], 0, axis)
    return out


def resample_labels(label: np.ndarray, scale, offset, out_shape: Sequence[int], axis: int | None = None) -> np.ndarray:
    """(*S) class indices -> (*out_shape): one-hot order-1 per class present, argmax (see the module doc)."""
    classes = np.unique(label)
    out = np.full(tuple(out_shape), classes[0], dtype=label.dtype)
    best = np.full(tuple(out_shape), -np.inf, dtype=np.float32)
    for cls in classes:  # one class at a time: memory stays at two volumes whatever the class count
        value = resample((label == cls)[None].astype(np.float32), scale, offset, out_shape, 1, axis)[0]
        stronger = value > best  # ties keep the lower class index, as argmax does
        out[stronger] = cls
        np.maximum(best, value, out=best)
    return out


def to_spacing(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray, spacing: Sequence[float],
               target: Sequence[float]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A (C, *S) image and its (*S) label (or None) resampled to `target`, with the new grid's affine."""
    shape = image.shape[1:]
    out_shape = new_shape(shape, spacing, target)
    if out_shape == tuple(shape):
        return image, label, affine
    scale, offset = grid_map(shape, out_shape)
    axis = coarse_axis(spacing, target)
    image = resample(image, scale, offset, out_shape, 3, axis)
    if label is not None:
        label = resample_labels(label, scale, offset, out_shape, axis)
    return image, label, resampled_affine(affine, scale, offset)
