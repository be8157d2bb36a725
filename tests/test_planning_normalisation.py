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
    assert fields == {"normalization": "zscore_nonzero"} and planned["use_mask_for_norm"] == [True, True]
    assert "use_mask_for_norm" in why and "60%" in why
    assert loader_settings(["T1"], CT_STATS, 0.8, dims=3)[1] == {"normalization": "zscore"}  # >= 75% kept
    assert loader_settings(["T1"], CT_STATS, 0.8, dims=3)[0]["use_mask_for_norm"] == [False]
    assert loader_settings(["noNorm"], CT_STATS, 1.0, dims=3)[1] == {"normalization": "none"}
    assert loader_settings(["rescale_to_0_1"], CT_STATS, 1.0, dims=3)[1] == {"normalization": "minmax"}
    # nnU-Net divides RGB by 255: ct's mapping with the window [0, 255]
    assert loader_settings(["rgb_to_0_1"] * 3, CT_STATS * 3, 1.0, dims=3)[1] == {"normalization": "ct",
                                                                                "ct_window": [0.0, 255.0]}


def test_mixed_channels_get_what_nnunet_applies_to_each():
    mr_stats = {"mean": 7.0, "std": 2.0, "percentile_00_5": 1.0, "percentile_99_5": 9.0}
    planned, fields, why = loader_settings(["CT", "T2"], [CT_STATS[0], mr_stats], 0.6, dims=3)
    assert planned["use_mask_for_norm"] == [False, True]  # CT keeps its outside: only z-score uses the mask
    assert fields == {"channel_normalization": ["ct_zscore", "zscore_nonzero"], "ct_window": [[-100.0, 200.0], None],
                      "intensity_mean": [50.0, None], "intensity_std": [25.0, None]}
    assert "channel 0 'CT': ct_zscore" in why and "channel 1 'T2': zscore_nonzero" in why
    _, two_ct, _ = loader_settings(["CT", "CT"], [CT_STATS[0], mr_stats], 1.0, dims=3)
    assert two_ct == {"normalization": "ct_zscore", "ct_window": [[-100.0, 200.0], [1.0, 9.0]],
                      "intensity_mean": [50.0, 7.0], "intensity_std": [25.0, 2.0]}


def test_two_d_keeps_one_setting_in_unit_range():
    """2-D images stay in [0, 1] for augmentation: today's one setting for all channels, and the reason says so."""
    mixed_planned, mixed, why = loader_settings(["CT", "T2"], CT_STATS * 2, 0.6, dims=2)
    assert mixed == {"normalization": "zscore"} and mixed_planned["use_mask_for_norm"] == [False, True]
    assert "different schemes" in why and "stay in [0, 1]" in why and "zscore_nonzero is for volumes" in why
    assert loader_settings(["T1"] * 4, CT_STATS * 4, 0.5, dims=2)[1] == {"normalization": "zscore"}
    assert loader_settings(["rescale_to_0_1"], CT_STATS, 1.0, dims=2)[1] == {"normalization": "minmax"}


# --- zscore_nonzero and normalisation per channel ---------------------------------------------------

def _body_with_a_hole(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 2-channel volume, zero outside a box; inside it a zero hole in both channels (a dark region
    the mask still covers) and a slab where only channel 1 is nonzero (the mask is their union).
    Returns the image and the mask nnU-Net's create_nonzero_mask gives, built by hand."""
    image = np.zeros((2, 12, 10, 8), np.float32)
    mask = np.zeros((12, 10, 8), bool)
    mask[2:10, 2:8, 1:7] = True
    image[:, mask] = rng.normal([[100.0], [-50.0]], [[20.0], [5.0]], size=(2, mask.sum()))
    image[:, 5:7, 4:6, 3:5] = 0  # the hole, enclosed: filled, so inside the mask
    image[0, 2:10, 2:8, 1] = 0  # channel 0 is zero on this slab, channel 1 is not: still inside
    return image, mask


def test_zscore_nonzero_equals_numpy_inside_the_filled_union_mask():
    image, mask = _body_with_a_hole(np.random.default_rng(0))
    out = normalize(image, "zscore_nonzero")
    for c in range(2):
        inside = image[c][mask]
        np.testing.assert_allclose(out[c][mask], (inside - inside.mean()) / inside.std(), rtol=1e-5, atol=1e-5)
        assert (out[c][~mask] == 0).all()
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="zscore_nonzero is for 3-D"):
        normalize(image[:, :, :, 0], "zscore_nonzero", for_2d=True)


def _ct_mr_msd(root, n: int = 2, modalities=("CT", "MR"), background: bool = False):
    """3-D MSD cases with one 4-D NIfTI per case, one channel per modality: CT-like values everywhere,
    MR-like values (zero outside a box when `background`)."""
    from data_helpers import case_3d, save_nifti

    training = []
    for i in range(n):
        base, label = case_3d(i)
        rng = np.random.default_rng(i)
        channels = [base.astype(np.float32) * 3 - 200 if m == "CT" else 400 + base + rng.normal(0, 30, base.shape)
                    for m in modalities]
        image = np.stack(channels, axis=-1).astype(np.float32)
        if background:
            keep = np.zeros(base.shape, bool)
            keep[4:16, 4:14, 2:10] = True
            image[~keep] = 0
        save_nifti(root / "imagesTr" / f"v{i}.nii.gz", image)
        save_nifti(root / "labelsTr" / f"v{i}.nii.gz", label)
        training.append({"image": f"./imagesTr/v{i}.nii.gz", "label": f"./labelsTr/v{i}.nii.gz"})
    meta = {"name": "ctmr", "labels": {"0": "background", "1": "lesion"},
            "modality": {str(i): m for i, m in enumerate(modalities)}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_ct_and_mr_channels_each_get_their_own_normalisation(tmp_path):
    import nibabel as nib

    from segflow.data.loader import discover
    from segflow.data.prepare import cache_key

    data = _ct_mr_msd(tmp_path / "ds")
    settings = dict(data_dir=str(data), channel_normalization=["ct_zscore", "zscore"], ct_window=[[-150.0, 90.0], None],
                    intensity_mean=[-40.0, None], intensity_std=[30.0, None])
    spec = discover(MedicalSegmentationLoaderConfig(**settings)).spec
    case = find_cases(data).cases[0]
    prepared = prepare_case(case, spec)
    raw = np.moveaxis(np.asanyarray(nib.load(str(case.images[0])).dataobj).astype(np.float32), -1, 0)
    np.testing.assert_allclose(prepared.image[0], (np.clip(raw[0], -150, 90) + 40) / 30, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prepared.image[1], (raw[1] - raw[1].mean()) / raw[1].std(), rtol=1e-4, atol=1e-5)
    other = discover(MedicalSegmentationLoaderConfig(**{**settings, "intensity_std": [31.0, None]})).spec
    assert cache_key(case, other) != cache_key(case, spec)  # the disk cache never serves other numbers


def _loader_findings(**config) -> list[tuple[str, str, str]]:
    """(code, path, severity) of what `segflow validate` reports for a loader with this config."""
    from segflow.cli import main

    return _validate_json(main, {"workflow": "w", "nodes": [
        {"type": "MedicalSegmentationLoader", "name": "data_loader", "config": config}]})


def _validate_json(main, doc) -> list[tuple[str, str, str]]:
    import contextlib
    import io
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "wf.json"
        path.write_text(json.dumps(doc))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(["validate", "--format", "json", str(path)])
    (report,) = json.loads(out.getvalue())
    return [(i["code"], i["path"], i["severity"]) for i in report["issues"]]


PER_CHANNEL = dict(channel_normalization=["ct_zscore", "zscore"], ct_window=[[-100, 200], None],
                   intensity_mean=[40, None], intensity_std=[20, None])


@pytest.mark.parametrize("change,expected", [
    ({}, []),
    ({"intensity_std": [20, None, None]}, [("bad_value", "nodes[0].config.intensity_std", "error")]),
    ({"ct_window": [[-100, 200]]}, [("bad_value", "nodes[0].config.ct_window", "error")]),
    ({"intensity_mean": [None, None]}, [("missing_value", "nodes[0].config.intensity_mean", "error")]),
    ({"ct_window": [None, [0, 1]]}, [("missing_value", "nodes[0].config.ct_window", "error")]),
    ({"channel_normalization": ["ct_zscore", "zscore_nonzero"], "spatial_dims": 2},
     [("bad_value", "nodes[0].config.channel_normalization", "error")]),
    ({"channel_normalization": ["ct", "zscore"], "spatial_dims": 2},
     [("bad_value", "nodes[0].config.channel_normalization", "error")]),
    ({"channel_normalization": ["CT", "MinMax"], "spatial_dims": 2}, []),  # both stay in [0, 1]
    ({"normalization": "zscore_nonzero", "channel_normalization": None, "spatial_dims": 2},
     [("bad_value", "nodes[0].config.normalization", "error")]),
    ({"normalization": "minmax"}, [("unused_value", "nodes[0].config.normalization", "warning")]),
    ({"synthetic": "phantom3d"}, [("bad_value", "nodes[0].config.channel_normalization", "error")]),
    ({"ct_window": [[200, -100], None]}, [("bad_value", "nodes[0].config.ct_window", "error")]),
])
def test_per_channel_settings_are_checked_by_validate(change, expected):
    assert _loader_findings(**{**PER_CHANNEL, **change}) == expected


def test_channel_words_may_repeat_and_numbers_may_be_shared():
    config = MedicalSegmentationLoaderConfig(channel_normalization="ct_zscore, CT zscore", intensity_mean=0,
                                             intensity_std=1, ct_window=[-100, 200])
    assert config.channel_normalization == ["ct_zscore", "ct_zscore"]  # one word per channel, repeats kept
    assert _loader_findings(channel_normalization=["ct_zscore", "ct_zscore"], intensity_mean=0, intensity_std=1) == []


def test_a_channel_count_the_data_does_not_have_is_one_clear_error(tmp_path):
    from segflow.workflow.errors import NodeRunError
    from segflow.workflow.executor import run_workflow

    data = _ct_mr_msd(tmp_path / "ds", n=3)
    doc = {"workflow": "w", "nodes": [{"type": "MedicalSegmentationLoader", "name": "data_loader", "config": {
        "data_dir": str(data), "channel_normalization": ["ct_zscore", "zscore", "zscore"],
        "intensity_mean": [0, None, None], "intensity_std": [1, None, None], "num_workers": 0}}]}
    (tmp_path / "wf.json").write_text(json.dumps(doc))
    with pytest.raises(NodeRunError) as e:
        run_workflow(tmp_path / "wf.json", run_dir=tmp_path / "run", progress=False, log=lambda line: None)
    message = str(e.value)
    assert message.startswith("node 'data_loader' (MedicalSegmentationLoader) failed: ")
    assert "channel_normalization, intensity_mean and intensity_std have 3 entries, one per image channel" in message
    assert "the images have 2 channel(s)" in message and message.count("case v") == 1  # said once, not per case


def _plan(capsys, data, out) -> dict:
    """The loader config `segflow plan` writes for `data`; the workflow validates without warnings."""
    from segflow.cli import main
    from segflow.workflow import spec

    code = main(["plan", str(data), "-o", str(out), "--no-progress", "--gpu-memory", "8", "--explain"])
    assert code == 0, capsys.readouterr().err
    assert [w.code for w in spec.load(out).warnings] == []
    return json.loads(out.read_text())["nodes"][0]["config"]


def test_planned_mr_with_a_zero_background_is_zscored_inside_the_nonzero_mask(tmp_path, capsys):
    from segflow.data.loader import discover

    data = _ct_mr_msd(tmp_path / "mr", n=3, modalities=("T1", "T1c", "T2", "FLAIR"), background=True)
    loader = _plan(capsys, data, tmp_path / "wf.json")
    assert loader["normalization"] == "zscore_nonzero" and "channel_normalization" not in loader
    assert "zscore_nonzero: cropping to the nonzero region" in capsys.readouterr().out
    prepared = prepare_case(find_cases(data).cases[0], discover(MedicalSegmentationLoaderConfig(**loader)).spec)
    inside = np.zeros(prepared.image.shape[1:], bool)
    inside[4:16, 4:14, 2:10] = True  # where _ct_mr_msd kept the image
    assert prepared.image.shape[0] == 4 and (prepared.image[:, ~inside] == 0).all()
    np.testing.assert_allclose(prepared.image[:, inside].mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(prepared.image[:, inside].std(axis=1), 1, atol=1e-4)


def test_planned_ct_and_mr_get_per_channel_settings_with_the_ct_numbers(tmp_path, capsys):
    data = _ct_mr_msd(tmp_path / "ctmr", n=3)
    loader = _plan(capsys, data, tmp_path / "wf.json")
    ct = json.loads((data / ".segflow_plan" / "fingerprint.json").read_text())["foreground_intensity"][0]
    assert loader["channel_normalization"] == ["ct_zscore", "zscore"]
    assert loader["ct_window"] == [[pytest.approx(ct["percentile_00_5"], rel=1e-5),
                                    pytest.approx(ct["percentile_99_5"], rel=1e-5)], None]
    assert loader["intensity_mean"] == [pytest.approx(ct["mean"], rel=1e-5), None]
    assert loader["intensity_std"] == [pytest.approx(ct["std"], rel=1e-5), None]
    assert "normalization ['ct_zscore', 'zscore']" in capsys.readouterr().out
    assert '"ct_window": [[' in (tmp_path / "wf.json").read_text()  # one line, as a person writes it


def test_two_d_images_take_one_treatment_for_every_channel(tmp_path):
    from data_helpers import folder_png

    from segflow.data.intensity import two_d_word
    from segflow.data.loader import build_loaders

    assert two_d_word(["ct", "minmax"]) == "minmax" and two_d_word(["zscore", "zscore"]) == "zscore"
    with pytest.raises(ValueError, match="mixes treatments"):
        two_d_word(["ct", "zscore"])
    data = folder_png(tmp_path / "png", n=4)
    for words, window in ((["ct"], [[0, 255]]), (["zscore"], [-175, 250])):
        config = MedicalSegmentationLoaderConfig(data_dir=str(data), channel_normalization=words, ct_window=window,
                                                 image_size=32, augmentation=False, num_workers=0)
        _, val, _ = build_loaders(config, log=lambda *_: None)
        image = next(iter(val))["image"]
        if words == ["ct"]:  # x / 255, kept in [0, 1]
            assert 0 <= float(image.min()) and float(image.max()) <= 1 and float(image.max()) > 0.5
        else:  # z-scored after the [0, 1] stage, as normalization zscore
            assert abs(float(image[0].mean())) < 1e-3 and abs(float(image[0].std()) - 1) < 1e-2
