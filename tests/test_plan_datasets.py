"""The benchmark datasets of benchmarks/plan_datasets.py are what they claim, and benchmarks/plan_vs_nnunet.py
converts them to nnU-Net's raw format and maps nnU-Net's axes back to the files' (no nnunetv2 needed)."""
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from data_helpers import load_benchmark

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import plan_datasets  # noqa: E402


def load_bench():
    return load_benchmark("plan_vs_nnunet")


def test_ct_like_is_anisotropic_int16_ct_with_a_tiny_class(tmp_path):
    root = plan_datasets.write_ct_like(tmp_path / "ct", num_cases=3)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "CT"} and len(meta["labels"]) == 4 and meta["numTraining"] == 3
    for entry in meta["training"]:
        image = nib.load(str(root / entry["image"]))
        data, label = np.asarray(image.dataobj), np.asarray(nib.load(str(root / entry["label"])).dataobj)
        assert image.header.get_zooms() == (0.8, 0.8, 3.0)
        assert data.dtype == np.int16 and data.min() == -1000 and data.max() <= 1500
        assert data.shape[:2] == (96, 96) and 30 <= data.shape[2] <= 34
        counts = np.bincount(label.ravel(), minlength=4)
        assert 100 <= counts[3] <= 500 < counts[2] < counts[1]  # the lesion: a few hundred voxels


def test_mr_like_has_four_float_channels_and_a_zero_background(tmp_path):
    root = plan_datasets.write_mr_like(tmp_path / "mr", num_cases=2)
    meta = json.loads((root / "dataset.json").read_text())
    assert list(meta["modality"].values()) == ["T1", "T1c", "T2", "FLAIR"] and len(meta["labels"]) == 3
    image = np.asarray(nib.load(str(root / meta["training"][0]["image"])).dataobj)
    assert image.shape == (*plan_datasets.MR_SHAPE, 4) and image.dtype == np.float32
    inside = image[..., 0] > 0
    assert (image[~inside] == 0).all() and inside.mean() < 0.5  # cropping to nonzero shrinks the case


def test_conversion_to_nnunet_raw_splits_channels_and_keeps_geometry(tmp_path):
    bench = load_bench()
    msd = plan_datasets.write_mr_like(tmp_path / "mr", num_cases=2)
    raw = bench.to_nnunet_raw(msd, tmp_path / "raw" / "Dataset903_mr")
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T1c", "2": "T2", "3": "FLAIR"}
    assert meta["labels"] == {"background": 0, "edema": 1, "core": 2} and meta["file_ending"] == ".nii.gz"
    source = nib.load(str(msd / "imagesTr" / "mr_000.nii.gz"))
    channel = nib.load(str(raw / "imagesTr" / "mr_000_0002.nii.gz"))
    assert np.allclose(channel.affine, source.affine)
    assert np.array_equal(np.asarray(channel.dataobj), np.asarray(source.dataobj)[..., 2])
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == ["mr_000.nii.gz", "mr_001.nii.gz"]


def test_nnunet_axes_map_back_to_the_files_axes():
    bench = load_bench()
    # file axes (i, j, k) with spacing (0.8, 3.0, 0.9): SimpleITK order (k, j, i) = (0.9, 3.0, 0.8), and nnU-Net
    # moves the coarsest (SimpleITK axis 1) first: transpose_forward [1, 0, 2], plan order (3.0, 0.9, 0.8)
    assert bench.to_file_axes([3.0, 0.9, 0.8], [1, 0, 2]) == [0.8, 3.0, 0.9]
    assert bench.to_file_axes([32, 96, 80], [0, 1, 2]) == [80, 96, 32]
    assert bench.pools_per_axis([[1, 1, 1], [2, 2, 1], [2, 2, 2]]) == [2, 2, 1]
