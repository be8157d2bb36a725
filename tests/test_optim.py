"""Optimizer node: each type, any-case names, GUI strings, per-layer learning rates, freezing."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from segflow.nodes.base import RunContext
from segflow.nodes.optim import Optimizer, OptimizerConfig
from segflow.optim.optimizer import build_optimizer


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict({"encoder": nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8)), "head": nn.Linear(8, 2)})


def step(net: nn.Module, opt: torch.optim.Optimizer) -> None:
    x = torch.randn(16, 4)
    out = net["head"](net["encoder"](x))
    opt.zero_grad()
    out.pow(2).mean().backward()
    opt.step()


def run(config: OptimizerConfig, net: nn.Module, tmp_path) -> torch.optim.Optimizer:
    node = Optimizer("optimizer", config, RunContext(run_dir=tmp_path, workflow_name="t"))
    return node.run(model=net)["optimizer"]


@pytest.mark.parametrize("name,cls", [("Adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("SGD", torch.optim.SGD), ("sgd", torch.optim.SGD),
                                      ("RMSPROP", torch.optim.RMSprop), ("RMSprop", torch.optim.RMSprop)])
def test_each_type_any_case_updates(name, cls, tmp_path):
    net = model()
    before = [p.detach().clone() for p in net.parameters()]
    opt = run(OptimizerConfig(optimizer_type=name, learning_rate="0.01"), net, tmp_path)
    assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.01
    step(net, opt)
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_seed_strings():
    adamw = OptimizerConfig(optimizer_type="AdamW", learning_rate="0.0001", betas="[0.9, 0.999]", weight_decay="0.0001")
    opt = build_optimizer(model(), adamw)
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"], g["weight_decay"]) == (1e-4, (0.9, 0.999), 1e-4)
    sgd = OptimizerConfig(optimizer_type="SGD", learning_rate="0.01", momentum="0.9", weight_decay="0.0001", nesterov="true")
    g = build_optimizer(model(), sgd).param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.01, 0.9, True, 1e-4)


def test_momentum_defaults_per_type():
    assert build_optimizer(model(), OptimizerConfig(optimizer_type="sgd")).param_groups[0]["momentum"] == 0.9
    assert build_optimizer(model(), OptimizerConfig(optimizer_type="rmsprop")).param_groups[0]["momentum"] == 0.0


def test_adam_first_step_equals_lr_times_sign():
    # Adam's first update is lr * g / (|g| + eps) = lr * sign(g): a closed form to check lr and groups against
    net = model()
    cfg = OptimizerConfig(learning_rate=1e-2, param_groups=[{"pattern": "encoder.*", "lr": "1e-3"}])
    opt = build_optimizer(net, cfg)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    step(net, opt)
    for n, p in net.named_parameters():
        lr = 1e-3 if n.startswith("encoder.") else 1e-2
        delta = (before[n] - p.detach()).abs()
        assert torch.allclose(delta[delta > 0], torch.full_like(delta[delta > 0], lr), rtol=1e-3), n
    assert [g["pattern"] for g in opt.param_groups] == ["encoder.*", "*"]


def test_param_groups_first_match_wins_and_weight_decay():
    net = model()
    cfg = OptimizerConfig(param_groups='[{"pattern": "encoder.0", "learning_rate": 1e-5, "weight_decay": 0.1}, '
                          '{"pattern": "encoder.*", "lr": 1e-4}]', learning_rate=1e-3)
    opt = build_optimizer(net, cfg)
    sizes = [len(g["params"]) for g in opt.param_groups]
    assert sizes == [2, 2, 2]
    assert [g["lr"] for g in opt.param_groups] == [1e-5, 1e-4, 1e-3]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0, 0.0]


def test_frozen_parameters_do_not_change(tmp_path):
    net = model()
    opt = run(OptimizerConfig(optimizer_type="SGD", learning_rate=0.1, weight_decay=0.1, freeze=["encoder"]), net, tmp_path)
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if n.startswith("encoder")}
    head = net["head"].weight.detach().clone()
    step(net, opt)
    assert all(not p.requires_grad for n, p in net.named_parameters() if n.startswith("encoder"))
    assert all(torch.equal(frozen[n], p) for n, p in net.named_parameters() if n in frozen)
    assert not torch.equal(head, net["head"].weight)
    assert sum(len(g["params"]) for g in opt.param_groups) == 2


def test_unknown_patterns_and_all_frozen_are_explained():
    with pytest.raises(ValueError, match=r"optimizer.freeze\[0\]: pattern 'decoder.\*' matches no parameter.*\['encoder', 'head'\]"):
        build_optimizer(model(), OptimizerConfig(freeze=["decoder.*"]), node_name="optimizer")
    with pytest.raises(ValueError, match=r"param_groups\[0\].pattern: pattern 'backbone'"):
        build_optimizer(model(), OptimizerConfig(param_groups=[{"pattern": "backbone", "lr": 1e-5}]))
    with pytest.raises(ValueError, match="every parameter of the model is frozen"):
        build_optimizer(model(), OptimizerConfig(freeze=["*"]))


def test_config_errors():
    for bad, field in [({"optimizer_type": "adagrad"}, "optimizer_type"), ({"learning_rate": "-1"}, "learning_rate"),
                       ({"betas": "[0.9, 1.5]"}, "betas"), ({"weight_decay": "-0.1"}, "weight_decay"),
                       ({"param_groups": [{"pattern": "x", "rate": 1}]}, "param_groups")]:
        with pytest.raises(ValidationError) as e:
            OptimizerConfig(**bad)
        assert e.value.errors()[0]["loc"][0] == field
    with pytest.raises(ValidationError, match="nesterov needs momentum"):
        OptimizerConfig(optimizer_type="SGD", nesterov=True, momentum=0)
    with pytest.raises(ValidationError, match="fused is not available for RMSprop"):
        OptimizerConfig(optimizer_type="RMSprop", fused=True)
    assert OptimizerConfig.aliases["lr"] == "learning_rate"


def test_check_warns_about_unused_settings():
    found = Optimizer.check(OptimizerConfig(optimizer_type="Adam", momentum=0.9, nesterov=False), {})
    assert {(f.field, f.code, f.severity) for f in found} == {("momentum", "unused_value", "warning"),
                                                              ("nesterov", "unused_value", "warning")}
    assert Optimizer.check(OptimizerConfig(optimizer_type="AdamW", betas=[0.9, 0.99]), {}) == []


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
def test_fused_builds_and_steps(name):
    net = model()
    opt = build_optimizer(net, OptimizerConfig(optimizer_type=name, fused="true", learning_rate=0.01))
    assert opt.param_groups[0]["fused"] is True
    step(net, opt)


@pytest.mark.parametrize("name, fused, expected", [
    ("Adam", "auto", True), ("AdamW", None, True), ("SGD", "auto", True),  # the default is auto
    ("AdamW", False, False), ("AdamW", "null", False),  # null: torch's own kernels, as before auto existed
    ("RMSprop", "auto", None),  # no fused RMSprop in torch: its own choice
])
def test_fused_auto_is_on_where_torch_has_fused_kernels(name, fused, expected):
    kw = {} if fused is None else {"fused": fused}
    cfg = OptimizerConfig(optimizer_type=name, learning_rate=0.01, **kw)
    opt = build_optimizer(model(), cfg)
    assert opt.param_groups[0].get("fused") is expected or (expected is None and not opt.param_groups[0].get("fused"))


def test_model_moved_after_building_keeps_optimizer_valid():
    # the Trainer calls model.to(device) after the Optimizer node ran: parameters keep their identity
    net = model()
    opt = build_optimizer(net, OptimizerConfig())
    ids = [id(p) for p in net.parameters()]
    net.to(torch.float64)
    assert [id(p) for p in net.parameters()] == ids
    assert all(p.dtype == torch.float64 for g in opt.param_groups for p in g["params"])
    x = torch.randn(2, 4, dtype=torch.float64)
    before = net["head"].weight.detach().clone()
    net["head"](net["encoder"](x)).sum().backward()
    opt.step()
    assert not torch.equal(before, net["head"].weight)


def test_groups_are_named_for_the_logs_and_keep_their_names_through_a_checkpoint(tmp_path):
    cfg = OptimizerConfig(param_groups=[{"pattern": "encoder.0", "name": "first"}, {"pattern": "encoder.*"},
                                        {"pattern": "head", "name": "first"}])
    opt = build_optimizer(model(), cfg)
    assert [g["name"] for g in opt.param_groups] == ["first", "encoder.*", "first_2"]
    assert [g["name"] for g in build_optimizer(model(), OptimizerConfig()).param_groups] == ["all"]
    two = build_optimizer(model(), OptimizerConfig(param_groups=[{"pattern": "head", "lr": 1e-3}]))
    assert [g["name"] for g in two.param_groups] == ["head", "rest"]
    torch.save(two.state_dict(), tmp_path / "opt.pt")
    again = build_optimizer(model(), OptimizerConfig(param_groups=[{"pattern": "head", "lr": 1e-3}]))
    again.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    assert [(g["name"], g["lr"]) for g in again.param_groups] == [("head", 1e-3), ("rest", 1e-4)]
