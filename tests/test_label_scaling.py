"""NIfTI labels whose header scaling (scl_slope / scl_inter) makes their values fractional, as
DeepMedic's brainmask.nii.gz: the stored integers are the classes."""
from __future__ import annotations

import gzip
from pathlib import Path

import data_helpers as h  # tests/ is on sys.path (pytest rootdir-relative import)
import nibabel as nib
import numpy as np
import pytest

from segflow.data.loader import build_loaders
from segflow.data.readers import read
from segflow.nodes.data import MedicalSegmentationLoaderConfig as Config


def scaled_nifti(path: Path, stored: np.ndarray, slope: float, inter: float) -> Path:
    """A NIfTI file whose header scales the stored values (nibabel recomputes scaling on save, so the
    header and voxel bytes are written here as they are)."""
    header = nib.Nifti1Header()
    header.set_data_shape(stored.shape)
    header.set_data_dtype(stored.dtype)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["scl_slope"], header["scl_inter"], header["vox_offset"] = slope, inter, 352
    data = header.binaryblock + b"\0" * 4 + stored.tobytes(order="F")
    path.write_bytes(gzip.compress(data))
    return path


def test_scaled_int32_label_reads_its_stored_classes(tmp_path):
    root = tmp_path / "deepmedic"
    for i in range(3):
        image, label = h.case_3d(i)
        h.save_nifti(root / "images" / f"b{i}.nii.gz", image)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        scaled_nifti(root / "masks" / f"b{i}.nii.gz", label.astype(np.int32), 2.3e-10, 0.5)
    fractional = nib.load(root / "masks" / "b0.nii.gz").get_fdata()
    assert not np.array_equal(fractional, np.round(fractional))  # as DeepMedic's file: 0.5 and 0.5 + 2.3e-10
    _, val, info = build_loaders(Config(data_dir=str(root), image_size=8, augmentation=False, seed=0,
                                            val_fraction=0.34), log=lambda *_: None)
    assert info.num_classes == 2
    truth = h.case_3d(int(val.dataset.source.cases[0].case_id[1:]))[1]
    np.testing.assert_array_equal(next(iter(val))["label"][0, 0].numpy(), truth)


def test_fractional_stored_label_values_name_the_header_scaling(tmp_path):
    path = scaled_nifti(tmp_path / "lab.nii.gz", np.array([[0.0, 0.25], [1.0, 1.0]], np.float32), 2.0, 0.5)
    with pytest.raises(ValueError, match=r"found fractional values.*scl_slope 2.*scl_inter 0.5"):
        read(path, is_label=True)
