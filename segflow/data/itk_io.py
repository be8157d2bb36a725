"""NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) files through SimpleITK, as nnU-Net and MONAI read them.

SimpleITK is an optional extra (a 52 MB wheel): `pip install 'segflow[itk]'`; it is imported only
when such a file is met, and its absence is an ImportError naming the file and the extra.

Axes and world frame, so that one physical image read from .nii.gz or from .nrrd gives the same
array and the same affine: ITK indexes voxels (x, y, z) and NumPy arrays from it come (z, y, x), so
the axes are reversed to the (x, y, z) order nibabel gives; ITK's world is LPS and NIfTI's RAS, so
the affine is ITK's direction x spacing and origin with the first two world axes negated. Vector
(multi-component) images become channels, 4-D images channels last as with NIfTI.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ITK_EXTENSIONS = (".nrrd", ".nhdr", ".mha", ".mhd")
# one file per prediction (atomic writes, one path per record): a detached header gets the one-file form
FORMAT_OF = {".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha", ".mhd": "mha"}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class ItkGeometry:
    """ITK's own header values (LPS world, index order x, y, z), kept exactly so that a prediction is
    written with the spacing, origin and direction its input had, bit for bit."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major, dim x dim

    @property
    def dim(self) -> int:
        return len(self.spacing)

    def affine(self) -> np.ndarray:
        """The 4x4 voxel-to-RAS affine nibabel would give for the same image (2-D: z kept as is)."""
        d = self.dim
        m, origin = np.eye(3), np.zeros(3)
        m[:d, :d] = np.asarray(self.direction, dtype=float).reshape(d, d) * np.asarray(self.spacing, dtype=float)
        origin[:d] = self.origin
        out = np.eye(4)
        out[:3, :3], out[:3, 3] = LPS_TO_RAS @ m, LPS_TO_RAS @ origin
        return out


def geometry_from_affine(affine: np.ndarray | None, dim: int) -> ItkGeometry:
    """ITK geometry of a `dim`-D grid from a voxel-to-RAS affine (4x4, or 3x3 for a 2-D slice); identity
    when there is none (a prediction for NumPy or PNG input forced into NRRD/MHA)."""
    if affine is None:
        return ItkGeometry((1.0,) * dim, (0.0,) * dim, tuple(np.eye(dim).ravel()))
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):  # 2-D affine from a resampled slice: embed it
        full = np.eye(4)
        full[:2, :2], full[:2, 3] = affine[:2, :2], affine[:2, 2]
        affine = full
    m, origin = LPS_TO_RAS @ affine[:3, :3], LPS_TO_RAS @ affine[:3, 3]
    m, origin = m[:dim, :dim], origin[:dim]
    spacing = np.linalg.norm(m, axis=0)
    return ItkGeometry(tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                       tuple(float(v) for v in (m / spacing).ravel()))


def sitk_for(path: Path, doing: str = "reading"):
    """The SimpleITK module, or an ImportError naming the file and the extra that installs it."""
    try:
        import SimpleITK as sitk
    except ImportError as e:
        raise ImportError(f"{doing} {path} needs SimpleITK (NRRD and MetaImage .mha/.mhd files): "
                          "pip install 'segflow[itk]'") from e
    return sitk


@dataclass
class ItkHeader:
    shape: tuple[int, ...]  # spatial, in segflow's (x, y, z) order, singleton trailing axes dropped
    disk_shape: tuple[int, ...]  # the spatial size on disk, (x, y, 1) for a 2-D slice stored as 3-D
    components: int  # channels: vector components, or the fourth axis of a 4-D image
    geometry: ItkGeometry  # of the spatial axes on disk (3-D for a one-slice volume)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(round(float(s), 6) for s in self.geometry.spacing[: len(self.shape)])


def read_header(path: Path) -> ItkHeader:
    """The file's sizes and geometry without reading its voxels."""
    sitk = sitk_for(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ValueError(f"cannot read {path}: {_itk_message(e)}") from e
    return _header(reader.GetSize(), reader.GetNumberOfComponents(), reader.GetSpacing(), reader.GetOrigin(),
                   reader.GetDirection(), path)


def _header(size, components: int, spacing, origin, direction, path: Path) -> ItkHeader:
    size, dim = tuple(int(s) for s in size), len(size)
    if dim == 4:  # (x, y, z, channel), as MSD's 4-D NIfTI
        if components != 1:
            raise ValueError(f"{path}: a 4-D image with {components}-component voxels is not an image segflow reads")
        sub = np.asarray(direction, dtype=float).reshape(4, 4)[:3, :3]
        geometry = ItkGeometry(tuple(spacing[:3]), tuple(origin[:3]), tuple(float(v) for v in sub.ravel()))
        return ItkHeader(size[:3], size[:3], size[3], geometry)
    if dim not in (2, 3):
        raise ValueError(f"{path}: a {dim}-D image is neither 2-D nor 3-D")
    shape = size
    while len(shape) > 2 and shape[-1] == 1:  # 2-D slices saved as (x, y, 1), as with NIfTI
        shape = shape[:-1]
    return ItkHeader(shape, size, components, ItkGeometry(tuple(spacing), tuple(origin), tuple(direction)))


def read_itk(path: Path) -> tuple[np.ndarray, bool, np.ndarray, tuple[float, ...]]:
    """(array, channels, affine, spacing) for readers.Loaded: the (x, y, z) array (channels first for
    vector and 4-D images), the RAS affine, the spacing rounded as NIfTI's float32 zooms are."""
    sitk = sitk_for(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ValueError(f"cannot read {path}: {_itk_message(e)}") from e
    head = _header(image.GetSize(), image.GetNumberOfComponentsPerPixel(), image.GetSpacing(), image.GetOrigin(),
                   image.GetDirection(), path)
    arr = sitk.GetArrayFromImage(image)  # (z, y, x) or (z, y, x, component): index order reversed
    channels = head.components > 1 or image.GetDimension() == 4
    if image.GetNumberOfComponentsPerPixel() > 1:
        arr = np.moveaxis(arr, -1, 0)
    spatial = arr.ndim - (1 if channels else 0)
    arr = arr.transpose(*range(arr.ndim - spatial), *reversed(range(arr.ndim - spatial, arr.ndim)))
    if channels:  # channels axis first, then the spatial axes as in the header
        arr = arr.reshape((arr.shape[0], *head.shape))
    else:
        arr = arr.reshape(head.shape)
    return arr, channels, head.geometry.affine(), head.spacing


def _itk_message(e: RuntimeError) -> str:
    """ITK's exception text from its first ERROR line on, without the C++ source location before it."""
    text = str(e)
    first = re.search(r"s?itk::ERROR:", text)
    message = " ".join(re.sub(r"s?itk::ERROR:", " ", text[first.start() if first else 0:]).split())
    return f"{message or 'unreadable'}. The file looks corrupt or truncated (a .nhdr/.mhd needs its data file)"


def itk_bytes(label: np.ndarray, fmt: str, geometry: ItkGeometry | None, affine, disk_shape, path: Path) -> bytes:
    """The bytes of a compressed .nrrd / .mha file holding `label` ((x, y[, z]) class indices) with the
    input's exact ITK geometry, else one made from `affine`."""
    sitk = sitk_for(path, "writing")
    if disk_shape and np.prod(disk_shape) == label.size:
        label = label.reshape(disk_shape)
    if geometry is None or geometry.dim != label.ndim:
        geometry = geometry_from_affine(affine, label.ndim)
    image = sitk.GetImageFromArray(np.ascontiguousarray(label.T))  # (z, y, x): ITK's size is (x, y, z)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    with tempfile.TemporaryDirectory(prefix="segflow-itk-") as tmp:
        out = Path(tmp) / f"prediction.{fmt}"  # ITK picks its writer by the extension
        sitk.WriteImage(image, str(out), True)  # compressed: label maps shrink a lot
        return out.read_bytes()


# the header line naming a detached header's data: MetaImage "ElementDataFile = x.raw", NRRD "data file: x.raw"
_DATA_FILE = re.compile(r"^\s*(?:ElementDataFile\s*=|data ?file\s*:)\s*(.*?)\s*$", re.IGNORECASE)


def detached_data_files(header: Path) -> list[Path]:
    """The files a .nhdr/.mhd header's voxels are in (a changed data file changes the image while the
    header stays as it was). LOCAL (data in the header itself), and file patterns with %d, give none;
    LIST gives the files listed after it. Reads text only: no SimpleITK needed."""
    if header.suffix.lower() not in (".nhdr", ".mhd"):
        return []
    try:
        lines = header.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for i, line in enumerate(lines):
        found = _DATA_FILE.match(line)
        if not found:
            continue
        name = found[1].split()[0] if found[1] else ""
        if name.upper() == "LIST":
            names = [n.strip() for n in lines[i + 1:] if n.strip()]
        elif name.upper() == "LOCAL" or "%" in name or not name:
            names = []
        else:
            names = [found[1]]
        return [p if p.is_absolute() else header.parent / p for p in map(Path, names)]
    return []
