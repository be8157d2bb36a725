"""Each lr schedule's curve, read back from the optimizer, against its formula written out here."""
import math

import pytest
import torch

from segflow.training.schedules import EpochSchedule, ScheduleSettings

BASE = 0.1
EPOCHS = 20


def curve(settings: ScheduleSettings, metrics=None) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    sched = EpochSchedule(opt, settings)
    lrs = []
    for e in range(settings.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(None if metrics is None else metrics[e])
    return lrs


def warm(e, w):
    return BASE * (e + 1) / (w + 1)


@pytest.mark.parametrize("w", [0, 3])
def test_step(w):
    got = curve(ScheduleSettings("step", EPOCHS, warmup_epochs=w, step_size=5, gamma=0.5))
    want = [warm(e, w) if e < w else BASE * 0.5 ** ((e - w) // 5) for e in range(EPOCHS)]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[w + 5] == pytest.approx(BASE / 2)


@pytest.mark.parametrize("w", [0, 4])
def test_cosine(w):
    got = curve(ScheduleSettings("cosine", EPOCHS, warmup_epochs=w, t_max=10, eta_min=1e-3))
    want = [warm(e, w) if e < w else 1e-3 + (BASE - 1e-3) * (1 + math.cos(math.pi * min(e - w, 10) / 10)) / 2
            for e in range(EPOCHS)]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[w] == pytest.approx(BASE) and got[-1] == pytest.approx(1e-3)


def test_cosine_default_period_is_epochs_after_warmup():
    got = curve(ScheduleSettings("cosine", EPOCHS, warmup_epochs=5))
    assert got[5] == pytest.approx(BASE)
    assert got[5 + 15 // 2] == pytest.approx(BASE * (1 + math.cos(math.pi * 7 / 15)) / 2)


@pytest.mark.parametrize("w", [0, 2])
def test_exponential(w):
    got = curve(ScheduleSettings("exponential", EPOCHS, warmup_epochs=w, gamma=0.9))
    want = [warm(e, w) if e < w else BASE * 0.9 ** (e - w) for e in range(EPOCHS)]
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("w", [0, 5])
def test_poly(w):
    got = curve(ScheduleSettings("poly", EPOCHS, warmup_epochs=w, power=0.9))
    t_total = EPOCHS - w
    want = [warm(e, w) if e < w else BASE * (1 - (e - w) / t_total) ** 0.9 for e in range(EPOCHS)]
    assert got == pytest.approx(want, rel=1e-12)


def test_none_with_warmup_is_linear_then_constant():
    got = curve(ScheduleSettings("none", 8, warmup_epochs=3))
    assert got == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.1])


def test_plateau_drops_after_patience_and_warms_up_first():
    # a monitored loss that improves for 4 epochs, then stalls
    metrics = [1.0, 0.9, 0.8, 0.7] + [0.7] * 10
    got = curve(ScheduleSettings("plateau", 14, warmup_epochs=2, factor=0.5, patience=2, mode="min"), metrics)
    assert got[:3] == pytest.approx([BASE / 3, 2 * BASE / 3, BASE])
    # stalls from epoch 4 (0-based); after patience=2 bad epochs the third one lowers the lr
    first_drop = next(i for i, lr in enumerate(got) if i > 2 and lr < BASE - 1e-12)
    assert first_drop == 7
    assert got[first_drop] == pytest.approx(BASE / 2)
    assert min(got) < BASE / 2  # keeps dropping while the loss stays flat


def test_state_round_trip_continues_the_same_curve():
    s = ScheduleSettings("cosine", EPOCHS, warmup_epochs=3)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    sched = EpochSchedule(opt, s)
    for _ in range(7):
        opt.step()
        sched.step()
    state, opt_state = sched.state_dict(), opt.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    sched2 = EpochSchedule(opt2, s)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(state)
    for _ in range(5):
        opt.step(), opt2.step()
        sched.step()
        sched2.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="lr_schedule 'linear' is not one of"):
        EpochSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE), ScheduleSettings("linear"))
