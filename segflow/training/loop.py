"""The training loop behind the Trainer node: epochs of training and validation, checkpoints,
resume, early stopping, logging. `fit` is the one entry point."""
from __future__ import annotations

import contextlib
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from segflow.data.label_scheme import LabelScheme
from segflow.data.regions import paint
from segflow.data.segmentation_loader import batch_augment_of, labels_of
from segflow.training import artefacts, checkpoint, ddp, tracking
from segflow.training.device import resolve_device, resolve_precision, seed_everything
from segflow.training.epoch_statistics import EpochStatistics
from segflow.training.grad_histograms import GradientHistograms
from segflow.training.metrics import METRIC_DEFINITIONS
from segflow.training.mixing import BatchMix
from segflow.training.region_metrics import meter_for
from segflow.training.schedules import EpochSchedule, ScheduleSettings, describe_change
from segflow.workflow import distributed
from segflow.workflow.errors import first_line

if TYPE_CHECKING:
    from segflow.nodes.base import RunContext
    from segflow.nodes.training import TrainerConfig


def monitor_mode(monitor: str) -> str:
    """Losses go down, everything else (dice, iou, accuracy, ...) up."""
    return "min" if "loss" in monitor else "max"


class _Forward:
    """The model call, compiled when asked; falls back to eager with a message if compiling fails
    (torch.compile reports most failures on the first call, not when wrapping)."""

    def __init__(self, model: torch.nn.Module, compile_: bool | str, log: Callable[[str], None]):
        self.eager = model
        self.compiled = None
        self.log = log
        self.proven = False
        # CUDA graphs (reduce-overhead) reuse their output memory on the next replay; marking each call
        # as a new step tells torch that the previous step's outputs are no longer needed
        self.new_step = compile_ == "reduce-overhead"
        if compile_:
            mode = None if compile_ is True or compile_ == "default" else compile_
            try:
                self.compiled = torch.compile(model, mode=mode)
            except Exception as e:  # e.g. an unsupported Python version
                log(f"compile: torch.compile is not available here ({type(e).__name__}: {e}); training eagerly")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.eager(x)
        if self.new_step:
            torch.compiler.cudagraph_mark_step_begin()
        if self.proven:
            return self.compiled(x)
        try:
            out = self.compiled(x)
        except Exception as e:
            self.log(f"compile: torch.compile failed on the first batch ({first_line(e)}); training eagerly. "
                     "Set compile: false to skip this.")
            self.compiled = None
            return self.eager(x)
        self.proven = True
        return out


def _schedule_settings(cfg: TrainerConfig, epochs: int) -> ScheduleSettings:
    lr_patience = cfg.lr_patience
    if lr_patience is None:  # the patience rule (docs/training.md)
        lr_patience = 10 if cfg.early_stopping else cfg.patience
    return ScheduleSettings(kind=cfg.lr_schedule, epochs=epochs, warmup_epochs=cfg.warmup_epochs,
                            step_size=cfg.step_size, gamma=cfg.gamma, t_max=cfg.T_max, eta_min=cfg.eta_min,
                            power=cfg.power, factor=cfg.factor, patience=lr_patience,
                            mode=monitor_mode(cfg.monitor), threshold=cfg.min_delta)


def _memory_format(cfg: TrainerConfig, device: torch.device, sample: torch.Tensor,
                   amp_on: bool) -> torch.memory_format | None:
    want = cfg.channels_last
    if want == "auto":  # pays off with tensor cores (CUDA + reduced precision) only
        want = device.type == "cuda" and amp_on
    if not want:
        return None
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(sample.dim())


class _NoTensorBoard:
    """Stands in for the TensorBoard writer on ranks other than 0, which write no files."""

    def epoch(self, row) -> None:
        pass

    def image(self, tag, picture, step) -> None:
        pass

    def histograms(self, captured, step) -> None:
        pass

    def close(self) -> None:
        pass


class _TimedBatches:
    """A loader's iterator that adds up the host time spent blocked getting the next batch (worker
    start-up included). Host clock only: no CUDA sync, so it is cheap enough to be always on. When
    the host runs ahead of the GPU, time blocked here overlaps queued GPU work, so the fraction is an
    upper bound on how long the GPU waited for data."""

    def __init__(self, loader):
        t = time.perf_counter()
        self.it = iter(loader)
        self.wait = time.perf_counter() - t

    def __iter__(self):
        return self

    def __next__(self):
        t = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.wait += time.perf_counter() - t


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)


# The logged gradient norm is the mean over every GRAD_NORM_EVERY-th optimizer step (every step when
# clipping by norm, which computes it anyway): a norm over all parameters is several kernel launches,
# and small 2-D networks are bound by launches, not arithmetic.
GRAD_NORM_EVERY = 10

# the epoch log line's columns, named for what they are
_SUMMARY_COLUMNS = (("train_loss", "train_loss"), ("val_loss", "val_loss"), ("val_dice", "val_dice (pooled)"),
                    ("val_dice_case_mean", "val_dice_case_mean"))



class _EpochBar:
    """One training epoch's progress bar, on rank 0 with progress on. The running loss it shows is
    read from the device every 20 batches: one host sync per 20 steps, for the display only."""

    def __init__(self, show: bool, total: int, desc: str):
        self.total = total
        self.bar = None
        if show:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False)

    def update(self, index: int, stats: EpochStatistics, schedule: EpochSchedule, started: float,
               data_wait: float) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if (index + 1) % 20 == 0 or index + 1 == self.total:
            spent = max(1e-9, time.perf_counter() - started)
            self.bar.set_postfix(loss=f"{stats.running_loss(index):.4f}", lr=f"{schedule.lrs[0]:.2e}",
                                 img_s=f"{stats.images / spent:.1f}", data_wait=f"{data_wait / spent:.0%}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _training_device(cfg: TrainerConfig, ctx: RunContext, who: str) -> torch.device:
    """--device over the config's; under torchrun each process on its own GPU."""
    device = resolve_device(ctx.device or cfg.device, "--device" if ctx.device else f"{who}: config field 'device'")
    if distributed.initialized() and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank())
    return device


def _batch_mix(cfg: TrainerConfig, loss_fn: Any, who: str, log: Callable[[str], None]) -> BatchMix | None:
    """Mixup / CutMix as configured, or None; mixup's soft targets need a loss that says it takes them."""
    if not (cfg.mixup_alpha or cfg.cutmix_alpha) or not cfg.mixup_prob:
        return None
    mixer = BatchMix(cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mixup_prob)
    if mixer.soft and not getattr(loss_fn, "takes_soft_targets", False):
        raise ValueError(f"{who}: mixup_alpha makes soft targets, and the loss ({type(loss_fn).__name__}) does not "
                         "take them (a LossFunction with a boundary term, or a loss without `takes_soft_targets`); "
                         "drop the boundary term, or use cutmix_alpha, whose labels stay hard")
    kinds = [f"{k} alpha {a:g}" for k, a in (("mixup", cfg.mixup_alpha), ("cutmix", cfg.cutmix_alpha)) if a]
    log(f"{who}: {' and '.join(kinds)} on {cfg.mixup_prob:.0%} of the training batches")
    return mixer


def _channels(logits: torch.Tensor | list[torch.Tensor]) -> int:
    return (logits[0] if isinstance(logits, (list, tuple)) else logits).shape[1]


class TrainingRun:
    """One Trainer node's training: set up in __init__, `resume` from a checkpoint, then `run`."""

    def __init__(self, cfg: TrainerConfig, ctx: RunContext, name: str, model: torch.nn.Module, train_loader: Any,
                 val_loader: Any, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 optimizer: torch.optim.Optimizer):
        self.cfg, self.ctx, self.name, self.who = cfg, ctx, name, f"Trainer '{name}'"
        self.log = ctx.log
        self.model, self.train_loader, self.val_loader = model, train_loader, val_loader
        self.loss_fn, self.optimizer = loss_fn, optimizer
        # augmentation_on "device": the loader's random transforms, run here on whole training batches
        self.batch_augment = batch_augment_of(train_loader)
        # regions (sigmoid channels) and the ignore label of the data: the loss, metrics and pictures follow them
        self.labels = labels_of(train_loader)
        _loss_follows(loss_fn, self.labels, self.who)
        self.mixer = _batch_mix(cfg, loss_fn, self.who, self.log)
        if self.mixer is not None and self.mixer.soft and not self.labels.plain:
            raise ValueError(f"{self.who}: mixup_alpha blends one-hot classes, which data with regions or an ignore "
                             "label does not have; use cutmix_alpha (its labels stay class maps) or no mixing")
        self.epochs = cfg.epochs
        self.device = _training_device(cfg, ctx, self.who)
        # Under torchrun: DDP across the process group; rank 0 alone writes files and shows progress.
        self.dist = distributed.initialized() and distributed.world_size() > 1
        self.main = distributed.is_main()
        if cfg.seed is not None:
            # per rank: DDP ranks must not share dropout masks or augmentation_on "device" draws
            seed_everything(distributed.rank_seed(cfg.seed), cfg.deterministic)
        self.precision = resolve_precision(cfg.mixed_precision, self.device, self.log)
        self._set_up_folders_and_monitor()
        model.to(self.device)
        if isinstance(loss_fn, torch.nn.Module):
            loss_fn.to(self.device)
        self.schedule = EpochSchedule(optimizer, _schedule_settings(cfg, self.epochs))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaler)
        self.parts = checkpoint.TrainerParts(model, optimizer, self.schedule, self.scaler, [train_loader, val_loader])
        self.progress = checkpoint.Progress()
        # settled by the run's first training batch
        self.first_batch_seen = False
        self.num_classes: int | None = None
        self.memory_format: torch.memory_format | None = None
        self.patch_size: tuple[int, ...] | None = None  # the last training batch's spatial shape
        # The DDP wrapper is made at the first batch, once the memory format is settled; validation
        # calls the bare module, which runs no collectives, so ranks may see unequal shard sizes.
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        self.forward = None if distributed.initialized() else _Forward(model, cfg.compile, self.log)
        self.eval_forward = self.forward
        self.batchnorm_swap: ddp.SyncBatchNormSwap | None = None
        self.final_counts: tuple[int | None, Any] = (None, None)  # (epoch, CaseCounter) for the post-processing
        tensorboard = self.main and "tensorboard" in cfg.tracking
        self.tb = artefacts.TensorBoardLog(self.run_dir / "tensorboard") if tensorboard else _NoTensorBoard()
        self.mlflow = _mlflow_run(cfg, ctx, self.run_dir) if self.main and "mlflow" in cfg.tracking else None
        self.histograms = GradientHistograms(model, cfg.grad_histogram_every if self.main else 0,
                                             cfg.gradient_accumulation_steps)

    def _set_up_folders_and_monitor(self) -> None:
        """The run and checkpoint folders (rank 0 makes them and clears a killed run's partial writes),
        and the monitored column: train_loss when there is no val_loader to give val_ columns."""
        cfg = self.cfg
        self.run_dir = Path(self.ctx.run_dir)
        self.ckpt_dir = self.ctx.output_path(cfg.checkpoint_dir)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            checkpoint.remove_stale_writes(self.ckpt_dir, self.log)
        self.monitor, self.mode = cfg.monitor, monitor_mode(cfg.monitor)
        if self.val_loader is None and self.monitor.startswith("val_"):
            self.monitor, self.mode = "train_loss", "min"
            self.log(f"{self.who}: no val_loader wired; monitoring train_loss instead of {cfg.monitor}")

    # ---- the run ----------------------------------------------------------------------------

    def run(self) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
        self.log(f"{self.who}: {self.device}, {self.precision.describe()}, epochs {self.progress.epoch + 1}.."
                 f"{self.epochs}, lr_schedule {self.cfg.lr_schedule}, checkpoints in {self.ckpt_dir}")
        stopped_early = False
        if self.mlflow is not None:
            self.mlflow.start(resuming=self.progress.epoch > 0)
        try:
            for epoch in range(self.progress.epoch + 1, self.epochs + 1):
                row, validated = self._train_and_validate(epoch)
                improved = self._update_best(row, validated)
                self.schedule.step(row.get(self.monitor))
                self._record(row)
                self._save(improved)
                self._report(row, improved)
                if self._early_stop(epoch):
                    stopped_early = True
                    break
            self._finish(stopped_early)
        finally:
            self.tb.close()
            self._unwrap()
        return self.model, self.progress.history

    def _train_and_validate(self, epoch: int) -> tuple[dict[str, Any], bool]:
        """The epoch's history row, and whether it was validated."""
        started = time.perf_counter()
        lrs = self.schedule.lrs  # the lrs this epoch trains with
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        row: dict[str, Any] = {"epoch": epoch}
        try:
            row.update(self.train_epoch(epoch))
        except FloatingPointError:
            if self.main:  # the history up to the last good epoch
                self._write_files(final=False)
            raise
        validated = self.val_loader is not None and (epoch % self.cfg.validate_every == 0 or epoch == self.epochs)
        if validated:
            row.update(self.validate(epoch))
        row["lr"] = lrs[0]
        row.update(self._group_lrs(lrs))
        row["epoch_time"] = time.perf_counter() - started
        if self.device.type == "cuda":
            row["gpu_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return row, validated

    def _group_lrs(self, lrs: list[float]) -> dict[str, float]:
        """With several parameter groups, each one's lr as history column lr/NAME (the Optimizer names them)."""
        if len(lrs) < 2:
            return {}
        names = [g.get("name") or f"group{i}" for i, g in enumerate(self.optimizer.param_groups)]
        return {f"lr/{name}": lr for name, lr in zip(names, lrs)}

    def _improved(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        best = self.progress.best
        if best is None:
            return True
        d = self.cfg.min_delta
        return value > best + d if self.mode == "max" else value < best - d

    def _update_best(self, row: dict[str, Any], validated: bool) -> bool:
        """Whether the monitored value improved; counts the epochs without improvement for early stopping."""
        value, p = row.get(self.monitor), self.progress
        improved = self._improved(value)
        if improved:
            p.best, p.best_epoch, p.bad_epochs = value, row["epoch"], 0
        elif validated or self.monitor.startswith("train_"):
            p.bad_epochs += 1
            if self.monitor not in row and p.bad_epochs == 1:  # a misspelt monitor, said once
                columns = ", ".join(k for k in row if k.startswith(("train_", "val_")))
                self.log(f"{self.who}: monitor {self.monitor!r} is not a history column ({columns}); no best.pt "
                         f"is written and the plateau schedule does not step")
        return improved

    def _record(self, row: dict[str, Any]) -> None:
        self.progress.epoch = row["epoch"]
        self.progress.history.append(row)
        self.tb.epoch(row)
        if self.mlflow is not None:
            self.mlflow.epoch(row)

    def _report(self, row: dict[str, Any], improved: bool) -> None:
        if self.main:
            self._write_files(final=False)
            self.log(self._summary(row, improved))

    def _early_stop(self, epoch: int) -> bool:
        p = self.progress
        if not (self.cfg.early_stopping and p.bad_epochs >= self.cfg.patience):
            return False
        self.log(f"{self.who}: early stopping at epoch {epoch}: {self.monitor} has not improved by more than "
                 f"{self.cfg.min_delta} for {p.bad_epochs} epochs " +
                 (f"(best {p.best:.4f} at epoch {p.best_epoch})" if p.best is not None else "(no value yet)"))
        return True

    def _finish(self, stopped_early: bool) -> None:
        """The chosen weights (output_weights) in the model handed on, the final history, plots and metrics."""
        distributed.barrier()  # rank 0 has finished writing best.pt before anyone reads it
        weights, epoch = self._load_output_weights()
        chosen = self._decide_postprocessing(weights, epoch)
        if self.main:
            self._write_files(final=True, stopped_early=stopped_early,
                              output_model={"weights": weights, "epoch": epoch}, postprocessing=chosen)
        if self.mlflow is not None:
            files = [self.ctx.workflow_file, *(self.run_dir / n for n in ("history.csv", "metrics.json", "loss.png",
                                                                         "metrics.png", "lr.png",
                                                                         "postprocessing.json"))]
            best = self.ckpt_dir / "best.pt"
            self.mlflow.trained([f for f in files if f is not None], best if best.is_file() else None)

    def _load_output_weights(self) -> tuple[str, int]:
        """Put best.pt's weights in the model unless output_weights is last (or there is no best.pt);
        says which weights the output model holds. Returns which ("best" or "last") and their epoch."""
        p, best_file = self.progress, self.ckpt_dir / "best.pt"
        last = f"the last epoch's weights (epoch {p.epoch}), as {self.ckpt_dir / 'last.pt'}"
        if self.cfg.output_weights == "last":
            best = f"; the best {self.monitor} was epoch {p.best_epoch}, in {best_file}" if p.best is not None else ""
            self.log(f"{self.who}: the output model holds {last} (output_weights: last){best}")
            return "last", p.epoch
        if p.best is None or not best_file.is_file():
            why = f"{best_file} is missing" if p.best is not None else f"no epoch had a finite {self.monitor}"
            self.log(f"{self.who}: the output model holds {last}, not the best: {why}")
            return "last", p.epoch
        if p.best_epoch != p.epoch:  # else the model holds them already
            self.model.load_state_dict(checkpoint.load_checkpoint(best_file, map_location=self.device)["model"])
        self.log(f"{self.who}: the output model holds the best weights (epoch {p.best_epoch}, {self.monitor} "
                 f"{p.best:.4f}), as {best_file}")
        return "best", p.best_epoch

    # ---- one epoch --------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training loader; the history's training columns."""
        self.model.train()
        sampler = getattr(self.train_loader, "sampler", None)
        # segflow's loader (EpochSampler) and DistributedSampler: the epoch's order, and with segflow's
        # loader every random draw of its samples, follow from the epoch number, so a resumed run's
        # epochs are those of an uninterrupted one
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        stats = EpochStatistics(len(self.train_loader), self.device)
        self.histograms.start_epoch(epoch, stats.batches)
        bar = _EpochBar(self.ctx.progress and self.main, stats.batches, f"{self.name} epoch {epoch}/{self.epochs}")
        started = time.perf_counter()
        batches = _TimedBatches(self.train_loader)
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(batches):
            self.train_step(batch, i, stats)
            bar.update(i, stats, self.schedule, started, batches.wait)
        bar.close()
        numbers = stats.reduce(across_processes=self.dist)
        if numbers.first_bad_step:
            raise FloatingPointError(
                f"{self.who}: the loss became NaN/Inf at epoch {epoch}, step {numbers.first_bad_step} of "
                f"{numbers.batches}. Training stopped; {self._last_good()}. Try a lower learning_rate (the "
                f"Optimizer node's, or the Trainer's own when no Optimizer is wired; this epoch's was "
                f"{max(self.schedule.lrs):g}), gradient_clip (e.g. 1.0), mixed_precision false, and check the data "
                f"for NaN/Inf values.")
        self.tb.histograms(self.histograms.take(), epoch)  # read after the reduction's sync: no sync of their own
        self.progress.global_step += stats.steps
        # after the reduction's sync, so the GPU's queued work is inside the clock; this rank's figures
        return numbers.row(max(1e-9, time.perf_counter() - started), batches.wait)

    def _last_good(self) -> str:
        """Where the NaN error sends the user: this run's last.pt (written after every epoch it finished,
        or the resumed one's), or that there is none yet."""
        last = self.ckpt_dir / "last.pt"
        if self.progress.epoch > 0 and last.is_file():
            return f"the last good checkpoint is {last} (epoch {self.progress.epoch})"
        if self.ctx.resume:
            return f"this run wrote no checkpoint yet; the one it resumed from is {self.ctx.resume}"
        return "no checkpoint was written yet (the run finished no epoch)"

    def train_step(self, batch: dict[str, Any], index: int, stats: EpochStatistics) -> None:
        """Forward and backward of the epoch's batch `index`; the optimizer steps once every
        gradient_accumulation_steps batches, and after the epoch's last batch."""
        image, label = self._prepare(batch, self.batch_augment)
        mixed = self.mixer.draw(image) if self.mixer is not None else None
        if mixed is not None:
            image = mixed.images(image)
            if self.memory_format is not None:
                image = image.contiguous(memory_format=self.memory_format)
        if not self.first_batch_seen:
            image = self._settle_on_first_batch(image, label)
        self.patch_size = tuple(image.shape[2:])
        accum, n = self.cfg.gradient_accumulation_steps, stats.batches
        # the last group may be shorter: scale by its real size so it is a true mean
        group = min(accum, n - (index // accum) * accum)
        stepping = (index + 1) % accum == 0 or index + 1 == n
        # DDP averages gradients across ranks in backward; between optimizer steps that is wasted
        with self.ddp.no_sync() if self.dist and not stepping else contextlib.nullcontext():
            with torch.autocast(self.device.type, dtype=self.precision.dtype, enabled=self.precision.enabled):
                logits = self.forward(image)
                target = label if mixed is None else mixed.labels(label, _channels(logits))
                loss = self.loss_fn(logits, target)
            if self.num_classes is None:  # deep supervision's outputs: the full-resolution one first
                self._check_labels(logits[0] if isinstance(logits, (list, tuple)) else logits, label)
            stats.add_batch(index, loss, image.shape[0])
            self.scaler.scale(loss / group if group > 1 else loss).backward()
        if stepping:
            self._optimizer_step(stats)

    def _optimizer_step(self, stats: EpochStatistics) -> None:
        self.scaler.unscale_(self.optimizer)
        self.histograms.after_unscale(stats.steps)
        norm = self._clip_gradients(measure=stats.steps % GRAD_NORM_EVERY == 0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        stats.add_optimizer_step(norm)

    def _clip_gradients(self, measure: bool) -> torch.Tensor | None:
        """Clip as configured; the total gradient norm before clipping when `measure` (or when clipping
        by norm, which computes it anyway), else None."""
        clip = self.cfg.gradient_clip
        if not (clip or measure):
            return None
        with_grad = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if clip and self.cfg.gradient_clip_type == "norm":
            return torch.nn.utils.clip_grad_norm_(with_grad, clip)
        norm = _grad_norm(with_grad) if measure else None
        if clip:
            torch.nn.utils.clip_grad_value_(with_grad, clip)
        return norm

    def _settle_on_first_batch(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The memory format (model and this batch converted) and, under torchrun, the DDP wrapper,
        which need a real batch; `image` in the settled memory format."""
        self.memory_format = _memory_format(self.cfg, self.device, image, self.precision.enabled)
        if self.memory_format is not None:
            self.model.to(memory_format=self.memory_format)
            image = image.contiguous(memory_format=self.memory_format)
        if self.forward is None:
            self._wrap(image, label)
        self.first_batch_seen = True
        return image

    def _prepare(self, batch: dict[str, Any], augment=None) -> tuple[torch.Tensor, torch.Tensor]:
        image = batch["image"].to(self.device, non_blocking=True)
        # loaders hand out uint8 labels (fewer bytes to copy); the losses and metrics take int64
        label = batch["label"].to(self.device, non_blocking=True).long()
        if augment is not None:  # first: its resampling hands back tensors in the default memory format
            image, label = augment(image, label)
        if self.memory_format is not None:
            image = image.contiguous(memory_format=self.memory_format)
        return image, label

    def _check_labels(self, logits: torch.Tensor, label: torch.Tensor) -> None:
        classes = max(2, logits.shape[1])
        self.num_classes = classes
        regions = self.labels.regions
        if regions:
            if logits.shape[1] != len(regions):
                raise ValueError(f"{self.who}: the model outputs {logits.shape[1]} channel(s) but the data has "
                                 f"{len(regions)} regions ({', '.join(self.labels.names())}); set the network's "
                                 f"out_channels to {len(regions)}")
            return
        if self.labels.ignore is not None:  # the ignore label is no class
            label = label.masked_fill(label == self.labels.ignore, 0)
        top = int(label.max())  # one host sync, once per run
        if top >= classes:
            raise ValueError(f"{self.who}: a training label has class {top} but the model outputs "
                             f"{logits.shape[1]} channel(s); set the network's out_channels to at least {top + 1}")

    # ---- DDP --------------------------------------------------------------------------------

    def _wrap(self, image: torch.Tensor, label: torch.Tensor) -> None:
        """Wrap the model in DDP at the first batch, which the unused-parameter probe runs on."""
        from torch.nn.parallel import DistributedDataParallel

        cfg, who = self.cfg, self.who

        def first_loss() -> torch.Tensor:
            with torch.autocast(self.device.type, dtype=self.precision.dtype, enabled=self.precision.enabled):
                return self.loss_fn(self.model(image), label).float()

        # probed before the SyncBatchNorm swap, whose forward and backward would run collectives
        find_unused, unused_why = ddp.find_unused_parameters(cfg.find_unused_parameters, self.model, first_loss,
                                                             self.device, self.log, who)
        sync_bn, sync_why = ddp.sync_batchnorm_wanted(cfg.sync_batchnorm, self.model, self.device, self.dist,
                                                      self.log, who)
        if sync_bn:  # before DDP, which sets its SyncBatchNorm layers up when it is built
            self.batchnorm_swap = ddp.SyncBatchNormSwap(self.model)
            sync_why += f", {len(self.batchnorm_swap)} layers"
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=find_unused)
        self.forward = _Forward(self.ddp, cfg.compile, self.log)
        self.eval_forward = _Forward(self.model, cfg.compile, self.log)
        self.log(f"{who}: DistributedDataParallel over {distributed.world_size()} process(es): find_unused_parameters "
                 f"{str(find_unused).lower()} ({unused_why}), sync_batchnorm {str(sync_bn).lower()} ({sync_why})")

    def _unwrap(self) -> None:
        """Plain BatchNorm layers again in the model handed on (prediction and export on rank 0)."""
        if self.batchnorm_swap is not None:
            self.batchnorm_swap.undo()
            self.batchnorm_swap = None

    # ---- validation -------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, float]:
        dev = self.device
        if self.dist:  # validate with the statistics the checkpoint holds, on every rank
            distributed.broadcast_buffers_(self.model)
        self.model.eval()
        loss_sum = torch.zeros((), device=dev)
        meter = None
        n = 0
        sample = None
        forward = self.eval_forward or self.forward
        counter = self._final_counter(epoch)
        for batch in self.val_loader:
            image, label = self._prepare(batch)
            with torch.autocast(dev.type, dtype=self.precision.dtype, enabled=self.precision.enabled):
                logits = self._validation_logits(image, forward)
            logits = logits.float()
            # weighted by batch size: the mean over validation images, however they are batched or sharded
            loss_sum += self.loss_fn(logits, label).detach().float() * image.shape[0]
            if meter is None:
                meter = meter_for(self.labels, logits.shape[1], dev)
            meter.update(logits, label, batch.get("case"))
            if counter is not None:
                counter.add(logits, label, batch.get("case"))
            if sample is None and self.cfg.log_images and self.main:
                sample = self._sample(image, label, logits)
            n += image.shape[0]
        if self.dist:  # each image was validated on exactly one rank: sums over ranks are the dataset's
            if meter is None:  # this rank's shard was empty (more ranks than validation images)
                meter = meter_for(self.labels, self.num_classes or 2, dev)
            totals = distributed.all_reduce_(torch.stack([loss_sum, torch.tensor(float(n), device=dev)]))
            loss_sum, n = totals[0], int(totals[1])
        out = {"val_loss": float(loss_sum) / max(1, n)}
        if meter is not None:
            out.update({f"val_{k}": v for k, v in meter.compute(across_processes=self.dist).items()})
        if sample is not None:
            self.tb.image("val/sample_image_label_prediction", artefacts.sample_grid(*sample), epoch)
        if counter is not None:
            self.final_counts = (epoch, counter)
        return out

    def _final_counter(self, epoch: int):
        """The last epoch's validation also counts the cases for the post-processing decision, which
        then needs no second pass when the output weights are that epoch's (segflow.training.postprocessing)."""
        if epoch != self.epochs or self.cfg.postprocessing != "auto" or not self.labels.plain:
            return None
        from segflow.training.postprocessing import CaseCounter

        return CaseCounter()

    def _decide_postprocessing(self, weights: str, epoch: int) -> str | None:
        """postprocessing auto: nnU-Net's largest-component rule chosen on the validation cases with the
        output weights (segflow.training.postprocessing); the file is recorded on the model handed on."""
        from segflow.inference.postprocess import attach
        from segflow.training.postprocessing import decide

        path = None
        if self.cfg.postprocessing == "auto" and self.val_loader is None:
            self.log(f"{self.who}: no val_loader wired, so no post-processing is chosen (postprocessing: auto)")
        elif self.cfg.postprocessing == "auto" and not self.labels.plain:
            self.log(f"{self.who}: no post-processing is chosen for data with regions or an ignore label (the "
                     "largest-component rule is decided on plain classes only)")
        elif self.cfg.postprocessing == "auto":
            # the last epoch's validation counted these very weights already, unless they are an earlier epoch's
            counted, counter = self.final_counts
            about = {"node": self.name, "weights": weights, "epoch": epoch, "prediction_seconds": 0.0}
            if counted != epoch:
                started = time.perf_counter()
                counter = self._count_validation_cases()
                about["prediction_seconds"] = round(time.perf_counter() - started - counter.seconds, 3)
            path = decide(counter, self.run_dir, self.who, self.log, about)
        attach(self.model, path)
        return None if path is None else str(path)

    @torch.no_grad()
    def _count_validation_cases(self):
        """Every validation case predicted as `validate` predicts it, with the model's weights, counted
        for the post-processing decision."""
        from segflow.training.postprocessing import CaseCounter

        if self.dist:
            distributed.broadcast_buffers_(self.model)
        self.model.eval()
        forward, dev, counter = self.eval_forward or self.forward, self.device, CaseCounter()
        for batch in self.val_loader:
            if "label" in batch:
                image, label = self._prepare(batch)
                with torch.autocast(dev.type, dtype=self.precision.dtype, enabled=self.precision.enabled):
                    counter.add(self._validation_logits(image, forward), label, batch.get("case"))
        return counter

    def _sample(self, image: torch.Tensor, label: torch.Tensor, logits: torch.Tensor) -> tuple:
        """The first validation image, its label and prediction (a class map: regions painted back)."""
        if self.labels.region_based:
            pred = paint(logits[0], self.labels, threshold=0.0)
            classes = max(2, max(self.labels.paint) + 1)
        else:
            pred = (logits[0, 0] > 0).long() if logits.shape[1] == 1 else logits[0].argmax(0)
            classes = max(2, logits.shape[1])
        return image[0].cpu(), label[0].cpu(), pred.cpu(), classes

    def _validation_logits(self, image: torch.Tensor, forward: _Forward) -> torch.Tensor:
        """Whole images, or a sliding window of the training patch size (or val_roi_size) over them."""
        from monai.inferers import sliding_window_inference

        cfg, patch = self.cfg, self.patch_size
        slide = cfg.sliding_window
        if slide == "auto":
            slide = patch is not None and tuple(image.shape[2:]) != patch
        if not slide:
            return forward(image)
        roi = tuple(cfg.val_roi_size) if cfg.val_roi_size else patch
        return sliding_window_inference(image, roi_size=roi, sw_batch_size=cfg.sw_batch_size, predictor=forward,
                                        overlap=cfg.sw_overlap, mode="gaussian")

    # ---- checkpoints and files --------------------------------------------------------------

    def _save(self, improved: bool) -> None:
        # every rank's RNG streams differ (own shard, own augmentation seed): keep them all, so each
        # rank resumes its own; rank 0 alone writes the file
        rng_ranks = distributed.gather_objects(checkpoint.capture_rng(self.parts.loaders))
        if not self.main:
            return
        data = checkpoint.trainer_state_to_checkpoint(
            self.parts, self.progress, rng_ranks, workflow=self.ctx.workflow_name, node=self.name,
            monitor=self.monitor, mode=self.mode, trainer_config=self.cfg.model_dump(mode="json"))
        with checkpoint.ctrl_c_after():  # a Ctrl-C during best.pt waits for last.pt too: --resume needs it
            if improved:
                checkpoint.atomic_save(data, self.ckpt_dir / "best.pt")
            checkpoint.atomic_save(data, self.ckpt_dir / "last.pt")  # resume always needs the newest state
            self.ctx.mark_usable()  # runs/<workflow>/latest moves here with the run's first checkpoint
            every, epoch = self.cfg.save_frequency, self.progress.epoch
            if not self.cfg.save_best_only and every and epoch % every == 0:
                checkpoint.atomic_save(data, self.ckpt_dir / checkpoint.periodic_name(epoch))
                checkpoint.prune_periodic(self.ckpt_dir, self.cfg.keep_last)

    def resume(self, where: str | None) -> None:
        if not where:
            return
        path = Path(where)  # the executor has already turned --resume auto into a path (or None)
        data = checkpoint.load_checkpoint(path, map_location=self.device)
        diff = checkpoint.signature_difference(data["model_signature"], checkpoint.model_signature(self.model))
        if diff:
            raise ValueError(f"cannot resume {self.who} from {path}: {diff}. Resume with the model "
                             f"config the checkpoint was trained with, or start a fresh run without --resume")
        written_by, world = checkpoint.processes_of(data), distributed.world_size()
        if written_by and written_by != world and self.main:
            self.log(f"{self.who}: the checkpoint was written by {written_by} process(es), this run has "
                     f"{world}; data order continues from the epoch, not bit for bit")
        self.progress = checkpoint.restore_trainer_state(data, self.parts, distributed.rank(), world)
        best = path.parent / "best.pt"
        if self.main and best.is_file() and best.resolve() != (self.ckpt_dir / "best.pt").resolve():
            shutil.copy2(best, self.ckpt_dir / "best.pt")  # restore-best at the end needs it here
        self.log(f"{self.who}: resumed from {path} at epoch {self.progress.epoch}/{self.epochs}")
        # e.g. --set trainer.epochs=... on resume: the schedule follows the new settings; say how
        change = describe_change(checkpoint.schedule_settings_of(data), self.schedule)
        if change and self.main:
            self.log(f"{self.who}: {change}")

    def _summary(self, row: dict[str, Any], improved: bool) -> str:
        # val_dice is pooled over all validation voxels; the per-case mean is what the Evaluator reports
        shown = [f"{label} {row[k]:.4f}" for k, label in _SUMMARY_COLUMNS if k in row]
        return (f"epoch {row['epoch']}/{self.epochs}: " + ", ".join(shown) +
                f", lr {row['lr']:.2e}, {row['epoch_time']:.1f}s ({row['step_time_ms']:.0f} ms/step, "
                f"data wait {row['data_wait_fraction']:.0%})" + (" *best*" if improved else ""))

    def _write_files(self, final: bool, stopped_early: bool = False, output_model: dict | None = None,
                     postprocessing: str | None = None) -> None:
        p = self.progress
        artefacts.write_history(self.run_dir, p.history)
        if not final:
            return
        artefacts.plot_curves(self.run_dir, p.history)
        best_row = next((r for r in p.history if r["epoch"] == p.best_epoch), None)
        artefacts.write_metrics(self.run_dir, {
            "monitor": self.monitor, "mode": self.mode, "best_value": p.best, "best_epoch": p.best_epoch,
            "epochs_run": p.epoch, "stopped_early": stopped_early, "global_step": p.global_step,
            "final": p.history[-1] if p.history else None, "best": best_row,
            "output_model": output_model, "postprocessing": postprocessing,
            "checkpoints": {"last": str(self.ckpt_dir / "last.pt"),
                            "best": str(self.ckpt_dir / "best.pt") if (self.ckpt_dir / "best.pt").is_file() else None},
            "definitions": METRIC_DEFINITIONS,
        })


def _loss_follows(loss_fn: Any, labels: LabelScheme, who: str) -> None:
    """Tell the loss about regions and the ignore label; a loss that cannot follow them is an error."""
    if labels.plain:
        return
    follow = getattr(loss_fn, "follow_labels", None)
    if follow is None:
        raise ValueError(f"{who}: the data has {labels.describe()}, which the loss wired to loss_fn "
                         f"({type(loss_fn).__name__}) does not know; use a LossFunction node")
    follow(labels)


def _mlflow_run(cfg: TrainerConfig, ctx: RunContext, run_dir: Path) -> tracking.MlflowRun:
    run = tracking.MlflowRun(run_dir, cfg.mlflow_experiment or ctx.workflow_name, ctx.workflow_file, ctx.log,
                             cfg.mlflow_log_checkpoint)
    ctx.trackers.append(run)  # the executor ends it once the whole workflow has run
    return run


def fit(cfg: TrainerConfig, ctx: RunContext, name: str, model: torch.nn.Module, train_loader: Any, val_loader: Any,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """Train `model`; returns (model, history). Resumes from `ctx.resume` when set."""
    job = TrainingRun(cfg, ctx, name, model, train_loader, val_loader, loss_fn, optimizer)
    job.resume(ctx.resume)
    with ddp.explain_unused_parameter_errors(model, cfg.find_unused_parameters, f"Trainer '{name}'"):
        return job.run()
