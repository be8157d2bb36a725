"""BatchAugment (augmentation_on: device): exact flips and quarter turns, labels kept whole, seeding,
per-sample draws, the loader's and Trainer's wiring, resume, and the config field."""
from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch
import toy
from torch.utils.data import RandomSampler

from segflow.data.batch_augment import AugmentSettings, BatchAugment
from segflow.data.loader import build_loaders
from segflow.data.segmentation_loader import SegmentationLoader, batch_augment_of
from segflow.nodes.base import RunContext
from segflow.nodes.data import MedicalSegmentationLoaderConfig as Config
from segflow.nodes.training import Trainer
from segflow.training import checkpoint
from segflow.workflow import spec
from segflow.workflow.errors import WorkflowError

ALL_OFF = {f.name: 0.0 for f in fields(AugmentSettings) if f.name.endswith("_p") and f.name != "flip_p"}


def blobs(n: int, shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels 0/1/2 without any symmetry, and an image that is the label plus a noise channel, so a
    transform that moves image and label differently shows."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 3, (n, 1, *(max(2, s // 4) for s in shape)), generator=g).float()
    label = torch.nn.functional.interpolate(coarse, size=shape, mode="nearest").long()
    image = torch.cat([label.float(), torch.rand((n, 1, *shape), generator=g)], 1)
    return image, label


def build(**kw):
    return build_loaders(Config(**kw), log=lambda *_: None)


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


# ---- the loader --------------------------------------------------------------------------------

def _batches(loader):
    return [(b["image"], b["label"]) for b in loader]


def test_2d_loader_on_device_resizes_only_and_hands_over_the_augmentation(phantom2d):
    kw = dict(data_dir=str(phantom2d), image_size=32, batch_size=4, shuffle=False, augmentation_strength="strong")
    train, val, _ = build(augmentation_on="device", **kw)
    assert isinstance(train, SegmentationLoader) and isinstance(val, SegmentationLoader)
    aug = train.batch_augment
    assert isinstance(aug, BatchAugment) and (aug.dims, aug.strength, aug.zscore_after) == (2, "strong", True)
    assert val.batch_augment is None
    plain_train, plain_val, _ = build(augmentation=False, **kw)
    assert plain_train.batch_augment is None and plain_val.batch_augment is None
    for (image, label), (plain_image, plain_label) in zip(_batches(train), _batches(plain_train)):
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0  # left in [0, 1] for the intensity steps
        std, mean = torch.std_mean(image, dim=(2, 3), correction=0, keepdim=True)
        torch.testing.assert_close((image - mean) / std.clamp_min(1e-8), plain_image, atol=1e-5, rtol=0)
        assert torch.equal(label, plain_label)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(_batches(val), _batches(plain_val)))
    assert build(**kw)[0].batch_augment is None  # workers, the default


@pytest.mark.parametrize("normalization", ["zscore", "minmax"])
def test_2d_patches_on_device_are_cut_and_scaled_in_workers_and_never_zoomed(phantom2d, normalization):
    kw = dict(data_dir=str(phantom2d), image_size=32, size_mode="patches", batch_size=4, shuffle=False,
              augmentation_strength="strong", normalization=normalization)
    train, val, _ = build(augmentation_on="device", **kw)
    aug = train.batch_augment
    # no random resized crop on patches; z-scored patches are not in [0, 1], so gamma rescales them
    assert (aug.settings.crop_p, aug.zscore_after, aug.settings.unit_range) == (0.0, False, normalization != "zscore")
    assert aug.settings.affine_p > 0 and val.batch_augment is None
    plain = build(augmentation=False, **kw)[0]  # the same patches, scaled by their whole image, unaugmented
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(_batches(train), _batches(plain)))


def test_3d_loader_on_device_samples_patches_without_monai_transforms(phantom3d):
    kw = dict(data_dir=str(phantom3d), image_size=[12, 12, 8], batch_size=2, shuffle=False, seed=3)
    train, val, _ = build(augmentation_on="device", augmentation_strength="strong", **kw)
    assert train.batch_augment.dims == 3 and not train.batch_augment.zscore_after and val.batch_augment is None
    plain = build(augmentation=False, **kw)[0]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(_batches(train), _batches(plain)))
    off = build(augmentation=False, augmentation_on="device", **kw)
    assert off[0].batch_augment is None and off[1].batch_augment is None


def test_augmentation_on_is_validated_at_its_key():
    doc = {"workflow": "t", "nodes": [{"type": "MedicalSegmentationLoader", "name": "data",
                                       "config": {"augmentation_on": "gpu"}}]}
    with pytest.raises(WorkflowError) as e:
        spec.loads(json.dumps(doc, indent=1), "t.json")
    issue = next(i for i in e.value.issues if i.path == "nodes[0].config.augmentation_on")
    assert issue.code == "bad_value" and "device" in issue.message
    doc["nodes"][0]["config"]["augmentation_on"] = "device"
    assert spec.loads(json.dumps(doc), "t.json").nodes["data"].config.augmentation_on == "device"


# ---- the Trainer ---------------------------------------------------------------------------------

class Recording:
    """Wraps a BatchAugment and keeps what it handed back."""

    def __init__(self, aug):
        self.aug, self.outputs = aug, []

    def __call__(self, image, label):
        out = self.aug(image, label)
        self.outputs.append(out[0])
        return out


class Refusing:
    def __call__(self, image, label):
        raise AssertionError("validation batches must not be augmented")


def _train(tmp_path, train, val, model=None, resume=None, **cfg):
    torch.manual_seed(0)
    model = model or toy.tiny_net()
    ctx = RunContext(run_dir=tmp_path, workflow_name="t", device="cpu", progress=False, resume=resume,
                     log=lambda m: None)
    out = Trainer("trainer", Trainer.Config(**{"seed": 0, **cfg}), ctx).run(
        model=model, train_loader=train, val_loader=val, loss_fn=toy.CrossEntropy(),
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2))
    return out["model"], out["history"]


def augmented(loader, batch_augment) -> SegmentationLoader:
    """The toy loader again (dataset, batch size, shuffling) as a SegmentationLoader declaring `batch_augment`."""
    return SegmentationLoader(loader.dataset, batch_size=loader.batch_size,
                              shuffle=isinstance(loader.sampler, RandomSampler), batch_augment=batch_augment)


def test_only_a_segmentation_loader_declares_batch_augmentation():
    train, _ = toy.loaders(n_train=4)
    aug = BatchAugment(2, "light")
    assert batch_augment_of(augmented(train, aug)) is aug
    train.batch_augment = aug  # an attribute on a plain DataLoader declares nothing
    assert batch_augment_of(train) is None and batch_augment_of(None) is None


def test_trainer_augments_training_batches_only_and_feeds_them_to_the_model(tmp_path):
    plain_train, plain_val = toy.loaders(n_train=8, n_val=4)
    train = augmented(plain_train, Recording(BatchAugment(2, "medium")))
    val = augmented(plain_val, Refusing())  # the Trainer reads the training loader's only
    seen = []
    model = toy.tiny_net()
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()) if m.training else None)
    _train(tmp_path, train, val, model=model, epochs=2)
    assert len(train.batch_augment.outputs) == 2 * len(train) == len(seen)
    assert all(torch.equal(a, b) for a, b in zip(train.batch_augment.outputs, seen))


def test_resume_draws_the_same_augmentation_as_a_straight_run(tmp_path):
    def loaders():
        train, val = toy.loaders(n_train=8, n_val=4)
        return augmented(train, BatchAugment(2, "strong")), val

    straight, _ = _train(tmp_path / "straight", *loaders(), epochs=2)
    _train(tmp_path / "split", *loaders(), epochs=1)
    resumed, _ = _train(tmp_path / "split", *loaders(), epochs=2,
                        resume=str(tmp_path / "split" / "checkpoints" / "last.pt"))
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    saved = checkpoint.load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert saved["epoch"] == 2


def test_training_on_the_phantom_with_device_augmentation_learns(phantom2d, tmp_path):
    train, val, _ = build(data_dir=str(phantom2d), image_size=32, batch_size=4, augmentation_on="device",
                          augmentation_strength="medium", seed=0)
    model, history = _train(tmp_path, train, val, model=toy.tiny_net(channels=16), epochs=4)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_dice"] > history[0]["val_dice"]
