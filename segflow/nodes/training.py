"""The Trainer node: config and ports. The loop lives in `segflow.training.loop` (imported in `run`).

A file may mean one `patience` for early stopping and the plateau schedule; the rule: `patience`
belongs to early stopping. The plateau schedule waits `lr_patience` epochs; when `lr_patience` is not set it takes `patience` if early
stopping is off, else 10. `Trainer.check` warns when a file sets `patience` with both early stopping
and the plateau schedule on but no `lr_patience`, since the writer may have meant either.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from segflow.nodes.base import Device, Finding, Node, NodeConfig, Port, device_findings
from segflow.nodes.bounds import MAX_VOXELS, BatchSize, Epochs, LearningRate, Seed, Why
from segflow.nodes.losses import LOSS_SYNONYMS, LossType
from segflow.nodes.registry import register
from segflow.nodes.trainer_checks import loss_list_findings, monitor_findings, window_findings
from segflow.nodes.words import Choice, fold

_SCHEDULE_SYNONYMS = {"polynomial": "poly", "cosine_annealing": "cosine", "reduce_on_plateau": "plateau",
                      "reducelronplateau": "plateau", "steplr": "step", "exp": "exponential", "": "none"}
Accumulation = Annotated[int, Field(ge=1, le=1024), Why("the effective batch (batch_size × this) would be larger "
                                                       "than any training uses")]
Decay = Annotated[float, Field(gt=0, le=1), Why("a decay factor: above 1 the learning rate would grow")]
Window = Annotated[int, Field(ge=8, le=MAX_VOXELS), Why("no scanner's matrix is larger along one axis")]
_PRECISION_SYNONYMS = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "amp": True}


class TrainerConfig(NodeConfig):
    aliases: ClassVar[dict[str, str]] = {
        "num_epochs": "epochs", "save_every_n_epochs": "save_frequency", "max_epochs": "epochs",
        "grad_clip": "gradient_clip", "accumulation_steps": "gradient_accumulation_steps",
        "early_stopping_patience": "patience", "scheduler": "lr_schedule",
        "cutmix": "cutmix_alpha",
    }

    epochs: Epochs = Field(100, ge=1, description="Number of training epochs (alias num_epochs).")
    # the node editor's Trainer builds its optimizer and loss from these when no node is wired
    learning_rate: LearningRate | None = Field(
        None, description="With no Optimizer wired to this Trainer: it builds Adam with this learning rate "
                                  "(as the node editor's Trainer). Ignored, with a warning, when an Optimizer is wired.")
    loss_type: Annotated[LossType | None, Choice(LOSS_SYNONYMS)] = Field(
        None, description="With no LossFunction wired to this Trainer: it builds the loss a LossFunction with this "
                          "loss_type would (dice, cross_entropy, bce, ...; its other settings at their defaults). "
                          "Ignored, with a warning, when a LossFunction is wired.")
    device: Device = Field("auto", description="auto (CUDA if present), cpu, cuda or cuda:N (gpu, gpu:N say the same), "
                                               "mps (Apple GPUs). The --device command-line option wins.")
    mixed_precision: Annotated[bool | Literal["auto", "bf16", "fp16"], Choice(_PRECISION_SYNONYMS)] = Field(
        "auto", description="Autocast: auto = bf16 on GPUs that support it, else fp32 (never fp16); true = bf16 where "
                            "the GPU supports it, else fp16 with a gradient scaler; 'bf16' / 'fp16' explicitly; "
                            "false = fp32. On CPU auto and true train in fp32.")
    gradient_clip: float | None = Field(None, ge=0, description="Clip gradients at this value (0 or null: off).")
    gradient_clip_type: Annotated[Literal["norm", "value"], Choice()] = Field(
        "norm", description="norm: scale all gradients so their total L2 norm is at most gradient_clip; "
                            "value: clamp each gradient element to ±gradient_clip.")
    gradient_accumulation_steps: Accumulation = Field(
        1, description="Sum gradients over this many batches per optimizer step (effective batch = batch_size × this).")
    lr_schedule: Annotated[Literal["none", "step", "cosine", "plateau", "exponential", "poly"],
                           Choice(_SCHEDULE_SYNONYMS, null="none")] = Field(
        "none", description="Learning-rate schedule, stepped once per epoch (see docs/training.md for the formulas).")
    step_size: Epochs = Field(30, ge=1, description="step: multiply the lr by gamma every step_size epochs.")
    gamma: Decay | None = Field(None, description="step/exponential decay factor (default 0.1 for step, 0.95 for exponential).")
    T_max: Epochs | None = Field(None, ge=1, description="cosine: epochs from base lr down to eta_min (default: epochs - warmup_epochs).")
    eta_min: float = Field(0.0, ge=0, description="cosine: the lowest learning rate.")
    factor: float = Field(0.1, gt=0, lt=1, description="plateau: multiply the lr by this when the monitor stops improving.")
    lr_patience: Epochs | None = Field(
        None, ge=0, description="plateau: epochs without improvement before the lr drops. Unset: `patience` when "
                                "early stopping is off, else 10.")
    power: float = Field(0.9, gt=0, description="poly: lr = base × (1 - t/T)^power (DeepLab's 0.9).")
    warmup_epochs: Epochs = Field(0, ge=0, description="Linear warmup: lr rises from base/(W+1) to base over this many epochs.")
    warmup_type: Annotated[Literal["linear"], Choice()] = Field("linear", description="Warmup shape (linear).")
    early_stopping: bool = Field(False, description="Stop when `monitor` has not improved for `patience` validated epochs.")
    patience: Epochs = Field(10, ge=1, description="Early stopping: validated epochs without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change of `monitor` that counts as an improvement.")
    monitor: str = Field("val_dice", pattern=r"^(train|val)_[a-z0-9_]+$",
                         description="History column that decides best.pt (and so the output model), early stopping "
                                     "and the plateau schedule: val_dice (pooled over all validation voxels), "
                                     "val_dice_case_mean (mean over validation cases), val_loss, val_iou, val_dice_1, "
                                     "val_dice_<region> for data with regions, train_loss, ... Mode: min for *loss*, "
                                     "else max.")
    output_weights: Annotated[Literal["best", "last"], Choice()] = Field(
        "best", description="The weights the `model` output holds: best = best.pt's (the epoch with the best "
                            "`monitor`, train_loss without a val_loader), last = the last epoch's (last.pt's).")
    restore_best_weights: bool | None = Field(
        None, description="Deprecated: the older spelling of output_weights (true = best, false = last), now with "
                          "or without early stopping.")
    checkpoint_dir: str = Field("checkpoints", description="Checkpoint folder; a relative path lives inside the run directory.")
    save_frequency: Epochs = Field(10, ge=0, description="Also keep epoch_NNNN.pt every this many epochs (0: never). "
                                                      "last.pt is written every epoch, best.pt on improvement.")
    save_best_only: bool = Field(False, description="Write no periodic epoch_NNNN.pt files (last.pt is still kept for resume).")
    keep_last: Epochs | None = Field(3, ge=1, description="Periodic checkpoints to keep (null: all).")
    validate_every: Epochs = Field(1, ge=1, description="Validate every N epochs (and always after the last).")
    seed: Seed | None = Field(42, description="Seed python/numpy/torch RNGs at the start (null: do not seed).")
    deterministic: bool = Field(False, description="Use deterministic algorithms (slower on GPU) for bit-exact reruns.")
    compile: Annotated[bool | Literal["default", "reduce-overhead", "max-autotune"], Choice()] = Field(
        False, description="torch.compile the model (true = 'default' mode); 'reduce-overhead' also captures CUDA "
                           "graphs, which cuts the launch overhead that bounds small 2-D networks; 'max-autotune' "
                           "searches kernels (slow to start). Falls back to eager with a message if it fails.")
    channels_last: Annotated[bool | Literal["auto"], Choice()] = Field(
        "auto", description="Channels-last memory layout; auto = on for CUDA with mixed precision, where tensor cores gain.")
    find_unused_parameters: Annotated[bool | Literal["auto"], Choice()] = Field(
        "auto", description="Under DDP (torchrun): let DDP search for parameters that get no gradient each step "
                            "(UNETR has some). auto = probe the first batch once and search only if some do; "
                            "false = never (DDP fails if a parameter gets no gradient); true = always.")
    sync_batchnorm: Annotated[bool | Literal["auto"], Choice()] = Field(
        "auto", description="Under DDP: SyncBatchNorm, BatchNorm statistics over the whole batch of all processes. "
                            "auto = on for several CUDA processes when the model has BatchNorm; true = also with one "
                            "process; on CPU it stays off (torch's SyncBatchNorm needs a GPU), with a message if true.")
    sliding_window: Annotated[bool | Literal["auto"], Choice()] = Field(
        "auto", description="Validate with MONAI sliding-window inference; auto = when validation images differ "
                            "in size from the training patches.")
    val_roi_size: list[Window] | None = Field(None, min_length=2, max_length=3, description=(
        "Sliding-window size, one number per spatial axis (default: the training patch size)."))
    sw_batch_size: BatchSize = Field(4, ge=1, description="Windows per forward pass in sliding-window validation.")
    sw_overlap: float = Field(0.25, ge=0, lt=1, description="Overlap of neighbouring sliding windows.")
    postprocessing: Annotated[Literal["auto", "none"], Choice(null="none")] = Field(
        "auto", description="auto: after training, on the validation cases predicted with the output weights (the "
                            "last validation's, or one more pass when they are an earlier epoch's), keep the largest "
                            "connected component (all foreground together, then per class) only where it raised "
                            "their mean Dice (nnU-Net's rule); the choice and the Dice before/after per class go to "
                            "postprocessing.json in the run directory, which a Predictor with postprocessing auto "
                            "applies. none: skip (no file).")
    log_images: bool = Field(True, description="Log an image | label | prediction picture to TensorBoard at each validation.")
    tracking: Annotated[list[Literal["tensorboard", "mlflow", "none"]], Choice({"tb": "tensorboard"})] = Field(
        ["tensorboard"], description=(
            "Where the per-epoch scalars go besides history.csv/json: tensorboard (event files in the run directory), "
            "mlflow (an MLflow run: MLFLOW_TRACKING_URI, else runs/mlflow.db; needs `pip install 'segflow[mlflow]'`), "
            "a list of both, or none. See docs/training.md, Tracking."))
    mlflow_experiment: str | None = Field(None, min_length=1, description=(
        "tracking mlflow: the experiment's name (default: the workflow's name)."))
    mlflow_log_checkpoint: bool = Field(False, description=(
        "tracking mlflow: also upload the best checkpoint as an artefact at the end (off: checkpoints are large)."))
    mixup_alpha: float = Field(0.0, ge=0, description=(
        "Mixup of training batches on the device, after augmentation: images lam x + (1 - lam) x[perm] with a "
        "permutation of the batch, labels the same blend of their one-hot targets (soft targets for the loss), "
        "lam ~ Beta(alpha, alpha) per batch. 0: off; 0.2 is usual. Needs a loss that takes soft targets "
        "(LossFunction without the boundary term). See docs/training.md."))
    cutmix_alpha: Annotated[float, Field(ge=0)] | bool = Field(0.0, description=(
        "CutMix of training batches: a box (2-D) or cuboid (3-D) of a permutation of the batch "
        "pasted into the images and the same region of their labels, side (1 - lam)^(1/d) of each axis, "
        "lam ~ Beta(alpha, alpha), lam then set to the fraction not pasted over. Labels stay hard, so every loss "
        "works. 0 or false: off; true: 1.0 (the CutMix paper's alpha)."))
    mixup_prob: float = Field(1.0, ge=0, le=1, description=(
        "Probability that a training batch is mixed when mixup_alpha or cutmix_alpha is on; with both on, each "
        "mixed batch gets one of the two, with even odds."))

    @field_validator("cutmix_alpha")
    @classmethod
    def _cutmix_on_means_one(cls, v: float | bool) -> float:
        """`cutmix: true` switches it on with the paper's alpha, 1.0; the config then holds a number."""
        return (1.0 if v else 0.0) if isinstance(v, bool) else v
    grad_histogram_every: Epochs = Field(
        1, ge=0, description="Log gradient histograms to TensorBoard (grad/PART: per named part of the network, or "
                             "per top-level module) every this many epochs, from the epoch's last optimizer step "
                             "(0: never). Computed on the device, read at the epoch's end: no per-step host sync.")

    @model_validator(mode="before")
    @classmethod
    def _restore_best_weights_is_output_weights(cls, data: Any) -> Any:
        """One rule for which weights are handed on: `output_weights`. The deprecated
        `restore_best_weights` sets it, and may not contradict it."""
        if not isinstance(data, dict) or data.get("restore_best_weights") is None:
            return data
        try:
            meant = "best" if TypeAdapter(bool).validate_python(data["restore_best_weights"]) else "last"
        except ValidationError:
            return data  # reported at the field
        given = data.get("output_weights")
        if given is None:
            return {**data, "output_weights": meant}
        if not isinstance(given, str) or fold(given) != meant:
            raise ValueError(f"restore_best_weights (deprecated) says output_weights {meant!r}, output_weights says "
                             f"{given!r}: remove restore_best_weights")
        return data


def _loss_findings(loader_type: str | None, loader: Any, loss: tuple[str, NodeConfig] | None) -> list[Finding]:
    """A LossFunction that cannot train on the regions or without the ignore label the loader declares."""
    regions, ignore = getattr(loader, "regions", None), getattr(loader, "ignore_label", None)
    if loss is None or loss[0] != "LossFunction" or not (regions or ignore is not None):
        return []
    cfg, terms = loss[1], loss[1].term_weights()
    what = "regions" if regions else "an ignore label"
    if regions and cfg.sigmoid is False:
        return [Finding("", "loss_label_mismatch", f"the LossFunction wired to loss_fn has sigmoid: false (softmax), "
                        f"but the {loader_type} wired to train_loader declares regions ({', '.join(regions)}), which "
                        "overlap: one sigmoid channel each", hint="remove sigmoid: false from the LossFunction")]
    if "boundary" in terms:
        return [Finding("", "loss_label_mismatch", f"the LossFunction wired to loss_fn has a boundary term, which does "
                        f"not take {what} (the {loader_type} wired to train_loader declares them)",
                        hint="use dice, cross_entropy, focal or tversky terms")]
    if regions and cfg.class_weights is not None and len(cfg.class_weights) != len(regions):
        return [Finding("", "loss_label_mismatch", f"the LossFunction wired to loss_fn has {len(cfg.class_weights)} "
                        f"class_weights, but with regions they are one per region ({len(regions)}: "
                        f"{', '.join(regions)})", hint=f"give {len(regions)} class_weights, in region order")]
    if regions and not cfg.include_background:
        return [Finding("", "unused_value", "the LossFunction's include_background: false is ignored with regions: "
                        "every region channel is foreground and counts", severity="warning")]
    return []


@register
class Trainer(Node):
    """Trains the model: epochs of training and validation, mixed precision, schedules, early stopping,
    atomic checkpoints for an exact resume, TensorBoard, history and plots in the run directory."""

    type = "Trainer"
    family = "training"
    Config = TrainerConfig
    inputs = (
        Port("model", "Model", doc="the network to train"),
        Port("train_loader", "DataLoader", doc="training batches", prefer=("train_loader",)),
        Port("val_loader", "DataLoader", required=False, doc="validation batches", prefer=("val_loader",)),
        Port("loss_fn", "Loss", fallback="loss_type", doc="loss(logits, label) -> scalar; unwired, the Trainer "
             "builds it from its loss_type"),
        Port("optimizer", "Optimizer", fallback="learning_rate", doc="optimizer over the model's parameters; "
             "unwired, the Trainer builds Adam with its learning_rate"),
    )
    outputs = (
        Port("model", "TrainedModel", passes="model",
             doc="the trained model with best.pt's weights (best `monitor`), or the last epoch's with "
                 "output_weights: last"),
        Port("history", "History", doc="one dict per epoch: losses, metrics (val_dice pooled over voxels, "
                                       "val_dice_case_mean per case), lr"),
    )
    port_aliases = {"dataloader": "train_loader", "trained_model": "model", "metrics": "history"}  # the editor's

    def run(self, model, train_loader, loss_fn=None, optimizer=None, val_loader=None) -> dict[str, Any]:
        if train_loader is None:
            raise ValueError("train_loader is empty: the loader wired to it gives no training data "
                             "(a MedicalSegmentationLoader with subset 'test' or 'all')")
        from segflow.training.loop import fit

        loss_fn = self._own_loss() if loss_fn is None else loss_fn
        optimizer = self._own_optimizer(model) if optimizer is None else optimizer

        trained, history = fit(self.config, self.ctx, self.name, model, train_loader, val_loader, loss_fn, optimizer)
        return {"model": trained, "history": history}

    def _own_loss(self) -> Any:
        """The loss of a LossFunction with this Trainer's loss_type (validation made sure there is one)."""
        from segflow.losses.segmentation import build_loss
        from segflow.nodes.losses import LossFunctionConfig

        self.ctx.log(f"Trainer '{self.name}': no LossFunction wired; loss_type {self.config.loss_type}")
        return build_loss(LossFunctionConfig(loss_type=self.config.loss_type))

    def _own_optimizer(self, model: Any) -> Any:
        """Adam at this Trainer's learning_rate, as an Optimizer node would build it."""
        from segflow.nodes.optim import OptimizerConfig
        from segflow.optim.optimizer import build_optimizer

        self.ctx.log(f"Trainer '{self.name}': no Optimizer wired; Adam with learning_rate {self.config.learning_rate}")
        return build_optimizer(model, OptimizerConfig(optimizer_type="Adam", learning_rate=self.config.learning_rate),
                               node_name=self.name)

    @classmethod
    def preflight(cls, config: NodeConfig, device: str | None) -> list[Finding]:
        return device_findings(device or config.device)

    @classmethod
    def check(cls, config: NodeConfig, neighbours: dict[str, tuple[str, NodeConfig]]) -> list[Finding]:
        cfg: TrainerConfig = config  # type: ignore[assignment]
        found: list[Finding] = _unused_fallbacks(cfg, neighbours)
        source_type, source = neighbours.get("train_loader", (None, None))
        subset = getattr(source, "subset", "split")
        if source_type == "MedicalSegmentationLoader" and subset != "split":
            found.append(Finding(
                "", "no_training_data",
                f"train_loader comes from a MedicalSegmentationLoader with subset {subset!r}, which hands out "
                "no training batches (only val_loader)",
                hint="set the loader's subset to \"split\" to train, or remove the Trainer to only predict"))
        found += _loss_findings(source_type, source, neighbours.get("loss_fn"))
        given = cfg.model_fields_set
        if cfg.lr_schedule == "plateau" and cfg.early_stopping and "patience" in given and "lr_patience" not in given:
            found.append(Finding(
                "patience", "ambiguous_patience",
                f"`patience` ({cfg.patience}) is early stopping's; the plateau schedule uses lr_patience (default 10)",
                hint="set lr_patience for the plateau schedule to make the intent explicit", severity="warning"))
        if "val_loader" not in neighbours and cfg.monitor.startswith("val_") and (
                cfg.early_stopping or cfg.lr_schedule == "plateau" or "monitor" in given):
            found.append(Finding(
                "monitor", "no_validation",
                f"monitor {cfg.monitor!r} needs a val_loader, and none is wired; train_loss is monitored instead",
                hint="wire a loader's val_loader output to this Trainer, or set monitor: train_loss",
                severity="warning"))
        if "restore_best_weights" in given:
            found.append(Finding(
                "restore_best_weights", "deprecated_key",
                f"restore_best_weights is deprecated: it now means output_weights: {cfg.output_weights}, with or "
                "without early stopping", hint=f"write output_weights: {cfg.output_weights} instead",
                severity="warning"))
        found += _tracking_findings(cfg)
        model = neighbours.get("model")
        found += monitor_findings(cfg.monitor, neighbours.get("train_loader"), model)
        found += window_findings(cfg.val_roi_size, neighbours.get("train_loader"), model)
        found += loss_list_findings(neighbours.get("loss_fn"), neighbours.get("train_loader"), model)
        if cfg.warmup_epochs >= cfg.epochs and cfg.warmup_epochs:
            found.append(Finding("warmup_epochs", "bad_value",
                                 f"warmup_epochs ({cfg.warmup_epochs}) is not smaller than epochs ({cfg.epochs})",
                                 hint="lower warmup_epochs", severity="warning"))
        if cfg.lr_schedule == "cosine" and cfg.T_max and cfg.T_max > cfg.epochs:
            found.append(Finding("T_max", "bad_value", f"T_max ({cfg.T_max}) is larger than epochs ({cfg.epochs}): "
                                 "the cosine never reaches eta_min", severity="warning"))
        return found + _mixing_findings(cfg, neighbours.get("loss_fn"))


def _tracking_findings(cfg: TrainerConfig) -> list[Finding]:
    """MLflow is an optional extra: asking for it without the package is a validate-time error."""
    import importlib.util
    import os

    if "mlflow" not in cfg.tracking:
        if {"mlflow_experiment", "mlflow_log_checkpoint"} & cfg.model_fields_set:
            return [Finding("tracking", "unused_value", "mlflow_experiment / mlflow_log_checkpoint are ignored "
                            "without tracking mlflow", hint='add "mlflow" to tracking', severity="warning")]
        return []
    if "none" in cfg.tracking:
        return [Finding("tracking", "bad_value", "tracking lists none beside other trackers",
                        hint='write "none" alone, or list only the trackers to use')]
    needed = ["mlflow"] + ([] if os.environ.get("MLFLOW_TRACKING_URI") else ["sqlalchemy", "alembic"])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        return [Finding("tracking", "missing_package", f"tracking mlflow needs the package(s) {', '.join(missing)}, "
                        "which are not installed", hint="pip install 'segflow[mlflow]'")]
    return []


def _mixing_findings(cfg: TrainerConfig, loss: tuple[str, NodeConfig] | None) -> list[Finding]:
    """Mixup's soft targets need a loss that takes them: the boundary term measures distances from a
    hard mask. A loss node of another type is checked when the run starts (`takes_soft_targets`)."""
    given = cfg.model_fields_set
    if "mixup_prob" in given and not (cfg.mixup_alpha or cfg.cutmix_alpha):
        return [Finding("mixup_prob", "unused_value", "mixup_prob is ignored: mixup_alpha and cutmix_alpha are 0 "
                        "(off)", hint="set mixup_alpha (e.g. 0.2) or cutmix_alpha (e.g. 1.0)", severity="warning")]
    loss_type, loss_cfg = loss or (None, None)
    if not (cfg.mixup_alpha and cfg.mixup_prob) or loss_type != "LossFunction":
        return []
    if "boundary" in loss_cfg.term_weights():  # type: ignore[union-attr]
        return [Finding("mixup_alpha", "soft_targets_unsupported",
                        "mixup makes soft (blended) targets, and the wired LossFunction has a boundary term, which "
                        "needs hard labels to measure distances from",
                        hint="drop the boundary term (boundary_weight 0, or another loss_type), or use cutmix_alpha "
                             "instead: CutMix keeps the labels hard")]
    return []


def _unused_fallbacks(cfg: TrainerConfig, neighbours: dict[str, tuple[str, NodeConfig]]) -> list[Finding]:
    """Warnings for learning_rate / loss_type set while an Optimizer / LossFunction is wired (the wired
    node wins, as in the node editor)."""
    found = []
    for key, port, what in (("learning_rate", "optimizer", "optimizer"), ("loss_type", "loss_fn", "loss")):
        if getattr(cfg, key) is None or port not in neighbours:
            continue
        source_type, source = neighbours[port]
        theirs = getattr(source, key, None)
        found.append(Finding(key, "unused_value", f"{key} {getattr(cfg, key)!r} is ignored: the {what} comes from "
                             f"the {source_type} node wired to this Trainer"
                             + (f" (its {key} is {theirs!r})" if theirs is not None else ""),
                             hint=f"remove {key} here, or set it on the {source_type} node", severity="warning"))
    return found
