"""Bad data is reported before training, naming the case and the file."""
from __future__ import annotations

import json
import sys

import data_helpers as h  # tests/ is on sys.path (pytest rootdir-relative import)
import numpy as np
import pytest

from segflow.data.loader import build_loaders
from segflow.data.readers import read
from segflow.nodes.data import MedicalSegmentationLoaderConfig as Config


def build(root, **kw):
    return build_loaders(Config(**{"data_dir": str(root), "augmentation": False, "image_size": 16, **kw}),
                         log=lambda *_: None)


def test_truncated_nifti_names_case_and_file(tmp_path):
    root = h.msd_3d(tmp_path / "msd", n=4)
    bad = root / "imagesTr" / "vol_2.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"case vol_2: cannot read .*vol_2\.nii\.gz.*corrupt or truncated"):
        build(root)


def test_corrupt_png_names_case_and_file(tmp_path):
    root = h.folder_png(tmp_path / "f", n=4)
    (root / "masks" / "case01.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"case case01: cannot read .*masks/case01\.png"):
        build(root)


def test_all_bad_cases_are_listed_together(tmp_path):
    root = h.folder_png(tmp_path / "f", n=5)
    for i in (1, 3):
        (root / "images" / f"case0{i}.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"2 case\(s\) .* failed the data checks") as err:
        build(root)
    assert "case01" in str(err.value) and "case03" in str(err.value)


def test_mismatched_image_and_label_shapes(tmp_path):
    root = h.msd_3d(tmp_path / "msd", n=3)
    h.save_nifti(root / "labelsTr" / "vol_1.nii.gz", np.zeros((20, 18, 11), np.uint8))
    with pytest.raises(ValueError, match=r"case vol_1: image shape \(20, 18, 12\) from .*imagesTr/vol_1\.nii\.gz "
                                         r"does not match label shape \(20, 18, 11\) from .*labelsTr/vol_1\.nii\.gz"):
        build(root)


def test_label_value_outside_declared_classes(tmp_path):
    root = h.msd_3d(tmp_path / "msd", n=3)
    label = h.case_3d(0)[1]
    label[0, 0, 0] = 3
    h.save_nifti(root / "labelsTr" / "vol_0.nii.gz", label)
    with pytest.raises(ValueError, match=r"case vol_0: label .*vol_0\.nii\.gz has values \[3\] outside the declared "
                                         r"classes 0\.\.1 \(labels in .*dataset\.json\)"):
        build(root)


def test_label_value_outside_config_num_classes(tmp_path):
    root = tmp_path / "np"
    for i in range(3):
        image, label = h.case_2d(i, size=(16, 16), classes=3)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        np.save(root / "images" / f"c{i}.npy", image)
        np.save(root / "masks" / f"c{i}.npy", label)
    with pytest.raises(ValueError, match=r"case c0: label .*c0\.npy has values \[2\] .*config num_classes"):
        build(root, num_classes=2)


def test_fractional_label_values(tmp_path):
    root = h.msd_3d(tmp_path / "msd", n=3)
    h.save_nifti(root / "labelsTr" / "vol_2.nii.gz", h.case_3d(2)[1].astype(np.float32) * 0.5)
    with pytest.raises(ValueError, match=r"case vol_2: .*vol_2\.nii\.gz: label values must be whole class indices"):
        build(root)


def test_empty_training_split(tmp_path):
    root = h.folder_png(tmp_path / "f", n=1)
    with pytest.raises(ValueError, match=r"1 case\(s\) with val_fraction 0\.5 leaves the training split empty"):
        build(root, val_fraction=0.5)


def test_empty_train_folder(tmp_path):
    root = h.folder_png(tmp_path / "f", n=4, split=True)
    for p in (root / "train" / "images").iterdir():
        p.unlink()
    for p in (root / "train" / "masks").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match=r"train holds no cases; the training split is empty"):
        build(root)


def test_unpaired_image_in_folder_layout(tmp_path):
    root = h.folder_png(tmp_path / "f", n=3)
    h.save_png(root / "images" / "orphan.png", np.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"images/orphan\.png has no mask in .*masks"):
        build(root)


def test_unpaired_mask_in_folder_layout(tmp_path):
    root = h.folder_png(tmp_path / "f", n=3)
    h.save_png(root / "masks" / "lonely.png", np.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"masks/lonely\.png has no image"):
        build(root)


def test_nnunet_missing_channel_and_missing_label(tmp_path):
    root = h.nnunet_2ch(tmp_path / "nn", n=3)
    (root / "imagesTr" / "pat001_0001.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"case pat001: channel file .*pat001_0001\.nii\.gz is missing"):
        build(root)
    root = h.nnunet_2ch(tmp_path / "nn2", n=3)
    (root / "labelsTr" / "pat002.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"pat002_0000\.nii\.gz has no label: expected .*labelsTr/pat002\.nii\.gz"):
        build(root)


def test_msd_listed_file_missing(tmp_path):
    root = h.msd_3d(tmp_path / "msd", n=3)
    (root / "labelsTr" / "vol_1.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case vol_1: label file .*vol_1\.nii\.gz listed in .*dataset\.json"):
        build(root)


def test_missing_data_dir_names_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data_dir .*nowhere does not exist.*'data_dir'"):
        build(tmp_path / "nowhere")


def test_unknown_folder_contents(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ValueError, match=r"cannot tell the layout of .*stuff.*images/ \+ masks/"):
        build(tmp_path / "stuff")


def test_spatial_dims_mismatch(tmp_path):
    root = h.msd_3d(tmp_path / "msd", n=3)
    with pytest.raises(ValueError, match=r"case vol_0: label .* is 3-D but spatial_dims is 2"):
        build(root, spatial_dims=2)


def test_dicom_without_pydicom_says_how_to_install(tmp_path, monkeypatch):
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    with pytest.raises(ImportError, match=r"series needs pydicom: pip install 'segflow\[dicom\]'"):
        read(folder)


def test_bad_dataset_json(tmp_path):
    root = h.msd_3d(tmp_path / "msd", n=2)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"dataset\.json is not valid JSON"):
        build(root)
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "whole": [1, 2]}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"dataset\.json: regions_class_order is missing: .*e\.g\. \[1\]"):
        build(root)


def test_dataset_json_gaps_name_the_file(tmp_path):
    root = h.msd_3d(tmp_path / "msd", n=3)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "training": None}))
    _, val, info = build(root, spatial_dims=3, image_size=8, val_fraction=0.34)  # null list: paired by name
    assert info.num_train + info.num_val == 3
    (root / "dataset.json").write_text(json.dumps({**meta, "training": "all"}))
    with pytest.raises(ValueError, match=r"dataset.json: 'training' must be a list of cases, got str"):
        build(root, spatial_dims=3)
    (root / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "lesion": 1}}))
    with pytest.raises(ValueError, match=r"dataset.json: labels key 'background' is not a whole number"):
        build(root, spatial_dims=3)
    (root / "dataset.json").write_text(json.dumps([meta]))
    with pytest.raises(ValueError, match=r"dataset.json holds a JSON list"):
        build(root, spatial_dims=3)


def test_two_files_of_one_case_are_an_error_not_a_dropped_case(tmp_path):
    root = h.folder_png(tmp_path / "f", n=4)
    h.save_png(root / "images" / "case00.jpg", np.zeros((32, 40), np.uint8))
    with pytest.raises(ValueError, match=r"case00.(png|jpg) and .*case00.(png|jpg) are both case 'case00'"):
        build(root)


def test_masks_that_are_all_background_are_warned_about_and_training_can_go_on(tmp_path):
    root = tmp_path / "f"
    for i in range(5):
        image, _ = h.case_2d(i)
        h.save_png(root / "images" / f"case{i:02d}.png", image)
        h.save_png(root / "masks" / f"case{i:02d}.png", np.zeros_like(image))
    said = []
    train, val, info = build_loaders(Config(data_dir=str(root), augmentation=False, image_size=16, val_fraction=0.4),
                                     log=said.append)
    [warning] = [line for line in said if "WARNING" in line]
    assert warning.startswith("data: WARNING: the label of every one of the 3 training case(s) is all background")
    assert f"{root / 'masks'} holds these images' masks" in warning and "class indices as stored" in warning
    assert said[-1] == warning  # the last data line, where it is seen
    assert next(iter(train))["label"].max() == 0 and info.num_classes == 2  # the run can still train
    said.clear()
    build_loaders(Config(data_dir=str(h.folder_png(tmp_path / "ok", n=5)), augmentation=False, image_size=16),
                  log=said.append)
    assert not [line for line in said if "WARNING" in line]


def test_a_one_voxel_volume_is_too_small_not_2d(tmp_path):
    root = h.msd_3d(tmp_path / "msd", n=3)
    h.save_nifti(root / "imagesTr" / "vol_1.nii.gz", np.zeros((1, 1, 1), np.int16))
    h.save_nifti(root / "labelsTr" / "vol_1.nii.gz", np.zeros((1, 1, 1), np.uint8))
    for dims in ("auto", 3):
        with pytest.raises(ValueError, match=r"case vol_1: .*vol_1\.nii\.gz: NIfTI of shape \(1, 1, 1\) is too small "
                                             r"to segment") as err:
            build(root, spatial_dims=dims)
        assert "2-D" not in str(err.value)
    # a 2-D slice saved as (x, y, 1) is still a 2-D image
    assert read(h.save_nifti(tmp_path / "slice.nii.gz", np.ones((8, 6, 1), np.uint8))).array.shape == (8, 6)


def test_a_2d_slice_among_volumes_is_named(tmp_path):
    root = h.msd_3d(tmp_path / "msd", n=3)
    h.save_nifti(root / "imagesTr" / "vol_1.nii.gz", np.zeros((20, 18, 1), np.int16))
    h.save_nifti(root / "labelsTr" / "vol_1.nii.gz", np.zeros((20, 18, 1), np.uint8))
    with pytest.raises(ValueError, match=r"case vol_1 is 2-D, but case vol_0 is 3-D; all cases need the same"):
        build(root)


def test_a_folder_where_a_file_should_be_is_called_a_folder(tmp_path):
    root = h.msd_3d(tmp_path / "msd", n=3)  # dataset.json names labelsTr/vol_1.nii.gz
    (root / "labelsTr" / "vol_1.nii.gz").unlink()
    (root / "labelsTr" / "vol_1.nii.gz").mkdir()
    with pytest.raises(ValueError, match=r"case vol_1: .*labelsTr/vol_1\.nii\.gz: the label path is a folder, not a "
                                         r"file") as err:
        build(root)
    assert ".dcm" not in str(err.value)
    named = tmp_path / "case.nii.gz"
    named.mkdir()
    with pytest.raises(ValueError, match=r"case\.nii\.gz: the image path is a folder, not a file"):
        read(named)
    series = tmp_path / "series"  # a folder named like a DICOM series: the DICOM message stays
    series.mkdir()
    with pytest.raises(ValueError, match=r"series: no \.dcm files in the folder"):
        read(series)
    with pytest.raises(ValueError, match=r"the label path is a folder"):
        read(series, is_label=True)
    layouts = [(h.folder_png(tmp_path / "f", n=4), "masks/case01.png",
                r"case01\.png has no mask in .*masks \(.*masks/case01\.png is a folder, not a mask file\)"),
               (h.nnunet_2ch(tmp_path / "nn", n=3), "labelsTr/pat001.nii.gz",
                r"pat001_0000\.nii\.gz has no label: .*labelsTr/pat001\.nii\.gz is a folder, not a label file")]
    for root, label, message in layouts:  # the label file replaced by a folder of its name
        (root / label).unlink()
        (root / label).mkdir()
        with pytest.raises(ValueError, match=message):
            build(root)
