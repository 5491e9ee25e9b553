"""Study management: create, summarize, list trials, stop, delete. Callers own the transaction."""

from __future__ import annotations

import json
import math
from collections import Counter

import optuna
from optuna.distributions import distribution_to_json
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db import studies as study_rows
from service.db.models import StudyRecord, Team
from service.engine import budgets, lr_analysis
from service.engine.factories import check_buildable
from service.engine.optuna_adapter.internals import trial_id as trial_id_of
from service.engine.diagnosis import DIAGNOSES, Diagnosed, hints
from service.engine.diagnosis import counts as diagnosis_counts
from service.engine.summaries import BestTrial, Broken, Diagnosis, FrontTrial, StudySummary, TrialSummary
from service.engine.storage import CARRIED_KEY, not_the_studys_fault, optuna_errors, optuna_study_name
from service.errors import Conflict, NotFound, ServiceError, StudyBroken
from service.spec import StudySpec, defaults_for
from service.spec.study import FINDER_SUFFIX
from service.spec.limits import clean_text

STATES = ("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING")


def spec_of(record: StudyRecord) -> StudySpec:
    try:
        return StudySpec.model_validate(record.spec)
    except ValidationError as exc:
        # Stored under older rules (or edited in the database): the study is broken, not the request.
        raise StudyBroken(f"study '{record.name}': its stored definition is no longer valid: {exc.errors()[0]['msg']}") from exc


def create(session: Session, storage: BaseStorage, team: Team, spec: StudySpec) -> StudyRecord:
    # The LR range test of auto_lr_range is a study of its own (its curve is per batch, not per
    # epoch, and must not feed this study's pruner or sampler); claims run it before this one's
    # trials. Both names are checked before either is created: Optuna's storage commits apart
    # from our transaction, so a half-made pair would leave an Optuna study behind.
    check_buildable(spec)
    specs = [spec, spec.finder_spec()] if spec.auto_lr_range else [spec]
    for s in specs:
        if study_rows.get_study(session, team.id, s.name) is not None:
            raise Conflict(f"a study named '{s.name}' already exists in team '{team.name}'")
    records = [_create_one(session, storage, team, s) for s in specs]
    return records[0]


def _create_one(session: Session, storage: BaseStorage, team: Team, spec: StudySpec) -> StudyRecord:
    if study_rows.get_study(session, team.id, spec.name) is not None:
        raise Conflict(f"a study named '{spec.name}' already exists in team '{team.name}'")
    record = StudyRecord(
        team_id=team.id,
        name=spec.name,
        optuna_name=optuna_study_name(team.name, spec.name),
        spec=spec.model_dump(mode="json"),
    )
    session.add(record)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create of the same name won the race
        raise Conflict(f"a study named '{spec.name}' already exists in team '{team.name}'") from exc
    with optuna_errors():
        study = optuna.create_study(study_name=record.optuna_name, storage=storage, directions=spec.directions())
        # Shown in optuna-dashboard next to the study, so the definition travels with it.
        study.set_user_attr("hpo_definition", record.spec)
    return record


def get(session: Session, team: Team, name: str, *, lock: bool = False) -> StudyRecord:
    record = study_rows.get_study(session, team.id, name, lock=lock)
    if record is None:
        # Another team's study is indistinguishable from a missing one.
        raise NotFound(f"no study named '{name}'")
    return record


def list_for_team(session: Session, team: Team) -> list[StudyRecord]:
    return list(study_rows.list_studies(session, team.id))


def all_trials(storage: BaseStorage, record: StudyRecord) -> list[FrozenTrial]:
    with optuna_errors():
        study_id = storage.get_study_id_from_name(record.optuna_name)
        return storage.get_all_trials(study_id, deepcopy=False)


def originals(trials: list[FrozenTrial]) -> int:
    """Lineages started: every trial that is not a retry (Optuna's retry_history) nor carried in
    from another study. Counted from Optuna, not from leases, so a trial whose claim died before
    its lease committed counts too."""
    return sum(1 for t in trials if not t.system_attrs.get("retry_history") and CARRIED_KEY not in t.system_attrs)


def state_of(record: StudyRecord, claimed: int, running: int, waiting: int = 0, exhausted: str | None = None) -> str:
    """`exhausted`: the budget that has run out (budgets.view), which ends the study once its
    running trials have finished; only n_trials leaves queued trials (retries) to run first."""
    if record.stopped:
        return "stopped"
    if running == 0 and (exhausted not in (None, "n_trials") or claimed >= spec_of(record).budget.n_trials and waiting == 0):
        return "finished"
    return "running"


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def describe(exc: BaseException) -> str:
    """One line on what went wrong with a study, fit to store and show."""
    detail = exc.detail if isinstance(exc, ServiceError) else str(exc)
    lines = f"{type(exc).__name__}: {detail}".splitlines()
    return clean_text(lines[0] if lines else type(exc).__name__)[:500]


def broken(record: StudyRecord) -> Broken | None:
    """Why claims skip this study, if they do (service/engine/team_claims.py)."""
    return None if record.broken_reason is None else Broken(record.broken_reason, record.broken_at)


def summary_or_broken(session: Session, storage: BaseStorage, record: StudyRecord) -> StudySummary:
    """summary(), or, when the study itself cannot be read (its definition no longer validates,
    its Optuna study is gone), what our row says, with state `broken` and the reason: one
    study's fault must not fail the team's listing (the review's finding 3)."""
    try:
        return summary(session, storage, record)
    except Exception as exc:
        if not_the_studys_fault(exc):
            raise
        definition = record.spec if isinstance(record.spec, dict) else {}
        budget = definition.get("budget") if isinstance(definition.get("budget"), dict) else {}
        n_trials = budget.get("n_trials")
        return StudySummary(
            name=record.name,
            optuna_name=record.optuna_name,
            state="broken",
            direction=str(definition.get("direction", "minimize")),
            n_trials=n_trials if isinstance(n_trials, int) else 0,
            counts={s: 0 for s in STATES},
            best_trial=None,
            created_at=record.created_at,
            definition=definition,
            diagnosis=Diagnosis({}, []),
            kind=str(definition.get("kind", "search")),
            broken=Broken(describe(exc), record.broken_at),
        )


def summary(session: Session, storage: BaseStorage, record: StudyRecord) -> StudySummary:
    spec = spec_of(record)
    trials = all_trials(storage, record)
    counts = Counter(t.state.name for t in trials)
    claimed, running = study_rows.lease_counts(session, [record.id])[record.id]
    # A value written past our checks (a dashboard "tell" of NaN or -inf, finding 7) is no best.
    # Nor is an infeasible one (a constraint it breaks), as Optuna's best_trial has it.
    complete = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and t.values and len(t.values) == 1 and math.isfinite(t.values[0]) and feasible(t) is not False
    ]
    best = None
    if complete and not spec.objectives:
        pick = min if spec.direction == "minimize" else max
        b = pick(complete, key=lambda t: t.value)
        best = BestTrial(b.number, b.value, b.params)
    started = originals(trials)
    budget = budgets.view(session, record, spec, started)
    return StudySummary(
        name=record.name,
        optuna_name=record.optuna_name,
        state=state_of(record, started, running, counts.get("WAITING", 0), budget["exhausted"]),
        budget=budget,
        direction=spec.direction,
        n_trials=spec.budget.n_trials,
        counts={s: counts.get(s, 0) for s in STATES},
        best_trial=best,
        best_trials=pareto_front(storage, record) if spec.objectives else None,
        directions=spec.directions(),
        created_at=record.created_at,
        definition=record.spec,
        diagnosis=_diagnosis(spec, trials),
        kind=spec.kind,
        lr_sweep=lr_analysis.sweep_result(spec, trials),
        lr_finder=lr_analysis.finder_result(spec, trials),
        lr_range=lr_analysis.lr_range_info(storage, record, spec),
        broken=broken(record),
    )


def pareto_front(storage: BaseStorage, record: StudyRecord) -> list[FrontTrial]:
    """A multi-objective study's best trials: Optuna's Pareto front (feasible trials only)."""
    with optuna_errors():
        front = optuna.load_study(study_name=record.optuna_name, storage=storage).best_trials
    return [FrontTrial(t.number, list(t.values), t.params) for t in sorted(front, key=lambda t: t.number)]


def feasible(t: FrozenTrial) -> bool | None:
    """Whether the trial keeps every constraint of its study (None: it has none)."""
    constraints = t.constraints
    return None if not constraints else all(v <= 0.0 for v in constraints.values())


def _diagnosis(spec: StudySpec, trials: list[FrozenTrial]) -> Diagnosis:
    diagnosed = [
        Diagnosed(t.user_attrs["diagnosis"], t.params) for t in trials if t.user_attrs.get("diagnosis") in DIAGNOSES
    ]
    fixed_lr = {**defaults_for(spec.workload.model), **spec.workload.fixed}.get("lr")
    return Diagnosis(
        counts=diagnosis_counts(d.diagnosis for d in diagnosed),
        hints=hints(diagnosed, fixed_lr=fixed_lr if isinstance(fixed_lr, (int, float)) else None),
    )


def trials(session: Session, storage: BaseStorage, record: StudyRecord) -> list[TrialSummary]:
    leases = study_rows.leases_by_trial(session, record.id)
    out = []
    for t in all_trials(storage, record):
        trial_id = trial_id_of(t)
        lease = leases.get(trial_id)
        # Lineage (Optuna's retry_history): the trial this one retries and how many attempts so far.
        history = t.system_attrs.get("retry_history", [])
        # A retry starts with a copy of its predecessor's user attrs; why a trial ended is only
        # its own once it has ended.
        ended = t.state.is_finished()
        attrs = t.user_attrs if ended else {}
        out.append(
            TrialSummary(
                trial_id=trial_id,
                number=t.number,
                state=t.state.name,
                value=_finite_or_none(t.values[0]) if t.values and len(t.values) == 1 else None,
                values=None if t.values is None else [_finite_or_none(v) for v in t.values],
                params=t.params,
                intermediate_values={int(k): _finite_or_none(v) for k, v in sorted(t.intermediate_values.items())},
                worker_id=lease.worker_id if lease else t.user_attrs.get("worker_id"),
                error=attrs.get("error") or (lease.error if lease and ended else None),
                reason=attrs.get("reason") or ("lease_lost" if lease and lease.outcome == "lost" and ended else None),
                diagnosis=attrs.get("diagnosis"),
                metrics=attrs.get("metrics") or {},
                distributions={name: json.loads(distribution_to_json(d)) for name, d in t.distributions.items()},
                retry_of=history[-1] if history else None,
                carried_from=t.system_attrs.get(CARRIED_KEY),
                constraints={k: (v if math.isfinite(v) else None) for k, v in t.constraints.items()},
                feasible=feasible(t),
                attempt=len(history) + 1,
                datetime_start=t.datetime_start,
                datetime_complete=t.datetime_complete,
            )
        )
    return out


def _companions(session: Session, record: StudyRecord) -> list[StudyRecord]:
    """The study's LR range test (auto_lr_range), which lives and dies with it. Read from the
    stored definition as it is, so that a broken study can still be stopped and deleted."""
    if not (isinstance(record.spec, dict) and record.spec.get("auto_lr_range")):
        return []
    finder = study_rows.get_study(session, record.team_id, record.name + FINDER_SUFFIX, lock=True)
    return [] if finder is None else [finder]


def stop(session: Session, record: StudyRecord) -> None:
    for r in [record, *_companions(session, record)]:
        r.stopped = True


def resume(session: Session, record: StudyRecord) -> None:
    for r in [record, *_companions(session, record)]:
        r.stopped = False


def delete(session: Session, storage: BaseStorage, record: StudyRecord) -> None:
    for companion in _companions(session, record):
        _delete_one(session, storage, companion)
    _delete_one(session, storage, record)


def _delete_one(session: Session, storage: BaseStorage, record: StudyRecord) -> None:
    with optuna_errors():
        try:
            storage.delete_study(storage.get_study_id_from_name(record.optuna_name))
        except KeyError:
            pass  # already gone from Optuna (deleted in the dashboard); remove ours anyway
    session.delete(record)
