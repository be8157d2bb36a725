"""Normalisation per channel as planned, and the loader's ct_zscore that carries out the CT scheme."""
from __future__ import annotations

import json

import numpy as np
import pytest
from data_helpers import msd_3d

from segflow.data.layouts import find_cases
from segflow.data.prepare import PrepSpec, normalize, prepare_case
from segflow.nodes.data import MedicalSegmentationLoaderConfig
from segflow.planning.normalisation import loader_settings

CT_STATS = [{"mean": 50.0, "std": 25.0, "percentile_00_5": -100.0, "percentile_99_5": 200.0}]


def test_ct_zscore_clips_then_zscores_with_the_given_numbers():
    image = np.array([[-2000.0, 0.0, 50.0, 3000.0]])
    out = normalize(image, "ct_zscore", (-100.0, 200.0), intensity=(50.0, 25.0))
    np.testing.assert_allclose(out, [[-6.0, -2.0, 0.0, 6.0]])  # clipped to [-100, 200], then (x - 50) / 25
    assert out.dtype == np.float32


def _loader_issues(**config) -> list[str]:
    from segflow.workflow import spec
    from segflow.workflow.errors import WorkflowError

    doc = {"workflow": "w", "nodes": [{"type": "MedicalSegmentationLoader", "name": "data", "config": config}]}
    try:
        return [i.message for i in spec.loads(json.dumps(doc)).warnings]
    except WorkflowError as e:
        return [i.message for i in e.issues]


def test_ct_zscore_is_for_3d():
    with pytest.raises(ValueError, match="ct_zscore is for 3-D"):
        normalize(np.zeros((1, 4, 4)), "ct_zscore", (-100.0, 200.0), for_2d=True, intensity=(0.0, 1.0))
    issues = _loader_issues(normalization="ct_zscore", intensity_mean=0, intensity_std=1, spatial_dims=2)
    assert any("ct_zscore is for 3-D" in m for m in issues)


def test_ct_zscore_needs_its_numbers():
    issues = _loader_issues(normalization="CT-zscore", intensity_mean=1.0)
    assert any("ct_zscore needs intensity_std" in m for m in issues)
    assert _loader_issues(normalization="ct_zscore", intensity_mean=1.0, intensity_std=2.0, spatial_dims=3) == []
    with pytest.raises(ValueError, match="needs intensity_mean and intensity_std"):
        normalize(np.zeros((1, 4, 4, 4)), "ct_zscore", (-100.0, 200.0))


def test_loader_applies_ct_zscore(tmp_path):
    import nibabel as nib

    from segflow.data.loader import discover

    data = msd_3d(tmp_path / "ds", n=2)
    cfg = MedicalSegmentationLoaderConfig(data_dir=str(data), normalization="ct_zscore", ct_window=[-10.0, 90.0],
                                          intensity_mean=40.0, intensity_std=20.0)
    spec = discover(cfg).spec
    assert spec.intensity == (40.0, 20.0)
    prepared = prepare_case(find_cases(data).cases[0], spec)
    raw = np.asanyarray(nib.load(str(data / "imagesTr" / "vol_0.nii.gz")).dataobj).astype(np.float32)
    np.testing.assert_allclose(prepared.image[0], (np.clip(raw, -10, 90) - 40) / 20, rtol=1e-6)
    assert PrepSpec(3, "ct_zscore", intensity=(1.0, 2.0)) != PrepSpec(3, "ct_zscore", intensity=(1.0, 3.0))  # cache key


def test_ct_channel_plans_ct_zscore_with_the_dataset_numbers():
    planned, fields, why = loader_settings(["CT"], CT_STATS, 0.9, dims=3)
    assert fields == {"normalization": "ct_zscore", "ct_window": [-100.0, 200.0],
                      "intensity_mean": 50.0, "intensity_std": 25.0}
    assert planned == {"schemes": ["ct"], "use_mask_for_norm": [False]} and "CTNormalization" in why
    assert loader_settings(["CT"], CT_STATS, 0.9, dims=2)[1] == {"normalization": "ct", "ct_window": [-100.0, 200.0]}


def test_other_modalities_are_zscored_inside_the_mask_when_cropping_shrinks():
    planned, fields, why = loader_settings(["T1", "FLAIR"], CT_STATS * 2, 0.6, dims=3)
    assert fields == {"normalization": "zscore"} and planned["use_mask_for_norm"] == [True, True]
    assert "use_mask_for_norm" in why
    assert loader_settings(["T1"], CT_STATS, 0.8, dims=3)[0]["use_mask_for_norm"] == [False]  # >= 75% kept
    mixed_planned, mixed, mixed_why = loader_settings(["CT", "T2"], CT_STATS * 2, 0.6, dims=3)
    assert mixed == {"normalization": "zscore"} and mixed_planned["use_mask_for_norm"] == [False, True]
    assert "different schemes" in mixed_why
    assert loader_settings(["noNorm"], CT_STATS, 1.0, dims=3)[1] == {"normalization": "none"}
    assert loader_settings(["rescale_to_0_1"], CT_STATS, 1.0, dims=2)[1] == {"normalization": "minmax"}
