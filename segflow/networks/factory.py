"""Build the torch module behind each network node from its validated config.

Every builder returns a module mapping (B, in_channels, *spatial) to logits
(B, out_channels, *spatial). `build_network` also attaches `segflow_meta`, a plain dict that
inference and export read: type, spatial_dims, in/out channels, size_divisor(s), fixed_size.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from segflow.networks.description import NetworkDescription, describe

if TYPE_CHECKING:  # the configs are the node declarations'; implementations only read them
    from segflow.nodes import networks as cfgs

BUILDERS: dict[str, Callable[[Any], nn.Module]] = {}


def builds(*type_names: str):
    """Decorator: the function builds the module of these network node types from their config."""
    def register_builder(builder: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        for name in type_names:
            BUILDERS[name] = builder
        return builder
    return register_builder


def _channels(base: int, depth: int) -> tuple[int, ...]:
    return tuple(base * 2**i for i in range(depth))


@builds("UNet2D", "UNet3D")
def _unet(c: cfgs._UNetBase) -> nn.Module:
    from monai.networks.nets import UNet

    from segflow.networks.variants import InterpolatingUNet

    return (InterpolatingUNet if c.bilinear else UNet)(spatial_dims=c.dims(), in_channels=c.in_channels, out_channels=c.out_channels,
                channels=_channels(c.base_channels, c.depth), strides=(2,) * (c.depth - 1),
                num_res_units=c.num_res_units, act=c.act, norm=c.norm, dropout=c.dropout)


@builds("AttentionUNet")
def _attention_unet(c: cfgs.AttentionUNetConfig) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(spatial_dims=c.spatial_dims, in_channels=c.in_channels, out_channels=c.out_channels,
                         channels=_channels(c.base_channels, c.depth), strides=(2,) * (c.depth - 1), dropout=c.dropout)


@builds("VNet")
def _vnet(c: cfgs.VNetConfig) -> nn.Module:
    from monai.networks.nets import VNet

    p = c.dropout_prob
    if c.base_channels != 16:  # MONAI's VNet has 16 channels in its first level
        from segflow.networks.variants import WideVNet

        return WideVNet(c.spatial_dims, c.in_channels, c.out_channels, c.base_channels, c.act,
                        dropout_prob_down=p, dropout_prob_up=(p, p))
    return VNet(spatial_dims=c.spatial_dims, in_channels=c.in_channels, out_channels=c.out_channels, act=c.act,
                dropout_prob_down=p, dropout_prob_up=(p, p), dropout_dim=c.spatial_dims)


@builds("SegResNet")
def _segresnet(c: cfgs.SegResNetConfig) -> nn.Module:
    from monai.networks.nets import SegResNet

    norm: Any = ("group", {"num_groups": 8}) if c.norm == "group" else c.norm
    return SegResNet(spatial_dims=c.spatial_dims, init_filters=c.base_channels, in_channels=c.in_channels,
                     out_channels=c.out_channels, dropout_prob=c.dropout_prob or None, norm=norm,
                     blocks_down=tuple(c.blocks_down), blocks_up=tuple(c.blocks_up))


@builds("UNETR")
def _unetr(c: cfgs.UNETRConfig) -> nn.Module:
    from monai.networks.nets import UNETR

    from segflow.networks.variants import DeepUNETR

    layers = {} if c.num_layers == 12 else {"num_layers": c.num_layers}  # MONAI's UNETR has 12
    return (DeepUNETR if layers else UNETR)(
        in_channels=c.in_channels, out_channels=c.out_channels, img_size=c.fixed_size(), feature_size=c.feature_size,
        hidden_size=c.hidden_size, mlp_dim=c.mlp_dim, num_heads=c.num_heads, norm_name=c.norm,
        dropout_rate=c.dropout_rate, spatial_dims=c.spatial_dims, **layers)


@builds("SwinUNETR")
def _swin_unetr(c: cfgs.SwinUNETRConfig) -> nn.Module:
    import inspect

    from monai.networks.nets import SwinUNETR

    # MONAI >= 1.5 dropped img_size (any size divisible by 32 works); older MONAI still requires it
    extra: dict[str, Any] = {}
    if "img_size" in inspect.signature(SwinUNETR.__init__).parameters:
        extra["img_size"] = c.built_size() or (96,) * c.spatial_dims
    return SwinUNETR(**extra, in_channels=c.in_channels, out_channels=c.out_channels, depths=tuple(c.depths),
                     num_heads=tuple(c.num_heads), window_size=c.window_size, feature_size=c.feature_size,
                     norm_name=c.norm, drop_rate=c.drop_rate, attn_drop_rate=c.attn_drop_rate,
                     dropout_path_rate=c.dropout_path_rate, use_checkpoint=c.use_checkpoint,
                     spatial_dims=c.spatial_dims, use_v2=c.use_v2)


@builds("TransUNet")
def _transunet(c: cfgs.TransUNetConfig) -> nn.Module:
    from segflow.networks.transunet import TransUNet

    size = c.built_size()
    assert size is not None
    return TransUNet(c.in_channels, c.out_channels, img_size=size, base_channels=c.base_channels,
                     hidden_size=c.hidden_size, depth=c.depth, num_heads=c.num_heads, mlp_dim=c.mlp_dim,
                     dropout_rate=c.dropout_rate, norm=c.norm)


@builds("DeepLabV3Plus")
def _deeplab(c: cfgs.DeepLabV3PlusConfig) -> nn.Module:
    from segflow.networks.deeplab import DeepLabV3Plus

    return DeepLabV3Plus(c.in_channels, c.out_channels, base_channels=c.base_channels, output_stride=c.output_stride,
                         aspp_channels=c.aspp_channels, atrous_rates=tuple(c.atrous_rates), norm=c.norm,
                         dropout=c.dropout)



@builds("DynUNet")
def _dynunet(c: cfgs.DynUNetConfig) -> nn.Module:
    from segflow.networks.dynunet import DynUNet

    return DynUNet(c.spatial_dims, c.in_channels, c.out_channels, kernel_size=c.stage_kernels(),
                   strides=c.stage_strides(), filters=c.stage_filters(), norm=c.norm, act=c.act, dropout=c.dropout,
                   res_block=c.res_block, deep_supervision=c.deep_supervision, deep_supr_num=c.deep_supr_num)


def build_network(type_name: str, config: cfgs.NetworkConfig) -> nn.Module:
    """The module for network node type `type_name` with `config` (a validated config of that type),
    described (`description_of`) for inference, export and resume."""
    if type_name not in BUILDERS:
        raise ValueError(f"no network called {type_name!r}; known: {', '.join(BUILDERS)}")
    return describe(BUILDERS[type_name](config), NetworkDescription(
        type=type_name, spatial_dims=config.dims(), in_channels=config.in_channels,
        out_channels=config.out_channels, size_divisor=config.size_divisor(),
        size_divisors=config.size_divisors(), fixed_size=config.fixed_size(),
        config=config.model_dump(mode="json")))
