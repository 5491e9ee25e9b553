"""The worker's training loop, with real torch on CPU: small enough to run in seconds."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import pytest
import torch

import worker.trainer as trainer
import worker.training_run as training_run
from service.spec import CNN_PARAMS, MLP_PARAMS, OPTIMIZERS, Workload
from worker.checkpoint import CHECKPOINT_FORMAT
from worker.divergence_guard import CHECK_EVERY, _Diverged, _Guard
from worker.scoring import _evaluate
from worker.trainer import EpochResult, train

DEFAULTS = {name: rule.default for name, rule in MLP_PARAMS.items()}
CNN_DEFAULTS = {name: rule.default for name, rule in CNN_PARAMS.items()}
# Small enough to keep the suite fast, big enough to learn digits in a few epochs.
GOOD = dict(DEFAULTS, optimizer="adam", lr=3e-3, batch_size=64, hidden_size=64)
# digits: 1797 samples, 360 of them held out for validation at val_fraction 0.2.
N_TRAIN = 1437


def run(hp: dict, *, epochs: int, seed: int = 0, **workload: object) -> list[EpochResult]:
    return list(train(Workload(epochs=epochs, seed=seed, **workload), hp, "cpu"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def grad_norms(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The global gradient norm the optimizer sees at each of its steps (after any clipping)."""
    norms: list[float] = []
    real = trainer.build_optimizer

    def build(params, hp):  # type: ignore[no-untyped-def]
        optimizer = real(params, hp)

        def before_step(opt, args, kwargs):  # type: ignore[no-untyped-def]
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

        optimizer.register_step_pre_hook(before_step)
        return optimizer

    monkeypatch.setattr(trainer, "build_optimizer", build)
    return norms


@pytest.fixture(scope="module")
def good_run() -> list[EpochResult]:
    return run(GOOD, epochs=5)


def test_reasonable_config_learns(good_run: list[EpochResult]) -> None:
    assert [r.epoch for r in good_run] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(r.val_loss) and math.isfinite(r.train_loss) for r in good_run)
    assert all(r.diverged is None and r.lr == GOOD["lr"] for r in good_run)
    assert good_run[-1].val_loss < good_run[0].val_loss
    assert good_run[-1].train_loss < good_run[0].train_loss
    assert good_run[-1].val_accuracy is not None and good_run[-1].val_accuracy > 0.8


def test_same_seed_same_results(good_run: list[EpochResult]) -> None:
    assert run(GOOD, epochs=5) == good_run


def test_other_seed_other_results(good_run: list[EpochResult]) -> None:
    # Guards against a seed that is silently ignored, which would make the test above vacuous.
    assert [r.val_loss for r in run(GOOD, epochs=5, seed=1)] != [r.val_loss for r in good_run]


def test_consumer_can_stop_early() -> None:
    gen = train(Workload(epochs=50, seed=0), GOOD, "cpu")
    first, second = next(gen), next(gen)
    assert (first.epoch, second.epoch) == (1, 2)
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)


@pytest.mark.parametrize("batch_size", [1, 1024])
def test_extreme_batch_sizes(batch_size: int) -> None:
    # A small training set at batch_size 1 (359 steps), to keep the test fast.
    (result,) = run(dict(GOOD, batch_size=batch_size, hidden_size=16), epochs=1, val_fraction=0.8)
    assert result.epoch == 1 and result.diverged is None
    assert math.isfinite(result.val_loss) and math.isfinite(result.train_loss)
    assert result.val_accuracy is not None and 0.0 <= result.val_accuracy <= 1.0


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_trains(optimizer: str) -> None:
    # adadelta's step is lr times a ratio that starts tiny: it needs a large lr to move in 2 epochs.
    lr = {"sgd": 0.05, "adadelta": 1.0}.get(optimizer, 3e-3)
    results = run(dict(DEFAULTS, optimizer=optimizer, lr=lr, hidden_size=32), epochs=2)
    assert [r.epoch for r in results] == [1, 2]
    assert all(r.diverged is None and math.isfinite(r.val_loss) for r in results)
    # Learning: better than before, and than guessing uniformly among 10 classes (ln 10 = 2.30).
    assert results[-1].val_loss < results[0].val_loss
    assert results[-1].val_loss < math.log(10)


def test_unknown_optimizer() -> None:
    with pytest.raises(ValueError, match="sgd"):
        run(dict(GOOD, optimizer="lbfgs"), epochs=1)


def test_schedule_sets_each_epochs_lr() -> None:
    hp = dict(GOOD, hidden_size=16, schedule="step", step_size=1, gamma=0.5, lr=0.01)
    assert [r.lr for r in run(hp, epochs=3)] == pytest.approx([0.01, 0.005, 0.0025])


def test_warmup_shows_in_the_lr() -> None:
    hp = dict(GOOD, hidden_size=16, warmup_epochs=1, lr=0.01)
    assert [r.lr for r in run(hp, epochs=3)] == pytest.approx([0.005, 0.01, 0.01])


def test_grad_clip_limits_the_global_norm(grad_norms: list[float]) -> None:
    hp = dict(GOOD, optimizer="sgd", lr=0.05, hidden_size=32)
    run(hp, epochs=1)
    unclipped = list(grad_norms)
    grad_norms.clear()
    clipped_run = run(dict(hp, grad_clip=0.1), epochs=1)
    assert len(grad_norms) == len(unclipped) == math.ceil(N_TRAIN / 64)
    # Unclipped, the gradients are larger than the threshold, so the clipped run's limit is real.
    assert max(unclipped) > 0.3
    assert max(grad_norms) <= 0.1 * (1 + 1e-4)
    assert clipped_run[0].diverged is None and math.isfinite(clipped_run[0].val_loss)


def test_lr_10_sgd_diverges_within_the_first_epoch(grad_norms: list[float]) -> None:
    # The acceptance case: sgd at lr 10 with momentum 0.9, every other hyperparameter at its default.
    hp = dict(DEFAULTS, optimizer="sgd", lr=10.0, momentum=0.9)
    results = run(hp, epochs=5)
    assert len(results) == 1
    (last,) = results
    assert last.epoch == 1
    assert last.diverged is not None and "at epoch 1, step" in last.diverged
    assert last.lr == 10.0 and last.val_accuracy is None
    # val_loss is the loss that tripped the guard: above 10x the first loss (ln 10 at init), or not finite.
    assert not math.isfinite(last.val_loss) or last.val_loss > 10 * 2.0
    # Stopped within the epoch (ceil(1437 / 64) = 23 batches), at the guard's first check after the trip.
    tripped_at = int(last.diverged.rsplit("step ", 1)[1])
    assert tripped_at <= len(grad_norms) <= CHECK_EVERY * math.ceil(tripped_at / CHECK_EVERY)
    assert len(grad_norms) < math.ceil(N_TRAIN / 64)


def test_divergence_factor_is_the_workloads() -> None:
    # The same run as above, once with the default guard and once with a guard so lax that only
    # a loss a trillion times the first, or NaN or inf, can stop it: it stops later, if at all.
    hp = dict(DEFAULTS, optimizer="sgd", lr=10.0, momentum=0.9)
    (strict,) = run(hp, epochs=1)
    (lax,) = run(hp, epochs=1, divergence_factor=1e12)
    assert strict.diverged is not None and "> 10x the first loss" in strict.diverged
    if lax.diverged is not None:
        assert int(lax.diverged.rsplit("step ", 1)[1]) > int(strict.diverged.rsplit("step ", 1)[1])
        if "is nan" in lax.diverged or "is inf" in lax.diverged:
            assert not math.isfinite(lax.val_loss)
        else:
            assert "> 1e+12x the first loss" in lax.diverged and lax.val_loss > 1e12 * 2.0


def test_tiny_lr_barely_moves_the_loss() -> None:
    # What the service diagnoses as too_slow: the loss is nearly flat from the start.
    results = run(dict(DEFAULTS, optimizer="sgd", lr=1e-6, hidden_size=32), epochs=5)
    assert len(results) == 5 and all(r.diverged is None for r in results)
    change = abs(results[-1].val_loss - results[0].val_loss) / results[0].val_loss
    assert change < 0.01
    # ...while a usual sgd lr does move it, so the bound above says something about the lr.
    usual = run(dict(DEFAULTS, optimizer="sgd", lr=1e-2, hidden_size=32), epochs=5)
    assert abs(usual[-1].val_loss - usual[0].val_loss) / usual[0].val_loss > 0.1


def test_guard_reasons() -> None:
    def trip(values: list[float], factor: float = 10.0) -> _Diverged | None:
        guard = _Guard(factor)
        for step, v in enumerate(values, 1):
            guard.add(step, 1, torch.tensor(v))
        try:
            guard.check(epoch=3)
        except _Diverged as d:
            return d
        return None

    assert trip([2.0, 19.9, 5.0]) is None
    d = trip([2.0, 1.0, 20.5, float("nan")])
    assert d is not None and d.reason == "training loss 20.5 > 10x the first loss 2 at epoch 3, step 3"
    assert d.loss == 20.5
    d = trip([2.0, float("nan"), 1e9])
    assert d is not None and d.reason == "training loss is nan at epoch 3, step 2" and math.isnan(d.loss)
    d = trip([float("inf")])
    assert d is not None and d.reason == "training loss is inf at epoch 3, step 1"
    assert trip([2.0, 3.0], factor=1.4) is not None
    # A first loss of 0 gives no multiple to compare with: only non-finite losses trip then.
    assert trip([0.0, 5.0]) is None


def test_nonfinite_validation_loss_counts_as_diverged(monkeypatch: pytest.MonkeyPatch) -> None:
    real: Callable = training_run._evaluate
    calls = []

    def evaluate(*args, **kwargs):  # type: ignore[no-untyped-def]
        loss_sum, correct = real(*args, **kwargs)
        calls.append(1)
        # Call 1 scores the untrained model, then one call per epoch: 3 is epoch 2's.
        return (loss_sum * float("inf") if len(calls) == 3 else loss_sum), correct

    # training_run makes every validation pass, the untrained model's included.
    monkeypatch.setattr(training_run, "_evaluate", evaluate)
    results = run(dict(GOOD, hidden_size=16), epochs=4)
    assert [r.epoch for r in results] == [1, 2]
    assert results[0].diverged is None
    assert results[1].diverged == "validation loss is inf at epoch 2" and results[1].val_loss == math.inf


def test_initial_validation_loss_comes_with_the_first_epoch(good_run: list[EpochResult]) -> None:
    # An untrained 10-class classifier scores about ln(10) = 2.30; training takes it far below.
    first = good_run[0].initial_val_loss
    assert first is not None and 1.8 < first < 2.8
    assert good_run[0].val_loss < first
    assert all(r.initial_val_loss is None for r in good_run[1:])


def test_regression_on_diabetes() -> None:
    hp = dict(DEFAULTS, optimizer="adam", lr=3e-3, hidden_size=32)
    results = run(hp, epochs=3, dataset="diabetes")
    assert len(results) == 3 and all(r.diverged is None for r in results)
    assert all(math.isfinite(r.val_loss) and r.val_loss >= 0 and r.val_accuracy is None for r in results)
    # Targets are standardized: predicting their mean scores about 1, a model that learns does
    # better; but diabetes is noisy (the best models explain about half the variance).
    assert 0.3 < results[-1].val_loss < 0.8


def test_validation_mse_is_the_mean_over_outputs() -> None:
    from worker.data import Split

    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
    y = torch.tensor([[1.0, 0.0], [3.0, 8.0], [2.0, 2.0]])  # squared errors: (0 + 4), (0 + 16), (4 + 4)
    split = Split(x, y, x, y, input_shape=(2,), n_outputs=2, task="regression")
    mse = torch.nn.functional.mse_loss
    loss_sum, correct = _evaluate(torch.nn.Identity(), split, mse, contextlib.nullcontext, chunk=2)
    # Summed per sample, each sample's MSE the mean over its 2 outputs: 2 + 8 + 4.
    assert loss_sum.item() == pytest.approx(14.0) and correct.item() == 0


def test_cnn_learns_digits() -> None:
    hp = dict(CNN_DEFAULTS, optimizer="adam", lr=3e-3, channels=8, n_blocks=2, dropout=0.1)
    results = run(hp, epochs=3, model="cnn")
    assert len(results) == 3 and all(r.diverged is None for r in results)
    assert results[-1].val_accuracy is not None and results[-1].val_accuracy > 0.3  # chance is 0.1
    assert results[-1].val_loss < results[0].val_loss


def test_bf16_runs_on_cpu() -> None:
    hp = dict(GOOD, hidden_size=32)
    bf16 = run(hp, epochs=1, precision="bf16")
    fp32 = run(hp, epochs=1)
    assert bf16[0].diverged is None and math.isfinite(bf16[0].val_loss) and math.isfinite(bf16[0].train_loss)
    # Same seed, same data: only the forward pass's precision differs, so the numbers do too.
    assert bf16[0].val_loss != fp32[0].val_loss
    assert bf16[0].val_loss == pytest.approx(fp32[0].val_loss, rel=0.05)


def test_batchnorm_needs_two_samples_per_batch() -> None:
    with pytest.raises(ValueError, match="batch_size >= 2"):
        run(dict(GOOD, batchnorm=True, batch_size=1), epochs=1)


def test_batchnorm_skips_a_last_batch_of_one(grad_norms: list[float]) -> None:
    # 1437 = 2 * 718 + 1: the last batch would hold one sample, which BatchNorm cannot train on.
    (result,) = run(dict(GOOD, batchnorm=True, batch_size=718, hidden_size=16), epochs=1)
    assert result.diverged is None and math.isfinite(result.train_loss)
    assert len(grad_norms) == 2


def test_cnn_rejects_tabular_input() -> None:
    # The service refuses this workload already; the trainer still says why if one gets through.
    workload = Workload(epochs=1, dataset="wine")
    workload.model = "cnn"
    with pytest.raises(ValueError, match="image-shaped"):
        list(train(workload, CNN_DEFAULTS, "cpu"))


# ---------------------------------------------------------------- checkpoints and resume

RESUMABLE = {
    # (hyperparameters, epochs, the epoch whose checkpoint the second run resumes from)
    "sgd-momentum-step": (dict(GOOD, optimizer="sgd", lr=0.05, momentum=0.9, schedule="step", step_size=1, gamma=0.5), 4, 2),
    # Resumed inside the warmup, so both the warmup and the cosine after it come from the checkpoint.
    "adam-cosine-warmup": (dict(GOOD, hidden_size=32, schedule="cosine", warmup_epochs=2), 5, 1),
    # patience 0 and a noisy LR: the plateau schedule cuts the LR after the resume point too.
    "adam-plateau": (dict(GOOD, hidden_size=32, lr=0.05, schedule="plateau", plateau_patience=0, warmup_epochs=1), 6, 3),
    "batchnorm-dropout": (dict(GOOD, hidden_size=32, batchnorm=True, dropout=0.4, n_layers=2), 4, 2),
}


def as_tuples(results: list[EpochResult]) -> list[tuple]:
    return [(r.epoch, r.val_loss, r.train_loss, r.val_accuracy, r.lr) for r in results]


@pytest.mark.parametrize("case", list(RESUMABLE))
def test_a_resumed_run_repeats_the_uninterrupted_one_exactly(case: str) -> None:
    hp, epochs, k = RESUMABLE[case]
    workload = Workload(epochs=epochs, seed=3)
    # The first run is interrupted after epoch k, keeping only that epoch's checkpoint.
    first = train(workload, hp, "cpu")
    for _ in range(k):
        next(first)
    saved = first.checkpoint()
    first.close()
    # Whatever ran in between (here: a whole run) moved torch's global RNG on.
    uninterrupted = list(train(workload, hp, "cpu"))
    resumed = train(workload, hp, "cpu", resume=saved)
    assert resumed.resumed_from == k
    rest = list(resumed)
    assert [r.epoch for r in rest] == list(range(k + 1, epochs + 1))
    # Exactly, not approximately: the same losses, accuracies and learning rates.
    assert as_tuples(rest) == as_tuples(uninterrupted[k:])
    assert as_tuples(resumed.history) == as_tuples(uninterrupted[:k])
    # The untrained model's loss comes with the first result of either run.
    assert rest[0].initial_val_loss == uninterrupted[0].initial_val_loss is not None
    if case == "adam-plateau":
        # The case means something only if the LR changed after the resume point.
        assert len({r.lr for r in rest}) > 1


def test_a_checkpoint_is_plain_data_for_weights_only_loading() -> None:
    import io

    run = train(Workload(epochs=3), dict(GOOD, hidden_size=16, schedule="plateau", warmup_epochs=1), "cpu")
    with pytest.raises(RuntimeError, match="no epoch"):
        run.checkpoint()
    next(run)
    saved = torch.load(io.BytesIO(run.checkpoint()), weights_only=True)
    assert saved["format"] == CHECKPOINT_FORMAT and saved["epoch"] == 1
    assert {"model", "optimizer", "schedule", "rng_cpu", "shuffle", "guard_first", "initial_val_loss", "history"} <= set(saved)
    assert saved["rng_cuda"] is None and saved["shuffle_device"] == "cpu"
    assert isinstance(saved["guard_first"], float) and saved["history"][0]["epoch"] == 1
    assert saved["schedule"]["warmup"] is not None and saved["schedule"]["plateau"]["num_bad_epochs"] == 0


def test_a_checkpoint_resumes_only_its_own_configuration() -> None:
    import io

    hp = dict(GOOD, hidden_size=16)
    run = train(Workload(epochs=2), hp, "cpu")
    next(run)
    saved = run.checkpoint()
    with pytest.raises(trainer.CheckpointError, match="other hyperparameters"):
        train(Workload(epochs=2), dict(hp, lr=0.1), "cpu", resume=saved)
    with pytest.raises(trainer.CheckpointError, match="other hyperparameters"):
        train(Workload(epochs=2, seed=1), hp, "cpu", resume=saved)
    with pytest.raises(trainer.CheckpointError, match="unreadable"):
        train(Workload(epochs=2), hp, "cpu", resume=saved[: len(saved) // 2])

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("this must never run",))

    evil = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "x": Evil()}, evil)
    with pytest.raises(trainer.CheckpointError, match="unreadable"):
        train(Workload(epochs=2), hp, "cpu", resume=evil.getvalue())


def test_a_checkpoint_after_the_last_epoch_resumes_to_nothing_left() -> None:
    hp = dict(GOOD, hidden_size=16)
    run = train(Workload(epochs=2), hp, "cpu")
    results = list(run)
    resumed = train(Workload(epochs=2), hp, "cpu", resume=run.checkpoint())
    assert list(resumed) == [] and as_tuples(resumed.history) == as_tuples(results)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_resumed_run_on_cuda_continues_to_rounding() -> None:
    import io

    hp, epochs, k = RESUMABLE["batchnorm-dropout"]
    workload = Workload(epochs=epochs, seed=3)
    first = train(workload, hp, "cuda")
    for _ in range(k):
        next(first)
    saved = first.checkpoint()
    first.close()
    assert torch.load(io.BytesIO(saved), weights_only=True)["rng_cuda"] is not None
    uninterrupted = list(train(workload, hp, "cuda"))
    rest = list(train(workload, hp, "cuda", resume=saved))
    # cuBLAS may sum in another order from run to run: equal to rounding, not bit for bit.
    assert [r.epoch for r in rest] == [r.epoch for r in uninterrupted[k:]]
    assert [r.val_loss for r in rest] == pytest.approx([r.val_loss for r in uninterrupted[k:]], rel=1e-4)
