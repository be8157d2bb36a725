"""Static checks of the Trainer's settings that name things elsewhere in the file: the history column
it monitors, and the sliding window it validates with against the loader's data and the network.

The history columns are fixed by the training loop (segflow.training: `train_loss`, `val_loss`,
`val_accuracy`, `val_<metric>` pooled and `val_<metric>_<class>` per class, `val_dice_case_mean`
and `_<class>`, and for data with regions `_<region>` instead of `_<class>`), so a monitor that
is none of them is known to be a typo before any epoch runs.
"""
from __future__ import annotations

import re

from segflow.data.label_scheme import column_name
from segflow.nodes.base import Finding, NodeConfig
from segflow.nodes.datashape import DataShape
from segflow.nodes.networks import size_findings

PER_CLASS = ("val_dice_case_mean", "val_dice", "val_iou", "val_precision", "val_recall")
COLUMNS = ("train_loss", "val_loss", "val_accuracy", *PER_CLASS)
_SUFFIXED = re.compile(rf"({'|'.join(PER_CLASS)})_([a-z0-9_]+)")


def monitor_findings(monitor: str, loader: tuple[str, NodeConfig] | None,
                     network: tuple[str, NodeConfig] | None) -> list[Finding]:
    """A monitor that is no history column the Trainer writes: an error listing the columns; a class
    index beyond the classes, or a region the loader does not declare."""
    if monitor in COLUMNS:
        return []
    listed = ", ".join(COLUMNS) + ", and per class <column>_<class index> (val_dice_1, ...) or per region"
    found = _SUFFIXED.fullmatch(monitor)
    if found is None:
        return [Finding("monitor", "unknown_monitor", f"monitor {monitor!r} is not a history column the Trainer "
                        f"writes", hint=f"monitor one of {listed}")]
    column, suffix = found.groups()
    if suffix.isdigit():
        return _class_findings(monitor, column, int(suffix), loader, network)
    return _region_findings(monitor, column, suffix, loader)


def _shape(loader: tuple[str, NodeConfig] | None) -> DataShape:
    return DataShape.of_config(*loader) if loader else DataShape("")


def _classes(loader: tuple[str, NodeConfig] | None, network: tuple[str, NodeConfig] | None) -> int | None:
    """The number of classes background included, where the file says it: the loader's declaration,
    else the network's output channels (one sigmoid channel says nothing)."""
    out = getattr(network[1], "out_channels", None) if network else None
    return _shape(loader).num_classes or (out if out and out > 1 else None)


def _class_findings(monitor: str, column: str, index: int, loader, network) -> list[Finding]:
    regions = _shape(loader).regions
    if regions:
        keys = [column_name(name) for name in regions]
        return [Finding("monitor", "unknown_monitor", f"monitor {monitor!r}: with regions the history has one "
                        f"column per region, not per class", hint=f"monitor {column}_{keys[0]} (regions: "
                        f"{', '.join(keys)})")]
    classes = _classes(loader, network)
    if classes and index >= classes:
        return [Finding("monitor", "unknown_monitor", f"monitor {monitor!r} names class {index}, but there are "
                        f"{classes} classes (0 to {classes - 1})",
                        hint=f"monitor {column}_1" + (f" to {column}_{classes - 1}" if classes > 2 else ""))]
    return []


def _region_findings(monitor: str, column: str, key: str, loader) -> list[Finding]:
    regions = _shape(loader).regions
    if regions:
        keys = [column_name(name) for name in regions]
        if key in keys:
            return []
        return [Finding("monitor", "unknown_monitor", f"monitor {monitor!r} names region {key!r}, which the loader "
                        f"does not declare", hint=f"monitor {column}_<region>: {', '.join(keys)}")]
    if loader is not None and getattr(loader[1], "synthetic", "none") != "none":
        return [Finding("monitor", "unknown_monitor", f"monitor {monitor!r} is not a history column: the phantom "
                        "data has no regions", hint=f"monitor {column} or {column}_1")]
    return [Finding("monitor", "unknown_monitor", f"monitor {monitor!r} is written only for data with a region "
                    f"named {key!r} (an nnU-Net dataset.json may declare one; the loader declares none)",
                    hint="check the region's name in dataset.json", severity="warning")]


def loss_list_findings(loss: tuple[str, NodeConfig] | None, loader: tuple[str, NodeConfig] | None,
                       network: tuple[str, NodeConfig] | None) -> list[Finding]:
    """The LossFunction's lists against what they describe: class_weights one per class (regions are
    checked with the label scheme), boundary_spacing one per spatial axis."""
    if loss is None or loss[0] != "LossFunction":
        return []
    cfg, found, shape = loss[1], [], _shape(loader)
    weights = getattr(cfg, "class_weights", None)
    classes = None if shape.regions else _classes(loader, network)
    if weights is not None and classes and len(weights) != classes:
        found.append(Finding("", "loss_label_mismatch", f"the LossFunction wired to loss_fn has {len(weights)} "
                             f"class_weights, but there are {classes} classes (background included)",
                             hint=f"give {classes} class_weights, background first"))
    spacing = getattr(cfg, "boundary_spacing", None)
    dims = shape.spatial_dims
    if spacing is not None and dims and len(spacing) != dims:
        found.append(Finding("", "loss_label_mismatch", f"the LossFunction wired to loss_fn has {len(spacing)} "
                             f"boundary_spacing values, but the {loader[0]} loads {dims}-D data",
                             hint=f"give {dims} values, one per spatial axis"))
    return found


def window_findings(val_roi_size: list[int] | None, loader: tuple[str, NodeConfig] | None,
                    network: tuple[str, NodeConfig] | None) -> list[Finding]:
    """val_roi_size against the data's dimensions and the network's size rule."""
    if val_roi_size is None:
        return []
    dims = _shape(loader).spatial_dims
    if dims and len(val_roi_size) != dims:
        return [Finding("val_roi_size", "bad_value", f"val_roi_size has {len(val_roi_size)} values but the "
                        f"{loader[0]} loads {dims}-D data", hint=f"give {dims} values")]
    return size_findings("val_roi_size", val_roi_size, network, "the training patch size")
