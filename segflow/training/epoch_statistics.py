"""One training epoch's loss, gradient norm and counts, accumulated on the device and read once.

Reading a GPU tensor from the host waits for all queued work, so nothing here is read per step: each
step's loss is copied into a per-epoch tensor (no sync), the sampled gradient norms are summed on the
device, and at the epoch's end one reduction gives the mean loss, the mean norm and the first step
whose loss was not finite, summed over processes under torchrun.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from segflow.workflow import distributed


@dataclass
class EpochNumbers:
    """An epoch's figures after the reduction; `batches` and `images` are the job's, over every process."""

    loss: float  # mean over the job's batches
    grad_norm: float  # mean over the sampled optimizer steps (this process's)
    batches: int
    images: int
    local_batches: int  # this process's
    first_bad_step: int  # 1-based index of the first non-finite loss; 0 when every loss was finite

    def row(self, elapsed: float, data_wait: float) -> dict[str, float]:
        """The history's training columns; `elapsed` and `data_wait` are this process's seconds."""
        return {"train_loss": self.loss, "grad_norm": self.grad_norm,
                "throughput": self.images / elapsed, "train_time": elapsed,
                "step_time_ms": 1000 * elapsed / max(1, self.local_batches),
                "data_wait_fraction": min(1.0, data_wait / elapsed)}


class EpochStatistics:
    def __init__(self, batches: int, device: torch.device):
        self.batches = batches  # what the loader's len() says; a loader may yield more
        self.device = device
        self.losses = torch.zeros(max(1, batches), device=device)
        self.norm_sum = torch.zeros((), device=device)
        self.norms = 0  # gradient norms summed into norm_sum
        self.steps = 0  # optimizer steps
        self.images = 0

    def add_batch(self, index: int, loss: torch.Tensor, images: int) -> None:
        if index < len(self.losses):  # one copy on the device, no sync
            self.losses[index] = loss.detach()
        self.images += images

    def add_optimizer_step(self, grad_norm: torch.Tensor | None) -> None:
        if grad_norm is not None:
            self.norm_sum += grad_norm.detach().float()
            self.norms += 1
        self.steps += 1

    def running_loss(self, index: int) -> float:
        """The mean loss of batches 0..index: a host sync, for a progress display only."""
        return float(self.losses[:index + 1].mean())

    def reduce(self, across_processes: bool) -> EpochNumbers:
        """The epoch's numbers, read with the epoch's one host sync. Across processes the loss and
        counts are summed, and the bad step named is the highest of the ranks' first ones: a NaN on any
        rank stops every rank."""
        finite = torch.isfinite(self.losses)
        loss_sum = self.losses.sum()
        first_bad = torch.where(finite.all(), 0, (~finite).int().argmax() + 1).long()
        batches, images = self.batches, self.images
        if across_processes:
            dev = self.device
            totals = distributed.all_reduce_(torch.stack([loss_sum.float(), torch.tensor(float(batches), device=dev),
                                                          torch.tensor(float(images), device=dev)]))
            loss_sum, batches, images = totals[0], int(totals[1]), int(totals[2])
            first_bad = distributed.all_reduce_(first_bad, "max")
        bad = int(first_bad)
        return EpochNumbers(loss=float(loss_sum) / max(1, batches), grad_norm=float(self.norm_sum) / max(1, self.norms),
                            batches=batches, images=images, local_batches=self.batches, first_bad_step=bad)
