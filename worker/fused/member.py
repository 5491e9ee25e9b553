"""One member of a fused group: the trial's own run, as the unfused trainer would hold it.

A member is a `worker.training_run._Run` (its model, its torch optimizer and LR schedule, its
shuffle generator, its divergence guard, its epoch and history), set up exactly as
`worker.trainer.train` sets up a run, so its initial weights, data order and checkpoints are the
unfused run's. What fusing changes: its model's parameters are views into the group's stacked
tensors, its optimizer is never stepped (worker/fused/stacked_optim.py steps the stack with the
hyperparameters read from it, and its LR schedule still moves its learning rate), and its RNG is
a pair of generators of its own instead of torch's global one (worker/fused/masks.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from service.spec import Workload
from worker.data import Split
from worker.fused.masks import MemberRng, WindowMasks
from worker.fused.stacked_models import dropout_of
from worker.trainer import build_run, checked_resume
from worker.training_run import EpochResult, _Run


@dataclass(eq=False)
class Member:
    key: Any  # the caller's name for it (a trial)
    run: _Run
    rng: MemberRng
    dropout: float
    grad_clip: float
    window: WindowMasks | None  # the mlp's masks; None for the cnn (drawn per batch)
    # Its optimizer state while it is not in a stack (a new member, or between two stacks).
    exported: dict[str, Any] | None = None
    # The untrained validation loss, handed out with the first result it yields (EpochResult).
    initial_to_hand_out: float | None = None
    # Set within an epoch when its divergence guard fired: (reason, loss, training loss so far).
    diverged: tuple[str, float, float] | None = None
    lr: float = 0.0  # the LR of the epoch it is in

    @property
    def epoch(self) -> int:
        return self.run.epoch

    @property
    def finished(self) -> bool:
        return self.run.epoch >= self.run.workload.epochs


def new_member(
    key: Any,
    workload: Workload,
    hp: dict[str, Any],
    data: Split,
    device: torch.device,
    *,
    resume: bytes | None = None,
) -> Member:
    """The member for one trial, set up as `train(workload, hp, device)` would set its run up
    (same seed, same initial weights, same shuffle), without touching torch's global RNG."""
    saved, config = checked_resume(resume, workload, hp)
    rng = MemberRng(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(workload.seed % 2**63)
        run = build_run(workload, hp, device, data, config)
        # Only the initial weights drew from the global RNG: its state now is where the unfused
        # run's dropout starts.
        rng.capture()
        # Never stepped itself (the stack is): tell its LR schedule that steps happen, as torch's
        # own wrapper of step() would, or the schedule warns of the order at every epoch.
        run.optimizer._opt_called = True  # type: ignore[attr-defined]
        if saved is None:
            run.score_untrained()
        else:
            # _Run.restore sets the global RNG to the saved one: take it over from there.
            run.restore(saved)
            rng.capture()
    model = run.model
    dropout = dropout_of(model)
    window = None
    if workload.model == "mlp":
        widths = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
        window = WindowMasks(rng, dropout, widths, int(hp["batch_size"]), device)
    return Member(
        key=key,
        run=run,
        rng=rng,
        dropout=dropout,
        grad_clip=float(hp.get("grad_clip") or 0.0),
        window=window,
        initial_to_hand_out=run.initial_val_loss,
    )


def snapshot(member: Member, optimizer_state: dict[torch.Tensor, dict[str, Any]]) -> dict[str, Any]:
    """The member's checkpoint dict, exactly `_Run.snapshot`'s layout (worker/trainer.py documents
    it), with its own RNG in place of the global one and its optimizer state from the stack."""
    run = member.run
    devices = [run.device] if run.device.type == "cuda" else []
    run.optimizer.state.update(optimizer_state)
    try:
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(member.rng.cpu.get_state())
            if member.rng.device is not None:
                torch.cuda.set_rng_state(member.rng.device.get_state(), run.device)
            state = run.snapshot()
    finally:
        run.optimizer.state.clear()
    # Its parameters are views into the stack: copies, or torch.save would write the whole stack.
    state["model"] = {name: t.clone() for name, t in state["model"].items()}
    return state


def result(member: Member, **values: Any) -> EpochResult:
    """An EpochResult of the member's current epoch, handing out its untrained loss the first time."""
    out = EpochResult(
        epoch=member.run.epoch + 1, lr=member.lr, initial_val_loss=member.initial_to_hand_out, **values
    )
    member.initial_to_hand_out = None
    return out
