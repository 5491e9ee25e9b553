"""worker.schedules: each schedule against the exact LR sequence in the optimizer's param_groups.

The expected sequences come from `expected`, written from the formulas in the spec and
worker/schedules.py's docstring (not from torch), and `expected` is itself pinned by a few
sequences worked out by hand.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from service.spec.hyperparameters import SCHEDULES, TRAINING_PARAMS
from worker.schedules import build_schedule, lr_of

# Any warning from torch's schedulers (step order, deprecated epoch argument) fails a test.
# Errors on any warning the schedules raise (torch warns about misordered steps); a warning
# about some earlier test's object being garbage-collected here is not this test's concern.
pytestmark = [
    pytest.mark.filterwarnings("error"),
    pytest.mark.filterwarnings("default::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("default::ResourceWarning"),
]

DEFAULTS = {name: rule.default for name, rule in TRAINING_PARAMS.items()}
LR0 = 0.1


def lrs(hp: dict[str, Any], epochs: int, val_losses: list[float] | None = None) -> list[float]:
    """Group 0's LR during each of `epochs` epochs, driven the way the trainer drives it."""
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=LR0)
    schedule = build_schedule(opt, dict(DEFAULTS, lr=LR0, **hp), epochs)
    seen = []
    for epoch in range(epochs):
        seen.append(opt.param_groups[0]["lr"])
        assert lr_of(opt) == seen[-1]
        opt.step()  # the trainer's steps during the epoch (no gradients: the weights stay put)
        schedule.epoch_end(val_losses[epoch] if val_losses else 1.0)
    return seen


def expected(hp: dict[str, Any], epochs: int) -> list[float]:
    """The LR of epochs 1..`epochs`, straight from the formulas."""
    hp = dict(DEFAULTS, **hp)
    w = hp["warmup_epochs"]
    last_t = max(epochs - w - 1, 1)
    out = []
    for e in range(1, epochs + 1):
        if e <= w:
            out.append(LR0 * e / (w + 1))
            continue
        t = e - w - 1
        s = hp["schedule"]
        if s == "constant":
            out.append(LR0)
        elif s == "time_based":
            out.append(LR0 / (1 + hp["lr_decay"] * t))
        elif s == "linear":
            d = hp["decay_epochs"] or last_t
            out.append(LR0 * (1 - (1 - hp["lr_floor"]) * min(t, d) / d))
        elif s == "exponential":
            out.append(LR0 * (hp["gamma"] or 0.95) ** t)
        elif s == "step":
            out.append(LR0 * (hp["gamma"] or 0.1) ** (t // hp["step_size"]))
        elif s == "cosine":
            f = hp["lr_floor"]
            out.append(LR0 * (f + (1 - f) * (1 + math.cos(math.pi * t / last_t)) / 2))
        else:
            raise AssertionError(s)
    return out


# Worked out by hand, to pin `expected` itself (LR0 = 0.1).
HAND = [
    (dict(schedule="constant"), 3, [0.1, 0.1, 0.1]),
    (dict(schedule="constant", warmup_epochs=3), 5, [0.025, 0.05, 0.075, 0.1, 0.1]),
    (dict(schedule="time_based", lr_decay=0.5), 4, [0.1, 0.1 / 1.5, 0.05, 0.04]),
    (dict(schedule="linear", lr_floor=0.1, decay_epochs=3), 6, [0.1, 0.07, 0.04, 0.01, 0.01, 0.01]),
    (dict(schedule="linear", lr_floor=0.0), 5, [0.1, 0.075, 0.05, 0.025, 0.0]),
    (dict(schedule="exponential", gamma=0.5), 4, [0.1, 0.05, 0.025, 0.0125]),
    (dict(schedule="exponential"), 3, [0.1, 0.095, 0.09025]),
    (dict(schedule="step", gamma=0.5, step_size=2), 5, [0.1, 0.1, 0.05, 0.05, 0.025]),
    (dict(schedule="step", step_size=1), 3, [0.1, 0.01, 0.001]),
    (dict(schedule="cosine", lr_floor=0.0), 5, [0.1, 0.1 * (2 + 2**0.5) / 4, 0.05, 0.1 * (2 - 2**0.5) / 4, 0.0]),
    (dict(schedule="cosine", lr_floor=0.5, warmup_epochs=1), 4, [0.05, 0.1, 0.075, 0.05]),
]


@pytest.mark.parametrize(("hp", "epochs", "hand"), HAND)
def test_hand_worked_sequences(hp: dict[str, Any], epochs: int, hand: list[float]) -> None:
    assert expected(hp, epochs) == pytest.approx(hand, abs=1e-12)
    assert lrs(hp, epochs) == pytest.approx(hand, abs=1e-12)


CASES = [
    dict(schedule="constant"),
    dict(schedule="constant", warmup_epochs=4),
    dict(schedule="time_based"),
    dict(schedule="time_based", lr_decay=2.5, warmup_epochs=2),
    dict(schedule="linear"),
    dict(schedule="linear", lr_floor=0.2, decay_epochs=5),
    dict(schedule="linear", lr_floor=0.0, decay_epochs=30),  # still decaying at the last epoch
    dict(schedule="linear", lr_floor=0.05, warmup_epochs=3),
    dict(schedule="exponential"),
    dict(schedule="exponential", gamma=0.7, warmup_epochs=2),
    dict(schedule="step"),
    dict(schedule="step", gamma=0.5, step_size=3),
    dict(schedule="step", gamma=0.3, step_size=4, warmup_epochs=5),
    dict(schedule="cosine"),
    dict(schedule="cosine", lr_floor=0.0),
    dict(schedule="cosine", lr_floor=0.3, warmup_epochs=3),
    dict(schedule="cosine", warmup_epochs=1),
]


@pytest.mark.parametrize("hp", CASES, ids=lambda hp: "-".join(f"{k}={v}" for k, v in hp.items()))
@pytest.mark.parametrize("epochs", [1, 2, 12])
def test_sequence_matches_formula(hp: dict[str, Any], epochs: int) -> None:
    assert lrs(hp, epochs) == pytest.approx(expected(hp, epochs), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decay_reaches_the_floor_at_the_last_epoch(schedule: str) -> None:
    seq = lrs(dict(schedule=schedule, lr_floor=0.01, warmup_epochs=2), 10)
    assert seq[-1] == pytest.approx(LR0 * 0.01)
    assert seq[-2] > 2 * LR0 * 0.01


@pytest.mark.parametrize("schedule", [s for s in SCHEDULES if s != "plateau"])
def test_warmup_leaves_lr0_for_the_first_epoch_after_it(schedule: str) -> None:
    seq = lrs(dict(schedule=schedule, warmup_epochs=3), 6)
    assert seq[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])


def test_lr_is_epoch_1s_right_after_build() -> None:
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=LR0)
    build_schedule(opt, dict(DEFAULTS, lr=LR0, schedule="cosine", warmup_epochs=4), 10)
    assert lr_of(opt) == pytest.approx(LR0 / 5)


# Plateau, factor 0.5, patience 2, default threshold (an improvement must beat best by > 1e-4
# relative). The LR of epoch e+1 is decided by the loss of epoch e.
PLATEAU_LOSSES = [
    1.0,  # 1: best 1.0
    0.9,  # 2: best 0.9
    0.9,  # 3: bad 1
    0.95,  # 4: bad 2
    0.89995,  # 5: bad 3 (under the threshold) > patience: epoch 6 at 0.05
    0.8,  # 6: best 0.8
    0.8,  # 7: bad 1
    0.7,  # 8: best 0.7 (resets the count)
    0.75,  # 9: bad 1
    0.75,  # 10: bad 2
    0.75,  # 11: bad 3: epoch 12 at 0.025
    0.75,  # 12: bad 1
    0.75,  # 13: bad 2
    0.75,  # 14: bad 3: epoch 15 at 0.0125
    0.75,  # 15
]
PLATEAU_LRS = [0.1] * 5 + [0.05] * 6 + [0.025] * 3 + [0.0125]


def test_plateau_drops_after_patience() -> None:
    hp = dict(schedule="plateau", plateau_factor=0.5, plateau_patience=2)
    assert lrs(hp, 15, PLATEAU_LOSSES) == pytest.approx(PLATEAU_LRS, abs=1e-15)


def test_plateau_patience_zero_drops_on_every_bad_epoch() -> None:
    hp = dict(schedule="plateau", plateau_factor=0.2, plateau_patience=0)
    losses = [1.0, 1.1, 0.5, 0.5, 0.6, 0.4]
    assert lrs(hp, 6, losses) == pytest.approx([0.1, 0.1, 0.02, 0.02, 0.004, 0.0008], abs=1e-15)


def test_plateau_never_drops_while_improving() -> None:
    hp = dict(schedule="plateau", plateau_patience=0)
    assert lrs(hp, 8, [1.0 / (e + 1) for e in range(8)]) == pytest.approx([0.1] * 8)


def test_plateau_after_warmup_ignores_warmup_losses() -> None:
    hp = dict(schedule="plateau", plateau_factor=0.5, plateau_patience=2, warmup_epochs=3)
    # Rising warmup losses would be 2 bad epochs (and a drop soon after) if they counted.
    warmup_losses = [0.5, 5.0, 6.0]
    seq = lrs(hp, 3 + 15, warmup_losses + PLATEAU_LOSSES)
    assert seq == pytest.approx([0.025, 0.05, 0.075] + PLATEAU_LRS, abs=1e-15)


def test_plateau_with_warmup_counts_from_the_first_epoch_at_lr0() -> None:
    hp = dict(schedule="plateau", plateau_factor=0.5, plateau_patience=1, warmup_epochs=1)
    # Epoch 2 sets the baseline; epochs 3 and 4 are bad; > 1 bad: epoch 5 at 0.05.
    assert lrs(hp, 5, [0.1, 1.0, 1.0, 1.0, 1.0]) == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.05], abs=1e-15)


def test_unknown_schedule_names_the_allowed_ones() -> None:
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=LR0)
    with pytest.raises(ValueError, match="unknown schedule 'onecycle'.*constant, time_based, linear"):
        build_schedule(opt, dict(DEFAULTS, schedule="onecycle"), 5)


def test_needs_an_epoch() -> None:
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=LR0)
    with pytest.raises(ValueError, match="epochs"):
        build_schedule(opt, dict(DEFAULTS), 0)


def test_every_spec_schedule_builds_on_every_optimizer_without_warnings() -> None:
    from worker.optim import build_optimizer

    for schedule in SCHEDULES:
        model = torch.nn.Linear(2, 1)
        opt = build_optimizer(model.parameters(), dict(DEFAULTS, optimizer="adam", lr=LR0))
        sched = build_schedule(opt, dict(DEFAULTS, lr=LR0, schedule=schedule, warmup_epochs=1), 4)
        for _ in range(4):
            model(torch.ones(1, 2)).sum().backward()
            opt.step()
            sched.epoch_end(1.0)
        assert 0 < lr_of(opt) <= LR0
