"""TransUNet (Chen et al. 2021), 2-D, small enough to train from scratch.

A residual CNN encoder brings the image to 1/16 resolution; a ViT over those 1/16 features
models global context; a cascaded upsampler goes back to full resolution through the CNN skips.
The paper's R50-ViT-B/16 relies on ImageNet weights, which cannot be downloaded here, so the
widths are configurable and default small. MONAI blocks do the work where MONAI has them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import ResidualUnit, TransformerBlock, UnetBasicBlock
from torch import nn


class TransUNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, img_size: tuple[int, int] = (256, 256),
                 base_channels: int = 32, hidden_size: int = 384, depth: int = 8, num_heads: int = 6,
                 mlp_dim: int = 1536, dropout_rate: float = 0.0, norm: str = "batch"):
        super().__init__()
        c = base_channels
        widths = [c, 2 * c, 4 * c, 8 * c]
        stages, prev = [], in_channels
        for w in widths:  # each halves the size: skips at 1/2, 1/4, 1/8; the last feeds the ViT at 1/16
            stages.append(ResidualUnit(2, prev, w, strides=2, norm=norm, act="relu"))
            prev = w
        self.encoder = nn.ModuleList(stages)
        self.grid = (img_size[0] // 16, img_size[1] // 16)
        self.patch_embed = nn.Conv2d(widths[-1], hidden_size, kernel_size=1)
        self.pos_embed = nn.Parameter(torch.zeros(1, hidden_size, *self.grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.dropout = nn.Dropout(dropout_rate)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias=True) for _ in range(depth)
        )
        for block in self.blocks:
            # MONAI creates this layer norm even without cross-attention; unused parameters would
            # break DistributedDataParallel's default gradient reduction
            block.norm_cross_attn = nn.Identity()
        self.norm = nn.LayerNorm(hidden_size)
        self.conv_more = UnetBasicBlock(2, hidden_size, widths[-1], kernel_size=3, stride=1, norm_name=norm, act_name="relu")
        # decoder: (input channels, skip channels, output channels) from 1/16 up to full size
        plan = [(widths[3], widths[2], widths[2]), (widths[2], widths[1], widths[1]),
                (widths[1], widths[0], widths[0]), (widths[0], 0, max(16, c // 2))]
        self.decoder = nn.ModuleList(
            UnetBasicBlock(2, i + s, o, kernel_size=3, stride=1, norm_name=norm, act_name="relu") for i, s, o in plan
        )
        self.head = nn.Conv2d(plan[-1][2], out_channels, kernel_size=1)

    def _positions(self, h: int, w: int) -> torch.Tensor:
        pos = self.pos_embed
        if (h, w) != self.grid:  # another input size than img_size: resample the learnt grid
            pos = F.interpolate(pos, size=(h, w), mode="bilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = self.patch_embed(skips.pop())
        b, d, h, w = x.shape
        tokens = self.dropout(x.flatten(2).transpose(1, 2) + self._positions(h, w))
        for block in self.blocks:
            tokens = block(tokens)
        x = self.norm(tokens).transpose(1, 2).reshape(b, d, h, w)
        x = self.conv_more(x)
        for block in self.decoder:
            skip = skips.pop() if skips else None
            target = skip.shape[2:] if skip is not None else size
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1) if skip is not None else x)
        return self.head(x)
