"""`segflow package` and `segflow predict`: a trained run made into a package, applied to a plain folder,
gives the training run's own Predictor output (labels identical; probabilities equal in fp32 up to
1e-4, eager and ONNX), in the input's format and geometry; bad packages and bad cases are named."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from data_helpers import case_2d, case_3d, save_png
from PIL import Image

from segflow.cli import main
from segflow.packaging.build import make_package
from segflow.packaging.contents import PackageError, open_package
from segflow.packaging.predict import OnnxNetwork, network_of, predict_folder
from segflow.workflow.executor import run_workflow

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]


def rgb_folder(root: Path, n: int = 10) -> Path:
    """RGB images with 0/255 masks, as photographs' datasets come."""
    for i in range(n):
        grey, label = case_2d(i)
        rgb = np.stack([grey, np.roll(grey, 1, axis=1), 255 - grey], axis=-1)
        save_png(root / "images" / f"case{i:02d}.png", rgb)
        save_png(root / "masks" / f"case{i:02d}.png", label * 255)
    return root


def workflow_2d(data_dir: Path) -> dict:
    return {"workflow": "pkg2d", "nodes": [
        {"type": "MedicalSegmentationLoader", "name": "data", "config": {
            "data_dir": str(data_dir), "image_size": 32, "batch_size": 4, "val_fraction": 0.3, "seed": 0}},
        {"type": "UNet2D", "name": "model", "config": {"in_channels": 3, "out_channels": 2, "base_channels": 8,
                                                       "depth": 3}},
        {"type": "LossFunction", "name": "loss", "config": {"loss_type": "dice_ce"}},
        {"type": "Optimizer", "name": "opt", "config": {"learning_rate": 0.01}},
        {"type": "Trainer", "name": "trainer", "config": {"epochs": 2, "device": "cpu"}},
        {"type": "Predictor", "name": "predictor", "config": {"save_probabilities": True}}]}


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory):
    """A 2-D run (RGB PNGs with 0/255 masks, resized to 32) with its Predictor's output, and its package."""
    base = tmp_path_factory.mktemp("pkg2d")
    data = rgb_folder(base / "data")
    wf = base / "wf.json"
    wf.write_text(json.dumps(workflow_2d(data)))
    result = run_workflow(wf, device="cpu", progress=False, log=lambda _m: None, run_dir=base / "run")
    package = make_package(result.run_dir, base / "model.segflow", license="CC-BY-4.0", authors=["A. Person"],
                           log=lambda _m: None)
    images = base / "in"
    images.mkdir()
    for p in sorted((base / "run" / "predictions").glob("*_probabilities.npy")):
        shutil.copy(data / "images" / p.name.replace("_probabilities.npy", ".png"), images)
    return base, package


def test_the_package_holds_what_a_prediction_needs(run_2d):
    base, path = run_2d
    package = open_package(path)
    meta = package.metadata
    assert meta["format_version"] == 1 and meta["license"] == "CC-BY-4.0" and meta["authors"] == ["A. Person"]
    chosen = (base / "run" / "postprocessing.json").is_file()  # the Trainer's rule travels with the weights
    assert set(meta["files"]) == {"weights.pt", "model.pt2", "model.onnx", "inference.json", "training_workflow.json",
                                  *(["postprocessing.json"] if chosen else [])}
    assert ("postprocessing" in package.inference) == chosen
    inputs = meta["network_data_format"]["inputs"]["image"]
    assert inputs["num_channels"] == 3 and inputs["spatial_shape"] == [32, 32]
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "class_1"}
    assert meta["eval_metrics"]["monitor"] == "val_dice" and meta["eval_metrics"]["val_dice"] is not None
    onnx = next(e for e in meta["exports"] if e["format"] == "onnx")
    assert onnx["dynamic_spatial"] is True and onnx["max_abs_diff"] <= 1e-4  # a UNet takes any multiple of 8
    pre = package.inference["preprocessing"]
    assert pre["normalization"] == "zscore" and pre["image_size"] == 32 and pre["size_mode"] == "auto"
    assert package.inference["dataset"]["label_values"] == [0, 255]  # 0/255 masks: predictions written so too


def test_predict_equals_the_training_runs_predictor(run_2d, tmp_path):
    base, path = run_2d
    outcome = predict_folder(open_package(path), base / "in", tmp_path / "out", probabilities=True, progress=False)
    assert len(outcome.predicted) == 3 and not outcome.failed
    for case, written, _ in outcome.predicted:
        ours = np.asarray(Image.open(written))
        theirs = np.asarray(Image.open(base / "run" / "predictions" / f"{case}.png"))
        assert ours.shape == theirs.shape == (32, 40) and np.array_equal(ours, theirs)
        assert set(np.unique(ours)) == {0, 255}  # in the dataset's own 0/255 coding
        p_ours = np.load(tmp_path / "out" / f"{case}_probabilities.npy").astype(np.float32)
        p_theirs = np.load(base / "run" / "predictions" / f"{case}_probabilities.npy").astype(np.float32)
        assert np.abs(p_ours - p_theirs).max() <= 2 ** -10  # both stored as float16: one rounding step apart


def test_onnx_and_eager_agree_in_fp32(run_2d):
    base, path = run_2d
    package = open_package(path)
    eager, onnx = network_of(package, "torch", "cpu").eval(), network_of(package, "onnx", "cpu")
    assert isinstance(onnx, OnnxNetwork)
    for size in ((1, 3, 32, 32), (3, 3, 40, 48)):  # the window, and another size (free spatial axes)
        x = torch.randn(size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            probs_eager = torch.softmax(eager(x), 1)
        assert torch.max(torch.abs(torch.softmax(onnx(x), 1) - probs_eager)) <= 1e-4


def test_onnx_backend_writes_the_same_labels(run_2d, tmp_path):
    base, path = run_2d
    outcome = predict_folder(open_package(path), base / "in", tmp_path / "onnx", backend="onnx", progress=False)
    for case, written, _ in outcome.predicted:
        theirs = np.asarray(Image.open(base / "run" / "predictions" / f"{case}.png"))
        assert np.array_equal(np.asarray(Image.open(written)), theirs)


def test_reruns_skip_what_exists_and_bad_cases_are_listed(run_2d, tmp_path, capsys):
    base, path = run_2d
    images = tmp_path / "in"
    shutil.copytree(base / "in", images)
    save_png(images / "grey.png", np.zeros((20, 20), np.uint8) + 7)  # 1 channel; the model takes 3
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = main(["predict", str(path), "-i", str(images), "-o", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 1 and "3 case(s) predicted" in printed and "2 failed" in printed
    assert "failed: broken: " in printed and "failed: grey: " in printed and "channel" in printed
    assert not (out / "grey.png").exists() and not (out / "broken.png").exists()
    code = main(["predict", str(path), "-i", str(base / "in"), "-o", str(out), "--no-progress"])
    assert code == 0 and "3 skipped" in capsys.readouterr().out


def test_bad_packages_are_named(run_2d, tmp_path):
    base, path = run_2d
    newer = shutil.copytree(path, tmp_path / "newer")
    meta = json.loads((newer / "metadata.json").read_text())
    (newer / "metadata.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(PackageError, match="format version 99 is newer"):
        open_package(newer)
    damaged = shutil.copytree(path, tmp_path / "damaged")
    with open(damaged / "weights.pt", "r+b") as f:
        f.seek(100)
        f.write(b"\0\0\0\0")
    with pytest.raises(PackageError, match=r"weights.pt: the file is damaged"):
        open_package(damaged)
    (damaged / "weights.pt").unlink()
    with pytest.raises(PackageError, match="weights.pt is missing"):
        open_package(damaged)


def test_a_zip_package_and_a_run_directory_predict_alike(run_2d, tmp_path):
    base, path = run_2d
    zipped = make_package(base / "run", tmp_path / "model.zip", exports=False, log=lambda _m: None)
    assert zipped.is_file()
    for model in (zipped, base / "run"):
        out = tmp_path / f"out_{model.name}"
        assert main(["predict", str(model), "-i", str(base / "in"), "-o", str(out), "--no-progress"]) == 0
        for png in out.glob("*.png"):
            assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(base / "run" / "predictions" / png.name)))


# ---- 3-D: two channels, anisotropic spacing, oblique affine, resampled to a target spacing ----------------

def oblique_affine(spacing=(0.8, 0.8, 3.0), angle=0.35) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = [-12.5, 30.0, 7.0]
    return affine


def nnunet_oblique(root: Path, n: int = 5) -> Path:
    for i in range(n):
        image, label = case_3d(i, shape=(24, 20, 10))
        for ch, data in enumerate((image, (-image).astype(np.int16))):
            nib.save(nib.Nifti1Image(data, oblique_affine()), root / "imagesTr" / f"pat{i:03d}_{ch:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, oblique_affine()), root / "labelsTr" / f"pat{i:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "T2"}, "labels": {
        "background": 0, "tumour": 1}, "numTraining": n, "file_ending": ".nii.gz"}))
    return root


def workflow_3d(data_dir: Path) -> dict:
    return {"workflow": "pkg3d", "nodes": [
        {"type": "MedicalSegmentationLoader", "name": "data", "config": {
            "data_dir": str(data_dir), "image_size": [16, 16, 8], "target_spacing": [0.8, 0.8, 2.5],
            "batch_size": 2, "val_fraction": 0.4, "seed": 0}},
        {"type": "UNet3D", "name": "model", "config": {"in_channels": 2, "out_channels": 2, "base_channels": 4,
                                                       "depth": 3}},
        {"type": "LossFunction", "name": "loss", "config": {"loss_type": "dice_ce"}},
        {"type": "Optimizer", "name": "opt", "config": {"learning_rate": 0.01}},
        {"type": "Trainer", "name": "trainer", "config": {"epochs": 1, "device": "cpu"}},
        {"type": "Predictor", "name": "predictor", "config": {"save_probabilities": True, "tta": True}}]}


def test_3d_oblique_anisotropic_two_channels(tmp_path):
    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    data = nnunet_oblique(tmp_path / "data")
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(workflow_3d(data)))
    run_workflow(wf, device="cpu", progress=False, log=lambda _m: None, run_dir=tmp_path / "run")
    package = make_package(tmp_path / "run", tmp_path / "model", log=lambda _m: None)
    images = tmp_path / "in"
    images.mkdir()
    predicted = sorted(p.name.replace(".nii.gz", "") for p in (tmp_path / "run" / "predictions").glob("*.nii.gz"))
    for case in predicted:
        for ch in (0, 1):
            shutil.copy(data / "imagesTr" / f"{case}_{ch:04d}.nii.gz", images)
    for backend in ("torch", "onnx"):
        outcome = predict_folder(open_package(package), images, tmp_path / backend, backend=backend, progress=False)
        assert [c for c, _, _ in outcome.predicted] == predicted and not outcome.failed
        for case, written, _ in outcome.predicted:
            ours, theirs = nib.load(written), nib.load(tmp_path / "run" / "predictions" / f"{case}.nii.gz")
            assert ours.shape == (24, 20, 10) and np.allclose(ours.affine, oblique_affine())
            assert np.array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))


def test_a_plain_folder_groups_channels_by_nnunet_names(tmp_path):
    from segflow.data.layouts import find_images

    for name in ("b_0000.nii.gz", "b_0001.nii.gz", "a_0000.nii.gz", "a_0001.nii.gz", "c_0001.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    layout, problems = find_images(tmp_path)
    assert [(c.case_id, [p.name for p in c.images]) for c in layout.cases] == [
        ("a", ["a_0000.nii.gz", "a_0001.nii.gz"]), ("b", ["b_0000.nii.gz", "b_0001.nii.gz"])]
    assert problems == [("c", "channel file(s) c_0000 missing (found c_0001.nii.gz)")]
    (tmp_path / "scan.png").write_bytes(b"")  # one name without _XXXX: every file is its own case
    layout, problems = find_images(tmp_path)
    assert len(layout.cases) == 6 and problems == []
    (tmp_path / "scan.nii.gz").write_bytes(b"")  # two files of one case: the second is listed, not predicted
    layout, problems = find_images(tmp_path)
    assert len(layout.cases) == 6 and problems == [("scan", "scan.png and scan.nii.gz are both case 'scan'")]


def test_layout_images_is_for_prediction_only():
    from segflow.nodes.data import MedicalSegmentationLoader
    from segflow.nodes.data import MedicalSegmentationLoaderConfig as Config

    findings = MedicalSegmentationLoader.check(Config(layout="images"), {})
    assert [(f.field, f.code) for f in findings] == [("layout", "bad_value")]
    assert MedicalSegmentationLoader.check(Config(layout="images", subset="test"), {}) == []
