"""PNG overlays of predictions against ground truth, drawn with matplotlib (Agg, no display).

Per case one PNG: a row per slice with the image, the ground truth, the prediction (class
colours) and an error map (TP / FP / FN / wrong class in the configured colours), with a legend.
3-D cases show the slices with the most wrong voxels, so the picture lands where the model
fails. A grid.png shows one tile per case (its worst slice with the error map) for a glance
over the whole set. Cases are loaded one at a time; only the grid's small 2-D tiles are kept.

Orientation: a case whose prediction file has an affine (NIfTI) is turned into the RAS+
frame first (axis 0 towards the patient's right, 1 anterior, 2 superior; the nearest axes for
an oblique affine), whatever order and direction its voxels are stored in, and every plane is
drawn in the radiological convention: axial with anterior at the top and the patient's right
on the image's left, coronal with superior at the top and the right on the left, sagittal
with superior at the top and anterior on the left. Cases without an affine (PNG, TIFF, NumPy)
are drawn as stored, rows downwards. Pixels keep the voxels' physical aspect ratio.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from segflow.inference.records import PredictionRecord, PredictionSet
from segflow.workflow.files import atomic_write

# Class colours kept apart from the error map's green / red / blue / orange, so they never read as errors
CLASS_COLOURS = ("#ffd700", "#00e5ee", "#ff69b4", "#9370db", "#a0522d", "#c0ff3e", "#f5f5f5", "#808000", "#008080")
# The error map's colours when none are given; the SegmentationOverlay node passes its configured ones
ERROR_COLOURS = {"tp": "#2ca02c", "fp": "#d62728", "fn": "#1f77b4", "wrong_class": "#ff7f0e"}
ERROR_LABELS = {"tp": "correct (TP)", "fp": "false positive (FP)", "fn": "missed (FN)", "wrong_class": "wrong class"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display on a server; a no-op when a backend is already chosen
    import matplotlib.pyplot as plt

    return plt


def foreground_dice(pred: np.ndarray, label: np.ndarray) -> float:
    """Dice of 'right class on foreground' over all foreground classes together; 1.0 when both are empty."""
    correct = np.count_nonzero((pred == label) & (label > 0))
    total = np.count_nonzero(pred > 0) + np.count_nonzero(label > 0)
    return 2 * correct / total if total else 1.0


def error_codes(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """0 = right background, 1 = TP, 2 = FP, 3 = FN, 4 = wrong foreground class."""
    codes = np.zeros(pred.shape, np.uint8)
    fg_p, fg_l = pred > 0, label > 0
    codes[fg_p & fg_l & (pred == label)] = 1
    codes[fg_p & ~fg_l] = 2
    codes[~fg_p & fg_l] = 3
    codes[fg_p & fg_l & (pred != label)] = 4
    return codes


def pick_slices(pred: np.ndarray, label: np.ndarray | None, axis: int, k: int) -> list[int]:
    """The k slices along `axis` with the most wrong voxels, then the most foreground; the middle
    slice when nothing is there at all. Returned in ascending order."""
    other = tuple(a for a in range(pred.ndim) if a != axis)
    fg = np.count_nonzero(pred > 0, axis=other)
    wrong = np.zeros_like(fg)
    if label is not None:
        fg = fg + np.count_nonzero(label > 0, axis=other)
        wrong = np.count_nonzero(pred != label, axis=other)
    order = sorted(range(pred.shape[axis]), key=lambda i: (-int(wrong[i]), -int(fg[i]), i))
    chosen = [i for i in order[:k] if wrong[i] or fg[i]]
    return sorted(chosen) or [pred.shape[axis] // 2]


def _slice_axis(case: str, spacing: tuple[float, ...] | None, ndim: int, slice_axis) -> int:
    if slice_axis != "auto":
        if not 0 <= int(slice_axis) < ndim:
            raise ValueError(f"SegmentationOverlay.slice_axis {slice_axis} does not exist for the {ndim}-D case "
                             f"{case!r}; use 0..{ndim - 1} or auto")
        return int(slice_axis)
    if spacing and len(spacing) == ndim and max(spacing) > min(spacing):
        return int(np.argmax(spacing))  # the coarse axis: slices across it are the full-resolution planes
    return ndim - 1


def _display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> grey (H, W) or RGB (H, W, 3) in 0..1, windowed at the 1st-99th percentile."""
    arr = np.moveaxis(image[:3], 0, -1) if image.shape[0] == 3 else image[0]
    lo, hi = np.percentile(arr, (1, 99)) if arr.size else (0.0, 1.0)
    return np.clip((arr - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(arr, dtype=float)


def _rgba(codes_or_classes: np.ndarray, palette: dict[int, tuple], alpha: float) -> np.ndarray:
    out = np.zeros((*codes_or_classes.shape, 4))
    for value, colour in palette.items():
        m = codes_or_classes == value
        out[m, :3] = colour[:3]
        out[m, 3] = alpha
    return out


class _Painter:
    """Colours and orientation shared by the per-case pictures and the grid."""

    def __init__(self, num_classes: int, class_names: tuple[str, ...], colours: dict[str, str], alpha: float):
        from matplotlib.colors import to_rgba

        self.alpha = alpha
        self.class_rgba = {c: to_rgba(CLASS_COLOURS[(c - 1) % len(CLASS_COLOURS)]) for c in range(1, max(num_classes, 2))}
        self.class_names = list(class_names) if len(class_names) == num_classes else \
            [f"class {c}" for c in range(max(num_classes, 2))]
        self.error_rgba = {1: to_rgba(colours["tp"]), 2: to_rgba(colours["fp"]), 3: to_rgba(colours["fn"]),
                           4: to_rgba(colours["wrong_class"])}
        self.colours = colours

    def show(self, ax, plane: np.ndarray, *, aspect: float, overlay: np.ndarray | None = None):
        """Draw a plane already in screen order (View.plane): row 0 at the top."""
        kw = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0} if plane.ndim == 2 else {}
        ax.imshow(plane, origin="upper", aspect=aspect, interpolation="nearest", **kw)
        if overlay is not None:
            ax.imshow(overlay, origin="upper", aspect=aspect, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])

    def legend_handles(self, with_classes: bool, with_errors: bool):
        from matplotlib.patches import Patch

        handles = []
        if with_classes:
            handles += [Patch(color=self.class_rgba[c], label=self.class_names[c]) for c in self.class_rgba]
        if with_errors:
            handles += [Patch(color=self.colours[k], label=ERROR_LABELS[k]) for k in ERROR_LABELS]
        return handles


def _safe_name(case: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", case).strip("._") or "case"


def _choose(pset: PredictionSet, max_images: int, selection: str, log) -> list[tuple[PredictionRecord, float | None]]:
    records = list(pset)
    if len(records) <= max_images or selection == "first":
        return [(r, None) for r in records[:max_images]]
    scored = []
    for r in records:  # a first pass, one case at a time, to rank by how wrong each one is
        if r.label_path is None:
            scored.append((math.inf, r))
            continue
        _, pred, label = PredictionSet.load(r)
        scored.append((foreground_dice(pred, label) if pred.shape == label.shape else -1.0, r))
    scored.sort(key=lambda t: t[0])
    log(f"overlays: drawing the {max_images} lowest-Dice of {len(records)} cases")
    return [(r, None if math.isinf(d) else d) for d, r in scored[:max_images]]


def render_overlays(pset: PredictionSet, output_dir: Path, *, alpha: float = 0.5, max_images: int = 16,
                    selection: str = "worst", slices_per_case: int = 3, slice_axis="auto",
                    colours: dict[str, str] | None = None, dpi: int = 100,
                    log: Callable[[str], None] = print, individual: bool = True, grid: bool = True) -> list[Path]:
    """Write <case>.png per drawn case (unless not `individual`) and grid.png (if `grid`); return their
    paths (grid last).

    `colours` are the error map's (tp, fp, fn, wrong_class); any left out keep ERROR_COLOURS."""
    plt = _pyplot()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    painter = _Painter(pset.num_classes, tuple(pset.class_names), {**ERROR_COLOURS, **(colours or {})}, alpha)
    written: list[Path] = []
    tiles = []
    used_names: set[str] = set()
    for record, _ in _choose(pset, max_images, selection, log):
        fig, tile = _case_figure(plt, painter, record, slice_axis, slices_per_case)
        if individual:
            path = output_dir / f"{_unique_name(record.case, used_names)}.png"
            atomic_write(path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=dpi))
            written.append(path)
        plt.close(fig)
        tiles.append(tile)
    if tiles and grid:
        written.append(_grid(tiles, painter, output_dir / "grid.png", dpi, plt))
    log(f"overlays: wrote {len(written)} PNG file(s) to {output_dir}")
    return written


@dataclass
class OrientedCase:
    """One case's arrays in the frame they are drawn in: RAS+ when the prediction file has an
    affine (`canonical`), else as stored. A 2-D NIfTI slice gets a third axis of length 1 first,
    so that its affine places it as well; `flat_axis` is where that axis ends up."""

    image: np.ndarray  # (C, *S)
    pred: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...] | None  # along the axes above
    canonical: bool
    flat_axis: int | None = None

    @property
    def volume(self) -> bool:
        return self.pred.ndim == 3 and self.flat_axis is None


def _affine(record: PredictionRecord) -> np.ndarray | None:
    """The prediction file's affine (its header only); None for formats without one."""
    if not str(record.prediction_path).lower().endswith((".nii", ".nii.gz")):
        return None
    import nibabel as nib

    return np.asarray(nib.load(str(record.prediction_path)).affine)


def _load_checked(record: PredictionRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(image (C, *S), prediction, label or None), checked to lie on one grid."""
    image, pred, label = PredictionSet.load(record)
    if label is not None and label.shape != pred.shape:
        raise ValueError(f"case {record.case!r}: prediction {record.prediction_path} has shape {pred.shape}, "
                         f"label {record.label_path} has {label.shape}; they must match to be overlaid")
    if image.shape[1:] != pred.shape:
        raise ValueError(f"case {record.case!r}: image {record.image_paths[0]} has spatial shape "
                         f"{image.shape[1:]}, prediction {record.prediction_path} has {pred.shape}")
    return image, pred, label


def oriented_case(record: PredictionRecord) -> OrientedCase:
    """The case's arrays in the frame they are drawn in (see OrientedCase)."""
    image, pred, label = _load_checked(record)
    affine = _affine(record)
    from nibabel.affines import voxel_sizes
    from nibabel.orientations import apply_orientation, io_orientation

    # per stored axis: the RAS+ axis it runs along and whether it runs backwards; NaN where a
    # degenerate affine says nothing about directions
    ornt = None if affine is None else io_orientation(affine)
    if ornt is None or np.isnan(ornt).any():
        return OrientedCase(image, pred, label, record.spacing, False)
    flat_axis = None if pred.ndim == 3 else int(ornt[2, 0])
    if flat_axis is not None:
        image, pred = image[..., None], pred[..., None]
        label = None if label is None else label[..., None]
    spacing = [0.0] * 3
    for size, (axis, _) in zip(voxel_sizes(affine), ornt):
        spacing[int(axis)] = float(size)
    image = np.moveaxis(apply_orientation(np.moveaxis(image, 0, -1), ornt), -1, 0)  # channels ride along, last
    label = None if label is None else apply_orientation(label, ornt)
    return OrientedCase(image, apply_orientation(pred, ornt), label, tuple(spacing), True, flat_axis)


PLANE_NAMES = ("sagittal", "coronal", "axial")  # the canonical (RAS+) axis a plane is perpendicular to


@dataclass
class View:
    """How one case is shown: the axis it is sliced along (None for a 2-D case without an affine)
    and the slices drawn, whether the arrays are canonical (RAS+), and the pixel aspect ratio."""

    axis: int | None
    indices: list[int | None]
    canonical: bool
    aspect: float
    volume: bool

    def plane(self, array: np.ndarray, i: int | None) -> np.ndarray:
        """The 2-D plane as on screen, row 0 at the top. A RAS+ plane (a, b) runs a towards the
        right/anterior and b towards anterior/superior: both reversed and b made the rows puts
        anterior or superior at the top and the patient's right (or anterior) on the left."""
        p = array if self.axis is None else np.take(array, i, axis=self.axis)
        return np.flip(p, (0, 1)).T if self.canonical else p

    def image_plane(self, image: np.ndarray, i: int | None) -> np.ndarray:
        """As `plane`, for a (C, *S) image: (C, rows, columns)."""
        p = image if self.axis is None else np.take(image, i, axis=self.axis + 1)  # channels come first
        return np.swapaxes(np.flip(p, (1, 2)), 1, 2) if self.canonical else p

    def where(self, i: int | None) -> str:
        """The slice, as titles name it."""
        if not self.volume:
            return ""
        return f"{PLANE_NAMES[self.axis]} slice {i}" if self.canonical else f"axis {self.axis}, slice {i}"


def choose_view(record: PredictionRecord, case: OrientedCase, slice_axis, slices_per_case: int) -> View:
    """The axis (`slice_axis` counts the canonical axes when the case has an affine), the slices
    and the aspect ratio the case is drawn with."""
    spacing = tuple(case.spacing or ()) + (1.0,) * case.pred.ndim
    if case.volume:
        axis = _slice_axis(record.case, case.spacing, 3, slice_axis)
        indices: list[int | None] = pick_slices(case.pred, case.label, axis, slices_per_case)
    elif case.flat_axis is not None:  # a 2-D NIfTI slice: the plane its affine puts it in
        axis, indices = case.flat_axis, [0]
    else:
        axis, indices = None, [None]
    rest = [a for a in range(case.pred.ndim) if a != axis]
    # aspect = height of a pixel / its width, in physical units, as on screen (see View.plane)
    vertical, horizontal = (rest[1], rest[0]) if case.canonical else (rest[0], rest[1])
    return View(axis, indices, case.canonical, spacing[vertical] / spacing[horizontal], case.volume)


def _panels(painter: _Painter, pred: np.ndarray, label: np.ndarray | None) -> list[tuple[str, np.ndarray | None]]:
    """(title, overlay) of each picture in one slice's row: image, [ground truth,] prediction[, errors]."""
    prediction = ("prediction", _rgba(pred, painter.class_rgba, painter.alpha))
    if label is None:
        return [("image", None), prediction]
    errors = _rgba(error_codes(pred, label), painter.error_rgba, max(painter.alpha, 0.75))
    return [("image", None), ("ground truth", _rgba(label, painter.class_rgba, painter.alpha)), prediction,
            ("errors", errors)]


def _under(img: np.ndarray, title: str) -> np.ndarray:
    # the error map goes over a dimmed image so its colours stay readable on bright tissue
    return img * 0.6 if title == "errors" else img


def _case_figure(plt, painter: _Painter, record: PredictionRecord, slice_axis, slices_per_case: int):
    """The case's figure, a row per drawn slice, and its grid tile: the slice with the most wrong
    voxels (the first one without ground truth), showing its last panel. The case is loaded here,
    so only the tile's 2-D planes outlive the call."""
    case = oriented_case(record)
    image, pred, label = case.image, case.pred, case.label
    view = choose_view(record, case, slice_axis, slices_per_case)
    cols = 4 if label is not None else 2
    fig, axes = plt.subplots(len(view.indices), cols, figsize=(3 * cols, 3.3 * len(view.indices) + 0.9),
                             squeeze=False, layout="constrained")
    worst = None  # (wrong voxels, tile image, tile overlay, the slice as titles name it)
    for row, i in enumerate(view.indices):
        img = _display(view.image_plane(image, i))
        p = view.plane(pred, i)
        lab = None if label is None else view.plane(label, i)
        panels = _panels(painter, p, lab)
        for col, (title, overlay) in enumerate(panels):
            ax = axes[row][col]
            painter.show(ax, _under(img, title), aspect=view.aspect, overlay=overlay)
            where = f" ({view.where(i)})" if view.volume else ""
            ax.set_title(f"{title}{where}" if col == 0 else title, fontsize=8)
        wrong = int(np.count_nonzero(p != lab)) if lab is not None else 0
        if worst is None or wrong > worst[0]:
            title, overlay = panels[-1]
            worst = (wrong, _under(img, title), overlay, view.where(i))
    score = foreground_dice(pred, label) if label is not None else None
    head = record.case + (f" - foreground Dice {score:.3f}" if score is not None else " - no ground truth")
    fig.suptitle(head, fontsize=10)
    fig.legend(handles=painter.legend_handles(True, label is not None), loc="outside lower center",
               ncol=4, fontsize=7, frameon=False)
    return fig, (record.case, score, view.aspect, *worst[1:])


def _unique_name(case: str, used: set[str]) -> str:
    """A file name for the case, made distinct from those already used (the set is updated)."""
    name = _safe_name(case)
    while name in used:
        name += "_"
    used.add(name)
    return name


def _grid(tiles, painter: _Painter, path: Path, dpi: int, plt) -> Path:
    n = len(tiles)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 3.0 * rows + 0.6), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    has_errors = False
    for ax, (case, score, aspect, img, overlay, where) in zip(axes.flat, tiles):
        ax.axis("on")
        painter.show(ax, img, aspect=aspect, overlay=overlay)
        has_errors |= score is not None
        ax.set_title(f"{case}" + (f"\nDice {score:.3f}" if score is not None else "\nno ground truth")
                     + (f", {where}" if where else ""), fontsize=8)
    fig.legend(handles=painter.legend_handles(not has_errors, has_errors), loc="outside lower center", ncol=4,
               fontsize=7, frameon=False)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    plt.close(fig)
    return path
