"""Random augmentation of whole training batches on the training device (`augmentation_on: device`).

The worker presets (`segflow.data.augment`) transform one sample at a time on the CPU. Here the same
kinds of transforms run on a batch that is already on the Trainer's device, all samples at once, with
per-sample random parameters drawn from torch's default generator of that device: `seed_everything`
seeds it and a checkpoint's RNG state restores it, so a resumed run draws what an uninterrupted one
would. Nothing is read back to the host, so the GPU's queue is never drained here.

Random erasing (`erase_p`, off in the presets; the loader's `random_erasing`) comes after the intensity
transforms: one box per drawn sample set to 0, the label left alone.

Spatial transforms (flips, rotate-90, rotation, zoom, translation, shear and the 2-D random resized crop)
are composed into one affine map per sample and applied with a single `grid_sample`: image bilinear,
label nearest (its values stay those of the input, plus background 0 where the map reaches outside),
outside the image 0. The 2-D strong preset adds a smooth random displacement field to that grid. When a
configuration has flips and rotate-90 only, the map moves whole pixels and the image is sampled nearest
too: exact, and cheaper. Intensity transforms touch the image only.

How the presets differ from the worker presets (same probabilities and ranges otherwise):
* 2-D: the workers resize the whole image to `image_size` and the crop is taken from that, so a small
  crop is zoomed up from fewer pixels than albumentations' crop of the original would be. A crop whose
  drawn area and aspect ratio do not fit is clamped to the image, where albumentations draws again.
* 2-D strong: one random displacement field (a 5 x 5 cell grid of random shifts of up to 15 % of a cell,
  upsampled bicubically) stands in for albumentations' one-of elastic (about 1 px) or grid distortion
  (up to 30 % of a cell); same probability, 0.3.
* 3-D: spatial transforms come before all intensity transforms, and contrast (gamma) before noise and
  smoothing; MONAI applies noise before the affine, and noise and smoothing before contrast.
* Smoothing uses a sampled Gaussian kernel cut at 4 sigma with zero padding; MONAI's default kernel
  is the erf-integrated one.
* 2-D images stay in [0, 1] through the intensity transforms (clipped, as albumentations does with
  float images) and are z-scored afterwards when the loader's normalization is zscore, as in the
  workers (`zscore_after`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from segflow.data.augment import STRENGTHS


@dataclass(frozen=True)
class AugmentSettings:
    """Per-sample probabilities and ranges; a probability of 0 switches its transform off."""

    flip_p: tuple[float, ...] = ()  # one per spatial axis, in tensor order (2-D: height, width)
    rot90_p: float = 0.0  # k x 90 degrees, k in {1, 2, 3}, in the plane of the first two spatial axes
    crop_p: float = 0.0  # 2-D random resized crop
    crop_area: tuple[float, float] = (1.0, 1.0)  # fraction of the image's area
    crop_ratio: tuple[float, float] = (1.0, 1.0)  # width / height in pixels, drawn log-uniformly
    affine_p: float = 0.0
    rotate_deg: float = 0.0  # +- in every axis plane (2-D: one angle, 3-D: three)
    zoom: float = 0.0  # +- fraction, each axis on its own
    translate: float = 0.0  # +- fraction of the extent, each axis on its own
    shear_deg: float = 0.0  # +- between every pair of axes
    elastic_p: float = 0.0
    elastic_cells: int = 5  # the displacement field's control grid has this many cells across
    elastic_magnitude: float = 0.0  # +- this fraction of a cell at each control point
    scale_p: float = 0.0  # intensity x (1 +- scale)
    scale: float = 0.0
    shift_p: float = 0.0  # intensity + (+- shift)
    shift: float = 0.0
    brightness_contrast_p: float = 0.0  # x (1 +- contrast) + (+- brightness)
    brightness: float = 0.0
    contrast: float = 0.0
    gamma_p: float = 0.0
    gamma: tuple[float, float] = (1.0, 1.0)
    noise_p: float = 0.0  # additive Gaussian noise, its std drawn from noise_std
    noise_std: tuple[float, float] = (0.0, 0.0)
    smooth_p: float = 0.0  # Gaussian smoothing, sigma in voxels drawn per axis
    smooth_sigma: tuple[float, float] = (0.0, 0.0)
    erase_p: float = 0.0  # random erasing: one box per sample set to 0, the label left alone
    erase_size: tuple[float, float] = (0.1, 0.4)  # each side a fraction of its axis, drawn per axis
    # Images in [0, 1] (the 2-D pipeline): intensity results are clipped to it and gamma applies
    # directly. Otherwise (z-scored 3-D data) gamma rescales each sample to [0, 1] and back, as
    # MONAI's RandAdjustContrast does.
    unit_range: bool = False


def preset(dims: int, strength: str) -> AugmentSettings:
    """The light / medium / strong presets of `segflow.data.augment`, as batch settings."""
    if strength not in STRENGTHS:
        raise ValueError(f"augmentation_strength must be one of {STRENGTHS}, got {strength!r}")
    if dims == 2:
        # albumentations draws k in {0, 1, 2, 3} with p 0.5: a real rotation 0.375 of the time
        light = AugmentSettings(crop_p=1.0, crop_area=(0.8, 1.0), crop_ratio=(0.9, 1.1), flip_p=(0.0, 0.5),
                                brightness_contrast_p=0.3, brightness=0.1, contrast=0.1, unit_range=True)
        medium = replace(light, crop_area=(0.6, 1.0), crop_ratio=(0.8, 1.25), flip_p=(0.5, 0.5), rot90_p=0.375,
                         affine_p=0.5, rotate_deg=15.0, zoom=0.1, translate=0.06,
                         brightness_contrast_p=0.5, brightness=0.2, contrast=0.2, gamma_p=0.3, gamma=(0.8, 1.2))
        strong = replace(medium, crop_area=(0.4, 1.0), crop_ratio=(0.75, 1.33),
                         affine_p=0.7, rotate_deg=30.0, zoom=0.2, translate=0.1, shear_deg=10.0,
                         elastic_p=0.3, elastic_magnitude=0.15,
                         brightness_contrast_p=0.7, brightness=0.3, contrast=0.3, gamma_p=0.5, gamma=(0.7, 1.5),
                         noise_p=0.3, noise_std=(0.01, 0.05))
    elif dims == 3:
        light = AugmentSettings(flip_p=(0.5, 0.5, 0.5), scale_p=0.5, scale=0.1, shift_p=0.5, shift=0.1)
        medium = replace(light, rot90_p=0.3, noise_p=0.15, noise_std=(0.0, 0.05))
        strong = replace(medium, affine_p=0.3, rotate_deg=15.0, zoom=0.15,  # MONAI: 0.26 rad, 15 %
                         smooth_p=0.15, smooth_sigma=(0.5, 1.0), gamma_p=0.3, gamma=(0.7, 1.5))
    else:
        raise ValueError(f"batch augmentation needs 2-D or 3-D data, got {dims}-D")
    return {"light": light, "medium": medium, "strong": strong}[strength]


class BatchAugment:
    """`image, label = aug(image, label)` on a training batch on its device: image (B, C, *S) float,
    label (B, 1, *S) integer. Shapes and dtypes are kept.

    `strength` picks a preset (None: every transform off); keyword arguments then change single
    `AugmentSettings` fields, e.g. `BatchAugment(2, None, flip_p=(0.0, 1.0))` always flips the width.
    `zscore_after` z-scores each sample's channels at the end, for 2-D data whose workers leave it
    in [0, 1] for the intensity transforms.
    """

    def __init__(self, dims: int, strength: str | None = None, *, zscore_after: bool = False, **changes):
        if dims not in (2, 3):
            raise ValueError(f"batch augmentation needs 2-D or 3-D data, got {dims}-D")
        settings = replace(preset(dims, strength) if strength is not None else AugmentSettings(), **changes)
        if settings.flip_p and len(settings.flip_p) != dims:
            raise ValueError(f"flip_p needs one probability per spatial axis ({dims}), got {settings.flip_p}")
        if settings.crop_p and dims != 2:
            raise ValueError("the random resized crop is 2-D only")
        self.dims, self.strength, self.settings, self.zscore_after = dims, strength, settings, zscore_after

    def __repr__(self) -> str:
        return f"BatchAugment(dims={self.dims}, strength={self.strength!r}, zscore_after={self.zscore_after})"

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.dim() != self.dims + 2 or label.shape[2:] != image.shape[2:]:
            raise ValueError(f"BatchAugment({self.dims}-D) needs image (B, C, *S) and label (B, 1, *S) with "
                             f"{self.dims} spatial axes; got {tuple(image.shape)} and {tuple(label.shape)}")
        image, label = self._spatial(image, label)
        image = self._intensity(image)
        if self.settings.erase_p > 0:  # last, as torchvision's RandomErasing; before the z-score, as the workers
            image = self._erase(image)
        if self.zscore_after:
            std, mean = torch.std_mean(image, dim=tuple(range(2, image.dim())), correction=0, keepdim=True)
            image = (image - mean) / std.clamp_min(1e-8)
        return image, label

    # ---- spatial ------------------------------------------------------------------------------

    def _spatial(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, d = self.settings, self.dims
        shape = tuple(image.shape[2:])
        rot90 = s.rot90_p > 0 and shape[0] == shape[1]  # a quarter turn of a non-square plane changes its shape
        continuous = s.crop_p > 0 or s.affine_p > 0 or s.elastic_p > 0
        if not (continuous or rot90 or any(p > 0 for p in s.flip_p)):
            # decided by the configuration, not the draws: looking at the draws would need a host sync
            return image, label
        n, dev = image.shape[0], image.device
        # every step maps output to input coordinates, normalised to [-1, 1] per axis, in tensor axis
        # order, as (linear part, shift); applied in the workers' order (crop, flips, rotate-90,
        # affine), so the maps compose left to right
        linear, shift = torch.eye(d, device=dev).expand(n, d, d), torch.zeros(n, d, device=dev)
        steps = []
        if s.crop_p > 0:
            steps.append(self._crop(n, shape, dev))
        if s.flip_p:
            flip = torch.stack([torch.rand(n, device=dev) < p for p in s.flip_p], 1)
            steps.append((torch.diag_embed(1.0 - 2.0 * flip.float()), None))
        if rot90:
            steps.append((_quarter_turns(n, s.rot90_p, d, dev), None))
        if s.affine_p > 0:
            steps.append(self._affine(n, shape, dev))
        for step_linear, step_shift in steps:
            if step_shift is not None:
                shift = shift + (linear @ step_shift[:, :, None])[:, :, 0]
            linear = linear @ step_linear
        # affine_grid counts axes from the last (x = width): reverse the axis order
        theta = torch.cat([linear.flip(1, 2), shift.flip(1)[:, :, None]], 2)
        grid = F.affine_grid(theta.to(image.dtype), [n, 1, *shape], align_corners=False)
        if s.elastic_p > 0:
            field = self._displacement(n, shape, dev)  # (B, d, *S), output coordinates
            field = torch.einsum("bij,bj...->b...i", linear, field)  # into input coordinates
            grid = grid + field.flip(-1).to(grid.dtype)
        mode = "bilinear" if continuous else "nearest"  # whole-pixel moves: nearest is exact
        image = F.grid_sample(image, grid, mode=mode, padding_mode="zeros", align_corners=False)
        label = F.grid_sample(label.to(grid.dtype), grid, mode="nearest", padding_mode="zeros",
                              align_corners=False).to(label.dtype)
        return image, label

    def _crop(self, n: int, shape: tuple[int, ...], dev) -> tuple[torch.Tensor, torch.Tensor]:
        """Random resized crop: a window of the drawn area and aspect ratio, stretched to the output."""
        s = self.settings
        area = _uniform(n, *s.crop_area, dev)
        ratio = torch.exp(_uniform(n, math.log(s.crop_ratio[0]), math.log(s.crop_ratio[1]), dev))
        height, width = shape
        frac = torch.stack([torch.sqrt(area * width / (ratio * height)),
                            torch.sqrt(area * ratio * height / width)], 1).clamp(max=1.0)
        centre = (2 * torch.rand(n, 2, device=dev) - 1) * (1 - frac)
        on = (torch.rand(n, device=dev) < s.crop_p)[:, None]
        frac, centre = torch.where(on, frac, 1.0), torch.where(on, centre, 0.0)
        return torch.diag_embed(frac), centre

    def _affine(self, n: int, shape: tuple[int, ...], dev) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation, shear and zoom, drawn in pixel units so that a rotation stays a rotation on a
        non-square image, then converted to normalised coordinates; plus a translation."""
        s, d = self.settings, self.dims
        eye = torch.eye(d, device=dev).expand(n, d, d)
        linear = eye
        for i, j in _planes(d):
            angle = _uniform(n, -1.0, 1.0, dev) * math.radians(s.rotate_deg)
            linear = linear @ _plane_rotation(torch.cos(angle), torch.sin(angle), d, i, j)
        off_diagonal = 1.0 - torch.eye(d, device=dev)
        shear = torch.tan(_uniform((n, d, d), -1.0, 1.0, dev) * math.radians(s.shear_deg)) * off_diagonal
        zoom = 1.0 + _uniform((n, d), -s.zoom, s.zoom, dev)  # > 1 enlarges the content, as albumentations
        linear = linear @ (eye + shear) @ torch.diag_embed(1.0 / zoom)
        sizes = _vector(shape, dev)
        linear = linear * (sizes[None, None, :] / sizes[None, :, None])  # pixels -> normalised
        shift = 2.0 * _uniform((n, d), -s.translate, s.translate, dev)
        on = torch.rand(n, device=dev) < s.affine_p
        linear = torch.where(on[:, None, None], linear, eye)
        return linear, shift * on[:, None]

    def _displacement(self, n: int, shape: tuple[int, ...], dev) -> torch.Tensor:
        """A smooth random field: uniform shifts at a coarse grid of control points, upsampled."""
        s, d = self.settings, self.dims
        cells = s.elastic_cells
        reach = s.elastic_magnitude * 2.0 / cells  # a cell spans 2 / cells in normalised coordinates
        coarse = (2 * torch.rand(n, d, *(cells + 1,) * d, device=dev) - 1) * reach
        coarse = coarse * (torch.rand(n, device=dev) < s.elastic_p).view(n, *(1,) * (d + 1))
        return F.interpolate(coarse, size=shape, mode="bicubic" if d == 2 else "trilinear", align_corners=True)

    # ---- intensity ----------------------------------------------------------------------------

    def _intensity(self, x: torch.Tensor) -> torch.Tensor:
        s = self.settings
        n, dev = x.shape[0], x.device
        if s.scale_p > 0:
            x = x * _gated(1.0 + _uniform(n, -s.scale, s.scale, dev), s.scale_p, 1.0, x)
        if s.shift_p > 0:
            x = x + _gated(_uniform(n, -s.shift, s.shift, dev), s.shift_p, 0.0, x)
        if s.brightness_contrast_p > 0:
            alpha = _uniform(n, 1.0 - s.contrast, 1.0 + s.contrast, dev)
            beta = _uniform(n, -s.brightness, s.brightness, dev)
            on = torch.rand(n, device=dev) < s.brightness_contrast_p
            x = x * _per_sample(torch.where(on, alpha, 1.0), x) + _per_sample(torch.where(on, beta, 0.0), x)
            x = self._clip(x)
        if s.gamma_p > 0:
            x = self._gamma(x, _gated(_uniform(n, *s.gamma, dev), s.gamma_p, 1.0, x))
        if s.noise_p > 0:
            std = _gated(_uniform(n, *s.noise_std, dev), s.noise_p, 0.0, x)
            x = self._clip(x + std * torch.randn_like(x))
        if s.smooth_p > 0:
            x = self._smooth(x)
        return x

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        """Random erasing: with probability erase_p a sample gets one box set to 0, each side a whole
        number of voxels, a fraction of its axis drawn from erase_size, placed uniformly inside."""
        s, n, dev = self.settings, x.shape[0], x.device
        shape = x.shape[2:]
        box = (torch.rand(n, device=dev) < s.erase_p).view(n, *(1,) * len(shape))
        for axis, size in enumerate(shape):
            side = torch.floor(_uniform(n, *s.erase_size, dev) * size).clamp(1, size)
            start = torch.floor(torch.rand(n, device=dev) * (size - side + 1))
            at = torch.arange(size, device=dev)
            inside = (at >= start[:, None]) & (at < (start + side)[:, None])  # (B, size)
            view = [n] + [1] * len(shape)
            view[1 + axis] = size
            box = box & inside.view(view)
        return x.masked_fill(box[:, None], 0.0)

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 1.0) if self.settings.unit_range else x

    def _gamma(self, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        if self.settings.unit_range:
            out = x.clamp_min(0.0).pow(gamma)
        else:
            lo = x.flatten(1).amin(1)
            span = x.flatten(1).amax(1) - lo
            lo, span = _per_sample(lo, x), _per_sample(span, x)
            out = ((x - lo) / (span + 1e-7)).clamp_min(0.0).pow(gamma) * span + lo
        return torch.where(gamma == 1.0, x, out)  # samples left alone come back bit for bit

    def _smooth(self, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur with each sample's own sigmas: one grouped convolution per axis
        over the batch folded into channels; samples not drawn get a one-tap identity kernel."""
        s, d = self.settings, self.dims
        n, c, shape = x.shape[0], x.shape[1], x.shape[2:]
        radius = max(1, int(4.0 * s.smooth_sigma[1] + 0.5))  # MONAI truncates at 4 sigma too
        taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        sigma = _uniform((n, d), *s.smooth_sigma, x.device).clamp_min(1e-3).to(x.dtype)
        on = (torch.rand(n, device=x.device) < s.smooth_p)[:, None]
        identity = (taps == 0).to(x.dtype)
        conv = (F.conv2d, F.conv3d)[d - 2]
        flat = x.reshape(1, n * c, *shape)
        for axis in range(d):
            kernel = torch.exp(-0.5 * (taps / sigma[:, axis, None]) ** 2)
            kernel = torch.where(on, kernel / kernel.sum(1, keepdim=True), identity)
            view = [1] * d
            view[axis] = 2 * radius + 1
            weight = kernel[:, None].expand(n, c, 2 * radius + 1).reshape(n * c, 1, *view)
            padding = [radius if a == axis else 0 for a in range(d)]
            flat = conv(flat, weight, padding=padding, groups=n * c)
        return flat.view(n, c, *shape)


# ---- helpers --------------------------------------------------------------------------------------

def _uniform(size, lo: float, hi: float, dev) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(size, device=dev)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *(1,) * (like.dim() - 1)).to(like.dtype)


def _gated(values: torch.Tensor, p: float, off: float, like: torch.Tensor) -> torch.Tensor:
    """`values` for the samples drawn with probability `p`, `off` for the rest, shaped to broadcast."""
    on = torch.rand(values.shape[0], device=values.device) < p
    return _per_sample(torch.where(on, values, off), like)


def _vector(values, dev) -> torch.Tensor:
    """A few numbers as a tensor on `dev`, filled there: copying them from the host would wait for
    the device's queue to drain."""
    return torch.stack([torch.full((), float(v), device=dev) for v in values])


def _planes(d: int) -> list[tuple[int, int]]:
    return [(0, 1)] if d == 2 else [(0, 1), (0, 2), (1, 2)]


def _plane_rotation(cos: torch.Tensor, sin: torch.Tensor, d: int, i: int, j: int) -> torch.Tensor:
    out = torch.eye(d, device=cos.device).repeat(cos.shape[0], 1, 1)
    out[:, i, i], out[:, i, j], out[:, j, i], out[:, j, j] = cos, -sin, sin, cos
    return out


def _quarter_turns(n: int, p: float, d: int, dev) -> torch.Tensor:
    """k x 90 degrees in the plane of axes 0 and 1, k in {1, 2, 3} with probability p, else 0;
    cos and sin of k x 90 degrees written out, so the matrix entries are exactly 0 and +-1."""
    k = torch.randint(1, 4, (n,), device=dev)
    k = torch.where(torch.rand(n, device=dev) < p, k, 0)
    cos = (k == 0).float() - (k == 2).float()
    sin = (k == 1).float() - (k == 3).float()
    return _plane_rotation(cos, sin, d, 0, 1)
