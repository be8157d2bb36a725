"""The loss on regions (sigmoid channels) and without ignore-label voxels: exactly the terms on the
known voxels, gradients exactly zero at the ignored ones."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from segflow.data.label_scheme import LabelScheme, Region
from segflow.data.regions import paint, region_masks
from segflow.losses.segmentation import SegmentationLoss

BRATS = LabelScheme((Region("whole_tumor", (1, 2, 3)), Region("tumor_core", (2, 3)), Region("enhancing_tumor", (3,))),
                    (1, 2, 3))
TERMS = ["dice", "ce", "focal", "tversky"]


def _label(classes: int, ignore: int | None, shape=(2, 1, 6, 5, 4), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, classes, shape, generator=g)
    if ignore is not None:
        label[..., :2] = ignore  # the first two slices are unannotated
        label[0, 0, 0, 0, 3] = ignore  # and a voxel elsewhere
    return label


def _loss(weights, labels: LabelScheme, **kw) -> SegmentationLoss:
    loss = SegmentationLoss(weights, **kw)
    loss.follow_labels(labels)
    return loss


@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("channels, labels", [
    (3, LabelScheme(ignore=3)),  # softmax over 3 classes
    (1, LabelScheme(ignore=2)),  # one sigmoid channel
    (3, LabelScheme(BRATS.regions, BRATS.paint, ignore=4)),  # regions
])
def test_ignored_voxels_get_exactly_zero_gradient_and_change_nothing(term, channels, labels):
    classes = 4 if labels.region_based else max(channels, 2)
    label = _label(classes, labels.ignore)
    loss = _loss({term: 1.0}, labels)
    logits = torch.randn(2, channels, 6, 5, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    value = loss(logits, label)
    value.backward()
    ignored = (label == labels.ignore).expand_as(logits)
    assert logits.grad[ignored].abs().max() == 0 and logits.grad[~ignored].abs().max() > 0
    changed = logits.detach().clone()
    changed[ignored] = torch.randn(int(ignored.sum())) * 10
    assert torch.equal(loss(changed, label), value.detach())


@pytest.mark.parametrize("term", TERMS)
def test_the_ignore_label_leaves_the_terms_of_the_known_voxels(term):
    """A loss over a volume whose first two slices are ignored equals the plain loss over the rest."""
    label = _label(3, None)
    label[..., :2] = 3
    logits = torch.randn(2, 3, 6, 5, 4, generator=torch.Generator().manual_seed(2))
    masked = _loss({term: 1.0}, LabelScheme(ignore=3))(logits, label)
    plain = SegmentationLoss({term: 1.0})(logits[..., 2:], label[..., 2:])
    assert torch.allclose(masked, plain, atol=1e-6)


def test_region_loss_is_dice_and_bce_on_region_channels():
    label = _label(4, None)
    logits = torch.randn(2, 3, 6, 5, 4, generator=torch.Generator().manual_seed(3))
    loss = _loss({"dice": 0.5, "ce": 0.5}, BRATS)
    target = region_masks(label, BRATS).float()
    assert target[:, 0].sum() == (label > 0).sum() and target[:, 2].sum() == (label == 3).sum()
    dice = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(loss(logits, label), 0.5 * dice + 0.5 * bce, atol=1e-6)
    assert torch.allclose(loss.last_terms["dice"], dice, atol=1e-6)


def test_region_class_weights_are_one_per_region():
    loss = _loss({"ce": 1.0}, BRATS, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"class_weights has 2 values but the network outputs 3 regions; give one "
                                         r"weight per region"):
        loss(torch.zeros(1, 3, 4, 4, 4), _label(4, None, (1, 1, 4, 4, 4)))


def test_regions_refuse_softmax_the_boundary_term_and_wrong_channels():
    with pytest.raises(ValueError, match=r"sigmoid is false \(softmax\), but the data has regions \(whole_tumor, "):
        _loss({"dice": 1.0}, BRATS, sigmoid=False)
    with pytest.raises(ValueError, match=r"the boundary term does not take data with regions whole_tumor"):
        _loss({"dice": 1.0, "boundary": 1.0}, BRATS)
    with pytest.raises(ValueError, match=r"outputs 4 channel\(s\) but the data has 3 regions .*out_channels to 3"):
        _loss({"dice": 1.0}, BRATS)(torch.zeros(1, 4, 4, 4, 4), _label(4, None, (1, 1, 4, 4, 4)))


def test_painting_follows_regions_class_order():
    """Hand-made probabilities: later regions paint over earlier ones, only above 0.5."""
    probs = torch.tensor([[0.9, 0.9, 0.9, 0.2, 0.6],   # whole tumour
                          [0.1, 0.8, 0.7, 0.9, 0.4],   # tumour core
                          [0.0, 0.3, 0.51, 0.9, 0.5]])  # enhancing
    assert paint(probs, BRATS).tolist() == [1, 2, 3, 3, 1]
    kits = LabelScheme(BRATS.regions[:2] + (Region("tumor", (2,)),), (1, 3, 2))  # KiTS23's order [1, 3, 2]
    assert paint(probs, kits).tolist() == [1, 3, 2, 2, 1]


@pytest.mark.parametrize("term", ["ce", "focal"])
@pytest.mark.parametrize("channels, weights", [(1, [0.3, 0.7]), (3, [0.2, 0.3, 0.5])])
def test_class_weights_with_an_ignore_label_match_the_plain_loss(term, channels, weights):
    classes = max(channels, 2)
    label = _label(classes, None)
    label[..., :2] = classes
    logits = torch.randn(2, channels, 6, 5, 4, generator=torch.Generator().manual_seed(4))
    masked = _loss({term: 1.0}, LabelScheme(ignore=classes), class_weights=weights)(logits, label)
    plain = SegmentationLoss({term: 1.0}, class_weights=weights)(logits[..., 2:], label[..., 2:])
    assert torch.allclose(masked, plain, atol=1e-6)
