"""Every registered network: builds, maps (B, C_in, *S) to (B, C_out, *S), trains a step; shape
constraints are reported at validation time and against the data at run time."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

from segflow.data.info import DatasetInfo
from segflow.networks.description import description_of
from segflow.nodes import networks as nets
from segflow.nodes import registry
from segflow.nodes.base import RunContext
from segflow.nodes.data import MedicalSegmentationLoaderConfig

NETWORKS = [t for t, cls in registry.all_types().items() if cls.family == "networks"]

# Small settings per type: (config, input shape), a 2-D and/or 3-D case. Optional: a network without
# them is tested at its default settings on the smallest input it takes (CASES).
SMALL = {
    "UNet2D": [({}, (2, 1, 32, 32)), ({"in_channels": 3, "out_channels": 4, "depth": 3, "norm": "batch"}, (2, 3, 24, 40))],
    "UNet3D": [({}, (1, 1, 32, 32, 32)), ({"base_channels": 4, "depth": 3, "out_channels": 3}, (1, 1, 8, 12, 16))],
    "AttentionUNet": [({}, (2, 1, 32, 32)), ({"spatial_dims": 3, "base_channels": 4, "depth": 3}, (1, 2, 8, 8, 16))],
    "VNet": [({"spatial_dims": 2}, (2, 1, 16, 32)), ({"in_channels": 2, "out_channels": 3}, (2, 2, 16, 16, 16))],
    "SegResNet": [({"spatial_dims": 2}, (2, 1, 16, 16)), ({"base_channels": 8}, (1, 1, 16, 16, 16))],
    "UNETR": [({"spatial_dims": 2, "img_size": 32, "hidden_size": 64, "mlp_dim": 128, "num_heads": 4, "feature_size": 8}, (2, 1, 32, 32)),
              ({"img_size": [32, 32, 16], "hidden_size": 48, "mlp_dim": 96, "num_heads": 4, "feature_size": 4}, (1, 1, 32, 32, 16))],
    "SwinUNETR": [({"spatial_dims": 2}, (2, 1, 64, 64)),
                  ({"feature_size": 12, "depths": [1, 1, 1, 1], "use_checkpoint": True}, (1, 1, 64, 32, 32))],
    "TransUNet": [({"img_size": 32, "base_channels": 8, "hidden_size": 64, "depth": 2, "num_heads": 4, "mlp_dim": 128}, (2, 1, 32, 32)),
                  ({"img_size": 32, "base_channels": 8, "hidden_size": 64, "depth": 2, "num_heads": 4, "mlp_dim": 128, "out_channels": 3}, (2, 2, 48, 32))],
    "DeepLabV3Plus": [({}, (2, 1, 32, 32)), ({"output_stride": 8, "norm": "group", "in_channels": 3, "out_channels": 5}, (2, 3, 40, 56))],
    "DynUNet": [({"spatial_dims": 2, "kernel_size": [3, 3, 3], "strides": [1, 2, 2], "filters": [4, 8, 16], "act": "relu"}, (2, 1, 16, 24)),
                ({"kernel_size": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                  "filters": [4, 8, 16], "res_block": True, "out_channels": 3}, (1, 1, 6, 16, 20))],
}

# DynUNet with pooling only in-plane at first (nnU-Net's plan for thick slices): per-axis size rules
ANISOTROPIC = {"kernel_size": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]]}

# The networks of workflows/seed_*.json, as a GUI saves them (strings, aliases).
SEED = [
    ("UNet2D", {"in_channels": "1", "out_channels": "2", "base_channels": "64"}, (2, 1, 32, 32)),
    ("UNet2D", {"in_channels": "1", "out_channels": "2", "base_channels": "32"}, (2, 1, 32, 32)),
    ("SwinUNETR", {"img_size": "96", "in_channels": "1", "out_channels": "2", "embed_dim": "48"}, (1, 1, 64, 64, 64)),
]


def make(type_name: str, raw: dict) -> nets.NetworkConfig:
    """Config as the spec layer would build it: aliases renamed, strings left to the config."""
    cls = registry.get(type_name).Config
    return cls(**{cls.aliases.get(k, k): v for k, v in raw.items()})


def run_node(type_name: str, config: nets.NetworkConfig, tmp_path, info=None) -> torch.nn.Module:
    node = registry.get(type_name)("model", config, RunContext(run_dir=tmp_path, workflow_name="t"))
    return node.run(dataset_info=info)["model"]


def train_step(model: torch.nn.Module, shape: tuple[int, ...], out_channels: int) -> None:
    x = torch.randn(*shape)
    y = model(x)
    assert y.shape == (shape[0], out_channels, *shape[2:])
    y.float().pow(2).mean().backward()
    # MONAI's ViT blocks (UNETR) create a cross-attention norm they never use
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "norm_cross_attn" not in n]
    assert grads and all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)


def test_every_network_has_a_builder():
    from segflow.networks.factory import BUILDERS

    assert sorted(NETWORKS) == sorted(BUILDERS)
    assert set(SMALL) <= set(NETWORKS)


@pytest.mark.parametrize("type_name", sorted(NETWORKS))
def test_default_config_builds(type_name, tmp_path):
    config = registry.get(type_name).Config()
    model = run_node(type_name, config, tmp_path)
    assert sum(p.numel() for p in model.parameters()) > 10_000
    assert (description_of(model).out_channels, description_of(model).in_channels) == (2, 1)


def _smallest_input(config: nets.NetworkConfig) -> tuple[int, ...]:
    """(1, C, *S): the network's fixed size, else the smallest multiple of its divisor (at least 16) it takes."""
    if config.fixed_size():
        return (1, config.in_channels, *config.fixed_size())
    size = max(16, config.size_divisor())
    while config.size_problem((size,) * config.dims()):
        size += config.size_divisor()
    return (1, config.in_channels, *(size,) * config.dims())


CASES = [(t, c, s) for t in NETWORKS for c, s in SMALL.get(t) or [({}, _smallest_input(registry.get(t).Config()))]]


def test_a_network_without_small_settings_is_tested_at_its_smallest_input():
    assert _smallest_input(make("SwinUNETR", {})) == (1, 1, 64, 64, 64)  # 32 would leave instance norm one voxel
    assert _smallest_input(make("UNETR", {"img_size": 32})) == (1, 1, 32, 32, 32)


@pytest.mark.parametrize("type_name,raw,shape", CASES,
                         ids=lambda v: v if isinstance(v, str) else None)
def test_output_shape_and_backward(type_name, raw, shape, tmp_path):
    torch.manual_seed(0)
    config = make(type_name, {"in_channels": shape[1], **raw})
    assert config.size_problem(shape[2:]) is None
    model = run_node(type_name, config, tmp_path)
    assert description_of(model).spatial_dims == len(shape) - 2
    train_step(model, shape, config.out_channels)


def test_seed_configs_validate_and_build(tmp_path):
    for type_name, raw, shape in SEED:
        config = make(type_name, raw)
        assert config.in_channels == 1 and config.out_channels == 2
        assert config.size_problem(shape[2:]) is None
        run_node(type_name, config, tmp_path)
    assert make("SwinUNETR", SEED[2][1]).feature_size == 48


@pytest.mark.parametrize("type_name,raw,shape", SEED[:2])
def test_seed_unet_trains(type_name, raw, shape, tmp_path):
    config = make(type_name, raw)
    train_step(run_node(type_name, config, tmp_path), shape, 2)


@pytest.mark.slow
@pytest.mark.parametrize("type_name,raw,shape", SEED[2:] + [
    ("SwinUNETR", {}, (1, 1, 64, 64, 64)), ("UNETR", {"img_size": 32}, (1, 1, 32, 32, 32)),
    ("TransUNet", {}, (2, 1, 64, 64)), ("VNet", {}, (1, 1, 32, 32, 32)), ("SegResNet", {}, (1, 1, 32, 32, 32)),
    ("AttentionUNet", {"spatial_dims": 3}, (1, 1, 32, 32, 32)),
])
def test_heavy_defaults_train(type_name, raw, shape, tmp_path):
    config = make(type_name, raw)
    train_step(run_node(type_name, config, tmp_path), shape, config.out_channels)


def test_transunet_takes_other_sizes_than_img_size(tmp_path):
    config = make("TransUNet", SMALL["TransUNet"][0][0])
    model = run_node("TransUNet", config, tmp_path).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 48)).shape == (1, 2, 64, 48)


# --- constraints at validation time --------------------------------------------------------


@pytest.mark.parametrize("type_name,raw,field,words", [
    ("SwinUNETR", {"embed_dim": "50"}, "feature_size", "divisible by 12"),
    ("SwinUNETR", {"img_size": "100"}, "img_size", "multiple of 32"),
    ("VNet", {"in_channels": 3}, "base_channels", "in_channels (3) must divide base_channels (16)"),
    ("UNETR", {"img_size": 100}, "img_size", "multiple of 16"),
    ("UNETR", {"hidden_size": 100, "num_heads": 12}, "num_heads", "divisible by num_heads"),
    ("TransUNet", {"img_size": 250}, "img_size", "multiple"),
    ("SegResNet", {"base_channels": 12}, "base_channels", "multiple of 8"),
    ("SegResNet", {"blocks_down": [1, 2, 2], "blocks_up": [1, 1, 1]}, "blocks_up", "one level fewer"),
    ("AttentionUNet", {"spatial_dims": "4"}, "spatial_dims", "2 or 3"),
    ("UNet2D", {"norm": "layer"}, "norm", "instance"),
    ("DeepLabV3Plus", {"output_stride": 32}, "output_stride", "8 or 16"),
    ("DynUNet", {"kernel_size": [3, 3, 3], "strides": [1, 2]}, "strides", "strides has 2 stages but kernel_size has 3"),
    ("DynUNet", {"kernel_size": [[3, 3], 3], "strides": [1, 2]}, "kernel_size", "kernel_size[0] is [3, 3]: give 3 sizes"),
    ("DynUNet", {"spatial_dims": 2, "kernel_size": [3, 3], "strides": [1, [2, 2, 2]]}, "strides",
     "strides[1] is [2, 2, 2]: give 2 sizes"),
    ("DynUNet", {"kernel_size": [3, [1, 2, 3], 3, 3, 3]}, "kernel_size", "kernel_size[1] is [1, 2, 3]: kernel sizes must be odd"),
    ("DynUNet", {"kernel_size": [3, 1], "strides": [1, 3]}, "strides", "at most its kernel size + 1"),
    ("DynUNet", {"kernel_size": [3], "strides": [1]}, "kernel_size", "at least 2"),
    ("DynUNet", {"filters": [8, 16]}, "filters", "filters has 2 values but there are 5 stages"),
    ("DynUNet", {"deep_supervision": True, "deep_supr_num": 4}, "deep_supr_num", "at most stages - 2 = 3"),
    ("DynUNet", {"kernel_size": [3, 3], "strides": [1, 2], "deep_supervision": True, "deep_supr_num": 1},
     "deep_supr_num", "at least 3 stages"),
    ("DynUNet", {"act": "elu"}, "act", "leakyrelu"),
])
def test_config_errors_name_field(type_name, raw, field, words):
    with pytest.raises(ValidationError) as e:
        make(type_name, raw)
    err = e.value.errors()[0]
    assert err["loc"] == (field,)
    assert words in err["msg"]


def test_strings_and_aliases_coerce():
    c = make("UNet2D", {"in_channels": "3", "num_classes": "4", "depth": "4", "dropout": "0.1", "norm": "Batch"})
    assert (c.in_channels, c.out_channels, c.depth, c.dropout, c.norm) == (3, 4, 4, 0.1, "batch")
    s = make("SwinUNETR", {"use_checkpoint": "true", "window_size": "7", "spatial_dims": "2", "depths": "[2, 2, 2, 2]"})
    assert s.use_checkpoint is True and s.spatial_dims == 2
    assert make("UNETR", {"img_size": "[64, 64, 32]", "embed_dim": "96", "num_heads": "8"}).fixed_size() == (64, 64, 32)
    assert make("SegResNet", {"init_filters": "32"}).base_channels == 32


def check(type_name: str, raw: dict, loader: dict):
    cls = registry.get(type_name)
    return cls.check(make(type_name, raw), {"dataset_info": ("MedicalSegmentationLoader", MedicalSegmentationLoaderConfig(**loader))})


def test_check_against_loader():
    assert check("UNet2D", {}, {"image_size": "256", "spatial_dims": 2}) == []
    assert check("SwinUNETR", SEED[2][1], {"image_size": "96", "spatial_dims": 3}) == []
    [f] = check("UNet2D", {"depth": 5}, {"image_size": 100, "spatial_dims": 2})
    assert (f.code, f.severity) == ("input_size", "error") and "divisible by 16" in f.message and "100" in f.message
    [f] = check("SwinUNETR", {}, {"image_size": [96, 96, 80], "synthetic": "phantom3d"})
    assert f.code == "input_size" and "32" in f.message
    [f] = check("VNet", {}, {"image_size": 40, "synthetic": "phantom3d"})
    assert f.code == "input_size" and "16" in f.message
    [f] = check("UNETR", {"img_size": 96}, {"image_size": 64, "spatial_dims": 3})
    assert (f.field, f.code) == ("img_size", "img_size_mismatch")
    [f] = check("VNet", {}, {"spatial_dims": 2})
    assert (f.field, f.code) == ("spatial_dims", "spatial_dims_mismatch")
    [f] = check("UNet3D", {}, {"synthetic": "phantom2d"})
    assert f.code == "spatial_dims_mismatch" and "UNet2D" in f.hint
    [f] = check("SwinUNETR", {"img_size": 64}, {"image_size": 96, "spatial_dims": 3})
    assert (f.field, f.severity) == ("img_size", "warning")
    # unknown dims and size: nothing to say
    assert check("UNETR", {}, {}) == []


def test_check_against_what_a_phantom_declares():
    """A phantom's channels and classes are known before any file exists, so validate reports them."""
    [f] = check("UNet2D", {"in_channels": 3}, {"synthetic": "phantom2d"})
    assert (f.field, f.code) == ("in_channels", "in_channels_mismatch") and "has 1 channels" in f.message
    [f] = check("UNet2D", {}, {"synthetic": "phantom2d", "synthetic_classes": 3})
    assert (f.field, f.code) == ("out_channels", "out_channels_mismatch") and f.hint == "set out_channels to 3"
    assert check("UNet2D", {"out_channels": 1}, {"synthetic": "phantom2d"}) == []  # one sigmoid channel, 2 classes
    [f] = check("UNet2D", {"out_channels": 3}, {"num_classes": 4, "spatial_dims": 2})
    assert f.code == "out_channels_mismatch"
    assert check("UNet2D", {"in_channels": 3}, {"spatial_dims": 2}) == []  # a dataset's channels: known at run time


def test_validate_and_run_apply_one_rule(tmp_path):
    """The finding validate gives from the loader's config is the error run gives from the data."""
    [static] = check("UNet2D", {"in_channels": 3}, {"synthetic": "phantom2d"})
    with pytest.raises(ValueError) as e:
        run_node("UNet2D", make("UNet2D", {"in_channels": 3}), tmp_path, info(in_channels=1))
    assert static.message.split(" but ")[0].removeprefix("UNet2D") in str(e.value)
    assert f"; {static.hint}" in str(e.value)


def test_check_passes_default_loader_sizes():
    # UNETR's default img_size is the 3-D loader's default patch size
    assert check("UNETR", {}, {"synthetic": "phantom3d"}) == []
    [f] = check("UNETR", {"spatial_dims": 2}, {"synthetic": "phantom2d"})
    assert "256" in f.message


def info(**kw) -> DatasetInfo:
    base = dict(in_channels=1, num_classes=2, spatial_dims=2, spacing=None, patch_size=(64, 64), data_dir="data/x")
    return DatasetInfo(**{**base, **kw})


@pytest.mark.parametrize("type_name,raw,data,words", [
    ("UNet2D", {}, {"in_channels": 3}, "UNet2D 'model': in_channels is 1 but the data in data/x has 3 channels"),
    ("UNet2D", {}, {"num_classes": 4}, "out_channels is 2 but the data in data/x has 4 classes"),
    ("UNet2D", {}, {"spatial_dims": 3, "patch_size": (32, 32, 32)}, "use UNet3D"),
    ("AttentionUNet", {}, {"spatial_dims": 3, "patch_size": (32, 32, 32)}, "set spatial_dims to 3"),
    ("UNet2D", {}, {"patch_size": (100, 100)}, "divisible by 16"),
    ("UNETR", {"spatial_dims": 2, "img_size": 32}, {"patch_size": (64, 64)}, "exactly img_size [32, 32]"),
])
def test_run_checks_data(type_name, raw, data, words, tmp_path):
    with pytest.raises(ValueError) as e:
        run_node(type_name, make(type_name, raw), tmp_path, info(**data))
    assert words in str(e.value)


def test_run_accepts_matching_data(tmp_path):
    model = run_node("UNet2D", make("UNet2D", {"out_channels": 1, "depth": 3}), tmp_path, info())  # 1 sigmoid channel, 2 classes
    assert description_of(model).size_divisor == 4


def test_instance_norm_bottleneck_is_reported():
    assert "single voxel" in make("SwinUNETR", {}).size_problem((32, 32, 32))
    assert make("SwinUNETR", {}).size_problem((64, 32, 32)) is None


def test_size_hints_say_what_is_wrong_and_the_nearest_size_that_fits():
    # a multiple of 32 already: the bottleneck of one voxel is what is wrong, not the multiple
    [f] = check("UNet2D", {"depth": 6, "norm": "instance"}, {"image_size": 32, "spatial_dims": 2})
    assert "bottleneck would be a single voxel" in f.message and "multiple of" not in f.hint
    assert f.hint == "set the loader's image_size larger than 32 along some axis, e.g. [64, 64], a smaller depth or " \
                     "norm 'batch'"
    assert check("UNet2D", {"depth": 6, "norm": "instance"}, {"image_size": 64, "spatial_dims": 2}) == []
    # not a multiple: the nearest one the network takes (40 rounds down to 32, whose bottleneck is one voxel)
    [f] = check("UNet2D", {"depth": 6, "norm": "instance"}, {"image_size": 40, "spatial_dims": 2})
    assert f.hint == "set the loader's image_size to a multiple of 32, e.g. [64, 64]"
    [f] = check("UNet2D", {"depth": 5}, {"image_size": [100, 36], "spatial_dims": 2})
    assert f.hint == "set the loader's image_size to a multiple of 16, e.g. [96, 32]"
    [f] = check("UNETR", {"img_size": 96}, {"image_size": 64, "spatial_dims": 3})
    assert f.hint == "set the loader's image_size to the img_size [96, 96, 96], or img_size to [64, 64, 64]"
    [f] = check("UNETR", {"img_size": 96}, {"image_size": 40, "spatial_dims": 3})
    assert f.hint == "set the loader's image_size to the img_size [96, 96, 96] (img_size takes multiples of 16)"


def test_dynunet_defaults_follow_nnunet():
    config = make("DynUNet", {})
    assert (config.spatial_dims, len(config.kernel_size), config.size_divisors()) == (3, 5, (16, 16, 16))
    assert config.stage_filters() == [32, 64, 128, 256, 320]
    assert make("DynUNet", {"spatial_dims": 2, "kernel_size": [3] * 7, "strides": [1] + [2] * 6}).stage_filters() == \
        [32, 64, 128, 256, 512, 512, 512]
    assert (config.norm, config.act, config.deep_supervision, config.deep_supr_num) == ("instance", "leakyrelu", False, 2)
    assert make("DynUNet", {"deep_supr_num": 9}).deep_supr_num == 9  # only checked with deep_supervision on
    strings = make("DynUNet", {"kernel_size": "[[1, 3, 3], 3, 3]", "strides": "[[1, 1, 1], [1, 2, 2], 2]",
                               "filters": "null", "deep_supervision": "true", "deep_supr_num": "1"})
    assert strings.stage_strides() == [(1, 1, 1), (1, 2, 2), (2, 2, 2)] and strings.filters is None


def test_dynunet_size_rule_is_per_axis():
    config = make("DynUNet", ANISOTROPIC)
    assert (config.size_divisors(), config.size_divisor()) == ((2, 4, 4), 4)
    assert config.size_problem((6, 16, 20)) is None  # 6 is not a multiple of the largest divisor, 4: fine on z
    assert config.size_problem((6, 16, 18)) == ("needs input sizes divisible by [2, 4, 4] per axis (the product "
                                                "of each axis's strides), not [6, 16, 18]")
    assert "larger than [2, 4, 4] along some axis" in config.size_problem((2, 4, 4))
    [f] = check("DynUNet", ANISOTROPIC, {"image_size": [10, 16, 18], "spatial_dims": 3})
    assert f.code == "input_size" and f.hint == ("set the loader's image_size to a multiple of [2, 4, 4] per axis, "
                                                 "e.g. [10, 16, 20]")
    assert check("DynUNet", ANISOTROPIC, {"image_size": [10, 16, 20], "spatial_dims": 3}) == []
    # every other network keeps one divisor for every axis, and its messages
    assert make("UNet2D", {}).size_divisors() == (16, 16)


def test_dynunet_description_carries_per_axis_divisors(tmp_path):
    from segflow.nodes.export import ModelExportConfig, sample_shape

    model = run_node("DynUNet", make("DynUNet", {**ANISOTROPIC, "filters": [4, 8, 16]}), tmp_path)
    described = description_of(model)
    assert (described.size_divisors, described.size_divisor) == ((2, 4, 4), 4)
    assert sample_shape(ModelExportConfig(input_size=[6, 16, 20]), described) == (1, 6, 16, 20)
    with pytest.raises(ValueError, match=r"divisible by \[2, 4, 4\] per axis; e.g. \[6, 16, 20\]"):
        sample_shape(ModelExportConfig(input_size=[6, 16, 19]), described)


def test_fields_documented_and_no_torch_at_import():
    for type_name in NETWORKS + ["LossFunction", "Optimizer"]:
        for name, field in registry.get(type_name).Config.model_fields.items():
            assert field.description, f"{type_name}.{name} has no description"
    code = ("import sys, segflow.nodes.networks, segflow.nodes.losses, segflow.nodes.optim; "
            "bad = [m for m in ('torch', 'monai', 'numpy') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
