"""The Trainer's two validation Dice figures: val_dice pooled over all voxels, val_dice_case_mean per case."""
import json

import pytest
import torch
import toy
from test_trainer import run_trainer

from segflow.training.metrics import ConfusionMeter


class Sign(torch.nn.Module):
    """Foreground where the image is positive, whatever training does (the parameter gets no gradient)."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        x = x + 0 * self.unused
        return torch.cat([-x, x], 1)


def _case(size, label_box, positive):
    """A (1, 1, size, size) image positive at `positive` pixels, its label 1 inside `label_box`."""
    image, label = -torch.ones(1, 1, size, size), torch.zeros(1, 1, size, size, dtype=torch.long)
    label[(0, 0) + label_box] = 1
    for yx in positive:
        image[(0, 0) + yx] = 1.0
    return image, label


# small: label 2×2, predicted 2 of its pixels and one outside it: tp 2, fp 1, fn 2 -> Dice 4/7
SMALL = _case(4, (slice(0, 2), slice(0, 2)), [(0, 0), (0, 1), (3, 3)])
# large: label 8×8, predicted exactly: Dice 1
LARGE = _case(16, (slice(0, 8), slice(0, 8)), [(y, x) for y in range(8) for x in range(8)])
POOLED = 2 * 66 / (2 * 66 + 1 + 2)  # tp 2+64, fp 1, fn 2
CASE_MEAN = (4 / 7 + 1.0) / 2
# background: small tp 11, fp 2, fn 1 -> 22/25; large all right -> 1; pooled tp 203, fp 2, fn 1
POOLED_0, CASE_MEAN_0 = 406 / 409, (22 / 25 + 1.0) / 2


def test_pooled_and_per_case_dice_of_two_cases_of_different_sizes():
    meter = ConfusionMeter(2, torch.device("cpu"))
    for name, (image, label) in (("small", SMALL), ("large", LARGE)):
        meter.update(Sign()(image), label, [name])
    out = meter.compute()
    assert out["dice"] == pytest.approx(POOLED) and out["dice_1"] == pytest.approx(POOLED)
    assert out["dice_case_mean"] == pytest.approx(CASE_MEAN) and out["dice_case_mean_1"] == pytest.approx(CASE_MEAN)
    assert out["dice_0"] == pytest.approx(POOLED_0) and out["dice_case_mean_0"] == pytest.approx(CASE_MEAN_0)
    assert abs(out["dice"] - out["dice_case_mean"]) > 0.15


def test_images_of_one_case_count_together_and_images_without_ids_are_cases():
    logits, labels = Sign()(torch.cat([SMALL[0]] * 2)), torch.cat([SMALL[1]] * 2)  # the small case twice
    together = ConfusionMeter(2, torch.device("cpu"))
    together.update(logits, labels, ["a", "a"])
    together.update(Sign()(LARGE[0]), LARGE[1], ["b"])
    assert together.compute()["dice_case_mean"] == pytest.approx((4 / 7 + 1.0) / 2)
    apart = ConfusionMeter(2, torch.device("cpu"))
    apart.update(logits, labels)  # no ids: each image a case
    apart.update(Sign()(LARGE[0]), LARGE[1])
    assert apart.compute()["dice_case_mean"] == pytest.approx((4 / 7 + 4 / 7 + 1.0) / 3)


def test_a_case_without_the_class_is_left_out_of_its_mean():
    meter = ConfusionMeter(3, torch.device("cpu"))
    logits = torch.zeros(2, 3, 2, 2)
    label = torch.zeros(2, 1, 2, 2, dtype=torch.long)
    logits[0, 1, 0, 0] = logits[1, 2, 0, 0] = 1  # case x: class 1 right; case y: class 2 spurious
    label[0, 0, 0, 0] = 1
    meter.update(logits, label, ["x", "y"])
    out = meter.compute()
    assert out["dice_case_mean_1"] == 1.0  # case y has no class 1 anywhere: not a zero
    assert out["dice_case_mean_2"] == 0.0
    assert out["dice_case_mean"] == pytest.approx(0.5)


def test_trainer_history_metrics_and_tensorboard_name_both(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    val = [{"image": SMALL[0], "label": SMALL[1], "case": ["small"]},
           {"image": LARGE[0], "label": LARGE[1], "case": ["large"]}]
    train = torch.utils.data.DataLoader(toy.Squares(4, 8), batch_size=2)
    lines = []
    model = Sign()
    _, history = run_trainer(tmp_path, model=model, loaders=(train, val), epochs=1, sliding_window=False,
                             monitor="val_dice_case_mean", log=lines.append)
    row = history[0]
    assert row["val_dice"] == pytest.approx(POOLED) and row["val_dice_case_mean"] == pytest.approx(CASE_MEAN)
    assert row["val_dice_case_mean_0"] == pytest.approx(CASE_MEAN_0)
    header = (tmp_path / "history.csv").read_text().splitlines()[0].split(",")
    assert {"val_dice", "val_dice_1", "val_dice_case_mean", "val_dice_case_mean_1"} <= set(header)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["monitor"] == "val_dice_case_mean" and metrics["best_value"] == pytest.approx(CASE_MEAN)
    assert metrics["definitions"]["val_dice"].startswith("Dice of all validation voxels pooled")
    assert metrics["definitions"]["val_dice_case_mean"].startswith("mean over validation cases of each case's Dice")
    assert any(f"val_dice (pooled) {POOLED:.4f}, val_dice_case_mean {CASE_MEAN:.4f}" in m for m in lines)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert events.Scalars("val/dice_case_mean")[0].value == pytest.approx(CASE_MEAN)


def test_the_per_case_mean_can_be_monitored(tmp_path):
    lines = []
    _, history = run_trainer(tmp_path, epochs=4, monitor="val_dice_case_mean", early_stopping=True, patience=2,
                             lr_schedule="plateau", log=lines.append)
    best_row = max(history, key=lambda r: r["val_dice_case_mean"])
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == best_row["epoch"]
    assert any(f"(epoch {best_row['epoch']}, val_dice_case_mean {best_row['val_dice_case_mean']:.4f})" in m
               for m in lines)
    assert not any("monitoring train_loss" in m for m in lines)


def test_numeric_case_ids_are_ids_not_image_numbers():
    meter = ConfusionMeter(2, torch.device("cpu"))
    logits, labels = Sign()(torch.cat([SMALL[0]] * 2)), torch.cat([SMALL[1]] * 2)
    meter.update(logits, labels, torch.tensor([7, 7]))  # one case, as a dataset with integer ids collates it
    meter.update(Sign()(LARGE[0]), LARGE[1])  # no id: image number 0, not case 7's neighbour
    meter.update(Sign()(LARGE[0]), LARGE[1], torch.tensor([0]))  # id 0 is not image number 0
    assert meter.compute()["dice_case_mean"] == pytest.approx((4 / 7 + 1.0 + 1.0) / 3)
