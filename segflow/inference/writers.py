"""A case's original geometry, read from its source file, and writing predictions in a given format.

Only headers are read where the format allows it (NIfTI, NRRD/MHA, PNG/JPG), so looking up the geometry of
a large volume costs nothing next to predicting it.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segflow.data.itk_io import FORMAT_OF, ITK_EXTENSIONS, ItkGeometry, itk_bytes, read_header
from segflow.data.label_coding import CLASS_INDICES, LabelCoding
from segflow.data.readers import RASTER, read, split_name
from segflow.workflow.files import atomic_write

SUFFIX = {"nifti": ".nii.gz", "png": ".png", "npy": ".npy", "nrrd": ".nrrd", "mha": ".mha"}


@dataclass
class Geometry:
    """Where a case's prediction has to land: the source file's spatial shape (in the axis order the
    readers give), its affine and spacing when it has them, and its own format."""

    shape: tuple[int, ...]
    affine: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    format: str = "npy"  # nifti | png | npy | nrrd | mha: what "auto" writes for this input
    header: Any = None  # the NIfTI header, so the output keeps qform/sform codes and units
    disk_shape: tuple[int, ...] | None = None  # shape on disk (NIfTI, NRRD/MHA), e.g. (x, y, 1) for a 2-D slice
    itk: ItkGeometry | None = None  # NRRD/MHA input: its exact spacing, origin and direction


def source_geometry(path: str | Path) -> Geometry:
    path = Path(path)
    ext = split_name(path.name)[1]
    if ext in (".nii", ".nii.gz"):
        import nibabel as nib

        img = nib.load(str(path))  # header only; the voxels stay on disk
        shape = tuple(int(s) for s in img.shape)
        disk = shape
        while len(shape) > 2 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) == 4:  # (x, y, z, channel)
            shape, disk = shape[:3], shape[:3]
        zooms = tuple(round(float(z), 6) for z in img.header.get_zooms())[: len(shape)]
        return Geometry(shape, np.asarray(img.affine), zooms, "nifti", img.header, disk)
    if ext in ITK_EXTENSIONS:
        head = read_header(path)  # header only
        return Geometry(head.shape, head.geometry.affine(), head.spacing, FORMAT_OF[ext], None, head.disk_shape,
                        head.geometry)
    if ext in RASTER:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
        return Geometry((h, w), None, None, "png")
    loaded = read(path)
    arr = loaded.array
    shape = arr.shape[1:] if loaded.channels else arr.shape
    if path.is_dir():  # DICOM series: NIfTI keeps its spacing
        return Geometry(tuple(shape), loaded.affine, loaded.spacing, "nifti")
    return Geometry(tuple(shape), loaded.affine, loaded.spacing, "npy")


def write_label(path: Path, label: np.ndarray, fmt: str, geometry: Geometry | None,
                coding: LabelCoding = CLASS_INDICES) -> Path:
    """Write a class-index map; `path` has no suffix yet. Returns the written file's path (written
    atomically: a crash never leaves a half-written prediction). Image formats (PNG) store the classes
    in the dataset's `coding` (0/255 masks stay viewable), the others as class indices."""
    if fmt not in SUFFIX:
        raise ValueError(f"output_format {fmt!r} is not one of {', '.join(SUFFIX)}")
    out = path.with_name(path.name + SUFFIX[fmt])
    label = coding.for_prediction(out).encode(label)
    dtype = np.uint8 if label.max(initial=0) < 256 else np.uint16
    label = label.astype(dtype)
    if fmt == "png":
        if label.ndim != 2:
            raise ValueError(f"{out.name}: output_format png is for 2-D data, this prediction is {label.ndim}-D; "
                             "set output_format to nifti or npy")
        from PIL import Image

        return atomic_write(out, lambda f: Image.fromarray(label).save(f, format="PNG"))
    if fmt == "nifti":
        data = _nifti_bytes(label, dtype, geometry)
        return atomic_write(out, lambda f: f.write(data))
    if fmt in ("nrrd", "mha"):  # NRRD/MHA input: its own header values; other input: its affine
        g = geometry or Geometry(label.shape)
        data = itk_bytes(label, fmt, g.itk, g.affine, g.disk_shape, out)
        return atomic_write(out, lambda f: f.write(data))
    return atomic_write(out, lambda f: np.save(f, label))


def _nifti_bytes(label: np.ndarray, dtype: type, geometry: Geometry | None) -> bytes:
    """The .nii.gz file of `label` in `geometry` (the input's affine and header)."""
    import nibabel as nib

    affine = geometry.affine if geometry is not None and geometry.affine is not None else np.eye(4)
    if affine.shape != (4, 4):  # 2-D affine (3x3) from a resampled slice: embed it
        full = np.eye(4)
        full[:2, :2], full[:2, 3] = affine[:2, :2], affine[:2, 2]
        affine = full
    if geometry is not None and geometry.disk_shape and np.prod(geometry.disk_shape) == label.size:
        label = label.reshape(geometry.disk_shape)
    header = geometry.header.copy() if geometry is not None and geometry.header is not None else None
    img = nib.Nifti1Image(label, affine, header=header)
    img.set_data_dtype(dtype)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0  # the image's intensity scaling is not ours
    return gzip.compress(img.to_bytes(), compresslevel=1)  # nibabel's own level for .nii.gz


def write_probabilities(path: Path, probs: np.ndarray) -> Path:
    """(C, *S) float16 class probabilities as .npy (half precision: plenty for a probability map)."""
    out = path.with_name(path.name + "_probabilities.npy")
    return atomic_write(out, lambda f: np.save(f, probs.astype(np.float16)))
