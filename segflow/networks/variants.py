"""MONAI networks with the settings the node editor's versions had and MONAI's lack: a U-Net whose
decoder upsamples by interpolation (`bilinear`), a UNETR of any transformer depth (`num_layers`), a
V-Net of any width (`base_channels`). Each keeps its MONAI parent's module names, so `freeze`,
`param_groups` and checkpoints name the same parts; with the default setting each builds the MONAI
network unchanged.
"""
from __future__ import annotations

from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets import UNETR, UNet, VNet
from monai.networks.nets.vit import ViT
from monai.networks.nets.vnet import DownTransition, InputTransition, OutputTransition, UpTransition
from torch import nn


class InterpolatingUNet(UNet):
    """MONAI's UNet with each transposed convolution of the decoder replaced by bilinear (2-D) or
    trilinear (3-D) interpolation followed by a convolution of the same kernel size: no learned
    upsampling, and none of a strided transposed convolution's checkerboard artefacts."""

    def _get_up_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
        mode = "bilinear" if self.dimensions == 2 else "trilinear"
        conv = Convolution(self.dimensions, in_channels, out_channels, strides=1, kernel_size=self.up_kernel_size,
                           act=self.act, norm=self.norm, dropout=self.dropout, bias=self.bias,
                           conv_only=is_top and self.num_res_units == 0, adn_ordering=self.adn_ordering)
        layers: list[nn.Module] = [nn.Upsample(scale_factor=strides, mode=mode, align_corners=True), conv]
        if self.num_res_units > 0:
            layers.append(ResidualUnit(self.dimensions, out_channels, out_channels, strides=1,
                                       kernel_size=self.kernel_size, subunits=1, act=self.act, norm=self.norm,
                                       dropout=self.dropout, bias=self.bias, last_conv_only=is_top,
                                       adn_ordering=self.adn_ordering))
        return nn.Sequential(*layers)


class DeepUNETR(UNETR):
    """MONAI's UNETR with `num_layers` transformer layers instead of 12. The decoder's three skips
    come from the layers at a quarter, half and three quarters of the depth (MONAI's 3, 6, 9 of 12)."""

    def __init__(self, *, in_channels: int, out_channels: int, img_size, feature_size: int, hidden_size: int,
                 mlp_dim: int, num_heads: int, norm_name: str, dropout_rate: float, spatial_dims: int, num_layers: int):
        super().__init__(in_channels=in_channels, out_channels=out_channels, img_size=img_size,
                         feature_size=feature_size, hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads,
                         norm_name=norm_name, dropout_rate=dropout_rate, spatial_dims=spatial_dims)
        self.num_layers = num_layers
        self.taps = tuple(num_layers * k // 4 for k in (1, 2, 3))
        self.vit = ViT(in_channels=in_channels, img_size=img_size, patch_size=self.patch_size,
                       hidden_size=hidden_size, mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads,
                       proj_type="conv", classification=False, dropout_rate=dropout_rate, spatial_dims=spatial_dims)

    def forward(self, x_in):
        x, hidden = self.vit(x_in)
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(self.proj_feat(hidden[self.taps[0]]))
        enc3 = self.encoder3(self.proj_feat(hidden[self.taps[1]]))
        enc4 = self.encoder4(self.proj_feat(hidden[self.taps[2]]))
        dec3 = self.decoder5(self.proj_feat(x), enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        return self.out(self.decoder2(dec1, enc1))


class WideVNet(VNet):
    """MONAI's VNet with `base_channels` channels in its first level (MONAI fixes 16), doubled by
    each of its four downsamplings. Built with MONAI's own blocks and arguments, 16 replaced by
    `base_channels`; the module names stay MONAI's (`down_tr32` holds 2 x base_channels)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, base_channels: int, act,
                 dropout_prob_down: float | None, dropout_prob_up: tuple[float | None, float]):
        nn.Module.__init__(self)
        b, down, up = base_channels, dropout_prob_down, dropout_prob_up
        self.in_tr = InputTransition(spatial_dims, in_channels, b, act)
        self.down_tr32 = DownTransition(spatial_dims, b, 1, act)
        self.down_tr64 = DownTransition(spatial_dims, 2 * b, 2, act)
        self.down_tr128 = DownTransition(spatial_dims, 4 * b, 3, act, dropout_prob=down)
        self.down_tr256 = DownTransition(spatial_dims, 8 * b, 2, act, dropout_prob=down)
        self.up_tr256 = UpTransition(spatial_dims, 16 * b, 16 * b, 2, act, dropout_prob=up)
        self.up_tr128 = UpTransition(spatial_dims, 16 * b, 8 * b, 2, act, dropout_prob=up)
        self.up_tr64 = UpTransition(spatial_dims, 8 * b, 4 * b, 1, act)
        self.up_tr32 = UpTransition(spatial_dims, 4 * b, 2 * b, 1, act)
        self.out_tr = OutputTransition(spatial_dims, 2 * b, out_channels, act)
