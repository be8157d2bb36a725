"""The named parts of each network (encoder, decoder, head) as module paths of the built module.

The Optimizer's `freeze` and `param_groups` take a part name for all of its modules, the Trainer's
gradient histograms group by part, and `segflow inspect` shows them. The names and what they mean
are declared on the node configs (`parts` in segflow/nodes/networks.py, shown in the node docs);
the paths are found here from the built module's structure, so that they follow the config
(depth, deep supervision). Every network's parts are disjoint and cover all its parameters (tested).
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from segflow.networks.description import description_of

Parts = dict[str, list[str]]  # part name -> module (or parameter) paths, as named_parameters() names them
PART_FINDERS: dict[str, Callable[[nn.Module], Parts]] = {}


def parts_for(*type_names: str):
    """Decorator: the function finds the parts of a built module of these network node types."""
    def register(finder: Callable[[nn.Module], Parts]) -> Callable[[nn.Module], Parts]:
        for name in type_names:
            PART_FINDERS[name] = finder
        return finder
    return register


def parts_of(model: nn.Module) -> Parts:
    """The named parts of a network segflow built; {} for any other module (an ensemble, a plain torch module)."""
    described = description_of(model)
    finder = PART_FINDERS.get(described.type) if described is not None else None
    return finder(model) if finder is not None else {}


def in_part(name: str, paths: list[str]) -> bool:
    """Whether parameter `name` lies under one of the module paths."""
    return any(name == p or name.startswith(p + ".") for p in paths)


def part_of(name: str, parts: Parts) -> str | None:
    return next((part for part, paths in parts.items() if in_part(name, paths)), None)


def _top(model: nn.Module, encoder: list[str], decoder: list[str], head: list[str]) -> Parts:
    """Parts given by top-level module names; names the model lacks (optional modules) are left out."""
    have = {name.split(".")[0] for name, _ in model.named_parameters()}
    return {part: [m for m in names if m in have] for part, names in
            (("encoder", encoder), ("decoder", decoder), ("head", head))}


@parts_for("UNet2D", "UNet3D")
def _unet(model: nn.Module) -> Parts:
    """MONAI UNet nests Sequential(down, SkipConnection(inner), up) per level; the innermost is the
    bottom layer, and the outermost up layer gives the logits."""
    from monai.networks.layers import SkipConnection

    encoder, decoder, path, level = ["model.0"], [], "model", model.model
    while True:
        inner = level[1].submodule
        path = f"{path}.1.submodule"
        if isinstance(inner, nn.Sequential) and isinstance(inner._modules.get("1"), SkipConnection):
            encoder.append(f"{path}.0")
            decoder.append(f"{path}.2")
            level = inner
            continue
        encoder.append(path)  # the bottom layer
        return {"encoder": encoder, "decoder": decoder, "head": ["model.2"]}


@parts_for("AttentionUNet")
def _attention_unet(model: nn.Module) -> Parts:
    """MONAI AttentionUnet: Sequential(input block, AttentionLayer, 1x1 convolution); each
    AttentionLayer gates and merges the skip around submodule Sequential(down block, next layer),
    the innermost around the bottom block."""
    encoder, decoder, path, layer = ["model.0"], [], "model.1", model.model[1]
    while True:
        decoder += [f"{path}.attention", f"{path}.upconv", f"{path}.merge"]
        inner = layer.submodule
        if not isinstance(inner, nn.Sequential):
            encoder.append(f"{path}.submodule")
            return {"encoder": encoder, "decoder": decoder, "head": ["model.2"]}
        encoder.append(f"{path}.submodule.0")
        path, layer = f"{path}.submodule.1", inner[1]


@parts_for("VNet")
def _vnet(model: nn.Module) -> Parts:
    return _top(model, ["in_tr", "down_tr32", "down_tr64", "down_tr128", "down_tr256"],
                ["up_tr256", "up_tr128", "up_tr64", "up_tr32"], ["out_tr"])


@parts_for("SegResNet")
def _segresnet(model: nn.Module) -> Parts:
    return _top(model, ["convInit", "down_layers"], ["up_samples", "up_layers"], ["conv_final"])


@parts_for("UNETR")
def _unetr(model: nn.Module) -> Parts:
    # the encoder is the transformer; MONAI's encoder1-4 are convolutional blocks on the skips
    return _top(model, ["vit"], ["encoder1", "encoder2", "encoder3", "encoder4", "decoder5", "decoder4", "decoder3",
                                 "decoder2"], ["out"])


@parts_for("SwinUNETR")
def _swin_unetr(model: nn.Module) -> Parts:
    # the encoder is the Swin transformer, which MONAI's pretrained weights cover
    return _top(model, ["swinViT"], ["encoder1", "encoder2", "encoder3", "encoder4", "encoder10", "decoder5",
                                     "decoder4", "decoder3", "decoder2", "decoder1"], ["out"])


@parts_for("TransUNet")
def _transunet(model: nn.Module) -> Parts:
    # the paper's hybrid encoder: the CNN stages and the transformer over their 1/16 features
    return _top(model, ["encoder", "patch_embed", "pos_embed", "blocks", "norm"], ["conv_more", "decoder"], ["head"])


@parts_for("DeepLabV3Plus")
def _deeplab(model: nn.Module) -> Parts:
    # the paper's encoder: the backbone and the atrous spatial pyramid pooling
    return _top(model, ["stem", "layer1", "layer2", "layer3", "layer4", "aspp", "pool", "project"],
                ["low", "fuse"], ["head"])


@parts_for("DynUNet")
def _dynunet(model: nn.Module) -> Parts:
    net = model.net
    head = ["net.output_block"] + (["net.deep_supervision_heads"] if net.deep_supervision else [])
    return {"encoder": ["net.input_block", "net.downsamples", "net.bottleneck"], "decoder": ["net.upsamples"],
            "head": head}
