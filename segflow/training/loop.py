"""The training loop behind the Trainer node: epochs of training and validation, checkpoints,
resume, early stopping, logging. `fit` is the one entry point."""
from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from segflow.data.segmentation_loader import batch_augment_of
from segflow.training import artefacts, checkpoint, ddp
from segflow.training.device import resolve_device, resolve_precision, seed_everything
from segflow.training.metrics import ConfusionMeter
from segflow.training.schedules import EpochSchedule, ScheduleSettings
from segflow.workflow import distributed


def monitor_mode(monitor: str) -> str:
    """Losses go down, everything else (dice, iou, accuracy, ...) up."""
    return "min" if "loss" in monitor else "max"


@dataclass
class State:
    """Everything about progress that a checkpoint carries besides model/optimizer/scheduler/scaler."""

    epoch: int = 0  # last finished epoch
    global_step: int = 0  # optimizer steps so far
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0  # validated epochs since the monitor last improved
    history: list[dict[str, Any]] = field(default_factory=list)


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
            self.log(f"compile: torch.compile failed on the first batch ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}); training eagerly. Set compile: false to skip this.")
            self.compiled = None
            return self.eager(x)
        self.proven = True
        return out


def _schedule_settings(cfg, epochs: int) -> ScheduleSettings:
    lr_patience = cfg.lr_patience
    if lr_patience is None:  # the documented rule for the seed's shared `patience`
        lr_patience = 10 if cfg.early_stopping else cfg.patience
    return ScheduleSettings(kind=cfg.lr_schedule, epochs=epochs, warmup_epochs=cfg.warmup_epochs,
                            step_size=cfg.step_size, gamma=cfg.gamma, t_max=cfg.T_max, eta_min=cfg.eta_min,
                            power=cfg.power, factor=cfg.factor, patience=lr_patience,
                            mode=monitor_mode(cfg.monitor), threshold=cfg.min_delta)


def _memory_format(cfg, device: torch.device, sample: torch.Tensor, amp_on: bool):
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


class Fit:
    def __init__(self, cfg, ctx, name: str, model, train_loader, val_loader, loss_fn, optimizer):
        self.cfg, self.ctx, self.name = cfg, ctx, name
        self.log = ctx.log
        self.model, self.train_loader, self.val_loader = model, train_loader, val_loader
        self.loss_fn, self.optimizer = loss_fn, optimizer
        # augmentation_on "device": the loader's random transforms, run here on whole training batches
        self.batch_augment = batch_augment_of(train_loader)
        self.epochs = cfg.epochs
        self.device = resolve_device(ctx.device or cfg.device,
                                     "--device" if ctx.device else f"Trainer '{name}': config field 'device'")
        # Under torchrun: DDP across the process group; rank 0 alone writes files and shows progress.
        self.dist = distributed.initialized() and distributed.world_size() > 1
        self.main = distributed.is_main()
        if distributed.initialized() and self.device.type == "cuda":
            self.device = torch.device("cuda", distributed.local_rank())  # one GPU per process
        if cfg.seed is not None:
            # per rank: DDP ranks must not share dropout masks or augmentation_on "device" draws
            seed_everything(distributed.rank_seed(cfg.seed), cfg.deterministic)
        self.precision = resolve_precision(cfg.mixed_precision, self.device, self.log)
        self.run_dir = Path(ctx.run_dir)
        self.ckpt_dir = ctx.output_path(cfg.checkpoint_dir)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.monitor = cfg.monitor
        self.mode = monitor_mode(cfg.monitor)
        if val_loader is None and self.monitor.startswith("val_"):
            self.monitor = "train_loss"
            self.mode = "min"
            self.log(f"Trainer '{name}': no val_loader wired; monitoring train_loss instead of {cfg.monitor}")
        model.to(self.device)
        if isinstance(loss_fn, torch.nn.Module):
            loss_fn.to(self.device)
        self.schedule = EpochSchedule(optimizer, _schedule_settings(cfg, self.epochs))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaler)
        self.state = State()
        self.num_classes: int | None = None
        self.memory_format = None
        # The DDP wrapper is made at the first batch, once the memory format is settled; validation
        # calls the bare module, which runs no collectives, so ranks may see unequal shard sizes.
        self.forward = None if distributed.initialized() else _Forward(model, cfg.compile, self.log)
        self.eval_forward = self.forward
        self.batchnorm_swap: ddp.SyncBatchNormSwap | None = None
        self.tb = artefacts.TensorBoardLog(self.run_dir / "tensorboard") if self.main else _NoTensorBoard()

    def _wrap(self, image: torch.Tensor, label: torch.Tensor) -> None:
        """Wrap the model in DDP at the first batch, which the unused-parameter probe runs on."""
        from torch.nn.parallel import DistributedDataParallel

        cfg, who = self.cfg, f"Trainer '{self.name}'"

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

    # ---- checkpoints ------------------------------------------------------------------------

    def _checkpoint(self) -> dict[str, Any]:
        s = self.state
        return {
            "format": checkpoint.FORMAT, "version": checkpoint.VERSION,
            "workflow": self.ctx.workflow_name, "node": self.name,
            "epoch": s.epoch, "global_step": s.global_step,
            "model": self.model.state_dict(), "model_signature": checkpoint.model_signature(self.model),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": checkpoint.capture_rng([self.train_loader, self.val_loader]),
            "monitor": {"name": self.monitor, "mode": self.mode, "best": s.best, "best_epoch": s.best_epoch},
            "early_stopping": {"bad_epochs": s.bad_epochs},
            "history": s.history,
            "trainer_config": self.cfg.model_dump(mode="json"),
        }

    def _save(self, improved: bool) -> None:
        # every rank's RNG streams differ (own shard, own augmentation seed): keep them all, so each
        # rank resumes its own; rank 0 alone writes the file
        rng = distributed.gather_objects(checkpoint.capture_rng([self.train_loader, self.val_loader]))
        if not self.main:
            return
        data = self._checkpoint()
        data["rng"] = rng[0]
        data["rng_ranks"] = rng
        if improved:
            checkpoint.atomic_save(data, self.ckpt_dir / "best.pt")
        checkpoint.atomic_save(data, self.ckpt_dir / "last.pt")  # resume always needs the newest state
        every = self.cfg.save_frequency
        if not self.cfg.save_best_only and every and self.state.epoch % every == 0:
            checkpoint.atomic_save(data, self.ckpt_dir / checkpoint.periodic_name(self.state.epoch))
            checkpoint.prune_periodic(self.ckpt_dir, self.cfg.keep_last)

    def resume(self, where: str | None) -> None:
        if not where:
            return
        path = Path(where)  # the executor has already turned --resume auto into a path (or None)
        data = checkpoint.load_checkpoint(path, map_location=self.device)
        diff = checkpoint.signature_difference(data["model_signature"], checkpoint.model_signature(self.model))
        if diff:
            raise ValueError(f"cannot resume Trainer '{self.name}' from {path}: {diff}. Resume with the model "
                             f"config the checkpoint was trained with, or start a fresh run without --resume")
        self.model.load_state_dict(data["model"])
        self.optimizer.load_state_dict(data["optimizer"])
        self.schedule.load_state_dict(data["scheduler"])
        self.scaler.load_state_dict(data["scaler"])
        mon = data["monitor"]
        self.state = State(epoch=data["epoch"], global_step=data["global_step"], best=mon["best"],
                           best_epoch=mon["best_epoch"], bad_epochs=data["early_stopping"]["bad_epochs"],
                           history=list(data["history"]))
        ranks = data.get("rng_ranks") or []
        same_world = len(ranks) == distributed.world_size()
        if ranks and not same_world and self.main:
            self.log(f"Trainer '{self.name}': the checkpoint was written by {len(ranks)} process(es), this run has "
                     f"{distributed.world_size()}; data order continues from the epoch, not bit for bit")
        rng = ranks[distributed.rank()] if same_world else data["rng"]
        checkpoint.restore_rng(rng, [self.train_loader, self.val_loader])
        best = path.parent / "best.pt"
        if self.main and best.is_file() and best.resolve() != (self.ckpt_dir / "best.pt").resolve():
            shutil.copy2(best, self.ckpt_dir / "best.pt")  # restore-best at the end needs it here
        self.log(f"Trainer '{self.name}': resumed from {path} at epoch {self.state.epoch}/{self.epochs}")

    # ---- one epoch --------------------------------------------------------------------------

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
        top = int(label.max())  # one host sync, once per run
        if top >= classes:
            raise ValueError(f"Trainer '{self.name}': a training label has class {top} but the model outputs "
                             f"{logits.shape[1]} channel(s); set the network's out_channels to at least {top + 1}")

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, dev = self.cfg, self.device
        model, opt, scaler = self.model, self.optimizer, self.scaler
        model.train()
        n_batches = len(self.train_loader)
        accum = cfg.gradient_accumulation_steps
        # each step's loss stays on the device (one copy per step, no sync); the epoch's mean and the
        # first non-finite step are read from it once, at the end
        losses = torch.zeros(max(1, n_batches), device=dev)
        norm_sum = torch.zeros((), device=dev)
        steps = images = norms = 0
        params = [p for g in opt.param_groups for p in g["params"]]
        bar = None
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new shuffle of the shards each epoch
            sampler.set_epoch(epoch)
        if self.ctx.progress and self.main:
            from tqdm.auto import tqdm
            bar = tqdm(total=n_batches, desc=f"{self.name} epoch {epoch}/{self.epochs}", unit="batch", leave=False)
        started = time.perf_counter()
        batches = _TimedBatches(self.train_loader)
        opt.zero_grad(set_to_none=True)
        for i, batch in enumerate(batches):
            image, label = self._prepare(batch, self.batch_augment)
            if self.memory_format is None and i == 0 and epoch == self.state.epoch + 1:
                self.memory_format = _memory_format(cfg, dev, image, self.precision.enabled)
                if self.memory_format is not None:
                    model.to(memory_format=self.memory_format)
                    image = image.contiguous(memory_format=self.memory_format)
            if self.forward is None:
                self._wrap(image, label)
            self.patch_size = tuple(image.shape[2:])
            # the last group may be shorter: scale by its real size so it is a true mean
            group = min(accum, n_batches - (i // accum) * accum)
            stepping = (i + 1) % accum == 0 or i + 1 == n_batches
            # DDP averages gradients across ranks in backward; between optimizer steps that is wasted
            with contextlib.ExitStack() as sync:
                if self.dist and not stepping:
                    sync.enter_context(self.ddp.no_sync())
                with torch.autocast(dev.type, dtype=self.precision.dtype, enabled=self.precision.enabled):
                    logits = self.forward(image)
                    loss = self.loss_fn(logits, label)
                if self.num_classes is None:
                    self._check_labels(logits, label)
                if i < len(losses):  # a loader may yield more batches than its len() said
                    losses[i] = loss.detach()
                scaler.scale(loss / group if group > 1 else loss).backward()
            images += image.shape[0]
            if stepping:
                scaler.unscale_(opt)
                norm = None
                sampled = steps % GRAD_NORM_EVERY == 0
                if cfg.gradient_clip or sampled:
                    with_grad = [p for p in params if p.grad is not None]
                    if cfg.gradient_clip and cfg.gradient_clip_type == "norm":
                        norm = torch.nn.utils.clip_grad_norm_(with_grad, cfg.gradient_clip)  # norm before clipping
                    else:
                        if sampled:
                            norm = _grad_norm(with_grad)
                        if cfg.gradient_clip:
                            torch.nn.utils.clip_grad_value_(with_grad, cfg.gradient_clip)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                if norm is not None:
                    norm_sum += norm.detach().float()
                    norms += 1
                steps += 1
            if bar is not None:
                bar.update(1)
                if (i + 1) % 20 == 0 or i + 1 == n_batches:  # one sync per 20 steps, for the display only
                    spent = max(1e-9, time.perf_counter() - started)
                    bar.set_postfix(loss=f"{float(losses[:i + 1].mean()):.4f}", lr=f"{self.schedule.lrs[0]:.2e}",
                                    img_s=f"{images / spent:.1f}", data_wait=f"{batches.wait / spent:.0%}")
        if bar is not None:
            bar.close()
        local_batches = n_batches
        finite = torch.isfinite(losses)
        loss_sum = losses.sum()
        # 1-based index of the first non-finite step, 0 when every loss was finite
        first_bad = torch.where(finite.all(), 0, (~finite).int().argmax() + 1).long()
        if self.dist:  # the job's loss and image count, and a NaN on any rank stops every rank
            totals = distributed.all_reduce_(torch.stack([loss_sum.float(), torch.tensor(float(n_batches), device=dev),
                                                          torch.tensor(float(images), device=dev)]))
            loss_sum, n_batches, images = totals[0], int(totals[1]), int(totals[2])
            first_bad = distributed.all_reduce_(first_bad, "max")
        bad = int(first_bad)  # the one sync per epoch
        if bad > 0:
            raise FloatingPointError(
                f"Trainer '{self.name}': the loss became NaN/Inf at epoch {epoch}, step {bad} of {n_batches}. "
                f"Training stopped; the last good checkpoint is {self.ckpt_dir / 'last.pt'} "
                f"(epoch {self.state.epoch}). Try a lower learning_rate, gradient_clip (e.g. 1.0), "
                f"mixed_precision false, and check the data for NaN/Inf values.")
        self.state.global_step += steps
        # after the sync above, so the GPU's queued work is inside the clock; this rank's figures
        elapsed = max(1e-9, time.perf_counter() - started)
        return {"train_loss": float(loss_sum) / max(1, n_batches), "grad_norm": float(norm_sum) / max(1, norms),
                "throughput": images / elapsed, "train_time": elapsed,
                "step_time_ms": 1000 * elapsed / max(1, local_batches),
                "data_wait_fraction": min(1.0, batches.wait / elapsed)}

    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, float]:
        from monai.inferers import sliding_window_inference

        cfg, dev = self.cfg, self.device
        if self.dist:  # validate with the statistics the checkpoint holds, on every rank
            distributed.broadcast_buffers_(self.model)
        self.model.eval()
        loss_sum = torch.zeros((), device=dev)
        meter = None
        n = 0
        sample = None
        forward = self.eval_forward or self.forward
        for batch in self.val_loader:
            image, label = self._prepare(batch)
            with torch.autocast(dev.type, dtype=self.precision.dtype, enabled=self.precision.enabled):
                patch = getattr(self, "patch_size", None)
                slide = cfg.sliding_window
                if slide == "auto":
                    slide = patch is not None and tuple(image.shape[2:]) != patch
                if slide:
                    roi = tuple(cfg.val_roi_size) if cfg.val_roi_size else patch
                    logits = sliding_window_inference(image, roi_size=roi, sw_batch_size=cfg.sw_batch_size,
                                                      predictor=forward, overlap=cfg.sw_overlap,
                                                      mode="gaussian")
                else:
                    logits = forward(image)
            logits = logits.float()
            # weighted by batch size: the mean over validation images, however they are batched or sharded
            loss_sum += self.loss_fn(logits, label).detach().float() * image.shape[0]
            if meter is None:
                meter = ConfusionMeter(logits.shape[1], dev)
            meter.update(logits, label)
            if sample is None and cfg.log_images and self.main:
                pred = (logits[0, 0] > 0).long() if logits.shape[1] == 1 else logits[0].argmax(0)
                sample = (image[0].cpu(), label[0].cpu(), pred.cpu(), max(2, logits.shape[1]))
            n += image.shape[0]
        if self.dist:  # each image was validated on exactly one rank: sums over ranks are the dataset's
            if meter is None:  # this rank's shard was empty (more ranks than validation images)
                meter = ConfusionMeter(self.num_classes or 2, dev)
            totals = distributed.all_reduce_(torch.stack([loss_sum, torch.tensor(float(n), device=dev)]))
            loss_sum, n = totals[0], int(totals[1])
            distributed.all_reduce_(meter.matrix)
        out = {"val_loss": float(loss_sum) / max(1, n)}
        if meter is not None:
            out.update({f"val_{k}": v for k, v in meter.compute().items()})
        if sample is not None:
            self.tb.image("val/sample_image_label_prediction", artefacts.sample_grid(*sample), epoch)
        return out

    # ---- the run ----------------------------------------------------------------------------

    def _improved(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        best = self.state.best
        if best is None:
            return True
        d = self.cfg.min_delta
        return value > best + d if self.mode == "max" else value < best - d

    def run(self) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
        cfg, s = self.cfg, self.state
        self.log(f"Trainer '{self.name}': {self.device}, {self.precision.describe()}, epochs {s.epoch + 1}..{self.epochs}, "
                 f"lr_schedule {cfg.lr_schedule}, checkpoints in {self.ckpt_dir}")
        stopped_early = False
        try:
            for epoch in range(s.epoch + 1, self.epochs + 1):
                started = time.perf_counter()
                lr = self.schedule.lrs[0]  # the lr this epoch trains with
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                row: dict[str, Any] = {"epoch": epoch}
                try:
                    row.update(self.train_epoch(epoch))
                except FloatingPointError:
                    if self.main:
                        self._write_files(final=False)
                    raise
                validated = self.val_loader is not None and (epoch % cfg.validate_every == 0 or epoch == self.epochs)
                if validated:
                    row.update(self.validate(epoch))
                row["lr"] = lr
                row["epoch_time"] = time.perf_counter() - started
                if self.device.type == "cuda":
                    row["gpu_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
                value = row.get(self.monitor)
                improved = self._improved(value)
                if improved:
                    s.best, s.best_epoch, s.bad_epochs = value, epoch, 0
                elif validated or self.monitor.startswith("train_"):
                    s.bad_epochs += 1
                self.schedule.step(value)
                s.epoch = epoch
                s.history.append(row)
                self.tb.epoch(row)
                self._save(improved)
                if self.main:
                    self._write_files(final=False)
                    self.log(self._summary(row, improved))
                if cfg.early_stopping and s.bad_epochs >= cfg.patience:
                    self.log(f"Trainer '{self.name}': early stopping at epoch {epoch}: {self.monitor} has not improved "
                             f"by more than {cfg.min_delta} for {s.bad_epochs} epochs (best {s.best:.4f} at epoch {s.best_epoch})")
                    stopped_early = True
                    break
            distributed.barrier()  # rank 0 has finished writing best.pt before anyone reads it
            if cfg.early_stopping and cfg.restore_best_weights and (self.ckpt_dir / "best.pt").is_file():
                best = checkpoint.load_checkpoint(self.ckpt_dir / "best.pt", map_location=self.device)
                self.model.load_state_dict(best["model"])
                self.log(f"Trainer '{self.name}': restored the best weights (epoch {best['epoch']}, "
                         f"{self.monitor} {s.best})")
            if self.main:
                self._write_files(final=True, stopped_early=stopped_early)
                if s.best is not None:
                    self.log(f"Trainer '{self.name}': best {self.monitor} {s.best:.4f} at epoch {s.best_epoch}; "
                             f"weights in {self.ckpt_dir / 'best.pt'}")
        finally:
            self.tb.close()
            self._unwrap()
        return self.model, s.history

    def _summary(self, row: dict[str, Any], improved: bool) -> str:
        shown = [f"{k} {row[k]:.4f}" for k in ("train_loss", "val_loss", "val_dice") if k in row]
        return (f"epoch {row['epoch']}/{self.epochs}: " + ", ".join(shown) +
                f", lr {row['lr']:.2e}, {row['epoch_time']:.1f}s ({row['step_time_ms']:.0f} ms/step, "
                f"data wait {row['data_wait_fraction']:.0%})" + (" *best*" if improved else ""))

    def _write_files(self, final: bool, stopped_early: bool = False) -> None:
        s = self.state
        artefacts.write_history(self.run_dir, s.history)
        if not final:
            return
        artefacts.plot_curves(self.run_dir, s.history)
        best_row = next((r for r in s.history if r["epoch"] == s.best_epoch), None)
        artefacts.write_metrics(self.run_dir, {
            "monitor": self.monitor, "mode": self.mode, "best_value": s.best, "best_epoch": s.best_epoch,
            "epochs_run": s.epoch, "stopped_early": stopped_early, "global_step": s.global_step,
            "final": s.history[-1] if s.history else None, "best": best_row,
            "checkpoints": {"last": str(self.ckpt_dir / "last.pt"),
                            "best": str(self.ckpt_dir / "best.pt") if (self.ckpt_dir / "best.pt").is_file() else None},
        })


def fit(cfg, ctx, name: str, model, train_loader, val_loader, loss_fn, optimizer):
    """Train `model`; returns (model, history). Resumes from `ctx.resume` when set."""
    job = Fit(cfg, ctx, name, model, train_loader, val_loader, loss_fn, optimizer)
    job.resume(ctx.resume)
    with ddp.explain_unused_parameter_errors(model, cfg.find_unused_parameters, f"Trainer '{name}'"):
        return job.run()
