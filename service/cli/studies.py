"""`hpo submit|studies|status|best|trials|stop|delete|plot|report`: the study API from the shell.

No HTTP here: every call goes through hpo_client.Client. The server and token come from
--server/--token, then HPO_SERVER (or HPO_SERVER_URL) and HPO_TOKEN, then the config file that
`hpo up` writes (hpo_client.config).

The commands live by what they do: this module submits, lists, stops and deletes studies and
registers them all; study_status.py has `status`, study_results.py `best|trials|plot|report`;
connection.py and output.py are what they share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from hpo_client.models import RUNNING
from service.cli.connection import NameArgument, ServerOption, TokenOption, connect
from service.cli.output import STATE_STYLES, _fail, _num, _stdout
from service.cli.study_results import Format, best, plot, report, trials
from service.cli.study_status import finished_trials, status, status_view

__all__ = [
    "STATE_STYLES",
    "Format",
    "NameArgument",
    "ServerOption",
    "TokenOption",
    "best",
    "connect",
    "delete",
    "finished_trials",
    "plot",
    "register",
    "report",
    "status",
    "status_view",
    "stop",
    "studies",
    "submit",
    "trials",
]


# -- submit -------------------------------------------------------------------------------


def submit(
    definition: Annotated[
        Path, typer.Argument(help="A study definition, YAML or JSON", exists=True, dir_okay=False, show_default=False)
    ],
    name: Annotated[Optional[str], typer.Option("--name", help="Use this name instead of the definition's")] = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Create a study from a definition file; prints its name, its Optuna name and any warnings.

    Example: hpo submit examples/digits_adam.yaml
    """
    with connect(server, token) as client:
        try:
            study = client.submit(definition, name=name)
        except (OSError, ValueError) as exc:
            _fail(str(exc), code=2)
    out = _stdout()
    out.print(f"submitted study [bold]{escape(study.name)}[/] ({study.n_trials} trials, {study.direction})")
    out.print(f"optuna name: {escape(study.optuna_name)}")
    for warning in study.warnings:
        out.print(f"[yellow]warning:[/] {escape(warning)}")


# -- studies ------------------------------------------------------------------------------


def studies(
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """The team's studies: state, trials finished, counts, best value.

    Example: hpo studies
    """
    with connect(server, token) as client:
        listing = client.studies()
    if as_json:
        typer.echo(json.dumps([s.model_dump(mode="json") for s in listing], indent=2))
        return
    table = Table(title="studies")
    for column in ("name", "state", "finished", "complete", "pruned", "failed", "running", "best", "created"):
        table.add_column(column, no_wrap=True, justify="right" if column not in ("name", "state", "created") else "left")
    for s in listing:
        table.add_row(
            s.name,
            Text(s.state, style=STATE_STYLES.get(s.state, "")),
            f"{s.finished}/{s.n_trials}",
            str(s.count("COMPLETE")),
            str(s.count("PRUNED")),
            str(s.count("FAIL")),
            str(s.count(RUNNING)),
            _num(s.best_trial.value) if s.best_trial else "-",
            s.created_at.astimezone().strftime("%Y-%m-%d %H:%M") if s.created_at else "-",
        )
    _stdout().print(table if listing else "no studies yet; create one with `hpo submit FILE`")


# -- stop, delete ---------------------------------------------------------------------------


def stop(name: NameArgument, server: ServerOption = None, token: TokenOption = None) -> None:
    """Stop a study: no more trials are handed out; running ones are pruned at their next report.

    Example: hpo stop digits-adam
    """
    with connect(server, token) as client:
        study = client.stop(name)
    running = study.count(RUNNING)
    tail = f"; {running} running trial{'s' if running != 1 else ''} will be pruned at the next report" if running else ""
    _stdout().print(f"stopped study [bold]{escape(study.name)}[/] ({study.finished}/{study.n_trials} trials finished{tail})")


def delete(
    name: NameArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")] = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Delete a study and all its trials, in Optuna's storage too. There is no undo.

    Example: hpo delete digits-adam --yes
    """
    with connect(server, token) as client:
        study = client.study(name)
        if not yes:
            n = sum(study.counts.values())
            if not typer.confirm(f"Delete study '{name}' ({study.optuna_name}) and its {n} trials? There is no undo"):
                _fail("not deleted")
        client.delete(name)
    _stdout().print(f"deleted study [bold]{escape(name)}[/]")


def register(app: typer.Typer) -> None:
    for command in (submit, studies, status, best, trials, stop, delete, plot, report):
        app.command(command.__name__)(command)
