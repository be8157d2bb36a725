"""Every network's named parts (encoder, decoder, head): declared on its node, found in the built module,
each a real set of parameters, disjoint and together the whole network; the head is what gives the
logits; freezing a part through the Optimizer really stops it from training."""
from __future__ import annotations

import pytest
import torch
from test_networks import NETWORKS, SMALL, make

from segflow.networks.factory import build_network
from segflow.networks.parts import PART_FINDERS, part_of, parts_of
from segflow.nodes import registry
from segflow.nodes.optim import OptimizerConfig
from segflow.optim.optimizer import build_optimizer

# every network, tiny, with its input size; then settings that change a network's structure
TINY = {
    "UNet2D": ({"base_channels": 4, "depth": 3}, (16, 16)),
    "UNet3D": ({"base_channels": 4, "depth": 3}, (8, 8, 8)),
    "AttentionUNet": ({"base_channels": 4, "depth": 3}, (16, 16)),
    "VNet": ({"spatial_dims": 2}, (16, 16)),
    "SegResNet": ({"spatial_dims": 2, "base_channels": 8}, (16, 16)),
    "UNETR": (SMALL["UNETR"][0][0], (32, 32)),
    "SwinUNETR": ({"spatial_dims": 2, "feature_size": 12, "depths": [1, 1, 1, 1]}, (64, 64)),
    "TransUNet": (SMALL["TransUNet"][0][0], (32, 32)),
    "DeepLabV3Plus": ({"base_channels": 8, "aspp_channels": 16}, (32, 32)),
    "DynUNet": (SMALL["DynUNet"][0][0], (16, 24)),
}
CASES = [(t, TINY[t][0], TINY[t][1]) for t in sorted(NETWORKS)] + [
    ("UNet2D", {"num_res_units": 0, "depth": 3, "base_channels": 4}, (16, 16)),
    ("UNet2D", {"depth": 2, "base_channels": 4}, (16, 16)),
    ("AttentionUNet", {"depth": 2, "base_channels": 4}, (16, 16)),
    ("DynUNet", {**SMALL["DynUNet"][0][0], "kernel_size": [3, 3, 3, 3], "strides": [1, 2, 2, 2], "filters": [4, 8, 8, 8],
                 "deep_supervision": True, "deep_supr_num": 2}, (16, 16)),
]
IDS = [f"{t}-{i}" for i, (t, _, _) in enumerate(CASES)]


def built(type_name: str, raw: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(type_name, make(type_name, raw))


def test_every_network_has_parts_declared_and_found():
    assert sorted(PART_FINDERS) == sorted(NETWORKS) == sorted(TINY)
    for type_name in NETWORKS:
        cls = registry.get(type_name)
        assert list(cls.Config.parts) == ["encoder", "decoder", "head"], type_name
        assert "Named parts" in cls.__doc__ and all(f"`{p}`" in cls.__doc__ for p in cls.Config.parts)


@pytest.mark.parametrize("type_name,raw,size", CASES, ids=IDS)
def test_parts_are_disjoint_nonempty_and_cover_every_parameter(type_name, raw, size):
    model = built(type_name, raw)
    parts = parts_of(model)
    assert list(parts) == list(registry.get(type_name).Config.parts)
    names = [n for n, _ in model.named_parameters()]
    holders = {n: [part for part, paths in parts.items() if any(n == p or n.startswith(p + ".") for p in paths)]
               for n in names}
    assert all(len(h) == 1 for h in holders.values()), {n: h for n, h in holders.items() if len(h) != 1}
    empty = {"decoder"} if type_name.startswith("UNet") and raw.get("depth") == 2 else set()  # no level below the top
    for part in parts:
        assert any(h == [part] for h in holders.values()) != (part in empty), part


@pytest.mark.parametrize("type_name,raw,size", CASES, ids=IDS)
def test_the_head_is_what_gives_the_logits(type_name, raw, size):
    """Changing out_channels changes the shapes of head parameters only, and of at least one."""
    a = dict(built(type_name, {**raw, "out_channels": 2}).named_parameters())
    b = built(type_name, {**raw, "out_channels": 5})
    parts = parts_of(b)
    changed = {part_of(n, parts) for n, p in b.named_parameters() if p.shape != a[n].shape}
    assert changed == {"head"}


def test_a_part_without_parameters_says_so():
    model = built("UNet2D", {"depth": 2, "base_channels": 4})
    with pytest.raises(ValueError, match=r"optimizer.freeze\[0\]: the named part 'decoder' of UNet2D holds no "
                                         r"parameter in this configuration; named parts: encoder, decoder, head"):
        build_optimizer(model, OptimizerConfig(freeze=["decoder"]), node_name="optimizer")


@pytest.mark.parametrize("type_name,raw,size", CASES, ids=IDS)
def test_freezing_the_encoder_keeps_it_through_a_training_step(type_name, raw, size):
    model = built(type_name, raw)
    config = make(type_name, raw)
    parts = parts_of(model)
    # weight decay moves every trainable weight even where its gradient is zero
    opt = build_optimizer(model, OptimizerConfig(optimizer_type="AdamW", learning_rate=1e-2, weight_decay=0.1,
                                                 freeze=["encoder"]), node_name="optimizer")
    named = dict(model.named_parameters())
    encoder = {n for n in named if part_of(n, parts) == "encoder"}
    assert {n for n, p in named.items() if not p.requires_grad} == encoder
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for n, p in named.items() if n not in encoder}
    before = {n: p.detach().clone() for n, p in named.items()}
    shape = (2, config.in_channels, *size)
    out = model.train()(torch.randn(shape))
    out = out[0] if isinstance(out, list) else out
    out.float().pow(2).mean().backward()
    opt.step()
    assert all(torch.equal(before[n], named[n]) for n in encoder)
    assert not all(torch.equal(before[n], named[n]) for n in named if part_of(n, parts) == "head")
