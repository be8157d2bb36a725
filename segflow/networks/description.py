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

    def divisors(self, dims: int) -> tuple[int, ...]:
        """Per axis, the multiple each of `dims` input sizes must be."""
        if self.size_divisors is not None and len(self.size_divisors) == dims:
            return self.size_divisors
        return (self.size_divisor,) * dims

    def size_problem(self, size: tuple[int, ...]) -> tuple[str, list[int] | None] | None:
        """Why an input of `size` cannot go through ("takes exactly [96, 96, 96]", "needs sizes divisible
        by 16") with the nearest size it takes when there is one to suggest; None when it can."""
        if self.fixed_size and tuple(self.fixed_size) != tuple(size):
            return f"takes exactly {list(self.fixed_size)}", None
        divisors = self.divisors(len(size))
        if not any(s % d for s, d in zip(size, divisors)):
            return None
        divisor = divisors[0] if len(set(divisors)) == 1 else f"{list(divisors)} per axis"
        return f"needs sizes divisible by {divisor}", [max(d, round(s / d) * d) for s, d in zip(size, divisors)]


def describe(model: Any, description: NetworkDescription) -> Any:
    """Attach `description` to `model` (a torch module) and return the model."""
    object.__setattr__(model, ATTRIBUTE, description)  # a plain attribute, not a submodule or buffer
    return model


def description_of(model: Any) -> NetworkDescription | None:
    """The description of a network segflow built (or an ensemble of them); None for any other module."""
    found = getattr(model, ATTRIBUTE, None)
    return found if isinstance(found, NetworkDescription) else None
