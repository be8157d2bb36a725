"""What a training run leaves in its run directory besides checkpoints: history.csv/json,
metrics.json, PNG curves, and TensorBoard events."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import torch

from segflow.workflow.files import atomic_write, atomic_write_text, json_safe, write_json

# history keys that are not "<phase>_<metric>" and their TensorBoard tags
_TAGS = {"lr": "train/lr", "grad_norm": "train/grad_norm", "epoch_time": "time/epoch_seconds",
         "throughput": "time/images_per_second", "gpu_memory_mb": "gpu/max_memory_mb",
         "train_time": "time/train_seconds", "step_time_ms": "time/step_ms",
         "data_wait_fraction": "time/data_wait_fraction"}
NOT_LOGGED = ("epoch",)
# the two Dice figures side by side in metrics.png, named for what they are
_LEGEND = {"val_dice": "val_dice (pooled voxels)", "val_dice_case_mean": "val_dice_case_mean (per case)"}
# values that differ between two otherwise identical runs (wall-clock, memory)
TIMING_KEYS = ("epoch_time", "throughput", "gpu_memory_mb", "train_time", "step_time_ms", "data_wait_fraction")


def tag_of(key: str) -> str:
    if key in _TAGS:
        return _TAGS[key]
    if key.startswith("lr/"):  # one per optimizer parameter group, by the group's name
        return f"train/{key}"
    phase, _, metric = key.partition("_")
    return f"{phase}/{metric}" if phase in ("train", "val") and metric else f"misc/{key}"


def epoch_scalars(row: dict[str, Any]) -> dict[str, float]:
    """An epoch's history row as the scalars the trackers log (TensorBoard, MLflow), by tag: the
    finite numbers, not the epoch itself."""
    return {tag_of(key): value for key, value in row.items()
            if key not in NOT_LOGGED and isinstance(value, (int, float)) and math.isfinite(value)}


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    rows = json_safe(history)
    write_json(run_dir / "history.json", rows, indent=1)
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "history.csv", text.getvalue())


def write_metrics(run_dir: Path, summary: dict[str, Any]) -> None:
    write_json(run_dir / "metrics.json", summary)


def plot_curves(run_dir: Path, history: list[dict[str, Any]]) -> list[Path]:
    """loss.png (train/val loss), metrics.png (validation metrics), lr.png. Uses matplotlib's Agg
    canvas directly, so no global backend is switched and no display is needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def series(key):
        pts = [(r["epoch"], r[key]) for r in history if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return [p[0] for p in pts], [p[1] for p in pts]

    panels = {
        "loss.png": ("loss", ["train_loss", "val_loss"]),
        "metrics.png": ("validation metric (foreground mean)",
                        ["val_dice", "val_dice_case_mean", "val_iou", "val_accuracy", "val_precision", "val_recall"]),
        "lr.png": ("learning rate", ["lr"]),
    }
    written = []
    for filename, (ylabel, keys) in panels.items():
        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        drawn = False
        for key in keys:
            xs, ys = series(key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=_LEGEND.get(key, key))
                drawn = True
        if not drawn:
            continue
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        atomic_write(run_dir / filename, lambda f, fig=fig: fig.savefig(f, format="png"))
        written.append(run_dir / filename)
    return written


def sample_grid(image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One (1, H, 3W+4) picture: image | label | prediction, for the middle slice of a 3-D volume."""
    img, lab, prd = image[0].float(), label[0].float(), pred.float()
    if img.dim() == 3:  # (H, W, D): middle slice along the last axis
        mid = img.shape[-1] // 2
        img, lab, prd = img[..., mid], lab[..., mid], prd[..., mid]
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else torch.zeros_like(img)
    scale = max(1, num_classes - 1)
    gap = torch.ones(img.shape[0], 2)
    return torch.cat([img, gap, lab / scale, gap, prd / scale], dim=1).clamp(0, 1)[None]


class TensorBoardLog:
    """Scalars per epoch, gradient histograms and a sample-prediction image; flushed each epoch."""

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def epoch(self, row: dict[str, Any]) -> None:
        for tag, value in epoch_scalars(row).items():
            self.writer.add_scalar(tag, value, row["epoch"])
        self.writer.flush()

    def image(self, tag: str, picture: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, picture, step)

    def histograms(self, captured: dict[str, Any], step: int) -> None:
        """Gradient histograms per layer group (grad_histograms.Histogram, read from the device here)."""
        for group, histogram in captured.items():
            raw = histogram.read()
            if raw is not None:
                self.writer.add_histogram_raw(f"grad/{group}", global_step=step, **raw)
        if captured:
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
