"""The Trainer node on a tiny synthetic problem (CPU, seconds)."""
import json

import pytest
import torch
import torch.nn.functional as F
import toy

from segflow.nodes.base import RunContext
from segflow.nodes.training import Trainer, TrainerConfig
from segflow.training import checkpoint


def run_trainer(tmp_path, model=None, loaders=None, loss=None, opt=None, resume=None, log=None, **cfg):
    torch.manual_seed(0)
    model = model or toy.tiny_net()
    train, val = loaders if loaders is not None else toy.loaders()
    opt = opt or torch.optim.Adam(model.parameters(), lr=1e-2)
    ctx = RunContext(run_dir=tmp_path, workflow_name="t", device="cpu", progress=False, resume=resume,
                     log=log or (lambda m: None))
    out = Trainer("trainer", Trainer.Config(**cfg), ctx).run(
        model=model, train_loader=train, val_loader=val, loss_fn=loss or toy.CrossEntropy(), optimizer=opt)
    return out["model"], out["history"]


def test_run_dir_holds_every_artefact_and_tensorboard_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, history = run_trainer(tmp_path, epochs=4, save_frequency=1, keep_last=2)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["val_dice"] > history[0]["val_dice"] and history[-1]["val_dice"] > 0.7
    ck = tmp_path / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["best.pt", "epoch_0003.pt", "epoch_0004.pt", "last.pt"]
    for name in ("history.csv", "history.json", "metrics.json", "loss.png", "metrics.png", "lr.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert len((tmp_path / "history.csv").read_text().strip().splitlines()) == 5
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["monitor"] == "val_dice" and metrics["epochs_run"] == 4
    assert metrics["best_value"] == max(r["val_dice"] for r in history)

    last = torch.load(ck / "last.pt", weights_only=True)
    assert last["epoch"] == 4 and set(last) >= {"model", "optimizer", "scheduler", "scaler", "rng", "history"}

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss", "val/loss", "val/dice", "val/iou", "val/accuracy", "val/precision", "val/recall",
                "val/dice_1", "val/iou_0", "train/lr", "train/grad_norm", "time/epoch_seconds"):
        assert tag in scalars, tag
    assert [e.value for e in events.Scalars("val/dice")] == pytest.approx([r["val_dice"] for r in history])
    assert "val/sample_image_label_prediction" in events.Tags()["images"]


def _linear_run(tmp_path, batch_size, accum, n=12):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        model.weight.fill_(0.1), model.bias.zero_()
    data = toy.Squares(n, 8)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    run_trainer(tmp_path, model=model, loaders=(loader, None), opt=opt, epochs=2, gradient_accumulation_steps=accum,
                seed=None)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_gradient_accumulation_equals_a_larger_batch(tmp_path):
    # 12 samples: batches of 2 × 4 steps give groups of 8 and 4, like batches of 8 (then 4)
    small = _linear_run(tmp_path / "a", batch_size=2, accum=4)
    large = _linear_run(tmp_path / "b", batch_size=8, accum=1)
    untouched = torch.tensor([0.1, 0.1, 0.0, 0.0])
    assert not torch.allclose(small, untouched)
    torch.testing.assert_close(small, large, rtol=0, atol=1e-6)
    unaccumulated = _linear_run(tmp_path / "c", batch_size=2, accum=1)
    assert not torch.allclose(unaccumulated, large, atol=1e-4)


@pytest.mark.parametrize("kind", ["norm", "value"])
def test_gradient_clipping_bounds_the_update(tmp_path, kind):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    loader = torch.utils.data.DataLoader(toy.Squares(4, 8), batch_size=4)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # plain SGD: the update is minus the clipped gradient
    _, history = run_trainer(tmp_path, model=model, loaders=(loader, None), opt=opt, epochs=1,
                             gradient_clip=1e-3, gradient_clip_type=kind)
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert history[0]["grad_norm"] > 1e-2  # the raw gradient was far above the clip
    if kind == "norm":
        assert delta.norm().item() == pytest.approx(1e-3, rel=1e-3)
    else:
        assert delta.abs().max().item() == pytest.approx(1e-3, rel=1e-5)


class NaNAt(torch.nn.Module):
    """Cross-entropy that returns NaN on the k-th call."""

    def __init__(self, k):
        super().__init__()
        self.k, self.calls = k, 0

    def forward(self, logits, label):
        self.calls += 1
        loss = F.cross_entropy(logits, label[:, 0])
        return loss * float("nan") if self.calls == self.k else loss


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path):
    train, _ = toy.loaders()  # 4 batches per epoch, no validation: call 7 is epoch 2, step 3
    with pytest.raises(FloatingPointError, match=r"NaN/Inf at epoch 2, step 3 of 4.*last\.pt \(epoch 1\)"):
        run_trainer(tmp_path, loaders=(train, None), loss=NaNAt(7), epochs=5)
    last = checkpoint.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    assert [r["epoch"] for r in json.loads((tmp_path / "history.json").read_text())] == [1]


def test_nan_loss_in_the_first_epoch_says_no_checkpoint_exists_and_names_the_learning_rate(tmp_path):
    train, _ = toy.loaders()
    with pytest.raises(FloatingPointError) as err:
        run_trainer(tmp_path, loaders=(train, None), loss=NaNAt(2), epochs=5)
    message = str(err.value)
    assert "NaN/Inf at epoch 1, step 2 of 4" in message and "last.pt" not in message
    assert "no checkpoint was written yet" in message
    assert "lower learning_rate (the Optimizer node's" in message and "this epoch's was 0.01" in message
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


def _usable_when(tmp_path, loss, epochs):
    """Runs the Trainer with a RunContext whose on_usable records whether last.pt existed when called."""
    called = []
    ctx = RunContext(run_dir=tmp_path, workflow_name="t", device="cpu", progress=False, log=lambda m: None,
                     on_usable=lambda: called.append((tmp_path / "checkpoints" / "last.pt").is_file()))
    torch.manual_seed(0)
    model = toy.tiny_net()
    train, _ = toy.loaders()
    with pytest.raises(FloatingPointError):
        Trainer("trainer", Trainer.Config(epochs=epochs), ctx).run(
            model=model, train_loader=train, val_loader=None, loss_fn=loss,
            optimizer=torch.optim.Adam(model.parameters(), lr=1e-2))
    return called


def test_the_run_is_marked_usable_once_its_first_checkpoint_is_written(tmp_path):
    # fails in epoch 1: nothing to load, so runs/<workflow>/latest must stay on the previous run
    assert _usable_when(tmp_path / "a", NaNAt(3), epochs=5) == []
    # fails in epoch 3: usable since epoch 1's checkpoint, marked once, after last.pt was written
    assert _usable_when(tmp_path / "b", NaNAt(11), epochs=5) == [True]


def test_early_stopping_stops_after_patience_and_restores_best_weights(tmp_path):
    train, val = toy.loaders()
    inverted = [{"image": b["image"], "label": 1 - b["label"]} for b in val]  # val loss rises as training works
    model, history = run_trainer(tmp_path, loaders=(train, inverted), epochs=30, early_stopping=True,
                                 patience=3, monitor="val_loss", lr_schedule="none")
    best_epoch = min(history, key=lambda r: r["val_loss"])["epoch"]
    assert len(history) == best_epoch + 3 < 30
    best = checkpoint.load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    last = checkpoint.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert best["epoch"] == best_epoch
    for k, v in model.state_dict().items():
        assert torch.equal(v, best["model"][k])
    assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])


def test_logged_lr_follows_the_schedule(tmp_path):
    _, history = run_trainer(tmp_path, epochs=5, lr_schedule="step", step_size="2", gamma="0.5", warmup_epochs="1")
    assert [r["lr"] for r in history] == pytest.approx([0.005, 0.01, 0.01, 0.005, 0.005])


def test_validation_of_larger_3d_volumes_uses_sliding_windows(tmp_path):
    seen = []
    net = toy.tiny_net(dims=3)
    net.register_forward_pre_hook(lambda m, args: None if m.training else seen.append(tuple(args[0].shape[2:])))
    train = torch.utils.data.DataLoader(toy.Squares(4, 8, dims=3), batch_size=2)
    val = torch.utils.data.DataLoader(toy.Squares(2, 16, dims=3, seed=1), batch_size=1)
    _, history = run_trainer(tmp_path, model=net, loaders=(train, val), epochs=1)
    assert seen and set(seen) == {(8, 8, 8)}
    assert 0 <= history[0]["val_dice"] <= 1


def test_resume_into_a_changed_model_names_the_difference(tmp_path):
    run_trainer(tmp_path / "a", epochs=1)
    with pytest.raises(ValueError, match=r"parameter '0.weight' has shape \(8, 1, 3, 3\) in the checkpoint but \(4, 1, 3, 3\)"):
        run_trainer(tmp_path / "b", model=toy.tiny_net(channels=4), epochs=2,
                    resume=str(tmp_path / "a" / "checkpoints" / "last.pt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_fails_up_front_and_device_override_wins(tmp_path):
    model = toy.tiny_net()
    train, val = toy.loaders()
    ctx = RunContext(run_dir=tmp_path, workflow_name="t", device=None, progress=False, log=lambda m: None)
    node = Trainer("trainer", Trainer.Config(device="cuda", epochs=1), ctx)
    with pytest.raises(ValueError, match=r"no CUDA device.*--device cpu.*\"auto\""):
        node.run(model=model, train_loader=train, val_loader=val, loss_fn=toy.CrossEntropy(),
                 optimizer=torch.optim.Adam(model.parameters()))
    _, history = run_trainer(tmp_path / "cpu", device="cuda", epochs=1)  # ctx.device="cpu" wins
    assert len(history) == 1


def test_config_takes_the_seed_workflows_strings():
    cfg = TrainerConfig(epochs="200", device="cuda", mixed_precision="true", gradient_clip="1.0",
                        warmup_epochs="10", lr_schedule="cosine", checkpoint_dir="checkpoints/swin_unetr",
                        save_frequency="10", save_best_only="true", monitor="val_dice", early_stopping="true",
                        patience="30", min_delta="0.001", T_max="200", eta_min="1e-6", step_size="50", gamma="0.1",
                        factor="0.5", gradient_accumulation_steps="4", gradient_clip_type="norm", warmup_type="linear")
    assert (cfg.epochs, cfg.mixed_precision, cfg.gradient_clip, cfg.save_best_only, cfg.eta_min) == (200, True, 1.0, True, 1e-6)
    assert TrainerConfig(mixed_precision="False").mixed_precision is False
    assert TrainerConfig(mixed_precision="BF16").mixed_precision == "bf16"
    assert TrainerConfig(lr_schedule="polynomial").lr_schedule == "poly"
    assert TrainerConfig.aliases["num_epochs"] == "epochs"
    assert TrainerConfig.aliases["save_every_n_epochs"] == "save_frequency"
    assert TrainerConfig(device="GPU").device == "cuda"
    with pytest.raises(ValueError, match="device 'tpu' is not one of"):
        TrainerConfig(device="tpu")
    with pytest.raises(ValueError, match="extra"):
        TrainerConfig(epoch=3)


def test_check_warns_on_the_shared_patience():
    cfg = TrainerConfig(lr_schedule="plateau", early_stopping="true", patience="10", factor="0.5")
    wired = {"val_loader": ("MedicalSegmentationLoader", None)}
    (finding,) = Trainer.check(cfg, wired)
    assert (finding.field, finding.code, finding.severity) == ("patience", "ambiguous_patience", "warning")
    # without early stopping `patience` can only be the plateau's
    assert Trainer.check(TrainerConfig(lr_schedule="plateau", patience="10"), wired) == []
    assert Trainer.check(TrainerConfig(lr_schedule="plateau", early_stopping=True, patience=10, lr_patience=5), wired) == []


def test_bf16_autocast_trains_on_cpu(tmp_path):
    lines = []
    _, history = run_trainer(tmp_path, epochs=2, mixed_precision="bf16", log=lines.append)
    assert any("bf16 autocast" in m for m in lines)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_compile_failure_falls_back_to_eager_with_a_message(tmp_path, monkeypatch):
    def broken_compile(model, **kw):
        def call(x):
            raise RuntimeError("backend exploded")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    lines = []
    _, history = run_trainer(tmp_path, epochs=1, compile=True, log=lines.append)
    assert any("torch.compile failed on the first batch (RuntimeError: backend exploded); training eagerly" in m
               for m in lines)
    assert history[0]["val_dice"] >= 0


@pytest.mark.parametrize("setting, mode", [(True, None), ("default", None), ("reduce-overhead", "reduce-overhead")])
def test_compile_modes_reach_torch_compile(tmp_path, monkeypatch, setting, mode):
    seen = []

    def recording_compile(model, mode=None, **kw):
        seen.append(mode)
        return model  # eager underneath: the test is about what was asked for

    marks = []
    monkeypatch.setattr(torch, "compile", recording_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    run_trainer(tmp_path, epochs=1, compile=setting)
    assert seen and set(seen) == {mode}
    # CUDA graphs reuse output memory: every compiled call (train and validation) starts a new step
    assert (len(marks) > 0) == (mode == "reduce-overhead")


# ---- which weights the model output holds (output_weights) ---------------------------------------

def _worsening_run(tmp_path, val=True, **cfg):
    """Four epochs whose monitored value is best early and worse at the end, no early stopping."""
    train, real_val = toy.loaders()
    loss = None
    if val:  # inverted labels: val_dice falls as training learns the squares
        real_val = [{"image": b["image"], "label": 1 - b["label"]} for b in real_val]
    else:  # train_loss (the monitor without a val_loader) rises by 1 every epoch; the gradients are untouched
        loss = RisingLoss(batches_per_epoch=len(train))
        real_val = None
    lines = []
    model, history = run_trainer(tmp_path, loaders=(train, real_val), loss=loss, epochs=4, log=lines.append, **cfg)
    ck = tmp_path / "checkpoints"
    best, last = checkpoint.load_checkpoint(ck / "best.pt"), checkpoint.load_checkpoint(ck / "last.pt")
    assert best["epoch"] < last["epoch"] == 4  # the last epoch is worse than the best
    assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    return model, history, lines, best, last


class RisingLoss(toy.CrossEntropy):
    def __init__(self, batches_per_epoch):
        super().__init__()
        self.per_epoch, self.calls = batches_per_epoch, 0

    def forward(self, logits, label):
        self.calls += 1
        return super().forward(logits, label) + (self.calls - 1) // self.per_epoch


def _holds(model, weights):
    return all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_output_model_holds_the_best_weights_by_default(tmp_path):
    model, history, lines, best, last = _worsening_run(tmp_path)
    assert best["epoch"] == max(history, key=lambda r: r["val_dice"])["epoch"]
    assert _holds(model, best["model"]) and not _holds(model, last["model"])
    value = max(r["val_dice"] for r in history)
    assert (f"Trainer 'trainer': the output model holds the best weights (epoch {best['epoch']}, val_dice "
            f"{value:.4f}), as {tmp_path / 'checkpoints' / 'best.pt'}") in lines
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["output_model"] == {"weights": "best", "epoch": best["epoch"]}


def test_output_weights_last_keeps_the_last_epoch(tmp_path):
    model, _, lines, best, last = _worsening_run(tmp_path, output_weights="Last")
    assert _holds(model, last["model"]) and not _holds(model, best["model"])
    assert any("the output model holds the last epoch's weights (epoch 4)" in m and "output_weights: last" in m
               for m in lines)
    assert json.loads((tmp_path / "metrics.json").read_text())["output_model"] == {"weights": "last", "epoch": 4}


def test_without_validation_the_best_weights_are_by_train_loss(tmp_path):
    model, history, lines, best, last = _worsening_run(tmp_path, val=False)
    assert best["epoch"] == 1 == min(history, key=lambda r: r["train_loss"])["epoch"]
    assert _holds(model, best["model"]) and not _holds(model, last["model"])
    assert any("the output model holds the best weights (epoch 1, train_loss" in m for m in lines)


def test_restore_best_weights_is_a_deprecated_spelling_of_output_weights():
    assert TrainerConfig().output_weights == "best"
    assert TrainerConfig(restore_best_weights="false").output_weights == "last"
    assert TrainerConfig(restore_best_weights=True, output_weights=" BEST ").output_weights == "best"
    with pytest.raises(ValueError, match=r"restore_best_weights \(deprecated\) says output_weights 'best', "
                                         r"output_weights says 'last': remove restore_best_weights"):
        TrainerConfig(restore_best_weights=True, output_weights="last")
    wired = {"val_loader": ("MedicalSegmentationLoader", None)}
    (finding,) = Trainer.check(TrainerConfig(restore_best_weights=False), wired)
    assert (finding.field, finding.code, finding.severity) == ("restore_best_weights", "deprecated_key", "warning")
    assert finding.hint == "write output_weights: last instead"
    assert Trainer.check(TrainerConfig(output_weights="last"), wired) == []


def test_a_monitor_that_names_no_column_is_said_and_does_not_crash_early_stopping(tmp_path):
    lines = []
    _, history = run_trainer(tmp_path, epochs=3, monitor="val_dise", early_stopping=True, patience=2,
                                 log=lines.append)
    assert len(history) == 2  # stopped: no epoch improved the (missing) monitor
    assert sum("monitor 'val_dise' is not a history column (train_loss, " in m and "val_dice_case_mean" in m for m in lines) == 1
    assert any("early stopping at epoch 2" in m and "(no value yet)" in m for m in lines)
    assert any("the output model holds the last epoch's weights (epoch 2)" in m and "no epoch had a finite val_dise"
               in m for m in lines)


def test_a_run_removes_the_unfinished_writes_a_killed_run_left(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    for name in (".best.pt.a1b2c3.tmp", ".last.pt.d4e5f6.tmp"):
        (ck / name).write_bytes(b"\0" * 1000)  # what a kill during torch.save leaves
    (ck / "notes.tmp").write_text("not ours")
    lines = []
    run_trainer(tmp_path, epochs=1, log=lines.append)
    assert sorted(p.name for p in ck.iterdir()) == ["best.pt", "last.pt", "notes.tmp"]
    assert any("removed 2 unfinished write(s)" in line for line in lines)
