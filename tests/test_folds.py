"""Cross-validation folds (MedicalSegmentationLoader fold / num_folds / splits_file) and split.json."""
from __future__ import annotations

import json
import shutil

import data_helpers as h  # tests/ is on sys.path (pytest rootdir-relative import)
import pytest
from pydantic import ValidationError

from segflow.data.loader import build_loaders
from segflow.nodes.base import RunContext
from segflow.nodes.data import MedicalSegmentationLoader
from segflow.nodes.data import MedicalSegmentationLoaderConfig as Config


def info(**kw):
    return build_loaders(Config(image_size=32, augmentation=False, **kw), log=lambda *_: None)[2]


def test_folds_partition_the_cases_and_are_reproducible(phantom2d):
    folds = [info(data_dir=str(phantom2d), fold=k, num_folds=5) for k in range(5)]
    every = sorted(folds[0].train_cases + folds[0].val_cases)
    assert len(every) == 10 and len(set(every)) == 10
    vals = [set(f.val_cases) for f in folds]
    assert all(len(v) == 2 for v in vals)
    assert set().union(*vals) == set(every) and sum(map(len, vals)) == 10  # each case validates exactly once
    for f, v in zip(folds, vals):
        assert set(f.train_cases) == set(every) - v and f.num_train == 8 and f.num_val == 2
    assert info(data_dir=str(phantom2d), fold=3, num_folds=5).val_cases == folds[3].val_cases
    other_seed = [set(info(data_dir=str(phantom2d), fold=k, num_folds=5, seed=7).val_cases) for k in range(5)]
    assert other_seed != vals


def test_splits_final_json_is_used_as_nnunet_writes_it(phantom2d, tmp_path):
    data = shutil.copytree(phantom2d, tmp_path / "data")
    ids = sorted(info(data_dir=str(data)).train_cases + info(data_dir=str(data)).val_cases)
    splits = [{"train": ids[3:], "val": ids[:3]}, {"train": ids[:7], "val": ids[7:]}]
    (data / "splits_final.json").write_text(json.dumps(splits))
    got = info(data_dir=str(data), fold=1)  # found in data_dir; num_folds is the file's
    assert got.val_cases == ids[7:] and got.train_cases == ids[:7] and got.fold == 1
    elsewhere = tmp_path / "my_splits.json"
    elsewhere.write_text(json.dumps(splits[::-1]))
    assert info(data_dir=str(data), fold=1, splits_file=str(elsewhere)).val_cases == ids[:3]
    with pytest.raises(ValueError, match=r"fold 2 does not exist in .*splits_final.json, which lists 2 fold\(s\)"):
        info(data_dir=str(data), fold=2)


@pytest.mark.parametrize("content,message", [
    ([{"train": ["nope_001"], "val": []}], r"names 1 case\(s\) not in the dataset, e.g. \['nope_001'\]"),
    ({"train": [], "val": []}, r"expected a list of \{\"train\""),
    ("not json", r"not valid JSON"),
])
def test_bad_splits_file_is_a_clear_error(phantom2d, tmp_path, content, message):
    path = tmp_path / "splits.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=message):
        info(data_dir=str(phantom2d), fold=0, splits_file=str(path))
    with pytest.raises(ValueError, match=r"splits_file '.*missing.json' does not exist"):
        info(data_dir=str(phantom2d), fold=0, splits_file=str(tmp_path / "missing.json"))


def test_fold_errors_name_the_setting(phantom2d, tmp_path):
    with pytest.raises(ValueError, match=r"fold 5 does not exist with num_folds 5; folds are 0 to 4"):
        info(data_dir=str(phantom2d), fold=5)
    with pytest.raises(ValidationError, match=r"fold 4 does not exist with num_folds 3"):
        Config(fold=4, num_folds=3)  # caught by validate when both are written
    with pytest.raises(ValueError, match=r"10 case\(s\) cannot make 12 folds"):
        info(data_dir=str(phantom2d), fold=0, num_folds=12)
    folder = h.folder_png(tmp_path / "own_split", split=True)
    with pytest.raises(ValueError, match=r"has its own train/ and val/ split; remove fold"):
        info(data_dir=str(folder), fold=0)


def test_validate_warns_about_settings_a_fold_ignores():
    findings = MedicalSegmentationLoader.check(Config(fold=0, val_fraction=0.3), {})
    assert [(f.field, f.code, f.severity) for f in findings] == [("val_fraction", "unused_value", "warning")]
    findings = MedicalSegmentationLoader.check(Config(num_folds=10), {})
    assert [(f.field, f.code) for f in findings] == [("num_folds", "unused_value")]
    assert MedicalSegmentationLoader.check(Config(fold=1, num_folds=3), {}) == []


def test_node_writes_split_json_into_the_run_dir(phantom2d, tmp_path):
    ctx = RunContext(run_dir=tmp_path / "run", workflow_name="t", log=lambda s: None)
    out = MedicalSegmentationLoader("data", Config(data_dir=str(phantom2d), image_size=32, fold=2, num_folds=5),
                                    ctx).run()
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["fold"] == 2 and split["val"] == out["dataset_info"].val_cases and len(split["train"]) == 8
    assert split["data_dir"] == str(phantom2d)
