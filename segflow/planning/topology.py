"""The U-Net topology for a patch: pooling per axis, strides and kernels per stage, features per
stage, and the size of its feature maps (the memory estimate).

The rules are nnU-Net's (network_topology.get_pool_and_conv_props, ExperimentPlanner
.get_plans_for_configuration, and the feature-map count of dynamic_network_architectures'
PlainConvUNet), written anew here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_EDGE = 4  # nnU-Net's UNet_featuremap_min_edge_length: the bottleneck keeps at least 4 voxels per pooled axis
BASE_FEATURES = 32  # UNet_base_num_features
MAX_FEATURES = {2: 512, 3: 320}  # UNet_max_features_2d / _3d
CONVS_PER_STAGE = 2  # UNet_blocks_per_stage_encoder / _decoder


@dataclass
class Topology:
    patch: list[int]  # the patch, padded so that every axis divides by 2**pools
    pools: list[int]  # pooling operations per axis
    strides: list[list[int]]  # per stage; the first stage is all 1
    kernels: list[list[int]]  # per stage
    features: list[int]  # per stage

    @property
    def stages(self) -> int:
        return len(self.strides)

    @property
    def divisor(self) -> list[int]:
        return [2**p for p in self.pools]


def topology(spacing, patch) -> Topology:
    """Pool until no axis may be pooled, one stage per pooling step. An axis may be pooled while its
    feature map has at least 2 x MIN_EDGE voxels and its (current) spacing is within 2x of the finest
    poolable axis, so a coarse axis waits until pooling the fine axes has made it isotropic enough; a lone
    poolable axis needs 3 x MIN_EDGE. Kernels are 3 on an axis once its spacing is within 2x of the
    finest, 1 before that (no convolution across coarse slices), and 3 everywhere in the bottleneck."""
    dims = len(spacing)
    current, size = [float(s) for s in spacing], [float(p) for p in patch]
    strides, kernels, pools, kernel = [[1] * dims], [], [0] * dims, [1] * dims
    while True:
        poolable = [a for a in range(dims) if size[a] >= 2 * MIN_EDGE]
        if not poolable:
            break
        finest = min(current[a] for a in poolable)
        poolable = [a for a in poolable if current[a] / finest < 2]
        if len(poolable) == 1 and size[poolable[0]] < 3 * MIN_EDGE:
            break
        # nnU-Net's loop indexes the spacing list of the size-valid axes here; the rule it states (and
        # applies whenever every axis is size-valid) is "the axis' own spacing within 2x of the finest"
        kernel = [3 if kernel[a] == 3 or current[a] / min(current) < 2 else 1 for a in range(dims)]
        kernels.append(kernel)
        strides.append([2 if a in poolable else 1 for a in range(dims)])
        for a in poolable:
            pools[a] += 1
            current[a] *= 2
            size[a] = math.ceil(size[a] / 2)
    kernels.append([3] * dims)
    padded = [int(math.ceil(p / 2**n) * 2**n) for p, n in zip(patch, pools)]
    cap = MAX_FEATURES[dims]
    features = [min(cap, BASE_FEATURES * 2**i) for i in range(len(strides))]
    return Topology(padded, pools, strides, kernels, features)


def feature_map_voxels(topo: Topology, num_classes: int) -> int:
    """Elements of every feature map a forward pass of one sample makes, as nnU-Net counts them for its
    memory estimate: each encoder stage's convolutions, each decoder stage's transposed convolution and
    convolutions, and the segmentation head at full resolution. Proportional to activation memory.
    nnU-Net's planner counts a network built without deep supervision (its default), so the lower heads
    are not counted although training has them; its calibration (560e6 / 85e6 elements) was made so."""
    voxels, size = [], list(topo.patch)
    for stride in topo.strides:
        size = [s // t for s, t in zip(size, stride)]
        voxels.append(int(np.prod(size, dtype=np.int64)))
    encoder = sum(CONVS_PER_STAGE * f * n for f, n in zip(topo.features, voxels))
    decoder = sum((CONVS_PER_STAGE + 1) * f * n for f, n in zip(topo.features[:-1], voxels[:-1]))
    return int(encoder + decoder + num_classes * voxels[0])
