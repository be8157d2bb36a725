"""The dataset fingerprint (nnU-Net's dataset_fingerprint.json, extended): per-case geometry and
classes, per-channel foreground intensity statistics, the declared modalities.

Every case is read once, on threads (decoding NIfTI/PNG releases the GIL for much of the work);
the result is written to fingerprint.json together with a key of the inputs (each file's path,
size and modification time), and reused while that key is unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segflow.data.label_coding import decide
from segflow.data.layouts import Layout, find_cases
from segflow.data.prepare import mask_values
from segflow.planning.case_stats import FOREGROUND_SAMPLES, CaseStats, analyse_case
from segflow.planning.errors import PlanError
from segflow.workflow.files import write_json

VERSION = 3  # raised when what the fingerprint holds changes, so an older one is recomputed (3: regions, ignore label)
PERCENTILES = (0.5, 50.0, 99.5)


def fingerprint(data_dir: str | Path, path: str | Path, layout: str = "auto", progress: bool = True,
                log=print) -> dict:
    """The fingerprint of the labelled cases in `data_dir`, read from `path` when its inputs are
    unchanged, else computed and written there."""
    data_dir = Path(data_dir)
    try:
        found = find_cases(data_dir, layout)
    except (ValueError, FileNotFoundError) as e:
        raise PlanError(str(e)) from e
    key = inputs_key(found)
    cached = _cached(Path(path), key)
    if cached is not None:
        log(f"segflow plan: reusing {path} (the dataset's files have not changed)")
        return cached
    stats = _analyse_all(found, progress)
    result = summarise(found, stats, key)
    write_json(path, result, indent=1)
    return result


def inputs_key(found: Layout) -> str:
    """Changes when a case is added or removed, or any file of it is rewritten."""
    parts = [f"v{VERSION}", str(FOREGROUND_SAMPLES)]
    meta = found.root / "dataset.json"
    for p in [meta] * meta.exists() + [p for c in found.cases for p in [*c.images, c.label]]:
        st = p.stat()
        parts.append(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()


def _cached(path: Path, key: str) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("inputs_key") == key else None


def _analyse_all(found: Layout, progress: bool) -> list[CaseStats]:
    from tqdm.auto import tqdm

    workers = min(8, os.cpu_count() or 1)
    # the loader's rule for what the label files' values mean, decided once for the dataset
    coding = decide(found.label_values, f"labels in {found.root / 'dataset.json'}", mask_values(found.cases, workers),
                    None)

    def one(case):
        try:
            return analyse_case(case, coding, FOREGROUND_SAMPLES, found.labels.ignore)
        except PlanError:
            raise
        except (ValueError, FileNotFoundError) as e:
            text = str(e)
            raise PlanError(text if text.startswith("case ") else f"case {case.case_id}: {text}") from e

    with ThreadPoolExecutor(workers) as pool, \
            tqdm(total=len(found.cases), desc="fingerprint", unit="case", disable=not progress) as bar:
        futures = [pool.submit(one, case) for case in found.cases]
        results = []
        try:
            for future in futures:  # in case order, so the first bad case (in order) is the one reported
                results.append(future.result())
                bar.update()
        except PlanError:
            pool.shutdown(cancel_futures=True)  # do not read the rest of a dataset that cannot be planned
            raise
    return results


def summarise(found: Layout, stats: list[CaseStats], key: str) -> dict:
    """The dataset-wide fingerprint from the per-case statistics."""
    _check_agree(stats)
    first = stats[0]
    meta = _dataset_json(found.root)
    warnings = [f"case {s.case_id}: label {s.files[-1]} has no foreground (only class 0); it still counts "
                "for spacing and shape" for s in stats if not set(s.class_voxels) - {"0"}]
    if len(warnings) == len(stats):
        raise PlanError(f"{found.root}: no case has any foreground (every label is all 0); nothing to plan for")
    num_classes = len(found.class_names) if found.class_names else max(2, max(int(k) for s in stats for k in s.class_voxels) + 1)
    return {
        "version": VERSION,
        "inputs_key": key,
        "dataset": {"name": _dataset_name(found.root, meta), "data_dir": str(found.root), "layout": found.name,
                    "declares_classes": bool(found.class_names)},
        "spatial_dims": first.dims,
        "channels": first.channels,
        "modalities": _modalities(found.root, meta, first.channels),
        "num_classes": num_classes,
        "class_names": found.class_names or ["background"] + [f"class_{i}" for i in range(1, num_classes)],
        "regions": found.labels.names(),  # region-based training: one output channel each
        "ignore_label": found.labels.ignore,
        "cases": [s.as_json() for s in stats],
        "median_relative_size_after_crop": float(np.median([np.prod(s.shape_after_crop) / np.prod(s.shape)
                                                            for s in stats])),
        "foreground_intensity": [_intensity(np.concatenate([s.foreground[c] for s in stats]))
                                 for c in range(first.channels)],
        "warnings": warnings,
    }


def _check_agree(stats: list[CaseStats]) -> None:
    first = stats[0]
    for s in stats[1:]:
        if s.dims != first.dims:
            raise PlanError(f"case {s.case_id}: {s.files[-1]} is {s.dims}-D but case {first.case_id} "
                            f"({first.files[-1]}) is {first.dims}-D; all cases need the same dimensionality")
        if s.channels != first.channels:
            raise PlanError(f"case {s.case_id}: {s.channels} image channel(s) in {', '.join(s.files[:-1])}, but case "
                            f"{first.case_id} has {first.channels}; all cases need the same channels")
    with_spacing = [s for s in stats if s.spacing is not None]
    if with_spacing and len(with_spacing) != len(stats):
        bare = next(s for s in stats if s.spacing is None)
        raise PlanError(f"case {bare.case_id}: {bare.files[0]} states no voxel spacing, but case "
                        f"{with_spacing[0].case_id} ({with_spacing[0].files[0]}) does; store every case in a "
                        "format with spacing (NIfTI, NRRD/MHA, DICOM) or none")


def _intensity(values: np.ndarray) -> dict:
    """Dataset-wide statistics of one channel's sampled foreground intensities (nnU-Net's
    foreground_intensity_properties_per_channel)."""
    if values.size == 0:
        return {k: None for k in ("mean", "std", "median", "min", "max", "percentile_00_5", "percentile_99_5")} | {"samples": 0}
    low, median, high = np.percentile(values, PERCENTILES)
    return {"mean": float(values.mean()), "std": float(values.std()), "median": float(median),
            "min": float(values.min()), "max": float(values.max()),
            "percentile_00_5": float(low), "percentile_99_5": float(high), "samples": int(values.size)}


def _dataset_json(root: Path) -> dict:
    try:
        meta = json.loads((root / "dataset.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _dataset_name(root: Path, meta: dict) -> str:
    name = meta.get("name") if isinstance(meta.get("name"), str) else ""
    return name.strip() or root.resolve().name


def _modalities(root: Path, meta: dict, channels: int) -> list[str]:
    """Per channel: nnU-Net v2's `channel_names` or MSD's `modality` ({"0": "CT", ...}); "unknown"
    where the dataset does not say (folder layouts)."""
    declared = meta.get("channel_names") or meta.get("modality")
    if not isinstance(declared, dict):
        return ["unknown"] * channels
    try:
        names = [str(declared[k]) for k in sorted(declared, key=int)]
    except ValueError as e:
        raise PlanError(f"{root}/dataset.json: channel keys must be 0, 1, ...; got {sorted(declared)}") from e
    if len(names) != channels:
        raise PlanError(f"{root}/dataset.json declares {len(names)} channel(s) ({', '.join(names)}), "
                        f"the images have {channels}")
    return names
