"""Segmentation losses behind the LossFunction node.

`SegmentationLoss(logits, label)` takes logits (B, C, *S) and int64 class indices (B, 1, *S), and
returns a weighted sum of terms: dice, ce, focal, tversky (MONAI's losses and torch's
cross-entropy) and boundary (Kervadec et al. 2019, written here: MONAI has none). With C == 1
(or `sigmoid=True`) every term works on sigmoid probabilities, otherwise on softmax.

Soft targets (the Trainer's mixup): a floating-point `label` of the logits' shape (B, C, *S) holds
each voxel's class probabilities (with C == 1, the foreground's; a floating (B, 1, *S) label for
C > 1 is read as class indices, as before). Dice, tversky, cross-entropy and
focal take them; on a one-hot target each gives exactly what the class indices give. The boundary
term needs a hard mask to measure distances from, so a loss with it refuses them
(`takes_soft_targets`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from segflow.nodes.losses import LossFunctionConfig

TERMS = ("dice", "ce", "focal", "tversky", "boundary")


def signed_distance(mask: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Signed distance to the boundary of `mask` as in Kervadec's boundary loss: positive outside,
    zero on the inner boundary, negative deeper inside; all zeros when the mask is empty or full
    (there is no boundary to move towards). In voxels, or in the units of `spacing` (one value per
    axis), where the inner boundary's offset is one voxel's smallest size."""
    from scipy.ndimage import distance_transform_edt

    pos = mask.astype(bool)
    if not pos.any() or pos.all():
        return np.zeros(mask.shape, dtype=np.float32)
    neg = ~pos
    step = min(spacing) if spacing is not None else 1.0
    inside = distance_transform_edt(pos, sampling=spacing) - step
    return (distance_transform_edt(neg, sampling=spacing) * neg - inside * pos).astype(np.float32)


def _squared_distance_to_zero(mask: torch.Tensor, spacing: Sequence[float] | None = None,
                              chunk: int = 1 << 25) -> torch.Tensor:
    """Exact squared Euclidean distance from each True element of `mask` (N, *S) to the nearest False
    one within its own sample, on the mask's device. Separable (Saito-Toriwaki): along each spatial
    axis in turn, d'(x) = min_y d(y) + (x - y)^2, evaluated as a batched min over all y: O(n) more
    work than scipy's linear-time transform, but a handful of kernels with no host round trip. A
    sample with no False element keeps inf."""
    d = torch.where(mask, torch.inf, 0.0).to(torch.float32)
    for axis in range(1, d.dim()):
        n = d.shape[axis]
        pos = torch.arange(n, device=d.device, dtype=torch.float32) * (spacing[axis - 1] if spacing else 1.0)
        step = (pos[:, None] - pos[None, :]) ** 2  # (x, y)
        moved = d.movedim(axis, -1)
        flat = moved.reshape(-1, n)
        rows = max(1, chunk // (n * n))  # bounds the (rows, n, n) temporary
        out = torch.cat([(flat[i:i + rows, None, :] + step).amin(-1) for i in range(0, flat.shape[0], rows)])
        d = out.reshape(moved.shape).movedim(-1, axis)
    return d


def signed_distance_torch(mask: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """`signed_distance` for a batch of masks (N, *S) on their device (no host sync): positive outside,
    zero on the inner boundary, negative deeper inside, all zeros where a mask is empty or full."""
    pos = mask.bool()
    outside = _squared_distance_to_zero(~pos, spacing).sqrt()  # at False elements: distance to the object
    inside = _squared_distance_to_zero(pos, spacing).sqrt()  # at True elements: distance to the background
    dist = torch.where(pos, (min(spacing) if spacing else 1.0) - inside, outside)
    flat = pos.flatten(1)
    has_boundary = flat.any(1) & ~flat.all(1)
    return torch.where(has_boundary.view(-1, *([1] * (dist.dim() - 1))), dist, 0.0)  # not inf * 0


class BoundaryLoss(nn.Module):
    """mean(probability of each foreground class x signed distance map of its ground truth).

    Minimal (negative) when the prediction covers exactly the ground truth; predicted pixels
    far outside the object cost their distance to it. Distance maps are computed from the labels
    of each batch (no gradient flows through them): on a GPU there, exactly, without a host round
    trip (`signed_distance_torch`); on the CPU with scipy's linear-time transform.
    """

    def __init__(self, on_device: bool | None = None, spacing: Sequence[float] | None = None):
        super().__init__()
        self.on_device = on_device  # None: torch's transform off the CPU, scipy's on it
        self.spacing = tuple(float(v) for v in spacing) if spacing else None

    def forward(self, probs: torch.Tensor, label: torch.Tensor, distances: torch.Tensor | None = None) -> torch.Tensor:
        """`distances`: `distance_maps(label, probs)` when the caller has them (deep supervision's heads
        share one label)."""
        classes = [0] if probs.shape[1] == 1 else list(range(1, probs.shape[1]))
        if distances is None:
            distances = self.distance_maps(label, probs)
        return (probs[:, classes] * distances).mean()

    def distance_maps(self, label: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """(B, K, *S) signed distance maps of the foreground classes of `label`, for `probs` (B, C, *S)."""
        targets = [1] if probs.shape[1] == 1 else list(range(1, probs.shape[1]))
        on_device = probs.device.type != "cpu" if self.on_device is None else self.on_device
        if on_device:
            lab = label[:, 0].detach()
            masks = torch.stack([lab == c for c in targets], 1)  # (B, K, *S)
            self._check_spacing(masks.dim() - 2)
            dist_t = signed_distance_torch(masks.flatten(0, 1), self.spacing).view(masks.shape).to(probs.dtype)
        else:
            lab = label[:, 0].detach().cpu().numpy()
            self._check_spacing(lab.ndim - 1)
            dist = np.stack([np.stack([signed_distance(lab[b] == c, self.spacing) for c in targets])
                             for b in range(lab.shape[0])])
            dist_t = torch.from_numpy(dist).to(dtype=probs.dtype)
        return dist_t

    def _check_spacing(self, dims: int) -> None:
        if self.spacing is not None and len(self.spacing) != dims:
            raise ValueError(f"LossFunction.boundary_spacing has {len(self.spacing)} values, the labels have {dims} "
                             "spatial axes")


def deep_supervision_weights(outputs: int) -> list[float]:
    """The weights of deep supervision's outputs, full resolution first, by nnU-Net v2's rule
    (nnUNetTrainer._build_loss): halving per level (1, 1/2, 1/4, ...) so that finer outputs count
    more, the last (lowest-resolution) output 0, normalised to sum 1. So [full, head] trains the
    full-resolution output alone, and a DynUNet with deep_supr_num = stages - 2 (a head on every
    decoder level) is weighted exactly as nnU-Net's network. A single output weighs 1."""
    if outputs == 1:
        return [1.0]
    weights = [0.5**level for level in range(outputs - 1)] + [0.0]
    return [w / sum(weights) for w in weights]


class SegmentationLoss(nn.Module):
    """Weighted sum of loss terms; `last_terms` holds each term's (detached) value of the last call."""

    def __init__(self, weights: dict[str, float], *, smooth: float = 1e-5,
                 class_weights: Sequence[float] | None = None, alpha: float | None = None, gamma: float = 2.0,
                 tversky_alpha: float = 0.3, tversky_beta: float = 0.7, label_smoothing: float = 0.0,
                 include_background: bool = True, sigmoid: bool | None = None,
                 boundary_spacing: Sequence[float] | None = None):
        super().__init__()
        unknown = set(weights) - set(TERMS)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}; known: {', '.join(TERMS)}")
        self.weights = {k: float(w) for k, w in weights.items() if w}
        if not self.weights:
            raise ValueError("every loss weight is 0: give at least one of dice_weight, ce_weight, focal_weight, boundary_weight a positive value")
        self.opts = dict(smooth=smooth, alpha=alpha, gamma=gamma, tversky_alpha=tversky_alpha,
                         tversky_beta=tversky_beta, include_background=include_background)
        self.label_smoothing = label_smoothing
        self.sigmoid = sigmoid
        self.register_buffer("class_weights", None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32))
        self.boundary = BoundaryLoss(spacing=boundary_spacing)
        self._monai: dict[tuple[str, bool, int, bool], nn.Module] = {}
        self._checked = False
        self.last_terms: dict[str, torch.Tensor] = {}
        self._distances: torch.Tensor | None = None  # the boundary term's distance maps, within one call

    # --- input checks (first call only: reading label.max() waits for the GPU) -----------------

    def _check(self, logits: torch.Tensor, label: torch.Tensor) -> None:
        c = logits.shape[1]
        if label.shape[2:] != logits.shape[2:] or label.shape[0] != logits.shape[0]:
            raise ValueError(f"loss: label of shape {tuple(label.shape)} does not fit logits of shape {tuple(logits.shape)}; "
                             "the network must output the input's spatial size and the label be (B, 1, *spatial)")
        top = int(label.max())
        if top >= max(c, 2) or int(label.min()) < 0:
            raise ValueError(f"loss: the label holds class index {top} but the network outputs {c} channel(s); "
                             f"set the network's out_channels to the number of classes ({top + 1})")
        self._check_class_weights(c)
        self._checked = True

    def _check_class_weights(self, c: int) -> None:
        n_w = None if self.class_weights is None else self.class_weights.numel()
        if n_w is not None and n_w != max(c, 2):
            raise ValueError(f"LossFunction.class_weights has {n_w} values but the network outputs {max(c, 2)} classes; "
                             "give one weight per class, background first")

    def _check_soft(self, logits: torch.Tensor, label: torch.Tensor) -> None:
        """Every call with soft targets (nothing here waits for the GPU)."""
        if not self.takes_soft_targets:
            raise ValueError("loss: soft (mixed) targets reached a loss with a boundary term, which needs hard labels; "
                             "use mixup without the boundary term, or cutmix (its labels stay hard)")
        if label.shape != logits.shape:
            raise ValueError(f"loss: a soft target of shape {tuple(label.shape)} does not fit logits of shape "
                             f"{tuple(logits.shape)}; soft targets hold one probability per output channel")
        self._check_class_weights(logits.shape[1])

    @property
    def takes_soft_targets(self) -> bool:
        """Whether every term takes class probabilities as the label (all but boundary do)."""
        return "boundary" not in self.weights

    # --- terms -------------------------------------------------------------------------------

    def _monai_term(self, name: str, binary: bool, c: int, soft: bool) -> nn.Module:
        key = (name, binary, c, soft)
        if key not in self._monai:
            from monai.losses import DiceLoss, FocalLoss, TverskyLoss

            o = self.opts
            single = c == 1  # labels are already the target channel; MONAI would warn on every call
            act = dict(sigmoid=binary, softmax=not binary, to_onehot_y=not (single or soft),
                       include_background=True if single else o["include_background"])
            if name == "dice":
                term = DiceLoss(**act, smooth_nr=o["smooth"], smooth_dr=o["smooth"])
            elif name == "tversky":
                term = TverskyLoss(**act, alpha=o["tversky_alpha"], beta=o["tversky_beta"],
                                   smooth_nr=o["smooth"], smooth_dr=o["smooth"])
            else:  # focal: over all classes like cross-entropy; class weights applied by MONAI unless single
                weight = None if single or self.class_weights is None else self.class_weights.tolist()
                term = FocalLoss(include_background=True, to_onehot_y=not (single or soft), gamma=o["gamma"], alpha=o["alpha"],
                                 weight=weight, use_softmax=not binary, reduction="none" if single else "mean")
            self._monai[key] = term
        return self._monai[key]

    def _pixel_weights(self, label: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """Each voxel's class weight (B, 1, *S) for single-channel logits; a soft target's voxel weighs
        its foreground probability's share of the foreground weight."""
        if self.class_weights is None:
            return None
        w = self.class_weights.to(device=label.device, dtype=dtype)
        return torch.lerp(w[0], w[1], label.to(dtype)) if label.is_floating_point() else w[label]

    def _ce(self, logits: torch.Tensor, label: torch.Tensor, binary: bool) -> torch.Tensor:
        ls = self.label_smoothing
        soft = label.is_floating_point()
        if not binary:
            if soft:
                return self._soft_ce(logits, label)
            w = None if self.class_weights is None else self.class_weights.to(logits)
            return F.cross_entropy(logits, label[:, 0], weight=w, label_smoothing=ls)
        c = logits.shape[1]
        if soft or c == 1:
            target = label.to(logits.dtype)
        else:
            target = F.one_hot(label[:, 0], c).movedim(-1, 1).to(logits.dtype)
        target = target * (1 - ls) + 0.5 * ls
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        if self.class_weights is None:
            return bce.mean()
        w = self._pixel_weights(label, logits.dtype) if c == 1 else \
            self.class_weights.to(logits).view(1, c, *([1] * (logits.ndim - 2))).expand_as(bce)
        return (bce * w).sum() / w.sum()

    def _soft_ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Softmax cross-entropy against class probabilities, normalised as torch's cross_entropy
        with class indices: the weighted sum over voxels of -sum_c w_c t_c log p_c, with the target
        smoothed as t (1 - ls) + ls / C, over the sum of the voxels' weights sum_c w_c t_c of the
        unsmoothed target (the voxel count without class weights). On a one-hot target this is
        exactly F.cross_entropy(logits, indices, weight, label_smoothing)."""
        c = logits.shape[1]
        log_p = F.log_softmax(logits.float(), 1)
        target = target.float()
        ls = self.label_smoothing
        smoothed = target * (1 - ls) + ls / c if ls else target
        if self.class_weights is None:
            return -(smoothed * log_p).sum() / (target.numel() // c)
        w = self.class_weights.to(log_p).view(1, c, *([1] * (logits.ndim - 2)))
        return -(w * smoothed * log_p).sum() / (w * target).sum()

    def _term(self, name: str, logits: torch.Tensor, label: torch.Tensor, binary: bool) -> torch.Tensor:
        if name == "ce":
            return self._ce(logits, label, binary)
        if name == "boundary":
            probs = torch.sigmoid(logits) if binary else torch.softmax(logits, 1)
            if self._distances is None:  # once per call: every deep supervision head has the same label
                self._distances = self.boundary.distance_maps(label, probs)
            return self.boundary(probs, label, self._distances)
        term = self._monai_term(name, binary, logits.shape[1], label.is_floating_point())
        value = term(logits, label)
        if name == "focal" and logits.shape[1] == 1:
            w = self._pixel_weights(label, logits.dtype)
            value = value.mean() if w is None else (value * w).sum() / w.sum()
        return value

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        """`logits` (B, C, *S), or deep supervision's outputs [full resolution, head 1, head 2, ...], each
        (B, C, *S) (the network upsampled its heads): their losses against the same label, weighted by
        `deep_supervision_weights`."""
        heads = list(logits) if isinstance(logits, (list, tuple)) else [logits]
        if label.ndim == heads[0].ndim - 1:
            label = label.unsqueeze(1)
        # soft targets: floating point, one channel per output channel; a floating (B, 1, *S) label for
        # several channels holds class indices (with one channel the two readings are the same)
        if label.is_floating_point() and (heads[0].shape[1] == 1 or label.shape[1] > 1):
            self._check_soft(heads[0], label)
        else:
            label = label.long()
            if not self._checked:
                self._check(heads[0], label)
        binary = self.sigmoid if self.sigmoid is not None else heads[0].shape[1] == 1
        total: Any = 0.0
        self.last_terms = {}
        self._distances = None
        for head, head_weight in zip(heads, deep_supervision_weights(len(heads))):
            if not head_weight:  # kept in the graph at no cost, so that DDP finds every parameter used
                total = total + 0.0 * head.sum()
                continue
            for name, w in self.weights.items():
                value = self._term(name, head, label, binary)
                self.last_terms[name] = self.last_terms.get(name, 0.0) + head_weight * value.detach()
                total = total + head_weight * w * value
        self._distances = None
        return total

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={w:g}" for k, w in self.weights.items())


def build_loss(config: LossFunctionConfig) -> SegmentationLoss:
    """The loss for a validated LossFunction config."""
    return SegmentationLoss(
        config.term_weights(), smooth=config.smooth, class_weights=config.class_weights, alpha=config.alpha,
        gamma=config.gamma, tversky_alpha=config.tversky_alpha, tversky_beta=config.tversky_beta,
        label_smoothing=config.label_smoothing, include_background=config.include_background,
        sigmoid=config.uses_sigmoid(),
        boundary_spacing=config.boundary_spacing,
    )
