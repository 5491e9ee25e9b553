"""Many trials of one architecture trained as one batched model (README, "Fused trials").

    group = FusedTraining(workload, "cpu")
    group.add("trial-1", hp1); group.add("trial-2", hp2)      # hps with one fusion_key
    while group.members:
        for key, result in group.run_epoch().items():        # one EpochResult per member
            ...report it; group.drop(key) if pruned; group.checkpoint(key) for its bytes

Each member is its trial's own run (worker/fused/member.py): same initial weights, same data
order, same dropout masks and the same optimizer and LR schedule as `worker.trainer.train` with
its hyperparameters would use, so it yields the same losses to float rounding, and its
checkpoint is the unfused trainer's: it resumes fused or alone. What the members share is each
step's kernels: one forward and backward over the stack (worker/fused/stacked_models.py) and one
optimizer step with per-member hyperparameters (worker/fused/stacked_optim.py).

Members join and leave between epochs only (add, drop, and those that finished or diverged leave
on their own), so they may be at different epochs. A member that diverges within an epoch is
masked (its losses no longer read, its result held back) until the epoch ends; the stack is
then compacted, and rebuilt whenever the members change.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from service.spec import Workload
from service.spec.fusion import fusion_key
from worker.data import load_split
from worker.divergence_guard import CHECK_EVERY, _Diverged
from worker.fused.masks import bernoulli_mask
from worker.fused.member import Member, new_member, result, snapshot
from worker.fused.stacked_mlp_step import StackedMlpStep
from worker.fused.stacked_models import StackedShape, stack_parameters
from worker.fused.stacked_optim import StackedOptimizer, clip_per_member
from worker.scoring import _eval_chunk
from worker.training_run import EpochResult


class FusedTraining:
    def __init__(self, workload: Workload, device: str | torch.device, *, data_root: Path | None = None) -> None:
        if not workload.is_builtin:
            raise ValueError(f"only the built-in models are fused, not {workload.model!r}")
        self.workload = workload
        self.device = torch.device(device)
        self.data = load_split(
            workload.dataset,
            val_fraction=workload.val_fraction,
            seed=workload.seed,
            device=self.device,
            data_root=data_root,
        )
        self.members: dict[Any, Member] = {}
        self.key: tuple[Any, ...] | None = None
        self._stacked: list[Member] = []  # the members in stack order, as last stacked
        self._params: list[torch.Tensor] = []
        self._optimizer: StackedOptimizer | None = None
        self._shape: StackedShape | None = None
        self._mlp_step: StackedMlpStep | None = None  # the mlp's forward and backward by hand

    # -- membership (between epochs) ------------------------------------------------------------

    def add(self, key: Any, hp: dict[str, Any], *, resume: bytes | None = None) -> None:
        """A trial joins the group at the next epoch; ValueError if it cannot be fused with it.
        `resume`: its checkpoint bytes (fused or not); CheckpointError if they cannot be resumed."""
        if key in self.members:
            raise ValueError(f"{key!r} is already in the group")
        key_of = fusion_key(self.workload, hp)
        if key_of is None or (self.key is not None and self.members and key_of != self.key):
            raise ValueError(f"trial {key!r} cannot be fused with this group (fusion key {key_of})")
        member = new_member(key, self.workload, hp, self.data, self.device, resume=resume)
        if member.finished:
            raise ValueError(f"trial {key!r} has already run all {self.workload.epochs} epochs")
        if self._shape is None:
            self._shape = StackedShape(self.workload.model, member.run.model)
        self.key = key_of
        self.members[key] = member

    def drop(self, key: Any) -> None:
        """The trial leaves (pruned, its lease lost, stopped): its tensors go at the next epoch."""
        self.members.pop(key, None)

    def checkpoint(self, key: Any) -> bytes:
        """The member's state after its last finished epoch, in the unfused trainer's format
        (`worker.trainer.Training.checkpoint`)."""
        member = self.members.get(key) or next((m for m in self._stacked if m.key == key), None)
        if member is None:
            raise KeyError(key)
        optimizer = member.run.optimizer
        if member in self._stacked and self._optimizer is not None:
            state = self._optimizer.member_state(self._stacked.index(member), optimizer)
        else:
            state = {}
        buffer = io.BytesIO()
        torch.save(snapshot(member, state), buffer)
        return buffer.getvalue()

    def parameter_count(self) -> int:
        """One member's trainable size (the `params_m` metric)."""
        member = next(iter(self.members.values()))
        return sum(p.numel() for p in member.run.model.parameters())

    def _restack(self) -> None:
        members = list(self.members.values())
        if members == self._stacked:
            return
        old_opt, old_rows = self._optimizer, {id(m): j for j, m in enumerate(self._stacked)}
        for m in members:
            if id(m) in old_rows and old_opt is not None:
                m.exported = old_opt.export(old_rows[id(m)])
        self._params = stack_parameters([m.run.model for m in members])
        if self.workload.model == "mlp":
            data = self.data
            self._mlp_step = StackedMlpStep(self._params, classify=data.task == "classification", n_outputs=data.n_outputs)
        first = members[0].run.hp
        self._optimizer = StackedOptimizer(first["optimizer"], self._params, nesterov=bool(first.get("nesterov")))
        for j, m in enumerate(members):
            if m.exported is not None:
                self._optimizer.import_member(j, m.exported)
                m.exported = None
            elif m.run.optimizer.state:
                # Resumed from a checkpoint: torch's loaded state, into the stack.
                self._optimizer.load_member_state(j, m.run.optimizer)
                m.run.optimizer.state.clear()
        self._stacked = members

    # -- one epoch of every member ---------------------------------------------------------------

    def run_epoch(self) -> dict[Any, EpochResult]:
        """Train every member one epoch (each its own next one); their results by key. Members
        that have run their last epoch or diverged leave the group."""
        if not self.members:
            return {}
        self._restack()
        members, params, optimizer, shape = self._stacked, self._params, self._optimizer, self._shape
        assert optimizer is not None and shape is not None
        data, k = self.data, len(members)
        batch = int(members[0].run.hp["batch_size"])
        n_train = data.x_train.shape[0]
        starts = list(range(0, n_train, batch))
        for m in members:
            m.lr = float(m.run.optimizer.param_groups[0]["lr"])
            m.run.guard.new_epoch()
            m.diverged = None
        optimizer.set_hyperparameters([m.run.optimizer.param_groups[0] for m in members])
        clips = torch.tensor([m.grad_clip for m in members])
        clipping = bool((clips > 0).any())
        orders = torch.stack(
            [torch.randperm(n_train, device=self.device, generator=m.run.shuffle) for m in members]
        )
        x_epoch, y_epoch = data.x_train[orders], data.y_train[orders]
        classify = data.task == "classification"
        by_hand = self._mlp_step
        if by_hand is not None:
            by_hand.start_epoch(y_epoch, batch)
        window_masks: list[torch.Tensor | None] = []
        window_start = window_end = 0
        pending: list[torch.Tensor] = []

        for step, start in enumerate(starts, 1):
            xb, yb = x_epoch[:, start : start + batch], y_epoch[:, start : start + batch]
            b = xb.shape[1]
            if shape.kind == "mlp":
                if start >= window_end:
                    window_start = start
                    window_masks, window_end = self._window(members, start, n_train)
                offset = start - window_start
                masks = [None if w is None else w[:, offset : offset + b] for w in window_masks]
            else:
                masks = [self._cnn_masks(members, b, int(params[-2].shape[-1]))]
            if by_hand is not None:
                losses = by_hand.backward(xb, yb, start, masks)
            else:
                out = shape.forward(params, xb, masks)
                if classify:
                    losses = F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none").view(k, b).mean(1)
                else:
                    losses = (out - yb).square().flatten(1).mean(1)
                for p in params:
                    if p.grad is not None:
                        p.grad.zero_()  # in place: the optimizer holds views of the gradients
                losses.sum().backward()
            if clipping:
                clip_per_member([p.grad for p in params], clips)
            optimizer.step()
            pending.append(losses.detach())
            for m in members:
                if m.diverged is None:
                    m.run.guard.add_read_elsewhere(step, b)
            if len(pending) >= CHECK_EVERY and step < len(starts):
                self._check(members, torch.stack(pending).tolist())
                pending = []
        val_sum, correct = self._evaluate(params, shape, k)
        sums = torch.cat([val_sum, correct, *pending]).tolist()
        self._check(members, [sums[2 * k + i * k : 2 * k + (i + 1) * k] for i in range(len(pending))])
        return self._results(members, sums[:k], sums[k : 2 * k], classify)

    def _window(self, members: list[Member], start: int, n_train: int) -> tuple[list[torch.Tensor | None], int]:
        """The stacked masks of the mask window starting at row `start` (mlp), and where it ends."""
        rows = members[0].window.rows
        drawn = [m.window.window(start, n_train) for m in members]
        end = min(start + rows, n_train)
        layers: list[torch.Tensor | None] = []
        for i, width in enumerate(members[0].window.hidden):
            if all(d is None for d in drawn):
                layers.append(None)
                continue
            ones = torch.ones(end - start, width, device=self.device)
            layers.append(torch.stack([ones if d is None else d[i] for d in drawn]))
        return layers, end

    def _cnn_masks(self, members: list[Member], b: int, features: int) -> torch.Tensor | None:
        if all(m.dropout == 0 for m in members):
            return None
        ones = torch.ones(b, features, device=self.device)
        return torch.stack(
            [ones if m.dropout == 0 else bernoulli_mask(m.rng, m.dropout, (b, features), self.device) for m in members]
        )

    def _check(self, members: list[Member], rows: list[list[float]]) -> None:
        """Each member's divergence guard over its pending losses (`rows`: per batch, per member)."""
        for j, m in enumerate(members):
            if m.diverged is not None:
                continue
            guard = m.run.guard
            try:
                guard.check(m.epoch + 1, [row[j] for row in rows])
            except _Diverged as d:
                m.diverged = (d.reason, d.loss, guard.loss_sum / max(guard.samples, 1))

    @torch.no_grad()
    def _evaluate(self, params: list[torch.Tensor], shape: StackedShape, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's summed validation loss and correct predictions, (K,) each, on the device."""
        data = self.data
        x, y = data.x_val, data.y_val
        chunk = max(1, _eval_chunk(self.workload, self._stacked[0].run.hp) // k)
        loss_sum = torch.zeros(k, device=x.device)
        correct = torch.zeros(k, device=x.device)
        detached = [p.detach() for p in params]
        for start in range(0, x.shape[0], chunk):
            xb, yb = x[start : start + chunk], y[start : start + chunk]
            out = shape.forward(detached, xb.unsqueeze(0).expand(k, *xb.shape), [None] * len(params))
            if data.task == "classification":
                n = xb.shape[0]
                loss_sum += F.cross_entropy(out.flatten(0, 1), yb.repeat(k), reduction="none").view(k, n).sum(1)
                correct += (out.argmax(dim=2) == yb).sum(1)
            else:
                loss_sum += (out - yb).square().mean(2).sum(1)
        return loss_sum, correct

    def _results(
        self, members: list[Member], val_sums: list[float], corrects: list[float], classify: bool
    ) -> dict[Any, EpochResult]:
        n_val = self.data.x_val.shape[0]
        results: dict[Any, EpochResult] = {}
        for j, m in enumerate(members):
            run = m.run
            if m.diverged is not None:
                reason, loss, train_loss = m.diverged
                results[m.key] = result(m, val_loss=loss, train_loss=train_loss, val_accuracy=None, diverged=reason)
                self.members.pop(m.key, None)
                continue
            out = result(
                m,
                val_loss=val_sums[j] / n_val,
                train_loss=run.guard.loss_sum / run.guard.samples,
                val_accuracy=corrects[j] / n_val if classify else None,
            )
            results[m.key] = out
            if not run.end_epoch(out) or m.finished:
                self.members.pop(m.key, None)
        return results
