"""`hpo best|trials|plot|report`: what a study found, printed or saved to a file."""

from __future__ import annotations

import csv
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from rich.table import Table

from hpo_client import PLOT_KINDS
from hpo_client.models import Trial
from service.cli.connection import NameArgument, ServerOption, TokenOption, connect
from service.cli.output import _fail, _num, _stdout, _write


# -- best, trials ---------------------------------------------------------------------------


class Format(str, Enum):
    yaml = "yaml"
    json = "json"


def best(
    name: NameArgument,
    format: Annotated[Format, typer.Option("--format", "-f", help="yaml or json")] = Format.yaml,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """The best complete trial: its number, value (the validation loss) and params, as YAML or JSON.

    A study with several objectives prints its Pareto front instead: a list of trials with their values, one per objective.

    Exit code 1 when no trial is complete yet.

    Example: hpo best digits-adam --format json
    """
    with connect(server, token) as client:
        study = client.study(name)
    data: Any
    if study.best_trials is not None:
        if not study.best_trials:
            _fail(f"study '{name}' has no complete trial yet")
        names = [o["name"] for o in study.definition.get("objectives", [])]
        data = [{"number": t["number"], "values": dict(zip(names, t["values"])), "params": t["params"]} for t in study.best_trials]
    else:
        trial = study.best_trial
        if trial is None:
            _fail(f"study '{name}' has no complete trial yet")
        data = {"number": trial.number, "value": trial.value, "params": trial.params}
    if format is Format.json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(yaml.safe_dump(data, sort_keys=False), nl=False)


def _param_names(trials: list[Trial]) -> list[str]:
    names: dict[str, None] = {}
    for t in trials:
        names.update(dict.fromkeys(t.params))
    return list(names)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def trials(
    name: NameArgument,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="CSV on stdout: number,state,value,<params>,reason,diagnosis")
    ] = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Every trial of a study: state, value, params, epochs reported, why it ended, what its curve says.

    Example: hpo trials digits-adam --csv > trials.csv
    """
    with connect(server, token) as client:
        listing = client.trials(name)
    params = _param_names(listing)
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["number", "state", "value", *params, "reason", "diagnosis"])
        for t in listing:
            writer.writerow(
                [t.number, t.state, _cell(t.value), *(_cell(t.params.get(p)) for p in params)]
                + [_cell(t.reason), _cell(t.diagnosis)]
            )
        return
    table = Table(title=f"trials of {name}")
    for column in ("#", "state", "value", *params, "epochs", "last loss", "reason", "diagnosis", "worker"):
        table.add_column(column, no_wrap=True)
    for t in listing:
        table.add_row(
            str(t.number),
            t.state,
            _num(t.value),
            *(_num(v) if isinstance(v := t.params.get(p), float) else ("" if v is None else str(v)) for p in params),
            str(len(t.intermediate_values)),
            _num(t.last_value),
            t.reason or "",
            t.diagnosis or "",
            t.worker_id or "",
        )
    _stdout().print(table if listing else f"study '{name}' has no trials yet")


# -- plot, report ---------------------------------------------------------------------------


def plot(
    name: NameArgument,
    kind: Annotated[str, typer.Argument(help=f"The plot: {', '.join(PLOT_KINDS)}", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="The PNG to write [default: NAME-KIND.png]")] = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Save a plot of a study as a PNG.

    Kinds: history (value per trial), curves (loss per epoch), lr (loss against learning rate),
    importance (of each hyperparameter), parallel (parallel coordinates).

    Example: hpo plot digits-adam history -o history.png
    """
    with connect(server, token) as client:
        png = client.plot(name, kind)
    target = output or Path(f"{name}-{kind}.png")
    _write(target, png)


def report(
    name: NameArgument,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="The HTML to write [default: NAME-report.html]")
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Save a study's report: one self-contained HTML page with its plots and diagnosis.

    Example: hpo report digits-adam -o report.html
    """
    with connect(server, token) as client:
        html = client.report(name)
    _write(output or Path(f"{name}-report.html"), html.encode("utf-8"))
