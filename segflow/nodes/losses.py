"""LossFunction: the training loss, a weighted sum of dice / cross-entropy / focal / tversky /
boundary terms. Built in `segflow.losses.segmentation`; nothing heavy imported here."""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from segflow.nodes.base import Finding, Node, NodeConfig, Port
from segflow.nodes.registry import register
from segflow.nodes.words import Choice

LOSS_TYPES = ("dice", "cross_entropy", "focal", "combined", "boundary", "tversky", "bce")
# The words of loss_type (also the Trainer's, for the loss it builds when no LossFunction is wired)
LossType = Literal["dice", "cross_entropy", "focal", "combined", "boundary", "tversky", "bce"]
LOSS_SYNONYMS = {"ce": "cross_entropy", "crossentropy": "cross_entropy", "dice_ce": "combined", "dicece": "combined",
                 "binary_cross_entropy": "bce"}
LOSS_TYPE_DOC = ("dice, cross_entropy (ce), focal, tversky, boundary (Kervadec's distance-map loss; best combined with "
                 "dice), bce (binary cross-entropy on each class channel through a sigmoid, as torch's "
                 "BCEWithLogitsLoss: cross_entropy with sigmoid true), or combined (the weighted sum given by the "
                 "*_weight fields).")
_TERM = {"dice": "dice", "cross_entropy": "ce", "focal": "focal", "boundary": "boundary", "tversky": "tversky",
         "bce": "ce"}
WEIGHT_FIELDS = {"dice_weight": "dice", "ce_weight": "ce", "focal_weight": "focal", "boundary_weight": "boundary"}


def _weight(term: str) -> Any:
    return Field(None, ge=0.0, description=f"Weight of the {term} term when loss_type is combined. When no weight is "
                 "given, combined means 0.5 dice + 0.5 cross-entropy; when some are, the others count 0.")


class LossFunctionConfig(NodeConfig):
    aliases: ClassVar[dict[str, str]] = {"weights": "class_weights", "class_weight": "class_weights"}

    loss_type: Annotated[LossType, Choice(LOSS_SYNONYMS)] = Field("combined", description=LOSS_TYPE_DOC)
    smooth: float = Field(1e-5, ge=0.0, description="Smoothing added to numerator and denominator of dice and tversky.")
    class_weights: list[Annotated[float, Field(ge=0.0)]] | None = Field(
        None, min_length=2, description="One weight per class, background first, for cross-entropy and focal terms "
        "(e.g. [0.3, 0.7]).")
    alpha: float | None = Field(None, ge=0.0, le=1.0, description="Focal alpha: weight alpha for foreground classes, "
                                "1-alpha for background (e.g. 0.25); none = unweighted.")
    gamma: float = Field(2.0, ge=0.0, description="Focal focusing parameter: larger down-weights easy pixels more.")
    dice_weight: float | None = _weight("dice")
    ce_weight: float | None = _weight("cross-entropy")
    focal_weight: float | None = _weight("focal")
    boundary_weight: float | None = _weight("boundary")
    tversky_alpha: float = Field(0.3, ge=0.0, description="Tversky weight of false positives.")
    tversky_beta: float = Field(0.7, ge=0.0, description="Tversky weight of false negatives (> alpha favours recall).")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Label smoothing of the cross-entropy term.")
    include_background: bool = Field(True, description="Whether dice and tversky count the background class "
                                     "(cross-entropy and focal always do).")
    sigmoid: bool | None = Field(None, description="Sigmoid instead of softmax. Default: sigmoid when the network "
                                 "has one output channel or loss_type is bce, softmax otherwise; always sigmoid for data with regions "
                                 "(one channel per region; false is then an error).")
    boundary_spacing: list[Annotated[float, Field(gt=0.0)]] | None = Field(None, min_length=2, max_length=3, description=(
        "Voxel size, one value per spatial axis (e.g. the loader's target_spacing [0.7, 0.7, 5.0]): the boundary "
        "term's distances are then in those units (mm), so anisotropic voxels weigh as far as they are. Null: "
        "distances in voxels."))

    @field_validator("boundary_spacing")
    @classmethod
    def _spacing(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) not in (2, 3) or any(s <= 0 for s in v)):
            raise ValueError("boundary_spacing must be 2 or 3 positive numbers (one per spatial axis), or null")
        return v

    @field_validator("class_weights")
    @classmethod
    def _non_negative(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) < 2 or any(w < 0 for w in v) or not any(v)):
            raise ValueError(f"class_weights needs one non-negative weight per class (at least 2, not all 0), got {v}")
        return v

    @model_validator(mode="after")
    def _some_weight(self) -> LossFunctionConfig:
        given = [getattr(self, f) for f in WEIGHT_FIELDS if getattr(self, f) is not None]
        if self.loss_type == "combined" and given and not any(given):
            raise ValueError("loss_type combined with every weight 0: give dice_weight, ce_weight, focal_weight or "
                             "boundary_weight a positive value")
        if self.loss_type == "bce" and self.sigmoid is False:
            raise ValueError("loss_type bce is cross-entropy through a sigmoid: it cannot have sigmoid false; use "
                             "loss_type cross_entropy for softmax cross-entropy")
        return self

    def uses_sigmoid(self) -> bool | None:
        """`sigmoid`, made true by loss_type bce (None: decided by the network's output channels)."""
        return True if self.loss_type == "bce" else self.sigmoid

    def term_weights(self) -> dict[str, float]:
        """{term: weight} of the loss: dice, ce, focal, tversky, boundary."""
        if self.loss_type != "combined":
            return {_TERM[self.loss_type]: 1.0}
        given = {t: getattr(self, f) for f, t in WEIGHT_FIELDS.items() if getattr(self, f) is not None}
        return {t: w for t, w in given.items() if w > 0} if given else {"dice": 0.5, "ce": 0.5}


@register
class LossFunction(Node):
    """Training loss: dice, cross-entropy, focal, tversky, boundary, or a weighted combination."""

    type = "LossFunction"
    family = "losses"
    Config = LossFunctionConfig
    outputs = (Port("loss_fn", "Loss", doc="torch.nn.Module called as loss(logits, label) -> scalar."),)

    @classmethod
    def check(cls, config: NodeConfig, neighbours: dict[str, tuple[str, NodeConfig]]) -> list[Finding]:
        assert isinstance(config, LossFunctionConfig)
        found = []
        if config.loss_type != "combined":
            for f in WEIGHT_FIELDS:
                if getattr(config, f) is not None:
                    found.append(Finding(f, "unused_value", f"{f} is ignored: loss_type is {config.loss_type}",
                                         "set loss_type to combined to weight several terms", severity="warning"))
        terms = config.term_weights()
        if config.boundary_spacing is not None and "boundary" not in terms:
            found.append(Finding("boundary_spacing", "unused_value", "boundary_spacing only affects the boundary "
                                 "term, which this loss does not use", severity="warning"))
        if config.label_smoothing and "ce" not in terms:
            found.append(Finding("label_smoothing", "unused_value", "label_smoothing only affects the cross-entropy "
                                 "term, which this loss does not use", severity="warning"))
        if set(terms) == {"boundary"}:
            found.append(Finding("loss_type", "boundary_alone", "boundary loss alone tends to collapse to an empty "
                                 "prediction", "use loss_type combined with dice_weight and boundary_weight",
                                 severity="warning"))
        return found

    def run(self) -> dict[str, Any]:
        from segflow.losses.segmentation import build_loss

        return {"loss_fn": build_loss(self.config)}
