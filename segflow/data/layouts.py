"""Finding the cases of a dataset folder: MSD, nnU-Net v2, or plain image/mask folders.

Images and labels are paired by case identifier, never by sort order; a file without its
partner is an error that names it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from segflow.data.readers import is_readable, split_name

LAYOUTS = ("msd", "nnunet", "folder")
IMAGE_DIRS = ("images", "imgs", "image")
MASK_DIRS = ("masks", "labels", "mask", "label", "annotations")
MASK_SUFFIXES = ("_mask", "_seg", "_label", "_labels", "_gt", "-mask", "_masks")


@dataclass
class Case:
    case_id: str
    images: list[Path]  # one file per channel (nnU-Net), or one file holding all channels
    label: Path
    split: str | None = None  # "train" / "val" when the layout carries its own split


@dataclass
class Layout:
    name: str
    root: Path
    cases: list[Case]
    class_names: list[str] | None = None  # declared classes, index = class value
    num_channels: int | None = None  # declared channels (dataset.json), checked against the data
    notes: list[str] = field(default_factory=list)


def find_cases(root: str | Path, layout: str = "auto") -> Layout:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {root} does not exist or is not a folder (loader field 'data_dir')")
    meta = _dataset_json(root)
    if layout == "auto":
        layout = _detect(root, meta)
    if layout == "nnunet":
        found = _nnunet(root, meta)
    elif layout == "msd":
        found = _msd(root, meta)
    elif layout == "folder":
        found = _folder(root)
    else:
        raise ValueError(f"layout must be one of auto, {', '.join(LAYOUTS)}; got {layout!r}")
    if not found.cases:
        raise ValueError(f"{root}: no cases found in the {layout} layout; check data_dir and 'layout'")
    ids = [c.case_id for c in found.cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"{root}: case ids {dupes[:5]} occur more than once (same name, different file types?)")
    found.cases.sort(key=lambda c: (c.split or "", c.case_id))
    return found


def _dataset_json(root: Path) -> dict | None:
    path = root / "dataset.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def _detect(root: Path, meta: dict | None) -> str:
    if meta is not None and ("channel_names" in meta or "file_ending" in meta):
        return "nnunet"
    if meta is not None and "training" in meta or (root / "imagesTr").is_dir():
        return "msd"
    if any((root / d).is_dir() for d in IMAGE_DIRS + ("train",)):
        return "folder"
    raise ValueError(
        f"cannot tell the layout of {root}: expected dataset.json (MSD or nnU-Net v2), imagesTr/ + "
        "labelsTr/, or images/ + masks/ (optionally under train/ and val/); set 'layout' or fix the folder"
    )


def _nnunet(root: Path, meta: dict | None) -> Layout:
    if meta is None:
        raise FileNotFoundError(f"{root}/dataset.json is missing; nnU-Net v2 datasets need one")
    for key in ("channel_names", "labels", "file_ending"):
        if key not in meta:
            raise ValueError(f"{root}/dataset.json has no '{key}' entry (nnU-Net v2 format)")
    names: dict[int, str] = {}
    for name, value in meta["labels"].items():
        if not isinstance(value, int):
            raise ValueError(
                f"{root}/dataset.json: label {name!r} is a region ({value}); region-based training is not supported"
            )
        names[value] = name
    ending = meta["file_ending"]
    n_ch = len(meta["channel_names"])
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    by_case: dict[str, dict[int, Path]] = {}
    for p in _files(root / "imagesTr"):
        m = pattern.match(p.name)
        if not m:
            raise ValueError(f"{p}: nnU-Net image files are named CASE_XXXX{ending} (XXXX = channel number)")
        by_case.setdefault(m.group(1), {})[int(m.group(2))] = p
    labels = {p.name[: -len(ending)]: p for p in _files(root / "labelsTr") if p.name.endswith(ending)}
    cases = []
    for case_id, channels in sorted(by_case.items()):
        missing = [i for i in range(n_ch) if i not in channels]
        if missing:
            raise ValueError(
                f"case {case_id}: channel file {root / 'imagesTr' / f'{case_id}_{missing[0]:04d}{ending}'} is missing "
                f"(dataset.json declares {n_ch} channels)"
            )
        extra = sorted(set(channels) - set(range(n_ch)))
        if extra:
            raise ValueError(f"case {case_id}: {channels[extra[0]]} is channel {extra[0]}, but dataset.json declares {n_ch}")
        if case_id not in labels:
            raise ValueError(f"{channels[0]} has no label: expected {root / 'labelsTr' / (case_id + ending)}")
        cases.append(Case(case_id, [channels[i] for i in range(n_ch)], labels[case_id]))
    for case_id, p in labels.items():
        if case_id not in by_case:
            raise ValueError(f"{p} has no image: expected {root / 'imagesTr' / (case_id + '_0000' + ending)}")
    return Layout("nnunet", root, cases, _class_list(names, root), n_ch)


def _msd(root: Path, meta: dict | None) -> Layout:
    if meta is None or "training" not in meta:  # imagesTr/labelsTr without a file list
        cases = [Case(cid, [img], lab) for cid, img, lab in _pair(root / "imagesTr", root / "labelsTr")]
        return Layout("msd", root, cases, notes=["no dataset.json training list: paired imagesTr/labelsTr by name"])
    cases = []
    for i, entry in enumerate(meta["training"]):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise ValueError(f"{root}/dataset.json: training[{i}] needs 'image' and 'label' entries")
        image, label = root / entry["image"], root / entry["label"]
        case_id = split_name(image.name)[0]
        for what, p in (("image", image), ("label", label)):
            if not p.exists():
                raise FileNotFoundError(f"case {case_id}: {what} file {p} listed in {root}/dataset.json does not exist")
        cases.append(Case(case_id, [image], label))
    class_names = None
    if isinstance(meta.get("labels"), dict):
        class_names = _class_list({int(k): v for k, v in meta["labels"].items()}, root)
    modality = meta.get("modality") or meta.get("channel_names")
    return Layout("msd", root, cases, class_names, len(modality) if isinstance(modality, dict) else None)


def _folder(root: Path) -> Layout:
    subsets = [(root / "train", "train"), (root / "val", "val")] if (root / "train").is_dir() else [(root, None)]
    cases = []
    for base, split in subsets:
        if split == "val" and not base.is_dir():
            continue
        img_dir = next((base / d for d in IMAGE_DIRS if (base / d).is_dir()), None)
        mask_dir = next((base / d for d in MASK_DIRS if (base / d).is_dir()), None)
        if img_dir is None or mask_dir is None:
            raise ValueError(f"{base}: a folder dataset needs an images/ and a masks/ (or labels/) folder")
        cases += [Case(cid, [img], lab, split) for cid, img, lab in _pair(img_dir, mask_dir)]
    return Layout("folder", root, cases)


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing")
    return sorted(p for p in folder.iterdir() if is_readable(p))


def _pair(img_dir: Path, mask_dir: Path) -> list[tuple[str, Path, Path]]:
    images = {split_name(p.name)[0]: p for p in _files(img_dir)}
    masks: dict[str, Path] = {}
    for p in _files(mask_dir):
        stem = split_name(p.name)[0]
        key = stem
        if stem not in images:  # "case1_mask.png" belongs to "case1.png"
            key = next((stem[: -len(s)] for s in MASK_SUFFIXES if stem.endswith(s) and stem[: -len(s)] in images), stem)
        masks[key] = p
    for cid, p in images.items():
        if cid not in masks:
            raise ValueError(f"{p} has no mask in {mask_dir} (looked for {cid}.* or {cid}_mask.*)")
    for cid, p in masks.items():
        if cid not in images:
            raise ValueError(f"{p} has no image in {img_dir} (looked for {cid}.*)")
    return [(cid, images[cid], masks[cid]) for cid in sorted(images)]


def _class_list(names: dict[int, str], root: Path) -> list[str]:
    if not names:
        return []
    n = max(names) + 1
    if sorted(names) != list(range(n)):
        raise ValueError(f"{root}/dataset.json: label values {sorted(names)} must be 0, 1, 2, ... without gaps")
    return [str(names[i]) for i in range(n)]
