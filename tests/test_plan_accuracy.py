"""benchmarks/plan_accuracy.py compares the planned workflow with the hand-written default fairly: the same
optimizer steps, the same validation cases, workflows that validate. Whether the planned one scores
better is the benchmark's to measure (docs/benchmarks.md); a few CPU steps cannot show it without a
flaky test, so the tests hold the comparison's fairness and its plumbing."""
import json
from pathlib import Path

import pytest
from data_helpers import load_benchmark

from segflow.cli import main
from segflow.workflow import spec

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("plan_accuracy")


def test_both_workflows_take_the_same_steps(bench):
    # 10 cases: ceil(10 x 0.2) = 2 validate, 8 train; 8 x 5 patches in batches of 2 = 20 steps an epoch
    assert bench.steps_per_epoch(10, 5, 2) == 20
    assert bench.steps_per_epoch(10, 5, 3) == 14  # the last, smaller batch is a step too
    assert bench.matching_samples_per_volume(10, 20, 2) == 5
    assert bench.matching_samples_per_volume(10, 20, 4) == 10  # a default with twice the batch
    with pytest.raises(SystemExit, match="no samples_per_volume gives 20 steps per epoch at batch 3"):
        bench.matching_samples_per_volume(10, 20, 3)


def test_default_image_size_is_96_or_the_largest_that_fits(bench):
    assert bench.fitting_image_size([[128, 130, 200], [140, 128, 100]]) == [96, 96, 96]
    assert bench.fitting_image_size([[48, 48, 18], [48, 49, 14]]) == [48, 48, 16]  # UNet3D needs multiples of 16
    assert bench.fitting_image_size([[32, 32, 24]]) == [32, 32, 16]


def test_both_workflows_validate_and_score_the_same_cases(bench, tmp_path, capsys):
    """The planned workflow with its added TTA-free Predictor/Evaluator pair (explicit links), and the
    default, both validate, and both loaders split the same cases off for validation."""
    data = bench.write_ct_like(tmp_path / "ct", num_cases=5, shape=(32, 32, 8))
    planned = tmp_path / "planned.json"
    assert main(["plan", str(data), "-o", str(planned), "--gpu-memory", "8", "--no-progress"]) == 0
    capsys.readouterr()
    document = json.loads(planned.read_text())
    bench.add_plain_prediction(document)
    planned.write_text(json.dumps(document))
    default = tmp_path / "default.json"
    default.write_text(json.dumps(bench.default_workflow(str(data), 1, 4, [32, 32, 16], 2, 3, 2)))
    workflows = [spec.load(path) for path in (planned, default)]
    assert [w.code for wf in workflows for w in wf.warnings] == []
    assert {n.config.val_fraction for wf in workflows for n in wf.nodes.values() if n.type == "MedicalSegmentationLoader"} \
        == {bench.VAL_FRACTION}
    assert {n.config.seed for wf in workflows for n in wf.nodes.values() if n.type == "MedicalSegmentationLoader"} == {42}
    predictors = {name: n.config for name, n in workflows[0].nodes.items() if n.type == "Predictor"}
    assert predictors["predictor"].tta == ["flip"] and predictors["predictor_plain"].tta is False


@pytest.mark.slow
def test_benchmark_runs_end_to_end_on_a_tiny_set(bench, tmp_path, capsys):
    """One epoch of one step on 5 cases of 32x32x8: both rows, equal steps, the same validation case,
    Dice for every class in [0, 1] (the script itself refuses an unequal comparison)."""
    code = bench.main(["--datasets", "ct", "--cases", "5", "--ct-shape", "32,32,8", "--epochs", "1",
                       "--samples-per-volume", "1", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert code == 0 and [r["workflow"] for r in rows] == ["planned", "default"]
    assert rows[0]["steps"] == rows[1]["steps"] == 2 and rows[0]["cases"] == rows[1]["cases"]
    for r in rows:
        assert list(r["dice"]) == ["organ", "kidney", "lesion"] and all(0 <= d <= 1 for d in r["dice"].values())
    assert "| planned, no TTA |" in out and "targets: planned >= default in every class:" in out
