"""Build the train/val DataLoaders and DatasetInfo from a MedicalSegmentationLoader config.

Order of work: (phantom written if asked) -> cases found -> every case decoded and checked
up front (kept in memory or written to the disk cache) -> case-level split -> loaders.

`subset` picks the cases: "split" (train/val), "test" (the layout's test images, labels optional)
or "all" (every labelled case); the last two give no train_loader and hand every case to val_loader.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from segflow.data.info import DatasetInfo
from segflow.data.layouts import Case, find_cases, find_test_cases
from segflow.data.prepare import (
    Prepared,
    PrepSpec,
    cache_key,
    load_prepared,
    prepare_case,
    save_prepared,
)

DEFAULT_SIZE = {2: 256, 3: 96}
MAX_LISTED_ERRORS = 10


def build_loaders(cfg: Any, log: Callable[[str], None] = print):
    """`cfg` is a MedicalSegmentationLoaderConfig (or anything with the same attributes)."""
    import torch
    from torch.utils.data import DataLoader

    from segflow.data.allocator import keep_freed_sample_memory
    from segflow.workflow import distributed

    keep_freed_sample_memory()  # this process makes the batches with 0 workers; workers inherit it
    data_dir = Path(cfg.data_dir)
    distributed.wait_for_main()  # under torchrun rank 0 writes the phantom and disk cache; the others reuse them
    if cfg.synthetic != "none":
        from segflow.data.phantoms import write_phantom_dataset

        write_phantom_dataset(data_dir, kind=cfg.synthetic[-2:], num_cases=cfg.synthetic_cases,
                              num_classes=cfg.synthetic_classes, seed=0)
    subset = getattr(cfg, "subset", "split")
    layout = find_test_cases(data_dir, cfg.layout) if subset == "test" else find_cases(data_dir, cfg.layout)
    declared = cfg.num_classes or (len(layout.class_names) if layout.class_names else None)
    source_note = "config num_classes" if cfg.num_classes else f"labels in {data_dir / 'dataset.json'}"
    unlabelled = [c.case_id for c in layout.cases if c.label is None]
    if unlabelled and declared is None:
        raise ValueError(
            f"{data_dir}: test case(s) {unlabelled[:3]} have no label, so the number of classes cannot be read from "
            "the data and the dataset declares none (no dataset.json 'labels'); set the loader's num_classes "
            "(background included) to the model's out_channels")
    spec = PrepSpec(
        spatial_dims=None if cfg.spatial_dims == "auto" else int(cfg.spatial_dims),
        normalization=cfg.normalization,
        ct_window=tuple(cfg.ct_window),
        target_spacing=tuple(cfg.target_spacing) if cfg.target_spacing else None,
        num_classes=declared,
        label_source=source_note,
    )
    fold = getattr(cfg, "fold", None) if subset == "split" else None
    if fold is not None:
        train_cases, val_cases = fold_split(layout.cases, fold, cfg.num_folds, cfg.seed, data_dir,
                                            getattr(cfg, "splits_file", None), log)
    elif subset == "split":
        train_cases, val_cases = split_cases(layout.cases, cfg.val_fraction, cfg.seed, data_dir)
    else:  # predict / score every case; nothing to train on
        train_cases, val_cases = [], list(layout.cases)

    summaries = _prepare_all(layout.cases, spec, cfg, data_dir, log)
    distributed.release_others()
    by_id = {c.case_id: i for i, c in enumerate(layout.cases)}
    dims = summaries[0]["dims"]
    channels = {s["channels"] for s in summaries}
    if len(channels) > 1:
        odd = next(s for s in summaries if s["channels"] != summaries[0]["channels"])
        raise ValueError(f"case {odd['case']}: {odd['channels']} image channels, but case {summaries[0]['case']} "
                         f"has {summaries[0]['channels']}; all cases need the same channels")
    in_channels = channels.pop()
    if layout.num_channels and layout.num_channels != in_channels:
        raise ValueError(f"{data_dir}/dataset.json declares {layout.num_channels} channels, the images have {in_channels}")
    num_classes = declared or max(2, max(s["max_label"] for s in summaries) + 1)
    class_names = list(layout.class_names or [])
    if len(class_names) != num_classes:
        class_names = ["background"] + [f"class_{i}" for i in range(1, num_classes)]
    spec = PrepSpec(**{**spec.__dict__, "spatial_dims": dims})

    size = _size(cfg.image_size, dims)
    mode = size_mode(cfg, dims)
    strength = cfg.augmentation_strength if cfg.augmentation else None
    on_device = strength is not None and getattr(cfg, "augmentation_on", "workers") == "device"

    def source(cases: list[Case]):
        from segflow.data.datasets import CaseSource

        idx = [by_id[c.case_id] for c in cases]
        memory = [summaries[i]["prepared"] for i in idx] if cfg.cache == "memory" else None
        disk = [summaries[i]["cache_path"] for i in idx] if cfg.cache == "disk" else None
        return CaseSource(cases, spec, memory, disk, num_classes)

    train_ds, val_ds = _datasets(source(train_cases) if train_cases else None,
                                 source(val_cases) if val_cases else None, dims, mode, size, strength, cfg,
                                 on_device)
    workers = resolve_workers(cfg.num_workers, torch.cuda.is_available())
    pin = torch.cuda.is_available() if cfg.pin_memory == "auto" else bool(cfg.pin_memory)
    common = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    if workers > 0:
        from segflow.data.datasets import worker_init

        common["worker_init_fn"] = worker_init
        common["prefetch_factor"] = int(cfg.prefetch_factor)
    rank, world = distributed.rank(), distributed.world_size()
    # other ranks get their own augmentation and worker-seed streams instead of rank 0's copy
    seed = distributed.rank_seed(cfg.seed)
    if rank and train_ds is not None:
        train_ds.reseed(seed)
    gen = torch.Generator().manual_seed(seed)
    if train_ds is None:
        train_loader = None
    elif world > 1:
        from torch.utils.data.distributed import DistributedSampler

        # one shard per rank, reshuffled each epoch by Trainer's sampler.set_epoch(epoch)
        sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=cfg.shuffle,
                                     seed=int(cfg.seed), drop_last=False)
        train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, generator=gen,
                                  drop_last=False, **common)
    else:
        train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=cfg.shuffle, generator=gen,
                                  drop_last=False, **common)
    from segflow.data.datasets import collate

    val_loader = None
    if val_ds is not None:
        val_workers = min(workers, len(val_ds))
        # each validation sample on exactly one rank (no padding duplicates), so the all-reduced
        # confusion matrix is the whole validation set's
        val_sampler = ShardSampler(len(val_ds), rank, world) if world > 1 else None
        whole = mode == "patches"  # whole cases, of any size: one at a time
        val_loader = DataLoader(val_ds, batch_size=1 if whole else cfg.batch_size, shuffle=False,
                                sampler=val_sampler, num_workers=val_workers, pin_memory=pin,
                                persistent_workers=val_workers > 0, collate_fn=collate)
    batch_augment = _batch_augment(cfg, dims, mode, strength) if on_device and train_loader is not None else None
    for loader in (train_loader, val_loader):  # consumers read the attribute without checking for it
        if loader is not None:
            loader.batch_augment = batch_augment if loader is train_loader else None
    if batch_augment is not None:
        log(f"data: {strength} augmentation batched on the training device; workers only read, "
            f"{'resize' if mode == 'resize' else 'cut patches'} and collate")
    if workers:
        log(f"data: {workers} loader worker(s), {int(cfg.prefetch_factor)} batches prefetched each, "
            f"pinned memory {'on' if pin else 'off'}")
    spacings = [s["spacing"] for s in summaries if s["spacing"] is not None]
    spacing = tuple(float(v) for v in np.median(np.asarray(spacings), axis=0)) if len(spacings) == len(summaries) else None
    info = DatasetInfo(
        in_channels=in_channels, num_classes=num_classes, spatial_dims=dims, spacing=spacing,
        class_names=class_names, patch_size=size, num_train=len(train_cases), num_val=len(val_cases),
        data_dir=str(data_dir), layout=layout.name, fold=fold,
        train_cases=[c.case_id for c in train_cases], val_cases=[c.case_id for c in val_cases],
    )
    what = (f"{info.num_train} train / {info.num_val} val cases" if subset == "split" else
            f"{info.num_val} {'test' if subset == 'test' else 'labelled'} case(s), no training split"
            + (f" ({len(unlabelled)} without label)" if unlabelled else ""))
    log(f"data: {layout.name} layout, {what}, {dims}-D, "
        f"{in_channels} channel(s), {num_classes} classes, "
        f"{'patches of' if mode == 'patches' else 'resized to'} {size}, cache {cfg.cache}")
    return train_loader, val_loader, info


def resolve_workers(setting, cuda: bool, cpus: int | None = None, local_procs: int | None = None) -> int:
    """num_workers "auto": with CUDA, the spare cores (one left for the training process) shared among the
    GPU processes on this machine, at most 8 each; without CUDA 0, since on a CPU-only machine the workers
    compete with the training process for the same cores."""
    if setting != "auto":
        return int(setting)
    if not cuda:
        return 0
    import os

    if cpus is None:  # the cores this process may use (a container or taskset may allow fewer than exist)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_procs = local_procs or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(8, cpus // max(1, local_procs) - 1))


class ShardSampler:
    """Indices rank, rank+world, rank+2·world, ... of range(n): every index on exactly one rank.

    Unlike torch's DistributedSampler it does not pad shards to equal length with repeated samples,
    so ranks may get one sample more or less; fine for validation, which runs no collective per batch.
    """

    def __init__(self, n: int, rank: int, world: int):
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


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


def fold_split(cases: list[Case], fold: int, num_folds: int, seed: int, data_dir: Path,
               splits_file: str | None, log=print) -> tuple[list[Case], list[Case]]:
    """Cross-validation fold `fold`: its cases validate, the other folds' train. The folds come from
    `splits_file` (nnU-Net's splits_final.json: a list of {"train": [...], "val": [...]}), or from
    data_dir/splits_final.json when it exists, else from a seeded shuffle of the case ids cut into
    `num_folds` near-equal parts (the same cases in the same folds for a given seed and dataset)."""
    if any(c.split for c in cases):
        raise ValueError(f"{data_dir}: fold {fold} needs one pool of training cases, but this folder has its own "
                         "train/ and val/ split; remove fold (MedicalSegmentationLoader.fold) or merge the folders")
    source = Path(splits_file) if splits_file else data_dir / "splits_final.json"
    if splits_file or source.is_file():
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


def _listed_fold(cases: list[Case], fold: int, source: Path, log) -> tuple[list[Case], list[Case]]:
    import json

    try:
        folds = json.loads(source.read_text())
    except FileNotFoundError:
        raise ValueError(f"splits_file {str(source)!r} does not exist (MedicalSegmentationLoader.splits_file)") from None
    except ValueError as e:
        raise ValueError(f"{source}: not valid JSON ({e})") from None
    if not isinstance(folds, list) or not all(isinstance(f, dict) and {"train", "val"} <= f.keys() for f in folds):
        raise ValueError(f"{source}: expected a list of {{\"train\": [case ids], \"val\": [case ids]}}, one per fold, "
                         "as nnU-Net's splits_final.json")
    if fold >= len(folds):
        raise ValueError(f"fold {fold} does not exist in {source}, which lists {len(folds)} fold(s) (0 to "
                         f"{len(folds) - 1})")
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


def _prepare_all(cases: list[Case], spec: PrepSpec, cfg: Any, data_dir: Path, log) -> list[dict]:
    """Decode and check every case once (threads: decoding releases the GIL in zlib/PIL).
    Errors from all cases are reported together."""
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else data_dir / ".segflow_cache"

    def one(case: Case) -> dict:
        path = None
        if cfg.cache == "disk":
            path = cache_root / f"{case.case_id}-{cache_key(case, spec)}"
            if (path / "meta.json").exists():
                prep = load_prepared(path)
                return _summary(case, prep, None, path)
        if cfg.cache == "none" and not cfg.verify_data:
            return {"case": case.case_id, "prepared": None, "cache_path": None, "lazy": True}
        prep = prepare_case(case, spec)
        if path is not None:
            save_prepared(path, prep)
        return _summary(case, prep, prep if cfg.cache == "memory" else None, path)

    import torch

    threads = max(1, min(4, resolve_workers(cfg.num_workers, torch.cuda.is_available()) or 1))
    results, errors = [], []
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(one, c) for c in cases]
        for case, f in zip(cases, futures):
            try:
                results.append(f.result())
            except (ValueError, FileNotFoundError, ImportError) as e:
                errors.append(str(e) if str(e).startswith("case ") else f"case {case.case_id}: {e}")
    if errors:
        listed = "\n  ".join(errors[:MAX_LISTED_ERRORS])
        more = f"\n  ... and {len(errors) - MAX_LISTED_ERRORS} more" if len(errors) > MAX_LISTED_ERRORS else ""
        raise ValueError(f"{len(errors)} case(s) in {data_dir} failed the data checks:\n  {listed}{more}")
    if any(r.get("lazy") for r in results):  # verify_data off: look at the first case only
        first = prepare_case(cases[0], spec)
        base = _summary(cases[0], first, None, None)
        results = [{**base, "case": r["case"], "prepared": None} for r in results]
    return results


def _summary(case: Case, prep: Prepared, keep: Prepared | None, path: Path | None) -> dict:
    return {"case": case.case_id, "dims": prep.image.ndim - 1, "channels": prep.image.shape[0],
            "max_label": prep.max_label, "spacing": prep.spacing, "prepared": keep, "cache_path": path}


def _size(image_size, dims: int) -> tuple[int, ...]:
    if image_size is None:
        return (DEFAULT_SIZE[dims],) * dims
    if isinstance(image_size, int):
        return (image_size,) * dims
    if len(image_size) != dims:
        raise ValueError(f"image_size {list(image_size)} has {len(image_size)} values but the data is {dims}-D")
    return tuple(int(s) for s in image_size)


def size_mode(cfg: Any, dims: int) -> str:
    """"resize" or "patches": the config's size_mode with "auto" resolved for the data's dimension."""
    mode = getattr(cfg, "size_mode", "auto")
    if mode == "auto":
        return "resize" if dims == 2 else "patches"
    if mode == "resize" and dims == 3:
        raise ValueError(f"{cfg.data_dir}: size_mode resize is for 2-D images, but the data is 3-D; "
                         "3-D volumes train on patches (size_mode patches or auto)")
    return mode


def _batch_augment(cfg: Any, dims: int, mode: str, strength: str):
    """The device-side augmentation for `augmentation_on: device`, told what state the workers leave
    2-D samples in: resized images stay in [0, 1] and are z-scored after augmentation (zscore);
    patches are cut at full resolution (no random resized crop) and already z-scored with their whole
    image's statistics; raw intensities (normalization none) are never clipped to [0, 1]. Off [0, 1],
    gamma rescales each sample as for 3-D."""
    from segflow.data.batch_augment import BatchAugment

    if dims == 3:
        return BatchAugment(dims, strength)
    resize, norm = mode == "resize", cfg.normalization
    return BatchAugment(dims, strength, zscore_after=resize and norm == "zscore",
                        unit_range=norm != "none" and (resize or norm != "zscore"),
                        **({} if resize else {"crop_p": 0.0}))


def _datasets(train_src, val_src, dims: int, mode: str, size, strength, cfg, on_device: bool = False):
    """With `on_device` the training workers get no random transforms: BatchAugment does them (and,
    for resized 2-D images, the z-score that must follow them) on the training device."""
    from segflow.data.augment import albumentations_pipeline, monai_pipeline
    from segflow.data.datasets import Patches2D, Patches3D, Slices2D, WholeCases

    seed = int(cfg.seed)
    repeats = int(cfg.samples_per_volume)
    train = None
    if on_device:
        strength = None
    z = dims == 2 and cfg.normalization == "zscore"  # 2-D images stay in [0, 1] until after augmentation
    raw = dims == 2 and cfg.normalization == "none"  # mapped onto [0, 1] around the transforms, then back
    if mode == "resize":
        if train_src:
            train = Slices2D(train_src, albumentations_pipeline(size, strength, seed), z and not on_device,
                             repeats, seed, raw_range=raw)
        val = Slices2D(val_src, albumentations_pipeline(size, None, seed), z) if val_src else None
        return train, val
    if train_src and dims == 2:
        # patches are z-scored here with their whole image's statistics, even with on_device, since
        # BatchAugment only knows the patch
        train = Patches2D(train_src, size, cfg.pos, cfg.neg, albumentations_pipeline(size, strength, seed, resize=False),
                          z, repeats, seed, raw_range=raw)
    elif train_src:
        train = Patches3D(train_src, size, cfg.pos, cfg.neg, monai_pipeline(size, strength, seed), repeats, seed)
    return train, (WholeCases(val_src, z) if val_src else None)
