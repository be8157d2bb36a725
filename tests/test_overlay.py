"""SegmentationOverlay: files written, their colours, slice choice, case choice."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from segflow.evaluation.overlay import error_codes, pick_slices, render_overlays
from segflow.inference.records import PredictionRecord, PredictionSet
from segflow.nodes.base import RunContext
from segflow.nodes.evaluation import SegmentationOverlay, SegmentationOverlayConfig


def png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def nifti(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 3.0)) -> Path:
    nib.save(nib.Nifti1Image(arr.astype(np.float32), np.diag([*spacing, 1.0])), str(path))
    return path


def case2d(tmp: Path, name: str, shift: int) -> PredictionRecord:
    gt = np.zeros((40, 40), np.uint8)
    gt[10:30, 10:30] = 1
    pred = np.roll(gt, shift, axis=1)
    image = (gt * 150 + 50).astype(np.uint8)
    return PredictionRecord(name, png(tmp / f"{name}_p.png", pred), (png(tmp / f"{name}_i.png", image),),
                            png(tmp / f"{name}_l.png", gt))


def pixels(path: Path, where) -> int:
    """How many pixels of the PNG satisfy where(r, g, b) (alpha-blended colours are not exact)."""
    arr = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(np.count_nonzero(where(arr[..., 0], arr[..., 1], arr[..., 2])))


def red(r, g, b):
    return (r - np.maximum(g, b)) > 60


def blue(r, g, b):
    return ((b - np.maximum(r, g)) > 30) & (b > 120)


def test_error_codes_and_slice_choice():
    label = np.array([0, 1, 1, 2, 0])
    pred = np.array([1, 1, 0, 1, 0])
    assert error_codes(pred, label).tolist() == [2, 1, 3, 4, 0]
    vol_l = np.zeros((4, 4, 6), int)
    vol_p = np.zeros((4, 4, 6), int)
    vol_l[:, :, 1] = 1  # right
    vol_p[:, :, 1] = 1
    vol_p[:2, :, 4] = 1  # 8 wrong voxels
    vol_p[0, 0, 2] = 1  # 1 wrong voxel
    assert pick_slices(vol_p, vol_l, 2, 2) == [2, 4]  # most errors first, returned in order
    assert pick_slices(vol_p, vol_l, 2, 3) == [1, 2, 4]  # then the most foreground
    assert pick_slices(np.zeros((4, 4, 6), int), None, 2, 3) == [3]  # nothing anywhere: the middle


def test_2d_overlays_show_errors_in_their_colours(tmp_path):
    pset = PredictionSet([case2d(tmp_path, "good", 0), case2d(tmp_path, "bad", 6)], num_classes=2)
    paths = render_overlays(pset, tmp_path / "ov", alpha=0.5, selection="first", dpi=60, log=lambda s: None)
    assert [p.name for p in paths] == ["good.png", "bad.png", "grid.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    # the shifted case shows false positives (red) and misses (blue); the exact one shows neither
    assert pixels(paths[1], red) > 200 and pixels(paths[1], blue) > 200
    # only the legend's small swatches carry the error colours in the exact case
    assert pixels(paths[0], red) < pixels(paths[1], red) / 4
    assert pixels(paths[0], blue) < pixels(paths[1], blue) / 4


def test_custom_colours_reach_the_picture(tmp_path):
    pset = PredictionSet([case2d(tmp_path, "bad", 6)], num_classes=2)
    paths = render_overlays(pset, tmp_path / "ov", colours={"fp": "#ff00ff"}, dpi=60, log=lambda s: None)
    assert pixels(paths[0], lambda r, g, b: (r > 150) & (b > 150) & (g < 100)) > 200


def test_worst_cases_are_drawn_when_there_are_too_many(tmp_path):
    recs = [case2d(tmp_path, f"c{i}", shift) for i, shift in enumerate([0, 8, 1, 4])]
    lines = []
    paths = render_overlays(PredictionSet(recs), tmp_path / "ov", max_images=2, selection="worst", dpi=40,
                            log=lines.append)
    assert [p.name for p in paths] == ["c1.png", "c3.png", "grid.png"]
    paths = render_overlays(PredictionSet(recs), tmp_path / "ov2", max_images=2, selection="first", dpi=40,
                            log=lines.append)
    assert [p.name for p in paths] == ["c0.png", "c1.png", "grid.png"]


def test_3d_case_draws_one_row_per_chosen_slice_and_unlabelled_case(tmp_path):
    gt = np.zeros((24, 20, 8), np.uint8)
    gt[6:18, 5:15, 2:6] = 1
    pred = gt.copy()
    pred[6:18, 5:15, 5] = 0  # misses on slice 5 only
    img = nifti(tmp_path / "v_img.nii.gz", gt * 100.0)
    rec = PredictionRecord("vol/1", nifti(tmp_path / "v_p.nii.gz", pred), (img,), nifti(tmp_path / "v_l.nii.gz", gt),
                           spacing=(1.0, 1.0, 3.0))
    unl = PredictionRecord("nolabel", nifti(tmp_path / "n_p.nii.gz", pred), (img,), None, spacing=(1.0, 1.0, 3.0))
    paths = render_overlays(PredictionSet([rec, unl], spatial_dims=3), tmp_path / "ov", slices_per_case=2, dpi=50,
                            selection="first", log=lambda s: None)
    assert [p.name for p in paths] == ["vol_1.png", "nolabel.png", "grid.png"]
    one_slice = render_overlays(PredictionSet([rec], spatial_dims=3), tmp_path / "ov1", slices_per_case=1, dpi=50,
                                log=lambda s: None)[0]
    with Image.open(paths[0]) as two, Image.open(one_slice) as one:
        assert two.size[0] == one.size[0] and two.size[1] > one.size[1] * 1.4  # a row per slice
    assert pixels(one_slice, blue) > 100  # the missed slice is the one drawn


def test_node_config_and_run(tmp_path):
    cfg = SegmentationOverlayConfig(alpha="0.3", max_images="4", slices_per_case="2", colours={"tp": "lime"})
    assert cfg.alpha == 0.3 and cfg.max_images == 4 and cfg.colours["tp"] == "lime" and cfg.colours["fp"] == "#d62728"
    with pytest.raises(ValueError):
        SegmentationOverlayConfig(alpha=1.5)
    with pytest.raises(ValueError):
        SegmentationOverlayConfig(colours={"tp": "rgb(1,2,3)"})
    with pytest.raises(ValueError):
        SegmentationOverlayConfig(colours={"purple": "#ffffff"})
    bad = SegmentationOverlay.preflight(SegmentationOverlayConfig(colours={"fn": "notacolour"}), None)
    assert [f.field for f in bad] == ["colours.fn"]
    ctx = RunContext(run_dir=tmp_path / "run", workflow_name="t", log=lambda s: None)
    out = SegmentationOverlay("ov", SegmentationOverlayConfig(dpi=40), ctx).run(
        predictions=PredictionSet([case2d(tmp_path, "x", 3)]))
    assert out["images"] == [tmp_path / "run" / "overlays" / "x.png", tmp_path / "run" / "overlays" / "grid.png"]
    assert all(p.exists() for p in out["images"])
