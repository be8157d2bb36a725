"""What the Trainer settles before wrapping a model in DistributedDataParallel: whether DDP must
look for parameters without a gradient (`find_unused_parameters`), and whether BatchNorm layers
become SyncBatchNorm (`sync_batchnorm`), with the swap undone after training. Also turns DDP's
"Expected to have finished reduction" error into one that names the Trainer field to set."""
from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from segflow.workflow import distributed

# ---- parameters without a gradient ------------------------------------------------------------


@dataclass
class GradientProbe:
    unused: list[str]  # trainable parameters that got no gradient
    not_called: list[str]  # modules holding some of them that the forward pass never called


def probe_gradients(model: nn.Module, first_loss: Callable[[], torch.Tensor], device: torch.device) -> GradientProbe:
    """Which trainable parameters of `model` get no gradient from one forward and backward pass of
    `first_loss()` (the loss of the first training batch through the bare model).

    The run goes on as if this never happened: random number generators are forked (dropout
    draws from them), buffers (BatchNorm statistics, which a forward in training mode updates) and
    gradients are put back, the model's mode is left alone and no optimizer step is taken.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = [p.grad for _, p in params]
    buffers = [(m, k, b, b.detach().clone()) for m in model.modules() for k, b in m._buffers.items() if b is not None]
    called: set[int] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, args: called.add(id(mod))) for m in model.modules()]
    devices = [device] if device.type == "cuda" else []  # the CPU generator is always forked
    try:
        with torch.random.fork_rng(devices=devices):
            for _, p in params:
                p.grad = None
            first_loss().backward()
            unused = [n for n, p in params if p.grad is None]
    finally:
        for h in hooks:
            h.remove()
        for (_, p), g in zip(params, grads):
            p.grad = g
        with torch.no_grad():
            for m, k, b, saved in buffers:
                m._buffers[k] = b  # in case the forward replaced the tensor instead of updating it
                b.copy_(saved)
    owners = {n.rpartition(".")[0] for n in unused}
    not_called = [name for name, m in model.named_modules() if name in owners and id(m) not in called]
    return GradientProbe(unused, not_called)


def freeze_patterns(module_names: list[str]) -> list[str]:
    """Optimizer `freeze` globs covering `module_names`: numbered layers collapse to `*`, so
    vit.blocks.0.norm_cross_attn ... vit.blocks.11.norm_cross_attn give vit.blocks.*.norm_cross_attn."""
    globs = (".".join("*" if part.isdigit() else part for part in n.split(".")) for n in module_names)
    return list(dict.fromkeys(globs))


def _names(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def find_unused_parameters(setting: bool | str, model: nn.Module, first_loss: Callable[[], torch.Tensor],
                           device: torch.device, log: Callable[[str], None], who: str) -> tuple[bool, str]:
    """The `find_unused_parameters` flag for DDP, and why (for the log). `auto` probes the first
    batch on every rank and turns the search on when any rank found a parameter without gradient:
    DDP needs the same flag on every rank, so one rank's finding decides for all."""
    if setting != "auto":
        return bool(setting), "set in the workflow"
    probe = probe_gradients(model, first_loss, device)
    everyone = distributed.gather_objects(probe.unused)
    if not any(everyone):
        return False, "auto: every trainable parameter gets a gradient"
    unused = probe.unused or next(u for u in everyone if u)
    total = sum(1 for p in model.parameters() if p.requires_grad)
    line = (f"{who}: {len(unused)} of {total} trainable parameters get no gradient ({_names(unused)}); "
            f"DDP runs with find_unused_parameters=True, which searches the autograd graph every step")
    if any(u != everyone[0] for u in everyone):
        line += "; the ranks' first batches disagree on which, so their use depends on the data"
    elif probe.not_called:
        patterns = freeze_patterns(probe.not_called)
        line += (f". The forward pass never calls their modules ({_names(patterns)}): if the network never "
                 f"uses them, freeze them on the Optimizer (\"freeze\": {json.dumps(patterns)}) to spare that search")
    log(line)
    return True, f"auto: {len(unused)} parameters get no gradient"


@contextlib.contextmanager
def explain_unused_parameter_errors(model: nn.Module, setting: bool | str, who: str) -> Iterator[None]:
    """DDP without find_unused_parameters fails one step after a parameter got no gradient, with a
    message about DDP's keyword argument; say which Trainer field to set instead."""
    try:
        yield
    except RuntimeError as e:
        text = str(e)
        if "Expected to have finished reduction in the prior iteration" not in text:
            raise
        names = [n for n, p in model.named_parameters() if p.requires_grad]  # DDP's parameter indices
        found = re.search(r"did not receive grad for rank \d+: ([\d ]+)", text)
        unused = [names[int(i)] for i in found.group(1).split() if int(i) < len(names)] if found else []
        which = f" ({len(unused)}: {_names(unused)})" if unused else ""
        fix = ("set find_unused_parameters to auto (or true) on this Trainer" if setting is False else
               "the first batch used every parameter but a later step did not: set find_unused_parameters "
               "to true on this Trainer")
        raise RuntimeError(f"{who}: DistributedDataParallel found trainable parameters that got no "
                           f"gradient{which}; {fix}, or freeze them on the Optimizer") from e


# ---- SyncBatchNorm ------------------------------------------------------------------------------


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def sync_batchnorm_wanted(setting: bool | str, model: nn.Module, device: torch.device, multi_process: bool,
                          log: Callable[[str], None], who: str) -> tuple[bool, str]:
    """Whether to convert BatchNorm to SyncBatchNorm under DDP, and why (for the log).

    torch's SyncBatchNorm runs on GPUs only (on CPU its forward raises "SyncBatchNorm expected input
    tensor to be on GPU"), so an explicit `true` on CPU falls back to per-process statistics with a
    message rather than failing: the same workflow then tries out on CPU as it trains on a cluster.
    """
    if setting is False:
        return False, "set in the workflow"
    auto = setting == "auto"
    why = "auto: " if auto else ""
    if not has_batchnorm(model):
        if not auto:
            log(f"{who}: sync_batchnorm is true but the model has no BatchNorm layers; nothing to synchronise")
        return False, why + "no BatchNorm layers"
    if device.type != "cuda":
        if not auto:
            log(f"{who}: sync_batchnorm is true, but torch's SyncBatchNorm runs on GPUs only; training on "
                f"{device.type} with each process's own BatchNorm statistics")
        return False, why + f"{device.type}, not CUDA"
    if auto and not multi_process:
        return False, "auto: one process"
    return True, "auto: several CUDA processes" if auto else "set in the workflow"


class SyncBatchNormSwap:
    """The model's BatchNorm layers replaced by SyncBatchNorm (sharing their parameters and
    statistics, so the optimizer and checkpoints see the same tensors under the same names), and
    `undo` putting the original layer objects back, so the model handed on after training is made
    of plain modules again (export, prediction and one-process loading need nothing special)."""

    def __init__(self, model: nn.Module):
        self.swapped: list[tuple[nn.Module, str, _BatchNorm]] = []
        targets = [(parent, attr, child) for parent in model.modules() for attr, child in parent.named_children()
                   if isinstance(child, _BatchNorm) and not isinstance(child, nn.SyncBatchNorm)]
        synced: dict[int, nn.SyncBatchNorm] = {}  # a layer shared by two parents stays shared
        for parent, attr, child in targets:
            if id(child) not in synced:
                synced[id(child)] = nn.SyncBatchNorm.convert_sync_batchnorm(child)
            parent._modules[attr] = synced[id(child)]
            self.swapped.append((parent, attr, child))

    def __len__(self) -> int:
        return len({id(child) for _, _, child in self.swapped})

    def undo(self) -> None:
        for parent, attr, original in self.swapped:
            sync = parent._modules[attr]
            # the same Parameter objects; buffers may have been replaced (e.g. by model.to())
            original._parameters.update(sync._parameters)
            original._buffers.update(sync._buffers)
            original.training = sync.training
            parent._modules[attr] = original
        self.swapped = []
