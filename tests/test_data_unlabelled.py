"""Test images without labels: each layout's test folder is found, the loader's subset test/all hand
every case to val_loader, and the training path still requires a label for every image."""
import json

import numpy as np
import pytest
from data_helpers import case_2d, case_3d, folder_png, msd_3d, nnunet_2ch, save_nifti, save_png
from pydantic import ValidationError

from segflow.data.layouts import find_cases, find_test_cases
from segflow.data.phantoms import write_phantom_dataset
from segflow.nodes.base import RunContext
from segflow.nodes.data import MedicalSegmentationLoader, MedicalSegmentationLoaderConfig


def build(tmp_path, root, **cfg):
    ctx = RunContext(run_dir=tmp_path, workflow_name="t", device="cpu", progress=False, log=lambda m: None)
    node = MedicalSegmentationLoader("data", MedicalSegmentationLoaderConfig(data_dir=str(root), **cfg), ctx)
    out = node.run()
    return out["train_loader"], out["val_loader"], out["dataset_info"]


def test_phantom_test_list_is_found_and_loaded_without_labels(tmp_path):
    root = write_phantom_dataset(tmp_path / "p", "2d", num_cases=3, size=48)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["numTest"] == 4 and meta["test"][0] == "./imagesTs/phantom_003.png"
    layout = find_test_cases(root)
    assert layout.name == "msd" and [c.case_id for c in layout.cases] == [f"phantom_{i:03d}" for i in range(3, 7)]
    assert all(c.label is None and c.images[0].parent.name == "imagesTs" for c in layout.cases)
    assert {c.case_id for c in find_cases(root).cases} == {"phantom_000", "phantom_001", "phantom_002"}

    train, val, info = build(tmp_path, root, subset="test", image_size=32, batch_size=3)
    assert train is None and info.num_train == 0 and info.num_val == 4
    assert info.num_classes == 2 and info.class_names == ["background", "organ"]  # from dataset.json labels
    batches = list(val)
    assert [len(b["case"]) for b in batches] == [3, 1]
    assert all("label" not in b and tuple(b["image"].shape[1:]) == (1, 32, 32) for b in batches)


def test_msd_imagests_without_a_list_takes_labels_from_labelsts_where_present(tmp_path):
    root = msd_3d(tmp_path / "msd", n=3)
    for i in range(3):
        save_nifti(root / "imagesTs" / f"new_{i}.nii.gz", case_3d(10 + i)[0])
    save_nifti(root / "labelsTs" / "new_1.nii.gz", case_3d(11)[1])
    cases = find_test_cases(root).cases
    assert [c.case_id for c in cases] == ["new_0", "new_1", "new_2"]
    assert [c.label.name if c.label else None for c in cases] == [None, "new_1.nii.gz", None]

    train, val, info = build(tmp_path, root, subset="test", cache="disk")
    assert train is None and info.spatial_dims == 3 and info.num_classes == 2
    items = [val.dataset[i] for i in range(3)]
    assert ["label" in it for it in items] == [False, True, False]
    assert all(it["affine"].shape == (4, 4) and tuple(it["image"].shape) == (1, 20, 18, 12) for it in items)


def test_msd_test_entries_may_name_their_label(tmp_path):
    root = msd_3d(tmp_path / "msd", n=2)
    save_nifti(root / "imagesTs" / "a.nii.gz", case_3d(7)[0])
    save_nifti(root / "gt" / "a_gt.nii.gz", case_3d(7)[1])
    save_nifti(root / "imagesTs" / "b.nii.gz", case_3d(8)[0])
    meta = json.loads((root / "dataset.json").read_text())
    meta["test"] = [{"image": "./imagesTs/a.nii.gz", "label": "./gt/a_gt.nii.gz"}, "./imagesTs/b.nii.gz"]
    (root / "dataset.json").write_text(json.dumps(meta))
    cases = find_test_cases(root).cases
    assert [(c.case_id, c.label and c.label.name) for c in cases] == [("a", "a_gt.nii.gz"), ("b", None)]
    meta["test"].append("./imagesTs/missing.nii.gz")
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match=r"case missing: image file .*missing.nii.gz listed in .*dataset.json test"):
        find_test_cases(root)


def test_nnunet_multichannel_imagests(tmp_path):
    root = nnunet_2ch(tmp_path / "nn", n=2)
    for i in range(2):
        image, label = case_3d(20 + i)
        save_nifti(root / "imagesTs" / f"t{i:02d}_0000.nii.gz", image)
        save_nifti(root / "imagesTs" / f"t{i:02d}_0001.nii.gz", (-image).astype(np.int16))
    save_nifti(root / "labelsTs" / "t01.nii.gz", case_3d(21)[1])
    layout = find_test_cases(root)
    assert layout.name == "nnunet" and layout.num_channels == 2
    assert [(c.case_id, len(c.images), c.label is not None) for c in layout.cases] == [("t00", 2, False), ("t01", 2, True)]
    _, val, info = build(tmp_path, root, subset="test")
    assert info.in_channels == 2 and info.num_classes == 2 and tuple(val.dataset[0]["image"].shape) == (2, 20, 18, 12)
    (root / "imagesTs" / "t00_0001.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"case t00: channel file .*imagesTs/t00_0001.nii.gz is missing"):
        find_test_cases(root)


def test_folder_test_images_with_optional_masks(tmp_path):
    root = folder_png(tmp_path / "f", n=6, split=True)
    for i in range(3):
        save_png(root / "test" / "images" / f"t{i}.png", case_2d(30 + i, size=(40, 24 + 8 * i))[0])
    save_png(root / "test" / "masks" / "t2_mask.png", case_2d(32, size=(40, 40))[1] * 255)
    layout = find_test_cases(root)
    assert layout.name == "folder" and [c.case_id for c in layout.cases] == ["t0", "t1", "t2"]
    assert [c.label is not None for c in layout.cases] == [False, False, True]
    # training still sees only train/ and val/
    assert {c.split for c in find_cases(root).cases} == {"train", "val"}

    with pytest.raises(ValueError, match=r"test case\(s\) \['t0', 't1'\] have no label.*set the loader's num_classes"):
        build(tmp_path, root, subset="test", image_size=16)
    train, val, info = build(tmp_path, root, subset="test", image_size=16, num_classes=2, batch_size=2)
    assert train is None and info.num_classes == 2
    batches = list(val)  # [t0, t1] unlabelled; [t2] labelled
    assert "label" not in batches[0] and batches[1]["label"].shape == (1, 1, 16, 16)
    _, mixed, _ = build(tmp_path, root, subset="test", image_size=16, num_classes=2, batch_size=3)
    (batch,) = list(mixed)  # labelled and unlabelled together: no "label" rather than a collate error
    assert batch["case"] == ["t0", "t1", "t2"] and "label" not in batch

    save_png(root / "test" / "masks" / "orphan.png", case_2d(1)[1])
    with pytest.raises(ValueError, match=r"orphan.png has no image in .*test/images"):
        find_test_cases(root)


def test_subset_test_without_test_images_is_a_clear_error(tmp_path):
    root = folder_png(tmp_path / "f", n=4)
    with pytest.raises(ValueError, match=r"no test images found in the folder layout \(looked for test/images/ or imagesTs/\)"):
        find_test_cases(root)


def test_subset_all_puts_every_labelled_case_in_val_loader(tmp_path):
    root = folder_png(tmp_path / "f", n=6, split=True)
    train, val, info = build(tmp_path, root, subset="all", image_size=16, batch_size=4)
    assert train is None and info.num_val == 6 and len(val.dataset) == 6
    assert all(b["label"].shape[1:] == (1, 16, 16) for b in val)


def test_training_path_still_requires_a_label_for_every_image(tmp_path):
    root = folder_png(tmp_path / "f", n=4)
    save_png(root / "images" / "lonely.png", case_2d(9)[0])
    with pytest.raises(ValueError, match=r"lonely.png has no mask in .*masks \(looked for lonely\.\* or lonely_mask\.\*\)"):
        build(tmp_path, root, image_size=16)
    root = nnunet_2ch(tmp_path / "nn", n=2)
    (root / "labelsTr" / "pat001.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"pat001_0000.nii.gz has no label: expected .*labelsTr/pat001.nii.gz"):
        build(tmp_path, root)


def test_subset_config_values():
    cfg = MedicalSegmentationLoaderConfig(subset=" Test ")
    assert cfg.subset == "test" and MedicalSegmentationLoaderConfig().subset == "split"
    with pytest.raises(ValidationError, match="subset"):
        MedicalSegmentationLoaderConfig(subset="holdout")
    found = MedicalSegmentationLoader.check(MedicalSegmentationLoaderConfig(subset="test", val_fraction="0.3"), {})
    assert [(f.field, f.severity) for f in found] == [("val_fraction", "warning")]
    assert MedicalSegmentationLoader.check(MedicalSegmentationLoaderConfig(subset="test"), {}) == []
