"""Inference family: CheckpointLoader and Predictor.

Config and ports only; loading weights lives in `segflow.inference.weights`, prediction in
`segflow.inference.predict` (imported inside `run`), so `segflow validate` stays free of torch.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from segflow.nodes.base import Device, Finding, Node, NodeConfig, Port, device_findings
from segflow.nodes.bounds import MAX_VOXELS, BatchSize, ForegroundLabel, Why
from segflow.nodes.datashape import DataShape
from segflow.nodes.networks import size_findings
from segflow.nodes.registry import register
from segflow.nodes.words import Choice


class CheckpointLoaderConfig(NodeConfig):
    aliases: ClassVar[dict[str, str]] = {"checkpoint": "checkpoint_path", "path": "checkpoint_path",
                                         "weights": "checkpoint_path"}

    checkpoint_path: str | list[str] = Field(..., description=(
        "Weights file, relative to the working directory: a Trainer checkpoint (last.pt / best.pt), or a bare "
        "state_dict (DDP 'module.' and torch.compile '_orig_mod.' prefixes are stripped). A list of files "
        "(e.g. the best.pt of each cross-validation fold) makes an ensemble: one copy of the model per file, "
        "their class probabilities averaged."))
    strict: bool = Field(True, description=(
        "Every entry of the model must be in the file with the same shape. false: load the entries that fit "
        "and list the rest (e.g. a new segmentation head)."))
    map_location: Device = Field("cpu", description=(
        "Device the file's tensors are read onto before they are copied into the model (cpu is always safe)."))

    @field_validator("checkpoint_path")
    @classmethod
    def _paths(cls, v: str | list[str]) -> str | list[str]:
        if not v or (isinstance(v, list) and not all(v)):
            raise ValueError("checkpoint_path needs a file, or a non-empty list of files")
        return v

    def paths(self) -> list[str]:
        return [self.checkpoint_path] if isinstance(self.checkpoint_path, str) else list(self.checkpoint_path)


@register
class CheckpointLoader(Node):
    """Loads saved weights into the model wired to it and hands the model on."""

    type = "CheckpointLoader"
    family = "inference"
    Config = CheckpointLoaderConfig
    inputs = (Port("model", "Model", doc="the network to load the weights into (built with its training config)"),)
    outputs = (Port("model", "Model", passes="model", doc="the same model with the checkpoint's weights; for a "
                    "list of files, an ensemble of copies of it averaging their probabilities"),
               Port("checkpoint_info", "CheckpointInfo", doc="dict: checkpoint_path, and for a Trainer checkpoint its "
                    "epoch, monitor, best and best_epoch (a list of such dicts for an ensemble)"))

    @classmethod
    def preflight(cls, config: NodeConfig, device: str | None) -> list[Finding]:
        listed = isinstance(config.checkpoint_path, list)
        found = []  # every missing file of an ensemble, not just the first
        for i, path in enumerate(config.paths()):
            if not os.path.isfile(path):
                where = f"checkpoint_path[{i}]" if listed else "checkpoint_path"
                found.append(Finding(where, "path_not_found",
                                     f"{where} {path!r} is not a file (looked in {os.path.abspath(path)})",
                                     hint="paths are relative to the folder segflow runs in; a Trainer writes "
                                          "runs/<workflow>/<time>/checkpoints/best.pt"))
        return found

    def run(self, model) -> dict[str, Any]:
        import copy

        from segflow.inference.weights import checkpoint_info, load_weights

        cfg, paths = self.config, self.config.paths()
        members = [model] + [copy.deepcopy(model) for _ in paths[1:]]  # before any weights are loaded
        for i, (member, path) in enumerate(zip(members, paths)):
            who = f"CheckpointLoader '{self.name}'" + (f" (checkpoint_path[{i}])" if len(paths) > 1 else "")
            load_weights(member, path, strict=cfg.strict, map_location=cfg.map_location, log=self.ctx.log, who=who)
        from segflow.inference.postprocess import attach, shared_rule

        info = [checkpoint_info(path) for path in paths]
        rule, why = shared_rule(paths)  # why is empty when no checkpoint has a postprocessing.json
        if len(paths) == 1:
            self.ctx.log(f"CheckpointLoader '{self.name}': loaded {paths[0]}" + (f"; {why}" if why else ""))
            attach(model, rule, known=bool(why))
            return {"model": model, "checkpoint_info": info[0]}
        from segflow.inference.ensemble import Ensemble

        self.ctx.log(f"CheckpointLoader '{self.name}': an ensemble of {len(paths)} models ({', '.join(paths)}), "
                     "class probabilities averaged" + (f"; {why}" if why else ""))
        ensemble = Ensemble(members)
        attach(ensemble, rule, known=bool(why))
        return {"model": ensemble, "checkpoint_info": info}


# A sliding window per axis: at least 8 (no network segflow builds takes less; the run checks the
# network's own size rule), at most what any image has.
Window = Annotated[int, Field(ge=8, le=MAX_VOXELS), Why("no scanner's matrix is larger along one axis")]
Scale = Annotated[float, Field(gt=0, le=4), Why("a scale of 4 already has 64 times the voxels of a 3-D image")]


class PredictorConfig(NodeConfig):
    aliases: ClassVar[dict[str, str]] = {"mode": "blend_mode", "sw_overlap": "overlap", "val_roi_size": "roi_size",
                                         "save_probs": "save_probabilities", "amp": "mixed_precision"}

    roi_size: Window | list[Window] | None = Field(None, description=(
        "Sliding-window size (int for a square/cube or one value per axis). Null: the loader's training patch size "
        "(dataset_info), else the whole image in one pass."))
    overlap: float = Field(0.5, ge=0.0, lt=1.0, description="Overlap of neighbouring windows (fraction of roi_size).")
    blend_mode: Annotated[Literal["gaussian", "constant"], Choice()] = Field("gaussian", description=(
        "How overlapping windows are blended: gaussian weights the window centres more; constant averages evenly."))
    sw_batch_size: BatchSize = Field(4, ge=1, description="Windows per forward pass.")
    tta: Annotated[bool | list[Literal["flip", "scale"]], Choice({"flips": "flip", "scales": "scale"})] = Field(
        False, description="Test-time augmentation, probabilities averaged: false; true (= flips); or a list of "
                           "'flip' and/or 'scale' (every flip at every scale).")
    tta_flips: list[Annotated[int, Field(ge=0, le=2)]] | None = Field(None, description=(
        "Spatial axes flipped one at a time by TTA 'flip' (0-based; null: every axis)."))
    tta_flip_combinations: bool = Field(False, description=(
        "TTA 'flip' also flips every combination of the tta_flips axes, as nnU-Net mirrors: 2^n - 1 flips and "
        "the plain pass (8 passes in 3-D, 4 in 2-D) instead of n + 1."))
    tta_scales: list[Scale] = Field([0.75, 1.0, 1.25], min_length=1, description=(
        "Input scale factors for TTA 'scale'; probabilities are resized back before averaging."))
    output_dir: str = Field("predictions", description="Folder for the predictions; a relative path lives inside the run directory.")
    output_format: Annotated[Literal["auto", "nifti", "png", "npy", "nrrd", "mha"], Choice()] = Field(
        "auto", description=(
            "auto: the input's own format and geometry (NIfTI with the source affine for NIfTI/DICOM, NRRD/MHA "
            "with the source spacing, origin and direction for .nrrd/.nhdr and .mha/.mhd, PNG at the source size "
            "for PNG/JPG, .npy otherwise); or nifti, png (2-D only), npy, nrrd, mha (these two need the itk extra)."))
    save_probabilities: bool = Field(False, description="Also write the class probabilities (C, *S) as <case>_probabilities.npy (float16).")
    device: Device = Field("auto", description="auto (CUDA if present), cpu, cuda or cuda:N (gpu, gpu:N say the same), "
                                               "mps (Apple GPUs). The --device command-line option wins.")
    mixed_precision: bool = Field(True, description="Autocast (bf16 where supported, else fp16) on a GPU; ignored on CPU.")
    postprocessing: Annotated[Literal["auto", "none", "largest_component"],
                              Choice({"keep_largest_component": "largest_component"}, null="none")] = Field(
        "auto", description=(
            "Applied to every predicted label map before it is written. auto: the rule chosen on validation for "
            "these weights (postprocessing.json: the Trainer's in this run, or the one beside a CheckpointLoader's "
            "checkpoint or in the run directory above it; none if there is none), or postprocessing_file; "
            "largest_component: keep only the largest connected component, of all foreground classes together or "
            "of each class in postprocessing_classes; none: as predicted."))
    postprocessing_classes: list[ForegroundLabel] | None = Field(None, description=(
        "largest_component: the classes that each keep only their own largest component (null: all foreground "
        "classes taken together as one object)."))
    postprocessing_file: str | None = Field(None, description=(
        "auto: this postprocessing.json (a Trainer writes one into its run directory) instead of the one found "
        "for the weights; relative to the working directory."))

    @field_validator("roi_size")
    @classmethod
    def _roi(cls, v):
        if isinstance(v, list) and len(v) not in (2, 3):
            raise ValueError("roi_size must be one number or a list of 2 (2-D) or 3 (3-D) numbers")
        return v

    @field_validator("postprocessing_classes")
    @classmethod
    def _pp_classes(cls, v):
        if v is not None and (not v or any(c < 1 for c in v) or len(set(v)) != len(v)):
            raise ValueError("postprocessing_classes lists foreground classes (1, 2, ...), each once; null for all "
                             "foreground together")
        return v


@register
class Predictor(Node):
    """Predicts every case of a loader (sliding window, optional TTA) and writes each in its own format and geometry."""

    type = "Predictor"
    family = "inference"
    Config = PredictorConfig
    inputs = (
        Port("model", "TrainedModel", accepts=("Model",), doc="the network (a Trainer's output, or a CheckpointLoader's)"),
        Port("loader", "DataLoader", prefer=("val_loader",), doc="cases to predict; 3-D: whole volumes (a val_loader)"),
        Port("dataset_info", "DatasetInfo", required=False, doc="patch size (default roi_size), classes, class names"),
    )
    outputs = (Port("predictions", "Predictions", doc="PredictionSet: one record per case pointing at its files"),)
    # the node editor's BatchPredictor gave the images, labels and predictions apart: one prediction set here
    type_aliases = ("BatchPredictor",)
    port_aliases = {"dataloader": "loader", "all_predictions": "predictions", "all_labels": "predictions",
                    "all_images": "predictions"}

    @classmethod
    def check(cls, config: NodeConfig, neighbours: dict[str, tuple[str, NodeConfig]]) -> list[Finding]:
        cfg: PredictorConfig = config  # type: ignore[assignment]
        source = neighbours.get("loader") or neighbours.get("dataset_info")
        dims = DataShape.of_config(*source).spatial_dims if source else None
        found = []
        if dims and isinstance(cfg.roi_size, list) and len(cfg.roi_size) != dims:
            found.append(Finding("roi_size", "bad_value", f"roi_size has {len(cfg.roi_size)} values but the "
                                 f"{source[0]} loads {dims}-D data", hint=f"give {dims} values or one number"))
        if dims == 3 and cfg.output_format == "png":
            found.append(Finding("output_format", "bad_value", f"output_format png is for 2-D data; the {source[0]} "
                                 "loads 3-D volumes", hint="use auto (the input's own format), nifti, nrrd, mha or npy"))
        if dims and cfg.tta_flips and "flip" in (["flip"] if cfg.tta is True else cfg.tta or []) \
                and max(cfg.tta_flips) >= dims:
            found.append(Finding("tta_flips", "bad_value", f"tta_flips {cfg.tta_flips} names axis "
                                 f"{max(cfg.tta_flips)}, but the data is {dims}-D", hint=f"use axes 0..{dims - 1}"))
        classes = DataShape.of_config(*source).num_classes if source else None
        if classes and cfg.postprocessing_classes and max(cfg.postprocessing_classes) >= classes:
            found.append(Finding("postprocessing_classes", "bad_value", f"postprocessing_classes "
                                 f"{cfg.postprocessing_classes} names class {max(cfg.postprocessing_classes)}, but "
                                 f"the {source[0]} has {classes} classes (0 to {classes - 1})",
                                 hint="the foreground class is 1" if classes == 2 else
                                 f"foreground classes are 1 to {classes - 1}"))
        if not any(f.field == "roi_size" for f in found):  # its axes against the data's already said
            found += size_findings("roi_size", cfg.roi_size, neighbours.get("model@origin") or neighbours.get("model"),
                                   "the training patch size")
        return found + _postprocessing_findings(cfg)

    @classmethod
    def preflight(cls, config: NodeConfig, device: str | None) -> list[Finding]:
        found = device_findings(device or config.device)
        path = config.postprocessing_file
        if path and config.postprocessing == "auto":
            from segflow.inference.postprocess import PostProcessing

            try:
                PostProcessing.read(path)
            except ValueError as e:
                found.append(Finding("postprocessing_file", "path_not_found" if not os.path.isfile(path) else
                                     "bad_value", str(e), hint="a Trainer with postprocessing auto writes "
                                     "runs/<workflow>/<time>/postprocessing.json"))
        if config.output_format in ("nrrd", "mha") and importlib.util.find_spec("SimpleITK") is None:
            found.append(Finding("output_format", "missing_package", f"output_format {config.output_format} "
                                 "writes through SimpleITK, which is not installed",
                                 hint="pip install 'segflow[itk]', or choose nifti or npy"))
        return found

    def run(self, model, loader, dataset_info=None) -> dict[str, Any]:
        from segflow.inference.predict import predict

        return {"predictions": predict(self.config, self.ctx, self.name, model, loader, dataset_info)}


def _postprocessing_findings(cfg: PredictorConfig) -> list[Finding]:
    """Settings that the chosen postprocessing ignores: warnings, since the writer meant something."""
    found = []
    if cfg.postprocessing_classes is not None and cfg.postprocessing != "largest_component":
        found.append(Finding("postprocessing_classes", "unused_value", "postprocessing_classes is only read with "
                             f"postprocessing largest_component, not {cfg.postprocessing}",
                             hint="set postprocessing to largest_component, or remove postprocessing_classes",
                             severity="warning"))
    if cfg.postprocessing_file is not None and cfg.postprocessing != "auto":
        found.append(Finding("postprocessing_file", "unused_value", "postprocessing_file is only read with "
                             f"postprocessing auto, not {cfg.postprocessing}",
                             hint="set postprocessing to auto, or remove postprocessing_file", severity="warning"))
    return found
