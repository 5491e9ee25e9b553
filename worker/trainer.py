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

Here: setting a run up and the iterator over it. The epoch loop and a run's state are in
training_run.py, the divergence guard in divergence_guard.py, the checkpoint format in
checkpoint.py, the loss function and the validation pass in scoring.py.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from service.spec import Workload
from worker.checkpoint import CheckpointError, config_digest, load_checkpoint
from worker.data import Split, load_split
from worker.divergence_guard import _Guard
from worker.models import build_model, uses_batchnorm
from worker.optim import build_optimizer
from worker.schedules import build_schedule
from worker.scoring import EVAL_CHUNK
from worker.training_run import EpochResult, _Run

# EVAL_CHUNK is passed on because bench/trainer_speed.py sizes its baseline's validation
# batches as the trainer does.
__all__ = ["EVAL_CHUNK", "CheckpointError", "EpochResult", "Training", "train"]


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
    saved, config = checked_resume(resume, workload, hp)
    device = torch.device(device)
    if device.type == "cuda":
        # Every batch of a trial has the same input shape (except a shorter last one), so cuDNN's
        # one-off benchmark of the convolution algorithms for each shape pays for itself.
        torch.backends.cudnn.benchmark = True
    # torch accepts seeds up to 64 bits; a workload seed is any int.
    torch.manual_seed(workload.seed % 2**63)
    data = load_split(
        workload.dataset, val_fraction=workload.val_fraction, seed=workload.seed, device=device, data_root=data_root
    )
    run = build_run(workload, hp, device, data, config)
    if saved is None:
        run.score_untrained()
    else:
        run.restore(saved)
    return Training(run)


def checked_resume(resume: bytes | None, workload: Workload, hp: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The checkpoint `resume` loaded (None without one) and the run's config digest; raises
    CheckpointError when the checkpoint is another configuration's."""
    saved = None if resume is None else load_checkpoint(resume)
    config = config_digest(workload, hp)
    if saved is not None and saved["config"] != config:
        raise CheckpointError("the checkpoint was made for other hyperparameters or another workload")
    return saved, config


def build_run(workload: Workload, hp: dict[str, Any], device: torch.device, data: Split, config: str) -> _Run:
    """A run's model, optimizer, LR schedule and shuffle, set up in that order; the model's
    initial weights are drawn from torch's global RNG as it stands (the caller seeds it), and
    nothing after them draws from it."""
    model = build_model(workload.model, data.input_shape, data.n_outputs, hp, workload.block).to(device)
    batch_size = int(hp["batch_size"])
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if uses_batchnorm(model) and batch_size == 1:
        # torch refuses to train BatchNorm on one sample ("tiny batches break BatchNorm",
        # HYPERPARAMETERS.md, Batch size); say so plainly instead.
        raise ValueError("batchnorm needs batch_size >= 2: BatchNorm cannot normalise a batch of one sample")
    optimizer = build_optimizer(model.parameters(), hp)
    schedule = build_schedule(optimizer, hp, workload.epochs)
    # A generator of its own on the device, so the shuffle order depends only on the seed,
    # not on whatever else used the global RNG in between.
    shuffle = torch.Generator(device=device)
    shuffle.manual_seed(workload.seed % 2**63)
    return _Run(
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
