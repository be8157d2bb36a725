"""Pydantic's errors about one node's config, turned into what `segflow validate` reports.

pydantic reports a value that fits no member of a union once per member, under the member's
tag ("image_size.constrained-int", "image_size.list[constrained-int][1]"). A person wrote one
value, so one error is kept: the one from the member shaped like what was written (a list for a
list, a number for a number), at the path the file has, without the tags. Range errors are
worded with the bound and its reason (segflow.nodes.bounds).
"""
from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from segflow.nodes.bounds import annotation_parts, bound_message, shown, why

# pydantic's names of union members: type words, "constrained-int", "list[int]", class names
_TAG = re.compile(r"^([a-z]+-[\w-]+|[\w-]+\[.*\]|int|float|str|bool|none|bytes|dict|list|tuple|set|[A-Z]\w*)$")
_TYPE_MISMATCH = re.compile(r"_(type|parsing)$|^literal_error$|^(enum|is_instance_of)$")


@dataclass(frozen=True)
class ConfigError:
    code: str
    message: str
    loc: tuple  # the path inside `config`, as the file has it
    hint: str = ""
    key: bool = False  # about the key itself (unknown key), not its value


def config_errors(config_cls: Any, node_type: str, errors: list[dict], written_as: dict[str, str],
                  raw: dict, known: list[str], suggest) -> list[ConfigError]:
    """The errors to report for one config: unknown keys, missing ones, and one error per value."""
    def describe(key) -> str:  # the field's own documentation is the most useful hint
        field = config_cls.model_fields.get(key)
        return (field.description or "") if field else ""
    found: list[ConfigError] = []
    for err in _one_per_value(errors, raw, written_as, config_cls):
        loc = tuple(err["loc"])
        if loc:
            loc = (written_as.get(loc[0], loc[0]),) + loc[1:]
        if err["type"] == "extra_forbidden":
            found.append(ConfigError("unknown_key", f"unknown key {loc[0]!r} for {node_type}", loc, key=True,
                                     hint=suggest(str(loc[0]), known) or f"see `segflow nodes {node_type}` for its keys"))
        elif err["type"] == "missing" and len(loc) == 1:
            found.append(ConfigError("missing_value", f"required key {loc[0]!r} is missing", (), describe(loc[0])))
        elif err["type"] == "missing":  # a list or tuple one item short: "[0.9]" for betas
            found.append(ConfigError("bad_value", f"{loc[0]!r} has too few items: nothing at position {loc[1]} "
                                     f"(got {raw.get(loc[0])!r})", loc[:1], describe(loc[0])))
        else:
            found.append(ConfigError("bad_value", _value_message(err, loc, config_cls), loc,
                                     describe(err["loc"][0]) if loc else ""))
    return found


def _value_message(err: dict, loc: tuple, config_cls: Any) -> str:
    where = loc[0] + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:]) if loc else "config"
    worded = bound_message(err, str(where), why(_field_at(config_cls, err["loc"])))
    if worded:
        return worded
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if loc and not isinstance(value, (dict, list)) and repr(value) not in msg and shown(value) not in msg:
        msg += f" (got {value!r})"
    return msg


def _field_at(config_cls: Any, loc: tuple) -> Any:
    """The pydantic field a path ends in, through lists and nested models (param_groups[0].learning_rate)."""
    model, field = config_cls, None
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            break
        field = fields[part]
        model = next((t for t in annotation_parts(field.annotation) if hasattr(t, "model_fields")), None)
    return field


def _one_per_value(errors: list[dict], raw: dict, written_as: dict[str, str], config_cls: Any) -> list[dict]:
    """pydantic's errors with union tags taken out of their paths, keeping for each key only the
    errors of the union member shaped like the value written there."""
    by_key: dict[Any, list[dict]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        union = _is_union(config_cls, loc[0]) if loc else False
        tags = [part for i, part in enumerate(loc) if _is_tag(loc, i, union)]
        plain = tuple(part for i, part in enumerate(loc) if not _is_tag(loc, i, union))
        by_key.setdefault(plain[:1], []).append({**err, "loc": plain, "tag": tags[0] if tags else ""})
    kept: list[dict] = []
    for key, errs in by_key.items():
        if len({e["tag"] for e in errs}) <= 1:
            kept.extend(errs)
            continue
        value = raw.get(written_as.get(key[0], key[0])) if key else None
        kept.extend(_member_errors(errs, value))
    return kept


def _is_tag(loc: tuple, i: int, union: bool) -> bool:
    """A union member's tag: a type-like word right after the key of a union field (not a dict's
    key: a region called "Tumor"), or right after a list index."""
    return (i >= 1 and isinstance(loc[i], str) and _TAG.match(loc[i]) is not None
            and (union if i == 1 else isinstance(loc[i - 1], int)))


def _is_union(config_cls: Any, key: Any) -> bool:
    """Whether the field is a union of two or more kinds of value besides null."""
    field = getattr(config_cls, "model_fields", {}).get(key)
    annotation = getattr(field, "annotation", None)
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return False
    return len([a for a in typing.get_args(annotation) if a is not type(None)]) >= 2


def _member_errors(errs: list[dict], value: Any) -> list[dict]:
    """The errors of the members shaped like `value`; among those, the ones about the value's
    range or content rather than its type, when there are such."""
    def shaped(e: dict) -> bool:
        tag = e["tag"]
        if isinstance(value, (list, tuple)):
            return tag.startswith(("list", "tuple"))
        if isinstance(value, dict):
            return tag.startswith("dict")
        return not tag.startswith(("list", "tuple", "dict"))
    fitting = [e for e in errs if shaped(e)] or errs
    telling = [e for e in fitting if not _TYPE_MISMATCH.search(e["type"])]
    if telling:
        return telling
    if len(fitting) > 1:  # the value fits no member: say what it may be, once
        first, *others = dict.fromkeys(e["msg"] for e in fitting)
        return [{**fitting[0], "msg": ", or ".join([first, *(m.removeprefix("Input should be ") for m in others)])}]
    return fitting
