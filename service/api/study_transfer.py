"""Studies as Optuna SQLite files: export one, import one into a study (or as a new study), and
import another Optuna study of the service's database. Imports are audited."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.api.deps import Admin, Manager, Reader, RuntimeDep
from service.api.schemas import DatabaseImport, StudyImported
from service.api.studies import audit_write
from service.engine import studies, transfer
from service.spec import NAME_PATTERN, NAME_RULE

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])

SQLITE = "application/vnd.sqlite3"
# Declared as octet-stream, the media type every client and fuzzer can send; any type is read.
_SQLITE_BODY = {
    "requestBody": {
        "required": True,
        "description": "an Optuna SQLite file (what GET .../export answers)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
FromStudy = Annotated[str | None, Query(max_length=512, description="the Optuna study in the file to import; default: its only one")]


@router.get("/{name}/export", response_class=Response, responses={200: {"content": {SQLITE: {}}, "description": "an Optuna SQLite file"}})
def export_study(name: str, runtime: RuntimeDep, caller: Reader) -> Response:
    """The study as an Optuna SQLite file (optuna.copy_study): every trial and attribute, and
    the definition. Role: viewer, member or admin."""
    with runtime.transaction() as session:
        record = studies.get(session, caller.team, name)
    data = transfer.export_sqlite(runtime.storage, record)
    return Response(data, media_type=SQLITE, headers={"Content-Disposition": f'attachment; filename="{record.name}.db"'})


@router.post("/{name}/import", response_model=StudyImported, openapi_extra=_SQLITE_BODY)
async def import_into_study(name: str, request: Request, runtime: RuntimeDep, caller: Manager, from_study: FromStudy = None) -> dict[str, Any]:
    """Copy the finished trials of an Optuna SQLite file's study into this study (those whose
    params fit its space). Role: member or admin."""
    data = await request.body()

    def work() -> dict[str, Any]:
        with runtime.transaction() as session:
            record = studies.get(session, caller.team, name, lock=True)
            record, carried, left_out = transfer.import_sqlite(session, runtime.storage, caller.team, data, from_study, into=record, name=name)
            return _imported(session, runtime, caller, record, carried, left_out, source=from_study or "upload")

    return await run_in_threadpool(work)


@router.post("/import", status_code=201, response_model=StudyImported, openapi_extra=_SQLITE_BODY)
async def import_as_new_study(
    request: Request,
    runtime: RuntimeDep,
    caller: Manager,
    name: Annotated[str, Query(pattern=NAME_PATTERN, description=NAME_RULE)],
    from_study: FromStudy = None,
) -> dict[str, Any]:
    """A new study `name` made from the file's definition (an export of this service), with the
    file study's finished trials. Role: member or admin."""
    data = await request.body()

    def work() -> dict[str, Any]:
        with runtime.transaction() as session:
            record, carried, left_out = transfer.import_sqlite(session, runtime.storage, caller.team, data, from_study, into=None, name=name)
            return _imported(session, runtime, caller, record, carried, left_out, source=from_study or "upload")

    return await run_in_threadpool(work)


@router.post("/{name}/import/database", response_model=StudyImported)
def import_database_study(name: str, body: DatabaseImport, runtime: RuntimeDep, caller: Admin) -> dict[str, Any]:
    """Copy the finished trials of another Optuna study on the service's database (one made in a
    notebook with the same storage URL, or one of this team's) into this study. Role: admin."""
    with runtime.transaction() as session:
        record = studies.get(session, caller.team, name, lock=True)
        record, carried, left_out = transfer.import_database_study(session, runtime.storage, caller.team, record, body.optuna_study)
        return _imported(session, runtime, caller, record, carried, left_out, source=body.optuna_study)


def _imported(session: Any, runtime: Any, caller: Any, record: Any, carried: int, left_out: int, source: str) -> dict[str, Any]:
    audit_write(session, caller, "study.import", record.name, optuna_name=record.optuna_name, source=source, carried=carried, left_out=left_out)
    session.flush()
    return {**asdict(studies.summary(session, runtime.storage, record)), "carried": carried, "left_out": left_out}
