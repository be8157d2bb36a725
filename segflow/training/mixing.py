"""Mixup and CutMix of whole training batches on the training device (the Trainer's `mixup_alpha`,
`cutmix_alpha`, `mixup_prob`), after the loader's augmentation, with the formulas of the training
techniques guide (seed 001), one draw per batch:

* mixup: x' = lam x + (1 - lam) x[perm], y' = lam onehot(y) + (1 - lam) onehot(y[perm]), lam ~ Beta(a, a).
  y' is a soft target (B, C, *S) for the loss (segflow.losses.segmentation takes them).
* CutMix: a box (2-D) or cuboid (3-D) of x[perm] is pasted into x, and the same region of y[perm]
  into y. Its side is a fraction (1 - lam) ** (1 / d) of each axis (cut to whole voxels), lam ~ Beta(a, a),
  centred on a uniformly drawn voxel and cut at the image's edges; lam is then adjusted to the area
  actually pasted: lam = 1 - box volume / image volume. In segmentation every voxel keeps the label of
  the image it now shows, so y' stays hard class indices (the seed's lam-weighted loss of y and
  y[perm] is what classification needs, where one label stands for the whole image).

Which batches are mixed, which of the two, lam and the box are drawn on the host from torch's CPU
generator (no device work, nothing waits for the GPU); the permutation is drawn on the device from
its default generator, so no index is copied to it. `seed_everything` seeds both and a checkpoint's
RNG state holds both, so a resumed run mixes what an uninterrupted one would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Mixed:
    """One batch's draw. `lam` is the weight of the batch itself (cutmix: the fraction of each image
    not pasted over); `perm` (B,) on the batch's device names each sample's partner; `box` (cutmix)
    holds the pasted region, one (start, stop) per spatial axis."""

    kind: str  # "mixup" or "cutmix"
    lam: float
    perm: torch.Tensor
    box: tuple[tuple[int, int], ...] | None = None

    def _region(self) -> tuple[slice, ...]:
        assert self.box is not None
        return (slice(None), slice(None), *(slice(a, b) for a, b in self.box))

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """The mixed images (B, C, *S)."""
        if self.kind == "mixup":
            return torch.lerp(x[self.perm], x, self.lam)  # lam x + (1 - lam) x[perm]
        return self._paste(x)

    def labels(self, y: torch.Tensor, classes: int) -> torch.Tensor:
        """The target for labels `y` (B, 1, *S) of class indices and a network with `classes` output
        channels: mixup's soft target (B, classes, *S) float32 (one channel: the foreground's
        probability), or CutMix's pasted class indices."""
        if self.kind == "cutmix":
            return self._paste(y)
        if classes == 1:
            hot = y.float()
        else:  # one-hot by comparison: F.one_hot checks the values, which reads them back from a GPU
            shape = (1, classes) + (1,) * (y.dim() - 2)
            hot = (y == torch.arange(classes, device=y.device).view(shape)).float()
        return torch.lerp(hot[self.perm], hot, self.lam)

    def _paste(self, t: torch.Tensor) -> torch.Tensor:
        region = self._region()
        out = t.clone()
        out[region] = t[region][self.perm]
        return out


class BatchMix:
    """`mixed = mix.draw(image)`: a `Mixed` for this batch, or None when it stays as it is.

    `mixup_alpha`, `cutmix_alpha`: Beta(a, a) of each kind, 0 for off; `prob`: the chance that a batch
    is mixed; with both kinds on, each mixed batch uses one of them with even odds.
    """

    def __init__(self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0):
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= prob <= 1:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0 and prob in [0, 1]; got {mixup_alpha}, "
                             f"{cutmix_alpha}, {prob}")
        self.mixup_alpha, self.cutmix_alpha, self.prob = float(mixup_alpha), float(cutmix_alpha), float(prob)

    @property
    def soft(self) -> bool:
        """Whether some batches get soft targets (mixup)."""
        return self.mixup_alpha > 0 and self.prob > 0

    def __repr__(self) -> str:
        return f"BatchMix(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, prob={self.prob})"

    def draw(self, image: torch.Tensor) -> Mixed | None:
        kinds = [k for k, a in (("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)) if a > 0]
        if not kinds or self.prob == 0:
            return None
        u = torch.rand(2).tolist()  # host draws: a CPU tensor, nothing waits for the device
        if u[0] >= self.prob:
            return None
        kind = kinds[0] if len(kinds) == 1 else kinds[int(u[1] < 0.5)]
        alpha = self.mixup_alpha if kind == "mixup" else self.cutmix_alpha
        lam = float(torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha)).sample())
        box = None
        if kind == "cutmix":
            box = cutmix_box(tuple(image.shape[2:]), lam)
            lam = 1.0 - box_fraction(box, tuple(image.shape[2:]))
        perm = torch.randperm(image.shape[0], device=image.device)
        return Mixed(kind, lam, perm, box)


def cutmix_box(shape: tuple[int, ...], lam: float) -> tuple[tuple[int, int], ...]:
    """A box of side int(size * (1 - lam) ** (1 / d)) on each axis, centred on a voxel drawn uniformly,
    cut at the edges (host draws from torch's CPU generator)."""
    side = (1.0 - lam) ** (1.0 / len(shape))
    box = []
    for size in shape:
        cut = int(size * side)
        centre = int(torch.randint(size, ()).item())
        start = centre - cut // 2
        box.append((max(0, start), min(size, start + cut)))
    return tuple(box)


def box_fraction(box: tuple[tuple[int, int], ...], shape: tuple[int, ...]) -> float:
    """The fraction of an image of `shape` that `box` covers."""
    return math.prod(max(0, b - a) for a, b in box) / math.prod(shape)
