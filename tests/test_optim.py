"""worker.optim: each optimizer is the right torch class and receives the hyperparameters meant for it."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from service.spec.hyperparameters import OPTIMIZERS, TRAINING_PARAMS
from worker.optim import build_optimizer

DEFAULTS = {name: rule.default for name, rule in TRAINING_PARAMS.items()}
# None of these is a default, of torch or of the spec, so a knob that is dropped or swapped shows.
CUSTOM = dict(DEFAULTS, lr=0.0123, weight_decay=3e-4, momentum=0.8, nesterov=True, beta1=0.85, beta2=0.995, eps=1e-6)

CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam,
    "adadelta": torch.optim.Adadelta,
}


def build(**hp: Any) -> torch.optim.Optimizer:
    return build_optimizer(torch.nn.Linear(3, 2).parameters(), dict(CUSTOM, **hp))


def test_every_spec_optimizer_is_covered() -> None:
    assert set(CLASSES) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_class_lr_and_weight_decay(name: str) -> None:
    opt = build(optimizer=name)
    assert type(opt) is CLASSES[name]
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.0123)
    assert group["weight_decay"] == pytest.approx(3e-4)
    # model.parameters() is a generator: every parameter must have reached the optimizer.
    assert sum(p.numel() for p in group["params"]) == 3 * 2 + 2


def test_sgd_reads_momentum_and_nesterov_not_eps() -> None:
    group = build(optimizer="sgd").param_groups[0]
    assert group["momentum"] == pytest.approx(0.8)
    assert group["nesterov"] is True
    assert "eps" not in group and "betas" not in group


def test_sgd_without_nesterov() -> None:
    group = build(optimizer="sgd", nesterov=False, momentum=0.0).param_groups[0]
    assert group["momentum"] == 0.0
    assert group["nesterov"] is False


def test_nesterov_without_momentum_is_refused() -> None:
    with pytest.raises(ValueError, match="nesterov.*momentum > 0"):
        build(optimizer="sgd", nesterov=True, momentum=0.0)


@pytest.mark.parametrize("name", ["adam", "adamw", "adamax", "nadam"])
def test_beta_optimizers_read_betas_and_eps(name: str) -> None:
    group = build(optimizer=name).param_groups[0]
    assert group["betas"] == pytest.approx((0.85, 0.995))
    assert group["eps"] == pytest.approx(1e-6)
    assert "momentum" not in group and "nesterov" not in group


@pytest.mark.parametrize("name", ["adagrad", "rmsprop", "adadelta"])
def test_other_adaptive_optimizers_read_eps_only(name: str) -> None:
    group = build(optimizer=name).param_groups[0]
    assert group["eps"] == pytest.approx(1e-6)
    assert "betas" not in group
    assert not group.get("nesterov", False)
    # RMSprop has a momentum of its own, but the spec gives momentum to sgd only.
    assert group.get("momentum", 0) == 0


def test_adagrad_does_not_take_the_schedules_lr_decay() -> None:
    group = build(optimizer="adagrad", lr_decay=0.5).param_groups[0]
    assert group["lr_decay"] == 0


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_and_adamw_are_fused_on_cpu(name: str) -> None:
    assert build(optimizer=name).param_groups[0]["fused"] is True


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_falls_back_when_unsupported(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = CLASSES[name]
    original = cls.__init__

    def no_fused(self: torch.optim.Optimizer, params: Any, **kwargs: Any) -> None:
        if kwargs.get("fused"):
            # Consume the params the way a failed constructor may have, before refusing.
            list(params)
            raise RuntimeError("`fused=True` requires all the params to be ... supported devices")
        original(self, params, **kwargs)

    monkeypatch.setattr(cls, "__init__", no_fused)
    opt = build(optimizer=name)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert not group["fused"]
    assert group["betas"] == pytest.approx((0.85, 0.995))
    assert sum(p.numel() for p in group["params"]) == 8


def test_unknown_optimizer_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'.*sgd, adagrad, rmsprop, adam, adamw, adamax, nadam"):
        build(optimizer="lbfgs")


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_steps(name: str) -> None:
    """One real step moves the weights (a fused kernel or a wrong knob would show here)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model.parameters(), dict(DEFAULTS, optimizer=name, lr=0.1))
    before = model.weight.detach().clone()
    model(torch.randn(4, 3)).pow(2).sum().backward()
    opt.step()
    assert torch.isfinite(model.weight).all()
    assert not torch.equal(model.weight, before)
