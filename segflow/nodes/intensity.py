"""The loader's intensity normalisation settings, checked statically (`segflow validate`).

One word for every channel (`normalization`) or one per channel (`channel_normalization`), with
their numbers: `ct_window` one [low, high] or one per channel, `intensity_mean` / `intensity_std`
one number or one per channel. What needs the data (the channel count) is checked when the loader
reads it (segflow.data.intensity, which applies the same rules at run time).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segflow.nodes.base import Finding

if TYPE_CHECKING:
    from segflow.nodes.data import MedicalSegmentationLoaderConfig

PER_CHANNEL = ("channel_normalization", "ct_window", "intensity_mean", "intensity_std")
ONLY_3D = ("ct_zscore", "zscore_nonzero")
_NUMBERS = {"ct_window": "a [low, high] window", "intensity_mean": "the dataset's foreground mean",
            "intensity_std": "the dataset's foreground std"}
_NEEDS = {"ct": ("ct_window",), "ct_zscore": ("ct_window", "intensity_mean", "intensity_std")}


def windows(ct_window: list) -> list[list[float]]:
    """The [low, high] pairs `ct_window` holds: itself, or the per-channel ones that are given."""
    return [w for w in ct_window if w is not None] if is_listed("ct_window", ct_window) else [ct_window]


def is_listed(key: str, value: Any) -> bool:
    """Whether `value` gives `key` per channel: a list (for ct_window, a list of pairs or nulls; one
    [low, high] serves every channel)."""
    if not isinstance(value, list):
        return False
    return key != "ct_window" or any(v is None or isinstance(v, list) for v in value)


def normalisation_findings(config: MedicalSegmentationLoaderConfig) -> list[Finding]:
    """Per-channel lists that disagree in length, numbers a channel's word needs and lacks, words 2-D
    images cannot take; a warning for a normalization that channel_normalization overrides."""
    listed = {k: len(getattr(config, k)) for k in PER_CHANNEL if is_listed(k, getattr(config, k))}
    if len(set(listed.values())) > 1:
        first, *rest = listed
        odd = next(k for k in rest if listed[k] != listed[first])
        return [Finding(odd, "bad_value", f"{odd} has {listed[odd]} entries but {first} has {listed[first]}; "
                        "per-channel settings take one entry per image channel",
                        hint="give every per-channel list the same length, or one value for every channel")]
    if listed and config.synthetic != "none" and set(listed.values()) != {1}:
        key = next(iter(listed))
        return [Finding(key, "bad_value", f"{key} has {listed[key]} entries but the {config.synthetic} phantom "
                        "has 1 image channel", hint="give one entry, or one value for every channel")]
    found = _missing_numbers(config, listed) + _two_d_findings(config)
    if config.channel_normalization is not None and "normalization" in config.model_fields_set:
        found.append(Finding("normalization", "unused_value", "normalization is ignored: channel_normalization "
                             "gives every channel its own", hint="remove normalization", severity="warning"))
    return found


def _channel_value(config: MedicalSegmentationLoaderConfig, key: str, channel: int) -> Any:
    value = getattr(config, key)
    return value[channel] if is_listed(key, value) else value


def _missing_numbers(config: MedicalSegmentationLoaderConfig, listed: dict[str, int]) -> list[Finding]:
    """A finding per field that lacks a number some channel's word needs (ct_window has a default, so
    only a per-channel null can lack one)."""
    hint = "`segflow plan DATA_DIR` writes them; or use normalization zscore"
    if not listed:
        missing = [k for k in ("intensity_mean", "intensity_std") if getattr(config, k) is None]
        if config.normalization != "ct_zscore" or not missing:
            return []
        return [Finding(missing[0], "missing_value", f"normalization ct_zscore needs {' and '.join(missing)} "
                        "(the dataset's foreground mean and std after clipping to ct_window)", hint=hint)]
    words = config.channel_normalization or [config.normalization] * next(iter(listed.values()))
    found = []
    for key in ("ct_window", "intensity_mean", "intensity_std"):
        lacking = [c for c, w in enumerate(words) if key in _NEEDS.get(w, ()) and _channel_value(config, key, c) is None]
        if lacking:
            named = ", ".join(f"{c} ({words[c]})" for c in lacking)
            found.append(Finding(key, "missing_value", f"{key} has no value for channel(s) {named}, which need "
                                 f"{_NUMBERS[key]}", hint=hint))
    return found


def _two_d_findings(config: MedicalSegmentationLoaderConfig) -> list[Finding]:
    """2-D images stay in [0, 1] for their augmentation and are treated alike in every channel
    (segflow.data.intensity.two_d_word says the same at run time)."""
    if config.declared_dims() != 2:
        return []
    key = "channel_normalization" if config.channel_normalization else "normalization"
    words = config.channel_normalization or [config.normalization]
    bad = [w for w in dict.fromkeys(words) if w in ONLY_3D]
    if bad:
        hint = "use ct with the same ct_window" if bad[0] == "ct_zscore" else "use zscore"
        return [Finding(key, "bad_value", f"normalization {bad[0]} is for 3-D data: 2-D images stay in [0, 1] for "
                        "augmentation", hint=hint)]
    if len({"minmax" if w in ("ct", "minmax") else w for w in words}) > 1:
        return [Finding(key, "bad_value", f"channel_normalization {words} mixes treatments 2-D images cannot get per "
                        "channel: they are z-scored (zscore) or kept raw (none) after augmentation as a whole",
                        hint="use zscore or none for every channel, or any mix of ct and minmax")]
    return []
