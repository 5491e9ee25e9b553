"""Fused trials (worker/fused/): K members trained as one give each member the losses it gets
trained alone by worker.trainer.train, to float rounding, for every optimizer and schedule; its
checkpoints resume fused or alone; members join, leave and diverge on their own.

TOLERANCE: the fused step adds, multiplies and reduces in another order than the unfused one
(batched matrix products, one Adam formula for torch's fused kernel), which moves losses by about
1e-7 relative per epoch here; 1e-5 over a few epochs is a hundred times that and far below any
difference a wrong mask, data order or hyperparameter makes (1e-2 and more).

The members' LRs stay inside HYPERPARAMETERS.md's usual ranges: past them a trial's trajectory is
chaotic (nadam at lr 0.02 here: a 1e-6 relative change of the LR alone moves the validation loss
by 2e-2 within three epochs), and no two runs that round differently agree there, fused or not.
Even inside them a run can sit on such an edge for a step: a hidden unit that is nearly dead gets
one sample's pre-activation within rounding of zero, ReLU lets it through in one rounding and not
in the other, and an adaptive optimizer (Adam, RMSprop) scales that one sample's gradient up to a
full step (seed 7, adam, the first member: its first-layer row moves 3e-4 at epoch 2, step 2, and
the loss 1e-3 later). The run alone, its start moved by 2e-7, departs as far (6e-3) there: 5 of 64
runs (4 seeds x 4 optimizers x 4 members) did so alone, and the one where fusing departed is one
of them. So the optimizer test excuses a member only if a rounding-size change moves its run
alone at least a tenth as far (assert_same_as_alone)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from service.spec import OPTIMIZERS, SCHEDULES, Workload, defaults_for
from service.spec.fusion import FUSED_OPTIMIZERS, fusion_key, not_fusable
from worker.fused.trainer import FusedTraining
from worker import trainer
from worker.trainer import train

TOLERANCE = 1e-5

# Four members that differ in every per-member scalar the fused step carries.
MEMBERS = [
    dict(lr=1e-2, weight_decay=0.0, dropout=0.2, grad_clip=0.0, momentum=0.9, beta1=0.9, beta2=0.999, eps=1e-8),
    dict(lr=3e-3, weight_decay=1e-3, dropout=0.0, grad_clip=1.0, momentum=0.0, beta1=0.8, beta2=0.99, eps=1e-6),
    dict(lr=8e-3, weight_decay=5e-4, dropout=0.4, grad_clip=0.0, momentum=0.5, beta1=0.95, beta2=0.98, eps=1e-7),
    dict(lr=5e-3, weight_decay=0.0, dropout=0.3, grad_clip=0.5, momentum=0.99, beta1=0.85, beta2=0.995, eps=1e-8),
]


@pytest.fixture(autouse=True)
def one_thread():
    # The same number of threads for both sides, and fewer for a 2-core CI machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def workload(model: str, epochs: int = 3) -> Workload:
    return Workload(model=model, epochs=epochs, seed=7)


def base_hp(model: str, **fixed: Any) -> dict[str, Any]:
    sizes = {"channels": 4, "n_blocks": 2} if model == "cnn" else {"hidden_size": 32}
    return defaults_for(model) | {"batch_size": 64} | sizes | fixed


def alone(wl: Workload, hp: dict[str, Any], resume: bytes | None = None) -> list[tuple]:
    return [curve_point(r) for r in train(wl, hp, "cpu", resume=resume)]


def curve_point(r: Any) -> tuple:
    return (r.epoch, r.val_loss, r.train_loss, r.val_accuracy, r.lr, r.diverged)


def fused(wl: Workload, hps: dict[Any, dict[str, Any]]) -> dict[Any, list[tuple]]:
    group = FusedTraining(wl, "cpu")
    for key, hp in hps.items():
        group.add(key, hp)
    curves: dict[Any, list[tuple]] = {key: [] for key in hps}
    while group.members:
        for key, r in group.run_epoch().items():
            curves[key].append(curve_point(r))
    return curves


def assert_same(got: list[tuple], want: list[tuple]) -> None:
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want):
        assert g[0] == w[0] and g[5] == w[5], (g, w)  # epoch, diverged
        for a, b in zip(g[1:5], w[1:5]):
            if a is None or b is None:
                assert a is b, (g, w)
            else:
                assert math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=1e-9), (g, w)


def departure(got: list[tuple], want: list[tuple]) -> float:
    """The largest relative difference of the validation losses."""
    return max(abs(g[1] - w[1]) / abs(w[1]) for g, w in zip(got, want))


def perturbed_alone(wl: Workload, hp: dict[str, Any]) -> list[tuple]:
    """The run alone, its initial weights moved by 2e-7 relative: a change of rounding size."""
    original = trainer.build_run

    def build_run(*args: Any, **kwargs: Any) -> Any:
        run = original(*args, **kwargs)
        noise = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in run.model.parameters():
                p.mul_(1 + 2e-7 * torch.randn(p.shape, generator=noise))
        return run

    trainer.build_run = build_run
    try:
        return alone(wl, hp)
    finally:
        trainer.build_run = original


def assert_same_as_alone(got: list[tuple], wl: Workload, hp: dict[str, Any]) -> None:
    """assert_same(got, alone), unless the run alone is itself that sensitive to rounding: a
    rounding-size change of its start moves it at least a tenth as far as fusing did (see TOLERANCE)."""
    want = alone(wl, hp)
    try:
        assert_same(got, want)
    except AssertionError:
        fused_off, rounding_off = departure(got, want), departure(perturbed_alone(wl, hp), want)
        assert rounding_off >= fused_off / 10, f"fused departs by {fused_off:.1e}, a rounding-size change by {rounding_off:.1e}"


def test_every_optimizer_of_the_spec_is_fused() -> None:
    assert set(FUSED_OPTIMIZERS) == set(OPTIMIZERS)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("optimizer", FUSED_OPTIMIZERS)
def test_members_match_their_runs_alone_for_each_optimizer(model: str, optimizer: str) -> None:
    wl = workload(model, epochs=3 if model == "mlp" else 2)
    hps = {i: base_hp(model, optimizer=optimizer) | scalars for i, scalars in enumerate(MEMBERS)}
    curves = fused(wl, hps)
    for i, hp in hps.items():
        assert_same_as_alone(curves[i], wl, hp)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_members_match_their_runs_alone_for_each_schedule(schedule: str) -> None:
    # Plateau with patience 0 reduces at the first epoch that does not improve; warmup on one member.
    wl = workload("mlp", epochs=5)
    knobs = [
        dict(warmup_epochs=0, lr_decay=0.5, gamma=0.5, step_size=2, lr_floor=0.1, plateau_patience=0),
        dict(warmup_epochs=2, lr_decay=0.1, gamma=0.9, step_size=1, lr_floor=0.01, plateau_patience=1),
        dict(warmup_epochs=0, lr_decay=1.0, gamma=None, step_size=3, lr_floor=0.5, decay_epochs=2),
    ]
    hps = {i: base_hp("mlp", optimizer="sgd", schedule=schedule) | MEMBERS[i] | k for i, k in enumerate(knobs)}
    # A tiny LR on the plateau member: its loss improves by less than 1e-4 relative, so the LR is cut.
    if schedule == "plateau":
        hps[0]["lr"] = 1e-6
    curves = fused(wl, hps)
    for i, hp in hps.items():
        want = alone(wl, hp)
        assert_same(curves[i], want)
    lrs = {point[4] for curve in curves.values() for point in curve}
    assert len(lrs) > 3  # the schedules moved the LR: the check compared more than the initial LR


def test_members_of_different_schedule_kinds_share_a_group() -> None:
    wl = workload("mlp", epochs=4)
    hps = {s: base_hp("mlp", optimizer="adam", schedule=s, warmup_epochs=1) for s in ("constant", "cosine", "step")}
    curves = fused(wl, hps)
    for key, hp in hps.items():
        assert_same(curves[key], alone(wl, hp))


def test_a_fused_checkpoint_resumes_alone_and_an_unfused_one_resumes_fused() -> None:
    wl = workload("mlp", epochs=4)
    hps = {i: base_hp("mlp", optimizer="adam") | MEMBERS[i] for i in range(2)}
    group = FusedTraining(wl, "cpu")
    for key, hp in hps.items():
        group.add(key, hp)
    group.run_epoch()
    group.run_epoch()
    saved = group.checkpoint(1)
    # Fused checkpoint, continued alone: the last two epochs of the uninterrupted run.
    assert_same(alone(wl, hps[1], resume=saved), alone(wl, hps[1])[2:])
    # An unfused checkpoint after epoch 1, continued fused next to a fresh member.
    run = train(wl, hps[0], "cpu")
    next(run)
    resumed = FusedTraining(wl, "cpu")
    resumed.add("resumed", hps[0], resume=run.checkpoint())
    resumed.add("fresh", hps[1])
    curves: dict[str, list[tuple]] = {"resumed": [], "fresh": []}
    while resumed.members:
        for key, r in resumed.run_epoch().items():
            curves[key].append(curve_point(r))
    assert_same(curves["resumed"], alone(wl, hps[0])[1:])
    assert_same(curves["fresh"], alone(wl, hps[1]))


def test_members_join_and_leave_between_epochs() -> None:
    wl = workload("mlp", epochs=3)
    hp = {i: base_hp("mlp", optimizer="sgd") | MEMBERS[i] for i in range(3)}
    group = FusedTraining(wl, "cpu")
    group.add(0, hp[0])
    group.add(1, hp[1])
    curves: dict[int, list[tuple]] = {0: [], 1: [], 2: []}

    def epoch() -> None:
        for key, r in group.run_epoch().items():
            curves[key].append(curve_point(r))

    epoch()
    group.drop(1)  # pruned after epoch 1
    group.add(2, hp[2])  # refills the slot at the next epoch boundary, two epochs behind member 0
    while group.members:
        epoch()
    assert_same(curves[0], alone(wl, hp[0]))
    assert_same(curves[1], alone(wl, hp[1])[:1])
    assert_same(curves[2], alone(wl, hp[2]))


def test_a_diverging_member_stops_alone_and_the_others_go_on() -> None:
    wl = workload("mlp", epochs=3)
    hps = {"ok": base_hp("mlp", optimizer="sgd") | MEMBERS[0], "boom": base_hp("mlp", optimizer="sgd", lr=9.0, momentum=0.99)}
    want = alone(wl, hps["boom"])
    assert want[-1][5] is not None, "the LR was meant to make the trial diverge"
    curves = fused(wl, hps)
    assert_same(curves["boom"], want)
    assert_same(curves["ok"], alone(wl, hps["ok"]))


def test_the_fusion_rule() -> None:
    wl = workload("mlp")
    hp = base_hp("mlp")
    assert fusion_key(wl, hp) == fusion_key(wl, hp | MEMBERS[1] | {"schedule": "cosine", "warmup_epochs": 2})
    assert fusion_key(wl, hp) != fusion_key(wl, hp | {"hidden_size": 64})
    assert fusion_key(wl, hp) != fusion_key(wl, hp | {"batch_size": 32})
    assert fusion_key(wl, hp) != fusion_key(wl, hp | {"optimizer": "sgd"})
    assert fusion_key(wl, hp | {"optimizer": "adam", "nesterov": True}) == fusion_key(wl, hp | {"optimizer": "adam"})
    assert "batchnorm" in not_fusable(wl, hp | {"batchnorm": True})
    assert "bf16" in not_fusable(Workload(precision="bf16"), hp)
    assert fusion_key(Workload(model="command", command="x.py"), {}) is None
    group = FusedTraining(wl, "cpu")
    group.add("a", hp)
    with pytest.raises(ValueError, match="cannot be fused"):
        group.add("b", hp | {"hidden_size": 64})
