"""Trial checkpoints in an optuna.artifacts store, so a retried trial resumes where its lost
predecessor stopped. One checkpoint per trial (the latest epoch's); a retry reads the nearest
one up its lineage (Optuna's retry_history)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import BinaryIO

from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import BaseStorage
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from service.db import studies as study_rows
from service.db.models import Checkpoint, Lease, StudyRecord
from service.engine.coordination import TrialViews
from service.engine.storage import optuna_errors
from service.settings import Settings, artifact_dir

log = logging.getLogger("hpo.checkpoints")

ArtifactStore = FileSystemArtifactStore | Boto3ArtifactStore


def artifact_store(settings: Settings) -> ArtifactStore:
    """The checkpoint store of the settings: one per process (the API's Runtime holds it)."""
    if settings.artifact_s3_bucket:
        return Boto3ArtifactStore(settings.artifact_s3_bucket)  # needs boto3 and AWS credentials in the environment
    directory = artifact_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(directory))


def save(session: Session, store: ArtifactStore, lease: Lease, step: int, data: BinaryIO, size: int) -> None:
    """Keep `data` (`size` bytes, read from where the file stands) as the trial's checkpoint at
    `step`, replacing its previous one."""
    artifact_id = f"checkpoint-{lease.trial_id}-{step}-{uuid.uuid4().hex[:8]}"
    store.write(artifact_id, data)
    row = session.get(Checkpoint, lease.trial_id, with_for_update=True)
    previous = None
    if row is None:
        session.add(Checkpoint(trial_id=lease.trial_id, study_id=lease.study_id, artifact_id=artifact_id, step=step, size=size))
    else:
        previous = row.artifact_id
        row.artifact_id, row.step, row.size, row.updated_at = artifact_id, step, size, study_rows.now(session)
    session.flush()
    if previous:
        _remove(store, previous)


def resumable(session: Session, storage: BaseStorage, record: StudyRecord, history: Sequence[int]) -> Checkpoint | None:
    """The latest checkpoint up a retried trial's lineage (its predecessors, nearest first)."""
    if not history:
        return None
    with optuna_errors():
        study_id = storage.get_study_id_from_name(record.optuna_name)
        for number in reversed(history):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
            row = session.get(Checkpoint, trial_id)
            if row is not None:
                return row
    return None


def load(session: Session, storage: BaseStorage, store: ArtifactStore, record: StudyRecord, trial_id: int) -> tuple[int, bytes] | None:
    with optuna_errors():
        history = storage.get_trial_system_attrs(trial_id).get("retry_history", [])
    row = resumable(session, storage, record, history)
    if row is None:
        return None
    try:
        with store.open_reader(row.artifact_id) as reader:
            return row.step, reader.read()
    except ArtifactNotFound:
        log.warning("checkpoint %s of trial %s is missing from the artifact store", row.artifact_id, row.trial_id)
        return None


def _remove(store: ArtifactStore, artifact_id: str) -> None:
    try:
        store.remove(artifact_id)
    except ArtifactNotFound:
        pass


def tidy(session: Session, storage: BaseStorage, views: TrialViews, store: ArtifactStore, settings: Settings) -> int:
    """Remove checkpoints of deleted studies, and of trials finished longer ago than the
    retention, except each study's best trials' (one, or a multi-objective study's Pareto front)."""
    cutoff = study_rows.now(session) - timedelta(seconds=settings.checkpoint_retention_seconds)
    rows = session.scalars(
        select(Checkpoint).where(or_(Checkpoint.study_id.is_(None), Checkpoint.updated_at < cutoff)).with_for_update(skip_locked=True)
    ).all()
    best: dict[int, frozenset[int]] = {}
    removed = 0
    for row in rows:
        if row.study_id is not None:
            record = session.get(StudyRecord, row.study_id)
            if record is None:
                continue
            with optuna_errors():
                if not storage.get_trial(row.trial_id).state.is_finished():
                    continue
                if row.study_id not in best:
                    # The flat view reads a study's best again only after a trial has completed:
                    # every tick asks, for every study whose best keeps an old checkpoint.
                    study_id = views.optuna_study_id(storage, record.id, record.optuna_name)
                    best[row.study_id] = views.best_trial_ids(storage, study_id)
            if row.trial_id in best[row.study_id]:
                continue
        _remove(store, row.artifact_id)
        session.delete(row)
        removed += 1
    return removed
