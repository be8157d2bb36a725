"""Finding the cases of a dataset folder: MSD, nnU-Net v2, or plain image/mask folders.

Images and labels are paired by case identifier, never by sort order; a file without its
partner is an error that names it. Test images (`find_test_cases`: MSD's `test` list / imagesTs,
nnU-Net's imagesTs, a folder's test/images) may have no label: theirs is None.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from segflow.data.label_scheme import PLAIN, LabelScheme, from_dataset_labels, problems
from segflow.data.readers import is_readable, split_name

LAYOUTS = ("msd", "nnunet", "folder")
IMAGE_DIRS = ("images", "imgs", "image")
MASK_DIRS = ("masks", "labels", "mask", "label", "annotations")
MASK_SUFFIXES = ("_mask", "_seg", "_label", "_labels", "_gt", "-mask", "_masks")


@dataclass
class Case:
    case_id: str
    images: list[Path]  # one file per channel (nnU-Net), or one file holding all channels
    label: Path | None  # None only for test images without ground truth (find_test_cases)
    split: str | None = None  # "train" / "val" when the layout carries its own split


@dataclass
class Layout:
    name: str
    root: Path
    cases: list[Case]
    class_names: list[str] | None = None  # declared classes, index = class index
    num_channels: int | None = None  # declared channels (dataset.json), checked against the data
    notes: list[str] = field(default_factory=list)
    label_values: tuple[int, ...] | None = None  # declared stored value of each class, when not 0, 1, 2, ...
    labels: LabelScheme = PLAIN  # regions and ignore label the dataset.json declares (nnU-Net v2)


def find_cases(root: str | Path, layout: str = "auto") -> Layout:
    """The labelled cases (training data) of the dataset in `root`."""
    return _find(Path(root), layout, {"nnunet": _nnunet, "msd": _msd, "folder": lambda r, m: _folder(r)},
                 test=False)


def _dataset_json(root: Path) -> dict | None:
    path = root / "dataset.json"
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds a JSON {type(meta).__name__}; a dataset.json is an object "
                         '({"labels": ..., "training": [...], ...})')
    for key in ("training", "test"):
        if key in meta and not isinstance(meta[key], (list, type(None))):
            raise ValueError(f"{path}: '{key}' must be a list of cases, got {type(meta[key]).__name__}")
    return meta


def _detect(root: Path, meta: dict | None) -> str:
    if meta is not None and ("channel_names" in meta or "file_ending" in meta):
        return "nnunet"
    if meta is not None and ("training" in meta or "test" in meta) or (root / "imagesTr").is_dir() \
            or (root / "imagesTs").is_dir():
        return "msd"
    if any((root / d).is_dir() for d in IMAGE_DIRS + ("train", "test")):
        return "folder"
    raise ValueError(
        f"cannot tell the layout of {root}: expected dataset.json (MSD or nnU-Net v2), imagesTr/ + "
        "labelsTr/ (imagesTs/ for test images), or images/ + masks/ (optionally under train/, val/ and "
        "test/); set 'layout' or fix the folder"
    )


def _nnunet(root: Path, meta: dict | None, img_sub: str = "imagesTr", lab_sub: str = "labelsTr",
            need_labels: bool = True) -> Layout:
    if meta is None:
        raise FileNotFoundError(f"{root}/dataset.json is missing; nnU-Net v2 datasets need one")
    for key in ("channel_names", "labels", "file_ending"):
        if key not in meta:
            raise ValueError(f"{root}/dataset.json has no '{key}' entry (nnU-Net v2 format)")
    declared = from_dataset_labels(meta["labels"], meta.get("regions_class_order"), f"{root}/dataset.json")
    class_names, scheme = declared.class_names, declared.scheme
    values = None if list(declared.values) == list(range(len(declared.values))) else declared.values
    ending = meta["file_ending"]
    n_ch = len(meta["channel_names"])
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    by_case: dict[str, dict[int, Path]] = {}
    if not need_labels and not (root / img_sub).is_dir():
        return Layout("nnunet", root, [], class_names, n_ch, label_values=values, labels=scheme)
    for p in _files(root / img_sub):
        m = pattern.match(p.name)
        if not m:
            raise ValueError(f"{p}: nnU-Net image files are named CASE_XXXX{ending} (XXXX = channel number)")
        by_case.setdefault(m.group(1), {})[int(m.group(2))] = p
    label_dir = root / lab_sub
    found = _files(label_dir) if need_labels or label_dir.is_dir() else []
    labels = {p.name[: -len(ending)]: p for p in found if p.name.endswith(ending)}
    cases = []
    for case_id, channels in sorted(by_case.items()):
        missing = [i for i in range(n_ch) if i not in channels]
        if missing:
            raise ValueError(
                f"case {case_id}: channel file {root / img_sub / f'{case_id}_{missing[0]:04d}{ending}'} is missing "
                f"(dataset.json declares {n_ch} channels)"
            )
        extra = sorted(set(channels) - set(range(n_ch)))
        if extra:
            raise ValueError(f"case {case_id}: {channels[extra[0]]} is channel {extra[0]}, but dataset.json declares {n_ch}")
        if case_id not in labels and need_labels:
            expected = root / lab_sub / (case_id + ending)
            raise ValueError(f"{channels[0]} has no label: " + (f"{expected} is a folder, not a label file"
                                                                 if expected.is_dir() else f"expected {expected}"))
        cases.append(Case(case_id, [channels[i] for i in range(n_ch)], labels.get(case_id)))
    for case_id, p in labels.items():
        if case_id not in by_case:
            raise ValueError(f"{p} has no image: expected {root / img_sub / (case_id + '_0000' + ending)}")
    return Layout("nnunet", root, cases, class_names, n_ch, label_values=values, labels=scheme)


def _msd(root: Path, meta: dict | None) -> Layout:
    if meta is None or meta.get("training") is None:  # imagesTr/labelsTr without a file list
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
    declared = _msd_meta(root, meta)
    declared.cases = cases
    return declared


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


def _by_case(files: list[Path]) -> dict[str, Path]:
    """Files by case id; two files of one case id (c001.png beside c001.nii.gz) are an error, not one dropped."""
    out: dict[str, Path] = {}
    for p in files:
        case_id = split_name(p.name)[0]
        if case_id in out:
            raise ValueError(f"{out[case_id]} and {p} are both case {case_id!r}; keep one of them in {p.parent}")
        out[case_id] = p
    return out


def _pair(img_dir: Path, mask_dir: Path) -> list[tuple[str, Path, Path]]:
    images = _by_case(_files(img_dir))
    masks = _masks_by_case(images, mask_dir)
    for cid, p in images.items():
        if cid not in masks:
            folders = [q for q in mask_dir.iterdir() if q.is_dir() and split_name(q.name)[1]
                       and split_name(q.name)[0] in (cid, f"{cid}_mask")]
            why = f"{folders[0]} is a folder, not a mask file" if folders else f"looked for {cid}.* or {cid}_mask.*"
            raise ValueError(f"{p} has no mask in {mask_dir} ({why})")
    for cid, p in masks.items():
        if cid not in images:
            raise ValueError(f"{p} has no image in {img_dir} (looked for {cid}.*)")
    return [(cid, images[cid], masks[cid]) for cid in sorted(images)]


_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def find_images(root: str | Path) -> tuple[Layout, list[tuple[str, str]]]:
    """A plain folder of images to predict (`segflow predict -i`, loader layout "images"): every
    readable file, or folder holding a DICOM series, is one case without a label. When every name ends
    in `_XXXX` (nnU-Net's `<case>_0000.nii.gz`, `<case>_0001.nii.gz`, ...), the files of one case are
    its channels, in that order. Returns the cases and, for cases that cannot be used (a channel
    missing), (case, why), so a caller can skip them and go on with the rest."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist or is not a folder")
    files = _files(root)
    stems = {p: split_name(p.name)[0] for p in files}
    grouped = bool(files) and all(_CHANNEL_FILE.match(stem) for stem in stems.values())
    if not grouped:
        cases, problems, seen = [], [], {}
        for p in files:
            if stems[p] in seen:  # scan.png beside scan.nii.gz: both would be written as scan.*
                problems.append((stems[p], f"{p.name} and {seen[stems[p]].name} are both case {stems[p]!r}"))
                continue
            seen[stems[p]] = p
            cases.append(Case(stems[p], [p], None, "test"))
        return Layout("images", root, cases), problems
    channels: dict[str, dict[int, Path]] = {}
    for p, stem in stems.items():
        m = _CHANNEL_FILE.match(stem)
        channels.setdefault(m["case"], {})[int(m["channel"])] = p
    cases, problems = [], []
    for case_id in sorted(channels):
        found = channels[case_id]
        if sorted(found) != list(range(len(found))):
            missing = sorted(set(range(max(found) + 1)) - set(found))
            problems.append((case_id, f"channel file(s) {', '.join(f'{case_id}_{i:04d}' for i in missing)} missing "
                             f"(found {', '.join(found[i].name for i in sorted(found))})"))
            continue
        cases.append(Case(case_id, [found[i] for i in sorted(found)], None, "test"))
    return Layout("images", root, cases), problems


def find_test_cases(root: str | Path, layout: str = "auto") -> Layout:
    """The layout's test images, each with its label where one exists (else label None).

    MSD: dataset.json's `test` list (file names or {"image", "label"} entries), else every file in
    imagesTs/; labels from labelsTs/ by name. nnU-Net v2: imagesTs/{case}_{XXXX}{ending}, labels from
    labelsTs/{case}{ending}. Folder: test/images (or imagesTs/) with test/masks (or labelsTs/).
    """
    return _find(Path(root), layout, {"nnunet": _nnunet_test, "msd": _msd_test,
                                      "folder": lambda r, m: _folder_test(r), "images": _images_test}, test=True)


def _images_test(root: Path, meta: dict | None) -> Layout:
    layout, problems = find_images(root)
    if problems:
        case_id, why = problems[0]
        raise ValueError(f"{root}: case {case_id}: {why}")
    return layout


def _find(root: Path, layout: str, finders: dict, test: bool) -> Layout:
    """Detect the layout if asked, find its cases with `finders[layout](root, dataset_json)`, and check
    that there are some and that no case id repeats."""
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {root} does not exist or is not a folder (loader field 'data_dir')")
    meta = _dataset_json(root)
    if layout == "auto":
        layout = _detect(root, meta)
    if layout not in finders:
        if layout == "images":
            raise ValueError(f"{root}: layout images is a folder of images without labels, for subset test "
                             "(prediction); training needs a layout with labels (msd, nnunet, folder)")
        raise ValueError(f"layout must be one of auto, {', '.join(LAYOUTS)}; got {layout!r}")
    found = finders[layout](root, meta)
    if not found.cases and test:
        raise ValueError(f"{root}: no test images found in the {layout} layout (looked for "
                         f"{_TEST_PLACES[layout]}); check data_dir, or use subset 'split' or 'all' for labelled cases")
    if not found.cases:
        raise ValueError(f"{root}: no cases found in the {layout} layout; check data_dir and 'layout'")
    ids = [c.case_id for c in found.cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        what = "test case ids" if test else "case ids"
        raise ValueError(f"{root}: {what} {dupes[:5]} occur more than once (same name, different file types?)")
    found.cases.sort(key=lambda c: c.case_id if test else (c.split or "", c.case_id))
    return found


_TEST_PLACES = {"msd": "dataset.json 'test' list or imagesTs/", "nnunet": "imagesTs/{case}_0000<file_ending>",
                "folder": "test/images/ or imagesTs/", "images": "image files in the folder itself"}


def _msd_test(root: Path, meta: dict | None) -> Layout:
    declared = _msd_meta(root, meta)
    entries = (meta or {}).get("test") or []
    if not entries:  # no list (or an empty one): every image in imagesTs/
        ts = root / "imagesTs"
        if not ts.is_dir():
            return declared
        declared.cases = [Case(cid, [img], lab, "test") for cid, img, lab in _pair_optional(ts, root / "labelsTs")]
        return declared
    labels_dir = root / "labelsTs"
    for i, entry in enumerate(entries):
        image_rel = entry.get("image") if isinstance(entry, dict) else entry
        if not isinstance(image_rel, str):
            raise ValueError(f"{root}/dataset.json: test[{i}] must be a file name or an entry with 'image'")
        image = root / image_rel
        case_id = split_name(image.name)[0]
        if not image.exists():
            raise FileNotFoundError(f"case {case_id}: image file {image} listed in {root}/dataset.json test does not exist")
        label = root / entry["label"] if isinstance(entry, dict) and entry.get("label") else None
        if label is None and (labels_dir / image.name).exists():
            label = labels_dir / image.name
        if label is not None and not label.exists():
            raise FileNotFoundError(f"case {case_id}: label file {label} listed in {root}/dataset.json test does not exist")
        declared.cases.append(Case(case_id, [image], label, "test"))
    return declared


def _msd_meta(root: Path, meta: dict | None) -> Layout:
    """An MSD Layout with the declared classes and channels, and no cases yet."""
    class_names, values, scheme = None, None, PLAIN
    if meta is not None and isinstance(meta.get("labels"), dict):
        class_names, values, scheme = _msd_classes(_label_keys(meta["labels"], root), root)
    modality = (meta or {}).get("modality") or (meta or {}).get("channel_names")
    return Layout("msd", root, [], class_names, len(modality) if isinstance(modality, dict) else None,
                  label_values=values, labels=scheme)


def _label_keys(labels: dict, root: Path) -> dict[int, str]:
    """MSD labels {"0": "background", "1": ...}: keys are the stored values, as whole numbers."""
    out = {}
    for key, name in labels.items():
        try:
            out[int(key)] = name
        except (TypeError, ValueError):
            raise ValueError(f"{root}/dataset.json: labels key {key!r} is not a whole number; MSD labels map the "
                             'stored value to a name ({"0": "background", "1": "tumour"}); nnU-Net v2 files map the '
                             'name to the value and need "channel_names" and "file_ending"') from None
    return out


def _msd_classes(names: dict[int, str], root: Path) -> tuple[list[str], tuple[int, ...] | None, LabelScheme]:
    """MSD labels {"0": "background", "1": "tumour"}; a label named "ignore" is the ignore label, which
    must be the highest value (nnU-Net's rule)."""
    ignore = [v for v, name in names.items() if str(name).strip().lower() == "ignore"]
    if len(ignore) != 1:
        return (*_declared_classes(names, root), PLAIN)
    classes = {v: n for v, n in names.items() if v != ignore[0]}
    where = f"{root}/dataset.json"
    found = problems(LabelScheme(ignore=ignore[0]), sorted(classes), {"ignore_label": f"{where}: the label 'ignore'"})
    if found:
        raise ValueError(f"{found[0].message}; {found[0].hint}")
    class_names, values = _declared_classes(classes, root)
    stored = tuple(sorted(classes)) + (ignore[0],)
    values = None if stored == tuple(range(len(stored))) else stored
    return class_names, values, LabelScheme(ignore=len(classes), source=f"labels in {where}")


def _nnunet_test(root: Path, meta: dict | None) -> Layout:
    declared = _nnunet(root, meta, img_sub="imagesTs", lab_sub="labelsTs", need_labels=False)
    for c in declared.cases:
        c.split = "test"
    return declared


def _folder_test(root: Path) -> Layout:
    base = root / "test"
    img_dir = next((base / d for d in IMAGE_DIRS if (base / d).is_dir()), None)
    mask_dir = next((base / d for d in MASK_DIRS if (base / d).is_dir()), None)
    if img_dir is None and (root / "imagesTs").is_dir():
        img_dir, mask_dir = root / "imagesTs", root / "labelsTs"
    if img_dir is None:
        return Layout("folder", root, [])
    return Layout("folder", root, [Case(cid, [img], lab, "test") for cid, img, lab in _pair_optional(img_dir, mask_dir)])


def _pair_optional(img_dir: Path, mask_dir: Path | None) -> list[tuple[str, Path, Path | None]]:
    """Test images with their masks where they have one; a mask without an image is still an error."""
    if mask_dir is None or not mask_dir.is_dir():
        return [(split_name(p.name)[0], p, None) for p in _files(img_dir)]
    images = _by_case(_files(img_dir))
    masks = _masks_by_case(images, mask_dir)
    for cid, p in masks.items():
        if cid not in images:
            raise ValueError(f"{p} has no image in {img_dir} (looked for {cid}.*)")
    return [(cid, images[cid], masks.get(cid)) for cid in sorted(images)]


def _masks_by_case(images: dict[str, Path], mask_dir: Path) -> dict[str, Path]:
    masks: dict[str, Path] = {}
    for p in _files(mask_dir):
        stem = split_name(p.name)[0]
        key = stem
        if stem not in images:  # "case1_mask.png" belongs to "case1.png"
            key = next((stem[: -len(s)] for s in MASK_SUFFIXES if stem.endswith(s) and stem[: -len(s)] in images), stem)
        masks[key] = p
    return masks


def _declared_classes(names: dict[int, str], root: Path) -> tuple[list[str], tuple[int, ...] | None]:
    """The class names in class order and, when the declared values are not 0, 1, 2, ... (e.g.
    {"background": 0, "tumour": 255}), the values the label files store them as: class c is the c-th
    value in ascending order (segflow.data.label_coding)."""
    if not names:
        return [], None
    values = sorted(names)
    if values[0] != 0:
        raise ValueError(f"{root}/dataset.json: label values {values} must include 0 (the background)")
    contiguous = values == list(range(len(values)))
    return [str(names[v]) for v in values], None if contiguous else tuple(values)
