"""Synthetic phantom datasets, written to disk in the MSD layout so tests and the quickstart go
through the same reading path as real data.

2-D cases are 8-bit greyscale PNG (image) + PNG class-index masks; 3-D cases are int16 NIfTI
(CT-like values) + uint8 NIfTI labels with a non-identity affine (anisotropic spacing, flipped
x/y axes as in DICOM-derived files, an offset origin). Class 1 is a bright rotated ellipse
(ellipsoid); with num_classes=3, class 2 is a darker core inside it. Sizes, positions,
intensities and noise vary per case; everything is deterministic by `seed`.

Besides the `training` cases (imagesTr/labelsTr) a few unlabelled test cases are written to
imagesTs/ and listed in dataset.json's `test` list, as in the Medical Segmentation Decathlon;
2-D test images have varying sizes. They come from their own random streams, so the training
cases are the same, byte for byte, as before test cases existed.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
DEFAULTS = {"2d": {"num_cases": 64, "size": 128, "num_test": 4}, "3d": {"num_cases": 16, "size": 64, "num_test": 2}}
TEST_STREAM = 1_000_000  # test case i draws from rng([seed, TEST_STREAM + i]), apart from training's [seed, i]
TEST_SIZE_STEPS_2D = ((0, 0), (0, 32), (-32, 0), (16, -16))  # 2-D test images: not all the training size
SPACING_3D = (1.2, 1.2, 2.0)


def write_phantom_dataset(
    root: str | Path,
    kind: str = "2d",
    num_cases: int | None = None,
    size: int | tuple[int, ...] | None = None,
    num_classes: int = 2,
    seed: int = 0,
    num_test: int | None = None,
) -> Path:
    """Write (or reuse) a phantom dataset at `root`; returns the path.

    A folder already holding the same phantom (same parameters) is reused untouched; one
    holding a phantom with other parameters is rewritten; one holding anything else is an
    error, so user data is never overwritten. Writing goes to a temporary sibling folder
    that is renamed into place, so concurrent writers (one per DDP rank) never see half a
    dataset.
    """
    if kind not in DEFAULTS:
        raise ValueError(f"phantom kind must be '2d' or '3d', got {kind!r}")
    if num_classes not in (2, 3):
        raise ValueError(f"phantom num_classes must be 2 or 3 (background included), got {num_classes}")
    root = Path(root)
    num_cases = num_cases or DEFAULTS[kind]["num_cases"]
    num_test = DEFAULTS[kind]["num_test"] if num_test is None else num_test
    dims = 2 if kind == "2d" else 3
    shape = _shape(size or DEFAULTS[kind]["size"], dims)
    fingerprint = {"version": FORMAT_VERSION, "kind": kind, "num_cases": num_cases,
                   "size": list(shape), "num_classes": num_classes, "seed": seed, "num_test": num_test}
    existing = _existing_fingerprint(root)
    if existing == fingerprint:
        return root
    # a phantom written before test cases existed (no "num_test") is rewritten like one with other
    # parameters: its training cases come out identical, and imagesTs/ is added
    if existing is None and root.exists() and any(root.iterdir()):
        raise ValueError(
            f"{root} already holds other data; point data_dir at an empty or new folder to write "
            "the built-in phantom dataset there"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write(tmp, kind, shape, num_cases, num_classes, seed, fingerprint)
        if existing is not None:  # our own phantom with other parameters: replace it
            shutil.rmtree(root, ignore_errors=True)
        elif root.exists():
            root.rmdir()  # empty folder
        try:
            os.rename(tmp, root)
        except OSError:  # another process renamed its copy first
            if _existing_fingerprint(root) != fingerprint:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _shape(size: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    if isinstance(size, int):
        return (size, size) if dims == 2 else (size, size, max(16, size * 3 // 4))
    if len(size) != dims:
        raise ValueError(f"phantom size {tuple(size)} must have {dims} values")
    return tuple(int(s) for s in size)


def _existing_fingerprint(root: Path) -> dict | None:
    try:
        meta = json.loads((root / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    fp = meta.get("segflow_phantom")
    if fp is None:
        return None
    missing = any(not (root / e[k]).exists() for e in meta.get("training", []) for k in ("image", "label"))
    missing = missing or any(not (root / e).exists() for e in meta.get("test", []) if isinstance(e, str))
    return None if missing else fp


def _write(out: Path, kind: str, shape, num_cases: int, num_classes: int, seed: int, fingerprint: dict) -> None:
    num_test = fingerprint["num_test"]
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    ext = ".png" if kind == "2d" else ".nii.gz"
    training = []
    for i in range(num_cases):
        rng = np.random.default_rng([seed, i])
        image, label = phantom_case(rng, shape, num_classes)
        case = f"phantom_{i:03d}"
        img_rel, lab_rel = f"./imagesTr/{case}{ext}", f"./labelsTr/{case}{ext}"
        if kind == "2d":
            _save_png(out / img_rel, image)
            _save_png(out / lab_rel, label)
        else:
            _save_nifti(out / img_rel, image.astype(np.int16))
            _save_nifti(out / lab_rel, label)
        training.append({"image": img_rel, "label": lab_rel})
    test = []
    if num_test:
        (out / "imagesTs").mkdir()
    for i in range(num_test):
        rng = np.random.default_rng([seed, TEST_STREAM + i])
        if kind == "2d":
            dh, dw = TEST_SIZE_STEPS_2D[i % len(TEST_SIZE_STEPS_2D)]
            case_shape = (max(32, shape[0] + dh), max(32, shape[1] + dw))
        else:
            case_shape = shape
        image, _ = phantom_case(rng, case_shape, num_classes)
        img_rel = f"./imagesTs/phantom_{num_cases + i:03d}{ext}"  # ids continue after the training cases
        if kind == "2d":
            _save_png(out / img_rel, image)
        else:
            _save_nifti(out / img_rel, image.astype(np.int16))
        test.append(img_rel)
    labels = {"0": "background", "1": "organ"}
    if num_classes == 3:
        labels["2"] = "core"
    meta = {
        "name": f"segflow phantom {kind}",
        "description": "Synthetic phantom dataset written by segflow.data.phantoms",
        "tensorImageSize": "3D" if kind == "3d" else "2D",
        "modality": {"0": "CT" if kind == "3d" else "grey"},
        "labels": labels,
        "numTraining": num_cases,
        "numTest": num_test,
        "training": training,
        "test": test,
        "segflow_phantom": fingerprint,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))


def phantom_case(rng: np.random.Generator, shape, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (float, 8-bit range in 2-D, CT-like in 3-D) and its uint8 label map."""
    dims = len(shape)
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    centre = [rng.uniform(0.3, 0.7) * s for s in shape]
    radii = [rng.uniform(0.12, 0.3) * min(shape) for _ in shape]
    label = np.zeros(shape, np.uint8)
    organ = _ellipse(grid, centre, radii, rng.uniform(0, np.pi))
    label[organ] = 1
    if num_classes == 3:
        inner = [c + rng.uniform(-0.25, 0.25) * r for c, r in zip(centre, radii)]
        core = _ellipse(grid, inner, [r * rng.uniform(0.3, 0.5) for r in radii], rng.uniform(0, np.pi)) & organ
        label[core] = 2
    if dims == 2:
        bg, fg, core_v, noise = rng.uniform(30, 80), rng.uniform(150, 220), rng.uniform(90, 120), rng.uniform(6, 14)
        ramp = rng.uniform(-15, 15) * (grid[0] / shape[0] - 0.5)  # uneven illumination
    else:
        bg, fg, core_v, noise = rng.uniform(-60, 20), rng.uniform(90, 180), rng.uniform(30, 60), rng.uniform(10, 25)
        ramp = rng.uniform(-20, 20) * (grid[2] / shape[2] - 0.5)
    image = np.full(shape, bg, np.float32) + ramp
    image[label == 1] = fg
    image[label == 2] = core_v
    image += rng.normal(0, noise, shape).astype(np.float32)
    if dims == 2:
        image = np.clip(image, 0, 255)
    return image, label


def _ellipse(grid, centre, radii, angle: float) -> np.ndarray:
    # rotate in the first two axes; the third (3-D) stays axis-aligned
    x, y = grid[0] - centre[0], grid[1] - centre[1]
    u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    r = (u / radii[0]) ** 2 + (v / radii[1]) ** 2
    if len(grid) == 3:
        r = r + ((grid[2] - centre[2]) / radii[2]) ** 2
    return r <= 1.0


def _save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.round(arr).astype(np.uint8)).save(path)


def _save_nifti(path: Path, arr: np.ndarray) -> None:
    import nibabel as nib

    affine = phantom_affine(arr.shape)
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def phantom_affine(shape) -> np.ndarray:
    """x and y flipped (LPS-like), anisotropic spacing, origin at the volume centre."""
    sx, sy, sz = SPACING_3D
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [sx * shape[0] / 2, sy * shape[1] / 2, -sz * shape[2] / 2]
    return affine
