"""One run of the built-in trainer between its epochs (worker/trainer.py sets it up): the state
the epochs advance and a checkpoint saves and restores, and the epoch loop itself."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from service.spec import Workload
from worker.checkpoint import CHECKPOINT_FORMAT, CheckpointError
from worker.data import Split
from worker.divergence_guard import _Diverged, _Guard
from worker.mlp_step import MlpStep, mlp_layers
from worker.models import uses_batchnorm
from worker.schedules import lr_of
from worker.scoring import _autocast, _eval_chunk, _evaluate, _loss_fn


@dataclass
class EpochResult:
    epoch: int  # 1-based, so it can be reported directly as the pruner's step
    val_loss: float
    train_loss: float
    val_accuracy: float | None  # None for regression (and for an epoch cut short by divergence)
    lr: float  # the learning rate used during this epoch
    # Set on the last result when the divergence guard fired; a human-readable reason. val_loss
    # is then the loss that tripped the guard, which may be finite (a loss far above the first).
    diverged: str | None = None
    # On the first result a run yields (epoch 1, or the first epoch after a resume): the untrained
    # model's validation loss. The service's curve diagnosis judges "barely moved from the start"
    # against it (HYPERPARAMETERS.md, loss curves).
    initial_val_loss: float | None = None


@dataclass(eq=False)
class _Run:
    """Everything one run holds between epochs: what the epochs advance and a checkpoint saves."""

    workload: Workload
    hp: dict[str, Any]
    device: torch.device
    data: Split
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any  # worker.schedules.LrSchedule
    shuffle: torch.Generator
    guard: _Guard
    config: str
    epoch: int = 0  # the last finished epoch
    initial_val_loss: float | None = None
    resumed_from: int | None = None
    history: list[EpochResult] = field(default_factory=list)

    def score_untrained(self) -> None:
        """The untrained model's validation loss, handed out with the run's first result."""
        # One validation pass before any step: a single extra sync per trial.
        data = self.data
        initial_sum, _ = _evaluate(
            self.model, data, _loss_fn(data), _autocast(self.workload, self.device), _eval_chunk(self.workload, self.hp)
        )
        self.initial_val_loss = initial_sum.item() / data.x_val.shape[0]

    def snapshot(self) -> dict[str, Any]:
        if self.epoch == 0:
            raise RuntimeError("no epoch has finished yet: nothing to checkpoint")
        cuda = self.device.type == "cuda"
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if cuda else None,
            "shuffle": self.shuffle.get_state(),
            "shuffle_device": self.device.type,
            "guard_first": self.guard.first,
            "initial_val_loss": self.initial_val_loss,
            "history": [asdict(r) for r in self.history],
        }

    def restore(self, saved: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.schedule.load_state_dict(saved["schedule"])
            torch.set_rng_state(saved["rng_cpu"])
            if self.device.type == "cuda" and saved["rng_cuda"] is not None:
                torch.cuda.set_rng_state(saved["rng_cuda"], self.device)
            if saved["shuffle_device"] == self.device.type:
                self.shuffle.set_state(saved["shuffle"])
            else:
                # Saved on another kind of device, whose generator state does not fit this one's:
                # a shuffle order fixed by the seed and the epoch (the run goes on, not identically).
                self.shuffle.manual_seed((self.workload.seed + int(saved["epoch"])) % 2**63)
            first = saved["guard_first"]
            self.guard.first = None if first is None else float(first)
            self.initial_val_loss = saved["initial_val_loss"]
            self.epoch = int(saved["epoch"])
            self.history = [EpochResult(**record) for record in saved["history"]]
        except (CheckpointError, MemoryError, torch.cuda.OutOfMemoryError):
            raise  # out of memory is the trial's failure (reason oom), not the checkpoint's
        except Exception as exc:  # a state dict of another shape, a missing key
            raise CheckpointError(f"cannot resume from the checkpoint: {type(exc).__name__}: {exc}") from None
        self.resumed_from = self.epoch

    def fast_step(self) -> MlpStep | None:
        """The hand-written MLP step (worker/mlp_step.py) when the workload allows it: the mlp
        without batchnorm, in fp32, unless the workload turned it off (`fast_step: false`)."""
        if not self.workload.fast_step or self.workload.model != "mlp" or self.workload.precision != "fp32":
            return None
        layers = mlp_layers(self.model)
        if layers is None:
            return None
        return MlpStep(
            layers, self.optimizer, classify=self.data.task == "classification", n_outputs=self.data.n_outputs
        )

    def epochs(self) -> Iterator[EpochResult]:
        workload, data, model, optimizer, guard = self.workload, self.data, self.model, self.optimizer, self.guard
        batch_size = int(self.hp["batch_size"])
        params = [p for p in model.parameters() if p.requires_grad]
        grad_clip = float(self.hp.get("grad_clip") or 0.0)
        classify = data.task == "classification"
        loss_fn = _loss_fn(data)
        autocast = _autocast(workload, self.device)
        eval_chunk = _eval_chunk(workload, self.hp)
        n_train = data.x_train.shape[0]
        starts = list(range(0, n_train, batch_size))
        if uses_batchnorm(model) and len(starts) > 1 and n_train - starts[-1] == 1:
            # A last batch of one sample would make BatchNorm fail; it is left out of the epoch
            # (the shuffle puts those samples in other batches in other epochs).
            starts.pop()
        # Handed out with the first result this run yields (see EpochResult).
        initial_val_loss = self.initial_val_loss
        fast = self.fast_step()

        for epoch in range(self.epoch + 1, workload.epochs + 1):
            lr = lr_of(optimizer)
            model.train()
            guard.new_epoch()
            # One gather per epoch; each batch is then a view (a slice), which keeps batch_size=1
            # cheap: no per-batch index tensor, no DataLoader, no host round trip.
            order = torch.randperm(n_train, device=self.device, generator=self.shuffle)
            x_epoch, y_epoch = data.x_train[order], data.y_train[order]
            if fast is not None:
                fast.start_epoch(y_epoch, batch_size)
            try:
                for step, start in enumerate(starts, 1):
                    xb = x_epoch[start : start + batch_size]
                    yb = y_epoch[start : start + batch_size]
                    if fast is not None:
                        loss = fast.backward(xb, yb, start)
                    else:
                        with autocast():
                            out = model(xb)
                        # The loss in float32 whatever the forward pass ran in.
                        loss = loss_fn(out.float(), yb)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                    if grad_clip > 0:
                        # Clip by global norm (HYPERPARAMETERS.md, Regularisation: "tames the steep
                        # cliffs that cause exploding gradients"); computed on the device, no sync.
                        nn.utils.clip_grad_norm_(params, grad_clip)
                    if fast is not None:
                        fast.optimizer_step()
                    else:
                        optimizer.step()
                    guard.add(step, xb.shape[0], loss)
                    if guard.due() and step < len(starts):
                        guard.check(epoch)
                val_sum, correct = _evaluate(model, data, loss_fn, autocast, eval_chunk)
                # The epoch's last synchronisation: the remaining batch losses and the validation sums.
                values = torch.stack([val_sum, correct, *guard.pending()]).tolist()
                guard.check(epoch, values[2:])
            except _Diverged as d:
                # The reason and loss, not the exception: it would hold its traceback, and so the frames.
                diverged: tuple[str, float] | None = (d.reason, d.loss)
            else:
                diverged = None
            if diverged is not None:
                yield EpochResult(
                    epoch=epoch,
                    val_loss=diverged[1],
                    train_loss=guard.loss_sum / max(guard.samples, 1),
                    val_accuracy=None,
                    lr=lr,
                    diverged=diverged[0],
                    initial_val_loss=initial_val_loss,
                )
                return
            n_val = data.x_val.shape[0]
            val_loss = values[0] / n_val
            result = EpochResult(
                epoch=epoch,
                val_loss=val_loss,
                train_loss=guard.loss_sum / guard.samples,
                val_accuracy=values[1] / n_val if classify else None,
                lr=lr,
                initial_val_loss=initial_val_loss,
            )
            initial_val_loss = None
            if not self.end_epoch(result):
                yield result
                return
            yield result

    def end_epoch(self, result: EpochResult) -> bool:
        """Book a finished epoch (before its result is handed out, so the caller sees it done):
        the LR schedule moves to the next epoch's LR, and the run's epoch and history advance to
        what a checkpoint taken now saves. False, with `result.diverged` set and nothing booked,
        when the validation loss is not finite. (The fused trainer books its members' epochs here too.)"""
        if not math.isfinite(result.val_loss):
            result.diverged = f"validation loss is {result.val_loss} at epoch {result.epoch}"
            return False
        if result.epoch < self.workload.epochs:
            self.schedule.epoch_end(result.val_loss)
        self.epoch = result.epoch
        self.history.append(EpochResult(result.epoch, result.val_loss, result.train_loss, result.val_accuracy, result.lr))
        return True
