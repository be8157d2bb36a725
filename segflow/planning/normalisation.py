"""Intensity normalisation per channel, from its modality (nnU-Net: get_normalization_scheme,
ExperimentPlanner.determine_normalization_scheme_and_whether_mask_is_used_for_norm,
documentation/explanation_normalization.md), and the loader settings that carry it out.
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
    """(the per-channel plan, the MedicalSegmentationLoader fields, why). The loader normalises all
    channels one way, so a dataset whose channels need different schemes gets the per-case z-score and
    the per-channel plan records what nnU-Net would do."""
    schemes = channel_schemes(modalities)
    masks = use_mask_for_norm(schemes, relative_size)
    planned = {"schemes": schemes, "use_mask_for_norm": masks}
    named = ", ".join(f"channel {i} {m!r}: {s}" for i, (m, s) in enumerate(zip(modalities, schemes)))
    if schemes == ["ct"] and dims == 3:
        stats = intensity[0]
        low, high = stats["percentile_00_5"], stats["percentile_99_5"]
        fields = {"normalization": "ct_zscore", "ct_window": [_short(low), _short(high)],
                  "intensity_mean": _short(stats["mean"]), "intensity_std": _short(stats["std"])}
        return planned, fields, (f"normalization ct_zscore ({named}): clip to the dataset's foreground 0.5/99.5 "
                                 f"percentiles [{low:.4g}, {high:.4g}], then z-score with the foreground mean "
                                 f"{stats['mean']:.4g} and std {stats['std']:.4g} (nnU-Net's CTNormalization; CT "
                                 "values are physical, so one dataset-wide mapping keeps them comparable)")
    if schemes == ["ct"]:
        stats = intensity[0]
        low, high = stats["percentile_00_5"], stats["percentile_99_5"]
        return planned, {"normalization": "ct", "ct_window": [_short(low), _short(high)]}, (
            f"normalization ct with window [{low:.4g}, {high:.4g}] ({named}): nnU-Net clips to the foreground "
            "0.5/99.5 percentiles and z-scores with dataset-wide numbers; the 2-D loader keeps intensities in [0, 1] "
            "for its augmentation, so the same clip is mapped linearly to [0, 1] (also one dataset-wide mapping)")
    if set(schemes) == {"none"}:
        return planned, {"normalization": "none"}, f"normalization none ({named})"
    if set(schemes) <= {"rescale_0_1", "rgb_0_1"}:
        return planned, {"normalization": "minmax"}, f"normalization minmax ({named}): rescale to [0, 1]"
    why = f"normalization zscore per case and channel ({named}; nnU-Net's ZScoreNormalization)"
    if any(masks):
        why += (f"; cropping to the nonzero region leaves the median case at {relative_size:.0%} of its size "
                "(< 75%), where nnU-Net z-scores inside the nonzero mask only (use_mask_for_norm); the loader "
                "z-scores the whole image, which the planned data records")
    if len(set(schemes)) > 1:
        why += "; the channels need different schemes, and the loader applies one to all, so z-score for every channel"
    elif "ct" in schemes:
        why += "; ct_zscore holds the numbers of one channel, so several CT channels are z-scored per case"
    return planned, {"normalization": "zscore"}, why


def _short(value: float) -> float:
    """Six significant digits: what the workflow shows, and what training uses."""
    return float(f"{value:.6g}")
