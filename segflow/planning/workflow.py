"""A plan written out as an ordinary segflow workflow: loader, DynUNet, loss, optimizer, trainer,
predictor, evaluator, with nnU-Net's training recipe, and the reasons in its description (the
workflow format has no per-node description, so the top-level one carries them)."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

from segflow.planning.errors import PlanError
from segflow.planning.planner import Plan
from segflow.workflow.files import atomic_write_text, json_text
from segflow.workflow.schema import DEFAULT_PATH as DEFAULT_SCHEMA

ITERATIONS_PER_EPOCH = 250  # nnU-Net's num_iterations_per_epoch
VAL_FRACTION = 0.2  # the loader's default split: as one of nnU-Net's 5 folds
GRADIENT_CLIP = 12.0  # nnU-Net clips the gradient norm at 12


def default_path(plan: Plan) -> Path:
    return Path("workflows") / f"{slug(plan.dataset)}_{plan.config}.json"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "dataset"


def build(plan: Plan, data_dir: str, epochs: int, path: Path) -> dict:
    """The workflow document to be written to `path`; `data_dir` as the user named it (paths in a workflow
    are relative to the folder segflow runs in, as is the schema segflow writes)."""
    training = _training_reasons(plan, epochs)
    reasons = {**plan.reasons, **training["reasons"]}
    schema = os.path.relpath(Path(DEFAULT_SCHEMA).resolve(), Path(path).resolve().parent)
    return {
        "$schema": Path(schema).as_posix(),
        "workflow": f"{slug(plan.dataset)}_{plan.config}",
        "description": _description(plan, reasons),
        "nodes": [
            {"type": "MedicalSegmentationLoader", "name": "data_loader", "config": _loader(plan, data_dir, training)},
            {"type": "DynUNet", "name": "model", "config": network_config(plan)},
            {"type": "LossFunction", "name": "loss", "config": {"loss_type": "combined", "dice_weight": 1.0,
                                                                "ce_weight": 1.0, "include_background": False}},
            {"type": "Optimizer", "name": "optimizer", "config": {"optimizer_type": "SGD", "learning_rate": 0.01,
                                                                  "momentum": 0.99, "nesterov": True,
                                                                  "weight_decay": 3e-5}},
            {"type": "Trainer", "name": "trainer", "config": {
                "epochs": epochs, "lr_schedule": "poly", "power": 0.9, "mixed_precision": True,
                "gradient_clip": GRADIENT_CLIP, "validate_every": training["validate_every"], "sw_overlap": 0.5}},
            {"type": "Predictor", "name": "predictor", "config": {"tta": ["flip"], "tta_flip_combinations": True,
                                                                  "overlap": 0.5, "blend_mode": "gaussian"}},
            {"type": "Evaluator", "name": "evaluator", "config": {"metrics": ["dice", "hd95"]}},
        ],
    }


def network_config(plan: Plan) -> dict:
    return {"spatial_dims": plan.dims, "in_channels": plan.in_channels,
            "out_channels": len(plan.regions) or plan.num_classes,
            "kernel_size": plan.kernels, "strides": plan.strides, "filters": plan.features, "norm": "instance",
            "act": "leakyrelu", "res_block": False, "deep_supervision": plan.deep_supervision,
            "deep_supr_num": plan.deep_supr_num}


def _loader(plan: Plan, data_dir: str, training: dict) -> dict:
    config = {"data_dir": data_dir, "spatial_dims": plan.dims, "image_size": plan.patch, "size_mode": "patches",
              "batch_size": plan.batch_size, "target_spacing": plan.target_spacing, **plan.loader_normalisation,
              "augmentation": True, "augmentation_strength": "strong", "pos": 1.0, "neg": 2.0,
              "foreground_sampling": "by_class",
              "samples_per_volume": training["samples_per_volume"], "val_fraction": VAL_FRACTION}
    if not plan.classes_declared:  # a folder layout: the data alone says how many classes
        config["num_classes"] = plan.num_classes
    return config


def _training_reasons(plan: Plan, epochs: int) -> dict:
    # the loader validates ceil(cases x val_fraction) cases (segflow.data.splits)
    train_cases = max(1, plan.num_cases - math.ceil(plan.num_cases * VAL_FRACTION))
    per_volume = max(1, math.ceil(ITERATIONS_PER_EPOCH * plan.batch_size / train_cases))
    validate_every = max(1, min(50, epochs // 20))
    reasons = {
        "sampling": (f"augmentation strong; a third of the patches centred on foreground (pos 1, neg 2, nnU-Net's "
                     "oversample_foreground_percent 0.33), each on a class drawn uniformly among the case's "
                     "foreground classes, then a voxel of it (foreground_sampling by_class, nnU-Net's rule, so small "
                     f"classes are not starved); {per_volume} patches per training case per epoch, so an epoch is about "
                     f"{ITERATIONS_PER_EPOCH} iterations of batch {plan.batch_size} as in nnU-Net"),
        "training": (f"SGD with Nesterov momentum 0.99, lr 0.01, weight decay 3e-5, poly decay (power 0.9) over "
                     f"{epochs} epochs, gradient norm clipped at {GRADIENT_CLIP:g}, mixed precision, Dice + "
                     "cross-entropy (1:1, Dice without background): nnU-Net's recipe; validation every "
                     f"{validate_every} epoch(s) on whole cases with sliding windows (overlap 0.5)"),
        "prediction": "prediction with Gaussian-weighted sliding windows (sigma 1/8 of the patch, overlap 0.5) "
                      "and mirroring along every combination of axes as test-time augmentation, as nnU-Net predicts",
    }
    return {"samples_per_volume": per_volume, "validate_every": validate_every, "reasons": reasons}


def _description(plan: Plan, reasons: dict[str, str]) -> str:
    head = (f"Planned by `segflow plan` for {plan.dataset} ({plan.config}, {plan.num_cases} cases, "
            f"{plan.gpu_memory_gib:g} GiB GPU memory budget) with nnU-Net's rules; edit any value. Why: ")
    return head + " | ".join(reasons.values())


def write(document: dict, path: Path, force: bool) -> Path:
    if path.exists() and not force:
        raise PlanError(f"{path} already exists and was kept; give --force to replace it, or -o for another file")
    atomic_write_text(path, compact_lists(json_text(document)))
    return path


_FLAT_LIST = re.compile(r"\[\s*([^\[\]{}]*?)\s*\]")
_ITEM = r"(?:\[[^\[\]]*\]|null)"  # a flat list, or null (a per-channel ct_window for a channel without one)
_LIST_OF_LISTS = re.compile(rf"\[\s*({_ITEM}(?:,\s*{_ITEM})*)\s*\]")


def compact_lists(text: str) -> str:
    """Lists of numbers (and lists of such lists, nulls among them) on one line, as hand-written workflows
    have them."""
    text = _FLAT_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]"
                          if m.group(1) else "[]", text)
    return _LIST_OF_LISTS.sub(lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text)
