"""Many reports in one transaction: the report path under load (group commit).

An API process collects the reports that arrive while its previous batch is in the database
(service/api/report_batcher.py) and hands them here together. Each report gets exactly what
`trials.report` would give it alone (its pruning decision, or the error: 401, 403, 404, 409, 410),
but the batch's database work is a fixed number of statements whatever its size:

1. the tokens, in one read (teams.authenticate_many);
2. the leases, locked in one read in trial id order, with their studies' rows
   (studies.lock_leases; a study's definition never changes, and is read once per process);
3. for the leases due an extension, Optuna's heartbeats in one upsert and the leases' expiry in
   one update;
4. every value into Optuna's intermediate values, in one statement that reads back a summary
   of each trial's curve (optuna_rows.insert_values_and_summarize): its last steps from the
   index and its best values from hpo_curve_bests, so its cost does not grow with the trials'
   number of steps;
5. one refresh of the flat view per study in the batch;
6. one commit.

The decisions come from the flat view's per-step arrays, as a single report's do
(coordination.percentile_prune). A report whose study has a pruner the view cannot judge, or a
second report of one trial in the same batch, goes through `trials.report` in the same
transaction."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from sqlalchemy.orm import Session

from service.db import studies as study_rows
from service.db.teams import Principal, authenticate_many
from service.engine import coordination, optuna_rows, trials
from service.engine.factories import build_pruner
from service.engine.storage import optuna_errors
from service.errors import ServiceError
from service.settings import Settings
from service.spec import StudySpec


@dataclass(frozen=True)
class PendingReport:
    """One POST /trials/{trial_id}/report: the bearer token, the validated body, and the route's
    role check (raises Forbidden)."""

    token: str
    trial_id: int
    lease_id: str
    step: int
    value: float
    authorize: Callable[[Principal], None] = field(compare=False, repr=False)


# Each report's outcome: its pruning decision, or the error it answers with.
Outcome = bool | ServiceError


def report_many(
    session: Session,
    storage: BaseStorage,
    reports: Sequence[PendingReport],
    settings: Settings,
) -> list[Outcome]:
    """Every report's outcome, in order. Runs in the caller's transaction, which the caller
    commits before answering anyone. An exception is the whole batch's (the database): the
    caller rolls back."""
    outcomes: list[Outcome | None] = [None] * len(reports)
    callers = authenticate_many(session, sorted({r.token for r in reports}))
    allowed: list[tuple[int, Principal]] = []
    for i, r in enumerate(reports):
        caller = callers[r.token]
        try:
            if isinstance(caller, ServiceError):
                raise caller
            r.authorize(caller)
        except ServiceError as exc:
            outcomes[i] = exc
        else:
            allowed.append((i, caller))

    locked = study_rows.lock_leases(session, [reports[i].trial_id for i, _ in allowed])
    held: list[tuple[int, trials.Held]] = []
    again: list[tuple[int, Principal]] = []  # a trial's second report in this batch; other pruners
    seen: set[int] = set()
    judges: dict[int, _Judge] = {}
    for i, caller in allowed:
        r = reports[i]
        if r.trial_id in seen:
            again.append((i, caller))
            continue
        try:
            found = trials.live(trials.checked_lease(locked.get(r.trial_id), caller.team, r.trial_id, r.lease_id))  # type: ignore[arg-type]
            judge = judges.get(found.record.id)
            if judge is None:
                judge = judges[found.record.id] = _Judge.of(session, storage, found.record)
        except ServiceError as exc:
            outcomes[i] = exc
            continue
        seen.add(r.trial_id)
        if judge.stopped or coordination.judged_flat(judge.pruner):
            held.append((i, found))
        else:
            again.append((i, caller))  # a pruner the view cannot judge: trials.report judges it

    # Leases extended under half a heartbeat ago stay as they are (trials._extend).
    due = [h.lease.trial_id for _, h in held if not trials.is_fresh(h, settings)]
    optuna_rows.record_heartbeats(session.connection(), due)
    study_rows.extend_leases(session, due, settings.lease_seconds)

    conn = session.connection()
    stored = optuna_rows.insert_values_and_summarize(conn, [(h.lease.trial_id, reports[i].step, reports[i].value) for i, h in held])
    views = {j.study_id: coordination.study_trials(storage, j.study_id, conn=conn) for j in judges.values() if j.percentile and not j.never}
    for i, h in held:
        r, judge = reports[i], judges[h.record.id]
        try:
            with optuna_errors():
                curve = stored.get(r.trial_id)
                if curve is None or curve.state is None:
                    raise KeyError(f"trial {r.trial_id}")
                if curve.state != optuna.trial.TrialState.RUNNING:
                    raise optuna.exceptions.UpdateFinishedTrialError(
                        f"trial {r.trial_id} is {curve.state.name}; it takes no more reports"
                    )
        except ServiceError as exc:
            outcomes[i] = exc
            continue
        summary = coordination.CurveSummary(curve.last_step, curve.previous_step, curve.best_min, curve.best_max)
        if not curve.had_step:
            summary = summary.with_value(r.step, r.value)  # the first value of a step stays
        outcomes[i] = judge.decide(summary, views.get(judge.study_id))

    for i, caller in again:
        r = reports[i]
        try:
            outcomes[i] = trials.report(session, storage, caller.team, r.trial_id, r.lease_id, r.step, r.value, settings)
        except ServiceError as exc:
            outcomes[i] = exc
    assert all(o is not None for o in outcomes)
    return outcomes  # type: ignore[return-value]


# Study definitions by (database, study id): they never change, and ids are never reused.
_SPECS: OrderedDict[tuple[str, int], StudySpec] = OrderedDict()
_SPECS_LOCK = threading.Lock()
MAX_SPECS = 1024


def _spec(session: Session, study_id: int) -> StudySpec:
    key = (str(session.get_bind().url), study_id)
    with _SPECS_LOCK:
        spec = _SPECS.get(key)
        if spec is not None:
            _SPECS.move_to_end(key)
            return spec
    stored = study_rows.study_spec(session, study_id)
    if stored is None:
        raise KeyError(f"study {study_id}")  # deleted since the lease was read: not in this transaction
    spec = StudySpec.model_validate(stored)
    with _SPECS_LOCK:
        _SPECS[key] = spec
        while len(_SPECS) > MAX_SPECS:
            _SPECS.popitem(last=False)
    return spec


@dataclass(frozen=True)
class _Judge:
    """How the reports of one study are decided."""

    study_id: int  # Optuna's
    stopped: bool
    pruner: optuna.pruners.BasePruner
    direction: StudyDirection

    @classmethod
    def of(cls, session: Session, storage: BaseStorage, record: study_rows.StudyRow) -> _Judge:
        spec = _spec(session, record.id)
        with optuna_errors():
            study_id = coordination.optuna_study_id(storage, record.id, record.optuna_name)
        direction = StudyDirection.MAXIMIZE if spec.direction == "maximize" else StudyDirection.MINIMIZE
        return cls(study_id, record.stopped, build_pruner(spec), direction)

    @property
    def never(self) -> bool:
        """Decided without the view: a stopped study prunes everything, a NopPruner nothing."""
        return self.stopped or isinstance(self.pruner, optuna.pruners.NopPruner)

    @property
    def percentile(self) -> bool:
        return isinstance(self.pruner, optuna.pruners.PercentilePruner)

    def decide(self, curve: coordination.CurveSummary, view: coordination.StudyTrials | None) -> bool:
        if self.stopped:
            return True  # a stopped study lets its running trials go at their next report
        if view is None:
            return False  # NopPruner
        with view.lock:
            at_step = view.at_step(curve.last_step)
        return coordination.percentile_prune(self.pruner, self.direction, curve, at_step)  # type: ignore[arg-type]
