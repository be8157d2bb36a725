"""Mixup and CutMix (the Trainer's mixup_alpha, cutmix_alpha, mixup_prob): the mixed batch against the
formulas, soft targets through the losses, the validate-time refusal of the boundary loss, training on
the phantom, and an exact resume."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import toy
from data_helpers import run_quickstart

from segflow.data.loader import build_loaders
from segflow.losses.segmentation import SegmentationLoss, build_loss
from segflow.nodes.base import RunContext
from segflow.nodes.data import MedicalSegmentationLoaderConfig
from segflow.nodes.losses import LossFunctionConfig
from segflow.nodes.training import Trainer, TrainerConfig
from segflow.training import checkpoint
from segflow.training.mixing import BatchMix, Mixed, box_fraction, cutmix_box
from segflow.workflow import spec
from segflow.workflow.errors import WorkflowError

ROOT = Path(__file__).resolve().parents[1]


def batch(shape: tuple[int, ...], n: int = 3, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, *shape, generator=g), torch.randint(0, classes, (n, 1, *shape), generator=g)


def one_hot(label: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(label[:, 0], classes).movedim(-1, 1).float()


# ---- the mixed batch ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 5), (4, 5, 3)])
def test_mixup_blends_images_and_one_hot_labels_by_the_formula(shape):
    image, label = batch(shape)
    perm = torch.tensor([2, 0, 1])
    mixed = Mixed("mixup", 0.3, perm)
    assert torch.allclose(mixed.images(image), 0.3 * image + 0.7 * image[perm], atol=1e-6)
    target = mixed.labels(label, 3)
    assert target.dtype == torch.float32 and target.shape == (3, 3, *shape)
    assert torch.allclose(target, 0.3 * one_hot(label, 3) + 0.7 * one_hot(label[perm], 3), atol=1e-6)
    assert torch.allclose(target.sum(1), torch.ones(3, *shape))
    binary = label.clamp(max=1)  # one output channel: the target is the foreground's probability
    assert torch.allclose(mixed.labels(binary, 1), 0.3 * binary.float() + 0.7 * binary[perm].float(), atol=1e-6)


@pytest.mark.parametrize("shape, box", [((6, 5), ((1, 4), (2, 5))), ((4, 5, 3), ((0, 2), (1, 4), (1, 3)))])
def test_cutmix_pastes_one_region_of_the_permuted_batch_into_images_and_labels(shape, box):
    image, label = batch(shape)
    perm = torch.tensor([1, 2, 0])
    mixed = Mixed("cutmix", 1 - box_fraction(box, shape), perm, box)
    expected_image, expected_label = image.clone(), label.clone()
    for i in range(3):
        for voxel in torch.cartesian_prod(*(torch.arange(a, b) for a, b in box)).view(-1, len(shape)).tolist():
            expected_image[(i, slice(None), *voxel)] = image[(perm[i], slice(None), *voxel)]
            expected_label[(i, slice(None), *voxel)] = label[(perm[i], slice(None), *voxel)]
    assert torch.equal(mixed.images(image), expected_image)
    pasted = mixed.labels(label, 3)
    assert pasted.dtype == label.dtype and torch.equal(pasted, expected_label)  # hard labels, any loss takes them
    assert mixed.lam == pytest.approx(1 - math.prod(b - a for a, b in box) / math.prod(shape))


@pytest.mark.parametrize("shape", [(16, 16), (8, 8, 8)])
def test_the_cutmix_box_has_sides_of_one_minus_lam_and_lam_is_the_fraction_left(shape):
    torch.manual_seed(0)
    d = len(shape)
    side = int(shape[0] * 0.5)  # lam = 1 - 0.5**d: half of every side
    for _ in range(200):
        box = cutmix_box(shape, 1 - 0.5**d)
        for (a, b), size in zip(box, shape):
            assert 0 <= a < b <= size and b - a <= side
            if 0 < a and b < size:  # not cut at an edge: the full side
                assert b - a == side
    image, _ = batch(shape, n=4)
    seen_clipped = False
    for _ in range(50):
        mixed = BatchMix(cutmix_alpha=1.0).draw(image)
        assert mixed.kind == "cutmix" and mixed.lam == pytest.approx(1 - box_fraction(mixed.box, shape))
        changed = (mixed.images(image) != image).any(1)  # (B, *S)
        region = torch.zeros(shape, dtype=torch.bool)
        region[tuple(slice(a, b) for a, b in mixed.box)] = True
        moved = mixed.perm != torch.arange(4)
        assert torch.equal(changed[moved], region.expand(int(moved.sum()), *shape))  # every image differs
        assert not changed[~moved].any()
        seen_clipped |= any(a == 0 or b == s for (a, b), s in zip(mixed.box, shape))
    assert seen_clipped


def test_mixup_prob_and_the_choice_between_the_two():
    torch.manual_seed(0)
    image, _ = batch((4, 4))
    draws = [BatchMix(mixup_alpha=0.2, prob=0.3).draw(image) for _ in range(1000)]
    assert 0.25 < sum(d is not None for d in draws) / 1000 < 0.35
    kinds = [BatchMix(mixup_alpha=0.2, cutmix_alpha=1.0).draw(image).kind for _ in range(1000)]
    assert 0.45 < kinds.count("cutmix") / 1000 < 0.55
    lams = torch.tensor([d.lam for d in draws if d is not None])
    assert ((lams < 0.1) | (lams > 0.9)).float().mean() > 0.5  # Beta(0.2, 0.2) keeps most pairs near one image
    assert BatchMix(mixup_alpha=0.2, prob=0.0).draw(image) is None and BatchMix().draw(image) is None


# ---- soft targets through the losses --------------------------------------------------------------

def test_dice_and_cross_entropy_of_a_soft_target_equal_a_hand_computation():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2): two pixels, two classes
    target = torch.tensor([[[[0.7, 0.2]], [[0.3, 0.8]]]])
    p = torch.softmax(logits, 1)
    p0, p1 = p[0, :, 0, 0].tolist(), p[0, :, 0, 1].tolist()
    t0, t1 = [0.7, 0.3], [0.2, 0.8]
    ce = -(sum(t * math.log(q) for t, q in zip(t0, p0)) + sum(t * math.log(q) for t, q in zip(t1, p1))) / 2
    smooth = 1e-5
    dice = 0.0
    for c in range(2):  # per class: 1 - (2 sum p t + s) / (sum p + sum t + s), then the mean
        pt = p0[c] * t0[c] + p1[c] * t1[c]
        dice += 1 - (2 * pt + smooth) / (p0[c] + p1[c] + t0[c] + t1[c] + smooth)
    dice /= 2
    combined = build_loss(LossFunctionConfig(loss_type="combined", dice_weight=0.5, ce_weight=0.5))
    assert combined(logits, target).item() == pytest.approx(0.5 * dice + 0.5 * ce, rel=1e-5)
    assert combined.last_terms["dice"].item() == pytest.approx(dice, rel=1e-5)
    assert combined.last_terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    # label smoothing keeps working: the soft target is smoothed as t (1 - ls) + ls / C
    ls = 0.2
    smoothed = -(sum(((1 - ls) * t + ls / 2) * math.log(q) for t, q in zip(t0, p0))
                 + sum(((1 - ls) * t + ls / 2) * math.log(q) for t, q in zip(t1, p1))) / 2
    assert build_loss(LossFunctionConfig(loss_type="cross_entropy", label_smoothing=ls))(logits, target).item() \
        == pytest.approx(smoothed, rel=1e-5)


@pytest.mark.parametrize("classes", [1, 2, 3])
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1}, {"class_weights": True, "label_smoothing": 0.2},
                                     {"include_background": False}, {"sigmoid": True}])
@pytest.mark.parametrize("terms", [{"dice": 1}, {"ce": 1}, {"focal": 1}, {"tversky": 1}, {"dice": 0.5, "ce": 0.5}])
def test_a_one_hot_soft_target_gives_what_the_class_indices_give(classes, options, terms):
    if classes == 1 and options.get("include_background") is False:
        pytest.skip("one channel: dice always counts it")
    options = dict(options)
    if options.get("class_weights"):
        options["class_weights"] = [0.3, 0.7, 1.5][:max(classes, 2)]
    torch.manual_seed(0)
    logits = torch.randn(2, classes, 5, 6)
    label = torch.randint(0, max(classes, 2), (2, 1, 5, 6))
    soft = label.float() if classes == 1 else one_hot(label, classes)
    loss = SegmentationLoss(terms, **options)
    assert loss(logits, soft).item() == pytest.approx(loss(logits, label).item(), abs=1e-5)


def test_the_boundary_term_refuses_soft_targets():
    loss = SegmentationLoss({"dice": 1.0, "boundary": 0.1})
    assert not loss.takes_soft_targets and SegmentationLoss({"dice": 1.0, "focal": 1.0}).takes_soft_targets
    with pytest.raises(ValueError, match="boundary term, which needs hard labels"):
        loss(torch.randn(1, 2, 4, 4), torch.full((1, 2, 4, 4), 0.5))
    with pytest.raises(ValueError, match="does not fit logits"):
        SegmentationLoss({"dice": 1.0})(torch.randn(1, 3, 4, 4), torch.full((1, 2, 4, 4), 0.5))


# ---- the config, validate and the Trainer's refusal -----------------------------------------------

WORKFLOW = {
    "workflow": "mix",
    "nodes": [
        {"type": "MedicalSegmentationLoader", "name": "data", "config": {"data_dir": "p", "synthetic": "phantom2d"}},
        {"type": "UNet2D", "name": "model", "config": {"in_channels": 1, "out_channels": 2}},
        {"type": "LossFunction", "name": "loss", "config": {"loss_type": "combined", "dice_weight": 1,
                                                             "boundary_weight": 0.1}},
        {"type": "Optimizer", "name": "optimizer", "config": {"optimizer_type": "Adam"}},
        {"type": "Trainer", "name": "trainer", "config": {"epochs": 2, "mixup_alpha": 0.2}},
    ],
}


def _load(tmp_path, trainer: dict, loss: dict | None = None):
    workflow = json.loads(json.dumps(WORKFLOW))
    workflow["nodes"][4]["config"] = trainer
    if loss is not None:
        workflow["nodes"][2]["config"] = loss
    path = tmp_path / "wf.json"
    text = json.dumps(workflow, indent=1)
    path.write_text(text)
    return text, spec.load(path)


def test_validate_refuses_mixup_with_the_boundary_loss_at_the_field(tmp_path):
    with pytest.raises(WorkflowError) as info:
        _load(tmp_path, {"epochs": 2, "mixup_alpha": 0.2})
    text = (tmp_path / "wf.json").read_text()
    issues = info.value.issues
    assert [(i.code, i.node, i.path, i.severity) for i in issues] == \
        [("soft_targets_unsupported", "trainer", "nodes[4].config.mixup_alpha", "error")]
    at = text.index('"mixup_alpha"')
    assert (issues[0].line, issues[0].column) == (text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at))
    assert "cutmix" in issues[0].hint
    # CutMix keeps labels hard: the boundary loss takes it; and the seeds' spelling `cutmix` is accepted
    _, workflow = _load(tmp_path, {"epochs": 2, "cutmix": True})
    assert workflow.nodes["trainer"].config.cutmix_alpha == 1.0
    _, workflow = _load(tmp_path, {"epochs": 2, "mixup_alpha": "0.2", "cutmix": "0.5", "mixup_prob": "0.5"},
                        loss={"loss_type": "combined", "dice_weight": 1, "ce_weight": 1, "label_smoothing": 0.1})
    cfg = workflow.nodes["trainer"].config
    assert (cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mixup_prob) == (0.2, 0.5, 0.5)


def test_mixing_is_off_by_default_and_an_unused_prob_is_said():
    cfg = TrainerConfig()
    assert (cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mixup_prob) == (0.0, 0.0, 1.0)
    found = Trainer.check(TrainerConfig(mixup_prob=0.5), {})
    assert [(f.field, f.code, f.severity) for f in found] == [("mixup_prob", "unused_value", "warning")]
    assert TrainerConfig(cutmix_alpha=False).cutmix_alpha == 0.0
    with pytest.raises(ValueError):
        TrainerConfig(cutmix_alpha=-1)


def test_the_trainer_refuses_mixup_with_a_loss_that_does_not_take_soft_targets(tmp_path):
    train, val = toy.loaders(n_train=4, n_val=2)
    with pytest.raises(ValueError, match="mixup_alpha makes soft targets, and the loss \\(CrossEntropy\\)"):
        _train(tmp_path, train, val, loss=toy.CrossEntropy(), epochs=1, mixup_alpha=0.2)


# ---- training -------------------------------------------------------------------------------------

def _train(run_dir, train, val, loss=None, model=None, resume=None, **cfg):
    torch.manual_seed(0)
    model = model or toy.tiny_net(channels=16)
    ctx = RunContext(run_dir=run_dir, workflow_name="t", device="cpu", progress=False, resume=resume,
                     log=lambda m: None)
    out = Trainer("trainer", Trainer.Config(**{"seed": 0, **cfg}), ctx).run(
        model=model, train_loader=train, val_loader=val, loss_fn=loss or SegmentationLoss({"dice": 0.5, "ce": 0.5}),
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2))
    return out["model"], out["history"]


@pytest.mark.parametrize("mixing", [{"mixup_alpha": 0.2}, {"cutmix_alpha": 1.0}])
def test_training_on_the_phantom_with_mixing_learns(phantom2d, tmp_path, mixing):
    train, val, _ = build_loaders(MedicalSegmentationLoaderConfig(data_dir=str(phantom2d), image_size=32,
                                                                  batch_size=4, seed=0), log=lambda *_: None)
    seen = []
    loss = SegmentationLoss({"dice": 0.5, "ce": 0.5})
    loss.register_forward_pre_hook(lambda m, args: seen.append(args[1].is_floating_point()) if m.training else None)
    _, history = _train(tmp_path, train, val, loss=loss, epochs=4, **mixing)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_dice"] > history[0]["val_dice"]
    train_calls = seen[:len(train)]  # the first epoch's training batches
    assert all(train_calls) if "mixup_alpha" in mixing else not any(train_calls)


def test_resume_with_mixup_and_cutmix_draws_what_a_straight_run_draws(phantom2d, tmp_path):
    def loaders():
        train, val, _ = build_loaders(MedicalSegmentationLoaderConfig(
            data_dir=str(phantom2d), image_size=16, batch_size=3, seed=0, augmentation_on="device",
            augmentation_strength="strong"), log=lambda *_: None)
        return train, val

    mixing = dict(mixup_alpha=0.4, cutmix_alpha=1.0, mixup_prob=0.8)
    straight, history = _train(tmp_path / "straight", *loaders(), epochs=2, **mixing)
    _train(tmp_path / "split", *loaders(), epochs=1, **mixing)
    resumed, resumed_history = _train(tmp_path / "split", *loaders(), epochs=2, **mixing,
                                      resume=str(tmp_path / "split" / "checkpoints" / "last.pt"))
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed_history[-1]["train_loss"] == history[-1]["train_loss"]
    assert checkpoint.load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["epoch"] == 2


def _quickstart(tmp_path, *sets):
    return run_quickstart(tmp_path, *sets)[1]


@pytest.mark.slow
@pytest.mark.parametrize("mixing", ["trainer.mixup_alpha=0.2", "trainer.cutmix_alpha=1.0"])
def test_the_quickstart_with_mixing_reaches_its_dice_bar(tmp_path, monkeypatch, mixing):
    monkeypatch.chdir(tmp_path)
    history = _quickstart(tmp_path, mixing)
    assert max(row["val_dice"] for row in history) >= 0.85  # the README's bar for the quickstart
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_quickstart_with_mixup_and_cutmix_on_cuda_reaches_its_dice_bar(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    history = _quickstart(tmp_path, "trainer.mixup_alpha=0.2", "trainer.cutmix_alpha=1.0", "trainer.mixup_prob=0.8",
                          "data_loader.augmentation_on=device", "data_loader.random_erasing=0.3", device="cuda")
    assert max(row["val_dice"] for row in history) >= 0.85
