"""Kept so that third-party node packs can go on writing `from segflow.registry import register`;
the registry lives in `segflow.nodes.registry`."""
from segflow.nodes.registry import BUILTIN_FAMILIES, ENTRY_POINT_GROUP, all_types, get, register

__all__ = ["BUILTIN_FAMILIES", "ENTRY_POINT_GROUP", "all_types", "get", "register"]
