"""SegmentationOverlay orientation: volumes with an affine are drawn in the radiological
convention, whatever order and direction their voxels are stored in."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, inv_ornt_aff
from PIL import Image
from scipy import ndimage

from segflow.evaluation.overlay import choose_view, oriented_case, render_overlays
from segflow.inference.records import PredictionRecord, PredictionSet

SHAPE = (16, 20, 12)  # in RAS+: x towards the patient's right, y anterior, z superior
SPACING = (1.0, 1.5, 2.0)  # so the planes are 16 x 30, 16 x 24 and 30 x 24 mm
MARKER = (slice(12, 16), slice(15, 20), slice(9, 12))  # the anterior-right-superior corner
# How a file stores the RAS+ volume: for each RAS+ axis, the stored axis and whether it is reversed
STORAGE = {
    "RAS": [[0, 1], [1, 1], [2, 1]],
    "LPS": [[0, -1], [1, -1], [2, 1]],
    "permuted": [[2, -1], [0, 1], [1, -1]],
    "oblique": [[1, -1], [2, -1], [0, 1]],  # and turned 12 degrees about z and 7 about x
}


def rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(4)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def stored(volume: np.ndarray, storage: str) -> tuple[np.ndarray, np.ndarray]:
    """The RAS+ volume as `storage` keeps it on disk, with the affine that says so."""
    ornt = np.array(STORAGE[storage], float)
    base = np.diag([*SPACING, 1.0])
    base[:3, 3] = (-12.0, 30.0, 4.0)
    affine = base @ inv_ornt_aff(ornt, volume.shape)
    if storage == "oblique":
        affine = rotation(0, 7) @ rotation(2, 12) @ affine
    return apply_orientation(volume, ornt), affine


def write_case(folder: Path, storage: str, image: np.ndarray) -> PredictionRecord:
    folder.mkdir(parents=True, exist_ok=True)
    marker = np.zeros(SHAPE, np.uint8)
    marker[MARKER] = 1
    paths = {}
    for name, volume in (("image", image.astype(np.float32)), ("pred", marker), ("label", marker)):
        arr, affine = stored(volume, storage)
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, affine), str(paths[name]))
    zooms = tuple(float(z) for z in nib.load(str(paths["image"])).header.get_zooms())
    return PredictionRecord("case", paths["pred"], (paths["image"],), paths["label"], spacing=zooms)


def expected_plane(v: np.ndarray, axis: int, k: int) -> np.ndarray:
    """What the screen shows, pixel by pixel, for slice k of the RAS+ volume v: axial has anterior
    at the top and the patient's right on the left; coronal superior at the top, right on the left;
    sagittal superior at the top, anterior on the left."""
    X, Y, Z = v.shape
    if axis == 2:
        return np.array([[v[X - 1 - c, Y - 1 - r, k] for c in range(X)] for r in range(Y)])
    if axis == 1:
        return np.array([[v[X - 1 - c, k, Z - 1 - r] for c in range(X)] for r in range(Z)])
    return np.array([[v[k, Y - 1 - c, Z - 1 - r] for c in range(Y)] for r in range(Z)])


@pytest.mark.parametrize("storage", list(STORAGE))
@pytest.mark.parametrize("axis, aspect", [(0, 2.0 / 1.5), (1, 2.0 / 1.0), (2, 1.5 / 1.0)])
def test_displayed_planes_are_radiological_for_any_storage(tmp_path, storage, axis, aspect):
    ras = np.arange(np.prod(SHAPE), dtype=float).reshape(SHAPE)  # every voxel tells where it is
    rec = write_case(tmp_path, storage, ras)
    case = oriented_case(rec)
    assert case.canonical and case.spacing == pytest.approx(SPACING)
    view = choose_view(rec, case, axis, 1)
    k = MARKER[axis].start  # the first slice holding the marker
    assert view.indices == [k] and view.aspect == pytest.approx(aspect)
    np.testing.assert_array_equal(view.image_plane(case.image, k)[0], expected_plane(ras, axis, k))
    shown = view.plane(case.pred, k)
    assert shown[0, 0] == 1 and shown[-1, -1] == 0  # the marker in the top-left corner


def test_a_2d_nifti_slice_is_placed_by_its_affine(tmp_path):
    ras = np.arange(np.prod(SHAPE), dtype=float).reshape(SHAPE)
    k = 10
    lps_slice = ras[::-1, ::-1, k]  # an axial slice stored left-posterior first
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    paths = []
    for name, arr in (("image", lps_slice), ("pred", np.zeros_like(lps_slice, np.uint8))):
        paths.append(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(arr[..., None].astype(np.float32), affine), str(paths[-1]))
    rec = PredictionRecord("slice", paths[1], (paths[0],))
    case = oriented_case(rec)
    view = choose_view(rec, case, "auto", 3)
    assert not case.volume and view.axis == 2 and view.aspect == pytest.approx(1.5)
    np.testing.assert_array_equal(view.image_plane(case.image, 0)[0],
                                  expected_plane(ras[:, :, k:k + 1], 2, 0))


def image_panel(png: Path) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The PNG's pixels and the box (top, left, bottom, right) of its first panel: the leftmost
    large black area (the image's background, with the frame around it)."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    parts, _ = ndimage.label(rgb.max(axis=-1) < 30)
    boxes = [b for b in ndimage.find_objects(parts) if (b[0].stop - b[0].start) * (b[1].stop - b[1].start) > 2000]
    rows, cols = min(boxes, key=lambda b: b[1].start)
    return rgb, (rows.start, cols.start, rows.stop, cols.stop)


@pytest.mark.parametrize("axis, width_mm, height_mm", [(0, 30, 24), (1, 16, 24), (2, 16, 30)])
def test_the_png_shows_the_marker_top_left_with_true_proportions(tmp_path, axis, width_mm, height_mm):
    ras = np.zeros(SHAPE)
    ras[MARKER] = 100.0
    rec = write_case(tmp_path / "permuted", "permuted", ras)
    png = render_overlays(PredictionSet([rec], spatial_dims=3), tmp_path / "ov", slices_per_case=1,
                          slice_axis=axis, dpi=80, log=lambda s: None)[0]
    rgb, (top, left, bottom, right) = image_panel(png)
    assert (right - left) / (bottom - top) == pytest.approx(width_mm / height_mm, rel=0.06)
    panel = rgb[top:bottom, left:right]
    ys, xs = np.nonzero(panel.min(axis=-1) > 200)  # the white marker
    assert len(ys) > 50
    assert ys.mean() < 0.3 * panel.shape[0] and xs.mean() < 0.3 * panel.shape[1]


def test_every_storage_of_one_volume_gives_the_same_picture(tmp_path):
    ras = np.zeros(SHAPE)
    ras[MARKER] = 100.0
    ras[2:6, 3:8, 2:5] = 40.0  # something dimmer at the left-posterior-inferior side
    pictures = {}
    for storage in STORAGE:
        rec = write_case(tmp_path / storage, storage, ras)
        png = render_overlays(PredictionSet([rec], spatial_dims=3), tmp_path / f"ov_{storage}", slices_per_case=2,
                              dpi=50, log=lambda s: None)[0]
        pictures[storage] = np.asarray(Image.open(png).convert("RGB"))
    for storage, picture in pictures.items():
        np.testing.assert_array_equal(picture, pictures["RAS"], err_msg=storage)
