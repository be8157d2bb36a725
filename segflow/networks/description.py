"""What segflow knows about a network it built, carried on the module itself as one small record:
inference and export read the shape facts (dims, channels, size rules), a resume compares the
node config so that its error can name the field that changed. torch-free."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ATTRIBUTE = "segflow_network"


@dataclass(frozen=True)
class NetworkDescription:
    type: str  # the node type ("UNet2D"; "ensemble of 3 UNet2D")
    spatial_dims: int
    in_channels: int
    out_channels: int
    size_divisor: int = 1  # every input size must be a multiple of this (the largest of size_divisors)
    size_divisors: tuple[int, ...] | None = None  # per axis (DynUNet's differ); None: size_divisor on every axis
    fixed_size: tuple[int, ...] | None = None  # the only input size it takes (UNETR)
    config: dict[str, Any] | None = None  # the node's config as JSON

    def renamed(self, type_name: str) -> NetworkDescription:
        return dataclasses.replace(self, type=type_name)


def describe(model: Any, description: NetworkDescription) -> Any:
    """Attach `description` to `model` (a torch module) and return the model."""
    object.__setattr__(model, ATTRIBUTE, description)  # a plain attribute, not a submodule or buffer
    return model


def description_of(model: Any) -> NetworkDescription | None:
    """The description of a network segflow built (or an ensemble of them); None for any other module."""
    found = getattr(model, ATTRIBUTE, None)
    return found if isinstance(found, NetworkDescription) else None
