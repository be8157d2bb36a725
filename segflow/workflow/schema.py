"""The JSON Schema of workflow files, generated from the registry's config models.

Editors use it for completion and hover docs (`"$schema": "../schemas/workflow.schema.json"`),
and CI can check files with any JSON Schema validator. It mirrors what `segflow validate`
accepts: GUI-saved strings for every scalar, the documented aliases, no unknown keys. Checks
that need more than one node (wiring, shapes) are `segflow validate`'s alone.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Callable

from segflow.nodes import registry
from segflow.nodes.base import NodeConfig
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


def _loosen(schema: dict) -> dict:
    """Let `schema` also take the string spelling of each of its non-string types."""
    loose = [_LOOSE_STRING[t] for t in sorted(_json_types(schema)) if t in _LOOSE_STRING]
    if not loose:
        return schema
    outer = {k: schema.pop(k) for k in ("description", "default") if k in schema}
    pattern = r"^\s*(" + "|".join(loose) + r")\s*$"
    return {**outer, "anyOf": [schema, {"type": "string", "pattern": pattern}]}


def _spelling_schemas(config: type[NodeConfig], key: str, schema: dict) -> list[dict]:
    """Schemas for the other spellings of `key` that its before-validators accept ("adamw" for
    "AdamW", "Dice-CE" for "combined", null for fused, "dice, iou" for a list of metrics), found
    by running those validators on variants of the field's words, so that the schema takes what
    `segflow validate` takes."""
    from pydantic import TypeAdapter

    before = [d.func for d in config.__pydantic_decorators__.field_validators.values()
              if d.info.mode == "before" and key in d.info.fields]
    if not before:
        return []
    adapter = TypeAdapter(config.model_fields[key].annotation)

    def accepted(value: Any) -> bool:
        try:
            for validate in before:
                value = validate(value)
            adapter.validate_python(value, strict=True)
        except Exception:  # noqa: BLE001 - any failure means "not this spelling"
            return False
        return True

    enum = [v for v in _enum_values(schema) if isinstance(v, str)]
    synonyms = list(config.spellings.get(key, {}))
    out = [{"type": "null"}] if accepted(None) else []
    pattern, default = schema.get("pattern"), schema.get("default")
    if pattern and isinstance(default, str) and accepted(f" {default.upper()} "):  # free text, matched any case
        return out + [{"type": "string", "pattern": r"^\s*" + _any_case_regex(pattern.strip("^$")) + r"\s*$"}]
    if enum:
        word = _words_regex(enum, synonyms, accepted)
        return out + ([{"type": "string", "pattern": f"^{word}$"}] if word else [])
    array = _array_schema(schema)
    items = [v for v in _enum_values(array.get("items", {})) if isinstance(v, str)]
    if not items:
        return out
    # a list of words: its items' spellings, and the list written as one string ("dice, iou")
    word = _words_regex(items, synonyms, lambda w: accepted([w]))
    if word:
        out.append({"type": "array", "items": {"type": "string", "pattern": f"^{word}$"},
                    **{k: array[k] for k in ("minItems", "maxItems") if k in array}})
    word = word or f"({'|'.join(map(re.escape, items))})"
    if accepted(f"{items[0]}, {items[-1]}"):
        out.append({"type": "string", "pattern": rf"^\s*{word}(\s*,\s*{word})*\s*$"})
    elif accepted(items[0]):
        out.append({"type": "string", "pattern": rf"^\s*{word}\s*$"})
    return out


def _words_regex(enum: list[str], synonyms: list[str], accepted: Callable[[str], bool]) -> str | None:
    """A regex group for the spellings of `enum` (and the `synonyms`) that `accepted` takes: each
    word in any case, padded, with - or space for _, as far as every word is accepted so; None when
    nothing beyond the enum's own words is."""
    words = [w for w in dict.fromkeys(enum + synonyms) if accepted(w)]
    if not words:
        return None
    any_case = all(accepted(f(w)) for w in words for f in (str.lower, str.upper, str.title))
    padded = all(accepted(f" {w} ") for w in words)
    joined = [w for w in words if "_" in w]
    seps = "".join(c for c in "- " if joined and all(accepted(w.replace("_", c)) for w in joined))
    if not (any_case or padded or seps or len(words) > len(enum)):
        return None

    def spell(word: str) -> str:
        parts = []
        for ch in word:
            if ch == "_" and seps:
                parts.append("[" + "-" * ("-" in seps) + "_" + " " * (" " in seps) + "]")  # "-" first: not a range
            elif any_case and ch.lower() != ch.upper():
                parts.append(f"[{ch.lower()}{ch.upper()}]")
            else:
                parts.append(re.escape(ch))
        return "".join(parts)

    space = r"\s*" if padded else ""
    return f"{space}({'|'.join(spell(w) for w in words)}){space}"


def _any_case_regex(pattern: str) -> str:
    """`pattern` with each literal letter as [xX] (escapes such as \\d and character classes kept)."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        in_class = (in_class or ch == "[") and ch != "]"
        out.append(f"[{ch.lower()}{ch.upper()}]" if not in_class and ch.lower() != ch.upper() else ch)
        i += 1
    return "".join(out)


def _array_schema(schema: dict) -> dict:
    """The (first) array type among `schema` and its unions, or {}."""
    if schema.get("type") == "array":
        return schema
    return next((a for sub in schema.get("anyOf", []) if (a := _array_schema(sub))), {})


def _enum_values(schema: dict) -> list:
    values = list(schema.get("enum", [])) + ([schema["const"]] if "const" in schema else [])
    for sub in schema.get("anyOf", []) + schema.get("oneOf", []):
        values += _enum_values(sub)
    return values


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
        extra = _spelling_schemas(config, key, sub)
        if extra:
            outer = {k: sub.pop(k) for k in ("description", "default") if k in sub}
            sub = {**outer, "anyOf": [sub, *extra]}
        props[key] = _loosen(sub)  # files saved by the node-graph editor carry every value as a string
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
    variants = []
    for type_name, cls in types.items():
        doc = summary_line(cls)
        variants.append({
            "if": {"properties": {"type": {"const": type_name}}, "required": ["type"]},
            "then": {"properties": {"config": {"description": doc, **config_schema(type_name, cls.Config, defs)}}},
        })
    node = {
        "type": "object",
        "properties": {
            "type": {"enum": list(types), "description": "Node type (see `segflow nodes`)."},
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
