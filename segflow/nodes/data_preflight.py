"""MedicalSegmentationLoader's checks of the world, run by `segflow run` before any node starts:
the folders and files it reads and writes, and whether its training batches fit in this machine's
memory. Each returns findings at the key to change; none creates or changes anything."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from segflow.data.host_memory import available, batch_need, gib
from segflow.nodes.base import Finding

if TYPE_CHECKING:
    from segflow.nodes.data import MedicalSegmentationLoaderConfig

RELATIVE = "paths are relative to the folder segflow runs in"


def data_dir_findings(config: MedicalSegmentationLoaderConfig) -> list[Finding]:
    if config.synthetic == "none" and not os.path.isdir(config.data_dir):
        return [Finding("data_dir", "path_not_found", f"data_dir {config.data_dir!r} is not a folder "
                        f"(looked in {os.path.abspath(config.data_dir)})",
                        hint=f"{RELATIVE}; or set synthetic: phantom2d / phantom3d to generate a dataset there")]
    return []


def splits_findings(config: MedicalSegmentationLoaderConfig) -> list[Finding]:
    """The splits file a fold is read from (splits_file, else data_dir/splits_final.json when there),
    read as the run will read it (segflow.data.splits.read_folds), and the fold looked up in it."""
    from segflow.data.splits import missing_fold, read_folds, splits_source

    if config.fold is None or config.subset != "split":
        return []
    source = splits_source(config.data_dir, config.splits_file)
    if source is None:
        return []  # folds are made here
    if not source.exists():
        return [Finding("splits_file", "path_not_found", f"splits_file {str(source)!r} does not exist (looked in "
                        f"{source.absolute()})", hint=f"{RELATIVE}; or remove splits_file to make "
                        "num_folds seeded folds here")]
    try:
        folds = read_folds(source)
    except ValueError as e:
        return [Finding("splits_file", "path_not_found" if source.is_dir() else "bad_value", str(e),
                        hint="name a JSON list of {\"train\": [case ids], \"val\": [case ids]}, one per fold "
                             "(nnU-Net's splits_final.json)")]
    problem = missing_fold(config.fold, folds, source)
    return [Finding("fold", "bad_value", problem, hint=f"use a fold from 0 to {len(folds) - 1}")] if problem else []


def cache_findings(config: MedicalSegmentationLoaderConfig, data_dir_ok: bool) -> list[Finding]:
    """cache disk: the cache folder must be a folder this process can make and write to."""
    if config.cache != "disk" or not (config.cache_dir or data_dir_ok):
        return []  # without cache_dir the cache goes under data_dir, whose own finding says it all
    folder = config.cache_dir or os.path.join(config.data_dir, ".segflow_cache")
    why = unwritable(folder)
    if why is None:
        return []
    named = f"cache_dir {folder!r}" if config.cache_dir else f"the disk cache's folder {folder!r} (cache_dir unset)"
    return [Finding("cache_dir", "path_not_writable", f"{named} cannot be used: {why}",
                    hint="set cache_dir to a folder you can write to, or cache: memory")]


def unwritable(path: str) -> str | None:
    """Why a folder at `path` could not be made or written to, or None when it could. Creates nothing:
    it looks at the nearest part of the path that exists."""
    target = os.path.abspath(path)
    probe = target
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable" if probe == target else \
            f"it would be made in {probe}, which is not writable"
    return None


def memory_findings(config: MedicalSegmentationLoaderConfig) -> list[Finding]:
    """Training batches that cannot fit in this machine's available memory, judged by a floor of what
    the loader holds at once (segflow.data.host_memory.batch_need): an error here is certain to fail."""
    room = available() if config.subset == "split" else None  # only training batches are judged
    if room is None:
        return []
    dims = config.declared_dims() or (len(config.image_size) if isinstance(config.image_size, list) else 2)
    size = config.patch_size(dims)
    channels = len(config.channel_normalization or [None])  # else unknown until the files are read: 1 or more
    workers = config.num_workers if isinstance(config.num_workers, int) else 0  # auto: 0 without CUDA
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")  # torchrun: one loader per process on this machine
    need = batch_need(config.batch_size, size, channels, workers, config.prefetch_factor,
                      int(local) if local.isdigit() else 1)
    if need.total <= room[0]:
        return []
    shape = f"{size[0]}{'²³'[dims - 2]}" if len(set(size)) == 1 else "×".join(map(str, size))
    held = "the one training, the next one's samples and their stacked copy" if workers == 0 else \
        f"the one training, and num_workers {workers} × prefetch_factor {config.prefetch_factor} prepared ahead"
    each = f" in each of {need.processes} processes" if need.processes > 1 else ""
    return [Finding("image_size", "insufficient_memory", (
        f"one training batch of {config.batch_size} × {shape} float32 images "
        f"({channels if config.channel_normalization else '1 or more'} channel(s)) with their uint8 labels takes "
        f"{gib(need.batch_bytes)}; the loader holds at least {need.batches} batches at once ({held}){each}: "
        f"{gib(need.total)} or more, and this machine has {gib(room[0])} available ({room[1]})"),
        hint="lower image_size or batch_size" + (", num_workers or prefetch_factor" if workers else "")
        + ("; for large 2-D images, size_mode patches trains on image_size patches at full resolution"
           if dims == 2 and config.size_mode != "patches" else ""))]
