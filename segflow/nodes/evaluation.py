"""Evaluator and SegmentationOverlay: configs and ports. The work lives in
`segflow.evaluation.metrics` and `segflow.evaluation.overlay` (imported in `run`).

Both read a `Predictions` set one case at a time, so hundreds of volumes never sit in memory.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from segflow.nodes.base import Finding, Node, NodeConfig, Port
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


@register
class Evaluator(Node):
    """Per-case and per-class metrics of a prediction set against its ground truth."""

    type = "Evaluator"
    family = "evaluation"
    Config = EvaluatorConfig
    inputs = (Port("predictions", "Predictions", doc="prediction files with their ground truth"),)
    outputs = (Port("metrics", "Metrics", doc="dict: cases (one row per case x class), per_class (mean/std/median/n "
                                              "over cases, n_absent), mean (macro over classes), files"),)

    def run(self, predictions) -> dict[str, Any]:
        from segflow.evaluation.metrics import evaluate

        cfg: EvaluatorConfig = self.config  # type: ignore[assignment]
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
    max_images: int = Field(16, ge=1, description="Most cases drawn (one PNG each, and one tile each in grid.png).")
    selection: Annotated[Literal["worst", "first"], Choice()] = Field(
        "worst", description="Which cases when there are more than max_images: worst = lowest foreground Dice first "
                             "(needs ground truth; cases without it come last), first = in order.")
    slices_per_case: int = Field(3, ge=1, le=12, description="3-D: slices drawn per case, those with the most "
                                                             "errors (then the most foreground).")
    slice_axis: Annotated[int | Literal["auto"], Choice()] = Field(
        "auto", description="3-D: the axis sliced along. With an affine (NIfTI) the axes are the patient's, "
                            "whatever the voxel order on disk: 0 = left-right (sagittal slices), 1 = posterior-anterior "
                            "(coronal), 2 = inferior-superior (axial); without one (NumPy, TIFF) the stored array axes. "
                            "auto = the axis of the coarsest spacing, else 2 (axial).")
    colours: dict[Literal["tp", "fp", "fn", "wrong_class"], str] = Field(
        dict(DEFAULT_COLOURS), description="Colours of the error map: tp (correct foreground), fp (foreground where "
                                           "the truth is background), fn (missed foreground), wrong_class; "
                                           "'#rrggbb' or a matplotlib colour name.")
    dpi: int = Field(100, ge=30, le=600, description="Resolution of the written PNGs.")

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

    def run(self, predictions) -> dict[str, Any]:
        from segflow.evaluation.overlay import render_overlays

        cfg: SegmentationOverlayConfig = self.config  # type: ignore[assignment]
        paths = render_overlays(predictions, self.ctx.output_path(cfg.output_dir), alpha=cfg.alpha,
                                max_images=cfg.max_images, selection=cfg.selection,
                                slices_per_case=cfg.slices_per_case, slice_axis=cfg.slice_axis,
                                colours=cfg.colours, dpi=cfg.dpi, log=self.ctx.log)
        return {"images": paths}

    @classmethod
    def preflight(cls, config: NodeConfig, device: str | None) -> list[Finding]:
        from matplotlib.colors import is_color_like

        cfg: SegmentationOverlayConfig = config  # type: ignore[assignment]
        return [Finding(f"colours.{k}", "bad_value", f"{v!r} is not a colour matplotlib knows",
                        hint="use '#rrggbb' or a name such as 'red'")
                for k, v in cfg.colours.items() if not is_color_like(v)]
