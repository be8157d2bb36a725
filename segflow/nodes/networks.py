"""Network nodes: one config model and one node type per architecture.

Every network maps (B, in_channels, *spatial) to logits (B, out_channels, *spatial) at the input
resolution. Shape constraints (input divisible by 16/32, a fixed UNETR size, ...) are declared on
the config (`size_divisor`, `fixed_size`) so that `validate` can check them against the loader
wired to `dataset_info`, and `run` can check them against the real data, before any training.
No torch here: the models are built in `segflow.networks.factory`.
"""
from __future__ import annotations

import itertools
import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, WithJsonSchema, field_validator

from segflow.nodes.base import Finding, Node, NodeConfig, Port
from segflow.nodes.bounds import Channels, Classes, Layers, Voxels, Why, Width
from segflow.nodes.datashape import DataShape
from segflow.nodes.registry import register
from segflow.nodes.words import Choice


def _heads_divide_hidden(heads: int, info: ValidationInfo) -> int:
    """Attention splits the embedding evenly across heads."""
    hidden = info.data.get("hidden_size")
    if hidden is not None and hidden % heads:
        raise ValueError(f"hidden_size {hidden} must be divisible by num_heads {heads}")
    return heads


def size_tuple(size: Any, dims: int) -> tuple[int, ...] | None:
    """An int or a list of ints as a tuple of `dims` sizes; None when unknown."""
    if size is None:
        return None
    if isinstance(size, int):
        return (size,) * dims
    try:
        sizes = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        return None
    if len(sizes) == 1:
        return sizes * dims
    return sizes if len(sizes) == dims else None


Heads = Annotated[int, Field(le=256), Why("more attention heads than any transformer has")]
Blocks = Annotated[int, Field(le=64), Why("more blocks per level than any segmentation network has")]
Kernel = Annotated[int, Field(ge=1, le=15), Why("larger kernels than any segmentation network uses")]
Stride = Annotated[int, Field(ge=1, le=8), Why("a larger stride skips voxels it never sees")]


class NetworkConfig(NodeConfig):
    """Fields every network has."""

    aliases: ClassVar[dict[str, str]] = {"num_classes": "out_channels"}
    # named parts -> what each is: names the Optimizer's freeze / param_groups take for all of their modules,
    # mapped to module paths in segflow.networks.parts (disjoint, covering every parameter)
    parts: ClassVar[dict[str, str]] = {}

    in_channels: Channels = Field(1, ge=1, description="Image channels (modalities) the network takes in.")
    out_channels: Classes = Field(
        2, ge=1,
        description="Output channels: the number of classes including background (2 for binary), "
        "or 1 for a single sigmoid channel (binary). Alias num_classes.",
    )

    def dims(self) -> int:
        return int(getattr(self, "spatial_dims", 2))

    def size_divisor(self) -> int:
        """Every spatial size of the input must be a multiple of this (the largest of
        `size_divisors` when the axes differ)."""
        return 1

    def size_divisors(self) -> tuple[int, ...]:
        """Per spatial axis, the multiple its input size must be: networks that pool every axis alike
        repeat `size_divisor`; one with per-axis strides (DynUNet) differs per axis."""
        return (self.size_divisor(),) * self.dims()

    def fixed_size(self) -> tuple[int, ...] | None:
        """The only input size the network accepts, when it has one (UNETR)."""
        return None

    def built_size(self) -> tuple[int, ...] | None:
        """The input size the network is built for (its img_size, one per axis), when it has one."""
        size = getattr(self, "img_size", None)
        return size_tuple(size, self.dims())

    def size_warnings(self, size: tuple[int, ...]) -> list[str]:
        """Doubts about an input size the network takes (for `validate` to warn about)."""
        return []

    def size_problem(self, size: tuple[int, ...]) -> str | None:
        """Why an input of this spatial size cannot go through, or None when it can."""
        fixed = self.fixed_size()
        if fixed is not None and tuple(size) != fixed:
            return f"takes inputs of exactly img_size {list(fixed)}, not {list(size)}"
        divisors = self._divisors_for(size)
        if any(s % d for s, d in zip(size, divisors)):
            return f"needs {_divisible_by(divisors)}{self._divisor_reason()}, not {list(size)}"
        bottleneck = math.prod(s // d for s, d in zip(size, divisors))
        if getattr(self, "norm", None) == "instance" and max(divisors, default=1) > 1 and bottleneck < 2:
            # instance norm cannot normalise a single value: training fails at the bottleneck
            return (f"with norm 'instance' needs an input larger than {_divisor_text(divisors, '')} along some axis (its "
                    f"bottleneck would be a single voxel), not {list(size)}")
        return None

    def _divisors_for(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """`size_divisors` for an input of `size`'s length (the uniform divisor when the lengths differ,
        as a size of the wrong dimensionality is reported elsewhere)."""
        divisors = self.size_divisors()
        return divisors if len(divisors) == len(size) else (self.size_divisor(),) * len(size)

    def _divisor_reason(self) -> str:
        return ""


def _divisor_text(divisors: tuple[int, ...], per_axis: str = " per axis") -> str:
    """One divisor as a number ("16"), per-axis divisors as a list ("[1, 16, 16] per axis")."""
    if len(set(divisors)) <= 1:
        return str(divisors[0] if divisors else 1)
    return f"{list(divisors)}{per_axis}"


def _divisible_by(divisors: tuple[int, ...]) -> str:
    if len(set(divisors)) <= 1:
        return f"every input size divisible by {_divisor_text(divisors)}"
    return f"input sizes divisible by {_divisor_text(divisors)}"


def _spatial_dims_field(default: int) -> Any:
    return Field(default, description="2 for images, 3 for volumes (also \"2d\", \"3d\", as the node editor saves them).")


def _dims_word(value: Any) -> Any:
    """"2d" / "3D" (the node editor's `dimension`) as 2 / 3; anything else as written."""
    if isinstance(value, str) and value.strip().lower() in ("2d", "3d"):
        return int(value.strip()[0])
    return value


SpatialDims = Annotated[int, BeforeValidator(_dims_word), WithJsonSchema({"anyOf": [
    {"type": "integer", "enum": [2, 3]}, {"type": "string", "pattern": "^\\s*[23][dD]\\s*$"}]})]


def _check_dims(v: Any) -> int:
    if v not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, not {v}")
    return v


# --- the node every network shares, and its checks against the data ---------------------------


def data_findings(who: str, config: NetworkConfig, data: DataShape) -> list[Finding]:
    """Why a network cannot take the data a loader declares: one rule for `validate` (what the
    loader's config declares) and `run` (what the loader found). `who` names the node in messages."""
    dims = config.dims()
    has_dims_field = "spatial_dims" in type(config).model_fields
    if data.spatial_dims is not None and data.spatial_dims != dims:
        return [Finding("spatial_dims" if has_dims_field else "", "spatial_dims_mismatch",
                        f"{who} is {dims}-D but {data.where} is {data.spatial_dims}-D",
                        f"set spatial_dims to {data.spatial_dims}" if has_dims_field else
                        f"use {'UNet3D' if data.spatial_dims == 3 else 'UNet2D'} or set the loader's spatial_dims "
                        f"to {dims}")]
    found = []
    if data.in_channels is not None and data.in_channels != config.in_channels:
        found.append(Finding("in_channels", "in_channels_mismatch", f"{who}: in_channels is {config.in_channels} "
                             f"but {data.where} has {data.in_channels} channels",
                             f"set in_channels to {data.in_channels}"))
    classes = data.num_classes
    if data.regions and config.out_channels != len(data.regions):
        found.append(Finding("out_channels", "out_channels_mismatch", f"{who}: out_channels is {config.out_channels} "
                             f"but {data.where} has {len(data.regions)} regions ({', '.join(data.regions)}), one "
                             "sigmoid channel each", f"set out_channels to {len(data.regions)}"))
    elif not data.regions and classes is not None and config.out_channels != classes and \
            not (config.out_channels == 1 and classes == 2):
        found.append(Finding("out_channels", "out_channels_mismatch", f"{who}: out_channels is {config.out_channels} "
                             f"but {data.where} has {classes} classes (background included)",
                             f"set out_channels to {classes}"))
    if data.patch_size is not None:
        found += _size_findings(who, config, data)
    return found


def _size_findings(who: str, config: NetworkConfig, data: DataShape) -> list[Finding]:
    size = list(data.patch_size or ())
    problem = config.size_problem(tuple(size))
    if problem:
        fixed = config.fixed_size() is not None
        return [Finding("img_size" if fixed else "", "img_size_mismatch" if fixed else "input_size",
                        f"{who} {problem}; {data.where} comes in patches of {size}", _size_hint(config, tuple(size)))]
    return [Finding("img_size", "img_size_mismatch", f"{who}: {doubt}", "set img_size to the loader's image_size or "
                    "remove it", severity="warning") for doubt in config.size_warnings(tuple(size))]


def size_findings(key: str, size: int | list[int] | None, network: tuple[str, NodeConfig] | None,
                  fallback: str) -> list[Finding]:
    """A size a setting hands the network wired upstream (a sliding window, an export's sample input)
    that it cannot take: the wrong number of axes, or a size its rule refuses. `fallback` says what is
    used when the setting is removed. One int means every axis; so does a list of one (export)."""
    if size is None or network is None or not isinstance(network[1], NetworkConfig):
        return []
    name, config = network
    dims = config.dims()
    sizes = [size] * dims if isinstance(size, int) else list(size) * (dims if len(size) == 1 else 1)
    if len(sizes) != dims:
        return [Finding(key, "bad_value", f"{key} {size} has {len(size)} sizes; the {name} is {dims}-D",
                        hint=f"give {dims} sizes, or one for every axis")]
    problem = config.size_problem(tuple(sizes))
    if problem:
        return [Finding(key, "bad_value", f"{key} {sizes if isinstance(size, int) else size}: the {name} {problem}",
                        hint=f"set {key} to a size the network takes, or remove it ({fallback})")]
    return []


def _size_hint(config: NetworkConfig, size: tuple[int, ...]) -> str:
    """What to set for an input size `size_problem` refuses, said for the rule it breaks, with the nearest
    size the network takes."""
    divisors = config._divisors_for(size)
    multiple = _divisor_text(divisors)
    fixed = config.fixed_size()
    if fixed is not None:
        fits = not any(s % d for s, d in zip(size, divisors))  # img_size must be a multiple too
        return f"set the loader's image_size to the img_size {list(fixed)}" + (
            f", or img_size to {list(size)}" if fits else f" (img_size takes multiples of {multiple})")
    nearest = _nearest_size(config, size)
    example = f", e.g. {nearest}" if nearest else ""
    if any(s % d for s, d in zip(size, divisors)):
        return f"set the loader's image_size to a multiple of {multiple}{example}"
    smaller = ", a smaller depth" if "depth" in type(config).model_fields else ""
    return f"set the loader's image_size larger than {_divisor_text(divisors, '')} along some axis{example}" \
           f"{smaller} or norm 'batch'"


def _nearest_size(config: NetworkConfig, size: tuple[int, ...]) -> list[int] | None:
    """The size nearest `size` that the network takes (a uniform one kept uniform): each axis rounded
    down or up to its multiple, or one multiple further (for a bottleneck of one voxel)."""
    options = []
    for s, d in zip(size, config._divisors_for(size)):
        up = max(d, -(-s // d) * d)
        options.append(sorted({max(d, s // d * d), up, up + d}))
    fits = [c for c in itertools.product(*options) if config.size_problem(c) is None]
    if not fits:
        return None
    # ties go to the larger size: it keeps all of the image
    return list(min(fits, key=lambda c: (len(set(c)) > len(set(size)), sum(abs(a - b) for a, b in zip(c, size)),
                                         [-a for a in c])))


class NetworkNode(Node):
    """Shared ports, checks and `run` of every network node."""

    family = "networks"
    Config = NetworkConfig
    inputs = (
        Port("dataset_info", "DatasetInfo", required=False,
             doc="When wired, the network is checked against the data (channels, classes, dims, size) before training."),
    )
    outputs = (Port("model", "Model", doc="torch.nn.Module: (B, in_channels, *spatial) -> logits (B, out_channels, *spatial)."),)

    @classmethod
    def check(cls, config: NodeConfig, neighbours: dict[str, tuple[str, NodeConfig]]) -> list[Finding]:
        assert isinstance(config, NetworkConfig)
        if "dataset_info" not in neighbours:
            return []
        return data_findings(cls.type, config, DataShape.of_config(*neighbours["dataset_info"]))

    def run(self, dataset_info: Any = None) -> dict[str, Any]:
        if dataset_info is not None:
            errors = [f for f in data_findings(f"{self.type} '{self.name}'", self.config, DataShape.of_info(dataset_info))
                      if f.severity == "error"]
            if errors:
                raise ValueError("; ".join(f"{f.message}; {f.hint}" for f in errors))
        from segflow.networks.factory import build_network

        return {"model": build_network(self.type, self.config)}


def parts_doc(parts: dict[str, str]) -> str:
    """The node doc's paragraph on its named parts."""
    listed = "; ".join(f"`{name}`: {what}" for name, what in parts.items())
    return (f"Named parts (Optimizer `freeze` and `param_groups` take these names; `segflow inspect` shows their "
            f"modules): {listed}.")


def network(type_name: str, doc: str, aliases: tuple[str, ...] = ()):
    """Class decorator on a network's config class: registers the node type `type_name` (also called
    `aliases`), its doc followed by its named parts. Its builder is registered beside the module code
    (`segflow.networks.factory.builds`), its parts' module paths in `segflow.networks.parts`."""
    def register_node(config: type[NetworkConfig]) -> type[NetworkConfig]:
        full = f"{doc}\n\n{parts_doc(config.parts)}" if config.parts else doc
        register(type(type_name, (NetworkNode,), {"type": type_name, "Config": config, "__doc__": full,
                                                  "type_aliases": aliases, "__module__": __name__}))
        return config
    return register_node


class _UNetBase(NetworkConfig):
    parts: ClassVar[dict[str, str]] = {
        "encoder": "the downsampling blocks of every level and the bottom block",
        "decoder": "the upsampling blocks below the top level",
        "head": "the top level's upsampling block, which outputs the logits (MONAI's UNet has no separate output layer)"}
    base_channels: Width = Field(32, ge=1, description="Channels of the first level; each deeper level doubles them.")
    depth: int = Field(5, ge=2, le=8, description="Levels including the bottleneck (depth-1 downsamplings by 2).")
    num_res_units: Blocks = Field(2, ge=0, description="Residual units per level (0 = plain convolutions).")
    norm: Annotated[Literal["instance", "batch"], Choice()] = Field("instance", description="Normalisation: instance or batch.")
    act: Annotated[Literal["prelu", "relu", "leakyrelu"], Choice()] = Field("prelu", description="Activation function.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability in every block.")
    bilinear: bool = Field(False, description="Decoder upsampling: false = transposed convolutions (learned); true = "
                           "bilinear (trilinear in 3-D) interpolation followed by a convolution, as the node "
                           "editor's bilinear option.")

    def size_divisor(self) -> int:
        return 2 ** (self.depth - 1)

    def _divisor_reason(self) -> str:
        return f" (2**(depth-1) with depth {self.depth})"


@network("UNet2D", "2-D U-Net (MONAI UNet with residual units).")
class UNet2DConfig(_UNetBase):
    def dims(self) -> int:
        return 2


@network("UNet3D", "3-D U-Net (MONAI UNet with residual units).")
class UNet3DConfig(_UNetBase):
    base_channels: Width = Field(16, ge=1, description="Channels of the first level; each deeper level doubles them.")

    def dims(self) -> int:
        return 3


@network("AttentionUNet", "U-Net with attention gates on the skips (MONAI AttentionUnet), 2-D or 3-D.",
         aliases=("AttentionUNet2D",))
class AttentionUNetConfig(NetworkConfig):
    parts: ClassVar[dict[str, str]] = {
        "encoder": "the input block, the downsampling blocks and the bottom block",
        "decoder": "each level's attention gate, upsampling and merge convolution",
        "head": "the final 1x1 convolution to the logits"}
    spatial_dims: SpatialDims = _spatial_dims_field(2)
    base_channels: Width = Field(32, ge=2, description="Channels of the first level; each deeper level doubles them "
                                                        "(at least 2: the first attention gate has half as many).")
    depth: int = Field(5, ge=2, le=8, description="Levels including the bottleneck (depth-1 downsamplings by 2).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability in every block.")

    _dims = field_validator("spatial_dims")(classmethod(lambda cls, v: _check_dims(v)))

    def size_divisor(self) -> int:
        return 2 ** (self.depth - 1)

    def _divisor_reason(self) -> str:
        return f" (2**(depth-1) with depth {self.depth})"


@network("VNet", "V-Net (MONAI VNet), 3-D or 2-D; inputs divisible by 16.")
class VNetConfig(NetworkConfig):
    parts: ClassVar[dict[str, str]] = {"encoder": "in_tr and the down transitions", "decoder": "the up transitions",
                                       "head": "out_tr, the output transition"}
    spatial_dims: SpatialDims = _spatial_dims_field(3)
    dropout_prob: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout in the deeper down and up blocks (MONAI's default 0.5).")
    act: Annotated[Literal["elu", "relu", "prelu"], Choice()] = Field("elu", description="Activation function.")
    base_channels: Width = Field(16, ge=1, description="Channels of the first level (16 in the V-Net paper and MONAI); "
                               "each of the 4 downsamplings doubles them. in_channels must divide it.")

    _dims = field_validator("spatial_dims")(classmethod(lambda cls, v: _check_dims(v)))

    @field_validator("base_channels")
    @classmethod
    def _in_divides_base(cls, v: int, info: ValidationInfo) -> int:
        given = info.data.get("in_channels")
        if given and v % given:
            raise ValueError(f"VNet's first block repeats the input across its base_channels channels, so in_channels "
                             f"({given}) must divide base_channels ({v})")
        return v

    def size_divisor(self) -> int:
        return 16

    def _divisor_reason(self) -> str:
        return " (VNet halves the size 4 times)"


@network("SegResNet", "SegResNet (MONAI), residual encoder-decoder from the BraTS 2018 winner.")
class SegResNetConfig(NetworkConfig):
    aliases: ClassVar[dict[str, str]] = {"num_classes": "out_channels", "init_filters": "base_channels",
                                         "dimension": "spatial_dims"}
    parts: ClassVar[dict[str, str]] = {"encoder": "convInit and the down layers",
                                       "decoder": "the up-sampling and up layers", "head": "conv_final"}

    spatial_dims: SpatialDims = _spatial_dims_field(3)
    norm: Annotated[Literal["group", "instance", "batch"], Choice()] = Field("group", description="Normalisation: group (8 groups), instance or batch.")
    base_channels: Width = Field(16, ge=1, description="Filters of the first level (MONAI's init_filters); doubled per level.")
    blocks_down: list[Annotated[Blocks, Field(ge=1)]] = Field([1, 2, 2, 4], min_length=2, description="Residual blocks per encoder level.")
    blocks_up: list[Annotated[Blocks, Field(ge=1)]] = Field([1, 1, 1], min_length=1, description="Residual blocks per decoder level: one fewer level than blocks_down.")
    dropout_prob: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout after the first convolution.")

    _dims = field_validator("spatial_dims")(classmethod(lambda cls, v: _check_dims(v)))

    @field_validator("blocks_up")
    @classmethod
    def _levels_match(cls, v: list[int], info: ValidationInfo) -> list[int]:
        down = info.data.get("blocks_down")
        if down is not None and len(v) != len(down) - 1:
            raise ValueError(f"blocks_up needs one level fewer than blocks_down ({len(down) - 1}), got {len(v)}")
        return v

    @field_validator("base_channels")
    @classmethod
    def _groups_fit(cls, v: int, info: ValidationInfo) -> int:
        if info.data.get("norm") == "group" and v % 8:
            raise ValueError(f"norm 'group' uses 8 groups, so base_channels must be a multiple of 8, not {v}; change it or set norm to instance")
        return v

    def size_divisor(self) -> int:
        return 2 ** (len(self.blocks_down) - 1)

    def _divisor_reason(self) -> str:
        return f" (2**(levels-1) with {len(self.blocks_down)} levels in blocks_down)"


@network("UNETR", "UNETR (MONAI): ViT encoder, convolutional decoder; fixed input size img_size.")
class UNETRConfig(NetworkConfig):
    aliases: ClassVar[dict[str, str]] = {"num_classes": "out_channels", "embed_dim": "hidden_size"}
    parts: ClassVar[dict[str, str]] = {
        "encoder": "the ViT (vit)",
        "decoder": "the convolutional blocks on the skips and the up path (MONAI's encoder1-4 and decoder2-5)",
        "head": "out, the 1x1 convolution to the logits"}

    spatial_dims: SpatialDims = _spatial_dims_field(3)
    img_size: Voxels | list[Voxels] = Field(
        96, description="Input size the network is built for (an int, or one per axis); UNETR accepts only this "
        "size, so it must equal the loader's image_size and the Predictor's roi_size. A multiple of 16.",
    )
    feature_size: Width = Field(16, ge=1, description="Channels of the convolutional decoder's first level.")
    hidden_size: Width = Field(768, ge=1, description="Transformer embedding size (alias embed_dim); a multiple of num_heads.")
    mlp_dim: Width = Field(3072, ge=1, description="Hidden size of each transformer MLP.")
    num_heads: Heads = Field(12, ge=1, description="Attention heads.")
    num_layers: Layers = Field(12, ge=4, description="Transformer layers. The decoder's skips come from the layers at "
                            "a quarter, half and three quarters of the depth (3, 6 and 9 of UNETR's 12).")
    dropout_rate: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout in the transformer.")
    norm: Annotated[Literal["instance", "batch"], Choice()] = Field("instance", description="Normalisation in the decoder.")

    _dims = field_validator("spatial_dims")(classmethod(lambda cls, v: _check_dims(v)))

    @field_validator("img_size")
    @classmethod
    def _patches_fit(cls, v: Any) -> Any:
        sizes = [v] if isinstance(v, int) else v
        if any(s <= 0 or s % 16 for s in sizes):
            raise ValueError(f"UNETR cuts the input into 16-pixel patches: img_size must be a multiple of 16, not {v}")
        return v

    _heads = field_validator("num_heads")(classmethod(lambda cls, v, info: _heads_divide_hidden(v, info)))

    def size_divisor(self) -> int:
        return 16

    def fixed_size(self) -> tuple[int, ...] | None:
        return self.built_size()


@network("SwinUNETR", "Swin UNETR (MONAI): shifted-window transformer encoder; inputs divisible by 32.")
class SwinUNETRConfig(NetworkConfig):
    aliases: ClassVar[dict[str, str]] = {"num_classes": "out_channels", "embed_dim": "feature_size"}
    parts: ClassVar[dict[str, str]] = {
        "encoder": "the Swin transformer (swinViT, the part MONAI's pretrained weights cover)",
        "decoder": "the convolutional blocks on the skips and the up path (MONAI's encoder1-4, encoder10 and "
                   "decoder1-5)",
        "head": "out, the 1x1 convolution to the logits"}

    spatial_dims: SpatialDims = _spatial_dims_field(3)
    feature_size: Width = Field(24, ge=12, description="Embedding size of the first stage (alias embed_dim); a multiple of 12.")
    depths: list[Annotated[Blocks, Field(ge=1)]] = Field([2, 2, 2, 2], min_length=4, max_length=4, description="Swin blocks in each of the 4 stages.")
    num_heads: list[Annotated[Heads, Field(ge=1)]] = Field([3, 6, 12, 24], min_length=4, max_length=4, description="Attention heads in each of the 4 stages.")
    window_size: Annotated[int, Field(le=64), Why("a window this wide is global attention, which no GPU holds")] = Field(7, ge=1, description="Side of the local attention window (shifted windows).")
    img_size: Voxels | list[Voxels] | None = Field(
        None, description="Kept for files written for older MONAI (which required it); any input divisible by 32 "
        "works. When given it must be a multiple of 32 and is checked against the loader's image_size.",
    )
    use_checkpoint: bool = Field(False, description="Gradient checkpointing: less memory, about 30% slower.")
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout after the patch embedding and in MLPs.")
    attn_drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on attention weights.")
    dropout_path_rate: float = Field(0.0, ge=0.0, lt=1.0, description="Stochastic depth rate.")
    use_v2: bool = Field(False, description="SwinUNETR-v2 (a residual convolution block before each stage).")
    norm: Annotated[Literal["instance", "batch"], Choice()] = Field("instance", description="Normalisation in the convolutional decoder.")

    _dims = field_validator("spatial_dims")(classmethod(lambda cls, v: _check_dims(v)))

    @field_validator("feature_size")
    @classmethod
    def _twelve(cls, v: int) -> int:
        if v % 12:
            raise ValueError(f"SwinUNETR needs feature_size (embed_dim) divisible by 12, not {v}; try {max(12, v - v % 12)} or {v - v % 12 + 12}")
        return v

    @field_validator("img_size")
    @classmethod
    def _thirty_two(cls, v: Any) -> Any:
        sizes = [] if v is None else [v] if isinstance(v, int) else v
        if any(s <= 0 or s % 32 for s in sizes):
            raise ValueError(f"SwinUNETR downsamples by 32: img_size must be a multiple of 32, not {v}")
        return v

    def size_divisor(self) -> int:
        return 32

    def _divisor_reason(self) -> str:
        return " (SwinUNETR downsamples by 32)"

    def size_warnings(self, size: tuple[int, ...]) -> list[str]:
        built = self.built_size()
        if built is None or built == tuple(size):
            return []
        return [f"img_size {list(built)} differs from the input size {list(size)}; SwinUNETR does not use img_size "
                "(any size divisible by 32 works), so it only documents the intended size"]


@network("TransUNet", "TransUNet (2-D): CNN encoder, transformer bottleneck, cascaded upsampling decoder.")
class TransUNetConfig(NetworkConfig):
    aliases: ClassVar[dict[str, str]] = {"num_classes": "out_channels", "embed_dim": "hidden_size", "num_layers": "depth"}
    parts: ClassVar[dict[str, str]] = {
        "encoder": "the CNN stages (module encoder), patch_embed, pos_embed, the transformer blocks and their norm "
                   "(the paper's hybrid encoder)",
        "decoder": "conv_more and the cascaded upsampler (module decoder)", "head": "the 1x1 convolution to the logits"}

    img_size: Voxels | list[Voxels] = Field(
        256, description="Input size the positional embedding is made for; other sizes divisible by 16 work "
        "(the embedding is interpolated).",
    )
    base_channels: Width = Field(32, ge=1, description="Channels of the CNN encoder's first stage; doubled per stage (4 stages).")
    hidden_size: Width = Field(384, ge=1, description="Transformer embedding size (alias embed_dim); a multiple of num_heads. "
                             "Smaller than the paper's 768 because no pretrained weights are loaded.")
    depth: Layers = Field(8, ge=1, description="Transformer layers (alias num_layers).")
    num_heads: Heads = Field(6, ge=1, description="Attention heads.")
    mlp_dim: Width = Field(1536, ge=1, description="Hidden size of each transformer MLP.")
    dropout_rate: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout in the transformer.")
    norm: Annotated[Literal["batch", "instance"], Choice()] = Field("batch", description="Normalisation in the CNN encoder and decoder.")


    @field_validator("img_size")
    @classmethod
    def _sixteen(cls, v: Any) -> Any:
        sizes = [v] if isinstance(v, int) else v
        if len(sizes) not in (1, 2) or any(s <= 0 or s % 16 for s in sizes):
            raise ValueError(f"TransUNet downsamples by 16: img_size must be one or two multiples of 16, not {v}")
        return v

    _heads = field_validator("num_heads")(classmethod(lambda cls, v, info: _heads_divide_hidden(v, info)))

    def size_divisor(self) -> int:
        return 16

    def _divisor_reason(self) -> str:
        return " (TransUNet's CNN encoder downsamples by 16)"


@network("DeepLabV3Plus", "DeepLabV3+ (2-D): residual encoder, atrous spatial pyramid pooling, decoder; trained from scratch.")
class DeepLabV3PlusConfig(NetworkConfig):
    parts: ClassVar[dict[str, str]] = {
        "encoder": "the residual backbone (stem, layer1-4) and the ASPP (aspp, pool, project), as in the paper",
        "decoder": "the low-level projection and the fusing convolutions (low, fuse)",
        "head": "the 1x1 convolution to the logits"}
    norm: Annotated[Literal["batch", "instance", "group"], Choice()] = Field("batch", description="Normalisation: batch, instance, or group (8 groups).")
    base_channels: Width = Field(32, ge=8, description="Channels of the encoder stem; stages have 1x, 2x, 4x, 8x this.")
    output_stride: Annotated[int, WithJsonSchema({"type": "integer", "enum": [8, 16]})] = Field(16, description="Encoder output stride: 16 (faster) or 8 (finer; more memory).")
    aspp_channels: Width = Field(128, ge=8, description="Channels of each ASPP branch and of the decoder.")
    atrous_rates: list[Annotated[int, Field(ge=1, le=256), Why("dilations wider than any image")]] = Field([6, 12, 18], min_length=1, description="Dilation rates of the ASPP's 3x3 branches.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout after ASPP projection.")


    @field_validator("output_stride")
    @classmethod
    def _stride(cls, v: int) -> int:
        if v not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, not {v}")
        return v

    @field_validator("base_channels")
    @classmethod
    def _groups_fit(cls, v: int, info: ValidationInfo) -> int:
        if info.data.get("norm") == "group" and v % 8:
            raise ValueError(f"norm 'group' uses 8 groups, so base_channels must be a multiple of 8, not {v}")
        return v

    def size_divisor(self) -> int:
        return 1  # the decoder resizes to the input, so any size of at least 32 goes through




def _per_axis(entries: list[int | list[int]], dims: int) -> list[tuple[int, ...]]:
    """Per-stage sizes, one int for every axis or one per axis, as tuples of `dims` sizes."""
    return [(e,) * dims if isinstance(e, int) else tuple(e) for e in entries]


def _strides_fit_kernels(strides: list[int | list[int]], kernels: list[int | list[int]] | None, dims: int) -> None:
    if kernels is None:
        return
    if len(strides) != len(kernels):
        raise ValueError(f"strides has {len(strides)} stages but kernel_size has {len(kernels)}: give one stride per "
                         "stage")
    for i, (stride, kernel) in enumerate(zip(_per_axis(strides, dims), _per_axis(kernels, dims))):
        if any(s > k + 1 for s, k in zip(stride, kernel)):
            # MONAI pads by (kernel - stride + 1) / 2, which would be negative
            raise ValueError(f"strides[{i}] is {strides[i]}: a stride may be at most its kernel size + 1 "
                             f"(kernel_size[{i}] is {kernels[i]})")


@network("DynUNet", "nnU-Net's U-Net (MONAI DynUNet), 2-D or 3-D: a kernel size and a stride per stage (anisotropic "
         "where the data is), instance norm, leaky ReLU, optional residual blocks and deep supervision.")
class DynUNetConfig(NetworkConfig):
    parts: ClassVar[dict[str, str]] = {
        "encoder": "the input block, the downsampling stages and the bottleneck",
        "decoder": "the upsampling stages", "head": "the output block and the deep supervision heads"}
    spatial_dims: SpatialDims = _spatial_dims_field(3)
    kernel_size: list[Kernel | list[Kernel]] = Field(
        [3, 3, 3, 3, 3], min_length=2,
        description="Convolution kernel of each stage, from full resolution down to the bottleneck: one odd size per "
        "axis ([1, 3, 3]) or one int for every axis. Its length is the number of stages.")
    strides: list[Stride | list[Stride]] = Field(
        [1, 2, 2, 2, 2], min_length=2,
        description="Stride of each stage's first convolution (its downsampling), one per stage like kernel_size: "
        "one per axis ([1, 2, 2]) or one int for every axis; the first stage is usually 1. Each input size must be a "
        "multiple of the product of its axis's strides. The decoder upsamples with the same strides.")
    filters: list[Annotated[Width, Field(ge=1)]] | None = Field(
        None, description="Channels of each stage (one per stage); null: 32 doubling per stage, capped at 320 in 3-D "
        "and 512 in 2-D, as nnU-Net.")
    norm: Annotated[Literal["instance", "batch"], Choice()] = Field(
        "instance", description="Normalisation: instance (with affine parameters, as nnU-Net) or batch.")
    act: Annotated[Literal["leakyrelu", "relu", "prelu"], Choice()] = Field(
        "leakyrelu", description="Activation: leakyrelu (negative slope 0.01, as nnU-Net), relu or prelu.")
    res_block: bool = Field(False, description="Residual blocks (two convolutions around a skip) in every stage "
                            "instead of two plain convolutions.")
    deep_supervision: bool = Field(
        False, description="Extra output heads on decoder levels below full resolution, trained with the loss "
        "(weights halving per level, the lowest-resolution head weighted 0 as nnU-Net); validation, prediction and "
        "export use the full-resolution output only.")
    deep_supr_num: Layers = Field(
        2, ge=1, description="Deep supervision heads below full resolution (at most stages - 2; "
        "stages - 2 gives nnU-Net's heads, one on every decoder level). Used only with deep_supervision.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability in every block.")

    _dims = field_validator("spatial_dims")(classmethod(lambda cls, v: _check_dims(v)))

    @field_validator("kernel_size", "strides")
    @classmethod
    def _stage_sizes(cls, v: list[int | list[int]], info: ValidationInfo) -> list[int | list[int]]:
        name, dims = info.field_name, info.data.get("spatial_dims")
        for i, entry in enumerate(v):
            sizes = [entry] if isinstance(entry, int) else entry
            if dims is not None and not isinstance(entry, int) and len(entry) != dims:
                raise ValueError(f"{name}[{i}] is {entry}: give {dims} sizes (one per axis, spatial_dims {dims}) "
                                 "or one int for every axis")
            if any(s < 1 for s in sizes):
                raise ValueError(f"{name}[{i}] is {entry}: sizes must be positive")
            if name == "kernel_size" and any(s % 2 == 0 for s in sizes):
                raise ValueError(f"kernel_size[{i}] is {entry}: kernel sizes must be odd (1, 3, 5, ...) so that "
                                 "the convolutions keep the size")
        if name == "strides" and dims is not None:
            _strides_fit_kernels(v, info.data.get("kernel_size"), dims)
        return v

    @field_validator("filters")
    @classmethod
    def _one_per_stage(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        stages = len(info.data.get("kernel_size") or [])
        if v is not None and stages and len(v) != stages:
            raise ValueError(f"filters has {len(v)} values but there are {stages} stages (kernel_size): give one per "
                             "stage, or null for 32 doubling per stage")
        if v is not None and any(f < 1 for f in v):
            raise ValueError(f"filters {v}: channels must be positive")
        return v

    @field_validator("deep_supr_num")
    @classmethod
    def _heads_fit(cls, v: int, info: ValidationInfo) -> int:
        stages = len(info.data.get("kernel_size") or [])
        if info.data.get("deep_supervision") and stages == 2:
            raise ValueError("deep supervision needs at least 3 stages (kernel_size has 2): its heads sit on decoder "
                             "levels below full resolution")
        if info.data.get("deep_supervision") and stages and v >= stages - 1:
            raise ValueError(f"deep_supr_num {v} is too many for {stages} stages: the heads sit on decoder levels "
                             f"below full resolution, at most stages - 2 = {stages - 2}")
        return v

    def stage_kernels(self) -> list[tuple[int, ...]]:
        return _per_axis(self.kernel_size, self.spatial_dims)

    def stage_strides(self) -> list[tuple[int, ...]]:
        return _per_axis(self.strides, self.spatial_dims)

    def stage_filters(self) -> list[int]:
        """`filters`, or nnU-Net's rule: 32 doubling per stage, capped at 320 (3-D) / 512 (2-D)."""
        cap = 320 if self.spatial_dims == 3 else 512
        return list(self.filters) if self.filters else [min(32 * 2**i, cap) for i in range(len(self.kernel_size))]

    def size_divisors(self) -> tuple[int, ...]:
        strides = self.stage_strides()
        return tuple(math.prod(s[axis] for s in strides) for axis in range(self.spatial_dims))

    def size_divisor(self) -> int:
        return max(self.size_divisors())

    def _divisor_reason(self) -> str:
        return " (the product of each axis's strides)"
