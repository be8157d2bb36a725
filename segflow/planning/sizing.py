"""Patch and batch size for a memory budget (nnU-Net: ExperimentPlanner.get_plans_for_configuration).

The memory estimate is nnU-Net's reference-based one: the network's feature-map element count
(topology.feature_map_voxels) compared with the count nnU-Net calibrated against a GPU of 8 GB
(mixed precision training, batch 2 in 3-D, 12 in 2-D), scaled linearly to the budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segflow.planning.errors import PlanError
from segflow.planning.spacing import fmt
from segflow.planning.topology import MIN_EDGE, Topology, feature_map_voxels, topology

# nnU-Net's UNet_reference_val_3d / _2d, UNet_reference_val_corresp_GB, ..._corresp_bs_3d / _2d
REFERENCE_VOXELS = {3: 560_000_000, 2: 85_000_000}
REFERENCE_GIB = 8.0
REFERENCE_BATCH = {3: 2, 2: 12}
INITIAL_BUDGET = {3: 256**3, 2: 2048**2}  # the starting patch holds this many voxels, before clipping
MIN_BATCH = 2  # UNet_min_batch_size: batch statistics and the Dice loss need more than one sample
MAX_DATASET_FRACTION = 0.05  # max_dataset_covered: one batch sees at most 5% of the dataset's voxels


@dataclass
class Sizing:
    topology: Topology
    batch_size: int
    estimate_gib: float  # estimated training memory at batch_size
    reasons: dict[str, str]


def gib_needed(topo: Topology, num_classes: int, batch: int) -> float:
    """The estimated GPU memory (GiB) of training this network at `batch`."""
    dims = len(topo.patch)
    per_sample = feature_map_voxels(topo, num_classes) / REFERENCE_BATCH[dims]
    return per_sample * batch / REFERENCE_VOXELS[dims] * REFERENCE_GIB


def initial_patch(spacing, median_shape) -> np.ndarray:
    """A box of INITIAL_BUDGET voxels with the aspect of one physical cube (more voxels along finer
    axes), clipped to the median image: larger than any budget allows, so shrinking decides."""
    dims = len(spacing)
    aspect = 1 / np.asarray(spacing, float)
    box = np.round(aspect * (INITIAL_BUDGET[dims] / np.prod(aspect)) ** (1 / dims))
    return np.minimum(box, np.asarray(median_shape, float))


def size_patch_and_batch(spacing, median_shape, num_classes: int, budget_gib: float, num_cases: int) -> Sizing:
    dims = len(spacing)
    start = initial_patch(spacing, median_shape)
    topo = topology(spacing, start)
    shrunk = []
    while gib_needed(topo, num_classes, MIN_BATCH) > budget_gib:
        axis = int(np.argmax(np.asarray(topo.patch) / np.asarray(median_shape)))  # the most oversized axis
        patch = list(topo.patch)
        # step down by the divisor the smaller patch will have (it may pool less), so no valid size is skipped
        probe = list(patch)
        probe[axis] -= topo.divisor[axis]
        patch[axis] -= topology(spacing, probe).divisor[axis]
        if patch[axis] < 2 * MIN_EDGE:
            raise PlanError(
                f"--gpu-memory {budget_gib:g} GiB is too small: even patch {fmt(topo.patch)} "
                f"({topo.stages} stages) at batch {MIN_BATCH} needs about "
                f"{gib_needed(topo, num_classes, MIN_BATCH):.2g} GiB by nnU-Net's estimate; give more memory")
        topo = topology(spacing, patch)
        shrunk.append(axis)
    fitting = round(budget_gib / gib_needed(topo, num_classes, 1))
    dataset_voxels = float(np.prod(median_shape, dtype=np.float64)) * num_cases
    cap = round(dataset_voxels * MAX_DATASET_FRACTION / float(np.prod(topo.patch, dtype=np.float64)))
    batch = max(min(fitting, cap), MIN_BATCH)
    return Sizing(topo, batch, gib_needed(topo, num_classes, batch),
                  _reasons(dims, start, topo, shrunk, budget_gib, num_classes, fitting, cap, batch))


def _reasons(dims, start, topo, shrunk, budget, num_classes, fitting, cap, batch) -> dict[str, str]:
    box = "256^3" if dims == 3 else "2048^2"
    how = (f"shrunk along axes {sorted(set(shrunk))} ({len(shrunk)} steps, always the axis largest relative "
           f"to the median shape) until the estimate at batch {MIN_BATCH} fit") if shrunk else \
        f"it fits without shrinking (estimate {gib_needed(topo, num_classes, MIN_BATCH):.2g} GiB at batch {MIN_BATCH})"
    patch = (f"patch {fmt(topo.patch)}: a {box}-voxel box shaped like one physical cube, clipped to the "
             f"median shape ({fmt(start)}), padded so each axis divides by 2^pools ({fmt(topo.divisor)}); "
             f"{how} the {budget:g} GiB budget (nnU-Net's reference estimate: feature-map elements against "
             f"{REFERENCE_VOXELS[dims]:.3g} for {REFERENCE_GIB:g} GB at batch {REFERENCE_BATCH[dims]})")
    limits = f"the memory allows {fitting}, 5% of the dataset's voxels allows {cap}"
    batch_text = (f"batch size {batch}: as large as the budget allows, but one batch covers at most 5% of the "
                  f"dataset's voxels, and at least {MIN_BATCH} ({limits}; nnU-Net's rule); estimated memory "
                  f"{gib_needed(topo, num_classes, batch):.2g} GiB")
    return {"patch": patch, "batch": batch_text}
