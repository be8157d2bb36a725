"""nnU-Net's U-Net: MONAI's DynUNet, with its deep supervision output in segflow's form.

MONAI's DynUNet, training with deep supervision, returns one tensor with the heads stacked on
dim 1: (B, 1 + deep_supr_num, C, *S), the heads already upsampled to the full size. segflow's
convention (the loss, the ensemble, export) is a list whose first element is the full-resolution
logits, so this module unbinds the stack. In eval mode, and without deep supervision, the output
is the full-resolution logits (B, C, *S) alone.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_NORMS = {"instance": ("INSTANCE", {"affine": True}), "batch": "BATCH"}  # affine instance norm, as nnU-Net
_ACTS = {"leakyrelu": ("leakyrelu", {"negative_slope": 0.01, "inplace": True}), "relu": ("relu", {"inplace": True}),
         "prelu": "prelu"}


class DynUNet(nn.Module):
    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: Sequence[Sequence[int]],
                 strides: Sequence[Sequence[int]], filters: Sequence[int], *, norm: str = "instance",
                 act: str = "leakyrelu", dropout: float = 0.0, res_block: bool = False,
                 deep_supervision: bool = False, deep_supr_num: int = 1):
        super().__init__()
        from monai.networks.nets import DynUNet as MonaiDynUNet

        self.net = MonaiDynUNet(
            spatial_dims, in_channels, out_channels, kernel_size=kernel_size, strides=strides,
            upsample_kernel_size=strides[1:], filters=filters, dropout=dropout or None, norm_name=_NORMS[norm],
            act_name=_ACTS[act], deep_supervision=deep_supervision, deep_supr_num=deep_supr_num, res_block=res_block)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.net(x)
        if self.training and self.net.deep_supervision:
            return list(out.unbind(1))  # [full resolution, head 1, head 2, ...]
        return out
