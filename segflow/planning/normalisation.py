"""Intensity normalisation per channel, from its modality (nnU-Net: get_normalization_scheme,
ExperimentPlanner.determine_normalization_scheme_and_whether_mask_is_used_for_norm,
documentation/explanation_normalization.md), and the loader settings that carry it out: for volumes
exactly nnU-Net's, channel by channel (`channel_normalization` when channels differ).
"""
from __future__ import annotations

# nnU-Net's modality words (case-insensitive); any other modality is z-scored per case.
SCHEME_OF_MODALITY = {"ct": "ct", "nonorm": "none", "none": "none", "rescale_to_0_1": "rescale_0_1",
                      "rgb_to_0_1": "rgb_0_1"}
# Cropping to the nonzero region shrinking the median case below this fraction means the images
# have a large zero background (skull-stripped brains): z-score inside the nonzero mask.
MASK_FOR_NORM_BELOW = 0.75


def channel_schemes(modalities: list[str]) -> list[str]:
    return [SCHEME_OF_MODALITY.get(m.strip().lower(), "zscore") for m in modalities]


def use_mask_for_norm(schemes: list[str], relative_size_after_crop: float) -> list[bool]:
    """Only z-score leaves the outside of the mask at 0, so only z-scored channels use the mask."""
    crop_shrinks = relative_size_after_crop < MASK_FOR_NORM_BELOW
    return [crop_shrinks and s == "zscore" for s in schemes]


def loader_settings(modalities: list[str], intensity: list[dict], relative_size: float, dims: int
                    ) -> tuple[dict, dict, str]:
    """(the per-channel plan, the MedicalSegmentationLoader fields that carry it out, why). Volumes get
    what nnU-Net applies, channel by channel; 2-D images stay in [0, 1] for their augmentation, which
    treats every channel alike, so they get the nearest one setting for all channels."""
    schemes = channel_schemes(modalities)
    masks = use_mask_for_norm(schemes, relative_size)
    planned = {"schemes": schemes, "use_mask_for_norm": masks}
    if dims == 2:
        return (planned, *_two_d_settings(modalities, schemes, masks, intensity, relative_size))
    words = [_WORD_3D[s] if not mask else "zscore_nonzero" for s, mask in zip(schemes, masks)]
    fields = {"normalization": words[0]} if len(set(words)) == 1 else {"channel_normalization": words}
    windows = [_window(s, stats) for s, stats in zip(schemes, intensity)]
    means = [_short(stats["mean"]) if s == "ct" else None for s, stats in zip(schemes, intensity)]
    stds = [_short(stats["std"]) if s == "ct" else None for s, stats in zip(schemes, intensity)]
    for key, values in (("ct_window", windows), ("intensity_mean", means), ("intensity_std", stds)):
        if any(v is not None for v in values):
            # one value serves every channel when they all have the same; else one entry per channel
            fields[key] = values[0] if all(v == values[0] for v in values) else values
    channels_of: dict[str, list[str]] = {}  # channels alike share one reason
    for i, (m, s, w, stats) in enumerate(zip(modalities, schemes, words, intensity)):
        channels_of.setdefault(_why_3d(s, w, stats, relative_size), []).append(f"{i} {m!r}")
    reasons = [f"channel{'s' if len(c) > 1 else ''} {', '.join(c)}: {why}" for why, c in channels_of.items()]
    said = words[0] if len(set(words)) == 1 else f"per channel {words}"
    return planned, fields, f"normalization {said}, as nnU-Net normalises each channel: " + "; ".join(reasons)


# nnU-Net's scheme -> the loader's word for a volume (zscore becomes zscore_nonzero with use_mask_for_norm);
# rgb_to_0_1 divides by 255, which is ct's mapping with the window [0, 255].
_WORD_3D = {"ct": "ct_zscore", "zscore": "zscore", "rescale_0_1": "minmax", "rgb_0_1": "ct", "none": "none"}


def _window(scheme: str, stats: dict) -> list[float] | None:
    if scheme == "ct":
        return [_short(stats["percentile_00_5"]), _short(stats["percentile_99_5"])]
    return [0.0, 255.0] if scheme == "rgb_0_1" else None


def _why_3d(scheme: str, word: str, stats: dict, relative_size: float) -> str:
    if scheme == "ct":
        return (f"ct_zscore: clip to the dataset's foreground 0.5/99.5 percentiles [{stats['percentile_00_5']:.4g}, "
                f"{stats['percentile_99_5']:.4g}], then z-score with the foreground mean {stats['mean']:.4g} and std "
                f"{stats['std']:.4g} (nnU-Net's CTNormalization; CT values are physical, so one dataset-wide "
                "mapping keeps them comparable)")
    if word == "zscore_nonzero":
        return (f"zscore_nonzero: cropping to the nonzero region leaves the median case at {relative_size:.0%} of "
                "its size (< 75%), so nnU-Net z-scores inside the nonzero mask only and leaves the outside 0 "
                "(ZScoreNormalization with use_mask_for_norm)")
    return {"zscore": "zscore per case (nnU-Net's ZScoreNormalization)",
            "rescale_0_1": "minmax: rescale each case to [0, 1] (nnU-Net's RescaleTo01Normalization)",
            "rgb_0_1": "ct with ct_window [0, 255]: divide by 255 (nnU-Net's RGBTo01Normalization)",
            "none": "none (nnU-Net's NoNormalization)"}[scheme]


def _two_d_settings(modalities: list[str], schemes: list[str], masks: list[bool], intensity: list[dict],
                    relative_size: float) -> tuple[dict, str]:
    """2-D: one setting for every channel that keeps the images in [0, 1] for augmentation, nearest to
    nnU-Net's (z-score happens after augmentation)."""
    named = ", ".join(f"channel {i} {m!r}: {s}" for i, (m, s) in enumerate(zip(modalities, schemes)))
    kept = "2-D images stay in [0, 1] for their augmentation, which treats every channel alike"
    if schemes == ["ct"]:
        stats = intensity[0]
        low, high = stats["percentile_00_5"], stats["percentile_99_5"]
        return {"normalization": "ct", "ct_window": [_short(low), _short(high)]}, (
            f"normalization ct with window [{low:.4g}, {high:.4g}] ({named}): nnU-Net clips to the foreground "
            f"0.5/99.5 percentiles and z-scores with dataset-wide numbers; {kept}, so the same clip is mapped "
            "linearly to [0, 1] (also one dataset-wide mapping)")
    if set(schemes) == {"none"}:
        return {"normalization": "none"}, f"normalization none ({named})"
    if set(schemes) <= {"rescale_0_1", "rgb_0_1"}:
        return {"normalization": "minmax"}, f"normalization minmax ({named}): rescale to [0, 1]"
    why = f"normalization zscore per case and channel ({named}; nnU-Net's ZScoreNormalization)"
    if any(masks):
        why += (f"; cropping to the nonzero region leaves the median case at {relative_size:.0%} of its size "
                f"(< 75%), where nnU-Net z-scores inside the nonzero mask only (use_mask_for_norm); {kept} and "
                "z-scored as a whole after it, so zscore_nonzero is for volumes only")
    if len(set(schemes)) > 1:
        why += f"; the channels need different schemes and {kept}, so z-score for every channel"
    elif "ct" in schemes:
        why += f"; several CT channels: {kept}, so each is z-scored per case"
    return {"normalization": "zscore"}, why


def _short(value: float) -> float:
    """Six significant digits: what the workflow shows, and what training uses."""
    return float(f"{value:.6g}")
