"""A hand-written training step for the built-in MLP, for the small batches where autograd's
bookkeeping, not arithmetic, is most of a step.

At batch size 32 on the digits MLP (2 x 128) an eager PyTorch step costs about 520 µs on one CPU
core, of which the matrix products are about 100: the rest is the autograd graph built in the
forward pass and walked in the backward pass, nn.Module calls, dropout's `bernoulli_` (7 ns per
element on CPU), and `torch.optim`'s Python around a fused Adam kernel of under 20 µs.
`torch.compile` (inductor) made that step slower on CPU (835 µs, after a 19 s compile).

For a Flatten, then Linear + ReLU (+ Dropout) blocks, then a Linear, the backward pass is a few
dense ops per layer, written out here on detached views of the parameters (no autograd graph):

    forward   h_i = relu(h_{i-1} W_i^T + b_i) * m_i        (m_i: the dropout mask, scaled by 1/(1-p))
    backward  dW_i = d_i^T h_{i-1},  db_i = sum_rows d_i,  d_{i-1} = (d_i W_i) * m_{i-1} where h_{i-1} > 0

starting from d = (softmax(out) - onehot(y)) / batch for cross-entropy, or 2 (out - y) / numel for
the mean squared error: the gradients of F.cross_entropy and F.mse_loss with their default mean
reduction. The gradients land in each parameter's `.grad`, so gradient clipping and every
optimizer work unchanged; a fused Adam or AdamW is stepped through its kernel directly.

Dropout draws its masks as `uniform >= p` for many batches at once: the same Bernoulli
keep-probability 1 - p and scaling as nn.Dropout (relu(x) * m equals relu(x * m) for m >= 0, so
ReLU and Dropout in either order are the same block), seeded from torch's global RNG, so a
checkpoint between epochs still resumes exactly; but not the same random numbers as nn.Dropout
draws (see `uniform_source`).

`tests/test_mlp_step.py` checks the gradients against autograd's on the same masks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

# Dropout masks are drawn for this many values per layer at a time (4 MiB of float32): whole
# epochs of a small dataset in one call, bounded memory for a large one.
MASK_VALUES = 2**20


@dataclass(frozen=True)
class _Layer:
    linear: nn.Linear
    dropout: float  # the dropout after it (0 for none); the last layer's is always 0


def mlp_layers(model: nn.Module) -> list[_Layer] | None:
    """The model's Linear layers with the dropout of their block, when `model` is what
    worker.models.build_mlp builds without batchnorm: Flatten, then blocks of Linear, ReLU and an
    optional Dropout (ReLU and Dropout in either order), then a last Linear. None otherwise."""
    if not isinstance(model, nn.Sequential) or len(model) < 2 or not isinstance(model[0], nn.Flatten):
        return None
    if model[0].start_dim != 1 or model[0].end_dim != -1:
        return None
    layers: list[_Layer] = []
    rest = list(model)[1:]
    while rest:
        linear = rest.pop(0)
        if type(linear) is not nn.Linear or linear.bias is None:
            return None
        block = []
        while rest and type(rest[0]) is not nn.Linear:
            block.append(rest.pop(0))
        if not rest:
            if block:
                return None  # something after the last Linear
            layers.append(_Layer(linear, 0.0))
            break
        relus = [m for m in block if type(m) is nn.ReLU]
        dropouts = [m for m in block if type(m) is nn.Dropout]
        if len(relus) != 1 or len(dropouts) > 1 or len(relus) + len(dropouts) != len(block):
            return None
        layers.append(_Layer(linear, float(dropouts[0].p) if dropouts else 0.0))
    return layers


class MlpStep:
    """Training steps on the MLP `layers` (from `mlp_layers`), whose parameters `optimizer` holds.
    Call `start_epoch` with the epoch's shuffled targets, then for each batch in order `backward`
    (which returns the batch's mean loss as a tensor on the device: no sync) and `optimizer_step`,
    with anything that works on the gradients (clipping) in between."""

    def __init__(self, layers: list[_Layer], optimizer: torch.optim.Optimizer, *, classify: bool, n_outputs: int):
        self.layers = layers
        # Detached views of the parameters: they see every in-place update of the optimizer, and
        # ops on them record no autograd graph, without a no_grad context (3 µs a step) around.
        self.weights = [layer.linear.weight.detach() for layer in layers]
        self.weights_t = [w.t() for w in self.weights]
        self.biases = [layer.linear.bias.detach() for layer in layers]
        self.optimizer = optimizer
        self.classify = classify
        self.n_outputs = n_outputs
        self.params = [t for layer in layers for t in (layer.linear.weight, layer.linear.bias)]
        for p in self.params:
            # The backward pass writes into these buffers (out=); they are the parameters' .grad
            # for the whole run, so clipping and optimizers see them as usual.
            p.grad = torch.zeros_like(p)
        self.grads = [p.grad for p in self.params]
        self._adam = _FusedAdam.of(optimizer, self.params, self.grads)
        # Per batch of the epoch (split once, a view each: cheaper than slicing every step).
        self._targets: tuple[torch.Tensor, ...] = ()
        self._batch = 1
        self._masks: list[tuple[torch.Tensor, ...] | None] = []  # per layer, per batch of the window
        self._mask_rows = range(0)
        self._n_rows = 0

    def start_epoch(self, y_epoch: torch.Tensor, batch_size: int) -> None:
        """A new epoch whose targets, in the order the batches take them, are `y_epoch`, cut
        into batches of `batch_size` rows (the last one may be shorter)."""
        n = y_epoch.shape[0]
        if self.classify:
            # -onehot(y) / (the row's batch length), for the whole epoch: the loss gradient
            # (softmax - onehot) / batch is then one op a batch (torch.add with alpha).
            targets = F.one_hot(y_epoch, self.n_outputs).float().neg_()
            last = n // batch_size * batch_size  # where the last, shorter batch starts
            targets[:last].div_(batch_size)
            targets[last:].div_(max(n - last, 1))
            self._targets = targets.split(batch_size)
        self._batch = batch_size
        self._mask_rows = range(0)
        self._n_rows = n

    def _masks_for(self, start: int) -> list[torch.Tensor | None]:
        """The dropout masks of the batch that starts at row `start` of the epoch."""
        if start not in self._mask_rows:
            batch = self._batch
            rows = mask_window_rows(batch, max(layer.linear.out_features for layer in self.layers))
            end = min(start + rows, self._n_rows)
            self._mask_rows = range(start, end)
            uniform = uniform_source(self.layers[0].linear.weight.device)
            self._masks = [
                None
                if layer.dropout == 0
                else uniform(end - start, layer.linear.out_features)
                .ge_(layer.dropout)
                .mul_(1.0 / (1.0 - layer.dropout))
                .split(batch)
                for layer in self.layers[:-1]
            ]
        k = (start - self._mask_rows.start) // self._batch
        return [None if m is None else m[k] for m in self._masks]

    def backward(self, xb: torch.Tensor, yb: torch.Tensor, start: int) -> torch.Tensor:
        """The batch (xb, yb), rows [start, start + len(xb)) of the epoch: the forward and backward
        pass, leaving the gradients in the parameters' .grad. Returns the mean loss."""
        b = xb.shape[0]
        masks = self._masks_for(start)
        weights, weights_t, biases, grads = self.weights, self.weights_t, self.biases, self.grads
        h = xb.reshape(b, -1)
        inputs = [h]
        last = len(weights) - 1
        for i in range(last):
            h = torch.addmm(biases[i], h, weights_t[i]).relu_()
            if masks[i] is not None:
                h.mul_(masks[i])
            inputs.append(h)
        out = torch.addmm(biases[last], h, weights_t[last])
        if self.classify:
            log_p = torch.log_softmax(out, 1)
            loss = F.nll_loss(log_p, yb)
            d = torch.add(self._targets[start // self._batch], log_p.exp_(), alpha=1.0 / b)
        else:
            diff = out - yb
            loss = diff.square().mean()
            d = diff.mul_(2.0 / diff.numel())
        for i in range(last, -1, -1):
            torch.mm(d.t(), inputs[i], out=grads[2 * i])
            torch.sum(d, 0, out=grads[2 * i + 1])
            if i > 0:
                # ReLU's gradient (zero where its output is) and the dropout mask's scaling.
                d = torch.ops.aten.threshold_backward(torch.mm(d, weights[i]), inputs[i], 0)
                if masks[i - 1] is not None:
                    d.mul_(masks[i - 1])
        return loss

    def optimizer_step(self) -> None:
        if self._adam is None or not self._adam.step():
            self.optimizer.step()


def mask_window_rows(batch: int, widest: int) -> int:
    """How many rows of masks are drawn at once: whole batches, about MASK_VALUES values."""
    return max(batch, MASK_VALUES // widest // batch * batch)


def uniform_source(device: torch.device, generator: torch.Generator | None = None) -> Callable[[int, int], torch.Tensor]:
    """Uniform [0, 1) float32 draws for dropout masks, seeded from torch's global RNG (which a
    checkpoint saves), so the masks still follow the workload's seed and resume exactly.
    `generator`: a torch generator to draw from instead of the global one (a fused member's).

    On CPU from numpy's PCG64: 2 ns a value here, against 4 for torch's mt19937 (`torch.rand`),
    whose draws were a tenth of a batch-32 step. On other devices, torch's own generator there."""
    if device.type != "cpu":
        return lambda rows, width: torch.rand(rows, width, device=device, generator=generator)
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64, generator=generator))
    numpy_generator = np.random.Generator(np.random.PCG64(seed))
    return lambda rows, width: torch.from_numpy(numpy_generator.random((rows, width), dtype=np.float32))


class _FusedAdam:
    """torch's fused Adam/AdamW kernel called directly on the optimizer's own state: what
    `optimizer.step()` ends up calling, without the 80 µs of grouping, checks and hooks around it
    (measured at batch 32). Only for a plain single-group Adam or AdamW with fused=True; a run's
    first step goes through `optimizer.step()`, which creates the state this then steps."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        self.optimizer = optimizer
        self.group = optimizer.param_groups[0]
        self.params = params
        self.grads = grads  # the parameters' .grad, which stay the same tensors
        self.kernel = torch._fused_adamw_ if self.group.get("decoupled_weight_decay") else torch._fused_adam_
        # A run's first step goes through optimizer.step(): it creates the state if there is
        # none, and marks the optimizer as stepped for the LR scheduler's order check.
        self._first = True
        # The optimizer's exp_avg, exp_avg_sq and step tensors, read once after that first step.
        self._state: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None = None
        # A list of tensors: the fastest of _foreach_add_'s overloads here (4 µs; 10 with a scalar).
        self._ones = [torch.ones((), device=params[0].device)] * len(params)

    @classmethod
    def of(
        cls, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> _FusedAdam | None:
        if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW) or len(optimizer.param_groups) != 1:
            return None
        group = optimizer.param_groups[0]
        if not group.get("fused") or group.get("amsgrad") or group.get("maximize") or group.get("capturable"):
            return None
        if group.get("differentiable") or {id(p) for p in group["params"]} != {id(p) for p in params}:
            return None
        if not hasattr(torch, "_fused_adam_") or not hasattr(torch, "_fused_adamw_"):
            return None
        return cls(optimizer, params, grads)

    def step(self) -> bool:
        """One Adam step; False (nothing done) when `optimizer.step()` must take it instead."""
        group = self.group
        if isinstance(group["lr"], torch.Tensor) or _has_hooks(self.optimizer):
            return False
        if self._first:
            self._first = False
            return False
        if self._state is None:
            states = [self.optimizer.state[p] for p in self.params]
            self._state = (
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states],
            )
        exp_avgs, exp_avg_sqs, steps = self._state
        torch._foreach_add_(steps, self._ones)
        beta1, beta2 = group["betas"]
        self.kernel(
            self.params,
            self.grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            amsgrad=False,
            lr=group["lr"],
            beta1=float(beta1),
            beta2=float(beta2),
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )
        return True


def _has_hooks(optimizer: torch.optim.Optimizer) -> bool:
    return bool(
        optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or _global_optimizer_pre_hooks
        or _global_optimizer_post_hooks
    )
