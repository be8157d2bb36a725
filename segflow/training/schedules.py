"""Learning-rate schedules of the Trainer, stepped once per epoch, each with optional linear warmup.

The closed-form schedules (step, cosine, exponential, poly, none) are one `torch.optim.lr_scheduler.LambdaLR`
whose factor is written out below, because torch's `SequentialLR` cannot chain a warmup with
`ReduceLROnPlateau` and re-bases chained schedules in ways that are hard to state as a formula.
The formulas (epoch `e` counted from 0, `W` = warmup_epochs, `t = e - W`, `base` = the optimizer's lr):

    warmup (e < W):  lr = base * (e + 1) / (W + 1)      rises linearly, reaches base at e = W
    none:            lr = base
    step:            lr = base * gamma ** (t // step_size)             (gamma default 0.1)
    exponential:     lr = base * gamma ** t                            (gamma default 0.95)
    cosine:          lr = eta_min + (base - eta_min) * (1 + cos(pi * min(t, T) / T)) / 2,
                     T = T_max or epochs - W; stays at eta_min after T (no restart)
    poly:            lr = base * (1 - min(t, T) / T) ** power,  T = epochs - W  (power default 0.9)
    plateau:         warmup as above, then torch's ReduceLROnPlateau on the Trainer's `monitor`
                     (factor, patience = lr_patience, mode from the monitor's name)

A resumed run follows the formula of its own settings, which may differ from the checkpoint's (more
epochs, say): the closed-form schedules set the lr of the next epoch from it; plateau keeps its state
(its reductions so far). `describe_change` words the difference for the log.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

SCHEDULES = ("none", "step", "cosine", "plateau", "exponential", "poly")


@dataclass
class ScheduleSettings:
    kind: str = "none"
    epochs: int = 100
    warmup_epochs: int = 0
    step_size: int = 30
    gamma: float | None = None
    t_max: int | None = None
    eta_min: float = 0.0
    power: float = 0.9
    factor: float = 0.1
    patience: int = 10  # the plateau schedule's own patience
    mode: str = "max"  # plateau: "max" for metrics that grow (dice), "min" for losses
    threshold: float = 0.0


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    return (epoch + 1) / (warmup_epochs + 1)


def main_factor(s: ScheduleSettings, t: int, base_lr: float) -> float:
    """The schedule's lr / base lr, `t` epochs after warmup (closed-form schedules only)."""
    if s.kind == "none":
        return 1.0
    if s.kind == "step":
        return (0.1 if s.gamma is None else s.gamma) ** (t // s.step_size)
    if s.kind == "exponential":
        return (0.95 if s.gamma is None else s.gamma) ** t
    period = max(1, s.t_max if (s.kind == "cosine" and s.t_max) else s.epochs - s.warmup_epochs)
    t = min(t, period)
    if s.kind == "cosine":
        if base_lr == 0:
            return 0.0
        lr = s.eta_min + (base_lr - s.eta_min) * (1 + math.cos(math.pi * t / period)) / 2
        return lr / base_lr
    if s.kind == "poly":
        return (1 - t / period) ** s.power
    raise ValueError(f"lr_schedule {s.kind!r} is not one of {', '.join(SCHEDULES)}")


def lr_at(s: ScheduleSettings, epoch: int, base_lr: float) -> float:
    """The closed-form lr during `epoch` (0-based); what the tests check the optimizer against."""
    if epoch < s.warmup_epochs:
        return base_lr * warmup_factor(epoch, s.warmup_epochs)
    return base_lr * main_factor(s, epoch - s.warmup_epochs, base_lr)


class EpochSchedule:
    """One object for every schedule: `step(metric)` after each epoch, state for checkpoints."""

    def __init__(self, optimizer: torch.optim.Optimizer, settings: ScheduleSettings):
        if settings.kind not in SCHEDULES:
            raise ValueError(f"lr_schedule {settings.kind!r} is not one of {', '.join(SCHEDULES)}")
        self.optimizer = optimizer
        self.s = settings
        self.epoch = 0  # the epoch whose lr is set now
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.plateau = None
        if settings.kind == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=settings.mode, factor=settings.factor, patience=settings.patience,
                threshold=settings.threshold, threshold_mode="abs")
            self._set_warmup_lr()
            self.lambda_lr = None
        else:
            lambdas = [self._closed_form(base) for base in self.base_lrs]
            self.lambda_lr = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)

    def _closed_form(self, base_lr: float):
        return lambda epoch: lr_at(self.s, epoch, base_lr) / base_lr if base_lr else 0.0

    def _set_warmup_lr(self) -> None:
        if self.epoch < self.s.warmup_epochs:
            f = warmup_factor(self.epoch, self.s.warmup_epochs)
        elif self.epoch == self.s.warmup_epochs:
            f = 1.0
        else:
            return
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step(self, metric: float | None = None) -> None:
        """Called once at the end of each epoch; `metric` is the monitored value (plateau only)."""
        self.epoch += 1
        if self.lambda_lr is not None:
            self.lambda_lr.step()
        elif self.epoch <= self.s.warmup_epochs:
            self._set_warmup_lr()
        elif metric is not None and math.isfinite(metric):
            self.plateau.step(metric)

    @property
    def lrs(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        inner = self.lambda_lr.state_dict() if self.lambda_lr is not None else self.plateau.state_dict()
        inner.pop("lr_lambdas", None)  # rebuilt from the config; functions cannot go in a weights-only file
        return {"kind": self.s.kind, "epoch": self.epoch, "base_lrs": list(self.base_lrs), "inner": inner,
                "settings": asdict(self.s)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.s.kind:
            raise ValueError(f"the checkpoint was trained with lr_schedule {state.get('kind')!r}, "
                             f"this Trainer has {self.s.kind!r}; set lr_schedule back to resume")
        self.epoch = state["epoch"]
        self.base_lrs = list(state["base_lrs"])
        if self.lambda_lr is not None:
            inner = dict(state["inner"])
            inner["lr_lambdas"] = [None] * len(self.base_lrs)
            self.lambda_lr.load_state_dict(inner)
            self._set_closed_form_lr()
        else:
            self.plateau.load_state_dict(state["inner"])

    def _set_closed_form_lr(self) -> None:
        """The lr of the epoch to come by this schedule's own settings, computed as LambdaLR computes it,
        so that it is the checkpoint's lr, bit for bit, when the settings are the checkpoint's; the
        optimizer's state holds the lr of the settings the checkpoint was trained with."""
        for group, base, factor in zip(self.optimizer.param_groups, self.lambda_lr.base_lrs, self.lambda_lr.lr_lambdas):
            group["lr"] = base * factor(self.epoch)


# the config fields behind ScheduleSettings, where their names differ
CONFIG_NAMES = {"kind": "lr_schedule", "t_max": "T_max", "patience": "lr_patience", "threshold": "min_delta",
                "mode": "monitor mode"}


def describe_change(saved: dict[str, Any], schedule: EpochSchedule) -> str | None:
    """How `schedule`'s settings differ from those a checkpoint was trained with, and what that does
    to the lr; None when they do not differ. `saved`: the checkpoint's ScheduleSettings as a dict, or
    the part of them it records."""
    now = schedule.s
    known = {f.name: saved[f.name] for f in fields(ScheduleSettings) if f.name in saved}
    changed = [name for name, value in known.items() if value != getattr(now, name)]
    if not changed:
        return None
    what = ", ".join(f"{CONFIG_NAMES.get(name, name)} {known[name]} -> {getattr(now, name)}" for name in changed)
    done = schedule.epoch
    if done >= now.epochs:
        return f"{what}: {done} epochs are done, none is left to train"
    before = replace(now, **known)
    if now.kind == "plateau":
        how = "the plateau schedule keeps its state"
    elif any(lr_at(before, e, base) != lr_at(now, e, base)
             for e in range(done, now.epochs) for base in schedule.base_lrs):
        how = f"the {now.kind} schedule is recomputed for {now.epochs} epochs"
    else:
        them = "the number of epochs" if changed == ["epochs"] else "them"
        how = f"the {now.kind} schedule does not depend on {them}"
    return f"{what}: {how}; epoch {done + 1} lr {schedule.lrs[0]:.2e}"
