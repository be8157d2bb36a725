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


def aliases(types: dict[str, type[Node]] | None = None) -> dict[str, str]:
    """Other names of node types -> the type: each type's `type_aliases`, and `<type>Node` (the class
    name the node editor's older files carry). Of `types`, or of the registry."""
    types = all_types() if types is None else types
    found: dict[str, str] = {}
    for name, cls in types.items():
        for alias in (*cls.type_aliases, f"{name}Node"):
            if alias not in types:
                found.setdefault(alias, name)
    return found


def resolve(type_name: str, types: dict[str, type[Node]] | None = None) -> type[Node] | None:
    """The node type `type_name` names, directly or through an alias."""
    types = all_types() if types is None else types
    return types.get(type_name) or types.get(aliases(types).get(type_name, ""))
