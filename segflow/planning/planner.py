"""One configuration's plan (3d_fullres or 2d) from a fingerprint: every number with its reason."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from segflow.planning.errors import PlanError
from segflow.planning.normalisation import loader_settings
from segflow.planning.sizing import size_patch_and_batch
from segflow.planning.spacing import fmt, median_shape, target_spacing
from segflow.planning.topology import MAX_FEATURES, Topology

CONFIGS = ("3d_fullres", "2d")
DIMS_OF_CONFIG = {"3d_fullres": 3, "2d": 2}


@dataclass
class Plan:
    config: str
    dataset: str
    data_dir: str
    dims: int
    in_channels: int
    num_classes: int
    num_cases: int
    classes_declared: bool  # by dataset.json; otherwise the workflow states num_classes
    spacing: list[float]  # the spacing the network works in (the target, or 1 where files state none)
    target_spacing: list[float] | None  # for the loader; None: no resampling needed or possible
    median_shape: list[float]  # median case shape (after cropping) in `spacing`
    patch: list[int]
    batch_size: int
    gpu_memory_gib: float
    estimate_gib: float
    pools: list[int]
    strides: list[list[int]]
    kernels: list[list[int]]
    features: list[int]
    deep_supervision: bool
    deep_supr_num: int
    normalisation: dict  # per channel: nnU-Net's scheme and use_mask_for_norm
    loader_normalisation: dict  # the MedicalSegmentationLoader fields that carry it out
    reasons: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)  # the dataset's regions: the network outputs one channel each

    def as_json(self) -> dict:
        return asdict(self)

    def explain(self) -> str:
        return "\n".join(f"- {text}" for text in self.reasons.values())


def plan(fp: dict, config: str | None = None, gpu_memory_gib: float = 24.0) -> Plan:
    config = config or ("3d_fullres" if fp["spatial_dims"] == 3 else "2d")
    _check_plannable(fp, config)
    cases = fp["cases"]
    shapes = np.array([c["shape_after_crop"] for c in cases], float)
    warnings = list(fp.get("warnings", []))
    reasons = {}
    if cases[0]["spacing"] is None:
        spacings = np.ones_like(shapes)
        spacing = np.ones(shapes.shape[1])
        warnings.append("the image files state no voxel spacing (PNG, NumPy): spacing 1 assumed for every axis")
        reasons["spacing"] = "no resampling: the files state no voxel spacing, so every case is taken as it is"
    else:
        spacings = np.array([c["spacing"] for c in cases], float)
        spacing, reasons["spacing"] = target_spacing(spacings, shapes)
    resample = bool(np.any(np.abs(spacings / spacing - 1) > 1e-3))
    if cases[0]["spacing"] is not None and not resample:
        reasons["spacing"] += "; every case already has this spacing, so the loader does not resample"
    shape = median_shape(shapes, spacings, spacing)
    reasons["shape"] = (f"median shape {fmt(shape, 4)} voxels: the cases cropped to their nonzero region and "
                        f"resampled to {fmt(spacing)}")
    sizing = size_patch_and_batch(spacing, shape, fp["num_classes"], gpu_memory_gib, len(cases))
    topo = sizing.topology
    reasons.update(sizing.reasons)
    reasons["topology"] = _topology_reason(topo, spacing)
    supervision = topo.stages >= 3
    reasons["deep_supervision"] = _supervision_reason(topo.stages, supervision)
    planned, fields, reasons["normalisation"] = loader_settings(
        fp["modalities"], fp["foreground_intensity"], fp["median_relative_size_after_crop"], fp["spatial_dims"])
    return Plan(config, fp["dataset"]["name"], fp["dataset"]["data_dir"], DIMS_OF_CONFIG[config], fp["channels"],
                fp["num_classes"], len(cases), fp["dataset"]["declares_classes"], [float(s) for s in spacing],
                [float(s) for s in spacing] if resample else None, [float(s) for s in shape], topo.patch,
                sizing.batch_size, float(gpu_memory_gib), round(sizing.estimate_gib, 3), topo.pools, topo.strides,
                topo.kernels, topo.features, supervision, max(1, topo.stages - 2), planned, fields, reasons, warnings,
                list(fp.get("regions") or []))


def _check_plannable(fp: dict, config: str) -> None:
    if config not in CONFIGS:
        raise PlanError(f"--config must be one of {', '.join(CONFIGS)}; got {config!r}")
    first = fp["cases"][0]
    where = f"case {first['case_id']}: {first['files'][-1]}"
    if config == "3d_fullres" and fp["spatial_dims"] != 3:
        raise PlanError(f"{fp['dataset']['data_dir']} holds 2-D images ({where}); 3d_fullres plans a 3-D network "
                        "for volumes; use --config 2d")
    if config == "2d" and fp["spatial_dims"] != 2:
        raise PlanError(f"{fp['dataset']['data_dir']} holds 3-D volumes ({where}); segflow's 2-D networks train on "
                        "2-D images, not on slices of volumes, so use --config 3d_fullres")
    if len(fp["cases"]) < 2:
        raise PlanError(f"{fp['dataset']['data_dir']} has one labelled case ({where}); a plan needs at least 2, "
                        "one to train on and one to validate on")


def _topology_reason(topo: Topology, spacing) -> str:
    flat = [a for a in range(len(spacing)) if topo.kernels[0][a] == 1]
    kernels = "3 on every axis" if not flat else (
        f"1 on axis {flat} in the first {sum(k[flat[0]] == 1 for k in topo.kernels)} stage(s), while that axis' "
        "spacing is still 2x or more the finest (no convolution across coarse slices), 3 elsewhere")
    return (f"{topo.stages} stages, pooling per axis {topo.pools}: an axis is pooled while its feature map has "
            f"at least 8 voxels (4 after pooling) and its spacing is within 2x of the finest poolable axis; "
            f"kernels {kernels}; features {topo.features} (32 doubling per stage, at most "
            f"{MAX_FEATURES[len(spacing)]}) (nnU-Net: get_pool_and_conv_props)")


def _supervision_reason(stages: int, on: bool) -> str:
    if not on:
        return f"no deep supervision: {stages} stages leave no decoder output below full resolution to supervise"
    return (f"deep supervision on the full-resolution output and {stages - 2} lower decoder outputs (deep_supr_num "
            f"{stages - 2}, the most a {stages}-stage DynUNet has), loss weights halving per level as nnU-Net's "
            "(which gives the lowest of them weight 0)")
