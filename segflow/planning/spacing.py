"""Target spacing and the median shape in it (nnU-Net: ExperimentPlanner.determine_fullres_target_spacing
and compute_new_shape)."""
from __future__ import annotations

import numpy as np

# nnU-Net's ANISO_THRESHOLD (nnunetv2/configuration.py): an axis whose spacing is more than 3x the
# others' is anisotropic.
ANISO_THRESHOLD = 3.0


def fmt(values, digits: int = 3) -> str:
    """0.8x0.8x2.5: how sizes and spacings are written in the reasons."""
    return "x".join(f"{float(v):.{digits}g}" for v in values)


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[np.ndarray, str]:
    """The median spacing per axis; for data with one coarse axis that also has few voxels, that
    axis gets the 10th percentile of its spacings instead (a median of 5 mm between slices would
    throw away the finer-sliced cases' detail and leave the network very few slices).

    `spacings` and `shapes` (shapes after cropping) are (cases, axes). Returns the spacing and why.
    """
    target = np.median(spacings, axis=0)
    reason = f"target spacing {fmt(target)} = the median spacing of the cases per axis"
    if target.size < 3:  # nnU-Net plans 2-D data with the median in-plane spacing only
        return target, reason + " (2-D data: nnU-Net's anisotropy rule concerns the slice axis of volumes)"
    median_shape = np.median(shapes, axis=0)
    coarse = int(np.argmax(target))
    others = [a for a in range(target.size) if a != coarse]
    finest_other = max(target[a] for a in others)
    aniso_spacing = target[coarse] > ANISO_THRESHOLD * finest_other
    aniso_voxels = median_shape[coarse] * ANISO_THRESHOLD < min(median_shape[a] for a in others)
    if not (aniso_spacing and aniso_voxels):
        why = "its spacing is within 3x of the others'" if not aniso_spacing else \
            f"it still has enough voxels (median {median_shape[coarse]:g}, not under a third of the other axes')"
        return target, reason + f"; axis {coarse} (the coarsest) is not treated as anisotropic: {why}"
    low = float(np.percentile(spacings[:, coarse], 10))
    # never finer than the other axes (nnU-Net then takes their spacing + 1e-5, keeping this axis the coarsest)
    value = low if low >= finest_other else finest_other + 1e-5
    target[coarse] = value
    return target, (f"target spacing {fmt(target)}: the median per axis, except axis {coarse}, which is "
                    f"anisotropic (median spacing {np.median(spacings[:, coarse]):.3g} > 3 x {finest_other:.3g}, "
                    f"and median {median_shape[coarse]:g} voxels < a third of the other axes'), so it takes the "
                    f"10th percentile of its spacings, {value:.3g} (nnU-Net: determine_fullres_target_spacing)")


def shape_in_spacing(shape, spacing, target) -> np.ndarray:
    """A case's voxel shape once resampled to `target` (nnU-Net: compute_new_shape)."""
    return np.round(np.asarray(shape, float) * np.asarray(spacing, float) / np.asarray(target, float)).astype(int)


def median_shape(shapes, spacings, target) -> np.ndarray:
    """Median over the cases of their cropped shapes resampled to the target spacing."""
    return np.median([shape_in_spacing(s, sp, target) for s, sp in zip(shapes, spacings)], axis=0)
