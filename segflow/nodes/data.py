"""Data family: MedicalSegmentationLoader.

Config and ports only; reading, checking, caching and augmentation live in `segflow.data`
and are imported inside `run`, so `segflow validate` stays free of torch.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from segflow.data.label_scheme import from_settings, problems
from segflow.nodes.base import Finding, Node, NodeConfig, Port
from segflow.nodes.bounds import MAX_VOXELS, BatchSize, Cases, Classes, ForegroundLabel, Seed, Steps, Why, Workers
from segflow.nodes.data_preflight import cache_findings, data_dir_findings, memory_findings, splits_findings
from segflow.nodes.datashape import DataShape
from segflow.nodes.intensity import normalisation_findings, windows
from segflow.nodes.registry import register
from segflow.nodes.words import Choice
from segflow.workflow.files import write_json

NormalizationWord = Literal["zscore", "zscore_nonzero", "minmax", "ct", "ct_zscore", "none"]
Window = Annotated[list[float], Field(min_length=2, max_length=2)]
Positive = Annotated[float, Field(gt=0)]
PatchSize = Annotated[int, Field(ge=8, le=MAX_VOXELS), Why(
    "no scanner's matrix and no patch a GPU trains on is larger along one axis")]
Spacing = Annotated[float, Field(gt=0, le=1000), Why("spacing is in millimetres: a voxel a metre wide is no image")]
Fraction = Annotated[float, Field(gt=0, le=1)]
Prefetch = Annotated[int, Field(ge=1, le=64), Why("each batch prepared ahead holds host memory")]
Folds = Annotated[int, Field(le=100), Why("more folds than cross-validation ever uses")]

# Dimensionality of each built-in phantom, and image_size when it is not set (by dimensionality).
PHANTOM_DIMS = {"phantom2d": 2, "phantom3d": 3}
DEFAULT_IMAGE_SIZE = {2: 256, 3: 96}


class MedicalSegmentationLoaderConfig(NodeConfig):
    aliases: ClassVar[dict[str, str]] = {"shuffle_train": "shuffle"}

    data_dir: str = Field("data/medical", description=(
        "Dataset folder (relative to the working directory): MSD (dataset.json + imagesTr/labelsTr), "
        "nnU-Net v2 (dataset.json with channel_names/labels/file_ending), or images/ + masks/ folders, "
        "optionally under train/ and val/."))
    subset: Annotated[Literal["split", "test", "all"], Choice()] = Field("split", description=(
        "Which cases to load. split: the labelled cases, split into train_loader and val_loader (training). "
        "test: the layout's test images (MSD dataset.json 'test' list or imagesTs/, nnU-Net imagesTs/, "
        "folder test/images/), labels optional (labelsTs/, test/masks/), all in val_loader, train_loader null; "
        "for prediction. all: every labelled case in val_loader, train_loader null; for scoring a model "
        "on a whole dataset."))
    layout: Annotated[Literal["auto", "msd", "nnunet", "folder", "images"], Choice()] = Field(
        "auto", description="Dataset layout; 'auto' detects it from the folder contents. images: a plain folder of "
                            "images without labels, for subset test (every file a case; <case>_0000, <case>_0001, ... "
                            "the channels of one case, as nnU-Net names them).")
    synthetic: Annotated[Literal["none", "phantom2d", "phantom3d"], Choice()] = Field("none", description=(
        "Write a built-in phantom dataset (MSD layout; 2-D PNG or 3-D NIfTI) into data_dir if it is not "
        "there yet, then read it like any dataset. 'none' reads data_dir as it is."))
    synthetic_cases: Cases | None = Field(None, ge=2, description=(
        "Number of phantom cases to write (default 64 for phantom2d, 16 for phantom3d)."))
    synthetic_classes: int = Field(2, ge=2, le=3, description=(
        "Classes in the phantom including background: 2 (one structure) or 3 (structure + inner core)."))
    batch_size: BatchSize = Field(8, ge=1, description=(
        "Training samples per batch. Validation of resized 2-D images uses it too; whole-image validation "
        "(3-D, or 2-D with size_mode patches) takes one case at a time."))
    image_size: PatchSize | list[PatchSize] | None = Field(None, description=(
        "2-D: size every image is resized to, or the patch size with size_mode patches (int or [H, W]); "
        "3-D: training patch size (int for a cube or [X, Y, Z]). Default 256 for 2-D, 96 for 3-D."))
    size_mode: Annotated[Literal["auto", "resize", "patches"], Choice()] = Field("auto", description=(
        "How samples meet image_size. resize (2-D only): every image is resized to image_size for training, "
        "validation and prediction (predictions are resized back). patches: training takes random patches of "
        "image_size at the image's own resolution (pos/neg foreground weighting, zero padding where the image is "
        "smaller); validation and prediction see whole images through sliding windows; keeps fine detail "
        "(nnU-Net's way). auto: resize for 2-D, patches for 3-D."))
    spatial_dims: Annotated[Literal["auto", 2, 3], Choice()] = Field("auto", description="2 or 3; 'auto' takes it from the label files.")
    augmentation: bool = Field(True, description="Augment training samples (validation is never augmented).")
    augmentation_strength: Annotated[Literal["light", "medium", "strong"], Choice()] = Field("medium", description=(
        "Augmentation preset: light (crop, flip, mild intensity), medium (+ rotate-90, affine, gamma), "
        "strong (+ elastic/grid distortion, noise; 3-D: affine, smoothing, contrast)."))
    random_erasing: float = Field(0.0, ge=0.0, le=1.0, description=(
        "Random erasing (cutout): the probability that a training sample gets one box (2-D) or cuboid (3-D) of its "
        "image set to 0, after the preset's transforms; the label is left as it is. 0: off. Works with "
        "augmentation true, on the workers and with augmentation_on device."))
    random_erasing_size: list[Fraction] = Field([0.1, 0.4], min_length=2, max_length=2, description=(
        "[min, max] side of the erased box as a fraction of the sample's extent, drawn per axis."))
    augmentation_on: Annotated[Literal["workers", "device"], Choice()] = Field("workers", description=(
        "Where training augmentation runs. workers: per sample in the DataLoader workers (albumentations 2-D, "
        "MONAI 3-D). device: the random spatial and intensity transforms run batched on the Trainer's device "
        "(the GPU) after the copy; workers only read and cut patches (or resize 2-D images). For fast GPUs where "
        "CPU augmentation limits throughput. Same presets (augmentation_strength); see docs/data.md."))
    normalization: Annotated[NormalizationWord, Choice()] = Field("zscore", description=(
        "Intensity normalisation of every channel: zscore (per case), zscore_nonzero (3-D: per case inside the "
        "nonzero mask, 0 outside; nnU-Net's z-score with use_mask_for_norm, for images with a large zero "
        "background such as skull-stripped brains), minmax (per case, to [0, 1]), ct (clip to ct_window, mapped "
        "to [0, 1]), ct_zscore (3-D: clip to ct_window, then z-score with the dataset's intensity_mean and "
        "intensity_std, nnU-Net's CT normalisation; `segflow plan` writes the numbers), or none."))
    channel_normalization: Annotated[list[NormalizationWord] | None, Choice(keep_repeats=True)] = Field(
        None, min_length=1, description=(
            "One normalization word per image channel, in channel order, in place of normalization (e.g. "
            "[\"ct_zscore\", \"zscore\"] for CT + MR); null: normalization for every channel. ct_window, "
            "intensity_mean and intensity_std then take one entry per channel where channels differ. 2-D images "
            "take zscore or none for every channel, or any mix of ct and minmax."))
    ct_window: Window | list[Window | None] = Field([-175.0, 250.0], description=(
        "[low, high] intensity window of normalization 'ct' and 'ct_zscore' (Hounsfield units), for every "
        "channel; or a list with one [low, high] per channel (null for channels that use none)."))
    intensity_mean: float | list[float | None] | None = Field(None, description=(
        "normalization ct_zscore: the mean subtracted after clipping (the dataset's foreground mean); or a list "
        "with one per channel (null for channels that need none)."))
    intensity_std: Positive | list[Positive | None] | None = Field(None, description=(
        "normalization ct_zscore: the standard deviation divided by (the dataset's foreground std); or a list "
        "with one per channel (null for channels that need none)."))
    target_spacing: list[Spacing] | None = Field(None, description=(
        "Resample every case to this voxel spacing (one value per spatial axis) before sampling; null keeps the file's spacing."))
    num_classes: Classes | None = Field(None, ge=2, description=(
        "Number of classes including background, for datasets that do not declare them (folder layouts). "
        "Null: the dataset.json labels, else the largest label value + 1. Needed for subset test when test "
        "images lack labels and there is no dataset.json labels entry."))
    regions: dict[str, list[ForegroundLabel]] | None = Field(None, description=(
        "Region-based training (nnU-Net's): name -> the classes it unites, e.g. {\"whole_tumor\": [1, 2, 3], "
        "\"tumor_core\": [2, 3], \"enhancing_tumor\": [3]}. One sigmoid output channel per region (out_channels = "
        "number of regions); regions must be nested or disjoint, outer ones first. Classes as the loader reads them "
        "(the stored values of NIfTI and NumPy labels). An nnU-Net dataset.json declares them in its labels instead."))
    regions_class_order: list[ForegroundLabel] | None = Field(None, description=(
        "With regions: the class each region is written as in predicted label maps, one per region in region "
        "order (nnU-Net's regions_class_order, e.g. [1, 2, 3]): each region's sigmoid above 0.5 is painted in "
        "turn, later regions over earlier ones."))
    ignore_label: Classes | None = Field(None, ge=1, description=(
        "The label value of voxels without ground truth (sparse or scribble annotation): they count in no loss "
        "term, metric or patch centre, and predictions never hold it. As in nnU-Net it must be the highest "
        "value: the classes are 0 .. ignore_label - 1. An nnU-Net dataset.json declares it as labels \"ignore\"."))
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description=(
        "Fraction of cases held out for validation (split by case, seeded). Ignored when the folder has train/ and val/."))
    fold: Folds | None = Field(None, ge=0, description=(
        "Cross-validation fold to train (0-based), as nnU-Net's folds: the cases are split into num_folds "
        "folds by case (seeded with seed, or as splits_file lists them); this fold validates, the others train. "
        "Null: one split by val_fraction."))
    num_folds: Folds = Field(5, ge=2, description="Number of cross-validation folds (with fold; splits_file sets its own).")
    splits_file: str | None = Field(None, description=(
        "With fold: a JSON list of {\"train\": [case ids], \"val\": [case ids]}, one per fold (nnU-Net's "
        "splits_final.json). Null: data_dir/splits_final.json when it exists, else folds made here."))
    seed: Seed = Field(42, description="Seed for the split, shuffling, patch sampling and augmentation.")
    shuffle: bool = Field(True, description="Shuffle training samples every epoch.")
    num_workers: Annotated[Annotated[Workers, Field(ge=0)] | Literal["auto"], Choice()] = Field("auto", description=(
        "DataLoader worker processes (persistent); 0 loads in the main process, usually fastest for small 2-D data "
        "on CPU. auto: with CUDA, one per spare CPU core up to 8 (shared among the GPU processes of a torchrun "
        "job) so the GPU does not wait for data; without CUDA, 0."))
    prefetch_factor: Prefetch = Field(4, description=(
        "Batches each worker prepares ahead (used when num_workers > 0); more smooths out slow batches at the "
        "cost of host memory."))
    pin_memory: Annotated[bool | Literal["auto"], Choice()] = Field("auto", description="Pinned host memory for faster GPU copies; 'auto' = when CUDA is available.")
    cache: Annotated[Literal["none", "memory", "disk"], Choice()] = Field("memory", description=(
        "Keep decoded, normalised cases in memory, as .npy files on disk (memory-mapped; cache_dir), or re-read files every time."))
    cache_dir: str | None = Field(None, description="Folder for cache 'disk' (default: data_dir/.segflow_cache).")
    verify_data: bool = Field(True, description=(
        "Read every case before training to check files, shapes and label values (always done for cache memory/disk)."))
    pos: float = Field(1.0, ge=0.0, description="Patch sampling: weight of patches centred on foreground.")
    neg: float = Field(1.0, ge=0.0, description="Patch sampling: weight of patches centred anywhere.")
    foreground_sampling: Annotated[Literal["any", "by_class"], Choice(
        {"voxel": "any", "class": "by_class", "per_class": "by_class", "class_balanced": "by_class"})] = Field(
        "any", description=(
            "Patch sampling: how a foreground-centred patch (weight pos) picks its centre. any: a voxel drawn "
            "uniformly from all foreground, so small classes are rarely centred. by_class: first a class, uniformly "
            "among the foreground classes the case contains, then a voxel of that class (nnU-Net's oversampling; "
            "`segflow plan` writes it). Patches only (3-D, or 2-D with size_mode patches)."))
    samples_per_volume: Steps = Field(1, ge=1, description="Training samples drawn from each case per epoch (3-D patches; 2-D augmented copies).")

    @field_validator("spatial_dims", mode="before")
    @classmethod
    def _dims_from_text(cls, v):
        return int(v) if isinstance(v, str) and v.strip() in ("2", "3") else v  # GUI-saved "3"

    @field_validator("image_size")
    @classmethod
    def _size(cls, v):
        if isinstance(v, list) and len(v) not in (2, 3):
            raise ValueError("image_size must be one number or a list of 2 (2-D) or 3 (3-D) numbers")
        return v

    @field_validator("ct_window")
    @classmethod
    def _windows(cls, v):
        if any(low >= high for low, high in windows(v)):
            raise ValueError("ct_window must be [low, high] with low < high (or one such pair per channel)")
        return v

    @field_validator("target_spacing")
    @classmethod
    def _spacing(cls, v):
        if v is not None and len(v) not in (2, 3):
            raise ValueError("target_spacing must be 2 or 3 positive numbers, or null")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        dims = PHANTOM_DIMS.get(self.synthetic)
        if dims and self.spatial_dims not in ("auto", dims):
            raise ValueError(f"synthetic {self.synthetic} is {dims}-D but spatial_dims is {self.spatial_dims}")
        want = self.declared_dims()
        for key in ("image_size", "target_spacing"):
            v = getattr(self, key)
            if want and isinstance(v, list) and len(v) != want:
                raise ValueError(f"{key} has {len(v)} values but the data is {want}-D")
        if self.fold is not None and self.splits_file is None and "num_folds" in self.model_fields_set \
                and self.fold >= self.num_folds:
            raise ValueError(f"fold {self.fold} does not exist with num_folds {self.num_folds}; folds are 0 to "
                             f"{self.num_folds - 1}")
        if self.size_mode == "resize" and want == 3:
            raise ValueError("size_mode resize is for 2-D images; 3-D volumes train on patches (size_mode patches "
                             "or auto)")
        if self.pos + self.neg <= 0:
            raise ValueError("pos and neg cannot both be 0")
        low, high = self.random_erasing_size
        if not 0 < low <= high <= 1:
            raise ValueError(f"random_erasing_size must be [min, max] with 0 < min <= max <= 1, got {[low, high]}")
        return self

    def declared_dims(self) -> int | None:
        """2 or 3 when the config says (a phantom's kind, or spatial_dims), None for 'auto'."""
        return PHANTOM_DIMS.get(self.synthetic) or (self.spatial_dims if self.spatial_dims != "auto" else None)

    def patch_size(self, dims: int) -> tuple[int, ...]:
        """image_size as one size per axis of `dims`-D data (the default when unset)."""
        size = DEFAULT_IMAGE_SIZE[dims] if self.image_size is None else self.image_size
        if isinstance(size, int):
            return (size,) * dims
        if len(size) != dims:
            raise ValueError(f"image_size {list(size)} has {len(size)} values but the data is {dims}-D")
        return tuple(int(s) for s in size)

    def data_shape(self, where: str) -> DataShape:
        """What this config declares about its data before any file is read: the phantoms' channels and
        classes are known, a dataset's only once it is read (DataShape.of_info at run time)."""
        dims = self.declared_dims()
        phantom = self.synthetic != "none"
        return DataShape(where, spatial_dims=dims, in_channels=1 if phantom else None,
                         num_classes=self.num_classes or self.ignore_label or (self.synthetic_classes if phantom else None),
                         patch_size=self.patch_size(dims) if dims else None,
                         regions=tuple((self.regions or {}).keys()))

    def label_scheme(self):
        """The regions and ignore label this config declares (segflow.data.label_scheme)."""
        return from_settings(self.regions, self.regions_class_order, self.ignore_label, "the loader's settings")


def _label_findings(config: MedicalSegmentationLoaderConfig) -> list[Finding]:
    """Regions and the ignore label against each other and the declared classes, by the rules the loader
    applies to the data (segflow.data.label_scheme.problems)."""
    if config.regions_class_order is not None and not config.regions:
        return [Finding("regions_class_order", "unused_value", "regions_class_order is ignored without regions",
                        hint="declare regions, or remove regions_class_order", severity="warning")]
    ignore, declared = config.ignore_label, config.num_classes
    if ignore is not None and declared is not None and ignore > declared:
        return [Finding("ignore_label", "bad_value", f"ignore_label {ignore} is not directly above the classes "
                        f"0..{declared - 1} (num_classes {declared}): with an ignore label the classes are "
                        "0 .. ignore_label - 1, as nnU-Net requires", hint=f"set ignore_label to {declared}")]
    known = declared or ignore or (config.synthetic_classes if config.synthetic != "none" else None)
    classes = list(range(known)) if known else None
    found = problems(config.label_scheme(), classes, order_given=config.regions_class_order is not None)
    return [Finding(p.field, "missing_value" if "is missing" in p.message else "bad_value", p.message, hint=p.hint)
            for p in found[:1]]


def _resized_2d(config: MedicalSegmentationLoaderConfig) -> bool:
    return config.size_mode == "resize" or (config.size_mode == "auto" and config.declared_dims() == 2)


def _erasing_findings(config: MedicalSegmentationLoaderConfig) -> list[Finding]:
    """Erasing settings that do nothing, said once."""
    if config.random_erasing and not config.augmentation:
        return [Finding("random_erasing", "unused_value", "random_erasing is ignored: augmentation is false",
                        hint="set augmentation true to erase boxes of the training images", severity="warning")]
    if "random_erasing_size" in config.model_fields_set and not config.random_erasing:
        return [Finding("random_erasing_size", "unused_value", "random_erasing_size is ignored: random_erasing is 0",
                        hint="set random_erasing to the probability of erasing a sample (e.g. 0.5)",
                        severity="warning")]
    return []


@register
class MedicalSegmentationLoader(Node):
    """Reads a segmentation dataset (MSD, nnU-Net v2, folders; NIfTI, NRRD/MHA, PNG/JPG/TIFF, NumPy, DICOM),
    checks every case up front, and hands out training and validation loaders."""

    type = "MedicalSegmentationLoader"
    family = "data"
    Config = MedicalSegmentationLoaderConfig
    inputs = ()
    outputs = (
        Port("train_loader", "DataLoader", doc="Training batches: image (B,C,*S) float32, label (B,1,*S) uint8, case. "
             "None for subset test and all."),
        Port("val_loader", "DataLoader", doc="Validation batches, never augmented; 3-D: one whole volume per batch. "
             "None when val_fraction is 0 and the folder has no val/ split. subset test/all: every case; "
             "batches of test images without labels have no 'label' key."),
        Port("dataset_info", "DatasetInfo", doc="Channels, classes, spatial dims, spacing, patch size of the data."),
    )
    # the node editor's loader: its test_loader is val_loader (a global alias), its counts are in dataset_info
    port_aliases = {"num_train": "dataset_info", "num_test": "dataset_info"}

    @classmethod
    def check(cls, config: NodeConfig, neighbours: dict[str, tuple[str, NodeConfig]]) -> list[Finding]:
        return _erasing_findings(config) + cls._data_findings(config)

    @classmethod
    def _data_findings(cls, config: NodeConfig) -> list[Finding]:
        given = config.model_fields_set
        if config.layout == "images" and config.subset != "test":
            return [Finding("layout", "bad_value", f"layout images is a folder of images without labels; subset "
                            f"{config.subset} needs labelled cases", hint="use subset test (prediction), or a "
                            "layout with labels (msd, nnunet, folder)")]
        labels = _label_findings(config)
        if labels:
            return labels
        found = normalisation_findings(config)
        if found:
            return found
        if config.subset != "split" and "val_fraction" in given:
            return [Finding("val_fraction", "bad_value", f"val_fraction is ignored with subset "
                            f"{config.subset}: every case goes to val_loader and there is no train_loader",
                            hint="remove val_fraction, or set subset to split to train", severity="warning")]
        if config.subset != "split" and config.fold is not None:
            return [Finding("fold", "bad_value", f"fold is ignored with subset {config.subset}: there is no "
                            "training split", hint="remove fold, or set subset to split", severity="warning")]
        if config.fold is not None and "val_fraction" in given:
            return [Finding("val_fraction", "unused_value", f"val_fraction is ignored: fold {config.fold} "
                            "validates on its fold", hint="remove val_fraction", severity="warning")]
        if "foreground_sampling" in given and _resized_2d(config):
            return [Finding("foreground_sampling", "unused_value", "foreground_sampling is ignored: 2-D images are "
                            "resized whole (size_mode resize), no patch is centred",
                            hint="set size_mode patches to train on foreground-centred patches", severity="warning")]
        if config.fold is None and ({"num_folds", "splits_file"} & given):
            name = sorted({"num_folds", "splits_file"} & given)[0]
            return [Finding(name, "unused_value", f"{name} is ignored without fold",
                            hint="set fold (0-based) to train one cross-validation fold", severity="warning")]
        return []

    @classmethod
    def preflight(cls, config: NodeConfig, device: str | None) -> list[Finding]:
        """Every problem at once: the data folder, batches too large for this machine's memory, the
        splits file, the disk cache's folder (segflow.nodes.data_preflight)."""
        missing = data_dir_findings(config)
        return missing + memory_findings(config) + splits_findings(config) + cache_findings(config, not missing)

    def run(self, **inputs: Any) -> dict[str, Any]:
        from segflow.data.loader import build_loaders
        from segflow.workflow import distributed

        train, val, info = build_loaders(self.config, log=self.ctx.log)
        if self.config.subset == "split" and distributed.is_main():
            # the cases each split holds, so a fold or a run can be reproduced or compared exactly
            write_json(self.ctx.output_path("split.json"), {"data_dir": info.data_dir, "fold": info.fold,
                                                            "train": info.train_cases, "val": info.val_cases}, indent=1)
            # what the data looked like to the network, for `segflow package` (channels, classes, coding)
            write_json(self.ctx.output_path("dataset_info.json"), {
                "loader": self.name, "in_channels": info.in_channels, "num_classes": info.num_classes,
                "spatial_dims": info.spatial_dims, "spacing": info.spacing, "class_names": info.class_names,
                "patch_size": list(info.patch_size), "layout": info.layout, "data_dir": info.data_dir,
                "num_train": info.num_train, "num_val": info.num_val,
                "label_values": list(info.label_coding.values), **_label_record(info)}, indent=1)
        return {"train_loader": train, "val_loader": val, "dataset_info": info}


def _label_record(info) -> dict:
    """Regions and the ignore label as loader settings, however the dataset declared them, so that a
    package predicts with them (`segflow package`)."""
    labels = getattr(info, "labels", None)
    if labels is None or labels.plain:
        return {}
    record = {"ignore_label": labels.ignore}
    if labels.region_based:
        record.update(regions={r.name: list(r.classes) for r in labels.regions},
                      regions_class_order=list(labels.paint))
    return record
