"""Build the torch optimizer behind the Optimizer node.

The optimizer holds the model's Parameter objects. `model.to(device)` (as the Trainer does after
this runs) moves parameters in place and keeps those objects, so the optimizer stays valid; its
state is created lazily on the first step, on the parameters' device by then.
"""
from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from segflow.networks.description import description_of
from segflow.networks.parts import Parts, in_part, parts_of
from segflow.workflow.errors import ConfigValueError

if TYPE_CHECKING:
    from segflow.nodes.optim import OptimizerConfig


def matches(name: str, pattern: str) -> bool:
    """Glob match of a parameter name; a bare module path matches everything under it."""
    return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")


def selector(pattern: str, parts: Parts) -> Callable[[str], bool]:
    """Which parameter names a freeze / param_groups entry takes: all of a named part's modules when it
    names one of the network's parts (the part wins over a module of the same name), else a glob."""
    paths = parts.get(pattern)
    if paths is not None:
        return lambda name: in_part(name, paths)
    return lambda name: matches(name, pattern)


def _no_match(field: str, pattern: str, model: nn.Module, parts: Parts, node_name: str) -> ConfigValueError:
    names = [n for n, _ in model.named_parameters()]
    tops = sorted({n.split(".")[0] for n in names})
    described = description_of(model)
    if parts and described is not None:
        message = (f"the named part {pattern!r} of {described.type} holds no parameter in this configuration"
                   if pattern in parts else  # a U-Net of depth 2 has no decoder levels
                   f"{pattern!r} is neither a named part of {described.type} nor matches a parameter of the model")
        hint = f"named parts: {', '.join(parts)}; top-level modules are {tops}"
    else:
        message = f"pattern {pattern!r} matches no parameter of the model"
        hint = f"top-level modules are {tops}"
    hint += f" and names look like {', '.join(names[:4])}; `segflow inspect WORKFLOW` lists them all"
    return ConfigValueError(field, "unknown_parameter", message, hint, node=node_name)


def entry_errors(model: nn.Module, config: OptimizerConfig, node_name: str = "Optimizer") -> list[ConfigValueError]:
    """Every freeze and param_groups entry that takes no parameter of `model`, and a freeze that takes them all."""
    parts = parts_of(model)
    names = [n for n, _ in model.named_parameters()]
    errors = []
    for field, pattern in [(f"freeze[{i}]", p) for i, p in enumerate(config.freeze)] + \
            [(f"param_groups[{i}].pattern", g.pattern) for i, g in enumerate(config.param_groups)]:
        test = selector(pattern, parts)
        if not any(test(n) for n in names):
            errors.append(_no_match(field, pattern, model, parts, node_name))
    if not errors and config.freeze and len(frozen_names(model, config)) == len(names):
        errors.append(ConfigValueError("freeze", "bad_value", "every parameter of the model is frozen",
                                       "narrow the freeze patterns", node=node_name))
    return errors


def frozen_names(model: nn.Module, config: OptimizerConfig) -> set[str]:
    """The parameter names `config.freeze` takes."""
    tests = [selector(pattern, parts_of(model)) for pattern in config.freeze]
    return {n for n, _ in model.named_parameters() if any(test(n) for test in tests)}


def group_plan(model: nn.Module, config: OptimizerConfig, frozen: set[str]) -> list[tuple[dict[str, Any], list[str]]]:
    """The optimizer's parameter groups as (settings, trainable parameter names): a parameter goes to the
    first param_groups entry that takes it, the rest to a last group with the base settings. Each group
    is named (for the logs): its `name`, else its pattern; the last one "rest" ("all" when it is the only one)."""
    parts = parts_of(model)
    free = [n for n, p in model.named_parameters() if p.requires_grad and n not in frozen]
    plan, taken, used = [], set(), set()
    for spec in config.param_groups:
        test = selector(spec.pattern, parts)
        members = [n for n in free if n not in taken and test(n)]
        if not members:
            continue  # every match is frozen or already in an earlier group
        taken.update(members)
        settings: dict[str, Any] = {"pattern": spec.pattern, "name": _unique(spec.name or spec.pattern, used)}
        if spec.learning_rate is not None:
            settings["lr"] = spec.learning_rate
        if spec.weight_decay is not None:
            settings["weight_decay"] = spec.weight_decay
        plan.append((settings, members))
    rest = [n for n in free if n not in taken]
    if rest:
        plan.append(({"pattern": "*", "name": _unique("rest" if plan else "all", used)}, rest))
    return plan


def _unique(name: str, used: set[str]) -> str:
    unique, k = name, 2
    while unique in used:
        unique, k = f"{name}_{k}", k + 1
    used.add(unique)
    return unique


def build_optimizer(model: nn.Module, config: OptimizerConfig, node_name: str = "Optimizer") -> torch.optim.Optimizer:
    """The optimizer for a validated OptimizerConfig over `model`'s trainable parameters."""
    errors = entry_errors(model, config, node_name)
    if errors:
        raise errors[0]
    frozen = frozen_names(model, config)
    params = dict(model.named_parameters())
    for n in frozen:
        params[n].requires_grad_(False)
    plan = group_plan(model, config, frozen)
    groups = [{"params": [params[n] for n in members], **settings} for settings, members in plan]
    if not groups:  # the model came with the rest frozen
        raise ConfigValueError("freeze", "bad_value", "every parameter of the model is frozen",
                               "narrow the freeze patterns", node=node_name)

    c = config
    common: dict[str, Any] = {"lr": c.learning_rate, "weight_decay": c.weight_decay}
    kind = c.optimizer_type
    if kind != "RMSprop":
        # fused: one kernel for the whole update instead of several per parameter (4x faster steps of
        # a small UNet's AdamW on CPU); deterministic like the others, with rounding of its own
        common["fused"] = True if c.fused == "auto" else c.fused
    if kind in ("Adam", "AdamW"):
        cls = torch.optim.Adam if kind == "Adam" else torch.optim.AdamW
        return cls(groups, betas=tuple(c.betas), eps=c.eps, amsgrad=c.amsgrad, **common)
    if kind == "SGD":
        return torch.optim.SGD(groups, momentum=c.momentum_value(), nesterov=c.nesterov, **common)
    if kind == "RMSprop":
        return torch.optim.RMSprop(groups, alpha=c.alpha, eps=c.eps, momentum=c.momentum_value(), **common)
    raise ValueError(f"{node_name}.optimizer_type {kind!r} is not one of Adam, AdamW, SGD, RMSprop")
