"""Regions and the ignore label as the loader reads them: nnU-Net v2 dataset.json labels, the loader's
settings for other layouts, and every bad definition reported with its file (or node) and field."""
from __future__ import annotations

import json

import data_helpers as h  # tests/ is on sys.path (pytest rootdir-relative import)
import numpy as np
import pytest

from segflow.data.label_scheme import LabelScheme, Region, from_dataset_labels, problems
from segflow.data.loader import build_loaders
from segflow.data.prepare import foreground_index
from segflow.nodes.data import MedicalSegmentationLoaderConfig as Config
from segflow.workflow import spec
from segflow.workflow.errors import WorkflowError

BRATS = (Region("whole_tumor", (1, 2, 3)), Region("tumor_core", (2, 3)), Region("enhancing_tumor", (3,)))


def build(root, **kw):
    return build_loaders(Config(**{"data_dir": str(root), "augmentation": False, "image_size": 16,
                                   "val_fraction": 0.25, **kw}), log=lambda *_: None)


def test_nnunet_regions_are_read_and_labels_stay_class_maps(tmp_path):
    root = h.brats_nnunet(tmp_path / "brats", n=4, size=16)
    train, _, info = build(root)
    assert info.labels.regions == BRATS and info.labels.paint == (1, 2, 3)
    assert (info.num_classes, info.out_channels, info.in_channels) == (4, 3, 4)
    batch = next(iter(train))
    assert batch["label"].dtype.is_floating_point is False and batch["label"].shape[1] == 1
    assert set(batch["label"].unique().tolist()) <= {0, 1, 2, 3}
    assert train.labels == info.labels  # the Trainer reads them from the loader


def test_msd_regions_come_from_the_loaders_settings(tmp_path):
    root = h.brats_msd(tmp_path / "msd", n=4, size=16)
    _, val, info = build(root, regions=h.BRATS_REGIONS, regions_class_order=[1, 2, 3])
    assert info.labels.regions == BRATS and val.labels == info.labels
    assert info.class_names == ["background", "edema", "non-enhancing", "enhancing"]


def test_kits_style_labels_with_a_single_value_region():
    """KiTS23's dataset.json: a plain value beside regions is a region of one value."""
    declared = from_dataset_labels({"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2},
                                   [1, 3, 2], "kits/dataset.json")
    assert [r.classes for r in declared.scheme.regions] == [(1, 2, 3), (2, 3), (2,)]
    assert declared.scheme.paint == (1, 3, 2)


@pytest.mark.parametrize("labels, order, message", [
    ({"background": 0, "a": [1, 2], "b": [2, 3]}, [1, 3],
     r"dataset\.json: labels: regions 'a' \[1, 2\] and 'b' \[2, 3\] overlap without one holding the other"),
    ({"background": 0, "a": [1, 2], "b": [2, 1]}, [1, 2], r"regions 'a' and 'b' hold the same label values"),
    (h.BRATS_LABELS, [1, 2], r"dataset\.json: regions_class_order has 2 value\(s\) but there are 3 regions"),
    (h.BRATS_LABELS, [1, 2, 5], r"regions_class_order\[2\] paints region 'enhancing_tumor' as 5, which is not one "
                                r"of its values \[3\]"),
    (h.BRATS_LABELS, [3, 2, 3], r"regions_class_order\[0\] paints region 'whole_tumor' as 3, which also belongs to "
                                r"region 'tumor_core' inside it.*e\.g\. \[1, 2, 3\]"),
    ({"background": 0, "et": [3], "tc": [2, 3], "wt": [1, 2, 3]}, [3, 2, 1],
     r"dataset\.json: labels: region 'tc' holds region 'et' but comes after it"),
    ({"background": 0, "wt": [1, 2], "bad": [0, 1]}, [1, 1], r"region 'bad' includes 0, the background"),
    ({"background": 0, "wt": "1"}, None, r"label 'wt' must be a label value or a list of them"),
])
def test_bad_region_definitions_name_the_file_and_entry(tmp_path, labels, order, message):
    root = h.brats_nnunet(tmp_path / "brats", n=2, size=8, labels=labels, order=order)
    with pytest.raises(ValueError, match=message):
        build(root)


@pytest.mark.parametrize("labels, ignore, message", [
    ({"background": 0, "a": 1, "b": 2}, 2, r"dataset\.json: labels 'ignore' 2 is also a class \(classes 0\.\.2\)"),
    ({"background": 0, "a": 1, "b": 3}, 2, r"labels 'ignore' 2 is not the highest label value .*must be the highest"),
    ({"background": 0, "a": 1}, [2], r"labels 'ignore' must be one label value"),
])
def test_bad_ignore_labels_name_the_file(tmp_path, labels, ignore, message):
    root = h.nnunet_2ch(tmp_path / "nn", n=2)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "labels": {**labels, "ignore": ignore}}))
    with pytest.raises(ValueError, match=message):
        build(root)


def test_msd_region_naming_a_class_the_data_lacks(tmp_path):
    root = h.brats_msd(tmp_path / "msd", n=2, size=8)
    with pytest.raises(ValueError, match=r"the loader's regions: region 'tumor_core' names label value\(s\) \[7\] that no "
                                         r"class has \(classes 0\.\.3\)"):
        build(root, regions={"whole_tumor": [1, 2, 3], "tumor_core": [7]}, regions_class_order=[1, 7])


def test_ignore_label_is_no_class_no_patch_centre_and_no_foreground(tmp_path):
    root = h.brats_nnunet(tmp_path / "brats", n=3, size=16, ignore=4)
    _, _, info = build(root)
    assert (info.num_classes, info.labels.ignore) == (4, 4) and "ignore" not in info.class_names
    label = np.array([[0, 4, 4], [1, 4, 2]], np.uint8)
    fg, table = foreground_index(label, "c", ignore=4)
    assert fg.tolist() == [3, 5] and table[:, 0].tolist() == [1, 2]


def test_ignore_label_values_above_it_are_refused(tmp_path):
    root = h.msd_3d(tmp_path / "msd", n=2)
    label = h.case_3d(0)[1]
    label[0, 0, :2] = [2, 3]
    h.save_nifti(root / "labelsTr" / "vol_0.nii.gz", label)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "labels": {"0": "background", "1": "lesion"}}))
    with pytest.raises(ValueError, match=r"case vol_0: label .*vol_0\.nii\.gz has values \[3\] above the ignore label 2"):
        build(root, ignore_label=2)


def test_the_plain_scheme_has_no_problems():
    assert problems(LabelScheme(), [0, 1]) == []
    assert problems(LabelScheme(BRATS, (1, 2, 3), 4), [0, 1, 2, 3]) == []


# ---- static: `segflow validate` names the node and the field ---------------------------------------

def _workflow(loader: dict, out_channels: int = 3, loss: dict | None = None) -> str:
    return json.dumps({"workflow": "regions", "nodes": [
        {"type": "MedicalSegmentationLoader", "name": "data", "config": {"data_dir": "brats", **loader}},
        {"type": "UNet3D", "name": "model", "config": {"in_channels": 4, "out_channels": out_channels}},
        {"type": "LossFunction", "name": "loss", "config": loss or {}},
        {"type": "Optimizer", "name": "optimizer", "config": {}},
        {"type": "Trainer", "name": "trainer", "config": {"epochs": 1}}]})


def _issues(text: str) -> list[tuple[str, str]]:
    try:
        spec.loads(text, "wf.json")
    except WorkflowError as e:
        return [(i.code, i.path) for i in e.issues if i.severity == "error"]
    return []


REGIONS = {"regions": h.BRATS_REGIONS, "regions_class_order": [1, 2, 3]}


@pytest.mark.parametrize("loader, out_channels, expected", [
    (REGIONS, 3, []),
    (REGIONS, 4, [("out_channels_mismatch", "nodes[1].config.out_channels")]),
    ({**REGIONS, "regions_class_order": [1, 2]}, 3, [("bad_value", "nodes[0].config.regions_class_order")]),
    ({"regions": h.BRATS_REGIONS}, 3, [("missing_value", "nodes[0].config.regions_class_order")]),
    ({**REGIONS, "num_classes": 3}, 3, [("bad_value", "nodes[0].config.regions")]),  # value 3 is no class
    ({"regions": {"a": [1, 2], "b": [2, 3]}, "regions_class_order": [1, 3]}, 2,
     [("bad_value", "nodes[0].config.regions")]),
    ({"ignore_label": 2, "num_classes": 3}, 3, [("bad_value", "nodes[0].config.ignore_label")]),
    ({"ignore_label": 3, "num_classes": 3}, 3, []),
    ({"ignore_label": 5, "num_classes": 3}, 3, [("bad_value", "nodes[0].config.ignore_label")]),
    ({"ignore_label": 3}, 4, [("out_channels_mismatch", "nodes[1].config.out_channels")]),  # classes 0..2
])
def test_validate_checks_regions_and_ignore_label_statically(loader, out_channels, expected):
    assert _issues(_workflow(loader, out_channels)) == expected


def test_plan_gives_region_datasets_one_output_channel_per_region(tmp_path, capsys):
    from segflow.cli import main

    root = h.brats_nnunet(tmp_path / "brats", n=3, size=16, ignore=4)
    out = tmp_path / "planned.json"
    assert main(["plan", str(root), "--no-progress", "--gpu-memory", "8", "--output", str(out)]) == 0
    fingerprint = json.loads((root / ".segflow_plan" / "fingerprint.json").read_text())
    assert fingerprint["regions"] == ["whole_tumor", "tumor_core", "enhancing_tumor"]
    assert fingerprint["num_classes"] == 4 and fingerprint["ignore_label"] == 4
    assert all("4" not in case["class_voxels"] for case in fingerprint["cases"])  # ignored voxels are no class
    workflow = json.loads(out.read_text())
    assert workflow["nodes"][1]["config"]["out_channels"] == 3
    assert _issues(out.read_text()) == []  # and it validates against the regions the loader will find


def test_msd_label_named_ignore_is_the_ignore_label_and_must_be_highest(tmp_path):
    root = h.msd_3d(tmp_path / "msd", n=3)
    label = h.case_3d(0)[1]
    label[:, :, :3] = 2
    h.save_nifti(root / "labelsTr" / "vol_0.nii.gz", label)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "labels": {"0": "background", "1": "lesion", "2": "ignore"}}))
    _, _, info = build(root, val_fraction=0.34)
    assert (info.num_classes, info.labels.ignore, info.class_names) == (2, 2, ["background", "lesion"])
    (root / "dataset.json").write_text(json.dumps({**meta, "labels": {"0": "background", "1": "ignore", "2": "lesion"}}))
    with pytest.raises(ValueError, match=r"dataset\.json: the label 'ignore' 1 is not the highest label value"):
        build(root)
