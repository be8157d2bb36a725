"""Reading each layout and file format back correctly (small real files on disk)."""
from __future__ import annotations

import json

import data_helpers as h  # tests/ is on sys.path (pytest rootdir-relative import)
import numpy as np
import pytest

from segflow.data.layouts import find_cases
from segflow.data.loader import build_loaders
from segflow.data.readers import read
from segflow.nodes.data import MedicalSegmentationLoaderConfig as Config


def cfg(root, **kw):
    base = dict(data_dir=str(root), batch_size=2, augmentation=False, val_fraction=0.25, seed=0)
    return Config(**{**base, **kw})


def quiet(*_):
    pass


def test_nifti_3d_keeps_non_identity_affine_and_spacing(tmp_path):
    image, _ = h.case_3d(0)
    path = h.save_nifti(tmp_path / "x.nii.gz", image)
    loaded = read(path)
    np.testing.assert_allclose(loaded.affine, h.AFFINE)
    assert loaded.spacing == pytest.approx((0.8, 0.9, 2.5))
    np.testing.assert_array_equal(loaded.array, image)  # axis order as stored, no reorientation


def test_msd_layout_3d_cases_classes_and_spacing(tmp_path):
    root = h.msd_3d(tmp_path / "msd", n=5)
    layout = find_cases(root)
    assert layout.name == "msd" and [c.case_id for c in layout.cases] == [f"vol_{i}" for i in range(5)]
    assert layout.class_names == ["background", "lesion"]
    train, val, info = build_loaders(cfg(root, image_size=[8, 8, 8]), log=quiet)
    assert (info.spatial_dims, info.in_channels, info.num_classes) == (3, 1, 2)
    assert info.spacing == pytest.approx((0.8, 0.9, 2.5))
    assert (info.num_train, info.num_val, info.layout) == (3, 2, "msd")
    batch = next(iter(val))
    assert batch["image"].shape == (1, 1, 20, 18, 12) and batch["label"].shape == (1, 1, 20, 18, 12)
    np.testing.assert_allclose(batch["affine"][0].numpy(), h.AFFINE)


def test_nnunet_multichannel_case(tmp_path):
    root = h.nnunet_2ch(tmp_path / "Dataset001_Test", n=4)
    layout = find_cases(root)
    assert layout.name == "nnunet" and layout.num_channels == 2
    assert [p.name for p in layout.cases[0].images] == ["pat000_0000.nii.gz", "pat000_0001.nii.gz"]
    train, val, info = build_loaders(cfg(root, normalization="none", image_size=8), log=quiet)
    assert info.in_channels == 2 and info.class_names == ["background", "tumour"]
    batch = next(iter(val))
    image, label = batch["image"][0], batch["label"][0, 0]
    np.testing.assert_array_equal(image[1].numpy(), -image[0].numpy())  # channel order kept
    assert float(image[0][label == 1].mean()) > float(image[0][label == 0].mean()) + 50


def test_folder_png_with_mask_suffix_pairs_by_case_and_maps_0_255(tmp_path):
    root = h.folder_png(tmp_path / "f", n=6, mask_suffix="_mask")
    layout = find_cases(root)
    assert layout.name == "folder" and len(layout.cases) == 6
    for case in layout.cases:  # each mask belongs to its own image
        assert case.label.name == f"{case.case_id}_mask.png"
    train, val, info = build_loaders(cfg(root, image_size=[32, 40], normalization="minmax"), log=quiet)
    assert info.num_classes == 2 and info.spacing is None and info.patch_size == (32, 40)
    for batch in val:
        img, lab = batch["image"][:, 0], batch["label"][:, 0]
        assert set(lab.unique().tolist()) == {0, 1}
        assert float(img[lab == 1].min()) > float(img[lab == 0].max()) - 0.3  # bright where the mask is


def test_folder_train_val_split_is_taken_from_the_folders(tmp_path):
    root = h.folder_png(tmp_path / "f", n=6, split=True)
    train, val, info = build_loaders(cfg(root, image_size=32, val_fraction=0.5), log=quiet)
    assert (info.num_train, info.num_val) == (4, 2)
    assert sorted(c for b in val for c in b["case"]) == ["case04", "case05"]


def test_numpy_multichannel_images_and_npz_masks(tmp_path):
    root = tmp_path / "np"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        image, label = h.case_2d(i, size=(24, 24), classes=3)
        np.save(root / "images" / f"c{i}.npy", np.stack([image, 255 - image]).astype(np.float32))
        np.savez(root / "masks" / f"c{i}.npz", label=label, other=np.zeros(3))
    train, val, info = build_loaders(cfg(root, image_size=24), log=quiet)
    assert (info.in_channels, info.num_classes) == (2, 3)
    batch = next(iter(train))
    assert batch["image"].shape == (2, 2, 24, 24) and set(batch["label"].unique().tolist()) <= {0, 1, 2}


def test_tiff_images_and_masks(tmp_path):
    import tifffile

    root = tmp_path / "tif"
    for i in range(3):
        image, label = h.case_2d(i, size=(20, 20))
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        tifffile.imwrite(root / "images" / f"s{i}.tif", image.astype(np.uint16) * 100)
        tifffile.imwrite(root / "masks" / f"s{i}.tiff", label)
    loaded = read(root / "images" / "s0.tif")
    assert loaded.array.dtype == np.uint16 and loaded.array.shape == (20, 20)
    train, val, info = build_loaders(cfg(root, image_size=16, val_fraction=0.3), log=quiet)
    assert info.num_train == 2 and next(iter(val))["image"].shape == (1, 1, 16, 16)


def _dicom_series(folder, volume, spacing=(0.7, 0.6), dz=3.0, intercept=-1024):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    order = [2, 0, 1] if volume.shape[-1] == 3 else range(volume.shape[-1])
    for n, z in enumerate(order):  # file names deliberately out of slice order
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.Rows, ds.Columns = volume.shape[:2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelSpacing = list(spacing)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, z * dz]
        ds.InstanceNumber = z + 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
        ds.PixelData = (volume[..., z] - intercept).astype(np.int16).tobytes()
        ds.save_as(folder / f"f{n}.dcm", enforce_file_format=True)
    return pydicom


def test_dicom_series_read_in_slice_order_with_hounsfield_units(tmp_path):
    volume = np.stack([np.full((6, 5), v, np.int16) for v in (-500, 0, 300)], axis=-1)
    volume[0, 0, :] = [1, 2, 3]
    _dicom_series(tmp_path / "ct", volume)
    loaded = read(tmp_path / "ct")
    assert loaded.array.shape == (6, 5, 3)
    np.testing.assert_array_equal(loaded.array, volume.astype(np.float32))
    assert loaded.spacing == pytest.approx((0.7, 0.6, 3.0))


def test_dicom_series_in_a_folder_dataset(tmp_path):
    root = tmp_path / "dcm"
    for i in range(3):
        image, label = h.case_3d(i, shape=(10, 8, 4))
        _dicom_series(root / "images" / f"pt{i}", image.astype(np.int16), intercept=0)
        (root / "masks").mkdir(exist_ok=True)
        np.save(root / "masks" / f"pt{i}.npy", label)
    train, val, info = build_loaders(cfg(root, image_size=8, val_fraction=0.3), log=quiet)
    assert info.spatial_dims == 3 and info.spacing == pytest.approx((0.7, 0.6, 3.0))
    assert next(iter(train))["image"].shape == (2, 1, 8, 8, 8)


def test_msd_dataset_json_list_decides_the_pairs(tmp_path):
    root = h.msd_3d(tmp_path / "msd", n=3)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "labelsTr" / "vol_0.nii.gz").rename(root / "labelsTr" / "seg_first.nii.gz")
    meta["training"][0]["label"] = "./labelsTr/seg_first.nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    layout = find_cases(root)
    assert {c.case_id: c.label.name for c in layout.cases}["vol_0"] == "seg_first.nii.gz"
