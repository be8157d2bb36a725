"""Intensity normalisation settings per image channel, and the nonzero mask nnU-Net z-scores inside.

A loader normalises every channel one way (`normalization` with one `ct_window` and one
`intensity_mean` / `intensity_std`) unless a setting is given per channel (`channel_normalization`,
a list of windows, a list of numbers): then `per_channel` turns the settings into one `ChannelNorm`
per channel, and `segflow.data.prepare.normalize_case` applies them channel by channel.

`zscore_nonzero` is nnU-Net's ZScoreNormalization with use_mask_for_norm (nnunetv2/preprocessing/
normalization/default_normalization_schemes.py, cropping/cropping.py): the mask is where any channel
is nonzero, holes filled; each channel is z-scored with the mean and std of its voxels inside the mask
and is 0 outside it. nnU-Net's training mask also keeps labelled voxels outside the nonzero region,
its prediction mask does not; here both use the nonzero region, so training and prediction agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Words whose mapping is not [0, 1]: 2-D images must stay in [0, 1] for their augmentation.
ONLY_3D = ("ct_zscore", "zscore_nonzero")


@dataclass(frozen=True)
class ChannelNorm:
    word: str  # zscore | zscore_nonzero | minmax | ct | ct_zscore | none
    window: tuple[float, float] | None = None  # ct, ct_zscore: [low, high]
    intensity: tuple[float, float] | None = None  # ct_zscore: the dataset's (mean, std)


@dataclass(frozen=True)
class ChannelPlan:
    """One ChannelNorm per image channel, and the config fields that listed them (for messages)."""

    channels: tuple[ChannelNorm, ...]
    fields: tuple[str, ...]


class ChannelCountError(ValueError):
    """The settings list another number of channels than a case's image has: a config problem,
    reported once for the dataset rather than once per case."""


def per_channel(words, windows, means, stds) -> ChannelPlan | None:
    """The settings per channel when any of them is a list (`words` a list of words, `windows` a list of
    [low, high] pairs or None, `means` / `stds` lists of numbers or None); None when each is one value
    for every channel. A single value is used for every channel; lists must agree in length."""
    listed = {name: value for name, value in (("channel_normalization", words), ("ct_window", windows),
                                              ("intensity_mean", means), ("intensity_std", stds))
              if _is_channel_list(name, value)}
    if not listed:
        return None
    lengths = {name: len(value) for name, value in listed.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError("per-channel settings disagree on the number of channels: "
                         + ", ".join(f"{name} has {n}" for name, n in lengths.items()))
    n = next(iter(lengths.values()))
    pick = lambda name, value, c: value[c] if name in listed else value  # noqa: E731 - one value or channel c's
    channels = []
    for c in range(n):
        window = pick("ct_window", windows, c)
        mean, std = pick("intensity_mean", means, c), pick("intensity_std", stds, c)
        channels.append(ChannelNorm(pick("channel_normalization", words, c),
                                    None if window is None else (float(window[0]), float(window[1])),
                                    None if mean is None or std is None else (float(mean), float(std))))
    return ChannelPlan(tuple(channels), tuple(listed))


def _is_channel_list(name: str, value) -> bool:
    """Whether `value` is a per-channel list: any list of words or numbers, but for ct_window a list
    of pairs (a plain [low, high] is one window for every channel)."""
    if not isinstance(value, (list, tuple)):
        return False
    if name == "ct_window":
        return any(v is None or isinstance(v, (list, tuple)) for v in value)
    return True


def check_channel_count(plan: ChannelPlan, channels: int, case_id: str) -> None:
    if len(plan.channels) != channels:
        *rest, last = plan.fields
        named = f"{', '.join(rest)} and {last}" if rest else last
        raise ChannelCountError(f"{named} {'have' if rest else 'has'} {len(plan.channels)} entries, one per image "
                                f"channel, but the images have {channels} channel(s) (case {case_id}); give one "
                                "entry per channel")


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Where any channel of `image` (C, *S) is nonzero, with enclosed holes filled (nnU-Net's
    create_nonzero_mask): zeros inside the body (air in the sinuses, a dark lesion) still count."""
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(np.any(image != 0, axis=0))


def zscore_inside(channel: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`channel` (*S) z-scored with the mean and std of its voxels inside `mask`, 0 outside it."""
    out = np.zeros(channel.shape, np.float32)
    inside = channel[mask]
    if inside.size:
        out[mask] = (inside - inside.mean()) / max(float(inside.std()), 1e-8)
    return out


def two_d_word(words: list[str]) -> str:
    """The one treatment 2-D images of these channel words get around their augmentation (the 2-D
    datasets handle every channel alike): z-scored afterwards (zscore), raw values kept (none), or
    [0, 1] as normalised (ct, minmax). ValueError when the channels need different treatments."""
    kinds = {"minmax" if w in ("ct", "minmax") else w for w in words}
    if len(kinds) > 1:
        raise ValueError(f"channel_normalization {list(words)} mixes treatments 2-D images cannot get per channel: "
                         "2-D images stay in [0, 1] for augmentation and are z-scored (zscore) or kept raw (none) "
                         "as a whole; use one of zscore or none for every channel, or any mix of ct and minmax")
    return kinds.pop()
