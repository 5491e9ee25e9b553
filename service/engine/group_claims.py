"""Group claims: up to K trials a worker trains fused, as one batched model (worker/fused/).

The members of a group share what shapes the computation (service/spec/fusion.py). Where those
params are searched, the group's first trial is sampled as any claim is, and the others are
sampled with its shape params pinned (Optuna's PartialFixedSampler around the study's sampler),
so only the per-trial scalars (lr, weight decay, momentum, dropout, ...) vary within a group, and
TPE's constant liar sees the earlier members as running. Each member is an ordinary trial with
its own lease, reports, pruning and retries; nothing about the group is stored.

A refill (`like`: a running member's trial and lease) claims from that member's study only,
pinned to its shape, so the worker can put new trials in the places of members that were pruned.

Samplers that choose whole points (grid, brute force) are not pinned: their points would stop
being the grid's, so a study of theirs whose shape params are searched gives groups of one. A
queued retry joins a group only if it has the group's shape (claims.try_claim); else the group
stops short and the retry leads a later one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.storages import BaseStorage
from sqlalchemy.orm import Session

from service.db.models import StudyRecord, Team
from service.engine import claims, leases, team_claims
from service.engine.state import EngineState
from service.engine.storage import not_the_studys_fault, optuna_errors
from service.engine.studies import spec_of
from service.settings import Settings
from service.spec import Assignment, StudySpec, defaults_for
from service.spec.fusion import group_params, not_fusable

_WHOLE_POINTS = ("grid", "bruteforce")


@dataclass
class Group:
    assignments: list[Assignment]
    # Why the group is a single trial that trains alone (not fused), or None.
    alone: str | None = None


def claim_group(
    session: Session,
    storage: BaseStorage,
    state: EngineState,
    team: Team,
    studies: Sequence[str] | None,
    worker_id: str,
    settings: Settings,
    max_trials: int,
) -> Group | None:
    """A group of up to `max_trials` trials of one study, or None when no study has work."""
    first = None
    for study_id in team_claims.candidates(session, storage, team, studies):
        first = team_claims.claim_any(session, storage, state, [study_id], worker_id, settings)
        if first is not None:
            break
    if first is None:
        return None
    record = session.get(StudyRecord, study_id)
    assert record is not None
    spec = spec_of(record)
    alone = _why_alone(spec, first.params)
    if alone is not None or max_trials == 1:
        return Group([first], alone)
    pinned = _shape_of(spec, first.params)
    return Group([first, *_more(session, storage, state, study_id, spec, pinned, worker_id, settings, max_trials - 1)])


def refill(
    session: Session,
    storage: BaseStorage,
    state: EngineState,
    team: Team,
    like: tuple[int, str],
    worker_id: str,
    settings: Settings,
    max_trials: int,
) -> Group | None:
    """Up to `max_trials` trials that fuse with the running trial `like` (its id and lease: the
    caller must hold it; else NotFound, Gone or LeaseLost, as any call on a trial)."""
    trial_id, lease_id = like
    held = leases.live_lease(session, team, trial_id, lease_id)
    assert isinstance(held.record, StudyRecord)  # lock_lease's ORM row
    study_id, spec = held.record.id, spec_of(held.record)
    with optuna_errors():
        params = storage.get_trial_params(trial_id)
    session.commit()  # the lease's row lock goes before a claim locks the study's row
    if _why_alone(spec, params) is not None:
        return None
    found = _more(session, storage, state, study_id, spec, _shape_of(spec, params), worker_id, settings, max_trials)
    return Group(found) if found else None


def _more(
    session: Session,
    storage: BaseStorage,
    state: EngineState,
    study_id: int,
    spec: StudySpec,
    pinned: dict[str, Any],
    worker_id: str,
    settings: Settings,
    count: int,
) -> list[Assignment]:
    """Up to `count` more trials of the study with the pinned params; one transaction each (a
    member's Optuna trial is committed by the storage when it is made, so its lease must be too)."""
    found: list[Assignment] = []
    for _ in range(count):
        try:
            one = claims.try_claim(session, storage, state, study_id, worker_id, settings, pinned=pinned or None)
        except Exception as exc:
            session.rollback()
            if not_the_studys_fault(exc):
                raise
            team_claims.mark_broken(session, study_id, exc)
            session.commit()
            break
        session.commit()
        if one is None:
            break
        found.append(one)
    return found


def _why_alone(spec: StudySpec, params: dict[str, Any]) -> str | None:
    """Why a trial of the study with these params trains alone; None if others can join it."""
    if spec.kind == "lr_finder":
        return "an LR range test runs alone"
    # Its hyperparameters as the worker sees them (Assignment.hyperparameters).
    why = not_fusable(spec.workload, {**defaults_for(spec.workload.model), **spec.workload.fixed, **params})
    if why is not None:
        return why
    if spec.sampler.kind in _WHOLE_POINTS and _shape_of(spec, params):
        return f"the {spec.sampler.kind} sampler picks whole points, so a group's shape cannot be pinned"
    return None


def _shape_of(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    """The searched params a group's members must share."""
    return {name: params[name] for name in group_params(spec.workload.model) if name in params}
