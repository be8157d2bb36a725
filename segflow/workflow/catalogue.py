"""The node catalogue as text (`segflow nodes`) or Markdown (docs/nodes.md), from the registry."""
from __future__ import annotations

import inspect
import json
import types
import typing
from typing import Any

from pydantic_core import PydanticUndefined

from segflow.nodes import registry
from segflow.nodes.base import Node
from segflow.nodes.words import choice_of


def summary_line(cls: type[Node]) -> str:
    """The first paragraph of a node type's docstring, on one line."""
    paragraph = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
    return " ".join(paragraph.split())


def _type_name(annotation: Any, metadata: tuple = ()) -> str:
    """A field's type as the docs show it, with its range: "int (1 to 65,536)", "list[float (> 0)] | None"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0], (*metadata, *_flat(args[1:])))
    if origin in (typing.Union, types.UnionType):
        # a field's own bounds on an optional value are the value's (pydantic puts them there)
        return " | ".join(_type_name(a, () if a is type(None) else metadata) for a in args)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(map(repr, args)) + "]"
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args if a is not Ellipsis)}]"
    name = "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))
    return name.replace("typing.", "") + _range(metadata)


def _flat(metadata) -> list:
    """Annotated metadata with the constraints inside pydantic FieldInfo objects taken out."""
    return [m for item in metadata for m in (getattr(item, "metadata", None) or [item])]


def _range(metadata) -> str:
    bounds = {type(m).__name__: getattr(m, type(m).__name__.lower()) for m in metadata
              if type(m).__name__ in ("Ge", "Gt", "Le", "Lt")}  # annotated_types' bounds
    shown = {k: (f"{v:,}" if isinstance(v, int) else f"{v:g}") for k, v in bounds.items()}
    if "Ge" in shown and "Le" in shown:
        return f" ({shown['Ge']} to {shown['Le']})"
    parts = [f"{sign} {shown[k]}" for k, sign in (("Ge", "≥"), ("Gt", ">"), ("Le", "≤"), ("Lt", "<")) if k in shown]
    return f" ({', '.join(parts)})" if parts else ""


def _default(field) -> str:
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else json.dumps(field.default_factory(), default=str)
    return json.dumps(field.default, default=str)


def _synonyms(field) -> str:
    """A word field's synonyms, as the description's last sentence (the spelling rule is in
    docs/workflow-format.md)."""
    rule = choice_of(field)
    if rule is None:
        return ""
    said = lambda v: v if isinstance(v, str) and v else json.dumps(v)  # noqa: E731 - "" and true, as JSON
    pairs = [*([("null", rule.null)] if rule.takes_null else []), *rule.synonyms.items()]
    return " Synonyms: " + ", ".join(f"{said(k)} = {said(v)}" for k, v in pairs) + "." if pairs else ""


def fields(cls: type[Node]) -> list[tuple[str, str, str, str, list[str]]]:
    """(key, type, default, description, aliases) for each config field."""
    aliases = cls.Config.aliases
    return [
        (key, _type_name(f.annotation, tuple(f.metadata)), _default(f), (f.description or "") + _synonyms(f),
         [a for a, c in aliases.items() if c == key])
        for key, f in cls.Config.model_fields.items()
    ]


def _ports(ports) -> str:
    def said(p) -> str:
        return f"{p.name}: {p.type}" + ("" if p.required else " (optional)") + \
            (f" (or the {p.fallback} key)" if p.fallback else "")
    return ", ".join(map(said, ports)) or "none"


def _also(cls: type[Node]) -> list[str]:
    """The type's other names and its ports' (the node editor's), as one line or none. Every type also
    answers to <type>Node, which the header says once."""
    said = ([f"also called {', '.join(cls.type_aliases)}"] if cls.type_aliases else []) + \
        ([f"port aliases: {', '.join(f'{a} = {p}' for a, p in cls.port_aliases.items())}"] if cls.port_aliases else [])
    return ["; ".join(said)] if said else []


def describe(cls: type[Node]) -> str:
    lines = [f"{cls.type}  [{cls.family}]", inspect.cleandoc(cls.__doc__ or ""), "",
             f"  inputs:  {_ports(cls.inputs)}", f"  outputs: {_ports(cls.outputs)}",
             *(f"  {line}" for line in _also(cls)), "  config:"]
    for key, typ, default, doc, aliases in fields(cls):
        alias = f" (alias: {', '.join(aliases)})" if aliases else ""
        lines.append(f"    {key}: {typ} = {default}{alias}")
        if doc:
            lines.append(f"        {doc}")
    return "\n".join(lines)


def summary() -> str:
    types = registry.all_types()
    width = max(map(len, types), default=0)
    return "\n".join(f"{name:<{width}}  {summary_line(cls)}" for name, cls in types.items())


def markdown() -> str:
    out = ["# Node reference", "",
           "Generated from the registry by `segflow nodes --format markdown > docs/nodes.md`; a test keeps it current.",
           "Every value may also be given as a string (`\"8\"`, `\"1e-4\"`, `\"true\"`, `\"[0.9, 0.999]\"`).",
           "Words (`Literal[...]` values and synonyms) take any case, and `-` or a space for `_`; see "
           "[workflow-format.md](workflow-format.md#values).",
           "Every type also answers to its name with `Node` appended (`UNet2DNode`), as the node editor's older files "
           "name it; see [workflow-format.md](workflow-format.md#files-from-the-node-editor).", ""]
    by_family: dict[str, list[type[Node]]] = {}
    for cls in registry.all_types().values():
        by_family.setdefault(cls.family, []).append(cls)
    for family, classes in by_family.items():
        out += [f"## {family}", ""]
        for cls in classes:
            out += [f"### {cls.type}", "", inspect.cleandoc(cls.__doc__ or ""), "",
                    f"- inputs: {_ports(cls.inputs)}", f"- outputs: {_ports(cls.outputs)}",
                    *(f"- {line}" for line in _also(cls)), "",
                    "| key | type | default | description |", "|---|---|---|---|"]
            for key, typ, default, doc, aliases in fields(cls):
                alias = f" (alias `{'`, `'.join(aliases)}`)" if aliases else ""
                cell = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
                out.append(f"| `{key}`{alias} | {cell(typ)} | `{cell(default)}` | {cell(doc)} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"
