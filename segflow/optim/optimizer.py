"""Build the torch optimizer behind the Optimizer node.

The optimizer holds the model's Parameter objects. `model.to(device)` (as the Trainer does after
this runs) moves parameters in place and keeps those objects, so the optimizer stays valid; its
state is created lazily on the first step, on the parameters' device by then.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from segflow.nodes.optim import OptimizerConfig


def matches(name: str, pattern: str) -> bool:
    """Glob match of a parameter name; a bare module path matches everything under it."""
    return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")


def _no_match(where: str, pattern: str, names: list[str]) -> ValueError:
    tops = sorted({n.split(".")[0] for n in names})
    sample = ", ".join(names[:4])
    return ValueError(f"{where}: pattern {pattern!r} matches no parameter of the model; top-level modules are "
                      f"{tops} and names look like {sample}")


def build_optimizer(model: nn.Module, config: OptimizerConfig, node_name: str = "Optimizer") -> torch.optim.Optimizer:
    """The optimizer for a validated OptimizerConfig over `model`'s trainable parameters."""
    named = list(model.named_parameters())
    names = [n for n, _ in named]
    for pattern in config.freeze:
        hit = [p for n, p in named if matches(n, pattern)]
        if not hit:
            raise _no_match(f"{node_name}.freeze", pattern, names)
        for p in hit:
            p.requires_grad_(False)
    free = [(n, p) for n, p in named if p.requires_grad]
    if not free:
        raise ValueError(f"{node_name}: every parameter of the model is frozen; narrow the freeze patterns")

    groups, taken = [], set()
    for i, spec in enumerate(config.param_groups):
        members = [p for n, p in free if n not in taken and matches(n, spec.pattern)]
        if not members:
            if not any(matches(n, spec.pattern) for n in names):
                raise _no_match(f"{node_name}.param_groups[{i}]", spec.pattern, names)
            continue  # every match is frozen or already in an earlier group
        taken.update(n for n, _ in free if matches(n, spec.pattern))
        group: dict[str, Any] = {"params": members, "pattern": spec.pattern}
        if spec.learning_rate is not None:
            group["lr"] = spec.learning_rate
        if spec.weight_decay is not None:
            group["weight_decay"] = spec.weight_decay
        groups.append(group)
    rest = [p for n, p in free if n not in taken]
    if rest:
        groups.append({"params": rest, "pattern": "*"})

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
