"""The worker's training loop, with real torch on CPU: small enough to run in seconds."""

from __future__ import annotations

import math

import pytest
import torch

from service.spec import MLP_PARAMS, Workload
from worker.data import load_split
from worker.models import build_mlp
from worker.trainer import EpochResult, train

DEFAULTS = {name: rule.default for name, rule in MLP_PARAMS.items()}
GOOD = dict(DEFAULTS, optimizer="adam", lr=1e-3, batch_size=64)


def run(hp: dict, *, epochs: int, seed: int = 0) -> list[EpochResult]:
    return list(train(Workload(epochs=epochs, seed=seed), hp, "cpu"))


@pytest.fixture(scope="module")
def good_run() -> list[EpochResult]:
    return run(GOOD, epochs=5)


def test_reasonable_config_learns(good_run: list[EpochResult]) -> None:
    assert [r.epoch for r in good_run] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(r.val_loss) and math.isfinite(r.train_loss) for r in good_run)
    assert good_run[-1].val_loss < good_run[0].val_loss
    assert good_run[-1].train_loss < good_run[0].train_loss
    assert good_run[-1].val_accuracy > 0.8


def test_same_seed_same_results(good_run: list[EpochResult]) -> None:
    assert [r.val_loss for r in run(GOOD, epochs=5)] == [r.val_loss for r in good_run]


def test_other_seed_other_results(good_run: list[EpochResult]) -> None:
    # Guards against a seed that is silently ignored, which would make the test above vacuous.
    assert [r.val_loss for r in run(GOOD, epochs=5, seed=1)] != [r.val_loss for r in good_run]


def test_huge_lr_diverges_and_stops(good_run: list[EpochResult]) -> None:
    hp = dict(DEFAULTS, optimizer="sgd", lr=10.0, momentum=0.99, weight_decay=0.0, batch_size=64)
    results = run(hp, epochs=5)
    assert results, "the diverged epoch must still be yielded"
    last = results[-1]
    if math.isfinite(last.val_loss):
        # Did not overflow in 5 epochs: it must at least be far worse than a sane config.
        assert len(results) == 5
        assert last.val_loss > 10 * good_run[-1].val_loss
    else:
        # A non-finite loss ends the run right there: nothing is yielded after it.
        assert len(results) < 5
        assert all(math.isfinite(r.val_loss) for r in results[:-1])


def test_consumer_can_stop_early() -> None:
    gen = train(Workload(epochs=50, seed=0), GOOD, "cpu")
    first, second = next(gen), next(gen)
    assert (first.epoch, second.epoch) == (1, 2)
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)


@pytest.mark.parametrize("batch_size", [1, 1024])
def test_extreme_batch_sizes(batch_size: int) -> None:
    (result,) = run(dict(GOOD, batch_size=batch_size), epochs=1)
    assert result.epoch == 1
    assert math.isfinite(result.val_loss) and math.isfinite(result.train_loss)
    assert 0.0 <= result.val_accuracy <= 1.0


def test_unknown_optimizer() -> None:
    with pytest.raises(ValueError, match="sgd, adam"):
        run(dict(GOOD, optimizer="lbfgs"), epochs=1)


def test_load_split_digits() -> None:
    split = load_split("digits", val_fraction=0.2, seed=0, device="cpu")
    assert (split.n_features, split.n_classes) == (64, 10)
    n_train, n_val = split.x_train.shape[0], split.x_val.shape[0]
    assert n_train + n_val == 1797
    assert n_val == pytest.approx(0.2 * 1797, abs=1)
    assert split.x_train.shape[1] == split.x_val.shape[1] == 64
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    assert split.y_val.shape == (n_val,)
    # Standardised with training statistics: training features are centred.
    assert split.x_train.mean(dim=0).abs().max() < 1e-4
    # Disjoint: every digits image is unique, so no validation row may appear in training.
    train_rows = {tuple(row) for row in split.x_train.tolist()}
    assert not any(tuple(row) in train_rows for row in split.x_val.tolist())


def test_load_split_is_fixed_by_seed() -> None:
    a = load_split("digits", val_fraction=0.2, seed=0, device="cpu")
    b = load_split("digits", val_fraction=0.2, seed=0, device="cpu")
    c = load_split("digits", val_fraction=0.2, seed=1, device="cpu")
    assert torch.equal(a.y_val, b.y_val) and torch.equal(a.x_val, b.x_val)
    assert not torch.equal(a.x_val, c.x_val)


def test_load_split_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="digits"):
        load_split("mnist", val_fraction=0.2, seed=0, device="cpu")


def test_build_mlp_layout() -> None:
    model = build_mlp(64, 10, hidden_size=32, n_layers=3, dropout=0.3)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 32), (32, 32), (32, 10)]
    kinds = [type(m).__name__ for m in model]
    # Dropout after every hidden activation, i.e. right before each following Linear.
    assert kinds == ["Linear", "ReLU", "Dropout"] * 3 + ["Linear"]
    assert model(torch.zeros(5, 64)).shape == (5, 10)
