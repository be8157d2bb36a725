"""MedicalSegmentationLoader: config, phantoms, batch contract, augmentation, seeding, caching."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import data_helpers as h  # tests/ is on sys.path (pytest rootdir-relative import)
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from segflow.data.augment import albumentations_pipeline, monai_pipeline
from segflow.data.loader import build_loaders
from segflow.data.phantoms import write_phantom_dataset
from segflow.nodes.base import RunContext
from segflow.nodes.data import MedicalSegmentationLoader
from segflow.nodes.data import MedicalSegmentationLoaderConfig as Config

SEED_WORKFLOW_LOADERS = [  # the loader blocks of workflows/seed_*.json, as written
    {"data_dir": "data/medical", "batch_size": "8", "image_size": "256", "augmentation": "true"},
    {"data_dir": "data/3d_volumes", "batch_size": "2", "image_size": "96", "augmentation": "true"},
    {"data_dir": "data/small", "batch_size": "4", "image_size": "256", "augmentation": "true",
     "augmentation_strength": "strong"},
]


def build(**kw):
    return build_loaders(Config(**kw), log=lambda *_: None)


@pytest.mark.parametrize("raw", SEED_WORKFLOW_LOADERS)
def test_seed_workflow_loader_configs_validate(raw):
    c = Config(**raw)
    assert isinstance(c.batch_size, int) and isinstance(c.image_size, int) and c.augmentation is True


def test_gui_strings_for_every_kind_of_field():
    c = Config(data_dir="d", image_size="[64, 48]", spatial_dims="2", val_fraction="0.1", seed="7", shuffle="False",
               num_workers="2", pin_memory="true", cache="disk", target_spacing="[1.0, 1.5]", num_classes="null",
               ct_window="[-100, 200]", pos="2", neg="1", samples_per_volume="4", verify_data="false")
    assert (c.image_size, c.spatial_dims, c.val_fraction, c.seed, c.shuffle) == ([64, 48], 2, 0.1, 7, False)
    assert (c.pin_memory, c.target_spacing, c.num_classes, c.ct_window) == (True, [1.0, 1.5], None, [-100, 200])
    assert Config(pin_memory="auto").pin_memory == "auto"
    assert Config.aliases == {"shuffle_train": "shuffle"}


@pytest.mark.parametrize("bad", [
    {"augmentation_strength": "extreme"}, {"spatial_dims": "4"}, {"image_size": "[64, 64, 64, 64]"},
    {"val_fraction": "1.0"}, {"cache": "ram"}, {"synthetic": "phantom2d", "image_size": [32, 32, 32]},
    {"ct_window": "[200, -100]"}, {"pos": 0, "neg": 0}, {"batch_size": "0"}, {"shuffle_train": True},
])
def test_bad_config_values_are_rejected(bad):
    with pytest.raises(ValidationError):
        Config(**bad)


def test_node_module_imports_no_torch():
    code = ("import sys, segflow.nodes.data, segflow.data.info; "
            "print([m for m in ('torch', 'monai', 'numpy', 'albumentations', 'nibabel') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "[]"


def test_phantoms_are_deterministic_by_seed_and_reused(tmp_path):
    a = write_phantom_dataset(tmp_path / "a", "2d", num_cases=3, size=32, seed=5)
    b = write_phantom_dataset(tmp_path / "b", "2d", num_cases=3, size=32, seed=5)
    c = write_phantom_dataset(tmp_path / "c", "2d", num_cases=3, size=32, seed=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 3 * 2 + 4  # training image + label per case, and 4 unlabelled test images
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    stamp = (a / files[0]).stat().st_mtime_ns
    write_phantom_dataset(tmp_path / "a", "2d", num_cases=3, size=32, seed=5)
    assert (a / files[0]).stat().st_mtime_ns == stamp  # reused, not rewritten
    write_phantom_dataset(tmp_path / "a", "2d", num_cases=4, size=32, seed=5)  # other parameters: rewritten
    assert len(json.loads((a / "dataset.json").read_text())["training"]) == 4


def test_phantom_never_overwrites_other_data(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="already holds other data"):
        write_phantom_dataset(tmp_path / "mine", "2d")


def test_phantom_3d_is_nifti_with_non_identity_affine(phantom3d):
    import nibabel as nib

    img = nib.load(str(phantom3d / "imagesTr" / "phantom_000.nii.gz"))
    assert img.shape == (24, 20, 16) and not np.allclose(img.affine, np.eye(4))
    assert tuple(float(z) for z in img.header.get_zooms()) == pytest.approx((1.2, 1.2, 2.0))
    lab = np.asarray(nib.load(str(phantom3d / "labelsTr" / "phantom_000.nii.gz")).dataobj)
    assert set(np.unique(lab).tolist()) == {0, 1, 2}


def test_2d_batch_contract_and_info(phantom2d):
    train, val, info = build(data_dir=str(phantom2d), image_size=32, batch_size=4, augmentation_strength="strong")
    assert (info.in_channels, info.num_classes, info.spatial_dims, info.patch_size) == (1, 2, 2, (32, 32))
    assert (info.num_train, info.num_val, info.layout, info.class_names) == (8, 2, "msd", ["background", "organ"])
    assert len(train) == 2 and len(val) == 1 and len(train.dataset) == 8
    batch = next(iter(train))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 1, 32, 32)
    assert batch["label"].dtype == torch.uint8 and batch["label"].shape == (4, 1, 32, 32)
    assert len(batch["case"]) == 4 and all(c.startswith("phantom_") for c in batch["case"])
    assert abs(float(batch["image"][0].mean())) < 1e-4 and float(batch["image"][0].std()) == pytest.approx(1, abs=1e-2)


def test_3d_patches_and_whole_volume_validation(phantom3d):
    train, val, info = build(data_dir=str(phantom3d), image_size=[16, 16, 8], batch_size=2, samples_per_volume=3,
                             val_fraction=0.2, pos=1, neg=0, augmentation=False)
    assert (info.spatial_dims, info.num_classes, info.patch_size) == (3, 3, (16, 16, 8))
    assert info.spacing == pytest.approx((1.2, 1.2, 2.0)) and info.class_names == ["background", "organ", "core"]
    assert len(train.dataset) == 4 * 3
    for batch in train:
        assert batch["image"].shape[1:] == (1, 16, 16, 8) and batch["label"].dtype == torch.uint8
        assert all(bool((lab > 0).any()) for lab in batch["label"])  # pos=1, neg=0: every patch shows foreground
    batch = next(iter(val))
    assert batch["image"].shape == (1, 1, 24, 20, 16) and batch["affine"].shape == (1, 4, 4)


def test_2d_patches_at_own_resolution_and_whole_image_validation(phantom2d):
    train, val, info = build(data_dir=str(phantom2d), image_size=32, size_mode="patches", batch_size=4, pos=1, neg=0,
                             augmentation=False, normalization="zscore")
    assert info.patch_size == (32, 32) and val.batch_size == 1
    whole = {b["case"][0]: b for b in val}
    assert all(b["image"].shape == (1, 1, 48, 48) and b["label"].shape == (1, 1, 48, 48) for b in whole.values())
    for b in whole.values():  # z-scored over the whole image
        assert abs(float(b["image"].mean())) < 1e-4 and float(b["image"].std()) == pytest.approx(1, abs=1e-2)
    prepared = {c: p.image for c, p in zip([c.case_id for c in train.dataset.source.cases], train.dataset.source.memory)}
    for batch in train:
        assert batch["image"].shape == (4, 1, 32, 32) and batch["label"].dtype == torch.uint8
        assert all(bool((lab > 0).any()) for lab in batch["label"])  # pos=1, neg=0: every patch shows foreground
        for img, case in zip(batch["image"], batch["case"]):
            # a window of the image at its own resolution, scaled with the whole image's statistics
            full = prepared[case][0]
            z = (full - full.mean()) / full.std()
            hits = [(y, x) for y in range(17) for x in range(17)
                    if np.allclose(z[y:y + 32, x:x + 32], img[0].numpy(), atol=1e-4)]
            assert hits, case


def test_2d_patches_keep_the_preset_but_not_its_resizing_crop(phantom2d):
    train, _, _ = build(data_dir=str(phantom2d), image_size=[32, 24], size_mode="patches", batch_size=2,
                        augmentation_strength="strong")
    names = [type(t).__name__ for t in train.dataset.transform.transforms]
    assert "RandomResizedCrop" not in names and "Affine" in names and "HorizontalFlip" in names
    assert next(iter(train))["image"].shape == (2, 1, 32, 24)


@pytest.mark.parametrize("size_mode", ["resize", "patches"])
def test_2d_raw_intensities_survive_augmentation(phantom2d, size_mode):
    """normalization none: albumentations clips float images to [0, 1] in its intensity transforms; the
    raw PNG values (0-255 here) must come through, in training as in validation."""
    train, val, _ = build(data_dir=str(phantom2d), image_size=32, size_mode=size_mode, normalization="none",
                          augmentation_strength="strong", batch_size=4)
    val_max = max(float(b["image"].max()) for b in val)
    assert val_max > 50
    for batch in train:
        for img in batch["image"]:
            assert float(img.max()) > 0.25 * val_max  # not squeezed into [0, 1]
    device = build(data_dir=str(phantom2d), image_size=32, size_mode=size_mode, normalization="none",
                   augmentation_strength="strong", augmentation_on="device")[0].batch_augment
    assert device.settings.unit_range is False and not device.zscore_after


def test_size_mode_resize_is_2d_only(phantom3d):
    with pytest.raises(ValidationError, match="size_mode resize is for 2-D"):
        Config(spatial_dims=3, size_mode="resize")
    with pytest.raises(ValueError, match="size_mode resize is for 2-D images, but the data is 3-D"):
        build(data_dir=str(phantom3d), size_mode="resize", image_size=16)


def test_3d_patch_larger_than_volume_is_padded(phantom3d):
    train, _, _ = build(data_dir=str(phantom3d), image_size=32, batch_size=1, augmentation=False)
    assert next(iter(train))["image"].shape == (1, 1, 32, 32, 32)


def _first_epoch(loader):
    return [(b["image"].clone(), b["label"].clone(), list(b["case"])) for b in loader]


def test_reproducible_by_seed(phantom2d):
    kw = dict(data_dir=str(phantom2d), image_size=32, batch_size=4, augmentation_strength="strong")
    a = _first_epoch(build(seed=3, **kw)[0])
    b = _first_epoch(build(seed=3, **kw)[0])
    c = _first_epoch(build(seed=4, **kw)[0])
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2] for x, y in zip(a, b))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))


def test_reproducible_with_a_worker_process(phantom3d):
    kw = dict(data_dir=str(phantom3d), image_size=8, batch_size=2, num_workers=1, seed=1, augmentation_strength="medium")
    a = _first_epoch(build(**kw)[0])
    b = _first_epoch(build(**kw)[0])
    assert all(torch.equal(x[0], y[0]) and x[2] == y[2] for x, y in zip(a, b))


def test_epochs_differ_but_validation_never_changes(phantom2d):
    train, val, _ = build(data_dir=str(phantom2d), image_size=32, batch_size=4, augmentation_strength="strong",
                          shuffle=False)
    e1, e2 = _first_epoch(train), _first_epoch(train)
    assert not torch.equal(e1[0][0], e2[0][0])  # fresh augmentation each epoch
    v1, v2 = _first_epoch(val), _first_epoch(val)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(v1, v2))
    plain = _first_epoch(build(data_dir=str(phantom2d), image_size=32, batch_size=4, augmentation=False)[1])
    assert all(torch.equal(x[0], y[0]) for x, y in zip(v1, plain))  # same as with augmentation off


@pytest.mark.parametrize("strength", ["light", "medium", "strong"])
def test_2d_augmentation_keeps_image_and_mask_aligned(strength):
    _, label = h.case_2d(1, size=(48, 48), classes=3)
    image = (label > 0).astype(np.float32)[..., None]  # the image is the mask: any misalignment shows
    tf = albumentations_pipeline((40, 40), strength, seed=0)
    for _ in range(20):
        out = tf(image=image, mask=label)
        img = out["image"][..., 0] if out["image"].ndim == 3 else out["image"]
        agree = ((img > 0.5) == (out["mask"] > 0)).mean()
        assert out["mask"].shape == (40, 40) and agree > 0.95
        assert set(np.unique(out["mask"]).tolist()) <= {0, 1, 2}  # nearest-neighbour: no invented classes


def test_3d_augmentation_keeps_image_and_label_aligned():
    _, label = h.case_3d(0, shape=(16, 16, 16))
    tf = monai_pipeline((16, 16, 16), "strong", seed=0)
    for _ in range(8):
        out = tf({"image": label[None].astype(np.float32), "label": label[None]})
        img, lab = np.asarray(out["image"])[0], np.asarray(out["label"])[0]
        assert ((img > 0.5) == (lab > 0)).mean() > 0.95


def test_disk_cache_is_written_reused_and_keyed_by_settings(phantom3d, tmp_path):
    kw = dict(data_dir=str(phantom3d), image_size=8, batch_size=2, augmentation=False, cache="disk",
              cache_dir=str(tmp_path / "cache"), shuffle=False)
    a = _first_epoch(build(**kw)[1])
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 5 and all((tmp_path / "cache" / e / "image.npy").exists() for e in entries)
    b = _first_epoch(build(**kw)[1])
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == entries
    build(**{**kw, "normalization": "minmax"})
    assert len(list((tmp_path / "cache").iterdir())) == 10
    m = _first_epoch(build(**{**kw, "cache": "memory"})[1])
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, m))


def test_cache_none_reads_files_each_time(phantom2d):
    a = _first_epoch(build(data_dir=str(phantom2d), image_size=32, cache="none", augmentation=False)[1])
    b = _first_epoch(build(data_dir=str(phantom2d), image_size=32, cache="memory", augmentation=False)[1])
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))


def test_resampling_to_target_spacing(phantom3d):
    _, val, info = build(data_dir=str(phantom3d), image_size=8, target_spacing=[2.4, 2.4, 2.0], augmentation=False)
    batch = next(iter(val))
    # nnU-Net's new shape: round(24 * 1.2 / 2.4) = 12, round(20 * 1.2 / 2.4) = 10, z unchanged
    assert batch["image"].shape[2:] == (12, 10, 16) and info.spacing == (2.4, 2.4, 2.0)
    assert set(batch["label"].unique().tolist()) <= {0, 1, 2}
    assert np.allclose(np.abs(np.diag(batch["affine"][0].numpy()))[:3], (2.4, 2.4, 2.0))


def test_ct_window_and_minmax_normalisation(phantom3d):
    for norm in ("ct", "minmax"):
        _, val, _ = build(data_dir=str(phantom3d), image_size=8, normalization=norm, ct_window=[-100, 200])
        img = next(iter(val))["image"]
        assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0


def test_node_run_writes_phantom_and_returns_ports(tmp_path):
    cfg = Config(data_dir=str(tmp_path / "ph"), synthetic="phantom2d", synthetic_cases="6", image_size="32",
                 batch_size="2", val_fraction="0.34")
    messages = []
    node = MedicalSegmentationLoader("data_loader", cfg, RunContext(run_dir=tmp_path, workflow_name="t", log=messages.append))
    out = node.run()
    assert set(out) == {"train_loader", "val_loader", "dataset_info"}
    assert (tmp_path / "ph" / "dataset.json").exists() and len(list((tmp_path / "ph" / "imagesTr").glob("*.png"))) == 6
    assert out["dataset_info"].num_train == 3 and out["dataset_info"].num_val == 3
    assert "msd layout" in messages[0]


@pytest.mark.parametrize("data, settings", [
    ("phantom2d", dict(image_size=32, augmentation_strength="strong")),  # albumentations, random resized crop
    ("phantom2d", dict(image_size=24, size_mode="patches", augmentation_strength="strong")),  # + patch sampling
    ("phantom3d", dict(image_size=8, augmentation_strength="strong")),  # MONAI, patch sampling
])
def test_a_training_sample_is_a_function_of_seed_epoch_and_index(data, settings, request):
    """Whatever was drawn before and whatever the global generators hold (the state of a worker
    process), the sample of key (epoch, index) is the same, also in a pickled copy (as workers
    get it when they are spawned); another key or seed gives another."""
    import pickle
    import random

    kw = dict(data_dir=str(request.getfixturevalue(data)), batch_size=2, **settings)
    ds = build(seed=3, **kw)[0].dataset
    first = ds[(2, 1)]
    for key in [(1, 0), (2, 0), 1, (5, 3)]:  # other samples in between
        ds[key]
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    again, copied = build(seed=3, **kw)[0].dataset, pickle.loads(pickle.dumps(ds))
    for sample in (ds[(2, 1)], again[(2, 1)], copied[(2, 1)]):
        assert torch.equal(sample["image"], first["image"]) and torch.equal(sample["label"], first["label"])
    for other in (ds[(3, 1)], ds[(2, 0)], build(seed=4, **kw)[0].dataset[(2, 1)]):
        assert not torch.equal(other["image"], first["image"])


def test_the_training_order_is_a_function_of_seed_and_epoch(phantom2d):
    """The training loader hands the dataset keys (epoch, index): a new order each epoch (set by the
    Trainer with set_epoch, or the next epoch when nobody sets it), the same for the same seed."""
    sampler = build(data_dir=str(phantom2d), image_size=32, seed=3)[0].sampler
    first = list(sampler)
    assert sorted(i for _, i in first) == list(range(len(first))) and {e for e, _ in first} == {1}
    second = list(sampler)
    assert {e for e, _ in second} == {2} and [i for _, i in second] != [i for _, i in first]
    sampler.set_epoch(1)
    assert list(sampler) == first
    assert list(build(data_dir=str(phantom2d), image_size=32, seed=3)[0].sampler) == first
    assert list(build(data_dir=str(phantom2d), image_size=32, seed=4)[0].sampler) != first
    unshuffled = build(data_dir=str(phantom2d), image_size=32, seed=3, shuffle=False)[0].sampler
    assert [i for _, i in unshuffled] == list(range(len(first)))
