"""Node types by name.

Built-in node families are imported from `segflow.nodes.*`; third-party packs register through
the `segflow.nodes` entry-point group, which a user installs deliberately. Nothing named in a
workflow file is ever imported: a file can only pick among registered types.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from segflow.nodes.base import Node

BUILTIN_FAMILIES = ("data", "networks", "losses", "optim", "training", "inference", "evaluation", "export")
ENTRY_POINT_GROUP = "segflow.nodes"

_types: dict[str, type[Node]] = {}
_loaded = False


def register(cls: type[Node]) -> type[Node]:
    """Class decorator: make a node type available to workflows under `cls.type`."""
    existing = _types.get(cls.type)
    if existing is not None and existing is not cls:
        raise ValueError(f"node type {cls.type!r} is registered twice ({existing.__module__} and {cls.__module__})")
    _types[cls.type] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for family in BUILTIN_FAMILIES:
        try:
            importlib.import_module(f"segflow.nodes.{family}")
        except ModuleNotFoundError as e:  # a family not written yet
            if e.name != f"segflow.nodes.{family}":
                raise
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()  # the module registers its types with @register on import


def get(type_name: str) -> type[Node] | None:
    _load()
    return _types.get(type_name)


def all_types() -> dict[str, type[Node]]:
    _load()
    return dict(sorted(_types.items()))
