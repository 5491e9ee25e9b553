"""What lr sweeps and LR range tests found, read from Optuna's trials; and `auto_lr_range`:
narrowing a study's lr distribution to its range test's suggestion before any regular trial.

The narrowed range is stored on the study in Optuna (study user attr `hpo_lr_range`), so
optuna-dashboard shows it next to the definition and every API process reads the same one."""

from __future__ import annotations

from typing import Any

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import Session

from service.db import studies as study_rows
from service.db.models import StudyRecord
from service.engine.storage import optuna_errors
from service.spec import FloatParam, StudySpec
from service.spec.lr_range import LrFinder, narrow, suggest_range, summarize_sweep
from service.spec.study import FINDER_SUFFIX

LR_RANGE_ATTR = "hpo_lr_range"


def diverged(t: FrozenTrial) -> bool:
    """Whether the trial ended because its loss blew up (the worker's reason, or the diagnosis)."""
    return t.user_attrs.get("reason") == "diverged" or t.user_attrs.get("diagnosis") == "diverged"


def sweep_result(spec: StudySpec, trials: list[FrozenTrial]) -> dict[str, Any] | None:
    """The U-curve of an lr_sweep: mean objective per lr, the best lr, the good range around it
    and where training starts to blow up (see service.spec.lr_range.summarize_sweep)."""
    if spec.kind != "lr_sweep" or spec.sweep is None:
        return None
    runs = []
    for t in trials:
        if not t.state.is_finished() or "lr" not in t.params:
            continue
        # A complete trial has a value however its curve looked; any other ended by the guard.
        blew_up = t.state != TrialState.COMPLETE and diverged(t)
        if t.state != TrialState.COMPLETE and not blew_up:
            continue  # failed for another reason (a crash): no evidence about the lr
        initial = (t.user_attrs.get("metrics") or {}).get("initial_val_loss")
        runs.append({"lr": t.params["lr"], "value": t.value, "diverged": blew_up, "initial": initial})
    result = summarize_sweep(runs, spec.direction, spec.sweep.tolerance, grid=spec.sweep.grid())
    result["complete"] = sum(1 for t in trials if t.state.is_finished()) >= spec.budget.n_trials
    return result


def finder_curve(finder: LrFinder, trial: FrozenTrial) -> tuple[list[float], list[float]]:
    """The range test's (lr, smoothed loss) pairs: step i was run at finder.lr_at(i)."""
    steps = sorted(trial.intermediate_values)
    return [finder.lr_at(s) for s in steps], [trial.intermediate_values[s] for s in steps]


def _finder_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The finished range test if there is one, else the latest attempt."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        return complete[-1]
    return trials[-1] if trials else None


def finder_result(spec: StudySpec, trials: list[FrozenTrial]) -> dict[str, Any] | None:
    if spec.kind != "lr_finder":
        return None
    finder = spec.finder or LrFinder()
    trial = _finder_trial(trials)
    if trial is None:
        return {"state": "pending", "lrs": [], "losses": [], "suggestion": None}
    lrs, losses = finder_curve(finder, trial)
    done = trial.state == TrialState.COMPLETE
    return {
        "state": "complete" if done else trial.state.name.lower(),
        "lrs": lrs,
        "losses": losses,
        "suggestion": suggest_range(lrs, losses) if done else None,
    }


def finder_name(spec: StudySpec) -> str:
    return spec.name + FINDER_SUFFIX


def stored_lr_range(storage: BaseStorage, record: StudyRecord) -> dict[str, Any] | None:
    with optuna_errors():
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(record.optuna_name))
    return attrs.get(LR_RANGE_ATTR)


def _undecided(spec: StudySpec) -> dict[str, Any]:
    lr = spec.space["lr"]
    assert isinstance(lr, FloatParam)
    return {"status": "pending", "finder_study": finder_name(spec), "original": [lr.low, lr.high], "narrowed": None}


def lr_range_info(storage: BaseStorage, record: StudyRecord, spec: StudySpec) -> dict[str, Any] | None:
    """For the study API: the stored decision, or that the range test is still running."""
    if not spec.auto_lr_range:
        return None
    return stored_lr_range(storage, record) or _undecided(spec)


def effective_spec(session: Session, storage: BaseStorage, record: StudyRecord, spec: StudySpec) -> StudySpec | None:
    """The spec regular trials are sampled from; None while its range test has not decided.

    Runs under the study's row lock (a claim), so the decision is taken and stored once."""
    if not spec.auto_lr_range:
        return spec
    stored = stored_lr_range(storage, record)
    if stored is None:
        stored = _decide(session, storage, record, spec)
        if stored is None:
            return None
        with optuna_errors():
            storage.set_study_user_attr(storage.get_study_id_from_name(record.optuna_name), LR_RANGE_ATTR, stored)
    narrowed = stored.get("narrowed")
    return spec if not narrowed else spec.with_lr_range(narrowed[0], narrowed[1])


def _decide(session: Session, storage: BaseStorage, record: StudyRecord, spec: StudySpec) -> dict[str, Any] | None:
    lr = spec.space["lr"]
    assert isinstance(lr, FloatParam)
    base = _undecided(spec)
    # Locked (after the parent: the order stop and delete use too), so a claim of the range test
    # that is still committing is waited for: its Optuna trial is visible before its lease is.
    finder_record = study_rows.get_study(session, record.team_id, finder_name(spec), lock=True)
    if finder_record is None:
        return {**base, "status": "failed", "detail": "the LR range test study was deleted; the lr range is not narrowed"}
    finder_spec = StudySpec.model_validate(finder_record.spec)
    # Open leases, not Optuna's states: a lost or interrupted attempt is failed and its retry
    # queued (WAITING) in the same transaction that ends its lease. Read before the trials: a
    # finish commits Optuna's state before it ends the lease, so an ended lease read first means
    # the trials read next show how it ended (read the other way round, a finish committing in
    # between made a complete range test look like one that ended RUNNING).
    _, running = study_rows.lease_counts(session, [finder_record.id])[finder_record.id]
    with optuna_errors():
        trials = storage.get_all_trials(storage.get_study_id_from_name(finder_record.optuna_name), deepcopy=False)
    result = finder_result(finder_spec, trials)
    assert result is not None
    if result["state"] == "complete":
        suggestion = result["suggestion"]
        if suggestion is None:
            return {**base, "status": "failed", "detail": "the LR range test's curve was too short to read"}
        low, high = narrow((lr.low, lr.high), suggestion)
        return {**base, "status": "narrowed", "narrowed": [low, high], "suggestion": suggestion}
    waiting = any(t.state == TrialState.WAITING for t in trials)
    if finder_record.stopped or (trials and running == 0 and not waiting):
        return {**base, "status": "failed", "detail": f"the LR range test ended {result['state']}; the lr range is not narrowed"}
    return None
