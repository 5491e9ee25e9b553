"""The queue: how many trials of a team could be handed out now, per study and in all.

What an autoscaler scales a worker pool on (KEDA's metrics-api trigger reads GET /api/v1/queue):
a study contributes the trials it has left to start (budget.n_trials less the lineages started)
plus its retries waiting in Optuna, capped by its max_concurrent headroom. A stopped study, one
resting after a failed claim (service/engine/team_claims.py) and one whose LR range test has not
decided yet (auto_lr_range; its range test counts for itself) contribute nothing. Read without
locks, like the claim's candidates: a figure of the moment, not a promise.

`demand` adds the trials running now: the slots the team's work fills, what a worker Deployment
scales on (scaling on `depth` alone would take away the workers that just claimed it)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from optuna.storages import BaseStorage
from sqlalchemy.orm import Session

from service.db import studies as study_rows
from service.db.models import Team
from service.engine.lr_analysis import stored_lr_range
from service.engine.storage import not_the_studys_fault
from service.engine.studies import spec_of
from service.engine.team_claims import resting, waiting_trials


def depth(session: Session, storage: BaseStorage, team: Team) -> dict[str, Any]:
    records = [r for r in study_rows.list_studies(session, team.id) if not r.stopped]
    counts = study_rows.lease_counts(session, [r.id for r in records])
    now = datetime.now(timezone.utc)
    studies = []
    for r in records:
        started, running = counts[r.id]
        try:
            spec = spec_of(r)
            waiting = len(waiting_trials(storage, r))
            undecided = spec.auto_lr_range and stored_lr_range(storage, r) is None
        except Exception as exc:
            if not_the_studys_fault(exc):
                raise
            continue  # broken: the API's study views say why; it has no work to hand out
        remaining = max(0, spec.budget.n_trials - started)
        headroom = max(0, spec.budget.max_concurrent - running)
        ready = 0 if resting(r, now) or undecided else min(remaining + waiting, headroom)
        studies.append(
            {"name": r.name, "depth": ready, "remaining": remaining, "waiting": waiting, "running": running,
             "max_concurrent": spec.budget.max_concurrent}
        )
    depth = sum(s["depth"] for s in studies)
    running = sum(s["running"] for s in studies)
    return {"team": team.name, "depth": depth, "running": running, "demand": depth + running, "studies": studies}
