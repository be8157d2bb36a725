"""Class probabilities for a batch: sliding-window inference, averaged over test-time augmentations.

Each variant is (scale, flip axes): the input is resized by `scale` and flipped, predicted with
MONAI's sliding-window inference, and the probabilities are flipped back and resized to the
input size before averaging, as in the seed training-techniques document (scales x {no flip,
each flip}). Probabilities are averaged, not logits, so a confident variant cannot drown the rest.
With `combinations`, the flips are every non-empty set of the axes, as nnU-Net mirrors
(nnUNetPredictor: itertools.combinations of its mirror axes): 7 flips and the plain pass in 3-D.

Windows are blended with MONAI's Gaussian importance map at sigma = 1/8 of the window per axis,
nnU-Net's `compute_gaussian(sigma_scale=1/8)`; nnU-Net centres its map on voxel n // 2 and cuts it
at 4 sigma, MONAI centres it between the two middle voxels of an even window and floors it at 1e-3.
"""
from __future__ import annotations

from itertools import combinations as subsets
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Variant = tuple[float, tuple[int, ...]]  # (scale, spatial axes to flip, 0-based)
GAUSSIAN_SIGMA_SCALE = 1 / 8  # sliding-window blending: sigma per axis as a fraction of the window (nnU-Net's)


def variants(tta: bool | Sequence[str], flips: Sequence[int] | None, scales: Sequence[float], dims: int,
             combinations: bool = False) -> list[Variant]:
    """The augmentations to average: the plain prediction first, then each flip axis (or, with
    `combinations`, every non-empty set of the axes, smallest first), at each scale."""
    modes = [] if tta is False else ["flip"] if tta is True else list(tta)
    axes = list(range(dims)) if flips is None else list(dict.fromkeys(flips))
    bad = [a for a in axes if not 0 <= a < dims]
    if "flip" in modes and bad:
        raise ValueError(f"tta_flips {list(flips)} names axes {bad}, but the data is {dims}-D (axes 0..{dims - 1})")
    sizes = range(1, len(axes) + 1) if combinations else [1]
    flip_sets = [()] + ([s for n in sizes for s in subsets(axes, n)] if "flip" in modes else [])
    use_scales = [float(s) for s in scales] if "scale" in modes else [1.0]
    return [(s, f) for s in use_scales for f in flip_sets]


def to_probabilities(logits: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """Softmax over classes; a single sigmoid channel becomes [background, foreground]. `sigmoid`:
    region channels (segflow.data.label_scheme), each its own sigmoid probability."""
    logits = logits.float()
    if sigmoid:
        return torch.sigmoid(logits)
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, size=tuple(int(s) for s in size), mode=mode, align_corners=False)


def predict_probabilities(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    roi_size: Sequence[int] | None,
    *,
    overlap: float = 0.5,
    blend_mode: str = "gaussian",
    sw_batch_size: int = 4,
    tta: list[Variant] | None = None,
    autocast_dtype: torch.dtype | None = None,
    sigmoid: bool = False,
) -> torch.Tensor:
    """(B, C, *S) float32 class probabilities for `image` (B, in_channels, *S), on image's device; with
    `sigmoid`, region probabilities (one sigmoid per channel), averaged over the variants the same way.

    `roi_size` None: the whole image in one forward pass. Otherwise MONAI's sliding window with that
    window (images smaller than the window are padded by MONAI and cropped back).
    """
    from monai.inferers import sliding_window_inference

    size = tuple(image.shape[2:])
    total = None
    for scale, axes in tta or [(1.0, ())]:
        x = image if scale == 1.0 else _resize(image, [max(1, round(s * scale)) for s in size])
        dims = [2 + a for a in axes]
        if dims:
            x = torch.flip(x, dims)
        with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if roi_size is None:
                logits = model(x)
            else:
                logits = sliding_window_inference(x, roi_size=tuple(roi_size), sw_batch_size=sw_batch_size,
                                                  predictor=model, overlap=overlap, mode=blend_mode,
                                                  sigma_scale=GAUSSIAN_SIGMA_SCALE)
        p = to_probabilities(logits, sigmoid)
        if dims:
            p = torch.flip(p, dims)
        p = _resize(p, size)
        total = p if total is None else total + p
    return total / len(tta or [None])
