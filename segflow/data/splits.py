"""The case-level split: which cases train and which validate.

By the folder's own train/ and val/, a seeded val_fraction, or one cross-validation fold (from a
splits file such as nnU-Net's splits_final.json, or seeded folds made here).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from segflow.data.layouts import Case

if TYPE_CHECKING:
    from segflow.nodes.data import MedicalSegmentationLoaderConfig


@dataclass
class Split:
    train: list[Case]
    val: list[Case]
    fold: int | None = None  # the cross-validation fold this split is, when it is one


def choose_split(cfg: MedicalSegmentationLoaderConfig, cases: list[Case], data_dir: Path,
                 log: Callable[[str], None]) -> Split:
    """subset split: fold `cfg.fold` when set, else by val_fraction (or the folder's own split);
    subset test and all: every case validates (is predicted or scored), nothing trains."""
    if cfg.subset != "split":
        return Split([], list(cases))
    if cfg.fold is not None:
        train, val = fold_split(cases, cfg.fold, cfg.num_folds, cfg.seed, data_dir, cfg.splits_file, log)
        return Split(train, val, cfg.fold)
    return Split(*split_cases(cases, cfg.val_fraction, cfg.seed, data_dir))


def split_cases(cases: list[Case], val_fraction: float, seed: int, data_dir: Path):
    """The layout's own train/val split when it has one, else a seeded case-level split."""
    if any(c.split for c in cases):
        train = [c for c in cases if c.split == "train"]
        val = [c for c in cases if c.split == "val"]
        if not train:
            raise ValueError(f"{data_dir}/train holds no cases; the training split is empty")
        return train, val
    n_val = math.ceil(len(cases) * val_fraction) if val_fraction > 0 else 0
    if n_val >= len(cases):
        raise ValueError(
            f"{data_dir}: {len(cases)} case(s) with val_fraction {val_fraction} leaves the training split empty; "
            "add cases or lower val_fraction"
        )
    order = np.random.default_rng(seed).permutation(len(cases))
    val_idx = set(order[:n_val].tolist())
    return ([c for i, c in enumerate(cases) if i not in val_idx], [c for i, c in enumerate(cases) if i in val_idx])


def splits_source(data_dir: str | Path, splits_file: str | None) -> Path | None:
    """The file a fold's cases are read from: `splits_file`, else data_dir/splits_final.json when it
    exists; None when the folds are made here."""
    if splits_file:
        return Path(splits_file)
    found = Path(data_dir) / "splits_final.json"
    return found if found.is_file() else None


def fold_split(cases: list[Case], fold: int, num_folds: int, seed: int, data_dir: Path,
               splits_file: str | None, log=print) -> tuple[list[Case], list[Case]]:
    """Cross-validation fold `fold`: its cases validate, the other folds' train. The folds come from
    `splits_file` (nnU-Net's splits_final.json: a list of {"train": [...], "val": [...]}), or from
    data_dir/splits_final.json when it exists, else from a seeded shuffle of the case ids cut into
    `num_folds` near-equal parts (the same cases in the same folds for a given seed and dataset)."""
    if any(c.split for c in cases):
        raise ValueError(f"{data_dir}: fold {fold} needs one pool of training cases, but this folder has its own "
                         "train/ and val/ split; remove fold (MedicalSegmentationLoader.fold) or merge the folders")
    source = splits_source(data_dir, splits_file)
    if source is not None:
        return _listed_fold(cases, fold, source, log)
    if num_folds > len(cases):
        raise ValueError(f"{data_dir}: {len(cases)} case(s) cannot make {num_folds} folds (num_folds); "
                         "lower num_folds or add cases")
    if fold >= num_folds:
        raise ValueError(f"fold {fold} does not exist with num_folds {num_folds}; folds are 0 to {num_folds - 1}")
    ids = sorted(c.case_id for c in cases)
    order = np.random.default_rng(seed).permutation(len(ids))
    val_ids = {ids[i] for i in np.array_split(order, num_folds)[fold]}
    log(f"data: fold {fold} of {num_folds} (seed {seed}): {len(cases) - len(val_ids)} train / {len(val_ids)} val cases")
    return [c for c in cases if c.case_id not in val_ids], [c for c in cases if c.case_id in val_ids]


def read_folds(source: Path) -> list[dict]:
    """The folds a splits file lists, or a ValueError saying what is wrong with it (also used by the
    loader's preflight, so a bad file stops `segflow run` before any work)."""
    try:
        folds = json.loads(source.read_text())
    except FileNotFoundError:
        raise ValueError(f"splits_file {str(source)!r} does not exist (MedicalSegmentationLoader.splits_file)") from None
    except IsADirectoryError:
        raise ValueError(f"splits_file {str(source)!r} is a folder; it must name a JSON file such as "
                         "splits_final.json (MedicalSegmentationLoader.splits_file)") from None
    except OSError as e:
        raise ValueError(f"splits_file {str(source)!r} cannot be read: {e.strerror or e}") from None
    except ValueError as e:  # JSON, or text that is not UTF-8
        raise ValueError(f"{source}: not valid JSON ({e})") from None
    if not isinstance(folds, list) or not all(isinstance(f, dict) and {"train", "val"} <= f.keys() for f in folds):
        raise ValueError(f"{source}: expected a list of {{\"train\": [case ids], \"val\": [case ids]}}, one per fold, "
                         "as nnU-Net's splits_final.json")
    return folds


def missing_fold(fold: int, folds: list[dict], source: Path) -> str | None:
    if fold < len(folds):
        return None
    return f"fold {fold} does not exist in {source}, which lists {len(folds)} fold(s) (0 to {len(folds) - 1})"


def _listed_fold(cases: list[Case], fold: int, source: Path, log) -> tuple[list[Case], list[Case]]:
    folds = read_folds(source)
    problem = missing_fold(fold, folds, source)
    if problem:
        raise ValueError(problem)
    by_id = {c.case_id: c for c in cases}
    train_ids, val_ids = [str(i) for i in folds[fold]["train"]], [str(i) for i in folds[fold]["val"]]
    unknown = [i for i in train_ids + val_ids if i not in by_id]
    if unknown:
        raise ValueError(f"{source}: fold {fold} names {len(unknown)} case(s) not in the dataset, e.g. "
                         f"{unknown[:3]}; dataset case ids look like {sorted(by_id)[:3]}")
    both = sorted(set(train_ids) & set(val_ids))
    if both:
        raise ValueError(f"{source}: fold {fold} lists {both[:3]} in both train and val")
    if not train_ids:
        raise ValueError(f"{source}: fold {fold} has no training cases")
    left = len(cases) - len(set(train_ids) | set(val_ids))
    log(f"data: fold {fold} of {len(folds)} from {source}: {len(train_ids)} train / {len(val_ids)} val cases"
        + (f" ({left} case(s) in neither)" if left else ""))
    return [by_id[i] for i in train_ids], [by_id[i] for i in val_ids]
