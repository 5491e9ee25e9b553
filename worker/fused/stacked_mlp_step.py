"""The fused mlp's forward and backward by hand, for K members at once: what worker/mlp_step.py's
MlpStep does for one trial, with every product batched over the members (bmm, baddbmm).

Autograd over the stacked products cost a third of a fused step on small models (its graph and
bookkeeping, not arithmetic); here the gradients of cross-entropy (or MSE) are written straight
into the stacked parameters' `.grad` buffers, which stay the same tensors from step to step (the
stacked optimizer holds views of them). The formulas are MlpStep's, term for term (the loss
gradient as softmax / batch - onehot / batch, one add a batch), so a member's arithmetic is its
unfused run's up to the order of the sums inside the products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class StackedMlpStep:
    def __init__(self, params: list[torch.Tensor], *, classify: bool, n_outputs: int) -> None:
        self.weights = params[0::2]  # (K, out, in)
        self.biases = params[1::2]  # (K, out)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.weight_grads = [w.grad for w in self.weights]
        self.bias_grads = [b.grad for b in self.biases]
        self.classify, self.n_outputs = classify, n_outputs
        self._targets: torch.Tensor | None = None

    def start_epoch(self, y_epoch: torch.Tensor, batch_size: int) -> None:
        """The members' targets (K, n) of this epoch, in their batches' order."""
        if not self.classify:
            return
        n = y_epoch.shape[1]
        # -onehot(y) / (the row's batch length), as MlpStep.start_epoch.
        targets = F.one_hot(y_epoch, self.n_outputs).float().neg_()
        last = n // batch_size * batch_size
        targets[:, :last].div_(batch_size)
        targets[:, last:].div_(max(n - last, 1))
        self._targets = targets

    @torch.no_grad()
    def backward(self, xb: torch.Tensor, yb: torch.Tensor, start: int, masks: list[torch.Tensor | None]) -> torch.Tensor:
        """The members' batches xb (K, b, ...) and yb, rows [start, start + b) of their epochs:
        forward and backward, the gradients left in the parameters' .grad. Returns the K mean losses."""
        k, b = xb.shape[0], xb.shape[1]
        weights, biases = self.weights, self.biases
        h = xb.reshape(k, b, -1)
        inputs = [h]
        last = len(weights) - 1
        for i in range(last):
            h = torch.baddbmm(biases[i].unsqueeze(1), h, weights[i].transpose(1, 2)).relu_()
            if masks[i] is not None:
                h.mul_(masks[i])
            inputs.append(h)
        out = torch.baddbmm(biases[last].unsqueeze(1), h, weights[last].transpose(1, 2))
        if self.classify:
            assert self._targets is not None
            log_p = torch.log_softmax(out, 2)
            losses = log_p.gather(2, yb.unsqueeze(2)).squeeze(2).mean(1).neg_()
            d = torch.add(self._targets[:, start : start + b], log_p.exp_(), alpha=1.0 / b)
        else:
            diff = out - yb
            losses = diff.square().flatten(1).mean(1)
            d = diff.mul_(2.0 / diff[0].numel())
        for i in range(last, -1, -1):
            torch.bmm(d.transpose(1, 2), inputs[i], out=self.weight_grads[i])
            torch.sum(d, 1, out=self.bias_grads[i])
            if i > 0:
                # ReLU's gradient (zero where its output is) and the dropout mask's scaling.
                d = torch.ops.aten.threshold_backward(torch.bmm(d, weights[i]), inputs[i], 0)
                if masks[i - 1] is not None:
                    d.mul_(masks[i - 1])
        return losses
