"""The pictures of the MetricsPlotter and ImageViewer nodes, and showing one on screen.

Drawn with matplotlib's object API on the Agg canvas (no display needed) and written atomically.
`show_file` opens a written picture in a window when the machine has a display and matplotlib an
interactive backend; otherwise it says why not, and the file is what there is.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from segflow.evaluation.overlay import ERROR_COLOURS, _display, _Painter, _rgba, choose_view, oriented_case
from segflow.workflow.files import atomic_write

_INTERACTIVE = ("QtAgg", "TkAgg", "GTK4Agg", "GTK3Agg", "MacOSX", "WXAgg")


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    return path


def plot_metrics(metrics: Any, path: Path) -> Path:
    """A Trainer's history (a list of per-epoch rows) as curves, or an Evaluator's metrics as bars."""
    if isinstance(metrics, dict) and "per_class" in metrics:
        return _save(_metric_bars(metrics), path)
    if isinstance(metrics, list) and metrics:
        return _save(_history_curves(metrics), path)
    raise ValueError("MetricsPlotter: nothing to plot (an empty history, or not a history or metrics dict)")


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    seen = [(r["epoch"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float))
            and not math.isnan(r[key])]
    return [e for e, _ in seen], [v for _, v in seen]


def _history_curves(rows: list[dict]) -> Any:
    """Losses, validation metrics and learning rate per epoch, one panel each (those the rows have)."""
    from matplotlib.ticker import MaxNLocator

    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))} - {"epoch"})
    panels = [("loss", [k for k in keys if "loss" in k]),
              ("validation metrics", [k for k in keys if k.startswith("val_") and "loss" not in k]),
              ("learning rate", [k for k in keys if k == "lr" or k.startswith("lr_")])]
    panels = [(title, ks) for title, ks in panels if ks]
    fig = _figure(5 * max(len(panels), 1), 3.6)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    for ax, (title, ks) in zip(axes, panels):
        for key in ks:
            epochs, values = _series(rows, key)
            ax.plot(epochs, values, marker="o" if len(epochs) < 20 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"training: {len(rows)} epoch(s)")
    return fig


def _metric_bars(result: dict) -> Any:
    """Each metric's mean over cases per class (with its standard deviation), side by side."""
    metrics = [m for m in result["metrics"] if m not in ("hd95", "hd95_pooled")]  # distances: another scale
    classes = list(result["per_class"])
    fig = _figure(max(4.0, 1.2 * len(classes) * max(len(metrics), 1)), 3.8)
    ax = fig.subplots()
    width = 0.8 / max(len(metrics), 1)
    for i, metric in enumerate(metrics):
        means = [result["per_class"][c][metric]["mean"] for c in classes]
        stds = [result["per_class"][c][metric]["std"] for c in classes]
        ax.bar(np.arange(len(classes)) + i * width, np.nan_to_num(means), width, yerr=np.nan_to_num(stds),
               label=metric, capsize=2)
    ax.set_xticks(np.arange(len(classes)) + width * (len(metrics) - 1) / 2, classes)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"mean over {result.get('num_evaluated', '?')} case(s), per class")
    ax.legend(fontsize=7)
    return fig


def view_case(images: Any, path: Path, *, segmentation: Any = None) -> Path:
    """The first case of the prediction set `images`: its image, and with `segmentation` (a prediction
    set holding the same case) the predicted classes over it. A volume shows its slice with the most
    predicted foreground."""
    record = next(iter(images), None)
    if record is None:
        raise ValueError("ImageViewer: the prediction set is empty")
    case = oriented_case(record)
    view = choose_view(record, case, "auto", 1)
    i = view.indices[0]
    panels = [("image", None)]
    painter = _Painter(images.num_classes, tuple(images.class_names), ERROR_COLOURS, 0.5)
    if segmentation is not None:
        pred = case.pred if segmentation is images else _prediction_of(segmentation, record.case)
        panels.append(("segmentation", _rgba(view.plane(pred, i), painter.class_rgba, painter.alpha)))
    img = _display(view.image_plane(case.image, i))
    fig = _figure(4 * len(panels), 4.4)
    for ax, (title, overlay) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        painter.show(ax, img, aspect=view.aspect, overlay=overlay)
        ax.set_title(title + (f" ({view.where(i)})" if view.volume else ""), fontsize=9)
    fig.suptitle(record.case, fontsize=10)
    return _save(fig, path)


def _prediction_of(pset: Any, case: str) -> np.ndarray:
    for record in pset:
        if record.case == case:
            return oriented_case(record).pred
    raise ValueError(f"ImageViewer: the segmentation input has no case {case!r}")


def has_display() -> bool:
    """Whether windows can open here: on Linux and other Unix an X11 or Wayland display must be set."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def show_file(path: Path, who: str, log: Callable[[str], None]) -> bool:
    """Open the PNG at `path` in a window and wait until it is closed; whether it could."""
    if not has_display():
        log(f"{who}: show is on, but this machine has no display (neither DISPLAY nor WAYLAND_DISPLAY is set): "
            f"cannot show the picture; it is saved at {path}")
        return False
    import matplotlib.pyplot as plt

    for backend in _INTERACTIVE:
        try:
            plt.switch_backend(backend)
            break
        except (ImportError, RuntimeError, ValueError):
            continue
    else:
        log(f"{who}: show is on, but matplotlib has no interactive backend here (Qt, Tk, GTK, wx): cannot show "
            f"the picture; it is saved at {path}")
        return False
    try:
        fig = plt.figure()
        plt.imshow(plt.imread(path))
        plt.axis("off")
        plt.show()
        plt.close(fig)
    except Exception as e:  # a display that cannot be reached (a stale DISPLAY over SSH)
        log(f"{who}: show is on, but no window could open ({type(e).__name__}: {e}); the picture is saved at {path}")
        return False
    return True
