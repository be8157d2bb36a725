"""CheckpointLoader: Trainer checkpoints, bare and wrapped state_dicts, prefixes, mismatch reports, preflight."""
import json

import pytest
import torch
import toy
from pydantic import ValidationError

from segflow.networks.description import NetworkDescription, describe
from segflow.nodes.base import RunContext
from segflow.nodes.inference import CheckpointLoader, CheckpointLoaderConfig
from segflow.nodes.training import Trainer
from segflow.workflow import executor
from segflow.workflow.errors import WorkflowError


def tiny_description(out_channels: int) -> NetworkDescription:
    """What a network node would attach to the toy network: resume compares its config."""
    return NetworkDescription("Tiny", spatial_dims=2, in_channels=1, out_channels=out_channels,
                              config={"out_channels": out_channels})


def ctx(tmp_path, messages=None):
    return RunContext(run_dir=tmp_path, workflow_name="t", device="cpu", progress=False,
                      log=(messages.append if messages is not None else (lambda m: None)))


def load(tmp_path, model, path, messages=None, **cfg):
    path = [str(p) for p in path] if isinstance(path, list) else str(path)
    node = CheckpointLoader("weights", CheckpointLoaderConfig(checkpoint_path=path, **cfg), ctx(tmp_path, messages))
    return node.run(model=model)["model"]


def fresh(seed=1, **kw):
    torch.manual_seed(seed)
    return toy.tiny_net(**kw)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained for two epochs by the real Trainer, and its run folder."""
    run = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    model = toy.tiny_net()
    describe(model, tiny_description(out_channels=2))
    train, val = toy.loaders(n_train=8, n_val=4)
    out = Trainer("trainer", Trainer.Config(epochs=2, save_frequency=0), ctx(run)).run(
        model=model, train_loader=train, val_loader=val, loss_fn=toy.CrossEntropy(),
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2))
    return out["model"], run / "checkpoints"


def test_loads_a_trainer_checkpoint(tmp_path, trained):
    model, ckdir = trained
    target = fresh()
    assert not same_weights(target, model)
    out = load(tmp_path, target, ckdir / "last.pt")
    assert out is target and same_weights(target, model)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"module." + k: v for k, v in sd.items()},  # saved from DistributedDataParallel
    lambda sd: {"_orig_mod." + k: v for k, v in sd.items()},  # saved from torch.compile
    lambda sd: {"module._orig_mod." + k: v for k, v in sd.items()},
    lambda sd: {"state_dict": sd, "epoch": 3},  # Lightning-style wrapper
], ids=["bare", "ddp", "compile", "ddp+compile", "wrapped"])
def test_loads_bare_and_wrapped_state_dicts(tmp_path, wrap):
    source = fresh(seed=5)
    path = tmp_path / "weights.pt"
    torch.save(wrap(source.state_dict()), path)
    target = load(tmp_path, fresh(seed=6), path)
    assert same_weights(target, source)


def test_loads_into_a_ddp_or_compiled_wrapper(tmp_path):
    source = fresh(seed=5)
    torch.save(source.state_dict(), tmp_path / "w.pt")

    class Wrapper(torch.nn.Module):  # DDP's shape: the real network under .module
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    wrapped = Wrapper(fresh(seed=6))
    load(tmp_path, wrapped, tmp_path / "w.pt")
    assert same_weights(wrapped.module, source)


def test_shape_mismatch_lists_keys_and_both_shapes(tmp_path, trained):
    _, ckdir = trained
    other = fresh(out_channels=3)
    describe(other, tiny_description(out_channels=3))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError) as e:
        load(tmp_path, other, ckdir / "best.pt")
    msg = str(e.value)
    assert "CheckpointLoader 'weights'" in msg and str(ckdir / "best.pt") in msg
    assert "2 have other shapes" in msg
    assert "2.weight [2, 8, 1, 1] in the file vs [3, 8, 1, 1] in the model" in msg
    assert "out_channels: 2 in the checkpoint, 3 now" in msg  # the signature names the config change
    assert "strict: false" in msg
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # nothing half-loaded


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    torch.save(fresh(seed=2).state_dict(), tmp_path / "w.pt")
    deeper = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                                 torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
    with pytest.raises(ValueError) as e:
        load(tmp_path, deeper, tmp_path / "w.pt")
    msg = str(e.value)
    assert "2 of the model's 6 entries are not in the file: 4.weight, 4.bias" in msg
    assert "2 have other shapes: 2.weight [2, 8, 1, 1] in the file vs [8, 8, 3, 3] in the model" in msg


def test_strict_false_loads_what_fits_and_says_what_it_skipped(tmp_path):
    source = fresh(seed=2)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target, messages = fresh(seed=3, out_channels=3), []
    head = target[2].weight.clone()
    load(tmp_path, target, tmp_path / "w.pt", messages, strict="false")
    assert torch.equal(target[0].weight, source[0].weight)
    assert torch.equal(target[2].weight, head)  # the new head keeps its own initialisation
    assert any("loaded 2 entries" in m and "2.weight" in m for m in messages)


def test_unreadable_and_weightless_files_are_named(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint .*garbage.pt"):
        load(tmp_path, fresh(), garbage)
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="empty.pt holds no model weights"):
        load(tmp_path, fresh(), tmp_path / "empty.pt")


def test_config_strings_and_required_path():
    cfg = CheckpointLoaderConfig(checkpoint_path="runs/x/best.pt", strict="False", map_location="CPU")
    assert cfg.strict is False and cfg.map_location == "cpu"
    with pytest.raises(ValidationError):
        CheckpointLoaderConfig()
    with pytest.raises(ValidationError):
        CheckpointLoaderConfig(checkpoint_path="a.pt", map_location="gpu7")


def test_preflight_reports_a_missing_path(tmp_path):
    missing = CheckpointLoaderConfig(checkpoint_path=str(tmp_path / "nope.pt"))
    [finding] = CheckpointLoader.preflight(missing, None)
    assert finding.code == "path_not_found" and finding.field == "checkpoint_path" and "nope.pt" in finding.message
    (tmp_path / "there.pt").write_bytes(b"x")
    assert CheckpointLoader.preflight(CheckpointLoaderConfig(checkpoint_path=str(tmp_path / "there.pt")), None) == []


def test_run_stops_before_any_node_on_a_missing_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"workflow": "wf", "nodes": [
        {"type": "UNet2D", "name": "model", "config": {"base_channels": 4, "depth": 2}},
        {"type": "CheckpointLoader", "name": "weights", "config": {"checkpoint_path": "runs/old/best.pt"}},
    ]}))
    with pytest.raises(WorkflowError) as e:
        executor.run_workflow(wf, log=lambda m: None)
    [issue] = e.value.issues
    assert issue.code == "path_not_found" and "runs/old/best.pt" in issue.message
    assert not (tmp_path / "runs").exists()  # nothing started, no run folder made


@pytest.mark.parametrize("out_channels", [3, 1])
def test_a_list_of_checkpoints_is_an_ensemble_averaging_probabilities(tmp_path, out_channels):
    from segflow.inference.ensemble import Ensemble
    from segflow.inference.tta import to_probabilities

    files, nets = [], []
    for seed in (1, 2, 3):
        net = fresh(seed, out_channels=out_channels)
        files.append(tmp_path / f"fold{seed}.pt")
        torch.save(net.state_dict(), files[-1])
        nets.append(net.eval())
    messages = []
    model = fresh(9, out_channels=out_channels)
    ens = load(tmp_path, model, [str(f) for f in files], messages)
    assert isinstance(ens, Ensemble) and len(ens.members) == 3 and "an ensemble of 3 models" in messages[-1]
    assert all(same_weights(m, n) for m, n in zip(ens.members, nets))  # each file in its own copy
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        expected = torch.stack([to_probabilities(n(x)) for n in nets]).mean(0)
        got = to_probabilities(ens.eval()(x))  # what the Predictor does with any model's output
    assert torch.allclose(got, expected, atol=1e-6)


def test_ensemble_members_are_checked_one_by_one(tmp_path):
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save(fresh(1).state_dict(), good)
    torch.save(fresh(1, channels=4).state_dict(), bad)  # another width: does not fit
    with pytest.raises(ValueError, match=r"'weights' \(checkpoint_path\[1\]\): the weights in .*bad.pt do not fit"):
        load(tmp_path, fresh(9), [str(good), str(bad)])
    config = CheckpointLoaderConfig(checkpoint_path=[str(good), str(tmp_path / "fold3.pt")])
    [finding] = CheckpointLoader.preflight(config, None)
    assert finding.field == "checkpoint_path[1]" and "fold3.pt" in finding.message
    assert CheckpointLoaderConfig(checkpoint_path=f'["{good}", "{bad}"]').paths() == [str(good), str(bad)]  # GUI
    with pytest.raises(ValidationError, match="non-empty list"):
        CheckpointLoaderConfig(checkpoint_path=[])


def test_an_ensemble_exports_with_parity(tmp_path):
    from segflow.export.formats import export_model
    from segflow.inference.ensemble import Ensemble
    from segflow.networks.factory import build_network
    from segflow.nodes.networks import UNet2DConfig

    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(build_network("UNet2D", UNet2DConfig(in_channels=1, out_channels=2, base_channels=4, depth=3)))
    report = export_model(Ensemble(members), "onnx", tmp_path / "ens.onnx", (1, 32, 32), log=lambda m: None)
    assert report["network"] == "ensemble of 2 UNet2D" and report["max_abs_diff"] <= 1e-4
