"""`hpo status`: a study's progress, once or refreshed with --watch."""

from __future__ import annotations

import time
from typing import Annotated, Any, Optional

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from hpo_client.models import FINISHED_STATES, RUNNING, Study, Trial
from service.cli.connection import NameArgument, ServerOption, TokenOption, connect
from service.cli.output import STATE_STYLES, _num, _params, _stdout


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
