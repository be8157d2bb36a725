"""`segflow plan`: the fingerprint against numpy, nnU-Net's rules on hand-computed cases, the written
workflow, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_helpers import blob, msd_3d, save_nifti, save_png

from segflow.cli import main
from segflow.data.label_coding import LabelCoding
from segflow.data.layouts import find_cases
from segflow.planning.case_stats import analyse_case
from segflow.planning.errors import PlanError
from segflow.planning.fingerprint import fingerprint
from segflow.planning.sizing import gib_needed, size_patch_and_batch
from segflow.planning.spacing import target_spacing
from segflow.planning.topology import Topology, feature_map_voxels, topology

SHAPE, BOX = (24, 20, 16), (slice(2, 20), slice(3, 17), slice(1, 15))


def cropped_msd(root: Path, n: int = 4, modality: str = "CT", spacing=(0.8, 0.8, 2.5)) -> Path:
    """3-D cases that are zero outside BOX (so cropping to nonzero has work to do), two classes."""
    training = []
    for i in range(n):
        rng = np.random.default_rng(i)
        image = np.zeros(SHAPE, np.int16)
        image[BOX] = rng.integers(-500, 1500, size=[s.stop - s.start for s in BOX])
        label = blob(SHAPE, (11 + i % 2, 10, 8), 4).astype(np.uint8)
        label[blob(SHAPE, (11 + i % 2, 10, 8), 2)] = 2
        affine = np.diag([*spacing, 1.0])
        save_nifti(root / "imagesTr" / f"c{i}.nii.gz", image, affine)
        save_nifti(root / "labelsTr" / f"c{i}.nii.gz", label, affine)
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    meta = {"name": "Cropped CT", "labels": {"0": "background", "1": "organ", "2": "core"},
            "modality": {"0": modality}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["plan", *map(str, argv), "--no-progress"])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


# --- the fingerprint -------------------------------------------------------------------------------

def test_fingerprint_statistics_equal_numpy(tmp_path):
    import nibabel as nib

    data = cropped_msd(tmp_path / "ds")
    fp = fingerprint(data, tmp_path / "fp.json", progress=False)
    values = []
    for i in range(4):
        image = np.asanyarray(nib.load(str(data / "imagesTr" / f"c{i}.nii.gz")).dataobj)
        label = np.asanyarray(nib.load(str(data / "labelsTr" / f"c{i}.nii.gz")).dataobj)
        values.append(image[label > 0].astype(float))  # every foreground voxel lies inside the box
        case = fp["cases"][i]
        assert case["shape_after_crop"] == [18, 14, 14] and case["shape"] == list(SHAPE)
        assert case["spacing"] == [0.8, 0.8, 2.5]
        assert case["class_voxels"] == {str(k): int(v) for k, v in enumerate(np.bincount(label.ravel()))}
        assert case["classes_present"] == [0, 1, 2]
    values = np.concatenate(values)
    stats = fp["foreground_intensity"][0]
    assert stats["samples"] == values.size
    for key, expected in [("mean", values.mean()), ("std", values.std()), ("median", np.median(values)),
                          ("min", values.min()), ("max", values.max()),
                          ("percentile_00_5", np.percentile(values, 0.5)),
                          ("percentile_99_5", np.percentile(values, 99.5))]:
        assert stats[key] == pytest.approx(expected), key
    assert fp["modalities"] == ["CT"] and fp["num_classes"] == 3 and fp["spatial_dims"] == 3
    assert fp["median_relative_size_after_crop"] == pytest.approx(18 * 14 * 14 / np.prod(SHAPE))


def test_foreground_is_sampled_at_most_n_per_case_and_seeded(tmp_path):
    case = find_cases(cropped_msd(tmp_path / "ds", n=2)).cases[0]
    as_stored = LabelCoding()  # the files hold class indices
    first, again = analyse_case(case, as_stored, samples=50), analyse_case(case, as_stored, samples=50)
    assert first.foreground[0].size == 50
    np.testing.assert_array_equal(first.foreground[0], again.foreground[0])
    assert set(first.foreground[0]) <= set(analyse_case(case, as_stored, samples=10**6).foreground[0])


def test_fingerprint_is_reused_until_a_file_changes(tmp_path, monkeypatch):
    import os

    import segflow.planning.fingerprint as module

    data = cropped_msd(tmp_path / "ds", n=2)
    fingerprint(data, tmp_path / "fp.json", progress=False)

    def unread(case, *a):
        raise AssertionError(f"{case.case_id} was read again")

    monkeypatch.setattr(module, "analyse_case", unread)
    fingerprint(data, tmp_path / "fp.json", progress=False, log=lambda text: None)
    label = data / "labelsTr" / "c1.nii.gz"
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="c0 was read again"):
        fingerprint(data, tmp_path / "fp.json", progress=False)


# --- the rules, on hand-computed cases -------------------------------------------------------------

def test_isotropic_spacing_is_the_median():
    spacing, why = target_spacing(np.array([[1.0, 1, 1], [1.5, 1.5, 1.5], [0.5, 0.5, 0.5]]), np.full((3, 3), 100))
    assert spacing.tolist() == [1.0, 1.0, 1.0] and "median" in why


def test_anisotropic_axis_takes_the_tenth_percentile():
    spacings = np.array([[0.8, 0.8, z] for z in (2.5, 3.0, 3.0, 3.0, 5.0)])
    shapes = np.array([[512, 512, 40]] * 5)
    spacing, why = target_spacing(spacings, shapes)
    # median z 3.0 > 3 x 0.8 and 40 x 3 < 512: the 10th percentile of (2.5, 3, 3, 3, 5) = 2.5 + 0.4 x 0.5
    assert spacing.tolist() == pytest.approx([0.8, 0.8, 2.7]) and "10th percentile" in why
    # as many slices as that, the coarse axis keeps its median (nnU-Net needs few voxels too)
    assert target_spacing(spacings, np.array([[512, 512, 200]] * 5))[0].tolist() == [0.8, 0.8, 3.0]
    # the 10th percentile never goes finer than the other axes
    low = np.array([[0.8, 0.8, z] for z in (0.6, 0.6, 3.0, 3.0, 3.0)])
    assert target_spacing(low, shapes)[0][2] == pytest.approx(0.8 + 1e-5)


def test_two_d_spacing_is_the_median():
    assert target_spacing(np.array([[0.5, 0.7], [0.7, 0.9], [0.6, 0.8]]), np.full((3, 2), 64))[0].tolist() == [0.6, 0.8]


def test_topology_isotropic():
    topo = topology([1.0, 1.0, 1.0], [128, 128, 128])
    assert topo.pools == [5, 5, 5] and topo.patch == [128, 128, 128]  # 128 -> 4 in 5 poolings
    assert topo.strides == [[1, 1, 1]] + [[2, 2, 2]] * 5
    assert topo.kernels == [[3, 3, 3]] * 6
    assert topo.features == [32, 64, 128, 256, 320, 320]


def test_topology_anisotropic():
    topo = topology([0.8, 0.8, 3.0], [160, 160, 40])
    # stage 0: z (3.0) is >= 2x the finest (0.8): not pooled, kernel 1 on it; after one pooling of x/y
    # (1.6) z is within 2x and pooled with them until it has fewer than 8 voxels (40 -> 20 -> 10 -> 5)
    assert topo.pools == [5, 5, 3]
    assert topo.strides == [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]]
    assert topo.kernels == [[3, 3, 1]] + [[3, 3, 3]] * 5
    assert topo.patch == [160, 160, 40]  # 160 / 2^5 and 40 / 2^3 are whole
    assert topology([0.8, 0.8, 3.0], [160, 160, 44]).patch == [160, 160, 48]  # padded up to a multiple of 8


def test_topology_two_d():
    topo = topology([1.0, 1.0], [128, 96])
    # (128, 96) -> (8, 6) in 4 poolings; then only x has 8 voxels, and a lone axis needs 12
    assert topo.pools == [4, 4] and topo.strides == [[1, 1]] + [[2, 2]] * 4 and topo.patch == [128, 96]
    assert topo.features == [32, 64, 128, 256, 512]


def test_feature_map_count():
    topo = Topology([8, 8], [1, 1], [[1, 1], [2, 2]], [[3, 3], [3, 3]], [32, 64])
    # encoder 2 x 32 x 64 + 2 x 64 x 16; decoder (transposed conv + 2 convs) 3 x 32 x 64 + head 2 x 64
    assert feature_map_voxels(topo, num_classes=2) == 4096 + 2048 + 6144 + 128


def test_patch_shrinks_to_the_budget_and_batch_is_capped():
    sizing = size_patch_and_batch([1.0, 1.0, 1.0], [512, 512, 512], 3, 8.0, 100)
    assert sizing.topology.patch == [128, 128, 128] and sizing.batch_size == 2  # nnU-Net's plan for 8 GB
    assert gib_needed(sizing.topology, 3, 2) <= 8.0
    bigger = size_patch_and_batch([1.0, 1.0, 1.0], [64, 64, 64], 3, 80.0, 1000)
    assert bigger.topology.patch == [64, 64, 64] and bigger.batch_size == 50  # 5% of 1000 cases of 64^3
    assert size_patch_and_batch([1.0, 1.0, 1.0], [64, 64, 64], 3, 80.0, 4).batch_size == 2  # at least 2


def test_feature_map_count_has_one_segmentation_head():
    """nnU-Net's planner counts a PlainConvUNet without deep supervision: one head, at full resolution."""
    topo = topology([1.0, 1.0], [128, 128])  # 6 stages, maps of 128^2 ... 4^2, features 32 ... 512
    maps = [128**2, 64**2, 32**2, 16**2, 8**2, 4**2]
    encoder = 2 * sum(f * n for f, n in zip([32, 64, 128, 256, 512, 512], maps))  # 2 convolutions per stage
    decoder = 3 * sum(f * n for f, n in zip([32, 64, 128, 256, 512], maps))  # transposed conv + 2 convolutions
    assert feature_map_voxels(topo, num_classes=2) == encoder + decoder + 2 * 128**2 == 5_128_192


@pytest.mark.parametrize("spacing, median, classes, cases, patch, stages, memory_batch, batch", [
    # the 2-D phantom: 64 images of 128^2; 5% of 64 x 128^2 voxels is 3.2 patches
    ([1.0, 1.0], [128, 128], 2, 64, [128, 128], 6, 199, 3),
    # the CT-like set as 2-D slices (8 volumes of 96x96x32 = 256 slices at 0.8 x 0.8 mm): 5% is 12.8 slices;
    # nnU-Net's 2d configuration of the volumes caps by 5% of 8 x 96 x 96 x 32 voxels, the same 12.8
    ([0.8, 0.8], [96, 96], 4, 256, [96, 96], 5, 359, 13),
    # CT slices of 512^2 from many volumes: nnU-Net's well-known 2d plan, patch 512^2 at batch 12
    ([0.7, 0.7], [512, 512], 2, 10_000, [512, 512], 8, 12, 12),
])
def test_two_d_batch_follows_nnunet(spacing, median, classes, cases, patch, stages, memory_batch, batch):
    """nnU-Net's 2d rules by hand (ExperimentPlanner.get_plans_for_configuration): the patch is the median
    shape (under the 2048^2 start), features cap at 512, and batch = round(85e6 x (8 GiB / 8) / estimate x 12),
    the estimate counted as in test_feature_map_count_has_one_segmentation_head, capped at 5% of the dataset."""
    sizing = size_patch_and_batch(spacing, median, classes, 8.0, cases)
    topo = sizing.topology
    assert topo.patch == patch and topo.stages == stages and topo.features[-1] == 512
    estimate = {128: 5_128_192, 96: 2_838_528, 512: 82_624_512}[patch[0]]  # by hand, one head of `classes` maps
    assert feature_map_voxels(topo, classes) == estimate
    assert round(85e6 / estimate * 12) == memory_batch and f"the memory allows {memory_batch}," in sizing.reasons["batch"]
    assert sizing.batch_size == batch


# --- the command and the workflow it writes --------------------------------------------------------

def test_plan_writes_a_valid_workflow(tmp_path, capsys, monkeypatch):
    from segflow.data.phantoms import write_phantom_dataset
    from segflow.workflow import spec

    monkeypatch.chdir(tmp_path)
    write_phantom_dataset("data/phantom3d", kind="3d", num_cases=4, size=32, num_test=0)
    code, out, err = run_cli(capsys, "data/phantom3d", "--gpu-memory", "8", "--epochs", "3", "--explain")
    assert code == 0, err
    path = tmp_path / "workflows" / "segflow_phantom_3d_3d_fullres.json"
    workflow = json.loads(path.read_text())
    loader, net = workflow["nodes"][0]["config"], workflow["nodes"][1]["config"]
    assert loader["normalization"] == "ct_zscore" and loader["image_size"] == [32, 32, 24]
    assert loader["pos"] == 1 and loader["neg"] == 2 and loader["augmentation_strength"] == "strong"
    assert loader["foreground_sampling"] == "by_class"
    assert net["strides"][0] == [1, 1, 1] and len(net["kernel_size"]) == len(net["strides"]) == len(net["filters"])
    assert workflow["nodes"][4]["config"]["epochs"] == 3
    # nnU-Net predicts with Gaussian-weighted windows (overlap 0.5) and mirrors along every set of axes
    assert workflow["nodes"][5]["config"] == {"tta": ["flip"], "tta_flip_combinations": True, "overlap": 0.5,
                                              "blend_mode": "gaussian"}
    assert "target spacing" in out and "batch size" in out and "target spacing" in workflow["description"]
    assert (tmp_path / "data/phantom3d/.segflow_plan/fingerprint.json").is_file()
    assert json.loads((tmp_path / "data/phantom3d/.segflow_plan/plan_3d_fullres.json").read_text())["patch"] == [32, 32, 24]
    loaded = spec.load(path, sets=["trainer.epochs=1"])  # validates as written, DynUNet included
    assert loaded.nodes["trainer"].config.epochs == 1
    assert [w.code for w in loaded.warnings] == []


def test_a_planned_workflow_trains(tmp_path, capsys, monkeypatch):
    """`segflow plan` then `segflow run` on what it wrote: the DynUNet with deep supervision trains a step."""
    from segflow.data.phantoms import write_phantom_dataset
    from segflow.workflow.executor import run_workflow

    monkeypatch.chdir(tmp_path)
    write_phantom_dataset("data/phantom3d", kind="3d", num_cases=4, size=32, num_test=0)
    assert run_cli(capsys, "data/phantom3d", "--gpu-memory", "8", "-o", "wf.json")[0] == 0
    sets = ["trainer.epochs=1", "data_loader.samples_per_volume=1", "data_loader.num_workers=0", "trainer.device=cpu"]
    result = run_workflow("wf.json", sets=sets, until="trainer", progress=False, log=lambda line: None)
    [row] = result.outputs["trainer"]["history"]
    assert row["train_loss"] > 0 and row["val_dice"] >= 0


def test_an_epoch_is_250_iterations_of_the_loaders_training_split(tmp_path, capsys):
    """12 cases: the loader validates ceil(12 x 0.2) = 3, so 9 train; 250 batches of 2 need 56 patches each."""
    out = tmp_path / "wf.json"
    assert run_cli(capsys, cropped_msd(tmp_path / "ds", n=12), "-o", out)[0] == 0
    loader = json.loads(out.read_text())["nodes"][0]["config"]
    assert loader["batch_size"] == 2 and loader["samples_per_volume"] == 56  # ceil(250 x 2 / 9)


def test_existing_workflow_is_kept_without_force(tmp_path, capsys):
    data = cropped_msd(tmp_path / "ds")
    out = tmp_path / "wf.json"
    out.write_text("mine")
    code, _, err = run_cli(capsys, data, "-o", out)
    assert code == 1 and "already exists" in err and out.read_text() == "mine"
    assert run_cli(capsys, data, "-o", out, "--force")[0] == 0
    assert json.loads(out.read_text())["nodes"][1]["type"] == "DynUNet"


def test_two_d_png_dataset(tmp_path, capsys):
    from data_helpers import folder_png

    data = folder_png(tmp_path / "png", n=6)
    out = tmp_path / "wf.json"
    code, _, err = run_cli(capsys, data, "-o", out, "--explain")
    assert code == 0, err
    loader = json.loads(out.read_text())["nodes"][0]["config"]
    assert loader["spatial_dims"] == 2 and loader["size_mode"] == "patches" and loader["target_spacing"] is None
    assert loader["normalization"] == "zscore" and loader["num_classes"] == 2  # a folder declares no classes
    assert "spacing 1 assumed" in err


# --- bad input -------------------------------------------------------------------------------------

def test_two_d_data_asked_for_3d_fullres(tmp_path, capsys):
    from data_helpers import folder_png

    code, _, err = run_cli(capsys, folder_png(tmp_path / "png", n=3), "--config", "3d_fullres", "-o", tmp_path / "w.json")
    assert code == 1 and "2-D images" in err and "case00" in err and "--config 2d" in err


def test_single_case(tmp_path, capsys):
    code, _, err = run_cli(capsys, cropped_msd(tmp_path / "ds", n=1), "-o", tmp_path / "w.json")
    assert code == 1 and "one labelled case" in err and "c0.nii.gz" in err


def test_cases_disagree_on_dimensionality(tmp_path, capsys):
    data = msd_3d(tmp_path / "ds", n=3)
    save_nifti(data / "imagesTr" / "vol_2.nii.gz", np.ones((20, 18), np.int16))
    save_nifti(data / "labelsTr" / "vol_2.nii.gz", np.ones((20, 18), np.uint8))
    code, _, err = run_cli(capsys, data, "-o", tmp_path / "w.json")
    assert code == 1 and "case vol_2" in err and "labelsTr/vol_2.nii.gz is 2-D" in err


def test_cases_disagree_on_channels(tmp_path, capsys):
    from data_helpers import folder_png

    data = folder_png(tmp_path / "png", n=3)
    save_png(data / "images" / "case01.png", np.stack([np.full((32, 40), v) for v in (10, 90, 200)], -1))
    code, _, err = run_cli(capsys, data, "-o", tmp_path / "w.json")
    assert code == 1 and "case case01" in err and "3 image channel(s)" in err and "case01.png" in err


def test_case_without_foreground_is_a_warning(tmp_path, capsys):
    data = cropped_msd(tmp_path / "ds", n=3)
    save_nifti(data / "labelsTr" / "c1.nii.gz", np.zeros(SHAPE, np.uint8), np.diag([0.8, 0.8, 2.5, 1]))
    code, _, err = run_cli(capsys, data, "-o", tmp_path / "w.json")
    assert code == 0 and "warning: case c1" in err and "no foreground" in err


def test_zero_spacing_in_a_header(tmp_path, capsys, monkeypatch):
    # nibabel itself replaces a zero pixdim by 1 (with a warning), so a reader that passes a zero on (a
    # DICOM series with a bad PixelSpacing, say) is stood in for here
    import segflow.planning.case_stats as module
    from segflow.data.readers import read

    def zero_spacing(path, **kw):
        loaded = read(path, **kw)
        if Path(path).name == "c2.nii.gz" and not kw.get("is_label"):
            loaded.spacing = (0.8, 0.0, 2.5)
        return loaded

    monkeypatch.setattr(module, "read", zero_spacing)
    code, _, err = run_cli(capsys, cropped_msd(tmp_path / "ds", n=3), "-o", tmp_path / "w.json")
    assert code == 1 and "case c2" in err and "imagesTr/c2.nii.gz" in err and "(0.8, 0.0, 2.5)" in err


def test_memory_budget_too_small(tmp_path, capsys):
    code, _, err = run_cli(capsys, cropped_msd(tmp_path / "ds"), "--gpu-memory", "0.0001", "-o", tmp_path / "w.json")
    assert code == 1 and "--gpu-memory 0.0001 GiB is too small" in err
    assert not (tmp_path / "w.json").exists()


def test_budget_error_names_the_need():
    with pytest.raises(PlanError, match="needs about"):
        size_patch_and_batch([1.0, 1.0, 1.0], [512, 512, 512], 3, 0.001, 10)


def test_plan_imports_no_torch(tmp_path):
    import subprocess
    import sys

    data = cropped_msd(tmp_path / "ds", n=2)
    code = ("import sys; from segflow.cli import main; "
            f"rc = main(['plan', {str(data)!r}, '-o', {str(tmp_path / 'w.json')!r}, '--no-progress']); "
            "assert rc == 0; print(sorted(m for m in ('torch', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip().endswith("[]")
