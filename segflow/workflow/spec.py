"""The workflow file: reading, aliases, coercion, validation and wiring, with located errors.

`load(path)` returns a validated, wired `Workflow` or raises one `WorkflowError` listing every
problem found (JSON path, line:column, stable code, hint). Imports no torch or monai.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import networkx as nx
from pydantic import ValidationError

from segflow.nodes import editor, registry
from segflow.nodes.base import Finding, Node, NodeConfig, Port
from segflow.workflow import jsonpos
from segflow.workflow.config_errors import config_errors
from segflow.workflow.errors import ConfigValueError, Issue, WorkflowError
from segflow.workflow.graph import Wire, execution_order, fits, wire

TOP_KEYS = ("$schema", "workflow", "description", "seed", "nodes", "links", "version")
TOP_ALIASES = {"name": "workflow"}
NODE_KEYS = ("type", "name", "config", "position", "is_composite", "collapsed")
LINK_KEYS = ("source_node", "source_port", "target_node", "target_port")
PORT_ALIASES = {"dataloader": "train_loader", "test_loader": "val_loader"}
# A seed saved as a string ("42"), as the schema's pattern says: ASCII digits only ("²" passes
# str.isdigit but int() refuses it); past ten significant digits it is out of range anyway.
_DIGITS = re.compile(r"\s*0*([0-9]{1,10})\s*")


@dataclass
class NodeSpec:
    index: int
    name: str
    type: str
    cls: type[Node]
    config: NodeConfig


@dataclass
class Workflow:
    name: str
    description: str
    nodes: dict[str, NodeSpec]  # in file order
    wires: list[Wire]
    graph: nx.DiGraph
    warnings: list[Issue] = field(default_factory=list)
    file: str | None = None
    raw: dict = field(default_factory=dict)
    positions: jsonpos.Positions = field(default_factory=jsonpos.Positions)
    seed: int = 0  # seeds python/numpy/torch before the first node, so weight init repeats

    def issue(self, finding: Finding, node: NodeSpec) -> Issue:
        """A node's finding as a located issue in this workflow's file."""
        path = finding_path(node.index, finding.field)
        line, column = self.positions.of(path, key=bool(finding.field)) or (None, None)
        return Issue(finding.code, finding.message, jsonpos.format_path(path), node.name, line, column,
                     finding.hint, finding.severity, self.file)

    def config_issue(self, error: ConfigValueError, node: NodeSpec) -> Issue:
        """A config value that only running could judge (raised by an implementation), located like a finding."""
        return self.issue(Finding(error.field, error.code, error.message, error.hint), node)

    def order(self, until: str | None = None) -> list[str]:
        return execution_order(self.graph, list(self.nodes), until)

    def inputs_of(self, name: str) -> list[Wire]:
        return [w for w in self.wires if w.target == name]

    def resolved(self) -> dict:
        """The workflow with every default filled in and every link explicit."""
        out: dict[str, Any] = {"workflow": self.name}
        if self.description:
            out["description"] = self.description
        out["seed"] = self.seed
        out["nodes"] = [
            {"type": n.type, "name": n.name, "config": n.config.model_dump(mode="json")} for n in self.nodes.values()
        ]
        out["links"] = [
            {"source_node": w.source, "source_port": w.source_port, "target_node": w.target,
             "target_port": w.target_port, **({"auto": True} if w.auto else {})}
            for w in self.wires
        ]
        return out


def finding_path(index: int, field: str) -> tuple:
    """Where a node's finding points: "checkpoint_path[1]" -> (..., "config", "checkpoint_path", 1),
    so its line and column are those of the item, not of the whole config."""
    parts: list = []
    for name, item in re.findall(r"([^.\[\]]+)|\[(\d+)\]", field):
        parts.append(name or int(item))
    return ("nodes", index, "config", *parts)


def suggest(word: str, choices) -> str:
    choices = [c for c in choices if c != word]  # never the very word refused
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[word.lower()]] if word.lower() in lowered else []
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def parse_set(item: str) -> tuple[str, str, Any]:
    """`trainer.epochs=2` -> ("trainer", "epochs", 2). Values are JSON where they parse."""
    target, sep, text = item.partition("=")
    node, dot, key = target.partition(".")
    if not sep or not dot or not node or not key:
        raise WorkflowError([Issue("bad_override", f"--set {item!r} is not NODE.KEY=VALUE", path="--set",
                                   hint="for example --set trainer.epochs=2")])
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # not JSON (or nested past Python's limit): the text itself
        value = text
    return node, key, value


class _Checker:
    """Collects issues while checking one file."""

    def __init__(self, file: str | None, positions: jsonpos.Positions):
        self.file = file
        self.positions = positions
        self.issues: list[Issue] = []
        self.overridden: set[tuple] = set()

    def add(self, code: str, message: str, path: tuple = (), *, node: str | None = None, hint: str = "",
            key: bool = False, severity: str = "error") -> None:
        where = self.positions.of(path, key=key)
        shown = jsonpos.format_path(path)
        if tuple(path[:4]) in self.overridden:
            shown += " (from --set)"
        self.issues.append(Issue(code, message, shown, node, *(where or (None, None)), hint=hint,
                                 severity=severity, file=self.file))

    def unknown_keys(self, obj: dict, allowed, path: tuple, what: str, node: str | None = None) -> None:
        for k in obj:
            if k not in allowed:
                self.add("unknown_key", f"unknown key {k!r} in {what}", path + (k,), node=node,
                         hint=suggest(k, allowed) or f"allowed keys: {', '.join(allowed)}", key=True)

    def string_field(self, obj: dict, k: str, path: tuple, node: str | None = None) -> str | None:
        if k not in obj:
            self.add("missing_value", f"required key {k!r} is missing", path, node=node)
            return None
        if not isinstance(obj[k], str) or not obj[k]:
            self.add("bad_value", f"{k!r} must be a non-empty string, got {obj[k]!r}", path + (k,), node=node)
            return None
        return obj[k]


def _node_config(chk: _Checker, cls: type[Node], raw: Any, path: tuple, name: str) -> NodeConfig | None:
    cpath = path + ("config",)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        chk.add("bad_value", f"'config' must be an object, got {type(raw).__name__}", cpath, node=name)
        return None
    data, written_as = {}, {}
    for k, v in raw.items():
        canon = cls.Config.aliases.get(k, k)
        if canon in data:
            chk.add("duplicate_key", f"{written_as[canon]!r} and {k!r} both set {canon!r}", cpath + (k,), node=name,
                    hint=f"keep only {canon!r}", key=True)
            continue
        data[canon], written_as[canon] = v, k
    try:
        return cls.Config(**data)
    except ValidationError as e:
        known = [*cls.Config.model_fields, *cls.Config.aliases]
        for err in config_errors(cls.Config, cls.type, e.errors(), written_as, raw, known, suggest):
            chk.add(err.code, err.message, cpath + err.loc, node=name, hint=err.hint, key=err.key)
        return None


def _position_ok(value: Any) -> bool:
    nums = (int, float, str)
    if isinstance(value, list):
        return len(value) == 2 and all(isinstance(v, nums) for v in value)
    if isinstance(value, dict):
        return set(value) == {"x", "y"} and all(isinstance(v, nums) for v in value.values())
    return False


def _node_list(doc: dict) -> list:
    return doc["nodes"] if isinstance(doc.get("nodes"), list) else []


def _node_indices(doc: dict) -> dict[str, int]:
    """Each node name's index in the file's node list (the last one where a name repeats); a name
    that is not a string (a list, a number) names no node and has its own error."""
    return {n["name"]: i for i, n in enumerate(_node_list(doc))
            if isinstance(n, dict) and isinstance(n.get("name"), str)}


def _apply_sets(chk: _Checker, doc: dict, sets) -> None:
    nodes = _node_list(doc)
    by_name = _node_indices(doc)
    for item in sets:
        node, key, value = parse_set(item)
        if node not in by_name:
            chk.issues.append(Issue("unknown_node", f"--set {item!r}: no node named {node!r}", "--set", node,
                                    hint=suggest(node, by_name) or f"nodes: {', '.join(by_name)}",
                                    file=chk.file))
            continue
        i = by_name[node]
        config = nodes[i].setdefault("config", {})
        if isinstance(config, dict):
            config[key] = value
            chk.overridden.add(("nodes", i, "config", key))


def loads(text: str, file: str | None = None, sets=(), types: dict[str, type[Node]] | None = None) -> Workflow:
    """Validate and wire a workflow given as text. `types` replaces the registry (tests, tools).

    Each phase records its problems and carries on, so one `WorkflowError` lists every problem in
    the file that does not follow from another one; only text that is not a JSON object stops at once."""
    doc, chk = _parse(text, file, sets)
    name, description, seed = _header(chk, doc, file)
    found = _nodes(chk, doc, registry.all_types() if types is None else types)
    explicit = _links(chk, doc, found)
    wires, graph = _wiring(chk, found, explicit)
    _node_checks(chk, found, wires)
    chk.issues.sort(key=lambda i: (i.line or 0, i.column or 0))  # in file order, whichever phase found them
    if any(i.severity == "error" for i in chk.issues):
        raise WorkflowError(chk.issues)
    warnings = [i for i in chk.issues if i.severity != "error"]
    return Workflow(name, description, found.specs, wires, graph, warnings, file, doc, chk.positions, seed)


def _parse(text: str, file: str | None, sets) -> tuple[dict, _Checker]:
    """The JSON object with the --set overrides applied, and a checker holding its duplicate keys."""
    try:
        doc, positions = jsonpos.loads(text)
    except jsonpos.JSONSyntaxError as e:
        raise WorkflowError([Issue("json_syntax", e.message, "", None, e.line, e.column,
                                   hint="the file is not valid JSON", file=file)]) from None
    chk = _Checker(file, positions)
    for dup in positions.duplicates:
        chk.add("duplicate_key", f"key {dup[-1]!r} appears twice in one object; JSON keeps only the last",
                dup, key=True)
    if not isinstance(doc, dict):
        chk.add("bad_value", "a workflow file must hold a JSON object", ())
        raise WorkflowError(chk.issues)
    _apply_sets(chk, doc, sets)
    return doc, chk


def _header(chk: _Checker, doc: dict, file: str | None) -> tuple[str, str, int]:
    """The top-level keys: (name, description, seed), each falling back to its default when bad."""
    for alias, canon in TOP_ALIASES.items():
        if alias in doc:
            if canon in doc:
                chk.add("duplicate_key", f"both {alias!r} and {canon!r} given", (alias,), key=True,
                        hint=f"keep only {canon!r}")
            else:
                doc[canon] = doc[alias]
    chk.unknown_keys({k: v for k, v in doc.items() if k not in TOP_ALIASES}, TOP_KEYS, (), "the workflow")
    name = doc.get("workflow")
    if name is None:
        name = Path(file).stem if file else "workflow"
    elif not isinstance(name, str) or not name.strip():
        chk.add("bad_value", "'workflow' must be a non-empty string", ("workflow",))
        name = "workflow"
    seed = doc.get("seed", 0)
    if isinstance(seed, str) and (digits := _DIGITS.fullmatch(seed)):
        seed = int(digits[1])
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        chk.add("bad_value", f"'seed' must be a whole number from 0 to 2**32 - 1, got {seed!r}", ("seed",))
        seed = 0
    description = doc.get("description") or ""
    if not isinstance(description, str):
        chk.add("bad_value", f"'description' must be a string, got {type(description).__name__}", ("description",))
        description = ""
    return name, description, seed


@dataclass
class _Nodes:
    """What the node phase found."""

    specs: dict[str, NodeSpec] = field(default_factory=dict)  # nodes whose config is valid, in file order
    classes: dict[str, type[Node]] = field(default_factory=dict)  # every well-typed node, even if its config is bad
    named: dict[str, int] = field(default_factory=dict)  # every node name written, well-typed or not: its first index
    dropped: bool = False  # a node left out of wiring (unknown type, clashing name) may be a missing producer
    unsure: set[str] = field(default_factory=set)  # nodes whose inputs are in doubt: a link into them was refused,
    # or wiring could not settle one; their checks against what feeds them wait for the fix
    keys: dict[str, set[str]] = field(default_factory=dict)  # the config keys each node sets (aliases renamed)


def _nodes(chk: _Checker, doc: dict, known_types: dict[str, type[Node]]) -> _Nodes:
    """Every node's type, name, position and config, checked one node at a time."""
    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        chk.add("missing_value" if raw_nodes is None else "bad_value", "'nodes' must be a non-empty list of nodes",
                ("nodes",))
        raw_nodes = []
    found = _Nodes()
    for i, raw in enumerate(raw_nodes):
        _node(chk, i, raw, known_types, found)
    return found


def _node(chk: _Checker, i: int, raw: Any, known_types: dict[str, type[Node]], found: _Nodes) -> None:
    """Check nodes[i] and add it to `found` as far as it goes: its class once its type is known, its
    spec once its config validates too."""
    path = ("nodes", i)
    if not isinstance(raw, dict):
        chk.add("bad_value", "each node must be an object with 'type', 'name' and 'config'", path)
        return
    node_name = chk.string_field(raw, "name", path)
    chk.unknown_keys(raw, NODE_KEYS, path, "a node", node=node_name)
    type_name = chk.string_field(raw, "type", path, node=node_name)
    if "position" in raw and not _position_ok(raw["position"]):
        chk.add("bad_value", "'position' must be [x, y] or {\"x\": ..., \"y\": ...}", path + ("position",),
                node=node_name)
    clash = node_name in found.named
    if clash:
        chk.add("duplicate_node_name", f"two nodes are named {node_name!r}", path + ("name",), node=node_name,
                hint="node names must be unique; rename one")
    if node_name is not None:
        found.named.setdefault(node_name, i)
    if type_name is None:
        return
    cls = registry.resolve(type_name, known_types)
    if cls is None:
        if type_name in editor.BUILDING_BLOCKS:
            chk.add("editor_building_block", editor.BLOCK_MESSAGE.format(type=type_name), path + ("type",),
                    node=node_name, hint=editor.BUILDING_BLOCKS[type_name])
        else:
            chk.add("unknown_node_type", f"unknown node type {type_name!r}", path + ("type",), node=node_name,
                    hint=suggest(type_name, known_types) or "`segflow nodes` lists the node types")
        found.dropped = True
        return
    config = _node_config(chk, cls, raw.get("config"), path, node_name)  # its own mistakes, even when renamed
    if config is not None and editor.from_editor(raw, type_name, cls.type):
        for f in editor.saved_node_findings(cls.type, config):
            chk.add(f.code, f.message, finding_path(i, f.field), node=node_name, hint=f.hint, severity=f.severity,
                    key=True)
    if clash or node_name is None:
        found.dropped = True
        return
    found.classes[node_name] = cls
    if isinstance(raw.get("config"), dict):
        found.keys[node_name] = {cls.Config.aliases.get(k, k) for k in raw["config"]}
    if config is not None:
        found.specs[node_name] = NodeSpec(i, node_name, cls.type, cls, config)


def _links(chk: _Checker, doc: dict, found: _Nodes) -> list[Wire]:
    """The explicit links that join existing ports of fitting types. The target of a link refused
    is marked unsure: what feeds it is not known until the link is fixed."""
    raw_links = doc.get("links", [])
    if not isinstance(raw_links, list):
        chk.add("bad_value", "'links' must be a list", ("links",))
        return []
    wires: list[Wire] = []
    targets: dict[tuple[str, str], Wire] = {}  # (node, input) -> the link feeding it
    for i, link in enumerate(raw_links):
        wire = _link(chk, ("links", i), link, found, targets)
        if wire is _REPEATED:
            continue
        if wire is not None:
            wires.append(wire)
        elif isinstance(link, dict) and isinstance(link.get("target_node"), str):
            found.unsure.add(link["target_node"])
    return wires


# A link that repeats an earlier one under other port names: the node editor links a predictor's
# images, labels and predictions apart, which are one prediction set here (`_link`).
_REPEATED = Wire("", "", "", "")


def _link(chk: _Checker, path: tuple, link: Any, found: _Nodes, targets: dict[tuple[str, str], Wire]) -> Wire | None:
    """links[i] as a wire, or None with the reason recorded (none when an end's node has its own error);
    `_REPEATED` for a link that, through port aliases, says again what an earlier one says."""
    if not isinstance(link, dict):
        chk.add("bad_value", "each link must be an object", path)
        return None
    chk.unknown_keys(link, LINK_KEYS, path, "a link")
    ends = {k: chk.string_field(link, k, path) for k in LINK_KEYS}
    if None in ends.values():
        return None
    source, target = ends["source_node"], ends["target_node"]
    if source == target:
        chk.add("cycle", f"the link feeds {source!r} its own output", path, node=source,
                hint="a node cannot depend on its own output; remove this link")
        return None
    src, dst = _link_port(chk, path, ends, "source", found), _link_port(chk, path, ends, "target", found)
    if src is None or dst is None:
        return None
    if not fits(src.type, dst):
        chk.add("port_type_mismatch", f"{source}.{src.name} gives a {src.type}, but {target}.{dst.name} "
                f"takes {' or '.join(dst.types)}", path, node=target)
        return None
    key = (target, dst.name)
    earlier = targets.get(key)
    if earlier is not None:
        aliased = (src.name, dst.name) != (ends["source_port"], ends["target_port"])
        if aliased and (earlier.source, earlier.source_port) == (source, src.name):
            return _REPEATED
        chk.add("input_linked_twice", f"input {target}.{dst.name} is already fed by links[{earlier.link_index}]",
                path, node=target, hint="an input takes exactly one link")
        return None
    targets[key] = Wire(source, src.name, target, dst.name, link_index=path[1])
    return targets[key]


def _link_port(chk: _Checker, path: tuple, ends: dict[str, str], side: str, found: _Nodes) -> Port | None:
    """The port one end of a link names, or None with the reason recorded. A node that is in the
    file but was left out (unknown type, clashing name) has its own error; its links add none."""
    node, port_name = ends[f"{side}_node"], ends[f"{side}_port"]
    cls = found.classes.get(node)
    if cls is None:
        if node not in found.named:
            chk.add("unknown_link_node", f"link {side} {node!r} is not a node in this workflow",
                    path + (f"{side}_node",), hint=suggest(node, found.named))
        return None
    kind = "output" if side == "source" else "input"
    find = cls.output if side == "source" else cls.input
    port = find(port_name) or find(PORT_ALIASES.get(port_name, ""))
    if port is not None:
        return port
    advice = editor.tensor_port_advice(cls.type, cls.family, kind, port_name)
    if advice:
        chk.add("tensor_port", editor.TENSOR_MESSAGE.format(type=cls.type, node=node, kind=kind, port=port_name),
                path + (f"{side}_port",), node=node, hint=advice)
        return None
    names = [p.name for p in (cls.outputs if side == "source" else cls.inputs)]
    chk.add("unknown_port", f"{cls.type} node {node!r} has no {kind} port {port_name!r}",
            path + (f"{side}_port",), node=node,
            hint=suggest(port_name, names) or f"its {kind}s: {', '.join(names) or 'none'}")
    return None


def _wiring(chk: _Checker, found: _Nodes, explicit: list[Wire]) -> tuple[list[Wire], nx.DiGraph]:
    """The explicit links completed by auto-wiring; an input it cannot settle is reported on its node."""
    wires, graph, problems = wire(found.classes, explicit)
    for p in problems:
        fallback = getattr(found.classes[p.node].input(p.port), "fallback", None)
        if p.code == "missing_input" and fallback:
            spec = found.specs.get(p.node)
            if fallback in found.keys.get(p.node, ()) and (spec is None or getattr(spec.config, fallback) is not None):
                continue  # the config key stands in for the input (if its value is bad, that is its own error)
            p = replace(p, hint=f"{p.hint}, or set {fallback!r} on this node")
        found.unsure.add(p.node)
        if found.dropped and p.code == "missing_input":
            continue  # the dropped node is the likely producer; its own error says what to fix
        chk.add(p.code, p.message, ("nodes", found.named[p.node], "name"), node=p.node, hint=p.hint)
    return wires, graph


ORIGIN = "@origin"  # Node.check's neighbours: "model@origin" is the node a passed-on model comes from


def _origin(specs: dict, into: dict[str, list[Wire]], wire: Wire) -> str:
    """The node whose value `wire` carries once outputs that hand on one of their node's inputs
    (`Port.passes`: a CheckpointLoader's or a Trainer's model) are followed upstream."""
    seen = set()
    while wire.source in specs and wire.source not in seen:
        seen.add(wire.source)
        out = specs[wire.source].cls.output(wire.source_port)
        before = next((w for w in into.get(wire.source, []) if out and out.passes and w.target_port == out.passes),
                      None)
        if before is None or before.source not in specs:
            break
        wire = before
    return wire.source


def _node_checks(chk: _Checker, found: _Nodes, wires: list[Wire]) -> None:
    """Each node's own checks against what feeds it, for every node with a valid config whose inputs
    are settled and come from nodes with valid configs, whatever is wrong elsewhere. The others
    wait: a check would judge a missing or broken source as an unwired input (the Trainer warns
    that no val_loader is wired) and report a mistake that fixing the source removes."""
    into: dict[str, list[Wire]] = {}
    for w in wires:
        into.setdefault(w.target, []).append(w)
    specs = found.specs
    for spec in specs.values():
        feeds = into.get(spec.name, [])
        if spec.name in found.unsure or any(w.source not in specs for w in feeds):
            continue
        neighbours = {w.target_port: (specs[w.source].type, specs[w.source].config) for w in feeds}
        for w in feeds:  # the node a pass-through chain started from: the network behind a CheckpointLoader
            origin = _origin(specs, into, w)
            if origin != w.source:
                neighbours[w.target_port + ORIGIN] = (specs[origin].type, specs[origin].config)
        for f in spec.cls.check(spec.config, neighbours):
            path = finding_path(spec.index, f.field)
            chk.add(f.code, f.message, path, node=spec.name, hint=f.hint, severity=f.severity, key=bool(f.field))


def load(path: str | Path, sets=()) -> Workflow:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WorkflowError([Issue("file_not_found", f"cannot read the workflow file: {e.strerror}",
                                   file=str(path))]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:  # JSON files are UTF-8; editors on Windows may save Latin-1 or UTF-16
        before = data[:e.start].decode("utf-8")
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        raise WorkflowError([Issue("json_syntax", f"the file is not UTF-8 text: byte 0x{data[e.start]:02x} is not "
                                   "valid UTF-8 here", "", None, line, column,
                                   hint="save the file as UTF-8 (JSON files are UTF-8)", file=str(path))]) from None
    return loads(text, file=str(path), sets=sets)
