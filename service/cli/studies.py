"""`hpo submit|studies|status|best|trials|stop|delete|plot|report`: the study API from the shell.

No HTTP here: every call goes through hpo_client.Client. The server and token come from
--server/--token, then HPO_SERVER (or HPO_SERVER_URL) and HPO_TOKEN, then the config file that
`hpo up` writes (hpo_client.config)."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
import yaml
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from hpo_client import PLOT_KINDS, Client
from hpo_client.config import load_settings
from hpo_client.errors import AuthError, ConfigError, HpoError, NotFoundError, ServerUnreachable
from hpo_client.models import FINISHED_STATES, RUNNING, Study, Trial

ServerOption = Annotated[
    Optional[str],
    typer.Option("--server", help="Service URL (else HPO_SERVER or HPO_SERVER_URL, then the config file `hpo up` writes)"),
]
TokenOption = Annotated[
    Optional[str], typer.Option("--token", help="API token of the team (else HPO_TOKEN, then the config file)")
]
NameArgument = Annotated[str, typer.Argument(help="The study's name (see `hpo studies`)", show_default=False)]

STATE_STYLES = {"running": "cyan", "finished": "green", "stopped": "yellow"}


def _stdout() -> Console:
    # Piped or captured, rich would squeeze tables into 80 columns; give them room instead.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code)


@contextmanager
def connect(server: str | None, token: str | None) -> Iterator[Client]:
    """A client for the resolved server and token; service errors become a red message and exit 1."""
    try:
        settings = load_settings(server, token)
    except ConfigError as exc:
        _fail(str(exc), code=2)
    if not settings.token:
        _fail(
            f"no token: pass --token, set HPO_TOKEN, or run `hpo up`, which writes one to {settings.config_path}",
            code=2,
        )
    client = Client(settings.server or "", settings.token, timeout=settings.timeout)
    try:
        yield client
    except ServerUnreachable as exc:
        _fail(f"{exc.detail}; is the service running? (--server, HPO_SERVER or {settings.config_path})")
    except AuthError as exc:
        _fail(f"{exc.detail} (HTTP {exc.status}; the token comes from --token, HPO_TOKEN or {settings.config_path})")
    except NotFoundError as exc:
        if exc.detail == "Not Found":  # FastAPI's own 404: the route, not a study, is missing
            _fail(f"the service at {settings.server} has no route {exc.method} {exc.path} (an older version?)")
        _fail(exc.detail)
    except HpoError as exc:
        _fail(exc.detail if exc.status is None else f"{exc.detail} (HTTP {exc.status})")
    finally:
        client.close()


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _params(params: dict[str, Any]) -> str:
    return "  ".join(f"{k}={_num(v) if isinstance(v, float) else v}" for k, v in params.items())


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


# -- status -------------------------------------------------------------------------------


def finished_trials(study: Study, trials: list[Trial]) -> int:
    """Trials that ended, a failed trial that was retried counting once (through its retry)."""
    if not trials:
        return study.finished
    retried = {t.retry_of for t in trials if t.retry_of is not None}
    return sum(1 for t in trials if t.state in FINISHED_STATES and t.number not in retried)


def _progress(study: Study, done: int) -> RenderableType:
    """The bar follows the binding budget (the least left): trials, epochs, seconds or the deadline."""
    budget = study.budget or {}
    binding = budget.get("binding", "n_trials")
    total, completed, label = max(study.n_trials, 1), min(done, study.n_trials), f"{done}/{study.n_trials} trials finished"
    if binding == "max_epochs" and "max_epochs" in budget:
        b = budget["max_epochs"]
        total, completed = b["limit"], min(b["used"], b["limit"])
        label = f"{b['used']}/{b['limit']} epochs used ({b['in_flight']} in flight); {done} trials finished"
    elif binding == "max_seconds" and "max_seconds" in budget:
        b = budget["max_seconds"]
        total, completed = b["limit"], min(b["used"], b["limit"])
        label = f"{b['used']:.0f}/{b['limit']:.0f} s of trial time used; {done} trials finished"
    elif binding == "until" and "until" in budget:
        total, completed = 1, 1 if budget["until"]["left_seconds"] <= 0 else 0
        label = f"{budget['until']['left_seconds']:.0f} s left until {budget['until']['at']}; {done} trials finished"
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=max(total, 1), completed=completed, width=40), Text(label))
    return bar


def status_view(study: Study, trials: list[Trial]) -> RenderableType:
    """What `hpo status` shows: progress, counts by state, best so far, running trials' latest loss."""
    done = finished_trials(study, trials)
    parts: list[RenderableType] = [
        Text.assemble(
            (study.name, "bold"), f"  ({study.optuna_name})  ", (study.state, STATE_STYLES.get(study.state, "")),
        )
    ]
    parts.append(_progress(study, done))
    parts.append(
        Text(
            "  ".join(
                f"{label} {study.count(state)}"
                for label, state in (
                    ("complete", "COMPLETE"), ("pruned", "PRUNED"), ("failed", "FAIL"),
                    ("running", RUNNING), ("waiting", "WAITING"),
                )
            )
        )
    )
    best = study.best_trial
    if best is None:
        parts.append(Text("best: no complete trial yet"))
    else:
        parts.append(Text(f"best: {_num(best.value)} (trial #{best.number})  {_params(best.params)}"))
    running = [t for t in trials if t.state == RUNNING]
    if running:
        table = Table(title="running trials", title_justify="left", box=None, padding=(0, 2))
        for column in ("trial", "worker", "step", "latest loss", "params"):
            table.add_column(column, no_wrap=column != "params")
        for t in running:
            table.add_row(f"#{t.number}", t.worker_id or "-", str(t.last_step or "-"), _num(t.last_value), _params(t.params))
        parts.append(table)
    for hint in study.diagnosis.hints:
        parts.append(Text(f"hint: {hint}", style="dim"))
    return Group(*parts)


def status(
    name: NameArgument,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until the study stops running (or Ctrl-C)")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.05, help="Seconds between refreshes with --watch")] = 2.0,
    max_refreshes: Annotated[
        Optional[int], typer.Option("--max-refreshes", min=1, help="With --watch: stop after this many refreshes")
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """A study's progress: trials finished, counts by state, best so far, running trials' latest loss.

    With --watch it refreshes every --interval seconds and exits 0 when the study is finished or stopped (130 on Ctrl-C).

    Piped, each refresh is printed in turn.

    Example: hpo status digits-adam --watch --interval 5
    """
    out = _stdout()
    with connect(server, token) as client:

        def snapshot() -> tuple[Study, RenderableType]:
            study = client.study(name)
            return study, status_view(study, client.trials(name))

        if not watch:
            out.print(snapshot()[1])
            return
        try:
            _watch(out, snapshot, interval, max_refreshes)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


def _watch(out: Console, snapshot: Any, interval: float, max_refreshes: int | None) -> None:
    refreshes = 0
    if out.is_terminal:
        with Live(console=out, auto_refresh=False, transient=False) as live:
            while True:
                study, view = snapshot()
                live.update(view, refresh=True)
                refreshes += 1
                if not study.running or (max_refreshes is not None and refreshes >= max_refreshes):
                    return
                time.sleep(interval)
    # Not a terminal (a pipe, a log file): one snapshot after another.
    while True:
        study, view = snapshot()
        if refreshes:
            out.print()
        out.print(view)
        refreshes += 1
        if not study.running or (max_refreshes is not None and refreshes >= max_refreshes):
            return
        time.sleep(interval)


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


def _write(target: Path, data: bytes) -> None:
    try:
        target.write_bytes(data)
    except OSError as exc:
        _fail(f"cannot write {target}: {exc.strerror or exc}")
    _stdout().print(f"wrote {escape(str(target))} ({len(data)} bytes)")


def register(app: typer.Typer) -> None:
    for command in (submit, studies, status, best, trials, stop, delete, plot, report):
        app.command(command.__name__)(command)
