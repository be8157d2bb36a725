"""Augmentation presets (light / medium / strong): albumentations for 2-D, MONAI for 3-D.

2-D pipelines move image and mask through the same geometric transforms, the mask with
nearest-neighbour interpolation, and see images scaled to [0, 1]. With size_mode "resize" they
end at `image_size` (random resized crop when augmenting, a plain resize otherwise); with
"patches" they get patches already cut to `image_size` at the image's own resolution and keep
that size. 3-D pipelines work on patches already cut (see `datasets.sample_patch`).

Training datasets point a pipeline's random draws at their per-sample generators (`draw_from`),
so its transforms draw nothing from generators of their own or global ones.

Random erasing (`erasing` = (probability, (min, max) side fraction)) comes last, on the image only,
as torchvision's RandomErasing does: one box (albumentations' CoarseDropout) or cuboid (MONAI's
RandCoarseDropoutd) set to 0, each side a fraction of the sample's extent drawn from [min, max].
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from segflow.data.draws import SampleRandom

STRENGTHS = ("light", "medium", "strong")

Erasing = tuple[float, tuple[float, float]]  # (probability per sample, (min, max) side fraction)


def draw_from(pipeline, draws: SampleRandom) -> None:
    """Make every transform of `pipeline` (albumentations Compose, MONAI Compose, or None) draw from
    `draws`' generators, the same objects for all of them, so restarting those restarts the pipeline."""
    if pipeline is None:
        return
    if hasattr(pipeline, "py_random"):  # albumentations: handed on to every transform, nested ones too
        pipeline.set_random_state(draws.numpy, draws.python)
        return
    from monai.transforms import Randomizable

    # MONAI's Compose.set_random_state gives each transform a RandomState of its own, seeded once:
    # the transforms are pointed at the shared one each (RandAffined hands it on to its parts)
    pipeline.set_random_state(state=draws.legacy)
    for transform in pipeline.transforms:
        if isinstance(transform, Randomizable):
            transform.set_random_state(state=draws.legacy)


def albumentations_pipeline(size: tuple[int, int], strength: str | None, seed: int, resize: bool = True,
                            erasing: Erasing | None = None):
    """`strength` None: resize only (validation, or augmentation off), or None for patches, which
    need no transform then. `resize` False: the samples are patches of `size` already, so the
    presets' random resized crop is left out (the affine's scaling in medium/strong stays).
    `erasing` (with a preset) appends random erasing."""
    import albumentations as A
    import cv2

    h, w = size
    if strength is None:
        return A.Compose([A.Resize(h, w)], seed=seed) if resize else None
    if strength not in STRENGTHS:
        raise ValueError(f"augmentation_strength must be one of {STRENGTHS}, got {strength!r}")
    square = h == w  # rotate-90 would change the shape of a non-square sample
    const = dict(border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0)
    if strength == "light":
        tf = [
            A.RandomResizedCrop((h, w), scale=(0.8, 1.0), ratio=(0.9, 1.1)),
            A.HorizontalFlip(p=0.5),
            A.RandomBrightnessContrast(0.1, 0.1, p=0.3),
        ]
    elif strength == "medium":
        tf = [
            A.RandomResizedCrop((h, w), scale=(0.6, 1.0), ratio=(0.8, 1.25)),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            *([A.RandomRotate90(p=0.5)] if square else []),
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-15, 15), p=0.5, **const),
            A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
            A.RandomGamma((80, 120), p=0.3),
        ]
    else:
        tf = [
            A.RandomResizedCrop((h, w), scale=(0.4, 1.0), ratio=(0.75, 1.33)),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            *([A.RandomRotate90(p=0.5)] if square else []),
            A.Affine(scale=(0.8, 1.2), translate_percent=(-0.1, 0.1), rotate=(-30, 30), shear=(-10, 10), p=0.7, **const),
            A.OneOf([
                A.ElasticTransform(alpha=30, sigma=6, **const),
                A.GridDistortion(num_steps=5, distort_limit=0.3, **const),
            ], p=0.3),
            A.RandomBrightnessContrast(0.3, 0.3, p=0.7),
            A.RandomGamma((70, 150), p=0.5),
            A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
        ]
    if not resize:
        tf = [t for t in tf if not isinstance(t, A.RandomResizedCrop)]
    if erasing is not None:
        p, sides = erasing  # fractions of the height and width; fill_mask None: the mask is left alone
        tf.append(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=sides, hole_width_range=sides,
                                  fill=0, fill_mask=None, p=p))
    return A.Compose(tf, seed=seed)


def monai_pipeline(patch: tuple[int, ...], strength: str | None, seed: int, erasing: Erasing | None = None):
    """Random 3-D transforms on a patch dict {"image": (C,*S), "label": (1,*S)}; None when off.
    `erasing` (with a preset) appends random erasing of the image."""
    if strength is None:
        return None
    if strength not in STRENGTHS:
        raise ValueError(f"augmentation_strength must be one of {STRENGTHS}, got {strength!r}")
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandCoarseDropoutd,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = ["image", "label"]
    tf = [RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)]
    tf += [RandScaleIntensityd("image", factors=0.1, prob=0.5), RandShiftIntensityd("image", offsets=0.1, prob=0.5)]
    if strength in ("medium", "strong"):
        if patch[0] == patch[1]:
            tf.append(RandRotate90d(keys, prob=0.3, max_k=3, spatial_axes=(0, 1)))
        tf.append(RandGaussianNoised("image", prob=0.15, std=0.05))
    if strength == "strong":
        tf += [
            RandAffined(keys, prob=0.3, rotate_range=(0.26, 0.26, 0.26), scale_range=(0.15, 0.15, 0.15),
                        mode=("bilinear", "nearest"), padding_mode="zeros"),
            RandGaussianSmoothd("image", prob=0.15, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
            RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
        ]
    if erasing is not None:
        p, (low, high) = erasing  # MONAI takes the sides in voxels; a side is drawn in [spatial_size, max]
        tf.append(RandCoarseDropoutd("image", holes=1, spatial_size=[max(1, int(low * s)) for s in patch],
                                     max_spatial_size=[max(1, int(high * s)) for s in patch], fill_value=0.0, prob=p))
    c = Compose(tf)
    c.set_random_state(seed=seed)
    return c
