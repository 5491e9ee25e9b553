"""Plots (PNG) and the HTML report of a study, scoped to the caller's team.

Plain `def` routes: they read Optuna's synchronous storage, and drawing is CPU work; FastAPI
runs them in its thread pool. The database is read inside the transaction, the drawing happens
after it, so no connection is held while matplotlib works."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from service.api.deps import Reader, RuntimeDep
from service.engine import plots, studies, study_page

router = APIRouter(prefix="/api/v1/studies", tags=["plots"])

_NOT_FOUND = {"description": "no such study in the caller's team"}


@router.get(
    "/{name}/plots/{kind}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": f"the plot, a {plots.WIDTH}x{plots.HEIGHT} PNG"},
        404: _NOT_FOUND,
        409: {"description": "nothing to plot yet (e.g. no complete trial; importance needs two)"},
    },
)
def get_plot(name: str, kind: plots.PlotKind, runtime: RuntimeDep, caller: Reader) -> Response:
    """One plot of the study as PNG: `history` (objective and best so far per trial), `curves`
    (validation loss per epoch, by state), `lr` (objective against learning rate, log axis; the
    sweep's U-curve or the range test's loss curve for those kinds), `importance` (fANOVA) or
    `parallel` (parallel coordinates). Role: viewer, member or admin."""
    with runtime.transaction() as session:
        inputs = plots.load(runtime.storage, studies.get(session, caller.team, name))
    with runtime.drawing():
        png = plots.render(kind, inputs.spec, inputs.trials, inputs.extra)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get(
    "/{name}/report",
    response_class=HTMLResponse,
    responses={200: {"description": "one self-contained HTML file"}, 404: _NOT_FOUND},
)
def get_report(name: str, runtime: RuntimeDep, caller: Reader) -> HTMLResponse:
    """The study as one self-contained HTML file: definition, best trial, importances, diagnosis
    and every plot that can be drawn yet (embedded). Role: viewer, member or admin."""
    with runtime.transaction() as session:
        record = studies.get(session, caller.team, name)
        summary = studies.summary(session, runtime.storage, record)
        inputs = plots.load(runtime.storage, record)
    with runtime.drawing():
        page = study_page.build(summary, inputs)
    return HTMLResponse(page, headers={"Content-Security-Policy": study_page.CSP, "Cache-Control": "no-store"})
