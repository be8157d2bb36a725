"""DeepLabV3+ (Chen et al. 2018), 2-D, with a residual encoder trained from scratch.

No pretrained backbone can be downloaded, so the encoder is a small dilated residual network
(MONAI ResidualUnit) reaching output stride 16 or 8; MONAI's SimpleASPP plus an image-pooling
branch forms the ASPP; the decoder fuses stride-4 features as in the paper. Outputs are resized
to the input, so any input size of at least 32 goes through.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit, SimpleASPP
from torch import nn


def _norm(name: str) -> tuple | str:
    return ("group", {"num_groups": 8}) if name == "group" else name


class DeepLabV3Plus(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, base_channels: int = 32, output_stride: int = 16,
                 aspp_channels: int = 128, atrous_rates: Sequence[int] = (6, 12, 18), norm: str = "batch",
                 dropout: float = 0.1):
        super().__init__()
        c, nrm = base_channels, _norm(norm)

        def conv(i: int, o: int, k: int = 3, **kw) -> Convolution:
            return Convolution(2, i, o, kernel_size=k, norm=nrm, act="relu", bias=False, **kw)

        # strides 2,2,2 reach 1/8; the last stages dilate instead of striding past the output stride
        deep_stride, dil = (2, 2) if output_stride == 16 else (1, 4)
        self.stem = conv(in_channels, c, strides=2)                                              # 1/2
        self.layer1 = ResidualUnit(2, c, 2 * c, strides=2, norm=nrm, act="relu")                   # 1/4: low level
        self.layer2 = ResidualUnit(2, 2 * c, 4 * c, strides=2, norm=nrm, act="relu")               # 1/8
        self.layer3 = ResidualUnit(2, 4 * c, 8 * c, strides=deep_stride, norm=nrm, act="relu",
                                   dilation=1 if output_stride == 16 else 2)                      # 1/16 or 1/8
        self.layer4 = ResidualUnit(2, 8 * c, 8 * c, strides=1, norm=nrm, act="relu", dilation=dil)
        rates = tuple(atrous_rates) if output_stride == 16 else tuple(2 * r for r in atrous_rates)
        self.aspp = SimpleASPP(2, 8 * c, aspp_channels, kernel_sizes=(1,) + (3,) * len(rates),
                               dilations=(1,) + rates, norm_type=nrm, acti_type="relu")
        # image pooling branch without norm: a 1x1 map has no statistics to normalise with batch size 1
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8 * c, aspp_channels, 1), nn.ReLU())
        self.project = nn.Sequential(conv(aspp_channels * (len(rates) + 2), aspp_channels, k=1), nn.Dropout(dropout))
        low = max(16, aspp_channels * 3 // 16)  # the paper's 48 for 256 ASPP channels
        self.low = conv(2 * c, low, k=1)
        self.fuse = nn.Sequential(conv(aspp_channels + low, aspp_channels), conv(aspp_channels, aspp_channels))
        self.head = nn.Conv2d(aspp_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        low = self.layer1(self.stem(x))
        deep = self.layer4(self.layer3(self.layer2(low)))
        pooled = F.interpolate(self.pool(deep), size=deep.shape[2:], mode="nearest")
        y = self.project(torch.cat([self.aspp(deep), pooled], dim=1))
        y = F.interpolate(y, size=low.shape[2:], mode="bilinear", align_corners=False)
        y = self.fuse(torch.cat([y, self.low(low)], dim=1))
        return F.interpolate(self.head(y), size=size, mode="bilinear", align_corners=False)
