"""NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) through SimpleITK (the optional `itk` extra): the same
arrays and affines as NIfTI of one physical image, predictions written back with the input's exact
spacing, origin and direction, and a dataset in .nrrd that trains. Skipped where SimpleITK is missing,
except the test of the message a user without it gets."""
import json
import sys

import data_helpers as h  # tests/ is on sys.path (pytest rootdir-relative import)
import nibabel as nib
import numpy as np
import pytest
import torch

from segflow.data.loader import build_loaders
from segflow.data.readers import read
from segflow.evaluation.overlay import oriented_case
from segflow.inference.writers import source_geometry, write_label
from segflow.nodes.base import RunContext
from segflow.nodes.data import MedicalSegmentationLoader, MedicalSegmentationLoaderConfig
from segflow.nodes.inference import Predictor, PredictorConfig
from segflow.workflow import executor


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    a, b = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


# oblique, axes permuted (one reversed), anisotropic, off-centre: every way a geometry can go wrong shows
DIRECTION = tuple((_rotation(30, 20) @ np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])).ravel())
SPACING, ORIGIN = (0.7, 0.9, 2.5), (12.5, -30.25, 7.0)


@pytest.fixture
def sitk():
    return pytest.importorskip("SimpleITK")


def save_itk(sitk, path, arr, spacing=SPACING, origin=ORIGIN, direction=DIRECTION, vector=False):
    """`arr` in segflow's (x, y, z) order (channels first when `vector`) written with this geometry."""
    data = np.moveaxis(arr, 0, -1) if vector else arr
    spatial = arr.ndim - 1 if vector else arr.ndim
    data = np.ascontiguousarray(data.transpose(*reversed(range(spatial)), *range(spatial, data.ndim)))
    image = sitk.GetImageFromArray(data, isVector=vector)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)
    return path


def geometry(sitk, path):
    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def assert_same_geometry(sitk, written, source):
    """MetaImage keeps ITK's values bit for bit. NRRD stores spacing x direction as text and re-derives
    the spacing on reading, so a file SimpleITK itself reads and writes again can move in the last bit:
    there the values agree to double precision."""
    (size, *values), (size_in, *values_in) = geometry(sitk, written), geometry(sitk, source)
    assert size == size_in
    if str(written).endswith(".mha"):
        assert values == values_in
    for got, want in zip(values, values_in):
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14)


def context(tmp_path):
    return RunContext(run_dir=tmp_path, workflow_name="t", device="cpu", progress=False, log=lambda m: None)


class Threshold(torch.nn.Module):
    """Foreground where the z-scored image is bright: right on these cases without training, so a
    prediction written back flipped or shifted shows as a low Dice."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), 8 * (x[:, :1] - 1.5)], dim=1)


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


# ---- reading ---------------------------------------------------------------------------------------

def test_one_image_as_nifti_nrrd_and_metaimage_reads_as_the_same_array_and_affine(tmp_path, sitk):
    image, label = h.case_3d(0)
    files = [save_itk(sitk, tmp_path / f"x{ext}", image) for ext in (".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")]
    assert (tmp_path / "x.raw").exists() or (tmp_path / "x.zraw").exists()  # .mhd: header and data apart
    nifti = read(files[0])  # nibabel, with SimpleITK's own LPS -> RAS conversion in the file it wrote
    assert not np.allclose(nifti.affine[:3, :3], np.diag(np.diag(nifti.affine[:3, :3])))  # really oblique
    for path in files[1:]:
        loaded = read(path)
        assert loaded.channels is False and loaded.array.dtype == np.int16
        np.testing.assert_array_equal(loaded.array, nifti.array)
        np.testing.assert_allclose(loaded.affine, nifti.affine, atol=1e-5)  # NIfTI stores float32
        assert loaded.spacing == nifti.spacing == SPACING
    # and the affine places voxel (i, j, k) where ITK does, in RAS (ITK's LPS with x and y negated)
    itk_image = sitk.ReadImage(str(files[1]))
    for index in [(0, 0, 0), (19, 0, 0), (3, 17, 11)]:
        lps = itk_image.TransformIndexToPhysicalPoint(index)
        ras = read(files[1]).affine @ [*index, 1]
        np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-9)


def test_labels_vector_images_and_2d_images(tmp_path, sitk):
    image, label = h.case_3d(1)
    loaded = read(save_itk(sitk, tmp_path / "l.nrrd", label.astype(np.float32)), is_label=True)
    np.testing.assert_array_equal(loaded.array, label)  # whole float values are class indices
    with pytest.raises(ValueError, match=r"f\.mha: label values must be whole class indices"):
        read(save_itk(sitk, tmp_path / "f.mha", label + np.float32(0.5)), is_label=True)
    two = np.stack([image, -image]).astype(np.float32)  # a 2-component vector image: channels first
    loaded = read(save_itk(sitk, tmp_path / "v.nrrd", two, vector=True))
    assert loaded.channels is True and loaded.array.shape == (2, 20, 18, 12)
    np.testing.assert_array_equal(loaded.array, two)
    volumes = [sitk.GetImageFromArray(np.ascontiguousarray(v.T)) for v in two]
    for v in volumes:
        v.SetSpacing(SPACING)
    series = sitk.JoinSeries(volumes)  # a 4-D image (x, y, z, t) of scalar voxels
    assert series.GetDimension() == 4 and series.GetNumberOfComponentsPerPixel() == 1
    sitk.WriteImage(series, str(tmp_path / "t.nrrd"))
    loaded = read(tmp_path / "t.nrrd")  # channels last on disk, as MSD's 4-D NIfTI: moved first
    assert loaded.channels is True and loaded.spacing == SPACING
    np.testing.assert_array_equal(loaded.array, two)
    flat = image[:, :, 0]  # 2-D: (x, y), as NIfTI slices are read
    written = save_itk(sitk, tmp_path / "s.mha", flat, (0.5, 0.75), (1.0, 2.0), (0.0, 1.0, 1.0, 0.0))
    loaded = read(written)
    assert loaded.array.shape == (20, 18) and loaded.spacing == (0.5, 0.75)
    assert loaded.array[3, 7] == sitk.ReadImage(str(written)).GetPixel(3, 7) == flat[3, 7]


def test_a_damaged_file_is_an_error_naming_it(tmp_path, sitk):
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: nonsense\n\n")
    with pytest.raises(ValueError, match=r"cannot read .*bad\.nrrd: .*corrupt or truncated"):
        read(bad)
    header_only = tmp_path / "h.mhd"
    save_itk(sitk, header_only, h.case_3d(0)[0])
    for data in tmp_path.glob("h.*raw"):
        data.unlink()
    with pytest.raises(ValueError, match=r"h\.mhd.*needs its data file"):
        read(header_only)


def test_without_simpleitk_the_error_names_the_file_and_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # `import SimpleITK` now fails as if not installed
    path = tmp_path / "imagesTr" / "case_0.nrrd"
    path.parent.mkdir()
    path.write_bytes(b"NRRD0004\n")
    with pytest.raises(ImportError, match=r"reading .*case_0\.nrrd needs SimpleITK .*pip install 'segflow\[itk\]'"):
        read(path)
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "labelsTr" / "case_0.nrrd").write_bytes(b"NRRD0004\n")
    cfg = MedicalSegmentationLoaderConfig(data_dir=str(tmp_path), val_fraction=0.0)
    with pytest.raises(ValueError, match=r"case case_0: .*needs SimpleITK .*pip install 'segflow\[itk\]'"):
        build_loaders(cfg, log=lambda m: None)
    with pytest.raises(ImportError, match=r"writing .*p\.nrrd needs SimpleITK"):
        write_label(tmp_path / "p", np.zeros((4, 4, 4), np.uint8), "nrrd", None)
    [finding] = Predictor.preflight(PredictorConfig(output_format="mha"), "cpu")  # before any work starts
    assert (finding.field, finding.code) == ("output_format", "missing_package") and "segflow[itk]" in finding.hint
    assert Predictor.preflight(PredictorConfig(output_format="nifti"), "cpu") == []


# ---- predictions back in the input's format and geometry -------------------------------------------

def _msd(sitk, root, ext, n=3):
    for i in range(n):
        image, label = h.case_3d(i)
        save_itk(sitk, root / "imagesTr" / f"vol_{i}{ext}", image)
        save_itk(sitk, root / "labelsTr" / f"vol_{i}{ext}", label)
    return root


@pytest.mark.parametrize("ext, written", [(".nrrd", ".nrrd"), (".mha", ".mha"), (".nhdr", ".nrrd"),
                                          (".mhd", ".mha")])
@pytest.mark.parametrize("target_spacing", [None, [0.7, 0.9, 1.25]])
def test_predictions_have_the_input_spacing_origin_and_direction_exactly(tmp_path, sitk, ext, written,
                                                                         target_spacing):
    root = _msd(sitk, tmp_path / "data", ext)
    node = MedicalSegmentationLoader("data", MedicalSegmentationLoaderConfig(
        data_dir=str(root), subset="all", image_size=16, target_spacing=target_spacing), context(tmp_path))
    out = node.run()
    if target_spacing:
        assert next(iter(out["val_loader"]))["image"].shape[2:] == (20, 18, 24)  # really resampled
    preds = Predictor("predict", PredictorConfig(), context(tmp_path)).run(
        model=Threshold(), loader=out["val_loader"], dataset_info=out["dataset_info"])["predictions"]
    assert len(preds) == 3
    for rec in preds:
        assert rec.prediction_path.name == f"{rec.case}{written}"
        assert_same_geometry(sitk, rec.prediction_path, rec.image_paths[0])
        assert sitk.ReadImage(str(rec.prediction_path)).GetPixelID() == sitk.sitkUInt8
        assert rec.spacing == SPACING
        assert dice(read(rec.prediction_path).array == 1, read(rec.label_path).array == 1) > 0.9


def test_forced_formats_carry_the_geometry_between_nifti_and_nrrd(tmp_path, sitk):
    image, label = h.case_3d(0)
    nifti = h.save_nifti(tmp_path / "n.nii.gz", image)
    written = write_label(tmp_path / "from_nifti", label, "nrrd", source_geometry(nifti))
    np.testing.assert_allclose(read(written).affine, h.AFFINE, atol=1e-9)
    np.testing.assert_array_equal(read(written).array, label)
    nrrd = save_itk(sitk, tmp_path / "i.nrrd", image)
    written = write_label(tmp_path / "from_nrrd", label, "nifti", source_geometry(nrrd))
    np.testing.assert_allclose(nib.load(written).affine, read(nrrd).affine, atol=1e-5)
    flat = save_itk(sitk, tmp_path / "slice.mha", image[:, :, :1])  # a one-slice volume, read as 2-D
    geo = source_geometry(flat)
    assert geo.shape == (20, 18) and geo.disk_shape == (20, 18, 1)
    written = write_label(tmp_path / "slice", label[:, :, 0], "mha", geo)
    assert_same_geometry(sitk, written, flat)


# ---- a dataset in .nrrd trains ---------------------------------------------------------------------

def test_two_class_nnunet_dataset_in_nrrd_trains_and_predicts_nrrd(tmp_path, sitk, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "Dataset009_Nrrd"
    for i in range(4):
        image, label = h.case_3d(i)
        save_itk(sitk, root / "imagesTr" / f"c{i}_0000.nrrd", image)
        save_itk(sitk, root / "labelsTr" / f"c{i}.nrrd", label)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nrrd",
                                                   "labels": {"background": 0, "lesion": 1}, "numTraining": 4}))
    nodes = [{"type": "MedicalSegmentationLoader", "name": "data",
              "config": {"data_dir": str(root), "image_size": 8, "batch_size": 2, "val_fraction": 0.25, "seed": 0}},
             {"type": "UNet3D", "name": "model", "config": {"base_channels": 4, "depth": 3}},
             {"type": "LossFunction", "name": "loss", "config": {}},
             {"type": "Optimizer", "name": "opt", "config": {"learning_rate": 0.01}},
             {"type": "Trainer", "name": "trainer", "config": {"epochs": 2, "device": "cpu", "save_frequency": 0}},
             {"type": "Predictor", "name": "predict", "config": {"device": "cpu"}}]
    (tmp_path / "w.json").write_text(json.dumps({"workflow": "nrrd", "nodes": nodes}))
    result = executor.run_workflow(tmp_path / "w.json", progress=False, log=lambda m: None)
    history = result.outputs["trainer"]["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    preds = result.outputs["predict"]["predictions"]
    assert len(preds) == result.outputs["data"]["dataset_info"].num_val > 0
    for rec in preds:
        assert rec.prediction_path.suffix == ".nrrd"
        assert_same_geometry(sitk, rec.prediction_path, rec.image_paths[0])
        assert set(np.unique(read(rec.prediction_path, is_label=True).array)) <= {0, 1}
    assert oriented_case(preds.records[0]).canonical  # overlays turn NRRD predictions to RAS+ by their header


def test_the_disk_cache_key_follows_the_data_file_behind_a_detached_header(tmp_path):
    """A .mhd/.nhdr header names the file its voxels are in; rewriting that file (same size, the header
    untouched) must change the cache key, or a disk cache would hand out the old image."""
    import os

    from segflow.data.itk_io import detached_data_files
    from segflow.data.layouts import Case
    from segflow.data.prepare import PrepSpec, cache_key

    raw = tmp_path / "c1.raw"
    raw.write_bytes(bytes(64))
    mhd = tmp_path / "c1.mhd"
    mhd.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\nElementDataFile = c1.raw\n")
    nhdr = tmp_path / "c2.nhdr"
    nhdr.write_text("NRRD0004\ntype: uchar\ndimension: 3\nsizes: 4 4 4\nencoding: raw\ndata file: c1.raw\n")
    listed = tmp_path / "c3.mhd"
    listed.write_text("NDims = 3\nElementDataFile = LIST\nslice0.raw\nslice1.raw\n")
    assert detached_data_files(mhd) == [raw] and detached_data_files(nhdr) == [raw]
    assert detached_data_files(listed) == [tmp_path / "slice0.raw", tmp_path / "slice1.raw"]
    assert detached_data_files(tmp_path / "c1.raw") == []
    case, spec = Case("c1", [mhd], None), PrepSpec(spatial_dims=3)
    before = cache_key(case, spec)
    raw.write_bytes(bytes(range(64)))
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 10**9))
    assert cache_key(case, spec) != before
