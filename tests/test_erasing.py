"""Random erasing (the loader's random_erasing, random_erasing_size): one box of the training image set
to 0, the label untouched, on the workers (albumentations 2-D, MONAI 3-D) and on the device."""
from __future__ import annotations

import pytest
import torch

from segflow.data.batch_augment import BatchAugment
from segflow.data.loader import build_loaders
from segflow.nodes.data import MedicalSegmentationLoader
from segflow.nodes.data import MedicalSegmentationLoaderConfig as Config


def _box_of(changed: torch.Tensor) -> tuple[slice, ...]:
    """The bounding box of the True voxels of `changed` (*S)."""
    where = changed.nonzero()
    return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(where.min(0).values, where.max(0).values))


def _assert_one_erased_box(before: torch.Tensor, after: torch.Tensor, sides: tuple[float, float]) -> None:
    """`after` (C, *S) is `before` with one box of every channel set to 0, each side within `sides` of its axis."""
    changed = (after != before).any(0)
    assert changed.any()
    box = _box_of(changed)
    assert (after[(slice(None), *box)] == 0).all()  # the whole box, every channel, erased
    outside = torch.ones_like(changed)
    outside[box] = False
    assert torch.equal(after[:, outside], before[:, outside])
    for s, size in zip(box, changed.shape):
        # a box edge on voxels that were 0 already shows no change: the box seen may be smaller
        assert s.stop - s.start <= int(sides[1] * size) + 1


@pytest.mark.parametrize("shape", [(20, 24), (12, 10, 8)])
def test_device_erasing_sets_one_box_per_sample_to_zero_and_leaves_the_label(shape):
    torch.manual_seed(0)
    image = torch.rand(6, 2, *shape) + 1.0  # no zeros: every erased voxel shows
    label = torch.randint(0, 3, (6, 1, *shape))
    aug = BatchAugment(len(shape), None, erase_p=1.0, erase_size=(0.25, 0.5))
    out_image, out_label = aug(image, label)
    assert torch.equal(out_label, label)
    for b in range(6):
        erased = (out_image[b] == 0).all(0)
        box = _box_of(erased)
        assert int(erased.sum()) == int(torch.tensor([s.stop - s.start for s in box]).prod())  # a full box
        for s, size in zip(box, shape):
            assert int(0.25 * size) <= s.stop - s.start <= int(0.5 * size)
        _assert_one_erased_box(image[b], out_image[b], (0.25, 0.5))
    half = BatchAugment(len(shape), None, erase_p=0.5)(torch.rand(400, 1, *shape) + 1.0, label[:1].expand(400, -1, *shape))[0]
    assert 0.4 < (half == 0).flatten(1).any(1).float().mean() < 0.6


@pytest.mark.parametrize("data, settings", [
    ("phantom2d", dict(image_size=32, normalization="minmax", augmentation_strength="light")),
    ("phantom2d", dict(image_size=24, size_mode="patches", normalization="minmax")),
    ("phantom3d", dict(image_size=12, augmentation_strength="strong")),
])
def test_worker_erasing_changes_the_image_in_one_box_and_not_the_label(request, data, settings):
    """The erasing transform comes last in the pipeline and draws last from the sample's generators, so the
    same sample without it is the image before erasing."""
    common = dict(data_dir=str(request.getfixturevalue(data)), batch_size=2, seed=1, num_workers=0, **settings)
    plain = build_loaders(Config(**common), log=lambda *_: None)[0].dataset
    erased = build_loaders(Config(**common, random_erasing=1.0, random_erasing_size=[0.2, 0.4]),
                           log=lambda *_: None)[0].dataset
    for key in [(0, 0), (0, 1), (1, 2)]:  # (epoch, index)
        a, b = plain[key], erased[key]
        assert torch.equal(a["label"], b["label"])
        _assert_one_erased_box(a["image"], b["image"], (0.2, 0.4))


def test_the_loader_hands_erasing_to_the_device_and_never_to_validation(phantom2d):
    train, val, _ = build_loaders(Config(data_dir=str(phantom2d), image_size=32, augmentation_on="device",
                                         random_erasing=0.3, random_erasing_size=[0.1, 0.2]), log=lambda *_: None)
    settings = train.batch_augment.settings
    assert (settings.erase_p, settings.erase_size) == (0.3, (0.1, 0.2))
    assert val.batch_augment is None
    assert "CoarseDropout" not in repr(val.dataset.transform)
    workers, _, _ = build_loaders(Config(data_dir=str(phantom2d), image_size=32, random_erasing=0.3),
                                  log=lambda *_: None)
    assert "CoarseDropout" in repr(workers.dataset.transform)


def test_erasing_config_is_off_by_default_checked_and_said_when_unused():
    assert Config().random_erasing == 0.0
    with pytest.raises(ValueError, match="random_erasing_size"):
        Config(random_erasing=0.5, random_erasing_size=[0.5, 0.2])
    found = MedicalSegmentationLoader.check(Config(random_erasing=0.5, augmentation=False), {})
    assert [(f.field, f.code, f.severity) for f in found] == [("random_erasing", "unused_value", "warning")]
    found = MedicalSegmentationLoader.check(Config(random_erasing_size=[0.1, 0.2]), {})
    assert [(f.field, f.code, f.severity) for f in found] == [("random_erasing_size", "unused_value", "warning")]
