"""One trial's training loop for the built-in models (mlp, cnn), as a generator of per-epoch results.

A generator so the caller owns control flow: it reports each epoch, and can stop at any
epoch boundary (pruned, lease lost, SIGTERM) by simply no longer iterating or calling close().

Out-of-memory errors (torch.cuda.OutOfMemoryError, MemoryError) are not caught here: they
propagate to the runner, which records the trial's reason as `oom`.

Checkpoints. Between two epochs, `Training.checkpoint()` serialises everything the rest of the
run depends on (see `Training.checkpoint` for the contents), and `train(..., resume=bytes)`
continues from it at the next epoch. On the same device type (and, on CPU, the same number of
threads) a resumed run yields exactly the validation losses an uninterrupted run would have.
Nothing is serialised unless `checkpoint()` is called.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from service.spec import Workload
from worker.data import Split, load_split
from worker.mlp_step import MlpStep, mlp_layers
from worker.models import build_model, uses_batchnorm
from worker.optim import build_optimizer
from worker.schedules import build_schedule, lr_of

# Validation is scored in chunks so its memory use stays flat whatever the dataset's size.
EVAL_CHUNK = 4096
# The cnn's activations are much larger per sample than the mlp's: smaller validation chunks.
CNN_EVAL_CHUNK = 256

# The divergence guard reads the batch losses back from the device every CHECK_EVERY batches
# (and at the end of each epoch). Each read is a host synchronisation that drains the device's
# queue of work, so it is not done every batch; the price is that a run that blows up does up
# to CHECK_EVERY - 1 more (useless) optimizer steps before it stops. The reported step is still
# the exact batch that tripped the guard, since every batch loss is read back.
CHECK_EVERY = 16

# The version of the checkpoint layout (Training.checkpoint); another version is not resumed from.
CHECKPOINT_FORMAT = "hpo-checkpoint/1"
# The workload fields a checkpoint must agree on (with all the hyperparameters) to be resumed.
_CONFIG_FIELDS = (
    "model",
    "dataset",
    "epochs",
    "seed",
    "val_fraction",
    "precision",
    "divergence_factor",
    "block",
    "fast_step",
)


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


class CheckpointError(ValueError):
    """Checkpoint bytes that this trial cannot resume from: unreadable, another format, or made
    for other hyperparameters or another workload."""


class _Diverged(Exception):
    def __init__(self, reason: str, loss: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.loss = loss


class _Guard:
    """The divergence guard: a batch loss that is NaN or inf, or above `factor` times the first
    batch's loss, stops the trial (HYPERPARAMETERS.md, "What a loss curve says": NaN, inf, or
    rising sharply is diverged). Also sums the batch losses for the epoch's training loss, on the
    host, from the values it reads back anyway."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.first: float | None = None
        self._pending: list[tuple[int, int, torch.Tensor]] = []  # (step, batch length, loss on device)
        self.loss_sum = 0.0
        self.samples = 0

    def new_epoch(self) -> None:
        self.loss_sum, self.samples = 0.0, 0

    def add(self, step: int, n: int, loss: torch.Tensor) -> None:
        self._pending.append((step, n, loss.detach()))

    def due(self) -> bool:
        return len(self._pending) >= CHECK_EVERY

    def pending(self) -> list[torch.Tensor]:
        return [loss for _, _, loss in self._pending]

    def check(self, epoch: int, values: list[float] | None = None) -> None:
        """Raise _Diverged at the first bad pending loss. `values`: the pending losses already read
        back by the caller (so it can share one synchronisation with other numbers)."""
        if not self._pending:
            return
        if values is None:
            values = torch.stack(self.pending()).tolist()  # one host synchronisation
        pending, self._pending = self._pending, []
        for (step, n, _), value in zip(pending, values):
            # Weighted by the batch's length so a short last batch counts per sample.
            self.loss_sum += value * n
            self.samples += n
            if not math.isfinite(value):
                raise _Diverged(f"training loss is {value} at epoch {epoch}, step {step}", value)
            if self.first is None:
                self.first = value
            # A first loss of 0 (already perfect) has no meaningful multiple: only NaN/inf count then.
            elif self.first > 0 and value > self.factor * self.first:
                raise _Diverged(
                    f"training loss {value:.3g} > {self.factor:g}x the first loss {self.first:.3g} "
                    f"at epoch {epoch}, step {step}",
                    value,
                )


def train(
    workload: Workload,
    hp: dict[str, Any],
    device: str | torch.device,
    *,
    data_root: Path | None = None,
    resume: bytes | None = None,
) -> Training:
    """Train the built-in `workload` with hyperparameters `hp` (the full dict of the model's
    params, defaults filled in): returns a `Training`, an iterator of one EpochResult per epoch.

    The data, the model and the optimizer are set up here (errors in them raise from this call);
    the epochs run as the result is iterated. `resume`: bytes from `Training.checkpoint()` of a
    run of the same workload and `hp`; the run then continues at the epoch after the saved one
    (CheckpointError if the bytes cannot be resumed from).

    A run that diverges (see `_Guard`; also a validation loss that is not finite) yields one last
    result with `diverged` set, and stops: within the epoch for a training loss, after it for a
    validation loss. The learning-rate schedule advances after every epoch that is not the last.

    Seeds torch's global RNG (model initialisation and dropout draw from it), so the same workload
    seed and `hp` give the same results on CPU; don't interleave two of these runs in one
    process if that matters. On CUDA, cuDNN's autotuning (below) may pick different kernels from
    run to run, so results match only to rounding there.
    """
    if not workload.is_builtin:
        raise ValueError(f"train() runs the built-in models (mlp, cnn), not {workload.model!r}")
    saved = None if resume is None else load_checkpoint(resume)
    config = config_digest(workload, hp)
    if saved is not None and saved["config"] != config:
        raise CheckpointError("the checkpoint was made for other hyperparameters or another workload")
    device = torch.device(device)
    if device.type == "cuda":
        # Every batch of a trial has the same input shape (except a shorter last one), so cuDNN's
        # one-off benchmark of the convolution algorithms for each shape pays for itself.
        torch.backends.cudnn.benchmark = True
    # torch accepts seeds up to 64 bits; a workload seed is any int.
    seed = workload.seed % 2**63
    torch.manual_seed(seed)

    data = load_split(
        workload.dataset, val_fraction=workload.val_fraction, seed=workload.seed, device=device, data_root=data_root
    )
    model = build_model(workload.model, data.input_shape, data.n_outputs, hp, workload.block).to(device)
    batch_size = int(hp["batch_size"])
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batchnorm = uses_batchnorm(model)
    if batchnorm and batch_size == 1:
        # torch refuses to train BatchNorm on one sample ("tiny batches break BatchNorm",
        # HYPERPARAMETERS.md, Batch size); say so plainly instead.
        raise ValueError("batchnorm needs batch_size >= 2: BatchNorm cannot normalise a batch of one sample")
    optimizer = build_optimizer(model.parameters(), hp)
    schedule = build_schedule(optimizer, hp, workload.epochs)
    # A generator of its own on the device, so the shuffle order depends only on the seed,
    # not on whatever else used the global RNG in between.
    shuffle = torch.Generator(device=device)
    shuffle.manual_seed(seed)
    run = _Run(
        workload=workload,
        hp=hp,
        device=device,
        data=data,
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        shuffle=shuffle,
        guard=_Guard(workload.divergence_factor),
        config=config,
    )
    if saved is None:
        # One validation pass before any step: a single extra sync per trial.
        initial_sum, _ = _evaluate(model, data, _loss_fn(data), _autocast(workload, device), _eval_chunk(workload, hp))
        run.initial_val_loss = initial_sum.item() / data.x_val.shape[0]
    else:
        run.restore(saved)
    return Training(run)


class Training(Iterator[EpochResult]):
    """One run of the trainer, as an iterator of EpochResults (what `train` returns).

    Between two results (after one was yielded and before the next is asked for),
    `checkpoint()` gives the bytes to resume from after that epoch. `resumed_from` is the epoch
    a resumed run continued after (None for a fresh run), and `history` the results of the epochs
    up to it, as saved in the checkpoint (empty for a fresh run)."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._epochs = run.epochs()
        self.resumed_from = run.resumed_from
        self.history = list(run.history)

    def __iter__(self) -> Training:
        return self

    def parameter_count(self) -> int:
        """The model's trainable size (the `params_m` metric, in millions, an objective or constraint may use)."""
        return sum(p.numel() for p in self._run.model.parameters())

    def __next__(self) -> EpochResult:
        return next(self._epochs)

    def close(self) -> None:
        """Stop early: a run left mid-way lets go of its tensors now."""
        self._epochs.close()

    def checkpoint(self) -> bytes:
        """The state after the last finished epoch, as bytes of `torch.save` of a dict that loads
        with `torch.load(weights_only=True)` (only tensors, numbers, strings, lists and dicts):

            format            CHECKPOINT_FORMAT
            config            sha256 of the hyperparameters and the workload fields that shape
                              the run (a checkpoint resumes only the same configuration)
            epoch             the last finished epoch (1-based; the pruner's step)
            model, optimizer  their state_dicts (BatchNorm's running statistics included)
            schedule          LrSchedule.state_dict() (torch's schedulers, warmup+plateau glue)
            rng_cpu, rng_cuda torch's global RNG states (rng_cuda None on CPU): dropout draws here
            shuffle           the shuffle generator's state, and shuffle_device its device type
            guard_first       the divergence guard's first batch loss
            initial_val_loss  the untrained model's validation loss
            history           [{epoch, val_loss, train_loss, val_accuracy, lr}] up to `epoch`
        """
        state = self._run.snapshot()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()


def load_checkpoint(data: bytes) -> dict[str, Any]:
    """The dict inside checkpoint bytes (tensors on the CPU); CheckpointError if it is not one."""
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated upload, another format, a pickle we refuse to run
        raise CheckpointError(f"unreadable checkpoint: {type(exc).__name__}: {exc}") from None
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        found = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
        raise CheckpointError(f"not a {CHECKPOINT_FORMAT} checkpoint (found {found!r})")
    return saved


def config_digest(workload: Workload, hp: dict[str, Any]) -> str:
    """What a checkpoint must have been made with to be resumed by this run."""
    shape = {name: getattr(workload, name) for name in _CONFIG_FIELDS}
    shape["dataset"] = workload.dataset.model_dump(mode="json")
    text = json.dumps({"workload": shape, "hp": hp}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _loss_fn(data: Split) -> Callable[..., torch.Tensor]:
    return F.cross_entropy if data.task == "classification" else F.mse_loss


def _autocast(workload: Workload, device: torch.device) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    if workload.precision == "bf16":

        def autocast() -> contextlib.AbstractContextManager[Any]:
            return torch.autocast(device.type, dtype=torch.bfloat16)

        return autocast
    return contextlib.nullcontext


def _eval_chunk(workload: Workload, hp: dict[str, Any]) -> int:
    return max(CNN_EVAL_CHUNK if workload.model == "cnn" else EVAL_CHUNK, int(hp["batch_size"]))


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
            if not math.isfinite(val_loss):
                result.diverged = f"validation loss is {val_loss} at epoch {epoch}"
                yield result
                return
            if epoch < workload.epochs:
                # The next epoch's LR, set before the yield so the caller sees a finished epoch.
                self.schedule.epoch_end(val_loss)
            # What a checkpoint taken now saves: this epoch is done.
            self.epoch = epoch
            self.history.append(EpochResult(epoch, val_loss, result.train_loss, result.val_accuracy, lr))
            yield result


@torch.no_grad()
def _evaluate(
    model: nn.Module, data: Split, loss_fn: Any, autocast: Any, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed per-sample validation loss and number of correct predictions (0 for regression),
    both still on the device. Per sample, a regression's MSE is the mean over its outputs."""
    model.eval()  # dropout off, BatchNorm on its running statistics
    x, y = data.x_val, data.y_val
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    classify = data.task == "classification"
    for start in range(0, x.shape[0], chunk):
        xb, yb = x[start : start + chunk], y[start : start + chunk]
        with autocast():
            out = model(xb)
        out = out.float()
        if classify:
            loss_sum += loss_fn(out, yb, reduction="sum")
            correct += (out.argmax(dim=1) == yb).sum()
        else:
            loss_sum += loss_fn(out, yb, reduction="sum") / out.shape[1]
    return loss_sum, correct
