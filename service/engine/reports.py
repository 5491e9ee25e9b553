"""Reports: a trial's intermediate value at a step, and whether the trial should stop.

There is one path, for many reports in one transaction (the API's batcher, group commit:
service/api/report_batcher.py); a single report is a batch of one. Each report gets its pruning
decision, or the error it answers with (404, 409, 410), and the batch's database work is a
fixed number of statements whatever its size:

1. the leases, locked in one read in trial id order, with their studies' rows
   (studies.lock_leases; a study's definition never changes, and is read once per process);
2. for the leases due an extension, Optuna's heartbeats in one upsert and the leases' expiry in
   one update (leases.extend);
3. every value into Optuna's intermediate values, in one statement that reads back a summary
   of each trial's curve (optuna_rows.insert_values_and_summarize), so its cost does not grow
   with the trials' number of steps;
4. one refresh of the trial view per study in the batch; the decisions come from the view's
   per-step arrays (pruning.py).

A trial reported twice in one batch has its second report in a second round of the same steps,
judged after its first. A study whose pruner is Optuna's own (successive halving, Hyperband,
threshold, patience) has its reports written through Optuna's storage and judged by that
pruner on the study (optuna_pruning.py), before this transaction writes anything of them.

Callers have checked the tokens and roles (the API); every function runs inside the caller's
transaction, which the caller commits before answering anyone. An exception is the whole
batch's (the database): the caller rolls back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from optuna.storages import BaseStorage
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from service.db import studies as study_rows
from service.db.models import Team
from service.engine import checkpoints, coordination, leases, optuna_pruning
from service.engine.optuna_adapter import rows as optuna_rows
from service.engine.factories import build_pruner
from service.engine.pruning import CurveSummary, FlatRule, PercentileRule, flat_rule
from service.engine.state import EngineState
from service.engine.storage import optuna_errors
from service.errors import Conflict, NotFound, ServiceError
from service.settings import Settings
from service.spec import StudySpec


@dataclass(frozen=True)
class Report:
    """One report of a trial: the lease it is made under, the step and its value (finite)."""

    trial_id: int
    lease_id: str
    step: int
    value: float


# Each report's outcome: its pruning decision, or the error it answers with.
Outcome = bool | ServiceError


def report(session: Session, storage: BaseStorage, state: EngineState, team: Team, one: Report, settings: Settings) -> bool:
    """A single report: a batch of one. Reporting the same step twice keeps the first value
    (Optuna ignores the repeat)."""
    (outcome,) = report_many(session, storage, state, [(team, one)], settings)
    if isinstance(outcome, ServiceError):
        raise outcome
    return outcome


def report_many(
    session: Session, storage: BaseStorage, state: EngineState, reports: Sequence[tuple[Team, Report]], settings: Settings
) -> list[Outcome]:
    """Every report's outcome, in order; each report is made by its team's caller."""
    outcomes: list[Outcome | None] = [None] * len(reports)
    judges: dict[int, _Judge] = {}
    pending = list(range(len(reports)))
    while pending:
        this_round: list[int] = []
        later: list[int] = []
        seen: set[int] = set()
        for i in pending:
            trial_id = reports[i][1].trial_id
            (later if trial_id in seen else this_round).append(i)
            seen.add(trial_id)
        _round(session, storage, state, reports, this_round, outcomes, judges, settings)
        pending = later
    assert all(o is not None for o in outcomes)
    return outcomes  # type: ignore[return-value]


def _round(
    session: Session,
    storage: BaseStorage,
    state: EngineState,
    reports: Sequence[tuple[Team, Report]],
    indices: list[int],
    outcomes: list[Outcome | None],
    judges: dict[int, _Judge],
    settings: Settings,
) -> None:
    """The reports at `indices`, one per trial, into `outcomes`."""
    locked = study_rows.lock_leases(session, [reports[i][1].trial_id for i in indices])
    held: list[tuple[int, leases.Held, _Judge]] = []
    for i in indices:
        team, r = reports[i]
        try:
            found = leases.live(leases.checked_lease(locked.get(r.trial_id), team, r.trial_id, r.lease_id))
            judge = judges.get(found.record.id)
            if judge is None:
                judge = judges[found.record.id] = _Judge.of(session, storage, state, found.record)
        except ServiceError as exc:
            outcomes[i] = exc
            continue
        held.append((i, found, judge))

    # Optuna's own pruners first: their values are committed through the storage, which locks
    # the trial's row, before this transaction takes a lock on it (optuna_rows, lock order).
    for i, _, judge in held:
        if judge.by_optuna:
            try:
                outcomes[i] = judge.judge_by_optuna(storage, reports[i][1])
            except ServiceError as exc:
                outcomes[i] = exc

    due = [h.lease.trial_id for i, h, _ in held if not isinstance(outcomes[i], ServiceError) and not leases.is_fresh(h, settings)]
    leases.extend(session, due, settings)

    flat = [(i, h, judge) for i, h, judge in held if not judge.by_optuna]
    conn = session.connection()
    stored = optuna_rows.insert_values_and_summarize(conn, [(h.lease.trial_id, reports[i][1].step, reports[i][1].value) for i, h, _ in flat])
    # One refresh per study in the batch, however many of its trials report in it.
    studies = {j.study_id for _, _, j in flat if j.needs_view}
    views = {study_id: state.views.study_trials(storage, study_id, conn=conn) for study_id in sorted(studies)}
    for i, h, judge in flat:
        r = reports[i][1]
        curve = stored.get(r.trial_id)
        if curve is None or curve.state is None:
            outcomes[i] = NotFound(f"not found in Optuna's storage: 'trial {r.trial_id}'")
            continue
        if curve.state != TrialState.RUNNING:
            outcomes[i] = Conflict(f"trial already finished: trial {r.trial_id} is {curve.state.name}; it takes no more reports")
            continue
        summary = CurveSummary(curve.last_step, curve.previous_step, curve.best_min, curve.best_max)
        if not curve.had_step:
            summary = summary.with_value(r.step, r.value)  # the first value of a step stays
        outcomes[i] = judge.decide(summary, views.get(judge.study_id))


def checkpoint(
    session: Session,
    storage: BaseStorage,
    state: EngineState,
    store: checkpoints.ArtifactStore,
    team: Team,
    one: Report,
    data: BinaryIO,
    size: int,
    settings: Settings,
) -> bool:
    """A report and the checkpoint taken at the same step, in one call: a retry that resumes
    from step N has the values of steps 1..N and reports from N+1, so none is lost or doubled."""
    prune = report(session, storage, state, team, one, settings)
    held = leases.live_lease(session, team, one.trial_id, one.lease_id)
    checkpoints.save(session, store, held.lease, one.step, data, size)  # type: ignore[arg-type]
    return prune


@dataclass(frozen=True)
class _Judge:
    """How the reports of one study are decided."""

    study_id: int  # Optuna's
    stopped: bool
    rule: FlatRule | None  # None: Optuna's own pruner
    spec: StudySpec

    @classmethod
    def of(cls, session: Session, storage: BaseStorage, state: EngineState, record: study_rows.StudyRow | study_rows.StudyRecord) -> _Judge:
        spec = state.specs.get(session, record.id)
        with optuna_errors():
            study_id = state.views.optuna_study_id(storage, record.id, record.optuna_name)
        return cls(study_id, record.stopped, flat_rule(spec.pruner, spec.direction), spec)

    @property
    def by_optuna(self) -> bool:
        """Judged by Optuna's own pruner (a stopped study prunes everything, on the flat path)."""
        return self.rule is None and not self.stopped

    @property
    def needs_view(self) -> bool:
        """Whether the decisions read the trial view (a stopped study and `none` do not)."""
        return not self.stopped and isinstance(self.rule, PercentileRule)

    def decide(self, curve: CurveSummary, view: coordination.StudyTrials | None) -> bool:
        if self.stopped:
            return True  # a stopped study lets its running trials go at their next report
        assert self.rule is not None
        if view is None:
            return self.rule.prune(curve, coordination.AtStep(0))
        with view.lock:
            at_step = view.at_step(curve.last_step)
        return self.rule.prune(curve, at_step)

    def judge_by_optuna(self, storage: BaseStorage, r: Report) -> bool:
        """What trial.report then trial.should_prune do in a notebook: the value committed through
        the storage, then Optuna's pruner on the study as the storage has it."""
        with optuna_errors():
            optuna_pruning.report_committed(storage, r.trial_id, r.step, r.value)
            return optuna_pruning.should_prune(storage, self.study_id, build_pruner(self.spec), r.trial_id)
