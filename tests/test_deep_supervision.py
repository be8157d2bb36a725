"""Deep supervision: DynUNet's outputs per mode, nnU-Net's loss weights, training, export, validate."""
from __future__ import annotations

import json
import math

import pytest
import torch
import toy

from segflow.cli import main
from segflow.export.formats import export_model
from segflow.losses.segmentation import SegmentationLoss, deep_supervision_weights
from segflow.networks.factory import build_network
from segflow.nodes import registry
from segflow.nodes.base import RunContext
from segflow.nodes.training import Trainer


def dynunet(**raw) -> torch.nn.Module:
    torch.manual_seed(0)
    base = {"spatial_dims": 2, "kernel_size": [3, 3, 3, 3], "strides": [1, 2, 2, 2], "filters": [4, 8, 16, 32],
            "deep_supervision": True, "deep_supr_num": 2}
    return build_network("DynUNet", registry.get("DynUNet").Config(**{**base, **raw}))


@pytest.mark.parametrize("raw,shape", [
    ({}, (2, 1, 16, 24)),
    ({"spatial_dims": 3, "kernel_size": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
      "filters": [4, 8, 16], "deep_supr_num": 1, "res_block": True}, (1, 1, 4, 8, 8)),
])
def test_list_in_training_full_resolution_tensor_in_eval(raw, shape):
    model = dynunet(**raw)
    x = torch.randn(*shape)
    heads = model.train()(x)
    assert isinstance(heads, list) and len(heads) == 1 + model.net.deep_supr_num
    assert all(h.shape == (shape[0], 2, *shape[2:]) for h in heads)
    sum(h.sum() for h in heads).backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        full = model.eval()(x)
    assert isinstance(full, torch.Tensor)
    torch.testing.assert_close(full, heads[0].detach())  # instance norm, no dropout: the same in both modes


def test_without_deep_supervision_training_gives_one_tensor():
    assert isinstance(dynunet(deep_supervision=False).train()(torch.randn(1, 1, 16, 16)), torch.Tensor)


def test_weights_halve_per_level_lowest_zero_and_sum_to_one():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(2) == [1.0, 0.0]
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])


def test_loss_over_heads_is_the_weighted_sum_against_the_full_label():
    label = torch.tensor([[[[0, 1], [1, 0]]]])  # (1, 1, 2, 2)
    margin = 2.0
    sure = torch.stack([1 - label[:, 0], label[:, 0]], 1).float() * margin  # the right class ahead by `margin`
    heads = [torch.zeros(1, 2, 2, 2, requires_grad=True), sure.requires_grad_(),
             torch.randn(1, 2, 2, 2, requires_grad=True)]
    loss_fn = SegmentationLoss({"ce": 1.0})
    loss = loss_fn(heads, label)
    # cross-entropy of even logits is ln 2, of logits `margin` apart log(1 + e^-margin); weights 2/3, 1/3, 0
    assert float(loss.detach()) == pytest.approx(2 / 3 * math.log(2) + 1 / 3 * math.log1p(math.exp(-margin)), rel=1e-6)
    assert float(loss_fn.last_terms["ce"]) == pytest.approx(float(loss.detach()))
    loss.backward()
    assert torch.equal(heads[2].grad, torch.zeros_like(heads[2]))  # in the graph, weighted 0
    assert heads[0].grad.abs().sum() > 0


def test_every_term_is_weighted_alike_and_the_boundary_maps_are_made_once(monkeypatch):
    torch.manual_seed(0)
    label = (torch.rand(2, 1, 8, 8) > 0.6).long()
    heads = [torch.randn(2, 2, 8, 8) for _ in range(4)]
    weights = {"dice": 1.0, "ce": 0.5, "boundary": 0.3}
    single = SegmentationLoss(weights)
    expected = sum(w * float(single(h, label)) for w, h in zip(deep_supervision_weights(4), heads))
    both = SegmentationLoss(weights)
    calls = []
    maps = both.boundary.distance_maps
    monkeypatch.setattr(both.boundary, "distance_maps", lambda *a: calls.append(1) or maps(*a))
    assert float(both(heads, label)) == pytest.approx(expected, rel=1e-5)
    assert calls == [1]
    assert float(both(tuple(heads[:1]), label)) == pytest.approx(float(single(heads[0], label)))


def _train(tmp_path, model, epochs, **cfg):
    train, val = toy.loaders(n_train=16, n_val=4, size=16)
    ctx = RunContext(run_dir=tmp_path, workflow_name="t", device="cpu", progress=False, log=lambda m: None)
    out = Trainer("trainer", Trainer.Config(epochs=epochs, save_frequency=0, seed=0, compile=False, **cfg), ctx).run(
        model=model, train_loader=train, val_loader=val, loss_fn=SegmentationLoss({"dice": 1.0, "ce": 1.0}),
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2))
    return out["history"]


def test_a_tiny_dynunet_with_deep_supervision_learns_the_squares(tmp_path):
    history = _train(tmp_path, dynunet(), epochs=4)
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["val_dice"] > 0.75  # validated on the full-resolution output (eval mode)


def test_deep_supervision_trains_in_channels_last(tmp_path):
    history = _train(tmp_path, dynunet(), epochs=2, channels_last=True)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.parametrize("fmt,suffix", [("torch_export", "pt2"), ("onnx", "onnx")])
def test_export_writes_the_full_resolution_output_only(fmt, suffix, tmp_path):
    model = dynunet().train()
    report = export_model(model, fmt, tmp_path / f"m.{suffix}", (1, 16, 16), log=lambda s: None)
    assert report["max_abs_diff"] <= 1e-4
    assert model.training  # exported from a copy in eval mode
    x = torch.randn(1, 1, 16, 16)
    if fmt == "torch_export":
        out = torch.export.load(str(tmp_path / "m.pt2")).module()(x)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
        [out] = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        out = torch.from_numpy(out)
    assert out.shape == (1, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(out, model.eval()(x), atol=1e-4, rtol=1e-4)


WORKFLOW = {
    "workflow": "phantom3d_dynunet",
    "nodes": [
        {"type": "MedicalSegmentationLoader", "name": "data_loader",
         "config": {"data_dir": "data/phantom3d", "synthetic": "phantom3d", "spatial_dims": 3,
                    "image_size": [16, 32, 32], "batch_size": 2}},
        {"type": "DynUNet", "name": "model",
         "config": {"kernel_size": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                    "filters": [8, 16, 32], "deep_supervision": True, "deep_supr_num": 1}},
        {"type": "LossFunction", "name": "loss", "config": {"loss_type": "combined"}},
        {"type": "Optimizer", "name": "optimizer", "config": {"optimizer_type": "SGD", "learning_rate": 0.01}},
        {"type": "Trainer", "name": "trainer", "config": {"epochs": 1, "device": "cpu"}},
    ],
}


@pytest.mark.parametrize("change,words", [
    ({}, ": valid"),
    ({"strides": [[1, 1, 1], [1, 2, 2], [2, 2]]},
     "at nodes[1].config.strides: strides[2] is [2, 2]: give 3 sizes"),
    ({"filters": [8, 16]}, "at nodes[1].config.filters: filters has 2 values but there are 3 stages"),
    ({"deep_supr_num": 2}, "at nodes[1].config.deep_supr_num: deep_supr_num 2 is too many for 3 stages"),
    ({"strides": [[1, 1, 1], [1, 2, 2], [3, 2, 2]]},
     "DynUNet needs input sizes divisible by [3, 4, 4] per axis (the product of each axis's strides), not [16, 32, 32]"),
])
def test_validate_a_workflow_with_a_dynunet(change, words, tmp_path, capsys):
    wf = json.loads(json.dumps(WORKFLOW))
    wf["nodes"][1]["config"].update(change)
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(wf, indent=1))
    assert main(["validate", str(path)]) == (0 if words == ": valid" else 1)
    assert words in capsys.readouterr().out
