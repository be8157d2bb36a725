"""Post-processing: keeping the largest connected component, chosen on validation by nnU-Net's rule,
written as postprocessing.json by the Trainer and applied by the Predictor."""
import json

import numpy as np
import pytest
import torch
from data_helpers import load_benchmark
from torch.utils.data import DataLoader

from segflow.inference.postprocess import PostProcessing, keep_largest_component, outside_largest_component
from segflow.inference.postprocess_choice import choose, count_case
from segflow.nodes.base import RunContext
from segflow.nodes.inference import Predictor, PredictorConfig
from segflow.workflow import executor


def cube(shape, lo, size, value=1, into=None):
    out = np.zeros(shape, np.uint8) if into is None else into
    out[tuple(slice(a, a + size) for a in lo)] = value
    return out


def dice(pred, truth):
    return 2 * np.logical_and(pred, truth).sum() / (pred.sum() + truth.sum())


# ---- components --------------------------------------------------------------------------------

def test_components_are_fully_connected_and_ties_are_kept():
    mask = cube((12, 12, 12), (1, 1, 1), 4).astype(bool)
    mask[5, 5, 5] = True  # touches the cube at one corner only: the same component with 26-connectivity
    assert outside_largest_component(mask) is None
    mask[9:11, 9:11, 9:11] = True  # a separate 8-voxel blob
    removed = outside_largest_component(mask)
    assert removed.sum() == 8 and removed[9:11, 9:11, 9:11].all()
    tied = cube((12, 12, 12), (0, 0, 0), 3) | cube((12, 12, 12), (6, 6, 6), 3) | cube((12, 12, 12), (0, 9, 0), 2)
    removed = outside_largest_component(tied.astype(bool))
    assert removed.sum() == 8  # both 27-voxel cubes stay, as nnU-Net keeps every component of the largest size
    label = cube((8, 8), (0, 0), 3, value=2)
    label[6:8, 6:8] = 1
    out = keep_largest_component(label, (1, 2))
    assert (out == 2).sum() == 9 and (out == 1).sum() == 0 and keep_largest_component(out, (1, 2)) is out


# ---- the rule --------------------------------------------------------------------------------------

def _cases_with(truth_and_pred, n):
    return [count_case(p, t, n, f"case_{i}") for i, (t, p) in enumerate(truth_and_pred)]


def test_a_spurious_blob_is_removed_and_the_rule_is_chosen():
    shape = (24, 24, 24)
    pairs = []
    for i in range(3):
        truth = cube(shape, (2 + i, 3, 4), 8)
        pred = cube(shape, (3 + i, 3, 4), 8)  # a little off, and a spurious blob far away
        pairs.append((truth, cube(shape, (18, 18, 18), 3, into=pred)))
    rule, lines = choose(_cases_with(pairs, 2), 2)
    assert rule.steps == ((1,),) and "chosen" in lines[0]
    before, after = rule.report["dice"]["before"]["mean"], rule.report["dice"]["after"]["mean"]
    expected = np.mean([dice(rule.apply(p) == 1, t == 1) for t, p in pairs])
    assert after > before and after == pytest.approx(expected)
    assert before == pytest.approx(np.mean([dice(p == 1, t == 1) for t, p in pairs]))


def test_a_wrong_largest_component_is_left_alone():
    shape = (24, 24, 24)
    truth = cube(shape, (2, 2, 2), 4)
    pred = cube(shape, (12, 12, 12), 6, into=truth.copy())  # right small object, larger wrong one
    rule, lines = choose(_cases_with([(truth, pred)], 2), 2)
    assert rule.steps == () and "not chosen" in lines[0]
    assert rule.report["trials"][0]["mean_dice_after"] < rule.report["trials"][0]["mean_dice_before"]
    assert rule.apply(pred) is pred


def test_classes_are_decided_on_their_own_and_the_foreground_step_needs_every_class_to_hold():
    """Class 1 gains from its largest component, class 2 (truly two parts, a small one apart) would lose:
    the foreground step raises the mean but lowers class 2, so it is refused; the per-class steps keep
    class 1's only."""
    shape = (32, 32, 32)
    truth = cube(shape, (2, 2, 2), 10)
    cube(shape, (4, 4, 4), 4, value=2, into=truth)
    cube(shape, (20, 2, 2), 2, value=2, into=truth)
    pred = truth.copy()
    cube(shape, (20, 20, 2), 7, value=1, into=pred)  # a large spurious class-1 blob
    rule, lines = choose(_cases_with([(truth, pred)], 3), 3)
    fg = rule.report["trials"][0]
    assert fg["mean_dice_after"] > fg["mean_dice_before"] and fg["dice_after"]["2"] < fg["dice_before"]["2"]
    assert not fg["chosen"] and "class 2 got worse" in lines[0]
    assert rule.steps == ((1,),)
    assert [t["chosen"] for t in rule.report["trials"][1:]] == [True, False]
    out = rule.apply(pred)
    assert rule.report["dice"]["after"]["classes"] == {"1": pytest.approx(1.0), "2": pytest.approx(1.0)}
    np.testing.assert_array_equal(out, truth)


def test_per_class_trials_run_on_the_foreground_steps_output():
    """The foreground step removes a stray class-2 blob; class 1 then still gains from its own step."""
    shape = (32, 32, 32)
    truth = cube(shape, (2, 2, 2), 12)
    cube(shape, (4, 4, 4), 4, value=2, into=truth)
    pred = truth.copy()
    cube(shape, (25, 25, 25), 3, value=2, into=pred)  # far from everything: the foreground step drops it
    cube(shape, (20, 2, 20), 5, value=1, into=pred)
    cube(shape, (2, 25, 2), 2, value=1, into=pred)
    rule, _ = choose(_cases_with([(truth, pred)], 3), 3)
    assert rule.steps == ((1, 2),)  # the foreground step already removed both class-1 strays
    after = rule.report["dice"]["after"]["classes"]
    got = rule.apply(pred)
    assert after["1"] == pytest.approx(dice(got == 1, truth == 1)) and after["2"] == pytest.approx(1.0)


def test_cases_without_any_foreground_do_not_count_and_an_empty_set_chooses_nothing():
    shape = (10, 10)
    empty = np.zeros(shape, np.uint8)
    truth = cube(shape, (1, 1), 4)
    pred = cube(shape, (7, 7), 2, into=truth.copy())
    rule, _ = choose(_cases_with([(empty, empty), (truth, pred)], 2), 2)
    assert rule.steps == ((1,),) and rule.report["dice"]["after"]["mean"] == 1.0
    assert choose([], 2)[0].steps == ()


# ---- the file --------------------------------------------------------------------------------------

def test_the_file_round_trips_and_bad_files_are_named(tmp_path):
    rule = PostProcessing(((1, 2), (2,)), {"cases": 3, "dice": {"before": {"mean": 0.5}}})
    path = rule.write(tmp_path / "postprocessing.json")
    back = PostProcessing.read(path)
    assert back == rule and back.report == rule.report and back.path == path
    data = json.loads(path.read_text())
    assert data["steps"] == [{"operation": "keep_largest_component", "classes": [1, 2]},
                             {"operation": "keep_largest_component", "classes": [2]}]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**data, "steps": [{"operation": "keep_largest_component", "classes": [0]}]}))
    with pytest.raises(ValueError, match=r"bad.json: steps\[0\]"):
        PostProcessing.read(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.json: not a readable"):
        PostProcessing.read(bad)


# ---- the Predictor -----------------------------------------------------------------------------------

class Bright(torch.nn.Module):
    """Class 1 where the image is bright."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 8 * (x - 0.5)], dim=1)


def _two_blob_loader():
    image = torch.from_numpy(cube((16, 16), (1, 1), 6).astype(np.float32))
    image[12:14, 12:14] = 1.0
    return DataLoader([{"image": image[None], "case": "c0"}], batch_size=1)


def _predict(tmp_path, model, messages, **cfg):
    ctx = RunContext(run_dir=tmp_path, workflow_name="t", device="cpu", progress=False, log=messages.append)
    preds = Predictor("predict", PredictorConfig(device="cpu", **cfg), ctx).run(model=model, loader=_two_blob_loader())
    return np.load(preds["predictions"].records[0].prediction_path)


def _said(messages):
    return [m for m in messages if "post-processing" in m][-1]


def test_predictor_applies_its_setting_and_the_file_chosen_for_the_weights(tmp_path):
    from segflow.inference.postprocess import attach

    messages = []
    assert _predict(tmp_path, Bright(), messages, postprocessing="none").sum() == 40
    assert _predict(tmp_path, Bright(), messages, postprocessing="largest_component").sum() == 36
    assert _predict(tmp_path, Bright(), messages, postprocessing="largest_component",
                    postprocessing_classes=[1]).sum() == 36
    assert _predict(tmp_path, Bright(), messages).sum() == 40  # auto, and nothing known about the weights
    assert "no postprocessing.json is known" in _said(messages)
    chosen = PostProcessing(((1,),)).write(tmp_path / "run" / "postprocessing.json")
    model = Bright()
    attach(model, chosen)
    assert _predict(tmp_path, model, messages).sum() == 36
    assert "keep the largest component of class 1 (chosen on validation" in _said(messages)
    attach(model, None)  # decided: nothing to apply
    assert _predict(tmp_path, model, messages).sum() == 40
    assert _predict(tmp_path, Bright(), messages, postprocessing_file=str(chosen)).sum() == 36


def test_predictor_checks_its_postprocessing_settings(tmp_path):
    cfg = PredictorConfig(postprocessing="none", postprocessing_classes=[1], postprocessing_file="x.json")
    assert [(f.field, f.code, f.severity) for f in Predictor.check(cfg, {})] == [
        ("postprocessing_classes", "unused_value", "warning"), ("postprocessing_file", "unused_value", "warning")]
    missing = PredictorConfig(postprocessing_file=str(tmp_path / "nope.json"), device="cpu")
    assert [(f.field, f.code) for f in Predictor.preflight(missing, "cpu")] == [("postprocessing_file", "path_not_found")]
    assert PredictorConfig(postprocessing="Keep-Largest-Component", postprocessing_classes=[2, 1]).postprocessing \
        == "largest_component"
    for bad in ([0], [1, 1], []):
        with pytest.raises(ValueError):
            PredictorConfig(postprocessing_classes=bad)


# ---- end to end: a 3-D phantom trained for an epoch --------------------------------------------------

def test_training_writes_the_rule_and_the_predictor_applies_it(tmp_path, monkeypatch):
    from segflow.data.phantoms import write_phantom_dataset

    monkeypatch.chdir(tmp_path)
    write_phantom_dataset(tmp_path / "p3d", "3d", num_cases=4, size=(24, 20, 16), num_classes=3)
    nodes = [{"type": "MedicalSegmentationLoader", "name": "data",
              "config": {"data_dir": "p3d", "image_size": 16, "val_fraction": 0.5, "batch_size": 2}},
             {"type": "UNet3D", "name": "model", "config": {"out_channels": 3, "base_channels": 4, "depth": 2}},
             {"type": "LossFunction", "name": "loss", "config": {}},
             {"type": "Optimizer", "name": "opt", "config": {"learning_rate": 0.01}},
             {"type": "Trainer", "name": "trainer", "config": {"epochs": 1, "device": "cpu"}},
             {"type": "Predictor", "name": "predict", "config": {"device": "cpu"}}]
    (tmp_path / "wf.json").write_text(json.dumps({"workflow": "pp", "nodes": nodes}))
    messages = []
    run = executor.run_workflow(tmp_path / "wf.json", progress=False, log=messages.append)
    data = json.loads((run.run_dir / "postprocessing.json").read_text())
    assert data["cases"] == 2 and data["decided_by"]["node"] == "trainer" and data["decided_by"]["weights"] == "best"
    assert [t["classes"] for t in data["trials"]] == [[1, 2], [1], [2]]
    assert set(data["dice"]["before"]["classes"]) == {"1", "2"}
    chosen = [t["classes"] for t in data["trials"] if t["chosen"]]
    assert data["steps"] == [{"operation": "keep_largest_component", "classes": c} for c in chosen]
    assert any("post-processing chosen:" in m and "class 1" in m for m in messages)
    assert any("Predictor 'predict': post-processing:" in m and str(run.run_dir / "postprocessing.json") in m
               for m in messages)
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["postprocessing"] == str(run.run_dir / "postprocessing.json")


def test_trainer_postprocessing_none_writes_nothing(tmp_path):
    import toy

    from segflow.nodes.training import Trainer, TrainerConfig

    model = toy.tiny_net()
    train, val = toy.loaders(n_train=4, n_val=2)
    ctx = RunContext(run_dir=tmp_path, workflow_name="t", device="cpu", progress=False, log=lambda m: None)
    Trainer("trainer", TrainerConfig(epochs=1, postprocessing="none"), ctx).run(
        model=model, train_loader=train, val_loader=val, loss_fn=toy.CrossEntropy(),
        optimizer=torch.optim.Adam(model.parameters()))
    assert not (tmp_path / "postprocessing.json").exists()
    from segflow.inference.postprocess import attached

    assert attached(model) == (True, None)


def test_the_last_validation_counts_what_a_second_pass_counts(tmp_path):
    """The decision reuses the last epoch's validation counts when the output weights are that epoch's,
    and predicts the validation cases again when they are an earlier epoch's."""
    import toy

    from segflow.nodes.training import TrainerConfig
    from segflow.training.loop import TrainingRun

    torch.manual_seed(0)
    model = toy.tiny_net()
    train, val = toy.loaders(n_train=4, n_val=3, batch_size=2)
    ctx = RunContext(run_dir=tmp_path, workflow_name="t", device="cpu", progress=False, log=lambda m: None)
    job = TrainingRun(TrainerConfig(epochs=1), ctx, "t", model, train, val, toy.CrossEntropy(),
                      torch.optim.Adam(model.parameters(), lr=1e-2))
    job.run()
    epoch, counter = job.final_counts
    again = job._count_validation_cases()
    assert epoch == 1 and [c.case for c in counter.counted] == [f"case_{i:03d}" for i in range(3)]
    for a, b in zip(counter.counted, again.counted, strict=True):
        assert a.case == b.case and np.array_equal(a.plain, b.plain) and np.array_equal(a.foreground, b.foreground)
    first = json.loads((tmp_path / "postprocessing.json").read_text())
    assert first["decided_by"]["prediction_seconds"] == 0.0
    job._decide_postprocessing("best", 0)  # as if the best epoch were an earlier one
    second = json.loads((tmp_path / "postprocessing.json").read_text())
    assert second["decided_by"]["prediction_seconds"] > 0 and second["dice"] == first["dice"]


def test_the_speed_benchmark_runs_at_a_small_size(capsys):
    bench = load_benchmark("postprocess_speed")
    bench.main(["--size", "32", "--repeats", "1"])
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("volume 32^3") and [r.split()[0] for r in rows[2:]] == ["blobs", "speckle"]
    pred, truth = bench.label_map(32, "blobs")
    assert set(np.unique(truth)) == {0, 1, 2, 3} and (pred != truth).any()


def test_checkpoints_find_their_rule_beside_them_and_an_ensemble_needs_one_rule(tmp_path):
    from segflow.inference.postprocess import found_beside, shared_rule

    ckpts = []
    for k, steps in enumerate([((1, 2),), ((1, 2),), ((1,),)]):
        (tmp_path / f"fold_{k}" / "checkpoints").mkdir(parents=True)
        ckpts.append(str(tmp_path / f"fold_{k}" / "checkpoints" / "best.pt"))
        PostProcessing(steps).write(tmp_path / f"fold_{k}" / "postprocessing.json")
    assert found_beside(ckpts[0]) == tmp_path / "fold_0" / "postprocessing.json"
    path, why = shared_rule(ckpts[:2])
    assert path == tmp_path / "fold_0" / "postprocessing.json" and "classes 1, 2" in why
    path, why = shared_rule(ckpts)
    assert path is None and "choose differently" in why and "fold_2" in why
    (tmp_path / "fold_1" / "postprocessing.json").unlink()
    path, why = shared_rule(ckpts[:2])
    assert path is None and why.startswith(f"no post-processing: {ckpts[1]} has no postprocessing.json")
    assert shared_rule([str(tmp_path / "elsewhere" / "best.pt")]) == (None, "")
