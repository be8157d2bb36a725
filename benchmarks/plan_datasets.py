"""Synthetic datasets for measuring `segflow plan` (benchmarks/plan_vs_nnunet.py and the planning tests),
written in the MSD layout (imagesTr/, labelsTr/, dataset.json with `modality`).

- `write_ct_like`: anisotropic multi-class CT. Spacing 0.8 x 0.8 x 3 mm in the affine, int16 values in
  -1000..1500 (air, soft tissue, fat, bone with noise), classes 1 "organ" (large), 2 "kidney" (medium)
  and 3 "lesion" (a few hundred voxels: the class nnU-Net-style sampling must not starve). A `shape` other
  than CT_SHAPE scales the body and every structure with it, axis by axis (benchmarks/plan_accuracy.py trains
  on a smaller copy; at half size the lesion has a few dozen voxels).
- `write_mr_like`: 4-channel MR (T1, T1c, T2, FLAIR in one 4-D float32 NIfTI, channels last as in
  MSD), a skull-stripped head (zero outside the brain, so cropping to the nonzero region shrinks the
  cases below 75% and nnU-Net z-scores inside the mask), classes 1 "edema" and 2 "core", spacing
  varying a little per case as MR protocols do.

Deterministic by `seed`; ten cases are written in about a second (gzip level 1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segflow.workflow.files import write_json

CT_SPACING = (0.8, 0.8, 3.0)
CT_SHAPE = (96, 96, 32)
MR_SHAPE = (72, 72, 48)
MR_CHANNELS = ("T1", "T1c", "T2", "FLAIR")
# mean intensity of each MR tissue per channel (T1, T1c, T2, FLAIR): brain, edema, core
MR_TISSUE = {"brain": (600, 620, 300, 350), "edema": (480, 500, 650, 700), "core": (420, 1100, 550, 450)}


def write_ct_like(root: str | Path, num_cases: int = 8, shape=CT_SHAPE, seed: int = 0) -> Path:
    cases = []
    scale = [s / c for s, c in zip(shape, CT_SHAPE)]  # structure sizes follow the nominal shape
    for i in range(num_cases):
        rng = np.random.default_rng([seed, i])
        case_shape = (shape[0], shape[1], shape[2] + int(rng.integers(-2, 3)))  # a few slices more or less
        cases.append((f"ct_{i:03d}", *ct_case(rng, case_shape, scale), _affine(CT_SPACING)))
    labels = {"0": "background", "1": "organ", "2": "kidney", "3": "lesion"}
    return _write_msd(Path(root), "CT-like anisotropic", {"0": "CT"}, labels, cases)


def write_mr_like(root: str | Path, num_cases: int = 8, shape=MR_SHAPE, seed: int = 0) -> Path:
    cases = []
    for i in range(num_cases):
        rng = np.random.default_rng([seed, i])
        spacing = (rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1), rng.uniform(1.0, 1.5))
        cases.append((f"mr_{i:03d}", *mr_case(rng, shape), _affine(spacing)))
    labels = {"0": "background", "1": "edema", "2": "core"}
    return _write_msd(Path(root), "MR-like 4-channel", dict(enumerate(MR_CHANNELS)), labels, cases)


def ct_case(rng: np.random.Generator, shape, scale=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """A body (soft tissue in a fat rim, in air) with a spine, an organ, a kidney and a tiny bright lesion;
    `scale` multiplies the structures' sizes and offsets (in voxels) per axis."""
    grid = _grid(shape)
    mid = [s / 2 for s in shape]

    def sized(*values):  # voxel lengths along x, y, z at this scale
        return [v * f for v, f in zip(values, scale)]

    body = _ellipsoid(grid, mid, (0.45 * shape[0], 0.38 * shape[1], 10 * shape[2]))
    inner = _ellipsoid(grid, mid, (0.41 * shape[0], 0.34 * shape[1], 10 * shape[2]))
    spine = _ellipsoid(grid, (mid[0], mid[1] + 0.25 * shape[1], mid[2]), sized(6, 6, 10 * shape[2]))
    label = np.zeros(shape, np.uint8)
    organ_c = [m + d for m, d in zip(mid, sized(-rng.uniform(8, 16), -rng.uniform(0, 8), rng.uniform(-3, 3)))]
    label[_ellipsoid(grid, organ_c, sized(rng.uniform(14, 20), rng.uniform(12, 16), rng.uniform(7, 10)))] = 1
    kidney_c = [m + d for m, d in zip(mid, sized(rng.uniform(14, 20), rng.uniform(4, 10), rng.uniform(-3, 3)))]
    label[_ellipsoid(grid, kidney_c, sized(rng.uniform(6, 8), rng.uniform(8, 10), rng.uniform(3.5, 5)))] = 2
    lesion_c = [c + d for c, d in zip(organ_c, sized(*(rng.uniform(-4, 4) for _ in range(3))))]
    label[_ellipsoid(grid, lesion_c, sized(rng.uniform(5, 6.5), rng.uniform(5, 6.5), 2.0))] = 3  # ~200-350 voxels
    image = np.full(shape, -1000.0, np.float32)
    image[body] = rng.uniform(-110, -80)  # fat rim
    image[inner] = rng.uniform(30, 50)  # soft tissue
    image[spine & inner] = rng.uniform(900, 1300)  # bone
    for cls, (low, high) in {1: (55, 70), 2: (150, 190), 3: (240, 300)}.items():  # contrast-enhanced
        image[label == cls] = rng.uniform(low, high)
    image += rng.normal(0, rng.uniform(15, 25), shape).astype(np.float32)
    return np.clip(np.round(image), -1000, 1500).astype(np.int16), label


def mr_case(rng: np.random.Generator, shape) -> tuple[np.ndarray, np.ndarray]:
    """A brain (zero outside it) with a tumour core inside an edema; intensities per channel and tissue,
    a smooth bias field and noise. The image is (x, y, z, channel) float32."""
    grid = _grid(shape)
    mid = [s / 2 for s in shape]
    brain = _ellipsoid(grid, mid, (0.32 * shape[0], 0.38 * shape[1], 0.36 * shape[2]))
    centre = [c + rng.uniform(-0.1, 0.1) * s for c, s in zip(mid, shape)]
    edema_r = rng.uniform(7, 11)
    label = np.zeros(shape, np.uint8)
    label[_ellipsoid(grid, centre, (edema_r, edema_r * 1.2, edema_r * 0.8)) & brain] = 1
    label[_ellipsoid(grid, centre, (edema_r * 0.5, edema_r * 0.55, edema_r * 0.4)) & brain] = 2
    bias = 1 + 0.15 * (grid[0] / shape[0] - 0.5) + 0.1 * (grid[2] / shape[2] - 0.5)
    image = np.zeros((*shape, len(MR_CHANNELS)), np.float32)
    for ch in range(len(MR_CHANNELS)):
        channel = np.zeros(shape, np.float32)
        channel[brain] = MR_TISSUE["brain"][ch] * rng.uniform(0.9, 1.1)
        channel[label == 1] = MR_TISSUE["edema"][ch] * rng.uniform(0.9, 1.1)
        channel[label == 2] = MR_TISSUE["core"][ch] * rng.uniform(0.9, 1.1)
        channel += rng.normal(0, 30, shape).astype(np.float32)
        image[..., ch] = np.where(brain, np.maximum(channel * bias, 1.0), 0.0)  # positive inside, 0 outside
    return image, label


def _grid(shape):
    return np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij", sparse=True)


def _ellipsoid(grid, centre, radii) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def _affine(spacing) -> np.ndarray:
    affine = np.diag([*[float(s) for s in spacing], 1.0])
    affine[:3, 3] = [-10.0, 20.0, -30.0]  # an origin other than 0, as in scanner files
    return affine


def _write_msd(root: Path, name: str, modality: dict, labels: dict, cases: list) -> Path:
    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    training = []
    for case, image, label, affine in cases:
        entry = {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"}
        for rel, arr in ((entry["image"], image), (entry["label"], label)):
            img = nib.Nifti1Image(arr, affine)
            img.header.set_xyzt_units("mm")
            nib.save(img, str(root / rel))
        training.append(entry)
    meta = {"name": name, "description": "synthetic, written by benchmarks/plan_datasets.py",
            "tensorImageSize": "4D" if len(modality) > 1 else "3D", "modality": {str(k): v for k, v in modality.items()},
            "labels": labels, "numTraining": len(training), "numTest": 0, "training": training, "test": []}
    write_json(root / "dataset.json", meta)
    return root
