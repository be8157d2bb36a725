"""Resampling to target_spacing and back, by nnU-Net's rules: shapes, separate z, cubic images,
one-hot labels, and predictions that land exactly on the source grid."""
import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from test_predictor import Threshold, dice, loaders, predict

from segflow.data import resample as rs
from segflow.data.phantoms import write_phantom_dataset
from segflow.data.prepare import _resample
from segflow.inference.predict import back_to_source
from segflow.inference.writers import Geometry


def oblique_affine(spacing, origin=(-40.0, 12.5, 7.0)):
    """Direction: a rotation about an oblique axis, so no axis of the grid is aligned with the world's."""
    a, b = np.deg2rad(20.0), np.deg2rad(-35.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def balls(shape, spacing, centres_radii):
    """A label map of balls (mm radii) in a grid with the given spacing; later balls overwrite."""
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"))
    label = np.zeros(shape, np.uint8)
    for value, centre, radius in centres_radii:
        label[np.sum((grid - np.reshape(centre, (3, 1, 1, 1))) ** 2, axis=0) <= radius ** 2] = value
    return label


# ---- the rules on hand-computed cases ----------------------------------------------------------

def test_new_shape_is_nnunets_rounded_shape():
    assert rs.new_shape((512, 512, 100), (0.8, 0.8, 3.0), (0.8, 0.8, 2.5)) == (512, 512, 120)
    assert rs.new_shape((24, 20, 16), (1.2, 1.2, 2.0), (2.4, 2.4, 2.0)) == (12, 10, 16)
    assert rs.new_shape((255, 7), (0.7, 1.0), (1.0, 2.0)) == (178, 4)  # 178.5 -> 178, 3.5 -> 4: Python's round
    assert rs.new_shape((3,), (1.0,), (10.0,)) == (1,)  # never an empty axis


@pytest.mark.parametrize("spacing, target, axis", [
    ((0.8, 0.8, 3.0), (0.8, 0.8, 2.5), 2),  # the source is anisotropic (3.75 > 3): z alone, nearest
    ((1.0, 1.0, 3.0), (1.0, 1.0, 3.0), None),  # exactly 3 is not above the threshold
    ((1.0, 1.0, 2.0), (0.5, 0.5, 2.0), 2),  # isotropic enough now, but the target is anisotropic (4)
    ((3.5, 1.0, 1.0), (1.0, 1.0, 1.0), 0),  # the coarse axis can be any axis
    ((0.24, 1.25, 1.25), (0.24, 1.25, 1.25), None),  # two equally coarse axes: no single slice axis
    ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), None),
    ((1.0, 4.0), (1.0, 1.0), None),  # 2-D images have no slice axis
])
def test_separate_z_exactly_when_anisotropic(spacing, target, axis):
    assert rs.coarse_axis(spacing, target) == axis


def test_isotropic_image_is_scipys_cubic_zoom():
    image = np.random.default_rng(0).normal(size=(1, 11, 9, 7)).astype(np.float32)
    out, _, _ = _resample(image, None, None, (1.0, 1.0, 1.0), (0.5, 0.75, 1.4))  # 1.4 / 0.5 < 3: no separate z
    expected = ndimage.zoom(image[0].astype(np.float64), (22 / 11, 12 / 9, 5 / 7), order=3, mode="nearest",
                            grid_mode=True)
    assert out.shape == (1, 22, 12, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], expected, atol=1e-5)


def test_anisotropic_image_is_cubic_in_plane_and_nearest_along_z():
    image = np.random.default_rng(1).normal(size=(2, 10, 8, 5)).astype(np.float32)
    out, _, _ = _resample(image, None, None, (0.8, 0.8, 4.0), (0.4, 0.4, 2.0))
    assert out.shape == (2, 20, 16, 10)
    # output slice k samples z = (k + 0.5) / 2 - 0.5, rounded halves up: slices 0 0 1 1 2 2 3 3 4 4
    for c in range(2):
        for k, source in enumerate([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]):
            in_plane = ndimage.zoom(image[c, :, :, source].astype(np.float64), 2, order=3, mode="nearest",
                                    grid_mode=True)
            np.testing.assert_allclose(out[c, :, :, k], in_plane, atol=1e-5)


def test_labels_keep_their_classes_and_volumes():
    spacing, target = (0.8, 0.8, 3.0), (1.1, 1.1, 1.5)
    shape = (96, 90, 24)
    # classes 0, 2, 5 (1, 3, 4 absent), 5 touching 2, and a small class 7 of a few slices
    label = balls(shape, spacing, [(2, (38, 36, 36), 22), (5, (52, 40, 30), 12), (7, (20, 55, 40), 6)])
    image = label[None].astype(np.float32)
    _, out, affine = _resample(image, label, None, spacing, target)
    assert out.dtype == label.dtype and out.shape == rs.new_shape(shape, spacing, target)
    assert set(np.unique(out)) == {0, 2, 5, 7}  # no class lost, none made up at the 2/5 and 0/5 borders
    voxel_in, voxel_out = np.prod(spacing), abs(np.linalg.det(affine[:3, :3]))
    for cls in (2, 5, 7):
        before, after = (label == cls).sum() * voxel_in, (out == cls).sum() * voxel_out
        assert after == pytest.approx(before, rel=0.04), cls


def test_a_single_class_label_stays_that_class():
    label = np.full((6, 5, 4), 3, np.uint8)
    _, out, _ = _resample(label[None].astype(np.float32), label, None, (1.0, 1.0, 1.0), (0.5, 0.5, 0.5))
    assert out.shape == (12, 10, 8) and set(np.unique(out)) == {3}


# ---- geometry: there and back ------------------------------------------------------------------

def test_resampled_affine_keeps_direction_and_extent():
    spacing, target, shape = (0.8, 0.8, 3.0), (1.0, 1.0, 1.5), (25, 20, 10)
    affine = oblique_affine(spacing)
    _, _, new = _resample(np.zeros((1, *shape), np.float32), None, affine, spacing, target)
    out_shape = rs.new_shape(shape, spacing, target)
    assert out_shape == (20, 16, 20)
    np.testing.assert_allclose(rs.spacing_of(new), (1.0, 1.0, 1.5))  # 25 * 0.8 / 20 etc.: exact here
    np.testing.assert_allclose(new[:3, :3] / rs.spacing_of(new), affine[:3, :3] / spacing, atol=1e-12)
    # the grid's outer corners (voxel -0.5 and n - 0.5) stay at the same place in the world
    for corner_old, corner_new in [(-0.5 * np.ones(3), -0.5 * np.ones(3)),
                                   (np.array(shape) - 0.5, np.array(out_shape) - 0.5)]:
        np.testing.assert_allclose(new @ [*corner_new, 1], affine @ [*corner_old, 1], atol=1e-9)


def test_prediction_goes_back_onto_the_oblique_anisotropic_source_grid():
    spacing, target, shape = (0.8, 0.8, 3.0), (1.1, 1.1, 1.5), (64, 60, 18)
    affine = oblique_affine(spacing)
    label = balls(shape, spacing, [(1, (26, 24, 27), 15), (2, (36, 30, 24), 7)])
    _, small, small_affine = _resample(label[None].astype(np.float32), label, affine, spacing, target)
    probs = torch.nn.functional.one_hot(torch.from_numpy(small).long(), 3).permute(3, 0, 1, 2).float()
    back = back_to_source(probs, Geometry(shape, affine), 3, True, small_affine)
    assert back.shape == (3, *shape) and back.dtype == torch.float32
    back_label = back.argmax(0).numpy()
    assert set(np.unique(back_label)) == {0, 1, 2}
    for cls in (1, 2):
        assert dice(back_label == cls, label == cls) > 0.95, cls


def test_probabilities_go_back_nearest_along_a_coarse_axis():
    # the loader grid has 2 mm slices, the source 4 mm (4 > 3): every source slice is one loader slice
    source_affine, shape = oblique_affine((1.0, 1.0, 4.0)), (6, 5, 4)
    _, _, loader_affine = _resample(np.zeros((1, *shape), np.float32), None, source_affine, (1.0, 1.0, 4.0),
                                    (1.0, 1.0, 2.0))
    probs = torch.arange(8, dtype=torch.float32).reshape(1, 1, 1, 8).expand(2, 6, 5, 8).contiguous()
    back = back_to_source(probs, Geometry(shape, source_affine), 3, True, loader_affine)
    # source slice j sits at loader coordinate 2 j + 0.5: rounded halves up, slices 1 3 5 7, not blends
    assert back.shape == (2, 6, 5, 4)
    np.testing.assert_allclose(back[0, 0, 0].numpy(), [1, 3, 5, 7])


def test_rotated_grids_are_refused():
    affine = oblique_affine((1.0, 1.0, 1.0))
    probs = torch.zeros(2, 4, 4, 4)
    with pytest.raises(ValueError, match="rotated against its file's"):
        back_to_source(probs, Geometry((4, 4, 4), affine), 3, True, np.eye(4), "Predictor 'p'", "case_1")


def test_predictor_writes_the_source_shape_and_oblique_affine(tmp_path):
    root = write_phantom_dataset(tmp_path / "aniso", "3d", num_cases=3, size=(24, 20, 16))
    affine = oblique_affine((0.8, 0.8, 3.0))
    for path in sorted(root.glob("*/*.nii.gz")):  # the phantom re-written on an oblique 0.8 x 0.8 x 3 mm grid
        img = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), str(path))
    val, info = loaders(tmp_path, root, image_size=8, val_fraction=0.4, target_spacing=[1.0, 1.0, 1.5])
    batch = next(iter(val))
    assert batch["image"].shape[2:] == (19, 16, 32)
    preds = predict(tmp_path, Threshold(3.0), val, info)
    for rec in preds:
        out, src = nib.load(rec.prediction_path), nib.load(rec.image_paths[0])
        assert out.shape == src.shape == (24, 20, 16)
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
        truth = np.asarray(nib.load(rec.label_path).dataobj)
        assert dice(np.asarray(out.dataobj) == 1, truth == 1) > 0.9
