"""Build the train/val loaders and DatasetInfo from a MedicalSegmentationLoader config.

`build_loaders` runs the phases below in order, each a function: discover (phantom written if
asked, cases found) -> split (case-level; before the reading, so a split that cannot work fails
at once) -> prepare and check (every case decoded and checked up front, kept in memory or written
to the disk cache) -> make loaders (datasets, samplers, DataLoader settings, workers) -> describe
(the DatasetInfo).

`subset` picks the cases: "split" (train/val), "test" (the layout's test images, labels optional)
or "all" (every labelled case); the last two give no train_loader and hand every case to val_loader.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from segflow.data.info import DatasetInfo
from segflow.data.intensity import ChannelCountError, per_channel, two_d_word
from segflow.data.label_coding import decide
from segflow.data.label_scheme import PLAIN, LabelScheme, problems
from segflow.data.layouts import Case, Layout, find_cases, find_test_cases
from segflow.data.prepare import Prepared, PrepSpec, cache_key, load_prepared, mask_values, prepare_case, save_prepared
from segflow.data.splits import Split, choose_split

if TYPE_CHECKING:
    from segflow.data.segmentation_loader import SegmentationLoader
    from segflow.nodes.data import MedicalSegmentationLoaderConfig

MAX_LISTED_ERRORS = 10

Log = Callable[[str], None]


@dataclass
class Found:
    """What discovery hands on: the cases and what the dataset declares about them."""

    data_dir: Path
    layout: Layout
    spec: PrepSpec  # how every case is read: num_classes as declared (or None), spatial_dims None for "auto"
    unlabelled: list[str]  # ids of test cases without ground truth
    labels: LabelScheme = PLAIN  # regions and ignore label, from dataset.json or the loader's settings


@dataclass
class Checked:
    """What reading every case established about the data."""

    spec: PrepSpec  # spatial_dims resolved from the data
    summaries: list[dict]  # one per case, in layout order (see _summary)
    in_channels: int
    num_classes: int
    class_names: list[str]
    spacing: tuple[float, ...] | None  # the median over the cases; None without a physical spacing
    labels: LabelScheme = PLAIN

    @property
    def dims(self) -> int:
        return self.spec.spatial_dims


@dataclass
class Sampling:
    """How samples are made from the cases."""

    size: tuple[int, ...]  # the training sample's spatial size
    mode: str  # "resize" (2-D images resized to size) or "patches" (cut at the image's resolution)
    strength: str | None  # the augmentation preset; None without augmentation
    on_device: bool  # augmentation_on device: BatchAugment on the training device, not the workers


def build_loaders(cfg: MedicalSegmentationLoaderConfig, log: Log = print, layout: Layout | None = None
                  ) -> tuple[SegmentationLoader | None, SegmentationLoader | None, DatasetInfo]:
    """train_loader (None for subset test and all), val_loader (None without validation cases) and
    the DatasetInfo. `layout`: these cases instead of those found in data_dir (`segflow predict`
    hands them one at a time, so one unreadable case does not stop the rest)."""
    from segflow.data.allocator import keep_freed_sample_memory
    from segflow.workflow import distributed

    keep_freed_sample_memory()  # this process makes the batches with 0 workers; workers inherit it
    distributed.wait_for_main()  # under torchrun rank 0 writes the phantom and disk cache; the others reuse them
    found = discover(cfg, layout)
    split = choose_split(cfg, found.layout.cases, found.data_dir, log)
    checked = prepare_and_check(cfg, found, log)
    distributed.release_others()
    sampling = _sampling(cfg, checked.dims)
    train_loader, val_loader = make_loaders(cfg, checked, split, sampling, log)
    info = describe(cfg, found, checked, split, sampling, log)
    warning = all_background(cfg, checked, split)
    if warning:  # last of the data's lines, where it is seen; the run goes on
        log(warning)
    return train_loader, val_loader, info


def discover(cfg: MedicalSegmentationLoaderConfig, given: Layout | None = None) -> Found:
    """Write the phantom dataset if asked, find the cases of `cfg.subset` (or take `given`), and settle
    how to read them."""
    data_dir = Path(cfg.data_dir)
    if cfg.synthetic != "none":
        from segflow.data.phantoms import write_phantom_dataset

        write_phantom_dataset(data_dir, kind=cfg.synthetic[-2:], num_cases=cfg.synthetic_cases,
                              num_classes=cfg.synthetic_classes, seed=0)
    if given is not None:
        layout = given
    else:
        layout = find_test_cases(data_dir, cfg.layout) if cfg.subset == "test" else find_cases(data_dir, cfg.layout)
    declared = cfg.num_classes or (len(layout.class_names) if layout.class_names else None) or cfg.ignore_label
    labels = label_scheme(cfg, layout, declared)
    unlabelled = [c.case_id for c in layout.cases if c.label is None]
    if unlabelled and declared is None:
        raise ValueError(
            f"{data_dir}: test case(s) {unlabelled[:3]} have no label, so the number of classes cannot be read from "
            "the data and the dataset declares none (no dataset.json 'labels'); set the loader's num_classes "
            "(background included) to the model's out_channels")
    json_labels = f"labels in {data_dir / 'dataset.json'}"
    coding = decide(layout.label_values, json_labels, mask_values(layout.cases, _threads(cfg)), declared)
    spec = PrepSpec(
        spatial_dims=None if cfg.spatial_dims == "auto" else int(cfg.spatial_dims),
        **_normalisation(cfg),
        target_spacing=tuple(cfg.target_spacing) if cfg.target_spacing else None,
        num_classes=declared,
        label_source="config num_classes" if cfg.num_classes else json_labels,
        label_coding=coding,
        ignore_label=labels.ignore,
    )
    return Found(data_dir, layout, spec, unlabelled, labels)


def label_scheme(cfg: MedicalSegmentationLoaderConfig, layout: Layout, declared: int | None) -> LabelScheme:
    """The regions and ignore label of the data: dataset.json's (nnU-Net v2 labels), else the loader's
    settings, checked against the declared classes (again against the data's in `prepare_and_check`)."""
    own, theirs = cfg.label_scheme(), layout.labels
    where = f"{layout.root}/dataset.json"
    if own.regions and theirs.regions:
        raise ValueError(f"{where} declares regions in its labels and the loader's regions setting declares them "
                         "too; remove the loader's regions and regions_class_order")
    if own.ignore is not None and theirs.ignore is not None and own.ignore != theirs.ignore:
        raise ValueError(f"the loader's ignore_label {own.ignore} differs from the ignore label of {where} "
                         f"(class {theirs.ignore}); remove ignore_label")
    if own.ignore is not None and declared is not None and own.ignore != declared:
        classes = f"0..{declared - 1}"
        raise ValueError(f"the loader's ignore_label {own.ignore} " + (
            f"is also a class (classes {classes})" if own.ignore < declared else f"is not directly above the classes "
            f"{classes}") + "; as in nnU-Net, the ignore label is the highest value, one above the last class")
    regions = own if own.regions else theirs
    scheme = LabelScheme(regions.regions, regions.paint, theirs.ignore if theirs.ignore is not None else own.ignore,
                         regions.source or theirs.source or own.source)
    check_label_scheme(scheme, declared, cfg.regions_class_order is not None or not own.regions)
    return scheme


def check_label_scheme(scheme: LabelScheme, num_classes: int | None, order_given: bool = True) -> None:
    """ValueError naming the loader setting for a scheme that cannot work with classes 0..num_classes-1."""
    names = {k: f"the loader's {k}" for k in ("regions", "regions_class_order", "ignore_label")}
    found = problems(scheme, None if num_classes is None else list(range(num_classes)), names, order_given)
    if found:
        raise ValueError(found[0].message + (f"; {found[0].hint}" if found[0].hint else ""))


def _normalisation(cfg: MedicalSegmentationLoaderConfig) -> dict[str, Any]:
    """The PrepSpec fields of the intensity normalisation: one way for every channel, or (when
    channel_normalization, or a window or number, is given per channel) each channel its own way."""
    channels = per_channel(cfg.channel_normalization or cfg.normalization, cfg.ct_window, cfg.intensity_mean,
                           cfg.intensity_std)
    if channels is not None:
        return {"normalization": cfg.normalization, "channels": channels}
    return {"normalization": cfg.normalization, "ct_window": tuple(cfg.ct_window),
            "intensity": (cfg.intensity_mean, cfg.intensity_std) if cfg.normalization == "ct_zscore" else None}


def two_d_normalization(cfg: MedicalSegmentationLoaderConfig) -> str:
    """The word 2-D datasets treat every channel by (see intensity.two_d_word)."""
    return two_d_word(cfg.channel_normalization) if cfg.channel_normalization else cfg.normalization


def prepare_and_check(cfg: MedicalSegmentationLoaderConfig, found: Found, log: Log) -> Checked:
    """Read and check every case (see _prepare_all), then what they must agree on: the channels,
    and the classes when the dataset declares none."""
    data_dir, layout = found.data_dir, found.layout
    summaries = _prepare_all(layout.cases, found.spec, cfg, data_dir, log)
    first = summaries[0]
    odd = next((s for s in summaries if s["channels"] != first["channels"]), None)
    if odd is not None:
        raise ValueError(f"case {odd['case']}: {odd['channels']} image channels, but case {first['case']} "
                         f"has {first['channels']}; all cases need the same channels")
    odd = next((s for s in summaries if s["dims"] != first["dims"]), None)
    if odd is not None:
        raise ValueError(f"case {odd['case']} is {odd['dims']}-D, but case {first['case']} is {first['dims']}-D; "
                         "all cases need the same dimension (a 2-D slice among volumes?)")
    in_channels = first["channels"]
    if layout.num_channels and layout.num_channels != in_channels:
        raise ValueError(f"{data_dir}/dataset.json declares {layout.num_channels} channels, the images have {in_channels}")
    num_classes = found.spec.num_classes or max(2, max(s["max_label"] for s in summaries) + 1)
    if found.labels.regions and not found.spec.num_classes:  # the data decided the classes: regions must name them
        check_label_scheme(found.labels, num_classes)
    class_names = list(layout.class_names or [])
    if len(class_names) != num_classes:
        class_names = ["background"] + [f"class_{i}" for i in range(1, num_classes)]
    spacings = [s["spacing"] for s in summaries if s["spacing"] is not None]
    spacing = tuple(float(v) for v in np.median(np.asarray(spacings), axis=0)) if len(spacings) == len(summaries) else None
    return Checked(replace(found.spec, spatial_dims=first["dims"]), summaries, in_channels, num_classes,
                   class_names, spacing, found.labels)


def _sampling(cfg: MedicalSegmentationLoaderConfig, dims: int) -> Sampling:
    strength = cfg.augmentation_strength if cfg.augmentation else None
    return Sampling(cfg.patch_size(dims), size_mode(cfg, dims), strength,
                    on_device=strength is not None and cfg.augmentation_on == "device")


def make_loaders(cfg: MedicalSegmentationLoaderConfig, checked: Checked, split: Split, sampling: Sampling,
                 log: Log) -> tuple[SegmentationLoader | None, SegmentationLoader | None]:
    """The datasets and their loaders; the training loader declares the device-side augmentation
    (`batch_augment`) with augmentation_on device, the validation loader never does."""
    import torch

    train_ds, val_ds = _datasets(_source(cfg, checked, split.train), _source(cfg, checked, split.val),
                                 checked.dims, sampling, cfg)
    workers = resolve_workers(cfg.num_workers, torch.cuda.is_available())
    pin = torch.cuda.is_available() if cfg.pin_memory == "auto" else bool(cfg.pin_memory)
    labels = checked.labels
    train_loader = _train_loader(cfg, train_ds, checked.dims, sampling, workers, pin, log, labels) \
        if train_ds is not None else None
    val_loader = _val_loader(cfg, val_ds, sampling, workers, pin, labels) if val_ds is not None else None
    if workers:
        log(f"data: {workers} loader worker(s), {int(cfg.prefetch_factor)} batches prefetched each, "
            f"pinned memory {'on' if pin else 'off'}")
    return train_loader, val_loader


def _source(cfg: MedicalSegmentationLoaderConfig, checked: Checked, cases: list[Case]):
    """The prepared cases `cases` as a dataset reads them: from memory, the disk cache or their files."""
    if not cases:
        return None
    from segflow.data.datasets import CaseSource

    by_id = {s["case"]: s for s in checked.summaries}
    memory = [by_id[c.case_id]["prepared"] for c in cases] if cfg.cache == "memory" else None
    disk = [by_id[c.case_id]["cache_path"] for c in cases] if cfg.cache == "disk" else None
    return CaseSource(cases, checked.spec, memory, disk, max(checked.num_classes, (checked.spec.ignore_label or 0) + 1))


def _train_loader(cfg: MedicalSegmentationLoaderConfig, dataset, dims: int, sampling: Sampling, workers: int,
                  pin: bool, log: Log, labels: LabelScheme = PLAIN) -> SegmentationLoader:
    from segflow.data.segmentation_loader import SegmentationLoader

    settings: dict[str, Any] = dict(batch_size=cfg.batch_size, drop_last=False, num_workers=workers,
                                    pin_memory=pin, persistent_workers=workers > 0,
                                    sampler=_epoch_sampler(cfg, dataset))
    if workers > 0:
        from segflow.data.datasets import worker_init

        settings.update(worker_init_fn=worker_init, prefetch_factor=int(cfg.prefetch_factor))
    batch_augment = _batch_augment(cfg, dims, sampling) if sampling.on_device else None
    if batch_augment is not None:
        log(f"data: {sampling.strength} augmentation batched on the training device; workers only read, "
            f"{'resize' if sampling.mode == 'resize' else 'cut patches'} and collate")
    return SegmentationLoader(dataset, generator=_own_generator(cfg), batch_augment=batch_augment,
                              labels=labels, **settings)


def _epoch_sampler(cfg: MedicalSegmentationLoaderConfig, dataset):
    """The training order as keys (epoch, index) (see `segflow.data.draws`); under torchrun one shard
    per rank, reshuffled each epoch by the Trainer's sampler.set_epoch(epoch). Every rank draws with
    the same seed: a sample's draws depend on its index, not on the rank that makes it."""
    from segflow.data.draws import EpochSampler
    from segflow.workflow import distributed

    shards = None
    if distributed.world_size() > 1:
        from torch.utils.data.distributed import DistributedSampler

        shards = DistributedSampler(dataset, num_replicas=distributed.world_size(), rank=distributed.rank(),
                                    shuffle=cfg.shuffle, seed=int(cfg.seed), drop_last=False)
    return EpochSampler(len(dataset), int(cfg.seed), cfg.shuffle, shards)


def _own_generator(cfg: MedicalSegmentationLoaderConfig):
    """A generator of the loader's own for the worker seeds torch draws at each new iterator (every
    epoch, or once with persistent workers): without one torch draws them from the training process's
    global generator, whose stream (dropout, device augmentation) would then depend on when iterators
    were made, and a resumed run makes them at other times than an uninterrupted one."""
    import torch

    from segflow.workflow import distributed

    return torch.Generator().manual_seed(distributed.rank_seed(cfg.seed))


def _val_loader(cfg: MedicalSegmentationLoaderConfig, dataset, sampling: Sampling, workers: int,
                pin: bool, labels: LabelScheme = PLAIN) -> SegmentationLoader:
    from segflow.data.datasets import collate
    from segflow.data.segmentation_loader import SegmentationLoader
    from segflow.workflow import distributed

    val_workers = min(workers, len(dataset))
    world = distributed.world_size()
    # each validation sample on exactly one rank (no padding duplicates), so the all-reduced
    # confusion matrix is the whole validation set's
    sampler = ShardSampler(len(dataset), distributed.rank(), world) if world > 1 else None
    whole = sampling.mode == "patches"  # whole cases, of any size: one at a time
    return SegmentationLoader(dataset, batch_size=1 if whole else cfg.batch_size, shuffle=False, sampler=sampler,
                              num_workers=val_workers, pin_memory=pin, persistent_workers=val_workers > 0,
                              collate_fn=collate, generator=_own_generator(cfg), labels=labels)


def describe(cfg: MedicalSegmentationLoaderConfig, found: Found, checked: Checked, split: Split,
             sampling: Sampling, log: Log) -> DatasetInfo:
    """The DatasetInfo later nodes read, and the one-line summary of the data in the log."""
    info = DatasetInfo(
        in_channels=checked.in_channels, num_classes=checked.num_classes, spatial_dims=checked.dims,
        spacing=checked.spacing, class_names=checked.class_names, patch_size=sampling.size,
        num_train=len(split.train), num_val=len(split.val), data_dir=str(found.data_dir),
        layout=found.layout.name, fold=split.fold,
        train_cases=[c.case_id for c in split.train], val_cases=[c.case_id for c in split.val],
        label_coding=checked.spec.label_coding, labels=checked.labels,
    )
    what = (f"{info.num_train} train / {info.num_val} val cases" if cfg.subset == "split" else
            f"{info.num_val} {'test' if cfg.subset == 'test' else 'labelled'} case(s), no training split"
            + (f" ({len(found.unlabelled)} without label)" if found.unlabelled else ""))
    log(f"data: {found.layout.name} layout, {what}, {info.spatial_dims}-D, "
        f"{info.in_channels} channel(s), {info.num_classes} classes, "
        f"{'patches of' if sampling.mode == 'patches' else 'resized to'} {sampling.size}, cache {cfg.cache}")
    if not info.label_coding.identity:
        log(f"data: label files store {info.label_coding.describe()}")
    if not info.labels.plain:
        log(f"data: {info.labels.describe()}; the network outputs {info.out_channels} channel(s)")
    return info


def all_background(cfg: MedicalSegmentationLoaderConfig, checked: Checked, split: Split) -> str | None:
    """A warning when every training label (every label, without a training split) holds no foreground:
    such a run trains, but only learns to say background, at Dice 0. Read from the highest class each
    case was found to hold when it was prepared, so it costs nothing; not judged when only the first case
    was read (cache none with verify_data off)."""
    if cfg.cache == "none" and not cfg.verify_data:
        return None
    highest = {s["case"]: s["max_label"] for s in checked.summaries}
    cases = [c for c in (split.train or split.val) if c.label is not None and c.case_id in highest]
    if not cases or any(highest[c.case_id] > 0 for c in cases):
        return None
    which = "training" if split.train else "labelled"
    folders = sorted({str(c.label.parent) for c in cases})
    return (f"data: WARNING: the label of every one of the {len(cases)} {which} case(s) is all background "
            f"(no voxel of a class above 0): the network can only learn to predict background, and Dice will be "
            f"0. Check that {', '.join(folders[:2])} holds these images' masks (not another folder's files), and "
            f"how the labels store the classes: they were read as {checked.spec.label_coding.describe()} "
            "(0/255 masks are read as classes 0/1; masks of 0..1 floats saved as integers become all 0).")


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


def _prepare_all(cases: list[Case], spec: PrepSpec, cfg: MedicalSegmentationLoaderConfig, data_dir: Path,
                 log: Log) -> list[dict]:
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

    results, errors = [], []
    with ThreadPoolExecutor(_threads(cfg)) as pool:
        futures = [pool.submit(one, c) for c in cases]
        for case, f in zip(cases, futures):
            try:
                results.append(f.result())
            except ChannelCountError as e:  # the config's, not the case's: said once
                raise ValueError(f"{data_dir}: {e}") from None
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


def _threads(cfg: MedicalSegmentationLoaderConfig) -> int:
    """Threads for decoding the cases (decoding releases the GIL in zlib/PIL)."""
    import torch

    return max(1, min(4, resolve_workers(cfg.num_workers, torch.cuda.is_available()) or 1))


def _summary(case: Case, prep: Prepared, keep: Prepared | None, path: Path | None) -> dict:
    return {"case": case.case_id, "dims": prep.image.ndim - 1, "channels": prep.image.shape[0],
            "max_label": prep.max_label, "spacing": prep.spacing, "prepared": keep, "cache_path": path}


def size_mode(cfg: MedicalSegmentationLoaderConfig, dims: int) -> str:
    """"resize" or "patches": the config's size_mode with "auto" resolved for the data's dimension."""
    mode = cfg.size_mode
    if mode == "auto":
        return "resize" if dims == 2 else "patches"
    if mode == "resize" and dims == 3:
        raise ValueError(f"{cfg.data_dir}: size_mode resize is for 2-D images, but the data is 3-D; "
                         "3-D volumes train on patches (size_mode patches or auto)")
    return mode


def _batch_augment(cfg: MedicalSegmentationLoaderConfig, dims: int, sampling: Sampling):
    """The device-side augmentation for `augmentation_on: device`, told what state the workers leave
    2-D samples in: resized images stay in [0, 1] and are z-scored after augmentation (zscore);
    patches are cut at full resolution (no random resized crop) and already z-scored with their whole
    image's statistics; raw intensities (normalization none) are never clipped to [0, 1]. Off [0, 1],
    gamma rescales each sample as for 3-D."""
    from segflow.data.batch_augment import BatchAugment

    erasing = _erasing(cfg)
    erase = {} if erasing is None else {"erase_p": erasing[0], "erase_size": erasing[1]}
    if dims == 3:
        return BatchAugment(dims, sampling.strength, **erase)
    resize, norm = sampling.mode == "resize", two_d_normalization(cfg)
    return BatchAugment(dims, sampling.strength, zscore_after=resize and norm == "zscore",
                        unit_range=norm != "none" and (resize or norm != "zscore"),
                        **({} if resize else {"crop_p": 0.0}), **erase)


def _erasing(cfg: MedicalSegmentationLoaderConfig) -> tuple[float, tuple[float, float]] | None:
    """(probability, (min, max) side fraction) of random erasing, None when off; the pipelines add it
    to a preset only, so it never reaches validation or a loader with augmentation false."""
    if not cfg.random_erasing:
        return None
    low, high = cfg.random_erasing_size
    return float(cfg.random_erasing), (float(low), float(high))


def _datasets(train_src, val_src, dims: int, sampling: Sampling, cfg: MedicalSegmentationLoaderConfig):
    """With `sampling.on_device` the training workers get no random transforms: BatchAugment does them (and,
    for resized 2-D images, the z-score that must follow them) on the training device."""
    from segflow.data.augment import albumentations_pipeline, monai_pipeline
    from segflow.data.datasets import Centres, Patches2D, Patches3D, Slices2D, WholeCases

    seed = int(cfg.seed)
    repeats = int(cfg.samples_per_volume)
    train = None
    size, mode, on_device = sampling.size, sampling.mode, sampling.on_device
    strength = None if on_device else sampling.strength
    erasing = _erasing(cfg)
    norm = two_d_normalization(cfg) if dims == 2 else None
    z = norm == "zscore"  # 2-D images stay in [0, 1] until after augmentation
    raw = norm == "none"  # mapped onto [0, 1] around the transforms, then back
    if mode == "resize":
        if train_src:
            train = Slices2D(train_src, albumentations_pipeline(size, strength, seed, erasing=erasing),
                             z and not on_device, repeats, seed, raw_range=raw)
        val = Slices2D(val_src, albumentations_pipeline(size, None, seed), z) if val_src else None
        return train, val
    centres = Centres.of(cfg.pos, cfg.neg, by_class=cfg.foreground_sampling == "by_class")
    if train_src and dims == 2:
        # patches are z-scored here with their whole image's statistics, even with on_device, since
        # BatchAugment only knows the patch
        train = Patches2D(train_src, size, centres,
                          albumentations_pipeline(size, strength, seed, resize=False, erasing=erasing),
                          z, repeats, seed, raw_range=raw)
    elif train_src:
        train = Patches3D(train_src, size, centres, monai_pipeline(size, strength, seed, erasing), repeats, seed)
    return train, (WholeCases(val_src, z) if val_src else None)
