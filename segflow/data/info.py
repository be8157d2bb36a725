"""What a loader tells later nodes about its data (the `DatasetInfo` port type).

Stdlib only, so node modules and `segflow validate` may refer to it without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from segflow.data.label_coding import CLASS_INDICES, LabelCoding
from segflow.data.label_scheme import PLAIN, LabelScheme


@dataclass
class DatasetInfo:
    """Shape of the data a MedicalSegmentationLoader hands out.

    `patch_size` is the spatial size of a training sample: the resized image for 2-D, the
    sampled patch for 3-D. 3-D validation batches are whole volumes (batch size 1), so a
    trainer validates them with sliding-window inference using `patch_size` as the window.
    `spacing` is the voxel spacing after optional resampling (the median over the cases when
    they differ); None for data without a physical spacing (PNG, NumPy).
    """

    in_channels: int
    num_classes: int  # background included; the ignore label is not a class
    spatial_dims: int  # 2 or 3
    spacing: tuple[float, ...] | None
    class_names: list[str] = field(default_factory=list)
    patch_size: tuple[int, ...] = ()
    num_train: int = 0
    num_val: int = 0
    data_dir: str = ""
    layout: str = ""
    fold: int | None = None  # the cross-validation fold the split is, when the loader has one
    train_cases: list[str] = field(default_factory=list)  # case ids, as split.json records them
    val_cases: list[str] = field(default_factory=list)
    label_coding: LabelCoding = CLASS_INDICES  # how the label files store the classes
    labels: LabelScheme = PLAIN  # regions (sigmoid channels) and the ignore label, when the data has them

    @property
    def out_channels(self) -> int:
        """What the network outputs: one channel per region, else one per class."""
        return self.labels.channels(self.num_classes)
