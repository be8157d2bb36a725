"""BatchAugment: exact flips and quarter turns, labels kept whole, seeding, per-sample draws."""
from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from segflow.data.batch_augment import AugmentSettings, BatchAugment

ALL_OFF = {f.name: 0.0 for f in fields(AugmentSettings) if f.name.endswith("_p") and f.name != "flip_p"}


def blobs(n: int, shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels 0/1/2 without any symmetry, and an image that is the label plus a noise channel, so a
    transform that moves image and label differently shows."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 3, (n, 1, *(max(2, s // 4) for s in shape)), generator=g).float()
    label = torch.nn.functional.interpolate(coarse, size=shape, mode="nearest").long()
    image = torch.cat([label.float(), torch.rand((n, 1, *shape), generator=g)], 1)
    return image, label


# ---- the transforms ---------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_every_probability_zero_is_the_identity(dims):
    image, label = blobs(4, (12,) * dims)
    aug = BatchAugment(dims, "strong", flip_p=(0.0,) * dims, **ALL_OFF)
    out_image, out_label = aug(image, label)
    assert torch.equal(out_image, image) and torch.equal(out_label, label)


@pytest.mark.parametrize("shape", [(10, 14), (6, 8, 5)])
def test_flips_match_torch_flip_on_image_and_label(shape):
    image, label = blobs(6, shape)
    dims = len(shape)
    for axis in range(dims):
        always = tuple(1.0 if a == axis else 0.0 for a in range(dims))
        out_image, out_label = BatchAugment(dims, None, flip_p=always)(image, label)
        assert torch.equal(out_image, image.flip(2 + axis)) and torch.equal(out_label, label.flip(2 + axis))
    torch.manual_seed(0)
    out_image, out_label = BatchAugment(dims, None, flip_p=(0.5,) * dims)(image, label)
    for b in range(6):  # each sample flipped along some set of axes, image and label alike
        matches = [axes for axes in _subsets(dims) if torch.equal(out_image[b], image[b].flip([1 + a for a in axes]))
                   and torch.equal(out_label[b], label[b].flip([1 + a for a in axes]))]
        assert len(matches) == 1


def _subsets(dims):
    return [[a for a in range(dims) if mask >> a & 1] for mask in range(2**dims)]


@pytest.mark.parametrize("shape", [(12, 12), (8, 8, 6)])
def test_quarter_turns_match_torch_rot90_on_image_and_label(shape):
    torch.manual_seed(0)
    image, label = blobs(12, shape)
    out_image, out_label = BatchAugment(len(shape), None, rot90_p=1.0)(image, label)
    turns = []
    for b in range(12):
        k = [k for k in range(4) if torch.equal(out_image[b], torch.rot90(image[b], k, (1, 2)))]
        assert len(k) == 1 and k[0] in (1, 2, 3)
        assert torch.equal(out_label[b], torch.rot90(label[b], k[0], (1, 2)))
        turns.append(k[0])
    assert len(set(turns)) > 1  # drawn per sample


def test_quarter_turns_skip_a_non_square_plane():
    image, label = blobs(3, (8, 10))
    out_image, out_label = BatchAugment(2, None, rot90_p=1.0)(image, label)
    assert torch.equal(out_image, image) and torch.equal(out_label, label)


@pytest.mark.parametrize("dims,shape", [(2, (40, 48)), (3, (20, 20, 16))])
def test_strong_preset_keeps_label_values_shapes_and_alignment(dims, shape):
    torch.manual_seed(1)
    image, label = blobs(6, shape)
    out_image, out_label = BatchAugment(dims, "strong")(image, label)
    assert out_image.shape == image.shape and out_label.shape == label.shape
    assert out_label.dtype == torch.int64 and torch.isfinite(out_image).all()
    assert set(out_label.unique().tolist()) <= set(label.unique().tolist())
    assert not torch.equal(out_label, label)
    # the geometry alone (intensity off): the image's first channel, resampled bilinearly, still
    # tells the label's classes apart nearly everywhere
    torch.manual_seed(1)
    geometry = {k: 0.0 for k in ALL_OFF if k not in ("crop_p", "affine_p", "elastic_p", "rot90_p")}
    moved_image, moved_label = BatchAugment(dims, "strong", **geometry)(image, label)
    agree = (moved_image[:, :1].round().long() == moved_label).float().mean()
    assert agree > 0.9


def test_same_seed_same_output_other_seed_different():
    image, label = blobs(4, (24, 24))
    aug = BatchAugment(2, "strong")
    outs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        outs.append(aug(image, label))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(outs[0][0], outs[2][0])


@pytest.mark.parametrize("dims", [2, 3])
def test_samples_in_a_batch_get_their_own_draws(dims):
    torch.manual_seed(0)
    image, label = blobs(1, (16,) * dims)
    image, label = image.expand(8, *image.shape[1:]).contiguous(), label.expand(8, *label.shape[1:]).contiguous()
    out_image, _ = BatchAugment(dims, "medium")(image, label)
    distinct = {tuple(out_image[b].flatten()[:: 7].tolist()) for b in range(8)}
    assert len(distinct) == 8


def test_zscore_after_normalises_each_sample_and_channel():
    image, label = blobs(3, (20, 20))
    out, _ = BatchAugment(2, "light", zscore_after=True)(image.clamp(0, 1), label)
    mean, std = out.mean((2, 3)), out.std((2, 3), correction=0)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=0)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="one probability per spatial axis"):
        BatchAugment(3, None, flip_p=(0.5, 0.5))
    with pytest.raises(ValueError, match="2-D only"):
        BatchAugment(3, None, crop_p=1.0)
    with pytest.raises(ValueError, match="spatial axes"):
        BatchAugment(3, "light")(*blobs(2, (8, 8)))
