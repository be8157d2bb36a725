"""Post-processing of predicted label maps: keep the largest connected component, of all foreground
classes taken together or of one class, and the rule a run decided (postprocessing.json).

Components are 8-connected in 2-D and 26-connected in 3-D (full connectivity: what nnU-Net's
`remove_all_but_largest_component` gets from skimage's default), and components tied for the
largest size are all kept, as there. Voxels removed become background (0). Labelling is
scipy.ndimage's (C), inside the mask's bounding box; component sizes come from one bincount, so
nothing loops over voxels or components in Python (benchmarks/postprocess_speed.py).

How the rule is chosen on validation cases: `segflow.inference.postprocess_choice`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segflow.workflow.files import write_json

FILE_NAME = "postprocessing.json"
FORMAT = "segflow.postprocessing"
VERSION = 1
OPERATION = "keep_largest_component"
CONNECTIVITY = "full (8 neighbours in 2-D, 26 in 3-D)"
# the model attribute that says which postprocessing.json was decided for its weights (None: none)
_ATTRIBUTE = "segflow_postprocessing_file"


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel of `mask`, or None when it has none."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if not idx.size:
            return None
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def outside_largest_component(mask: np.ndarray) -> np.ndarray | None:
    """The True voxels of `mask` that lie outside its largest connected component(s), or None when
    there are none (no voxel, one component, or every component tied for the largest)."""
    from scipy import ndimage

    box = bounding_box(mask)
    if box is None:
        return None
    part = mask[box]
    labels, count = ndimage.label(part, structure=np.ones((3,) * part.ndim, dtype=bool))
    if count <= 1:
        return None
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    winners = np.flatnonzero(sizes == sizes.max())
    if len(winners) == count:
        return None
    keep = labels == winners[0] if len(winners) == 1 else np.isin(labels, winners)
    removed = np.zeros(mask.shape, dtype=bool)
    removed[box] = part & ~keep
    return removed


def class_mask(label: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """Where `label` holds one of `classes`; no classes: every foreground class (not 0)."""
    if not classes:
        return label != 0
    return label == classes[0] if len(classes) == 1 else np.isin(label, classes)


def keep_largest_component(label: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """`label` with the voxels of `classes` (taken as one object) outside their largest connected
    component set to background; a new array when something changed, else `label` itself."""
    removed = outside_largest_component(class_mask(label, classes))
    if removed is None:
        return label
    out = label.copy()
    out[removed] = 0
    return out


@dataclass(frozen=True)
class PostProcessing:
    """Steps applied in order, each keeping the largest component of the union of its classes
    (no classes: all foreground; files always name them); `report` holds the rest of the file (how the steps were chosen) and `path` where it was read."""

    steps: tuple[tuple[int, ...], ...] = ()
    report: dict[str, Any] = field(default_factory=dict, compare=False)
    path: Path | None = field(default=None, compare=False)

    def apply(self, label: np.ndarray) -> np.ndarray:
        for classes in self.steps:
            label = keep_largest_component(label, classes)
        return label

    def describe(self, class_names: tuple[str, ...] | list[str] = ()) -> str:
        if not self.steps:
            return "none"
        return "; ".join(f"keep the largest component of {step_name(s, class_names)}" for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        steps = [{"operation": OPERATION, "classes": list(s)} for s in self.steps]
        return {"format": FORMAT, "version": VERSION, "connectivity": CONNECTIVITY, "steps": steps, **self.report}

    def write(self, path: Path) -> Path:
        return write_json(path, self.to_json())

    @classmethod
    def read(cls, path: str | Path) -> PostProcessing:
        """The file's rule; a ValueError naming the file and the entry for anything it cannot apply."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable post-processing file ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("steps"), list):
            raise ValueError(f"{path}: not a segflow post-processing file (expected \"format\": \"{FORMAT}\" and "
                             "a \"steps\" list, as a Trainer writes it)")
        steps = tuple(_read_step(path, i, s) for i, s in enumerate(data["steps"]))
        report = {k: v for k, v in data.items() if k not in ("format", "version", "connectivity", "steps")}
        return cls(steps, report, path)


def _read_step(path: Path, i: int, step: Any) -> tuple[int, ...]:
    classes = step.get("classes") if isinstance(step, dict) else None
    if not isinstance(step, dict) or step.get("operation") != OPERATION or not isinstance(classes, list) or \
            not classes or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in classes):
        raise ValueError(f"{path}: steps[{i}] is {step!r}; expected {{\"operation\": \"{OPERATION}\", "
                         "\"classes\": [foreground class indices]}")
    return tuple(classes)


def step_name(classes: tuple[int, ...], class_names: tuple[str, ...] | list[str] = (), num_classes: int = 0) -> str:
    """'the foreground (classes 1, 2)' or 'class 2 (tumour)', for logs and reports."""
    if not classes:
        return "the foreground"
    if len(classes) > 1 or (num_classes and tuple(classes) == tuple(range(1, num_classes))):
        return f"the foreground (class{'es' if len(classes) > 1 else ''} " + ", ".join(str(c) for c in classes) + ")"
    c = classes[0]
    return f"class {c}" + (f" ({class_names[c]})" if c < len(class_names) and class_names[c] else "")


def found_beside(checkpoint: str | Path) -> Path | None:
    """A postprocessing.json in a checkpoint's folder, else in the folder above (a Trainer's run
    directory, when the checkpoint is in its checkpoints/ folder)."""
    folder = Path(checkpoint).resolve().parent
    for place in (folder, folder.parent):
        if (place / FILE_NAME).is_file():
            return place / FILE_NAME
    return None


def shared_rule(checkpoints: list[str]) -> tuple[Path | None, str]:
    """The postprocessing.json found beside every checkpoint of a model (one file, or an ensemble's
    that all hold the same steps), and a note for the log; (None, note) when they differ or some
    checkpoint has none."""
    found = [found_beside(c) for c in checkpoints]
    if not any(found):
        return None, ""
    if not all(found):
        missing = next(c for c, f in zip(checkpoints, found) if f is None)
        return None, f"no post-processing: {missing} has no {FILE_NAME} beside it, the other checkpoints do"
    rules = [PostProcessing.read(f) for f in found]
    if any(r.steps != rules[0].steps for r in rules):
        listed = "; ".join(f"{f}: {r.describe()}" for f, r in zip(found, rules))
        return None, f"no post-processing: the checkpoints' {FILE_NAME} files choose differently ({listed})"
    return found[0], f"post-processing from {found[0]}: {rules[0].describe()}"


def attach(model: Any, path: Path | None, known: bool = True) -> None:
    """Record on `model` the postprocessing.json decided for the weights it now holds (None: none),
    for a Predictor with postprocessing "auto"; `known` False: nothing is known about them."""
    if known:
        setattr(model, _ATTRIBUTE, None if path is None else str(path))
    elif hasattr(model, _ATTRIBUTE):
        delattr(model, _ATTRIBUTE)


def attached(model: Any) -> tuple[bool, Path | None]:
    """(whether anything was recorded for the model's weights, the file recorded)."""
    if not hasattr(model, _ATTRIBUTE):
        return False, None
    value = getattr(model, _ATTRIBUTE)
    return True, None if value is None else Path(value)
