"""What `segflow inspect WORKFLOW` shows of a workflow's network, built on the CPU from its node config
(no data is loaded): its module tree with parameter counts, its named parts, and what the Optimizer's
`freeze` and `param_groups` make of them. The command line (segflow/cli.py) reads the workflow and
locates the errors; this module sees only the network and the Optimizer configs."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from segflow.networks.description import description_of
from segflow.networks.parts import Parts, in_part, part_of, parts_of
from segflow.optim.optimizer import entry_errors, frozen_names, group_plan
from segflow.workflow.errors import ConfigValueError

if TYPE_CHECKING:
    from segflow.nodes.networks import NetworkConfig
    from segflow.nodes.optim import OptimizerConfig


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


def optimizer_views(model: nn.Module, optimizers: list[tuple[str, OptimizerConfig]]
                    ) -> tuple[list[tuple[OptimizerView, set[str]]], list[tuple[str, ConfigValueError]]]:
    """Each Optimizer's view of `model` (its frozen parameters and groups), and every entry of theirs
    that takes no parameter, as (optimizer node, error)."""
    found, errors = [], []
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    for name, config in optimizers:
        bad = entry_errors(model, config, name)
        if bad:
            errors += [(name, e) for e in bad]
            continue
        frozen = frozen_names(model, config)
        base = {"lr": config.learning_rate, "weight_decay": config.weight_decay}
        groups = [{"name": s["name"], "pattern": s["pattern"], **base, **{k: s[k] for k in base if k in s},
                   "parameters": sum(sizes[n] for n in members)} for s, members in group_plan(model, config, frozen)]
        found.append((OptimizerView(name, sum(sizes[n] for n in frozen), groups), frozen))
    return found, errors


def render(node: str, config: NetworkConfig, model: nn.Module, optimizers: list[tuple[OptimizerView, set[str]]],
           depth: int, fmt: str = "text") -> str:
    """The report on network node `node` (its config, its built model), the tree `depth` levels deep (0: all);
    the trainable column follows the first Optimizer's freeze."""
    parts = parts_of(model)
    rows = module_rows(model, parts, optimizers[0][1] if optimizers else set(), depth)
    views = [view for view, _ in optimizers]
    if fmt == "json":
        return json.dumps(_as_json(node, config, model, rows, parts, views), indent=1)
    return report(node, config, model, rows, parts, views, depth)


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


def report(node: str, config: NetworkConfig, model: nn.Module, rows: list[Row], parts: Parts,
           views: list[OptimizerView], depth: int) -> str:
    total = rows[0].parameters if rows else 0
    kind = _type_of(model)
    lines = [f"{node}: {kind}, {total:,} parameters (built on the CPU from the workflow's config)", ""]
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
    lines += ["", *_parts_section(kind, config, model, parts), "", *_optimizer_section(views)]
    return "\n".join(lines).rstrip()


def _type_of(model: nn.Module) -> str:
    described = description_of(model)
    return described.type if described is not None else type(model).__name__


def _parts_section(kind: str, config: NetworkConfig, model: nn.Module, parts: Parts) -> list[str]:
    if not parts:
        return [f"{kind} has no named parts: freeze and param_groups take module paths and globs."]
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    docs = type(config).parts
    lines = [f"Named parts of {kind} (the Optimizer's freeze and param_groups take these names):"]
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


def _as_json(node: str, config: NetworkConfig, model: nn.Module, rows: list[Row], parts: Parts,
             views: list[OptimizerView]) -> dict[str, Any]:
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    docs = type(config).parts
    return {"node": node, "type": _type_of(model), "parameters": sum(sizes.values()),
            "modules": [asdict(r) for r in rows],
            "parts": {part: {"modules": paths, "doc": docs.get(part, ""),
                             "parameters": sum(s for n, s in sizes.items() if part_of(n, parts) == part)}
                      for part, paths in parts.items()},
            "optimizers": [asdict(v) for v in views]}
