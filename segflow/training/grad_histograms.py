"""Gradient histograms per layer group for TensorBoard, kept off the training step's hot path.

A layer group is a named part of the network (encoder, decoder, head; segflow.networks.parts), or a
top-level module for any other model. On the last optimizer step of every N-th epoch (the Trainer's
grad_histogram_every), with the gradients unscaled and before clipping, each group's histogram is
computed where the gradients are: min, max, count, sum, sum of squares and counts over BINS equal
buckets, a few hundred numbers. Nothing is read from the device then; the host reads them after the
epoch's own synchronising reduction, so logging adds no host sync to any step. On a GPU sorting and
searchsorted count the buckets, as torch.histc has no deterministic CUDA kernel; on the CPU histc does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from segflow.networks.parts import part_of, parts_of

BINS = 64


def layer_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """The model's parameters by named part (in part order; "other" for any outside them), or by
    top-level module when the model has no named parts."""
    parts = parts_of(model)
    groups: dict[str, list[torch.nn.Parameter]] = {name: [] for name in parts}
    for name, p in model.named_parameters():
        group = (part_of(name, parts) or "other") if parts else name.split(".")[0]
        groups.setdefault(group, []).append(p)
    return {name: params for name, params in groups.items() if params}


@dataclass
class Histogram:
    """One group's histogram, still on the device until `read`."""

    stats: torch.Tensor  # float32: min, max, sum, sum of squares
    num: torch.Tensor  # int64: finite values
    limits: torch.Tensor  # float32 (BINS,): each bucket's right edge
    counts: torch.Tensor  # int64 (BINS,)

    def read(self) -> dict | None:
        """The histogram as add_histogram_raw takes it; None when no gradient value was finite."""
        num = int(self.num)
        if num == 0:
            return None
        lo, hi, total, squares = self.stats.tolist()
        return {"min": lo, "max": hi, "num": num, "sum": total, "sum_squares": squares,
                "bucket_limits": self.limits.tolist(), "bucket_counts": self.counts.tolist()}


def histogram(grads: list[torch.Tensor], bins: int = BINS, histc: bool | None = None) -> Histogram:
    """The histogram of the finite values of `grads` (each any shape, one device), computed on that device;
    buckets counted by torch.histc (default: on the CPU) or by sorting."""
    flats = [g.detach().reshape(-1).float() for g in grads]
    dev = flats[0].device
    histc = dev.type == "cpu" if histc is None else histc
    inf = torch.full((), math.inf, device=dev)  # a fill kernel, not a copy from the host
    lo = torch.stack([torch.where(f.isfinite(), f, inf).amin() for f in flats]).amin()
    hi = torch.stack([torch.where(f.isfinite(), f, -inf).amax() for f in flats]).amax()
    width = torch.where(hi > lo, hi - lo, lo.abs() * 1e-3 + 1e-12)  # all values equal: a narrow range around them
    limits = lo + width * torch.arange(1, bins + 1, device=dev) / bins
    limits = torch.cat([limits[:-1], torch.maximum(limits[-1:], hi.reshape(1))])  # rounding must not drop the max
    counts = torch.zeros(bins, dtype=torch.long, device=dev)
    num = torch.zeros((), dtype=torch.long, device=dev)
    sums = torch.zeros(2, device=dev)
    for f in flats:
        finite = f.isfinite()
        kept = torch.where(finite, f, 0.0)
        num += finite.sum()
        sums += torch.stack([kept.sum(), kept.square().sum()])
        counts += _bucket_counts(torch.where(finite, f, inf), lo, limits, histc)
    if not histc:
        counts = torch.diff(counts, prepend=counts.new_zeros(1))  # _bucket_counts gave values <= each limit
    return Histogram(torch.cat([lo.reshape(1), hi.reshape(1), sums]), num, limits, counts)


def _bucket_counts(values: torch.Tensor, lo: torch.Tensor, limits: torch.Tensor, histc: bool) -> torch.Tensor:
    """Non-finite values made +inf. With histc, the count per bucket (torch.histc skips values out of range;
    10x faster than sorting on the CPU); else the count of values <= each limit (sort and searchsorted: histc
    has no deterministic CUDA kernel, and reading lo and hi for it would wait for the device)."""
    if histc:
        low, high = lo.item(), limits[-1].item()
        if not math.isfinite(low):
            return torch.zeros(len(limits), dtype=torch.long)
        return torch.histc(values, bins=len(limits), min=low, max=high).long()
    return torch.searchsorted(values.sort().values, limits, right=True)


class GradientHistograms:
    """Decides when, and captures the histograms at that step; `take` hands them over once per epoch."""

    def __init__(self, model: torch.nn.Module, every: int, accumulation_steps: int):
        self.groups = layer_groups(model) if every else {}
        self.every, self.accumulation_steps = every, accumulation_steps
        self.capture_step: int | None = None  # this epoch's optimizer step to capture at (0-based)
        self.captured: dict[str, Histogram] = {}

    def start_epoch(self, epoch: int, batches: int) -> None:
        """`batches`: what the training loader's len() says; its last optimizer step is captured."""
        due = bool(self.every) and epoch % self.every == 0
        self.capture_step = math.ceil(batches / self.accumulation_steps) - 1 if due else None
        self.captured = {}

    def after_unscale(self, step: int) -> None:
        """Called at each optimizer step (0-based in the epoch) with the true gradients, before clipping."""
        if step != self.capture_step:
            return
        for name, params in self.groups.items():
            grads = [p.grad for p in params if p.grad is not None]
            if grads:  # a frozen group has none
                self.captured[name] = histogram(grads)

    def take(self) -> dict[str, Histogram]:
        captured, self.captured = self.captured, {}
        return captured
