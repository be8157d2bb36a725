"""Atomic writes and JSON with NaN/Infinity as null (segflow.workflow.files)."""
import json
import math

import pytest

from segflow.workflow.files import atomic_write, json_text, write_json


def test_json_nan_and_infinity_become_null_but_text_that_spells_them_stays():
    data = {"run": "runs/Infinity-run/NaN", "dice": math.nan, "hd95": [1.5, math.inf, -math.inf], "t": (1, 2)}
    text = json_text(data)
    assert json.loads(text) == {"run": "runs/Infinity-run/NaN", "dice": None, "hd95": [1.5, None, None], "t": [1, 2]}
    assert "NaN" not in text.replace("Infinity-run/NaN", "")


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_json(tmp_path / "m.json", {"a": 1})

    def half_then_fail(f):
        f.write(b'{"a": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_fail, durable=True)
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
