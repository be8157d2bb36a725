"""Optimizer: a torch optimizer over the model's parameters, with per-layer learning rates
(parameter groups matched by name pattern) and frozen layers. Built in `segflow.optim.optimizer`."""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from segflow.nodes.base import Finding, Node, NodeConfig, Port
from segflow.nodes.bounds import LearningRate, Why
from segflow.nodes.registry import register
from segflow.nodes.words import Choice

_PATTERN_DOC = ("a named part of the network ('encoder', 'decoder', 'head': each network node lists its parts), "
                "or a glob over parameter names as model.named_parameters() gives them (e.g. 'model.1.*'); "
                "a bare module path ('model.0') also matches everything under it. `segflow inspect WORKFLOW` "
                "lists the parts and modules")


WeightDecay = Annotated[float, Field(le=1), Why("a decay this large shrinks the weights by more than their size")]
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class ParamGroup(BaseModel):
    """Parameters whose names match `pattern` get their own learning rate / weight decay."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    pattern: str = Field(description=f"Which parameters: {_PATTERN_DOC}.")
    learning_rate: LearningRate | None = Field(None, validation_alias=AliasChoices("learning_rate", "lr"),
                                        description="Learning rate of this group (alias lr); default: the optimizer's.")
    weight_decay: WeightDecay | None = Field(None, ge=0.0, description="Weight decay of this group; default: the optimizer's.")
    name: str | None = Field(None, min_length=1, description="The group's name in the logs (TensorBoard train/lr/NAME, "
                             "history column lr/NAME); default: its pattern. The remaining parameters' group is "
                             "named rest.")


class OptimizerConfig(NodeConfig):
    aliases: ClassVar[dict[str, str]] = {"lr": "learning_rate", "optimizer": "optimizer_type"}

    optimizer_type: Annotated[Literal["Adam", "AdamW", "SGD", "RMSprop"], Choice()] = Field(
        "Adam", description="Adam, AdamW, SGD or RMSprop (any case).")
    learning_rate: LearningRate = Field(1e-4, description="Base learning rate (alias lr); the Trainer's lr_schedule "
                                 "scales it. Typical: 1e-4 for Adam/AdamW, 1e-2 for SGD.")
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="Adam/AdamW moment decay rates, e.g. [0.9, 0.999].")
    eps: Annotated[float, Field(le=1), Why("a term this large swamps the gradient's scale")] = Field(1e-8, gt=0.0, description="Adam/AdamW/RMSprop term added to the denominator for stability.")
    weight_decay: WeightDecay = Field(0.0, ge=0.0, description="L2 penalty (decoupled for AdamW). Typical: 1e-5 to 1e-4 "
                                "for Adam, 1e-4 to 1e-3 for AdamW and SGD.")
    momentum: float | None = Field(None, ge=0.0, lt=1.0, description="SGD/RMSprop momentum; default 0.9 for SGD, "
                                   "0 for RMSprop.")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD; needs momentum > 0).")
    alpha: float = Field(0.99, gt=0.0, lt=1.0, description="RMSprop smoothing constant of the squared-gradient average.")
    amsgrad: bool = Field(False, description="AMSGrad variant (Adam/AdamW).")
    param_groups: list[ParamGroup] = Field(
        [], description="Per-layer learning rates: a list of {pattern, learning_rate, weight_decay}; a parameter "
        "goes to the first group whose pattern matches it, the rest use the base settings.")
    freeze: list[str] = Field([], description=f"Parameters to freeze (not trained), each {_PATTERN_DOC}.")
    # null meant torch's own choice before "auto" existed (GUIs send it as the string "null")
    fused: Annotated[bool | Literal["auto"], Choice(null=False)] = Field("auto", description=(
        "Fused kernels: the whole update in one kernel per parameter group (Adam/AdamW/SGD, on CPU and CUDA). "
        "auto: fused for Adam/AdamW/SGD, torch's own choice for RMSprop; false (or null): torch's multi-tensor "
        "'foreach' kernels on CUDA, a loop over parameters on CPU."))

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"betas must both be in [0, 1), got {list(v)}")
        return v

    @model_validator(mode="after")
    def _combinations(self) -> OptimizerConfig:
        if self.nesterov and self.optimizer_type == "SGD" and self.momentum_value() == 0:
            raise ValueError("nesterov needs momentum > 0 (SGD); set momentum, e.g. 0.9")
        if self.fused is True and self.optimizer_type == "RMSprop":
            raise ValueError("fused is not available for RMSprop; use Adam, AdamW or SGD, or leave fused unset")
        return self

    def momentum_value(self) -> float:
        if self.momentum is not None:
            return self.momentum
        return 0.9 if self.optimizer_type == "SGD" else 0.0


_USED_BY = {"betas": ("Adam", "AdamW"), "amsgrad": ("Adam", "AdamW"), "momentum": ("SGD", "RMSprop"),
            "nesterov": ("SGD",), "alpha": ("RMSprop",)}


@register
class Optimizer(Node):
    """Optimizer over the model's trainable parameters: Adam, AdamW, SGD or RMSprop."""

    type = "Optimizer"
    family = "optim"
    Config = OptimizerConfig
    inputs = (Port("model", "Model", doc="The network whose parameters are optimised."),)
    outputs = (Port("optimizer", "Optimizer", doc="torch.optim.Optimizer with param groups and frozen layers applied."),)

    @classmethod
    def check(cls, config: NodeConfig, neighbours: dict[str, tuple[str, NodeConfig]]) -> list[Finding]:
        assert isinstance(config, OptimizerConfig)
        found = []
        for f, users in _USED_BY.items():
            if f in config.model_fields_set and config.optimizer_type not in users:
                found.append(Finding(f, "unused_value", f"{f} is ignored by {config.optimizer_type}",
                                     f"it applies to {' and '.join(users)}", severity="warning"))
        return found

    def run(self, model: Any) -> dict[str, Any]:
        from segflow.optim.optimizer import build_optimizer

        return {"optimizer": build_optimizer(model, self.config, node_name=self.name)}
