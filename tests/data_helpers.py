"""Small real datasets on disk, in each layout the loader reads (used by tests/test_data_*.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

AFFINE = np.array([[0.0, 0.0, 2.5, -40.0],  # axes permuted and flipped, anisotropic, offset
                   [-0.8, 0.0, 0.0, 60.0],
                   [0.0, 0.9, 0.0, -12.0],
                   [0.0, 0.0, 0.0, 1.0]])


def blob(shape, centre, radius) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def save_nifti(path: Path, arr: np.ndarray, affine=AFFINE) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def save_png(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def case_2d(i: int, size=(32, 40), classes: int = 2):
    rng = np.random.default_rng(i)
    label = np.zeros(size, np.uint8)
    label[blob(size, (size[0] // 2 + i % 5, size[1] // 2 - i % 3), 6 + i % 4)] = 1
    if classes == 3:
        label[blob(size, (size[0] // 2 + i % 5, size[1] // 2 - i % 3), 3)] = 2
    image = 40 + 150 * (label > 0) + rng.normal(0, 5, size)
    return np.clip(image, 0, 255).astype(np.uint8), label


def case_3d(i: int, shape=(20, 18, 12)):
    rng = np.random.default_rng(i)
    label = blob(shape, (10 + i % 3, 9, 6), 4).astype(np.uint8)
    image = (100 * label + rng.normal(0, 10, shape)).astype(np.int16)
    return image, label


def folder_png(root: Path, n: int = 6, mask_suffix: str = "", split: bool = False) -> Path:
    for i in range(n):
        image, label = case_2d(i)
        base = root / ("train" if i < n - 2 else "val") if split else root
        save_png(base / "images" / f"case{i:02d}.png", image)
        save_png(base / "masks" / f"case{i:02d}{mask_suffix}.png", label * 255)  # 0/255 masks, as often found
    return root


def msd_3d(root: Path, n: int = 5) -> Path:
    training = []
    for i in range(n):
        image, label = case_3d(i)
        save_nifti(root / "imagesTr" / f"vol_{i}.nii.gz", image)
        save_nifti(root / "labelsTr" / f"vol_{i}.nii.gz", label)
        training.append({"image": f"./imagesTr/vol_{i}.nii.gz", "label": f"./labelsTr/vol_{i}.nii.gz"})
    meta = {"name": "test", "labels": {"0": "background", "1": "lesion"}, "modality": {"0": "CT"},
            "numTraining": n, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def nnunet_2ch(root: Path, n: int = 4) -> Path:
    """3-D, two channels (_0000 and _0001 files), nnU-Net v2 dataset.json."""
    for i in range(n):
        image, label = case_3d(i)
        save_nifti(root / "imagesTr" / f"pat{i:03d}_0000.nii.gz", image)
        save_nifti(root / "imagesTr" / f"pat{i:03d}_0001.nii.gz", (-image).astype(np.int16))
        save_nifti(root / "labelsTr" / f"pat{i:03d}.nii.gz", label)
    meta = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "tumour": 1},
            "numTraining": n, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


# BraTS-like regions: 1 = edema (outer shell), 2 = necrotic / non-enhancing core, 3 = enhancing tumour
BRATS_LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}
BRATS_REGIONS = {"whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}


def brats_case(i: int, size: int = 24):
    """Four channels (x, y, z) and nested labels: each tumour part is bright in the channel that shows it, as
    FLAIR shows the whole tumour, T2 the core, T1ce the enhancing part; the fourth channel is noise."""
    rng = np.random.default_rng(100 + i)
    shape = (size,) * 3
    centre = (size // 2 + i % 3 - 1, size // 2 - i % 2, size // 2)
    label = np.zeros(shape, np.uint8)
    label[blob(shape, centre, size * 0.38)] = 1
    label[blob(shape, centre, size * 0.26)] = 2
    label[blob(shape, centre, size * 0.15)] = 3
    channels = [label >= 1, label >= 2, label == 3, np.zeros(shape, bool)]
    image = np.stack([100 * c + rng.normal(0, 8, shape) for c in channels]).astype(np.float32)
    return image, label


def brats_nnunet(root: Path, n: int = 6, size: int = 24, labels: dict | None = None, order=(1, 2, 3),
                 ignore: int | None = None) -> Path:
    """nnU-Net v2 layout, four channel files per case, dataset.json with regions (and an ignore label)."""
    for i in range(n):
        image, label = brats_case(i, size)
        if ignore is not None:  # a slab of unannotated voxels in every case
            label[:, :, : size // 4] = ignore
        for c in range(4):
            save_nifti(root / "imagesTr" / f"brats{i:03d}_{c:04d}.nii.gz", image[c], np.eye(4))
        save_nifti(root / "labelsTr" / f"brats{i:03d}.nii.gz", label, np.eye(4))
    meta = {"channel_names": {"0": "FLAIR", "1": "T2", "2": "T1ce", "3": "T1"},
            "labels": {**(labels or BRATS_LABELS), **({"ignore": ignore} if ignore is not None else {})},
            "numTraining": n, "file_ending": ".nii.gz"}
    if order is not None:
        meta["regions_class_order"] = list(order)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def brats_msd(root: Path, n: int = 6, size: int = 24) -> Path:
    """MSD layout (Task01_BrainTumour's): one 4-D image per case, labels 0..3 declared by name, no regions."""
    training = []
    for i in range(n):
        image, label = brats_case(i, size)
        save_nifti(root / "imagesTr" / f"brats_{i}.nii.gz", np.moveaxis(image, 0, -1), np.eye(4))
        save_nifti(root / "labelsTr" / f"brats_{i}.nii.gz", label, np.eye(4))
        training.append({"image": f"./imagesTr/brats_{i}.nii.gz", "label": f"./labelsTr/brats_{i}.nii.gz"})
    meta = {"name": "brats", "labels": {"0": "background", "1": "edema", "2": "non-enhancing", "3": "enhancing"},
            "modality": {"0": "FLAIR", "1": "T2", "2": "T1ce", "3": "T1"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def run_quickstart(tmp_path: Path, *sets: str, device: str = "cpu") -> tuple[Path, list[dict]]:
    """workflows/quickstart.json through the CLI with `--set` overrides, its phantom under tmp_path:
    (run directory, history)."""
    from segflow.cli import main

    root = Path(__file__).resolve().parents[1]
    run_dir = tmp_path / "run"
    args = ["run", str(root / "workflows" / "quickstart.json"), "--device", device, "--no-progress",
            "--run-dir", str(run_dir), "--set", f"data_loader.data_dir={tmp_path / 'p2d'}"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return run_dir, json.loads((run_dir / "history.json").read_text())


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
