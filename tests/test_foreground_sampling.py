"""Foreground-centred patches: where each class lies (prepare.foreground_index) and how a centre is
drawn from it (datasets.Centres): uniformly over the foreground, or class first (nnU-Net's rule)."""
from __future__ import annotations

import numpy as np
import pytest

import segflow.data.prepare as prepare
from segflow.data.datasets import Centres, sample_patch
from segflow.data.prepare import Prepared, foreground_index, load_prepared, save_prepared
from segflow.nodes.data import MedicalSegmentationLoader
from segflow.nodes.data import MedicalSegmentationLoaderConfig as Config


def two_classes(shape=(40, 40, 40)) -> np.ndarray:
    """Class 1: a 20³ block (8,000 voxels); class 2: a 2³ block (8 voxels), both far from the border."""
    label = np.zeros(shape, np.uint8)
    label[5:25, 5:25, 5:25] = 1
    label[30:32, 30:32, 30:32] = 2
    return label


def prepared(label: np.ndarray, case_id: str = "case") -> Prepared:
    fg, table = foreground_index(label, case_id)
    image = np.zeros((1, *label.shape), np.float32)
    return Prepared(case_id, image, label, None, None, fg, int(label.max()), table)


def centre_classes(prep: Prepared, centres: Centres, draws: int, seed: int = 0) -> np.ndarray:
    """The class under each drawn foreground centre (background when the patch was centred anywhere)."""
    rng = np.random.default_rng(seed)
    flat = prep.label.reshape(-1)
    picked = [centres.foreground(prep, rng) for _ in range(draws)]
    return np.array([0 if i is None else flat[i] for i in picked])


def test_index_holds_each_class_in_its_own_run():
    label = two_classes()
    fg, table = foreground_index(label, "a")
    assert table.tolist() == [[1, 8000, 8000], [2, 8008, 8]]
    flat = label.reshape(-1)
    assert set(flat[fg[:8000]]) == {1} and set(flat[fg[8000:]]) == {2}
    assert np.array_equal(fg[:8000], np.flatnonzero(flat == 1))  # ascending within a class


def test_large_classes_are_thinned_with_a_floor_per_class(monkeypatch):
    monkeypatch.setattr(prepare, "MAX_FG_INDICES", 1000)
    monkeypatch.setattr(prepare, "MIN_FG_PER_CLASS", 300)
    label = two_classes()
    fg, table = foreground_index(label, "a")
    # cap = max(300, 1000 // 2) = 500: class 1 keeps 500 of its 8,000 voxels, class 2 all 8
    assert table.tolist() == [[1, 500, 8000], [2, 508, 8]]
    assert set(label.reshape(-1)[fg[:500]]) == {1} and len(set(fg[:500].tolist())) == 500
    assert np.array_equal(fg, foreground_index(label, "a")[0])  # seeded by the case
    assert not np.array_equal(fg, foreground_index(label, "b")[0])


def test_by_class_centres_each_class_equally_often():
    prep = prepared(two_classes())
    classes = centre_classes(prep, Centres(1.0, by_class=True), 4000)
    assert abs(np.mean(classes == 2) - 0.5) < 0.04
    # any voxel: the 8-voxel class is centred about once per 1,000 patches
    classes = centre_classes(prep, Centres(1.0, by_class=False), 4000)
    assert np.mean(classes == 2) < 0.005 and set(classes.tolist()) <= {1, 2}


def test_any_stays_uniform_over_voxels_when_runs_are_thinned(monkeypatch):
    monkeypatch.setattr(prepare, "MAX_FG_INDICES", 200)
    monkeypatch.setattr(prepare, "MIN_FG_PER_CLASS", 100)
    label = np.zeros((50, 50), np.uint8)
    label[:40, :50] = 1  # 2,000 voxels, thinned to 100
    label[45:, :50] = 2  # 250 voxels, thinned to 100
    prep = prepared(label)
    assert prep.fg_classes[:, 1].tolist() == [100, 200]
    classes = centre_classes(prep, Centres(1.0), 4000)
    assert abs(np.mean(classes == 2) - 250 / 2250) < 0.02  # not 0.5, as the thinned runs alone would give


def test_pos_neg_set_the_share_of_foreground_centres():
    prep = prepared(two_classes())
    classes = centre_classes(prep, Centres.of(1.0, 2.0, by_class=True), 6000)
    assert abs(np.mean(classes > 0) - 1 / 3) < 0.03
    assert Centres.of(0.0, 1.0).p_fg == 0.0


def test_a_patch_is_centred_on_the_drawn_voxel():
    prep = prepared(two_classes())
    rng = np.random.default_rng(3)
    for _ in range(50):
        image, label = sample_patch(prep, (8, 8, 8), Centres(1.0, by_class=True), rng)
        assert label.shape == (8, 8, 8) and label[4, 4, 4] in (1, 2)


def test_disk_cache_keeps_the_class_table(tmp_path):
    prep = prepared(two_classes())
    save_prepared(tmp_path / "case", prep)
    back = load_prepared(tmp_path / "case")
    assert np.array_equal(back.fg, prep.fg) and np.array_equal(back.fg_classes, prep.fg_classes)


@pytest.mark.parametrize("word", ["by_class", "By-Class", "class", "class balanced", "per_class"])
def test_setting_spellings(word):
    assert Config(foreground_sampling=word).foreground_sampling == "by_class"


def test_setting_is_flagged_where_no_patch_is_cut():
    findings = MedicalSegmentationLoader.check(Config(synthetic="phantom2d", foreground_sampling="by_class"), {})
    assert [(f.field, f.code, f.severity) for f in findings] == [("foreground_sampling", "unused_value", "warning")]
    assert MedicalSegmentationLoader.check(Config(synthetic="phantom3d", foreground_sampling="by_class"), {}) == []
    assert MedicalSegmentationLoader.check(
        Config(synthetic="phantom2d", size_mode="patches", foreground_sampling="by_class"), {}) == []
