"""What a loader declares about its data (dimensions, channels, classes, patch size), as one record
built either statically from the loader's config (`segflow validate`) or at run time from the
`DatasetInfo` it hands out, so that a network is checked against data by one rule in both places.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DataShape:
    """Each field None when the source does not say. `where` names the source in messages."""

    where: str
    spatial_dims: int | None = None
    in_channels: int | None = None
    num_classes: int | None = None
    patch_size: tuple[int, ...] | None = None
    regions: tuple[str, ...] = ()  # region names (one sigmoid output channel each); () for plain classes

    @classmethod
    def of_config(cls, source_type: str, config: Any) -> DataShape:
        """Statically: what a loader's config declares (a config with a `data_shape` method says it
        itself; other loaders declare nothing)."""
        where = f"the {source_type} wired to dataset_info"
        declare = getattr(config, "data_shape", None)
        return declare(where) if callable(declare) else cls(where)

    @classmethod
    def of_info(cls, info: Any) -> DataShape:
        """At run time: from a `DatasetInfo` (or anything with its attributes)."""
        patch = getattr(info, "patch_size", None)
        return cls(where=f"the data in {getattr(info, 'data_dir', None) or 'the loader'}",
                   spatial_dims=getattr(info, "spatial_dims", None), in_channels=getattr(info, "in_channels", None),
                   num_classes=getattr(info, "num_classes", None),
                   patch_size=tuple(int(s) for s in patch) if patch else None,
                   regions=tuple(r.name for r in getattr(getattr(info, "labels", None), "regions", ())))
