"""The JSON Schema of workflow files, generated from the registry's config models.

Editors use it for completion and hover docs (`"$schema": "../schemas/workflow.schema.json"`),
and CI can check files with any JSON Schema validator. It mirrors what `segflow validate`
accepts: GUI-saved strings for every scalar, every spelling of a word value (read from each
field's `Choice`, see segflow.nodes.words), the documented aliases, no unknown keys. Checks
that need more than one node (wiring, shapes) are `segflow validate`'s alone.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from segflow.nodes import registry, words
from segflow.nodes.base import NodeConfig
from segflow.nodes.words import choice_of
from segflow.workflow.catalogue import summary_line
from segflow.workflow.spec import LINK_KEYS

SCHEMA_ID = "https://segflow.dev/schemas/workflow.schema.json"
DEFAULT_PATH = Path("schemas/workflow.schema.json")

_POSITION = {
    "description": "Editor canvas position, kept for round-trips and ignored by the engine.",
    "anyOf": [
        {"type": "array", "items": {"type": ["number", "string"]}, "minItems": 2, "maxItems": 2},
        {"type": "object", "properties": {"x": {"type": ["number", "string"]}, "y": {"type": ["number", "string"]}},
         "required": ["x", "y"], "additionalProperties": False},
    ],
}
_EDITOR_FLAG = {"type": ["boolean", "string"], "description": "Editor flag, ignored by the engine."}


# What a GUI-saved string may look like for each JSON type it stands in for (what NodeConfig
# and pydantic's lax mode coerce), so the schema accepts "8" for an integer but not "eight".
_LOOSE_STRING = {
    "integer": r"[-+]?[0-9]+",
    "number": r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|[-+]?(inf|Infinity)|NaN|nan",
    "boolean": "[Tt]rue|TRUE|[Ff]alse|FALSE|[Yy]es|YES|[Nn]o|NO|[Oo]n|ON|[Oo]ff|OFF|[YyNnTtFf]|1|0",
    "array": r"\[[\s\S]*\]",
    "object": r"\{[\s\S]*\}",
    "null": "null|None|none",
}


def _json_types(schema: dict) -> set[str]:
    """The JSON types a (sub)schema admits, looking through unions and enums."""
    if "$ref" in schema:
        return {"object"}
    found: set[str] = set()
    kind = schema.get("type")
    found.update([kind] if isinstance(kind, str) else kind or [])
    for value in schema.get("enum", []) + ([schema["const"]] if "const" in schema else []):
        found.add({bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null",
                   list: "array", dict: "object"}[type(value)])
    for sub in schema.get("anyOf", []) + schema.get("oneOf", []):
        found |= _json_types(sub)
    return found


def _loose_branches(schema: dict) -> list[dict]:
    """The string spellings of `schema`'s non-string types, as a schema (none when it has none)."""
    loose = [_LOOSE_STRING[t] for t in sorted(_json_types(schema)) if t in _LOOSE_STRING]
    return [{"type": "string", "pattern": r"^\s*(" + "|".join(loose) + r")\s*$"}] if loose else []


def _word_branches(field: FieldInfo) -> list[dict]:
    """What a word field (one declared with a `Choice`) takes beyond its canonical words: every
    spelling the fold rule allows, read from the Choice's own data (see segflow.nodes.words)."""
    rule = choice_of(field)
    if rule is None:
        return []
    word = words.spelling_pattern(rule.table(field.annotation))
    out = [{"type": "null"}] if rule.takes_null else []
    if not words.holds_list(field.annotation):
        return out + [{"type": "string", "pattern": f"^{word}$"}]
    sizes = {key: getattr(m, name) for m in field.metadata
             for name, key in (("min_length", "minItems"), ("max_length", "maxItems")) if hasattr(m, name)}
    return out + [{"type": "array", "items": {"type": "string", "pattern": f"^{word}$"}, **sizes},
                  {"type": "string", "pattern": f"^{word}(?:,{word})*$"}]  # "dice, iou", as validate splits it


def _property(config: type[NodeConfig], key: str, schema: dict) -> dict:
    """A config key's schema: pydantic's, plus the string forms `segflow validate` also takes."""
    field = config.model_fields[key]
    outer = {k: schema.pop(k) for k in ("description", "default") if k in schema}
    own = schema["anyOf"] if set(schema) == {"anyOf"} else [schema]  # a union's branches, side by side
    branches = [*own, *_loose_branches(schema), *_word_branches(field)]
    return {**outer, **(branches[0] if len(branches) == 1 else {"anyOf": branches})}


def _rename_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, dict):
        return {k: (v.replace("#/$defs/", f"#/$defs/{prefix}") if k == "$ref" else _rename_refs(v, prefix))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_rename_refs(v, prefix) for v in node]
    return node


def config_schema(type_name: str, config: type[NodeConfig], defs: dict) -> dict:
    raw = _rename_refs(config.model_json_schema(), f"{type_name}.")
    for name, sub in raw.pop("$defs", {}).items():
        defs[f"{type_name}.{name}"] = sub
    props = {}
    for key, sub in raw.get("properties", {}).items():
        sub.pop("title", None)
        props[key] = _property(config, key, sub)
    for alias, canonical in config.aliases.items():
        if canonical in props:
            alias_schema = copy.deepcopy(props[canonical])
            alias_schema["description"] = f"Alias of '{canonical}'."
            alias_schema.pop("default", None)
            props[alias] = alias_schema
    out = {"type": "object", "properties": props, "additionalProperties": False}
    if raw.get("required"):
        # A required key may also be given through its alias.
        names = {c: [c] + [a for a, t in config.aliases.items() if t == c] for c in raw["required"]}
        out["allOf"] = [{"anyOf": [{"required": [n]} for n in alts]} for alts in names.values()]
    return out


def build_schema() -> dict:
    defs: dict[str, Any] = {}
    types = registry.all_types()
    aliases = registry.aliases(types)
    variants = []
    for type_name, cls in types.items():
        doc = summary_line(cls)
        names = [type_name, *(a for a, t in aliases.items() if t == type_name)]
        variants.append({
            "if": {"properties": {"type": {"enum": names}}, "required": ["type"]},
            "then": {"properties": {"config": {"description": doc, **config_schema(type_name, cls.Config, defs)}}},
        })
    node = {
        "type": "object",
        "properties": {
            "type": {"enum": [*types, *aliases], "description": "Node type (see `segflow nodes`); the node "
                     "editor's names are aliases."},
            "name": {"type": "string", "minLength": 1, "description": "Unique node name, used in links and --set."},
            "config": {"type": "object", "description": "The node's settings."},
            "position": _POSITION,
            "is_composite": _EDITOR_FLAG,
            "collapsed": _EDITOR_FLAG,
        },
        "required": ["type", "name"],
        "additionalProperties": False,
        "allOf": variants,
    }
    link = {
        "type": "object",
        "properties": {k: {"type": "string", "minLength": 1} for k in LINK_KEYS},
        "required": list(LINK_KEYS),
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "segflow workflow",
        "description": "A segflow workflow: typed nodes, optional links (inputs not linked are auto-wired by type).",
        "type": "object",
        "properties": {
            "$schema": {"type": "string"},
            "workflow": {"type": "string", "minLength": 1, "description": "The workflow's name (runs/<name>/...)."},
            "name": {"type": "string", "minLength": 1, "description": "Alias of 'workflow'."},
            "description": {"type": "string"},
            "seed": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 4294967295},
                              {"type": "string", "pattern": "^\\s*[0-9]+\\s*$"}],
                     "default": 0, "description": "Seeds python/numpy/torch before the first node runs."},
            "version": {"type": ["string", "number"]},
            "nodes": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/node"}},
            "links": {"type": "array", "items": {"$ref": "#/$defs/link"}},
        },
        "required": ["nodes"],
        "additionalProperties": False,
        "$defs": {"node": node, "link": link, **dict(sorted(defs.items()))},
    }


def render() -> str:
    return json.dumps(build_schema(), indent=2) + "\n"
