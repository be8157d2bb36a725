"""What the Trainer settles before DistributedDataParallel, tested in one process: the probe for
parameters without a gradient (and that it leaves the run as it was), the SyncBatchNorm decision,
the swap to SyncBatchNorm and back (checkpoints from a swapped model load into plain ones), and
the error that names the Trainer field. tests/test_distributed.py runs the real 2-process jobs."""
import pytest
import torch
from torch import nn

from segflow.networks.factory import build_network
from segflow.nodes.base import RunContext
from segflow.nodes.inference import CheckpointLoader, CheckpointLoaderConfig
from segflow.nodes.networks import UNet2DConfig, UNETRConfig
from segflow.training import checkpoint, ddp

CPU = torch.device("cpu")


def tiny_unetr():
    return build_network("UNETR", UNETRConfig(in_channels=1, out_channels=2, spatial_dims=2, img_size=32,
                                              feature_size=4, hidden_size=32, mlp_dim=32, num_heads=2))


def batchnorm_unet():
    return build_network("UNet2D", UNet2DConfig(in_channels=1, out_channels=2, base_channels=4, depth=3,
                                                norm="batch", dropout=0.2))


def loss_of(model, x):
    return lambda: model(x).float().square().mean()


def test_probe_names_unetrs_unused_parameters_and_their_uncalled_modules():
    model = tiny_unetr().train()
    probe = ddp.probe_gradients(model, loss_of(model, torch.randn(2, 1, 32, 32)), CPU)
    assert len(probe.unused) == 24  # a LayerNorm for cross-attention in each of 12 blocks, never called
    assert all(".norm_cross_attn." in n for n in probe.unused)
    assert len(probe.not_called) == 12
    assert ddp.freeze_patterns(probe.not_called) == ["vit.blocks.*.norm_cross_attn"]


def test_probe_finds_nothing_when_every_parameter_is_used():
    model = batchnorm_unet().train()
    assert ddp.probe_gradients(model, loss_of(model, torch.randn(2, 1, 32, 32)), CPU).unused == []


def test_probe_leaves_the_run_as_it_was():
    """Same RNG streams, BatchNorm statistics, gradients and mode afterwards, so a training step
    after the probe gives the weights it gives without one."""
    x = torch.randn(4, 1, 32, 32)

    def one_step(probe: bool):
        torch.manual_seed(0)
        model = batchnorm_unet().train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model.model[0].conv.unit0.conv.weight.grad = torch.ones_like(model.model[0].conv.unit0.conv.weight)
        if probe:
            before = {k: v.clone() for k, v in model.state_dict().items()}
            rng = torch.get_rng_state()
            grad = model.model[0].conv.unit0.conv.weight.grad
            assert ddp.probe_gradients(model, loss_of(model, x), CPU).unused == []
            assert torch.equal(torch.get_rng_state(), rng)
            assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
            assert model.model[0].conv.unit0.conv.weight.grad is grad
            assert sum(p.grad is not None for p in model.parameters()) == 1
            assert model.training and all(m.training for m in model.modules())
        loss_of(model, x)().backward()  # dropout draws from the RNG the probe must not have moved
        opt.step()
        return model.state_dict()

    plain, probed = one_step(False), one_step(True)
    assert all(torch.equal(plain[k], probed[k]) for k in plain)


def test_explicit_settings_skip_the_probe():
    def never():
        raise AssertionError("probed")

    assert ddp.find_unused_parameters(False, nn.Linear(2, 2), never, CPU, print, "T") == (False, "set in the workflow")
    assert ddp.find_unused_parameters(True, nn.Linear(2, 2), never, CPU, print, "T") == (True, "set in the workflow")


def test_auto_turns_the_search_on_and_says_what_to_freeze():
    model = tiny_unetr().train()
    lines = []
    flag, why = ddp.find_unused_parameters("auto", model, loss_of(model, torch.randn(2, 1, 32, 32)), CPU,
                                           lines.append, "Trainer 't'")
    assert flag is True and why == "auto: 24 parameters get no gradient"
    (line,) = lines
    assert line.startswith("Trainer 't': 24 of 194 trainable parameters get no gradient "
                           "(vit.blocks.0.norm_cross_attn.weight, ")
    assert '"freeze": ["vit.blocks.*.norm_cross_attn"]' in line


@pytest.mark.parametrize("setting, device, multi, has_bn, expected", [
    ("auto", "cuda", True, True, (True, "auto: several CUDA processes")),
    ("auto", "cuda", False, True, (False, "auto: one process")),
    ("auto", "cpu", True, True, (False, "auto: cpu, not CUDA")),
    ("auto", "cuda", True, False, (False, "auto: no BatchNorm layers")),
    (True, "cuda", False, True, (True, "set in the workflow")),
    (True, "cpu", True, True, (False, "cpu, not CUDA")),
    (False, "cuda", True, True, (False, "set in the workflow")),
])
def test_sync_batchnorm_decision(setting, device, multi, has_bn, expected):
    model = batchnorm_unet() if has_bn else tiny_unetr()
    lines = []
    assert ddp.sync_batchnorm_wanted(setting, model, torch.device(device), multi, lines.append, "T") == expected
    if setting is True and device == "cpu":  # a message and per-process statistics, not torch's ValueError
        assert lines == [("T: sync_batchnorm is true, but torch's SyncBatchNorm runs on GPUs only; training on cpu "
                          "with each process's own BatchNorm statistics")]
    else:
        assert lines == []


def test_syncbatchnorm_swap_keeps_checkpoints_loadable_into_plain_models(tmp_path):
    torch.manual_seed(0)
    model = batchnorm_unet()
    originals = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    params = list(model.parameters())
    plain_signature = checkpoint.model_signature(model)
    swap = ddp.SyncBatchNormSwap(model)
    assert len(swap) == len(originals) == 9
    assert all(isinstance(m, nn.SyncBatchNorm) for n, m in model.named_modules() if n in originals)
    assert list(model.parameters()) == params  # the optimizer's Parameter objects, unchanged
    model.train()
    with torch.no_grad():  # SyncBatchNorm on CPU with no process group: plain batch norm, stats move
        model(torch.randn(4, 1, 32, 32))

    # a checkpoint as the Trainer writes it, from the swapped model
    checkpoint.atomic_save({"format": checkpoint.FORMAT, "model": model.state_dict(),
                            "model_signature": checkpoint.model_signature(model)}, tmp_path / "last.pt")
    saved = checkpoint.load_checkpoint(tmp_path / "last.pt")
    assert checkpoint.signature_difference(saved["model_signature"], plain_signature) is None  # resume accepts it
    ctx = RunContext(run_dir=tmp_path, workflow_name="t", device="cpu", progress=False, log=lambda m: None)
    fresh = batchnorm_unet()
    CheckpointLoader("w", CheckpointLoaderConfig(checkpoint_path=str(tmp_path / "last.pt")), ctx).run(model=fresh)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())

    trained = {k: v.clone() for k, v in model.state_dict().items()}
    swap.undo()
    assert {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)} == originals
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())  # the trained statistics
    assert model.training and list(model.parameters()) == params


def test_swap_back_after_buffers_were_replaced():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    swap = ddp.SyncBatchNormSwap(model)
    model.to(torch.float64)  # replaces buffer tensors; the undo must take the new ones
    swap.undo()
    assert type(model[1]) is nn.BatchNorm2d and model[1].running_mean.dtype == torch.float64


def test_ddps_reduction_error_becomes_one_naming_the_field():
    model = tiny_unetr()
    ddp_text = ("Expected to have finished reduction in the prior iteration before starting a new one. ...\n"
                "Parameter indices which did not receive grad for rank 1: 14 15 27 28\n In addition, ...")
    with pytest.raises(RuntimeError) as caught, ddp.explain_unused_parameter_errors(model, False, "Trainer 't'"):
        raise RuntimeError(ddp_text)
    message = str(caught.value)
    assert message.startswith("Trainer 't': DistributedDataParallel found trainable parameters that got no gradient "
                              "(4: vit.blocks.0.norm_cross_attn.weight, vit.blocks.0.norm_cross_attn.bias, "
                              "vit.blocks.1.norm_cross_attn.weight, ...)")
    assert "set find_unused_parameters to auto (or true)" in message
    with pytest.raises(RuntimeError, match="^something else$"), \
            ddp.explain_unused_parameter_errors(model, False, "Trainer 't'"):
        raise RuntimeError("something else")
