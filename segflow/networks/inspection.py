"""`segflow inspect WORKFLOW`: a workflow's network, built on the CPU from its node config (no data is
loaded), as a module tree with parameter counts, its named parts, and what the Optimizer's `freeze`
and `param_groups` make of them: the names those settings take, and a check of the ones given."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from segflow.networks.factory import build_network
from segflow.networks.parts import Parts, in_part, part_of, parts_of
from segflow.optim.optimizer import entry_errors, frozen_names, group_plan
from segflow.workflow import spec
from segflow.workflow.errors import Issue, WorkflowError


@dataclass
class Row:
    """A module (or a parameter held directly by one) of the tree."""

    name: str  # as named_modules() / named_parameters() name it; "" for the whole network
    kind: str  # its class
    level: int  # nesting: 0 for the whole network
    parameters: int
    trainable: int
    parts: list[str]  # the named parts its parameters belong to


@dataclass
class OptimizerView:
    node: str
    frozen: int  # parameters (elements) frozen by its freeze
    groups: list[dict[str, Any]]  # name, pattern, lr, weight_decay, parameters


def run(args) -> int:
    try:
        wf = spec.load(args.workflow, sets=args.set or ())
        node = _network_node(wf, args.node)
        model = build_network(node.type, node.config)
        optimizers = _optimizers(wf, node.name, model)
    except WorkflowError as e:
        for issue in e.issues:
            print(issue.format(), file=sys.stderr)
        return 1
    parts = parts_of(model)
    frozen = optimizers[0][1] if optimizers else set()
    rows = module_rows(model, parts, frozen, args.depth)
    views = [view for view, _ in optimizers]
    if args.format == "json":
        print(json.dumps(_as_json(node, model, rows, parts, views), indent=1))
    else:
        print(report(node, model, rows, parts, views, args.depth))
    return 0


def _network_node(wf: spec.Workflow, name: str | None) -> spec.NodeSpec:
    networks = [n for n, s in wf.nodes.items() if s.cls.family == "networks"]
    if name is None and len(networks) == 1:
        return wf.nodes[networks[0]]
    if name is not None and name in networks:
        return wf.nodes[name]
    listed = ", ".join(networks) or "none"
    if name is None:
        message, hint = f"the workflow has {len(networks)} network nodes", f"choose one with --node: {listed}"
    elif name in wf.nodes:
        message, hint = f"node {name!r} ({wf.nodes[name].type}) is not a network", f"network nodes: {listed}"
    else:
        message = f"--node {name!r}: no node of that name"
        hint = spec.suggest(name, wf.nodes) or f"network nodes: {listed}"
    raise WorkflowError([Issue("unknown_node", message, "--node", hint=hint, file=wf.file)])


def _model_users(wf: spec.Workflow, network: str) -> list[str]:
    """The Optimizer-family nodes whose model is this network's, directly or handed on by nodes that
    pass their model input on (CheckpointLoader, Trainer)."""
    holders, users = {network}, []
    for name in wf.order():  # sources before their targets
        for w in wf.inputs_of(name):
            if w.source not in holders or w.target_port != "model":
                continue
            cls = wf.nodes[name].cls
            if cls.family == "optim":
                users.append(name)
            elif any(out.passes == "model" for out in cls.outputs):
                holders.add(name)
    return users


def _optimizers(wf: spec.Workflow, network: str, model: nn.Module) -> list[tuple[OptimizerView, set[str]]]:
    """Each Optimizer of this network: its frozen parameters and groups. Entries that take no parameter
    are located issues, all of them reported together."""
    found, issues = [], []
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    for name in _model_users(wf, network):
        node = wf.nodes[name]
        errors = entry_errors(model, node.config, name)
        if errors:
            issues += [wf.config_issue(e, node) for e in errors]
            continue
        frozen = frozen_names(model, node.config)
        plan = group_plan(model, node.config, frozen)
        base = {"lr": node.config.learning_rate, "weight_decay": node.config.weight_decay}
        groups = [{"name": s["name"], "pattern": s["pattern"], **base, **{k: s[k] for k in base if k in s},
                   "parameters": sum(sizes[n] for n in members)} for s, members in plan]
        found.append((OptimizerView(name, sum(sizes[n] for n in frozen), groups), frozen))
    if issues:
        raise WorkflowError(issues)
    return found


def module_rows(model: nn.Module, parts: Parts, frozen: set[str], depth: int = 0) -> list[Row]:
    """The modules holding parameters, to `depth` levels below the network (0: all), in module order;
    a parameter held by a module that also has submodules (TransUNet's pos_embed) is a row of its own."""
    rows = []
    for name, module in model.named_modules():
        level = name.count(".") + 1 if name else 0
        if depth and level > depth:
            continue
        named = list(module.named_parameters(prefix=name))
        if named:
            rows.append(_row(name, type(module).__name__, level, named, parts, frozen))
        if (not depth or level < depth) and any(True for _ in module.children()):
            for pname, p in module.named_parameters(prefix=name, recurse=False):
                rows.append(_row(pname, "Parameter", level + 1, [(pname, p)], parts, frozen))
    return rows


def _row(name: str, kind: str, level: int, named: list, parts: Parts, frozen: set[str]) -> Row:
    total = sum(p.numel() for _, p in named)
    trainable = sum(p.numel() for n, p in named if n not in frozen)
    held = [part for part, paths in parts.items() if any(in_part(n, paths) for n, _ in named)]
    return Row(name, kind, level, total, trainable, held)


def _trainable_word(row: Row) -> str:
    return "yes" if row.trainable == row.parameters else "no" if row.trainable == 0 else "partly"


def report(node: spec.NodeSpec, model: nn.Module, rows: list[Row], parts: Parts, views: list[OptimizerView],
           depth: int) -> str:
    total = rows[0].parameters if rows else 0
    lines = [f"{node.name}: {node.type}, {total:,} parameters (built on the CPU from the workflow's config)", ""]
    width = max(len("module"), *(2 * r.level + len(r.name or "(network)") for r in rows))
    kinds = max(len("class"), *(len(r.kind) for r in rows))
    lines.append(f"{'module':<{width}}  {'class':<{kinds}}  {'parameters':>12}  trainable  part")
    for r in rows:
        label = "  " * r.level + (r.name or "(network)")
        lines.append(f"{label:<{width}}  {r.kind:<{kinds}}  {r.parameters:>12,}  {_trainable_word(r):<9}  "
                     f"{'+'.join(r.parts)}")
    deeper = sum(1 for n, m in model.named_modules() if n and depth and n.count(".") + 1 > depth
                 and any(True for _ in m.parameters(recurse=False)))
    if deeper:
        lines.append(f"({deeper} deeper modules with parameters not shown; --depth 0 shows all)")
    lines += ["", *_parts_section(node, model, parts), "", *_optimizer_section(views)]
    return "\n".join(lines).rstrip()


def _parts_section(node: spec.NodeSpec, model: nn.Module, parts: Parts) -> list[str]:
    if not parts:
        return [f"{node.type} has no named parts: freeze and param_groups take module paths and globs."]
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    docs = getattr(type(node.config), "parts", {})
    lines = [f"Named parts of {node.type} (the Optimizer's freeze and param_groups take these names):"]
    width = max(map(len, parts))
    for part, paths in parts.items():
        count = sum(size for n, size in sizes.items() if part_of(n, parts) == part)
        lines.append(f"  {part:<{width}}  {count:,} parameters: {docs.get(part, '')}")
        lines.append(f"  {'':<{width}}  = {', '.join(paths)}")
    example = next(iter(sizes)).rsplit(".", 2)[0]
    lines.append(f"They also take any module path above (everything under it) or a glob over parameter names "
                 f"(e.g. '{example}.*'); a part wins over a module of the same name.")
    return lines


def _optimizer_section(views: list[OptimizerView]) -> list[str]:
    lines = []
    for view in views:
        lines.append(f"Optimizer '{view.node}': {view.frozen:,} parameters frozen; parameter groups:")
        for g in view.groups:
            lines.append(f"  {g['name']:<12} pattern {g['pattern']!r}, lr {g['lr']:g}, weight_decay "
                         f"{g['weight_decay']:g}: {g['parameters']:,} parameters")
    return lines or ["No Optimizer in the workflow takes this network's parameters."]


def _as_json(node: spec.NodeSpec, model: nn.Module, rows: list[Row], parts: Parts,
             views: list[OptimizerView]) -> dict[str, Any]:
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    docs = getattr(type(node.config), "parts", {})
    return {"node": node.name, "type": node.type, "parameters": sum(sizes.values()),
            "modules": [asdict(r) for r in rows],
            "parts": {part: {"modules": paths, "doc": docs.get(part, ""),
                             "parameters": sum(s for n, s in sizes.items() if part_of(n, parts) == part)}
                      for part, paths in parts.items()},
            "optimizers": [asdict(v) for v in views]}
