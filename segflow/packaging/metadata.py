"""metadata.json of a package: MONAI Bundle's metadata keys where they mean the same thing
(version, changelog, monai_version, pytorch_version, numpy_version, optional_packages_version, task,
description, authors, copyright, license, network_data_format with inputs/outputs, data_type,
image_classes, label_classes, pred_classes, eval_metrics, intended_use), plus segflow's own:
format/format_version, the training data summary, preprocessing, exports and file checksums."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from segflow.packaging.contents import FORMAT, FORMAT_VERSION
from segflow.workflow.runinfo import package_version


def package_versions() -> dict[str, str | None]:
    return {name: package_version(name) for name in ("segflow", "torch", "monai", "numpy", "onnx", "onnxruntime",
                                                     "nibabel")}


def channel_names(data_dir: str, count: int) -> dict[str, str]:
    """The dataset.json's channel names (nnU-Net `channel_names`, MSD `modality`) when the training
    data is still where it was, else channel_0, channel_1, ..."""
    names: dict[str, str] = {}
    meta = Path(data_dir) / "dataset.json"
    if meta.is_file():
        try:
            doc = json.loads(meta.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            doc = {}
        declared = doc.get("channel_names") or doc.get("modality") or {}
        if isinstance(declared, dict):
            names = {str(k): str(v) for k, v in declared.items()}
    return {str(i): names.get(str(i), f"channel_{i}") for i in range(count)}


def validation_metrics(metrics: dict) -> dict[str, Any]:
    """The monitored value and the validation columns of the epoch whose weights were packaged."""
    chosen = (metrics.get("output_model") or {}).get("weights")
    row = metrics.get("best") if chosen == "best" else metrics.get("final")
    row = row or {}
    return {"monitor": metrics.get("monitor"), "value": metrics.get("best_value"), "epoch": row.get("epoch"),
            **{k: v for k, v in row.items() if k.startswith("val_")}}


def build_metadata(parts: dict, dataset: dict, inference: dict, metrics: dict, chosen: str, exports: list[dict],
                   files: dict[str, str], roi: tuple[int, ...], *, license: str | None, authors: list[str] | None,
                   model_version: str) -> dict[str, Any]:
    versions = package_versions()
    workflow = parts["workflow"]
    classes = {str(i): name for i, name in enumerate(dataset["class_names"])}
    channels = channel_names(dataset.get("data_dir", ""), int(dataset["in_channels"]))
    data_type = "nifti" if int(dataset["spatial_dims"]) == 3 else "image"
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "name": workflow.get("workflow"), "version": model_version,
        "changelog": {model_version: "packaged by segflow package"},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "segflow_version": versions["segflow"], "pytorch_version": versions["torch"],
        "monai_version": versions["monai"], "numpy_version": versions["numpy"],
        "optional_packages_version": {k: v for k, v in versions.items()
                                      if k in ("onnx", "onnxruntime", "nibabel") and v},
        "task": "segmentation", "description": workflow.get("description", ""),
        "authors": authors or [], "copyright": "", "license": license or "",
        "intended_use": "", "data_type": data_type,
        "image_classes": f"{dataset['in_channels']} channel(s): {', '.join(channels.values())}",
        "label_classes": classes, "pred_classes": classes,
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": ", ".join(channels.values()),
                                 "num_channels": int(dataset["in_channels"]), "spatial_shape": list(roi),
                                 "dtype": "float32", "value_range": [], "is_patch_data": True,
                                 "channel_def": channels}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": int(dataset["num_classes"]),
                                 "spatial_shape": list(roi), "dtype": "float32", "value_range": [],
                                 "is_patch_data": True, "channel_def": classes}},
        },
        "network": inference["network"]["type"],
        "weights": {"chosen": chosen, "epoch": (metrics.get("output_model") or {}).get("epoch")},
        "eval_metrics": validation_metrics(metrics),
        "training_data": {k: dataset.get(k) for k in ("data_dir", "layout", "num_train", "num_val", "spacing",
                                                     "spatial_dims", "patch_size")},
        "preprocessing": inference["preprocessing"],
        "inference": inference["predictor"],
        "exports": exports,
        "files": files,
    }
