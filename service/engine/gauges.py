"""The database's side of GET /metrics: every team's studies, with their trials by state and
their queue depth, read when Prometheus scrapes (never counted in a process, so every API
process and replica shows the same figures).

The queue depth is service/engine/queue.py's, the figure GET /api/v1/queue answers; a stopped
study has none (it hands out nothing) but keeps its trial counts."""

from __future__ import annotations

from dataclasses import dataclass, field

from optuna.storages import BaseStorage
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from service.db import studies as study_rows
from service.db.teams import teams_with_studies
from service.engine import queue
from service.engine.optuna_adapter import rows as optuna_rows


@dataclass
class StudyGauges:
    team: str
    study: str
    trials: dict[str, int] = field(default_factory=lambda: {state.name: 0 for state in TrialState})
    # None: the study hands out nothing (stopped, broken): no queue series for it.
    depth: int | None = None


def read(session: Session, storage: BaseStorage) -> list[StudyGauges]:
    by_id: dict[int, StudyGauges] = {}
    for team in teams_with_studies(session):
        found = {r.id: StudyGauges(team.name, r.name) for r in study_rows.list_studies(session, team.id)}
        names = {g.study: g for g in found.values()}
        for entry in queue.depth(session, storage, team)["studies"]:
            names[entry["name"]].depth = entry["depth"]
        by_id.update(found)
    for study_id, state, n in optuna_rows.trial_counts(session.connection()):
        if study_id in by_id:
            by_id[study_id].trials[state.name] = n
    return list(by_id.values())
