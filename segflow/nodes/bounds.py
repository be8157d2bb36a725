"""The ranges numeric config values may take, with the reason for each limit.

Every number in a node config is checked statically (issue: "validated means it runs"): floats
are finite (NodeConfig sets `allow_inf_nan=False`, so JSON's 1e400, which reads as infinity, and
a GUI's "NaN" are errors), integers have a lower and an upper bound, and the upper bound comes
with the reason it is there, shown in the error ("batch_size 1e+18 is above 65,536: ...").

The types below carry an upper bound and its reason (`Why`); a field states its own lower bound
in its `Field(ge=...)` unless the type has one (`Seed`, `Voxels`). Never give a field a lower
bound the type has too: pydantic applies the type's after the field's, so the type's would win.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field


@dataclass(frozen=True)
class Why:
    """Why a number has the bounds it has: shown after the error that a value is out of them."""

    text: str


SEED_MAX = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX), Why("seeds are 32-bit: NumPy and torch take 0 to 2**32 - 1")]
# Per-axis sizes in voxels (image and patch sizes, sliding windows, export sizes).
MAX_VOXELS = 4096
Voxels = Annotated[int, Field(ge=1, le=MAX_VOXELS), Why(
    "no scanner's matrix and no patch a GPU trains on is larger along one axis")]
BatchSize = Annotated[int, Field(le=65_536), Why("no device holds more samples in one step")]
Epochs = Annotated[int, Field(le=100_000), Why("epochs are counted up to 100,000 (nnU-Net trains 1,000)")]
Steps = Annotated[int, Field(le=100_000), Why("a count of steps or samples this large would never finish")]
Workers = Annotated[int, Field(le=512), Why("more processes than any machine has cores")]
Channels = Annotated[int, Field(le=1024), Why("more channels than any multi-modal or multi-echo image has")]
Classes = Annotated[int, Field(le=32_767), Why("labels are stored as 16-bit integers")]
Width = Annotated[int, Field(le=16_384), Why("wider than any segmentation network: its weights would not fit a GPU")]
Layers = Annotated[int, Field(le=256), Why("deeper than any segmentation network: it would not fit a GPU")]
Cases = Annotated[int, Field(le=100_000), Why("more cases than any dataset segflow writes or splits")]


def why(field: Any) -> str:
    """The reason given for a field's bounds (a pydantic FieldInfo), looking through unions and
    lists of bounded types; "" when the field gives none."""
    for item in getattr(field, "metadata", ()):
        if isinstance(item, Why):
            return item.text
    return next((a.text for a in annotation_parts(getattr(field, "annotation", None)) if isinstance(a, Why)), "")


def annotation_parts(annotation: Any):
    """`annotation` and everything inside it, depth first: union members, list items, Annotated metadata."""
    yield annotation
    for arg in typing.get_args(annotation):
        yield from annotation_parts(arg)


_WORDED = {"greater_than_equal": ("ge", "must be at least {bound}, got {value}"),
           "greater_than": ("gt", "must be more than {bound}, got {value}"),
           "less_than_equal": ("le", "{value} is above {bound}"),
           "less_than": ("lt", "must be less than {bound}, got {value}")}


def bound_message(error: dict, where: str, reason: str) -> str | None:
    """A pydantic error about a number's range, worded for people ("num_workers must be at least
    0, got -1"; "batch_size 1e+18 is above 65,536: no device ..."); None for other errors."""
    kind, value = error["type"], error.get("input")
    if kind == "finite_number":
        extra = " (JSON numbers from about 1.8e308 up, such as 1e400, read as infinity)" if _infinite(value) else ""
        return f"{where} must be a finite number, got {value!r}{extra}"
    if kind == "int_parsing_size":  # a float such as 1e30 for an integer: beyond any bound
        return f"{where} {shown(value)} is far too large" + (f": {reason}" if reason else "")
    if kind not in _WORDED:
        return None
    key, text = _WORDED[kind]
    bound = (error.get("ctx") or {}).get(key)
    message = f"{where} " + text.format(bound=shown(bound), value=shown(value))
    return f"{message}: {reason}" if reason and key in ("le", "lt") else message  # reasons are for upper bounds


def _infinite(value: Any) -> bool:
    try:
        return math.isinf(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def shown(number: Any) -> str:
    """A number as a person reads it: 65,536 for large integers, 1e+18 for large floats."""
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        return repr(number)
    if isinstance(number, int):
        return f"{number:,}" if abs(number) >= 10_000 else str(number)
    return f"{number:g}" if abs(number) >= 1e6 else repr(number)


Label = Annotated[int, Field(ge=0, le=32_767), Why("labels are stored as 16-bit integers")]
ForegroundLabel = Annotated[int, Field(ge=1, le=32_767), Why("labels are stored as 16-bit integers; 0 is background")]
LearningRate = Annotated[float, Field(gt=0, le=10), Why("a step this large diverges with every optimizer segflow builds")]
