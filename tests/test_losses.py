"""LossFunction: every term against a hand-computed or reference value on small tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from segflow.losses.segmentation import SegmentationLoss, build_loss, signed_distance
from segflow.nodes.base import RunContext
from segflow.nodes.losses import LossFunction, LossFunctionConfig

BIG = 50.0  # logits this large make softmax probabilities exactly 0/1 in float32


def layout():
    """One 4x4 image: ground truth foreground in 4 pixels; prediction covers 3, 2 of them right."""
    gt = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    gt[0, 0, 0, :4] = 1  # row 0
    pred = torch.zeros(4, 4, dtype=torch.long)
    pred[0, 0:2] = 1  # 2 true positives
    pred[1, 0] = 1  # 1 false positive -> FN 2, FP 1
    logits = torch.stack([(pred == 0).float(), (pred == 1).float()])[None] * 2 * BIG - BIG
    return logits, gt


def loss(**kw) -> SegmentationLoss:
    return build_loss(LossFunctionConfig(**kw))


def test_dice_perfect_is_zero():
    gt = torch.randint(0, 3, (2, 1, 8, 8))
    logits = F.one_hot(gt[:, 0], 3).movedim(-1, 1).float() * 2 * BIG - BIG
    assert loss(loss_type="dice")(logits, gt).item() == pytest.approx(0.0, abs=1e-4)


def test_dice_known_overlap():
    logits, gt = layout()
    # foreground: 2*TP / (|P| + |G|) = 4 / 7
    assert loss(loss_type="dice", include_background=False)(logits, gt).item() == pytest.approx(1 - 4 / 7, abs=1e-4)
    # background: P 13, G 12, overlap 11 -> 22/25; mean over the two classes
    both = loss(loss_type="dice", include_background=True)(logits, gt).item()
    assert both == pytest.approx(((1 - 4 / 7) + (1 - 22 / 25)) / 2, abs=1e-4)


def test_dice_smooth_from_string():
    logits, gt = layout()
    value = loss(loss_type="dice", include_background="false", smooth="1.0")(logits, gt).item()
    assert value == pytest.approx(1 - (4 + 1) / (7 + 1), abs=1e-5)


def test_tversky_known_value():
    logits, gt = layout()  # TP 2, FP 1, FN 2
    value = loss(loss_type="tversky", include_background=False, tversky_alpha=0.3, tversky_beta=0.7)(logits, gt).item()
    assert value == pytest.approx(1 - 2 / (2 + 0.3 * 1 + 0.7 * 2), abs=1e-4)


def test_cross_entropy_matches_torch():
    torch.manual_seed(0)
    logits, gt = torch.randn(2, 3, 5, 6), torch.randint(0, 3, (2, 1, 5, 6))
    ce = loss(loss_type="cross_entropy", class_weights="[0.2, 0.3, 0.5]", label_smoothing="0.1")(logits, gt)
    ref = F.cross_entropy(logits, gt[:, 0], weight=torch.tensor([0.2, 0.3, 0.5]), label_smoothing=0.1)
    assert ce.item() == pytest.approx(ref.item(), rel=1e-6)


def test_binary_single_channel_uses_sigmoid():
    torch.manual_seed(0)
    logits, gt = torch.randn(2, 1, 6, 6), torch.randint(0, 2, (2, 1, 6, 6))
    ce = loss(loss_type="ce")(logits, gt)
    assert ce.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, gt.float()).item(), rel=1e-6)
    weighted = loss(loss_type="ce", class_weights=[1.0, 3.0])(logits, gt)
    w = torch.where(gt == 1, 3.0, 1.0)
    ref = (F.binary_cross_entropy_with_logits(logits, gt.float(), reduction="none") * w).sum() / w.sum()
    assert weighted.item() == pytest.approx(ref.item(), rel=1e-6)
    perfect = (gt.float() * 2 - 1) * BIG
    assert loss(loss_type="dice")(perfect, gt).item() == pytest.approx(0.0, abs=1e-4)


def test_focal_matches_formula_softmax():
    torch.manual_seed(1)
    logits, gt = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 1, 4, 5))
    got = loss(loss_type="focal", alpha="0.25", gamma="2.0")(logits, gt).item()
    p = logits.softmax(1)
    y = F.one_hot(gt[:, 0], 3).movedim(-1, 1).float()
    a = torch.tensor([0.75, 0.25, 0.25]).view(1, 3, 1, 1)  # 1-alpha for background, alpha for the rest
    ref = (-a * (1 - p) ** 2 * y * p.log()).mean()
    assert got == pytest.approx(ref.item(), rel=1e-5)
    # gamma 0, no alpha: cross-entropy spread over the class channels
    plain = loss(loss_type="focal", gamma=0)(logits, gt).item()
    assert plain == pytest.approx(F.cross_entropy(logits, gt[:, 0]).item() / 3, rel=1e-5)


def test_focal_matches_formula_sigmoid():
    torch.manual_seed(2)
    logits, gt = torch.randn(2, 1, 4, 4), torch.randint(0, 2, (2, 1, 4, 4))
    got = loss(loss_type="focal", alpha=0.25, gamma=2)(logits, gt).item()
    t = gt.float()
    p_t = torch.where(gt == 1, logits.sigmoid(), 1 - logits.sigmoid())
    ref = (-(0.25 * t + 0.75 * (1 - t)) * (1 - p_t) ** 2 * p_t.log()).mean()
    assert got == pytest.approx(ref.item(), rel=1e-5)


def test_signed_distance_known_values():
    row = np.array([[0, 0, 1, 1, 1, 0]], dtype=bool)
    assert signed_distance(row).tolist() == [[2, 1, 0, -1, 0, 1]]
    assert not signed_distance(np.zeros((3, 3), bool)).any()
    assert not signed_distance(np.ones((3, 3), bool)).any()


@pytest.mark.parametrize("shape", [(1, 6), (9, 7), (33, 17), (12, 10, 8)])
def test_signed_distance_on_the_device_equals_scipy(shape):
    from segflow.losses.segmentation import signed_distance_torch

    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    masks = [rng.random(shape) > rng.uniform(0.1, 0.95) for _ in range(12)]
    masks += [np.zeros(shape, bool), np.ones(shape, bool)]  # no boundary: all zeros, not nan
    got = signed_distance_torch(torch.from_numpy(np.stack(masks))).numpy()
    for m, g in zip(masks, got):
        np.testing.assert_allclose(g, signed_distance(m), atol=1e-5)


def test_signed_distance_in_the_units_of_the_spacing():
    from segflow.losses.segmentation import signed_distance_torch

    row = np.array([0, 0, 1, 1, 1, 0], dtype=bool)
    assert signed_distance(row, [2.0]).tolist() == [4, 2, 0, -2, 0, 2]  # 2 mm voxels: twice the voxel distances
    rng = np.random.default_rng(5)
    masks = np.stack([rng.random((9, 8, 6)) > 0.7 for _ in range(4)])
    spacing = [0.7, 0.7, 5.0]  # anisotropic CT voxels: a step along z is 7 in-plane steps
    got = signed_distance_torch(torch.from_numpy(masks), spacing).numpy()
    for m, g in zip(masks, got):
        np.testing.assert_allclose(g, signed_distance(m, spacing), atol=1e-5)
    assert not np.allclose(got[0], signed_distance(masks[0]))  # the spacing changes the distances


def test_boundary_loss_is_the_same_through_either_transform():
    from segflow.losses.segmentation import BoundaryLoss

    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 1, 12, 10, 8))
    probs = torch.randn(2, 3, 12, 10, 8).softmax(1)
    for spacing in (None, [1.5, 1.5, 3.0]):
        scipy_path = BoundaryLoss(on_device=False, spacing=spacing)(probs, label)
        torch_path = BoundaryLoss(on_device=True, spacing=spacing)(probs, label)
        assert torch_path.item() == pytest.approx(scipy_path.item(), rel=1e-5) and scipy_path.item() != 0
    with pytest.raises(ValueError, match="boundary_spacing has 2 values, the labels have 3 spatial axes"):
        BoundaryLoss(spacing=[1.0, 1.0])(probs, label)


def test_boundary_loss_sign_and_zero():
    gt = torch.zeros(1, 1, 9, 9, dtype=torch.long)
    gt[0, 0, 3:6, 3:6] = 1
    onehot = F.one_hot(gt[:, 0], 2).movedim(-1, 1).float()
    b = loss(loss_type="boundary")
    perfect = b(onehot * 2 * BIG - BIG, gt).item()
    everything = b(torch.stack([-torch.ones(9, 9), torch.ones(9, 9)])[None] * BIG, gt).item()
    nothing = b(torch.stack([torch.ones(9, 9), -torch.ones(9, 9)])[None] * BIG, gt).item()
    dist = signed_distance(gt[0, 0].numpy() == 1)
    assert perfect == pytest.approx(dist[gt[0, 0].numpy() == 1].sum() / 81, abs=1e-5) and perfect < 0
    assert everything == pytest.approx(dist.sum() / 81, abs=1e-5) and everything > 0
    assert nothing == pytest.approx(0.0, abs=1e-6)
    assert perfect < nothing < everything
    empty = torch.zeros_like(gt)  # no foreground: no boundary, no signal
    assert b(torch.randn(1, 2, 9, 9), empty).item() == 0.0


@pytest.mark.parametrize("weights,terms", [
    ({}, {"dice": 0.5, "ce": 0.5}),
    ({"dice_weight": "0.5", "ce_weight": "0.5"}, {"dice": 0.5, "ce": 0.5}),
    ({"dice_weight": "0.5", "focal_weight": "0.5"}, {"dice": 0.5, "focal": 0.5}),
    ({"dice_weight": "0.4", "ce_weight": "0.4", "boundary_weight": "0.2"}, {"dice": 0.4, "ce": 0.4, "boundary": 0.2}),
])
def test_combined_is_weighted_sum(weights, terms):
    torch.manual_seed(3)
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    gt = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    gt[:, :, 2:6, 3:7] = 1
    combined = loss(loss_type="combined", **weights)
    assert combined.weights == terms
    value = combined(logits, gt)
    single = {"dice": "dice", "ce": "cross_entropy", "focal": "focal", "boundary": "boundary"}
    ref = sum(w * loss(loss_type=single[t])(logits, gt) for t, w in terms.items())
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
    assert set(combined.last_terms) == set(terms)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("loss_type", ["dice", "cross_entropy", "focal", "tversky", "boundary", "combined"])
def test_every_type_trains_3d(loss_type):
    logits = torch.randn(1, 3, 4, 6, 5, requires_grad=True)
    gt = torch.randint(0, 3, (1, 1, 4, 6, 5))
    value = loss(loss_type=loss_type)(logits, gt)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value) and logits.grad is not None


def test_bad_labels_are_explained():
    with pytest.raises(ValueError, match="class index 3 but the network outputs 2 channel"):
        loss()(torch.randn(1, 2, 4, 4), torch.full((1, 1, 4, 4), 3))
    with pytest.raises(ValueError, match="class_weights has 2 values but the network outputs 3 classes"):
        loss(loss_type="ce", class_weights=[1, 2])(torch.randn(1, 3, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="does not fit logits"):
        loss()(torch.randn(1, 2, 4, 4), torch.zeros(1, 1, 4, 5, dtype=torch.long))


def test_config_spellings_and_errors():
    assert LossFunctionConfig(loss_type="Dice").loss_type == "dice"
    assert LossFunctionConfig(loss_type="CE").loss_type == "cross_entropy"
    assert LossFunctionConfig(loss_type="cross-entropy").loss_type == "cross_entropy"
    assert LossFunctionConfig(class_weights="[0.3, 0.7]").class_weights == [0.3, 0.7]
    with pytest.raises(ValidationError) as e:
        LossFunctionConfig(loss_type="hinge")
    assert e.value.errors()[0]["loc"] == ("loss_type",)
    with pytest.raises(ValidationError) as e:
        LossFunctionConfig(class_weights=[1.0, -1.0])
    assert e.value.errors()[0]["loc"] == ("class_weights", 1)
    with pytest.raises(ValidationError, match="every weight 0"):
        LossFunctionConfig(dice_weight=0, ce_weight="0")
    with pytest.raises(ValidationError):
        LossFunctionConfig(alpha="1.5")


def test_check_warns_about_unused_values():
    found = LossFunction.check(LossFunctionConfig(loss_type="dice", ce_weight=0.5, label_smoothing=0.1), {})
    assert {(f.field, f.severity) for f in found} == {("ce_weight", "warning"), ("label_smoothing", "warning")}
    assert [f.code for f in LossFunction.check(LossFunctionConfig(loss_type="boundary"), {})] == ["boundary_alone"]
    assert LossFunction.check(LossFunctionConfig(), {}) == []
    [found] = LossFunction.check(LossFunctionConfig(boundary_spacing=[1, 1, 3]), {})  # dice + ce: no boundary
    assert (found.field, found.code) == ("boundary_spacing", "unused_value")
    assert LossFunction.check(LossFunctionConfig(loss_type="combined", dice_weight=1, boundary_weight=0.1,
                                                 boundary_spacing="[0.7, 0.7, 5]"), {}) == []
    with pytest.raises(ValidationError) as e:
        LossFunctionConfig(boundary_spacing=[1.0, 0.0])
    assert (e.value.errors()[0]["loc"], e.value.errors()[0]["type"]) == (("boundary_spacing", 1), "greater_than")
    with pytest.raises(ValidationError, match="at least 2 items"):
        LossFunctionConfig(boundary_spacing=[1.0])


def test_node_run(tmp_path):
    node = LossFunction("loss", LossFunctionConfig(loss_type="combined"), RunContext(run_dir=tmp_path, workflow_name="t"))
    fn = node.run()["loss_fn"]
    assert isinstance(fn, torch.nn.Module)
    assert fn(torch.randn(2, 2, 4, 4), torch.randint(0, 2, (2, 1, 4, 4))).ndim == 0
