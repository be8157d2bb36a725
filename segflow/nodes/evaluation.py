"""Evaluator and SegmentationOverlay, and the node editor's Print, ImageViewer and MetricsPlotter:
configs and ports. The work lives in `segflow.evaluation.metrics`, `overlay`, `report` and `plots`
(imported in `run`).

They read a `Predictions` set one case at a time, so hundreds of volumes never sit in memory.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from segflow.nodes.base import Finding, Node, NodeConfig, Port
from segflow.nodes.bounds import Cases, Classes
from segflow.nodes.registry import register
from segflow.nodes.words import Choice

MetricName = Literal["dice", "iou", "precision", "recall", "hd95", "hd95_pooled", "surface_dice"]
_METRIC_SYNONYMS = {"jaccard": "iou", "hausdorff95": "hd95", "hausdorff_95": "hd95", "hd_95": "hd95",
                    "nsd": "surface_dice", "normalized_surface_dice": "surface_dice", "sensitivity": "recall",
                    "ppv": "precision"}
DEFAULT_COLOURS = {"tp": "#2ca02c", "fp": "#d62728", "fn": "#1f77b4", "wrong_class": "#ff7f0e"}


class EvaluatorConfig(NodeConfig):
    aliases: ClassVar[dict[str, str]] = {"metric": "metrics", "tolerance": "surface_tolerance",
                                         "surface_dice_tolerance": "surface_tolerance"}

    metrics: Annotated[list[MetricName], Choice(_METRIC_SYNONYMS)] = Field(
        ["dice", "iou", "precision", "recall", "hd95", "surface_dice"], min_length=1,
        description="Metrics to compute per case and class: dice, iou, precision, recall, hd95 (95th-percentile "
                    "Hausdorff distance as MONAI defines it: the larger of the two directed 95th percentiles), "
                    "hd95_pooled (as medpy and seg-metrics define it: the 95th percentile of both directions' "
                    "distances pooled), surface_dice (normalised surface Dice at surface_tolerance). Means in "
                    "the summary are over cases (each case weighs the same).")
    surface_tolerance: float = Field(
        1.0, ge=0, description="Surface Dice: boundary distance counted as correct, in physical units (mm for "
                               "NIfTI; pixels where the data has no spacing).")
    include_background: bool = Field(False, description="Also score class 0 (background).")
    output_dir: str = Field("evaluation", description="Folder for metrics.csv and metrics.json; a relative path "
                                                      "lives inside the run directory.")
    # the node editor's MetricsCalculator settings
    task_type: Annotated[Literal["segmentation", "classification"], Choice()] = Field(
        "segmentation", description="What the predictions are (the node editor's MetricsCalculator setting): "
                                    "segmentation masks, scored per class. classification scores the same per-class "
                                    "metrics here (validate warns).")
    num_classes: Classes | None = Field(
        None, ge=2, description="Classes the predictions must have, background included (the node editor's "
                                "MetricsCalculator setting); a prediction set with another number is an error. "
                                "Null: the data's.")


@register
class Evaluator(Node):
    """Per-case and per-class metrics of a prediction set against its ground truth."""

    type = "Evaluator"
    family = "evaluation"
    Config = EvaluatorConfig
    inputs = (Port("predictions", "Predictions", doc="prediction files with their ground truth"),)
    outputs = (Port("metrics", "Metrics", doc="dict: cases (one row per case x class), per_class (mean/std/median/n "
                                              "over cases, n_absent), mean (macro over classes), files"),)
    # the node editor's MetricsCalculator took predictions and labels apart: one prediction set here
    type_aliases = ("MetricsCalculator",)
    port_aliases = {"labels": "predictions"}

    @classmethod
    def check(cls, config: NodeConfig, neighbours: dict[str, tuple[str, NodeConfig]]) -> list[Finding]:
        if config.task_type != "classification":  # type: ignore[attr-defined]
            return []
        return [Finding("task_type", "unused_value", "task_type classification changes nothing: the Evaluator scores "
                        "segmentation masks per class either way", hint="set task_type to segmentation or remove it",
                        severity="warning")]

    def run(self, predictions) -> dict[str, Any]:
        from segflow.evaluation.metrics import evaluate

        cfg: EvaluatorConfig = self.config  # type: ignore[assignment]
        if cfg.num_classes is not None and cfg.num_classes != predictions.num_classes:
            raise ValueError(f"num_classes is {cfg.num_classes}, but the predictions have {predictions.num_classes} "
                             "classes (background included); set num_classes to match, or remove it")
        result = evaluate(predictions, metrics=cfg.metrics, include_background=cfg.include_background,
                          surface_tolerance=cfg.surface_tolerance,
                          output_dir=self.ctx.output_path(cfg.output_dir), log=self.ctx.log)
        for tracker in self.ctx.trackers:
            tracker.evaluation(result["files"]["json"])
        return {"metrics": result}


class SegmentationOverlayConfig(NodeConfig):
    aliases: ClassVar[dict[str, str]] = {"opacity": "alpha", "num_images": "max_images", "colors": "colours",
                                         "num_slices": "slices_per_case"}

    output_dir: str = Field("overlays", description="Folder for the PNGs; a relative path lives inside the run directory.")
    alpha: float = Field(0.5, ge=0, le=1, description="Opacity of the coloured masks over the image.")
    max_images: Cases = Field(16, ge=1, description="Most cases drawn (one PNG each, and one tile each in grid.png).")
    selection: Annotated[Literal["worst", "first"], Choice()] = Field(
        "worst", description="Which cases when there are more than max_images: worst = lowest foreground Dice first "
                             "(needs ground truth; cases without it come last), first = in order.")
    slices_per_case: int = Field(3, ge=1, le=12, description="3-D: slices drawn per case, those with the most "
                                                             "errors (then the most foreground).")
    slice_axis: Annotated[Annotated[int, Field(ge=0, le=2)] | Literal["auto"], Choice()] = Field(
        "auto", description="3-D: the axis sliced along. With an affine (NIfTI) the axes are the patient's, "
                            "whatever the voxel order on disk: 0 = left-right (sagittal slices), 1 = posterior-anterior "
                            "(coronal), 2 = inferior-superior (axial); without one (NumPy, TIFF) the stored array axes. "
                            "auto = the axis of the coarsest spacing, else 2 (axial).")
    colours: dict[Literal["tp", "fp", "fn", "wrong_class"], str] = Field(
        dict(DEFAULT_COLOURS), description="Colours of the error map: tp (correct foreground), fp (foreground where "
                                           "the truth is background), fn (missed foreground), wrong_class; "
                                           "'#rrggbb' or a matplotlib colour name.")
    dpi: int = Field(100, ge=30, le=600, description="Resolution of the written PNGs.")
    save_individual: bool = Field(True, description="Write one PNG per drawn case.")
    save_grid: bool = Field(True, description="Write grid.png, one tile per drawn case.")

    @field_validator("colours")
    @classmethod
    def _colours(cls, v: dict[str, str]) -> dict[str, str]:
        for key, colour in v.items():
            if not re.fullmatch(r"#[0-9a-fA-F]{6}|[A-Za-z ]+|tab:[a-z]+", colour.strip()):
                raise ValueError(f"colours.{key}: {colour!r} is not '#rrggbb' or a colour name")
        return {**DEFAULT_COLOURS, **v}


@register
class SegmentationOverlay(Node):
    """PNG pictures of where the model is right and wrong, per case and as one grid."""

    type = "SegmentationOverlay"
    family = "evaluation"
    Config = SegmentationOverlayConfig
    inputs = (Port("predictions", "Predictions", doc="prediction files, with ground truth where there is one"),)
    outputs = (Port("images", "Images", doc="list of the written PNG paths; grid.png last"),)
    # the node editor's overlay took images, labels and predictions apart, and counted what it saved
    port_aliases = {"images": "predictions", "labels": "predictions", "num_saved": "images"}

    @classmethod
    def check(cls, config: NodeConfig, neighbours: dict[str, tuple[str, NodeConfig]]) -> list[Finding]:
        cfg: SegmentationOverlayConfig = config  # type: ignore[assignment]
        if cfg.save_individual or cfg.save_grid:
            return []
        return [Finding("save_grid", "unused_value", "save_individual and save_grid are both false: the node writes "
                        "nothing", hint="set one of them to true, or remove the node", severity="warning")]

    def run(self, predictions) -> dict[str, Any]:
        from segflow.evaluation.overlay import render_overlays

        cfg: SegmentationOverlayConfig = self.config  # type: ignore[assignment]
        paths = render_overlays(predictions, self.ctx.output_path(cfg.output_dir), alpha=cfg.alpha,
                                max_images=cfg.max_images, selection=cfg.selection,
                                slices_per_case=cfg.slices_per_case, slice_axis=cfg.slice_axis,
                                colours=cfg.colours, dpi=cfg.dpi, log=self.ctx.log,
                                individual=cfg.save_individual, grid=cfg.save_grid)
        return {"images": paths}

    @classmethod
    def preflight(cls, config: NodeConfig, device: str | None) -> list[Finding]:
        from matplotlib.colors import is_color_like

        cfg: SegmentationOverlayConfig = config  # type: ignore[assignment]
        return [Finding(f"colours.{k}", "bad_value", f"{v!r} is not a colour matplotlib knows",
                        hint="use '#rrggbb' or a name such as 'red'")
                for k, v in cfg.colours.items() if not is_color_like(v)]


# --- the node editor's viewers -------------------------------------------------------------------


class PrintConfig(NodeConfig):
    aliases: ClassVar[dict[str, str]] = {"message": "prefix"}

    prefix: str = Field("Output", description="The heading printed above the summary (alias message).")


@register
class Print(Node):
    """Prints a readable summary of whatever is linked to it: metrics, a training history, a model,
    a loader, a prediction set, a tensor, a number..."""

    type = "Print"
    family = "evaluation"
    Config = PrintConfig
    inputs = (Port("input", "Any", doc="any output; link it explicitly, as every output fits"),)

    def run(self, input: Any = None) -> dict[str, Any]:
        from segflow.evaluation.report import summary

        self.ctx.log(f"{self.config.prefix}:\n{summary(input)}")  # type: ignore[attr-defined]
        return {}


class ViewerConfig(NodeConfig):
    save_path: str = Field("", description="The PNG written; a relative path lives inside the run directory. "
                                           "Empty: <node name>.png there.")
    show: bool = Field(False, description="Also open the picture in a window (blocks until it is closed). On a "
                                          "machine without a display the picture is only saved, and the log says so.")


def _picture_path(node: Node) -> Any:
    """Where a viewer writes: its save_path, else <node name>.png, inside the run directory when relative."""
    return node.ctx.output_path(node.config.save_path or f"{node.name}.png")  # type: ignore[attr-defined]


@register
class ImageViewer(Node):
    """Draws the first case of a prediction set: its image (the middle or most covered slice of a
    volume) and, when `segmentation` is wired, the predicted classes over it."""

    type = "ImageViewer"
    family = "evaluation"
    Config = ViewerConfig
    inputs = (
        Port("image", "Predictions", doc="the prediction set whose first case's image is drawn"),
        Port("segmentation", "Predictions", required=False, doc="the prediction set whose prediction of that case "
             "is drawn over the image (auto-wired like any input: usually the same set)"),
    )

    def run(self, image, segmentation=None) -> dict[str, Any]:
        from segflow.evaluation.plots import show_file, view_case

        path = view_case(image, _picture_path(self), segmentation=segmentation)  # type: ignore[attr-defined]
        self.ctx.log(f"ImageViewer '{self.name}': wrote {path}")
        if self.config.show:  # type: ignore[attr-defined]
            show_file(path, f"ImageViewer '{self.name}'", self.ctx.log)
        return {}


@register
class MetricsPlotter(Node):
    """Plots a training history (losses, validation metrics and learning rate per epoch), or an
    Evaluator's metrics (mean per class), as one PNG."""

    type = "MetricsPlotter"
    family = "evaluation"
    Config = ViewerConfig
    inputs = (Port("metrics", "History", accepts=("Metrics",), doc="a Trainer's history (the node editor's "
                   "Trainer metrics), or an Evaluator's metrics"),)

    def run(self, metrics) -> dict[str, Any]:
        from segflow.evaluation.plots import plot_metrics, show_file

        path = plot_metrics(metrics, _picture_path(self))  # type: ignore[attr-defined]
        self.ctx.log(f"MetricsPlotter '{self.name}': wrote {path}")
        if self.config.show:  # type: ignore[attr-defined]
            show_file(path, f"MetricsPlotter '{self.name}'", self.ctx.log)
        return {}
