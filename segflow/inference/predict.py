"""The Predictor's work: predict every case a loader hands out and write it back in its own geometry.

Cases are written one by one as soon as they are predicted; only a small record per case is kept
(a `PredictionSet`), so hundreds of volumes never sit in memory together.

Back to the source geometry:
* 2-D: with size_mode "resize" the loader resized every image to `image_size`; the class
  probabilities are resized back to the source image's size (bilinear) and only then turned into
  labels by argmax. With "patches" the images come whole at their own size (sliding windows of
  the patch size), so that resize changes nothing unless target_spacing resampled them.
* 3-D: validation volumes come whole, in the file's own voxel grid, so the prediction keeps the
  file's affine. When the loader resampled to `target_spacing`, the probabilities are resampled
  back onto the source grid (source affine and shape) by nnU-Net's rule (segflow.data.resample:
  linear, nearest along a coarse slice axis) before argmax.
* A loader not built by MedicalSegmentationLoader (no source files known): the prediction, image
  and label are written as .npy at the batch's own size.

Post-processing (the `postprocessing` setting, segflow.inference.postprocess): applied to each label
map on the source grid, after the argmax and before it is written; probability files are left as
predicted.

Regions (segflow.data.label_scheme): the probabilities are each region's sigmoid, averaged over TTA
variants and ensemble members, resampled like class probabilities, and only then painted into one
label map in regions_class_order (segflow.data.regions.paint).

Label values: every record carries the coding the loader decided for its label files
(segflow.data.label_coding), so the Evaluator and overlays read 0/255 ground truth as classes 0/1;
PNG predictions are written in that coding too (a 0/255 dataset gets 0/255 masks), NIfTI and .npy
ones as class indices.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from segflow.data.label_coding import CLASS_INDICES, LabelCoding
from segflow.data.label_scheme import PLAIN, LabelScheme
from segflow.data.regions import paint
from segflow.data.segmentation_loader import labels_of
from segflow.inference import tta as tta_mod
from segflow.inference.ensemble import follow_labels
from segflow.inference.postprocess import PostProcessing, attached
from segflow.inference.records import PredictionRecord, PredictionSet
from segflow.inference.writers import Geometry, source_geometry, write_label, write_probabilities
from segflow.networks.description import NetworkDescription, description_of
from segflow.workflow.errors import ConfigValueError
from segflow.workflow.files import atomic_write

if TYPE_CHECKING:
    from segflow.data.info import DatasetInfo
    from segflow.nodes.base import RunContext
    from segflow.nodes.inference import PredictorConfig


def predict(cfg: PredictorConfig, ctx: RunContext, name: str, model: torch.nn.Module, loader: Any,
            info: DatasetInfo | None = None) -> PredictionSet:
    who = f"Predictor '{name}'"
    if loader is None:
        raise ValueError(f"{who}: the loader input is empty (None). A MedicalSegmentationLoader gives no val_loader "
                         "when val_fraction is 0 and the folder has no val/ split; set val_fraction above 0")
    device, amp = _device_and_autocast(cfg, ctx, who)
    out_dir = ctx.output_path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    dataset = getattr(loader, "dataset", None)
    source = getattr(dataset, "source", None)  # segflow.data.datasets.CaseSource
    cases = {c.case_id: c for c in source.cases} if source is not None else {}
    resampled = source is not None and getattr(source.spec, "target_spacing", None) is not None
    coding = label_coding(source, info)
    labels = label_scheme(loader, info)
    follow_labels(model, labels.region_based)

    post = postprocessing_rule(cfg, model, who, ctx.log)
    model = model.to(device).eval()
    dims = info.spatial_dims if info is not None else None
    num_classes = None
    records: list[PredictionRecord] = []
    total = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    bar = case_bar(total, who, leave=False) if getattr(ctx, "progress", False) else None
    with torch.no_grad():
        for batch in loader:
            image = batch["image"].to(device)
            dims = dims or image.ndim - 2
            probs = _probabilities(cfg, model, image, info, dims, amp, labels.region_based)
            num_classes = probs.shape[1]
            ids = _case_ids(batch, len(image), len(records))
            for i, case_id in enumerate(ids):
                case = cases.get(case_id)
                affine = batch["affine"][i].numpy() if "affine" in batch else None
                record = _write_case(cfg, who, out_dir, case_id, case, probs[i], batch, i, dims, resampled, affine,
                                     coding, post, labels)
                records.append(record)
                if bar is not None:
                    bar.update(1)
                else:
                    ctx.log(f"{who}: {case_id} -> {record.prediction_path}")
    if bar is not None:
        bar.close()
    class_names = tuple(info.class_names) if info is not None and info.class_names else ()
    ctx.log(f"{who}: {len(records)} case(s) predicted into {out_dir}")
    return PredictionSet(records, num_classes=_classes(num_classes, info, labels),
                         spatial_dims=dims or 2, class_names=class_names, output_dir=out_dir, labels=labels)


def _device_and_autocast(cfg: PredictorConfig, ctx: RunContext, who: str) -> tuple[torch.device, Any]:
    """The device to predict on (--device wins) and the autocast dtype there (None: fp32)."""
    from segflow.training.device import resolve_device, resolve_precision

    device = resolve_device(ctx.device or cfg.device, "--device" if ctx.device else f"{who}: config field 'device'")
    precision = resolve_precision(bool(cfg.mixed_precision), device, log=lambda _m: None)
    return device, precision.dtype if precision.enabled and device.type == "cuda" else None


def _probabilities(cfg: PredictorConfig, model: torch.nn.Module, image: torch.Tensor, info, dims: int, amp,
                   sigmoid: bool) -> torch.Tensor:
    """One batch's probabilities: sliding windows (checked against the network) and TTA as configured."""
    roi = roi_size(cfg.roi_size, info, dims)
    window_fits(roi, description_of(model), explicit=cfg.roi_size is not None)
    variants = tta_mod.variants(cfg.tta, cfg.tta_flips, cfg.tta_scales, dims, cfg.tta_flip_combinations)
    return tta_mod.predict_probabilities(model, image, roi, overlap=cfg.overlap, blend_mode=cfg.blend_mode,
                                         sw_batch_size=cfg.sw_batch_size, tta=variants, autocast_dtype=amp,
                                         sigmoid=sigmoid)


def _classes(channels: int | None, info, labels: LabelScheme) -> int:
    """The classes the written label maps hold: the model's channels, but the dataset's classes for regions."""
    if labels.region_based:
        return info.num_classes if info is not None else max(labels.paint) + 1
    return channels or (info.num_classes if info else 2)


def roi_size(setting, info, dims: int) -> tuple[int, ...] | None:
    """The configured window, else the training patch size, else None (whole image at once)."""
    if setting is None:
        patch = tuple(getattr(info, "patch_size", ()) or ())
        return patch if len(patch) == dims else None
    size = (setting,) * dims if isinstance(setting, int) else tuple(setting)
    if len(size) != dims:
        raise ValueError(f"roi_size {list(size)} has {len(size)} values but the data is {dims}-D")
    return size


def window_fits(roi: tuple[int, ...] | None, network: NetworkDescription | None, explicit: bool) -> None:
    """A located error (at roi_size, or naming it when it came from the training patch size) when the
    sliding window is a size the network cannot take: not a multiple of its size divisor, or not
    the one size a fixed-size network (UNETR) takes."""
    found = network.size_problem(roi) if roi is not None and network is not None else None
    if found:
        problem, example = found
        where = "" if explicit else " (the training patch size, as roi_size is not set)"
        raise ConfigValueError("roi_size", "bad_value", f"sliding window {list(roi)}{where}: the {network.type} "
                               f"{problem}" + (f", e.g. {example}" if example else ""),
                               hint="set roi_size to a size the network takes")


def label_coding(source, info) -> LabelCoding:
    """The coding of the label files of the loader being predicted (its own cases'), else the DatasetInfo's."""
    coding = getattr(getattr(source, "spec", None), "label_coding", None)
    if coding is None:
        coding = getattr(info, "label_coding", None)
    return coding if coding is not None else CLASS_INDICES


def label_scheme(loader, info) -> LabelScheme:
    """The regions and ignore label of the loader being predicted, else the DatasetInfo's."""
    labels = labels_of(loader)
    return info.labels if labels.plain and info is not None and hasattr(info, "labels") else labels


def label_map(probs: torch.Tensor, labels: LabelScheme) -> np.ndarray:
    """(C, *S) probabilities -> (*S) classes: regions painted in regions_class_order, else the argmax."""
    if labels.region_based:
        return paint(probs, labels).cpu().numpy()
    return probs.argmax(0).to(torch.uint8 if probs.shape[0] < 256 else torch.int16).cpu().numpy()


def _case_ids(batch: dict, n: int, done: int) -> list[str]:
    ids = batch.get("case")
    if ids is None:
        return [f"case_{done + i:04d}" for i in range(n)]
    return [ids] if isinstance(ids, str) else [str(c) for c in ids]


def case_bar(total: int | None, desc: str, leave: bool = True):
    """A progress bar counting predicted cases; None without tqdm."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="case", leave=leave)


def postprocessing_rule(cfg: PredictorConfig, model: torch.nn.Module, who: str, log) -> PostProcessing:
    """What the `postprocessing` setting applies to each label map (said once in the log)."""
    rule, source = PostProcessing(), ""
    if cfg.postprocessing == "largest_component":
        classes = cfg.postprocessing_classes
        rule = PostProcessing(tuple((c,) for c in classes) if classes else ((),))
    elif cfg.postprocessing == "auto":
        known, path = (True, Path(cfg.postprocessing_file)) if cfg.postprocessing_file else attached(model)
        if path is not None:
            rule, source = PostProcessing.read(path), f" (chosen on validation, {path})"
        elif not known:
            source = " (postprocessing auto: no postprocessing.json is known for these weights)"
    if rule.steps or source:
        log(f"{who}: post-processing: {rule.describe()}{source}")
    return rule


def _write_case(cfg: PredictorConfig, who: str, out_dir: Path, case_id: str, case, probs: torch.Tensor,
                batch: dict, i: int, dims: int, resampled: bool, batch_affine, coding: LabelCoding,
                post: PostProcessing, labels: LabelScheme = PLAIN) -> PredictionRecord:
    if case is None:  # a loader of our own making not behind it: keep everything at the batch's size
        return _write_plain(cfg, out_dir, case_id, probs, batch, i, batch_affine, post, labels)
    geometry = source_geometry(case.images[0])
    probs = back_to_source(probs, geometry, dims, resampled, batch_affine, who, case_id)
    label = post.apply(label_map(probs, labels))
    fmt = geometry.format if cfg.output_format == "auto" else cfg.output_format
    if fmt == "png" and label.ndim != 2:
        raise ValueError(f"{who}: case {case_id} is {label.ndim}-D; output_format png is for 2-D data only "
                         "(set output_format to auto, nifti, nrrd, mha or npy)")
    path = write_label(out_dir / case_id, label, fmt, geometry, coding)
    prob_path = write_probabilities(out_dir / case_id, probs.cpu().numpy()) if cfg.save_probabilities else None
    return PredictionRecord(case=case_id, prediction_path=path, image_paths=tuple(case.images),
                            label_path=case.label, probabilities_path=prob_path, spacing=geometry.spacing,
                            label_coding=coding)


def back_to_source(probs: torch.Tensor, geometry: Geometry, dims: int, resampled: bool, batch_affine,
                   who: str = "Predictor", case_id: str = "") -> torch.Tensor:
    """(C, *S) probabilities on the loader's grid -> (C, *source shape) on the source file's grid."""
    shape = tuple(geometry.shape)
    if len(shape) != dims:
        raise ValueError(f"{who}: case {case_id} is {len(shape)}-D in its file but {dims}-D in the loader")
    if dims == 2:
        return tta_mod._resize(probs[None].float(), shape)[0]
    if resampled:
        if batch_affine is None or geometry.affine is None:
            raise ValueError(f"{who}: case {case_id} was resampled to target_spacing but its affine is unknown, so "
                             "the prediction cannot be mapped back; predict with target_spacing null")
        return _resample_back(probs, np.asarray(batch_affine, dtype=float), np.asarray(geometry.affine, dtype=float),
                              shape, who, case_id)
    if tuple(probs.shape[1:]) != shape:
        raise ValueError(f"{who}: case {case_id}: the loader gave a volume of shape {list(probs.shape[1:])} but its "
                         f"file {list(shape)}; the Predictor needs whole volumes (a validation loader), not patches")
    return probs


def _resample_back(probs: torch.Tensor, loader_affine: np.ndarray, source_affine: np.ndarray, shape: tuple,
                   who: str, case_id: str) -> torch.Tensor:
    """nnU-Net's rule for predictions: the probabilities resampled with order 1, nearest along a coarse
    slice axis (separate z), onto the source grid; the caller takes the argmax."""
    from segflow.data import resample as rs

    mapping = rs.axis_aligned_map(loader_affine, source_affine)
    if mapping is None:
        raise ValueError(f"{who}: case {case_id}: the loader's voxel grid is rotated against its file's, so the "
                         "prediction cannot be resampled back axis by axis; predict with target_spacing null")
    scale, offset = mapping
    axis = rs.coarse_axis(rs.spacing_of(loader_affine), rs.spacing_of(source_affine))
    moved = rs.resample(probs.float().cpu().numpy(), scale, offset, shape, 1, axis)
    return torch.from_numpy(moved)


def _write_plain(cfg: PredictorConfig, out_dir: Path, case_id: str, probs: torch.Tensor, batch: dict, i: int,
                 affine, post: PostProcessing, labels: LabelScheme = PLAIN) -> PredictionRecord:
    fmt = "npy" if cfg.output_format == "auto" else cfg.output_format
    geometry = Geometry(tuple(probs.shape[1:]), affine)
    label = post.apply(label_map(probs, labels))
    path = write_label(out_dir / case_id, label, fmt, geometry)
    image = batch["image"][i].cpu().numpy().astype(np.float32)
    image_paths = tuple(out_dir / f"{case_id}_image_{c:04d}.npy" for c in range(len(image)))
    for path_c, channel in zip(image_paths, image):  # one file per channel, as PredictionSet.load reads them
        atomic_write(path_c, lambda f, channel=channel: np.save(f, channel))
    label_path = None
    if "label" in batch:
        label_path = out_dir / f"{case_id}_label.npy"
        truth = batch["label"][i, 0].cpu().numpy()
        atomic_write(label_path, lambda f: np.save(f, truth))
    prob_path = write_probabilities(out_dir / case_id, probs.cpu().numpy()) if cfg.save_probabilities else None
    return PredictionRecord(case=case_id, prediction_path=path, image_paths=image_paths, label_path=label_path,
                            probabilities_path=prob_path)
