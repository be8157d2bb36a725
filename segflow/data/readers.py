"""Reading one image or label file (or a DICOM series folder) into a NumPy array.

Arrays keep the file's own axis order (NIfTI as stored, like MONAI's LoadImage and nnU-Net,
PNG/TIFF as rows x columns); colour and 4-D NIfTI channels are moved to a leading axis. NRRD and
MetaImage files (segflow.data.itk_io, the optional SimpleITK) come in NIfTI's (x, y, z) order and
RAS affine, so one image gives the same array and affine in either format.
Every failure becomes a ValueError naming the file, so a corrupt case is easy to find.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segflow.data.itk_io import ITK_EXTENSIONS, read_itk

# Longest first, so ".nii.gz" wins over ".gz"-less matches.
EXTENSIONS = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".npz", ".dcm", *ITK_EXTENSIONS)
RASTER = (".png", ".jpg", ".jpeg")


@dataclass
class Loaded:
    """A decoded file. `array` has the spatial axes, plus a leading channel axis when
    `channels` is True; None means the file cannot say (NumPy) and the label decides."""

    array: np.ndarray
    channels: bool | None
    affine: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None


def split_name(name: str) -> tuple[str, str]:
    """("case_001", ".nii.gz") for "case_001.nii.gz"; ext "" for unknown types and folders."""
    low = name.lower()
    for ext in EXTENSIONS:
        if low.endswith(ext):
            return name[: -len(ext)], ext
    return name, ""


def is_readable(path: Path) -> bool:
    """A file of a known format, or a folder holding a DICOM series."""
    if path.name.startswith("."):  # macOS "._x" and other hidden files
        return False
    if path.is_dir():
        return _holds_dicom(path)
    return split_name(path.name)[1] not in ("", ".dcm")


def _holds_dicom(folder: Path) -> bool:
    return any(p.suffix.lower() == ".dcm" for p in folder.iterdir())


def read(path: str | Path, *, is_label: bool = False) -> Loaded:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        loaded = _read(path, is_label)
    except ImportError:
        raise
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"cannot read {path}: {e}") from e
    except Exception as e:  # nibabel/PIL/zlib raise many types for a damaged file
        raise ValueError(
            f"cannot read {path}: {type(e).__name__}: {e}. The file looks corrupt or truncated; "
            "re-export it or remove the case."
        ) from e
    if is_label:
        loaded = _as_label(loaded, path)
    return loaded


def _read(path: Path, is_label: bool) -> Loaded:
    if path.is_dir():
        # only a folder that could be a DICOM series is read as one: one holding .dcm files, or an image's
        # folder whose name is no file name (a label is never a series, "case_001.nii.gz" never a folder)
        if not _holds_dicom(path) and (is_label or split_name(path.name)[1]):
            raise ValueError(f"{path}: the {'label' if is_label else 'image'} path is a folder, not a file ("
                             + ("a label is one file: NIfTI, NRRD, PNG, ...)" if is_label else
                                "an image is one file, or a folder of DICOM .dcm slices)"))
        return read_dicom_series(path)
    ext = split_name(path.name)[1]
    if ext in (".nii", ".nii.gz"):
        return _read_nifti(path, is_label)
    if ext in ITK_EXTENSIONS:
        return Loaded(*read_itk(path))
    if ext in RASTER:
        return _read_raster(path, is_label)
    if ext in (".tif", ".tiff"):
        import tifffile

        arr = tifffile.imread(str(path))
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour plane, channels last
            return Loaded(np.moveaxis(arr[..., :3], -1, 0), True)
        return Loaded(arr, False)
    if ext == ".npy":
        return Loaded(np.load(path, allow_pickle=False), None)
    if ext == ".npz":
        return Loaded(_npz_array(path, is_label), None)
    raise ValueError(f"{path}: unknown file type; use NIfTI, NRRD, MHA/MHD, PNG/JPG/TIFF, "
                     ".npy/.npz or a DICOM folder")


def _read_nifti(path: Path, is_label: bool) -> Loaded:
    import nibabel as nib

    img = nib.load(str(path))
    arr = np.asanyarray(img.dataobj)  # keeps integer label dtypes; reads the whole file now
    if is_label:
        arr = _unscaled_label(img, arr, path)
    zooms = tuple(round(float(z), 6) for z in img.header.get_zooms())  # float32 header values
    while arr.ndim > 3 and arr.shape[-1] == 1:  # a time or channel axis of one
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 1 and min(arr.shape[:2]) > 1:  # 2-D slices saved as (x, y, 1)
        arr = arr[..., 0]
    if sum(s > 1 for s in arr.shape[:3]) < 2:  # a volume of (1, 1, 1) is a 3-D volume, too small to segment
        raise ValueError(f"{path}: NIfTI of shape {arr.shape} is too small to segment: an image needs at least "
                         "two axes longer than 1 voxel (a placeholder, or the wrong file?)")
    if arr.ndim == 4:  # MSD multi-modal volumes: (x, y, z, channel)
        return Loaded(np.moveaxis(arr, -1, 0), True, img.affine, zooms[:3])
    if arr.ndim not in (2, 3):
        raise ValueError(f"{path}: NIfTI with shape {arr.shape} is neither 2-D nor 3-D")
    return Loaded(arr, False, np.asarray(img.affine), zooms[: arr.ndim])


def _unscaled_label(img, scaled: np.ndarray, path: Path) -> np.ndarray:
    """A label's class indices when the header's scl_slope/scl_inter is what makes them fractional.

    Some tools store integer masks with an arbitrary scaling (DeepMedic's brainmask.nii.gz: int32 0/1
    with slope 2.3e-10 and intercept 0.5, i.e. 0.5 everywhere once scaled); the stored integers are the
    classes then. Images always get the scaling: only labels come here.
    """
    if _whole(scaled):
        return scaled
    slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    stored = img.dataobj.get_unscaled() if hasattr(img.dataobj, "get_unscaled") else scaled
    if (slope, inter) != (1.0, 0.0) and _whole(stored):
        return stored
    raise ValueError(f"{path}: label values must be whole class indices, found fractional values"
                     + (f" (the header scales the stored values: scl_slope {slope:g}, scl_inter {inter:g})"
                        if (slope, inter) != (1.0, 0.0) else ""))


def _whole(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "iub" or bool(np.all(np.isfinite(arr)) and np.array_equal(arr, np.round(arr)))


def _read_raster(path: Path, is_label: bool) -> Loaded:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode == "P" and not is_label:
            im = im.convert("RGB")
        elif im.mode in ("RGBA", "CMYK", "YCbCr"):
            im = im.convert("RGB")
        elif im.mode == "LA":
            im = im.convert("L")
        arr = np.asarray(im)
    if arr.ndim == 3:
        return Loaded(np.moveaxis(arr, -1, 0), True)
    return Loaded(arr, False)


def _npz_array(path: Path, is_label: bool) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        if len(keys) == 1:
            return z[keys[0]]
        wanted = ("label", "seg", "mask") if is_label else ("image", "data", "img")
        for k in wanted:
            if k in keys:
                return z[k]
        raise ValueError(f"{path}: .npz holds arrays {keys}; name the array one of {list(wanted)}")


def _as_label(loaded: Loaded, path: Path) -> Loaded:
    arr = loaded.array
    if loaded.channels:
        if arr.shape[0] == 1 or all(np.array_equal(arr[0], c) for c in arr[1:]):
            arr = arr[0]  # grey mask saved as RGB
        else:
            raise ValueError(
                f"{path}: the label is a colour image with differing channels; store class indices "
                "(0 = background, 1, 2, ...) in a single-channel image"
            )
    if arr.dtype.kind == "f":
        if not _whole(arr):
            raise ValueError(f"{path}: label values must be whole class indices, found fractional values")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{path}: label dtype {arr.dtype} is not numeric")
    return Loaded(arr, False, loaded.affine, loaded.spacing)


def read_dicom_series(folder: Path) -> Loaded:
    """One DICOM series (a folder of .dcm slices) as a (rows, columns, slices) volume.

    Slices are ordered by position along the slice normal, then InstanceNumber; pixel values
    get RescaleSlope/Intercept (Hounsfield units for CT). Labels for DICOM images must use
    the same (rows, columns, slices) voxel order, e.g. as .npy or NIfTI written from it.
    """
    try:
        import pydicom
    except ImportError as e:
        raise ImportError(
            f"reading the DICOM series in {folder} needs pydicom: pip install 'segflow[dicom]'"
        ) from e
    slices = [pydicom.dcmread(str(p)) for p in sorted(folder.iterdir()) if p.suffix.lower() == ".dcm"]
    if not slices:
        raise ValueError(f"{folder}: no .dcm files in the folder")

    def position(ds) -> float:
        ipp, iop = getattr(ds, "ImagePositionPatient", None), getattr(ds, "ImageOrientationPatient", None)
        if ipp is None or iop is None:
            return float(getattr(ds, "InstanceNumber", 0))
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        return float(np.dot(normal, np.asarray(ipp, float)))

    slices.sort(key=lambda ds: (position(ds), int(getattr(ds, "InstanceNumber", 0))))
    planes = []
    for ds in slices:
        px = ds.pixel_array.astype(np.float32)
        planes.append(px * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0)))
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        raise ValueError(f"{folder}: slices of different sizes {sorted(shapes)}; is this one series?")
    vol = np.stack(planes, axis=-1)
    row, col = (float(v) for v in getattr(slices[0], "PixelSpacing", (1.0, 1.0)))
    if len(slices) > 1:
        dz = abs(position(slices[1]) - position(slices[0])) or float(getattr(slices[0], "SliceThickness", 1.0))
    else:
        dz = float(getattr(slices[0], "SliceThickness", 1.0))
    spacing = (row, col, dz)
    return Loaded(vol, False, np.diag([*spacing, 1.0]), spacing)
