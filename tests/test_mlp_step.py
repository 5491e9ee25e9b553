"""The hand-written MLP step (worker/mlp_step.py) against autograd and torch.optim, on CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import worker.trainer as trainer
from service.spec import MLP_PARAMS, Workload
from worker.mlp_step import MlpStep, _FusedAdam, mlp_layers
from worker.models import build_cnn, build_mlp
from worker.optim import build_optimizer

DEFAULTS = {name: rule.default for name, rule in MLP_PARAMS.items()}
BLOCKS = [
    ["linear", "batchnorm", "relu", "dropout"],
    ["linear", "dropout", "relu", "batchnorm"],
    ["linear", "relu", "batchnorm", "dropout"],
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mlp(n_layers: int = 2, dropout: float = 0.3, *, block: list[str] = BLOCKS[0], outputs: int = 5) -> nn.Sequential:
    torch.manual_seed(0)
    return build_mlp(12, outputs, hidden_size=16, n_layers=n_layers, dropout=dropout, block=block)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("dropout", [0.0, 0.4])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_the_mlp_without_batchnorm_is_recognised(block: list[str], dropout: float, n_layers: int) -> None:
    model = mlp(n_layers, dropout, block=block)
    layers = mlp_layers(model)
    assert layers is not None and len(layers) == n_layers + 1
    assert [layer.dropout for layer in layers] == [dropout] * n_layers + [0.0]
    assert [layer.linear for layer in layers] == [m for m in model if isinstance(m, nn.Linear)]


def test_other_models_keep_autograd() -> None:
    assert mlp_layers(build_mlp(12, 5, hidden_size=16, n_layers=2, dropout=0.3, batchnorm=True)) is None
    assert mlp_layers(build_cnn((1, 8, 8), 10, channels=4, n_blocks=1, kernel_size=3, dropout=0.2)) is None
    assert mlp_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))) is None
    assert mlp_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 2))) is None
    assert mlp_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU())) is None
    assert mlp_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))) is None


def autograd_reference(
    model: nn.Sequential, masks: list[torch.Tensor | None], xb: torch.Tensor, yb: torch.Tensor, classify: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loss and parameter gradients autograd gives for the same forward pass and masks."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    h = xb.reshape(xb.shape[0], -1)
    for linear, mask in zip(linears[:-1], masks):
        h = F.relu(linear(h))
        if mask is not None:
            h = h * mask
    out = linears[-1](h)
    loss = F.cross_entropy(out, yb) if classify else F.mse_loss(out, yb)
    params = [t for linear in linears for t in (linear.weight, linear.bias)]
    return loss.detach(), list(torch.autograd.grad(loss, params))


@pytest.mark.parametrize("classify", [True, False], ids=["cross-entropy", "mse"])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_gradients_are_autograds(classify: bool, dropout: float, n_layers: int) -> None:
    outputs = 5 if classify else 3
    model = mlp(n_layers, dropout, block=BLOCKS[1], outputs=outputs)
    optimizer = build_optimizer(model.parameters(), dict(DEFAULTS, optimizer="sgd", lr=0.1))
    layers = mlp_layers(model)
    assert layers is not None
    step = MlpStep(layers, optimizer, classify=classify, n_outputs=outputs)
    n, batch = 23, 8  # batches of 8, 8 and a last one of 7
    x = torch.randn(n, 3, 4)  # image-shaped: flattened like nn.Flatten does
    y = torch.randint(0, outputs, (n,)) if classify else torch.randn(n, outputs)
    step.start_epoch(y, batch)
    for start in range(0, n, batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        masks = step._masks_for(start)
        loss = step.backward(xb, yb, start)
        expected_loss, expected = autograd_reference(model, masks, xb, yb, classify)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
        for p, grad in zip(step.params, expected):
            assert p.grad is not None
            torch.testing.assert_close(p.grad, grad, rtol=1e-5, atol=1e-6)
        # Something to compare: the gradients are not all zero.
        assert any(float(p.grad.abs().sum()) > 0 for p in step.params)


def test_dropout_masks_keep_1_minus_p_scaled_and_follow_the_seed() -> None:
    model = mlp(2, 0.3, outputs=5)
    layers = mlp_layers(model)
    assert layers is not None
    step = MlpStep(layers, torch.optim.SGD(model.parameters(), lr=0.1), classify=True, n_outputs=5)
    y = torch.zeros(4000, dtype=torch.long)

    def masks_of(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        step.start_epoch(y, 4000)
        return [m for m in step._masks_for(0) if m is not None]

    first, again, other = masks_of(1), masks_of(1), masks_of(2)
    assert len(first) == 2
    for mask in first:
        assert mask.unique().tolist() == [0.0, pytest.approx(1 / 0.7)]
        kept = float((mask > 0).float().mean())
        assert abs(kept - 0.7) < 0.01  # 64,000 draws: the standard error is 0.0018
    assert not torch.equal(first[0], first[1])  # each layer draws its own
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_masks_are_drawn_in_bounded_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.mlp_step

    monkeypatch.setattr(worker.mlp_step, "MASK_VALUES", 16 * 16)  # 16 rows of width 16 at a time
    model = mlp(1, 0.5, outputs=5)
    layers = mlp_layers(model)
    assert layers is not None
    step = MlpStep(layers, torch.optim.SGD(model.parameters(), lr=0.1), classify=True, n_outputs=5)
    step.start_epoch(torch.zeros(50, dtype=torch.long), 5)
    seen = []
    for start in range(0, 50, 5):
        (mask,) = step._masks_for(start)
        assert mask is not None and mask.shape == (5, 16)
        seen.append(mask)
        assert len(step._mask_rows) <= 15  # whole batches only, 3 of 5 rows
    assert len({tuple(m.flatten().tolist()) for m in seen}) == len(seen)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_the_fused_kernel_steps_exactly_as_torch_optim(name: str) -> None:
    hp = dict(DEFAULTS, optimizer=name, lr=3e-3, weight_decay=0.01, beta1=0.8)
    torch.manual_seed(0)
    ours = [torch.randn(16, 12, requires_grad=True), torch.randn(16, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    mine, reference = build_optimizer(ours, hp), build_optimizer(theirs, hp)
    for p in ours:
        p.grad = torch.zeros_like(p)
    adam = _FusedAdam.of(mine, ours, [p.grad for p in ours])
    assert adam is not None
    direct = 0
    for i in range(6):
        grads = [torch.randn_like(p) for p in ours]
        for p, q, g in zip(ours, theirs, grads):
            p.grad.copy_(g)  # type: ignore[union-attr]
            q.grad = g.clone()
        if i == 3:
            for group in (mine.param_groups[0], reference.param_groups[0]):
                group["lr"] = 1e-3  # a schedule's change between epochs
        if adam.step():
            direct += 1
        else:
            mine.step()
        reference.step()
        for p, q in zip(ours, theirs):
            assert torch.equal(p, q)
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(mine.state[p][key], reference.state[q][key])
    assert direct == 5  # all but the first, which made the state


def test_hooks_and_other_optimizers_go_through_torch_optim() -> None:
    params = [torch.randn(4, 4, requires_grad=True)]
    params[0].grad = torch.ones(4, 4)
    grads = [params[0].grad]
    assert _FusedAdam.of(torch.optim.SGD(params, lr=0.1), params, grads) is None
    assert _FusedAdam.of(torch.optim.Adam(params, fused=False), params, grads) is None
    assert _FusedAdam.of(torch.optim.Adam(params, fused=True, amsgrad=True), params, grads) is None
    optimizer = torch.optim.Adam(params, fused=True)
    adam = _FusedAdam.of(optimizer, params, grads)
    assert adam is not None
    calls = []
    optimizer.register_step_pre_hook(lambda *args: calls.append(1))
    for _ in range(3):
        assert not adam.step()
        optimizer.step()
    assert len(calls) == 3


# ---------------------------------------------------------------- inside the trainer

GOOD = dict(DEFAULTS, lr=3e-3, batch_size=50, hidden_size=32, n_layers=2)


def losses(hp: dict, fast_step: bool, epochs: int = 3) -> list[float]:
    return [r.val_loss for r in trainer.train(Workload(epochs=epochs, seed=2, fast_step=fast_step), hp, "cpu")]


@pytest.mark.parametrize(
    "hp",
    [
        dict(GOOD, dropout=0.0, optimizer="adam"),
        dict(GOOD, dropout=0.0, optimizer="sgd", lr=0.05, momentum=0.9, schedule="step", step_size=1, gamma=0.5),
        dict(GOOD, dropout=0.0, optimizer="adamw", weight_decay=0.05, grad_clip=0.5),
    ],
    ids=["adam", "sgd-momentum-step", "adamw-clipped"],
)
def test_without_dropout_the_trainer_learns_as_with_autograd(hp: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = MlpStep.backward

    def counted(self, *args):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(MlpStep, "backward", counted)
    slow = losses(hp, fast_step=False)
    assert calls == []
    fast = losses(hp, fast_step=True)
    assert len(calls) == 3 * math.ceil(1437 / 50)  # every batch, the last one of 37 included
    # The same initial weights, shuffles and arithmetic up to rounding.
    assert fast == pytest.approx(slow, rel=1e-4)
    assert fast[-1] < fast[0]


def test_with_dropout_the_fast_step_learns_digits() -> None:
    hp = dict(GOOD, dropout=0.4, optimizer="adam", hidden_size=64)
    fast, slow = losses(hp, True, epochs=5), losses(hp, False, epochs=5)
    assert fast != slow  # other masks: not the same run
    # Both learn, to about the same loss (ln 10 = 2.30 is guessing).
    assert fast[-1] < 0.5 and slow[-1] < 0.5
    assert fast[-1] == pytest.approx(slow[-1], rel=0.5)


def test_regression_runs_through_the_fast_step() -> None:
    results = list(
        trainer.train(Workload(epochs=3, seed=0, dataset="diabetes"), dict(GOOD, dropout=0.2, optimizer="adam"), "cpu")
    )
    assert [r.epoch for r in results] == [1, 2, 3] and results[-1].val_accuracy is None
    assert results[-1].val_loss < results[0].initial_val_loss  # type: ignore[operator]
