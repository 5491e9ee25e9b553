"""Studies in and out of the service as Optuna's own SQLite files (optuna.copy_study), and in from
another Optuna study on the same database.

An export opens in a notebook as `optuna.load_study(study_name=<name>, storage="sqlite:///<file>")`
with every trial, attribute and the definition (user attribute `hpo_definition`). An import copies
a study's finished trials into one of the team's studies (lifecycle.carry_trials: they inform the
sampler and the pruner and are not counted in n_trials), creating that study from the file's
`hpo_definition` when it does not exist yet: an export of this service comes back whole."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
import optuna
from optuna.storages import BaseStorage, RDBStorage
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service.db import studies as study_rows
from service.db.models import StudyRecord, Team
from service.engine import lifecycle, studies
from service.engine.optuna_adapter.internals import study_id as study_id_of
from service.engine.storage import optuna_errors
from service.errors import InvalidRequest, NotFound
from service.spec import StudySpec

SQLITE_MAGIC = b"SQLite format 3\x00"


def export_sqlite(storage: BaseStorage, record: StudyRecord) -> bytes:
    """The study as an Optuna SQLite file, named in it as the study is in the team."""
    with tempfile.TemporaryDirectory(prefix="hpo-export-") as tmp:
        path = Path(tmp) / "study.db"
        target = _sqlite_storage(path)
        try:
            with optuna_errors():
                optuna.copy_study(from_study_name=record.optuna_name, from_storage=storage, to_storage=target, to_study_name=record.name)
        finally:
            target.engine.dispose()
        return path.read_bytes()


def import_sqlite(
    session: Session, storage: BaseStorage, team: Team, data: bytes, from_study: str | None, *, into: StudyRecord | None, name: str
) -> tuple[StudyRecord, int, int]:
    """The finished trials of `from_study` in the uploaded file (its only study when not named)
    into the team's study `into`, or into a new study `name` made from the file's definition.
    Returns (the study, trials carried, left out)."""
    if not data.startswith(SQLITE_MAGIC):
        raise InvalidRequest("body: not an SQLite database file (an Optuna storage, as `hpo export` writes)")
    with tempfile.TemporaryDirectory(prefix="hpo-import-") as tmp:
        path = Path(tmp) / "upload.db"
        path.write_bytes(data)
        try:
            source = _sqlite_storage(path)
        except Exception as exc:  # not Optuna's schema, or a damaged file: the upload's fault
            raise InvalidRequest(f"body: not an Optuna storage Optuna {optuna.__version__} can read: {type(exc).__name__}") from exc
        try:
            return _import_from(session, storage, team, source, from_study, into, name, origin="import")
        finally:
            source.engine.dispose()


def import_database_study(session: Session, storage: BaseStorage, team: Team, into: StudyRecord, optuna_study: str) -> tuple[StudyRecord, int, int]:
    """The finished trials of another Optuna study on the service's own database (a notebook's,
    say) into the team's study `into`. Another team's study is not found, as in every route."""
    owner = study_rows.owner_of_optuna_study(session, optuna_study)
    if owner is not None and owner != team.id:
        raise NotFound(f"no Optuna study named '{optuna_study}' on this database")
    return _import_from(session, storage, team, storage, optuna_study, into, into.name, origin="database")


def _import_from(
    session: Session,
    storage: BaseStorage,
    team: Team,
    source: BaseStorage,
    from_study: str | None,
    record: StudyRecord | None,
    name: str,
    origin: str,
) -> tuple[StudyRecord, int, int]:
    with optuna_errors():
        summaries = source.get_all_studies()
    names = [s.study_name for s in summaries]
    where = "file" if origin == "import" else "database"
    if from_study is None:
        if len(names) != 1:
            raise InvalidRequest(f"from_study: the {where} holds {len(names)} studies; name one of: {', '.join(names) or 'none'}")
        from_study = names[0]
    if from_study not in names:
        raise NotFound(f"no Optuna study named '{from_study}' in the {where}")
    found = next(s for s in summaries if s.study_name == from_study)
    spec = _definition_of(found, name) if record is None else studies.spec_of(record)
    directions = [d.name.lower() for d in found.directions]
    if directions != [spec.direction]:
        # Checked before a study is created: Optuna's storage commits apart from our transaction.
        raise InvalidRequest(f"from_study: '{from_study}' optimizes {'/'.join(directions)}; study '{name}' {spec.direction}s")
    if record is None:
        record = studies.create(session, storage, team, spec)
    with optuna_errors():
        trials = source.get_all_trials(study_id_of(found), deepcopy=False)
    carried, left_out = lifecycle.carry_trials(storage, record.optuna_name, spec, trials, f"{origin}:{from_study}")
    return record, carried, left_out


def _definition_of(found: optuna.study.StudySummary, name: str) -> StudySpec:
    definition = found.user_attrs.get("hpo_definition")
    if not isinstance(definition, dict):
        raise InvalidRequest(
            f"body: '{found.study_name}' carries no hpo_definition to make study '{name}' from: create the study "
            "first (POST /api/v1/studies), then import into it (POST /api/v1/studies/{name}/import)"
        )
    try:
        return StudySpec.model_validate({**definition, "name": name})
    except ValidationError as exc:
        raise InvalidRequest(f"hpo_definition: the file's definition does not validate: {exc.errors()[0]['msg']}") from exc


def _sqlite_storage(path: Path) -> RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna notes a new storage's version: nothing to act on
        return RDBStorage(f"sqlite:///{path}")
