"""`hpo up`: the embedded database, the API and local workers in one command; `--demo` also
submits a demo study, shows its progress and exits when it is done."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hpo_client import Client
from hpo_client.config import write_config
from hpo_client.models import Study
from service.cli.server import resolve_database_url
from service.settings import get_settings

console = Console()

DEMO_TEAM = "demo"


def demo_definition(name: str, n_trials: int, epochs: int) -> dict[str, Any]:
    # The ranges are the ones ../shared/HYPERPARAMETERS.md recommends searching, with each
    # optimizer's lr range (conditional) widened by an order of magnitude either way, so the
    # demo also shows what the diagnosis says about the extremes.
    return {
        "name": name,
        "direction": "minimize",
        "workload": {"model": "mlp", "dataset": "digits", "epochs": epochs},
        "space": {
            "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
            "lr": {
                "type": "conditional",
                "on": "optimizer",
                "cases": {
                    "sgd": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
                    "adam": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                },
            },
            "batch_size": {"type": "int", "low": 1, "high": 1024, "log": True},
            "dropout": {"type": "float", "low": 0.2, "high": 0.5},
            "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
            "schedule": {"type": "categorical", "choices": ["constant", "cosine"]},
        },
        "sampler": {"kind": "tpe", "seed": 0},
        "pruner": {"kind": "median", "n_startup_trials": 5, "n_warmup_steps": 2},
        "budget": {"n_trials": n_trials, "max_concurrent": 8},
    }


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, api: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    with Client(url, None, timeout=2) as client:
        if client.wait_until_healthy(timeout, running=lambda: api.poll() is None):
            return
    if api.poll() is not None:
        raise typer.Exit(f"the API exited with code {api.returncode}")
    raise typer.Exit("the API did not become healthy in time")


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in processes:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


def _watch(client: Client, name: str, n_trials: int) -> Study:
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[line]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(name, total=n_trials, line="")
        while True:
            study = client.study(name)
            c = study.counts
            best = study.best_trial
            line = (
                f"complete {c['COMPLETE']}  pruned {c['PRUNED']}  failed {c['FAIL']}  running {c['RUNNING']}"
                f"  best {best.value:.4f}" if best else f"complete {c['COMPLETE']}  pruned {c['PRUNED']}  running {c['RUNNING']}"
            )
            progress.update(task, completed=study.finished, line=line)
            if not study.running:
                return study
            time.sleep(1.0)


def up(
    demo: Annotated[bool, typer.Option(help="Submit a demo study, show progress, exit when done")] = False,
    workers: Annotated[int, typer.Option(help="Local worker processes")] = 2,
    port: Annotated[int, typer.Option(help="API port (a free one is picked if taken)")] = 8000,
    trials: Annotated[int, typer.Option(help="Demo: number of trials")] = 40,
    epochs: Annotated[int, typer.Option(help="Demo: epochs per trial")] = 15,
) -> None:
    """Run the embedded database, the API and local workers; Ctrl-C stops them.

    Example: hpo up --demo
    """
    from service.db.session import make_engine, make_sessionmaker
    from service.db.teams import create_token, ensure_team
    from service.migrate import migrate

    settings = get_settings()
    # The embedded database stays up after we exit, so the printed dashboard command works.
    db_url = resolve_database_url(settings, stop_on_exit=False)
    console.print(f"database: [cyan]{db_url}[/]")
    migrate(db_url, settings)
    engine = make_engine(db_url, settings, application_name="hpo-up")
    with make_sessionmaker(engine).begin() as session:
        team = ensure_team(session, DEMO_TEAM)
        # An admin token for the person at the keyboard; the local workers get a worker token.
        token = create_token(session, team, "admin", name="hpo up")
        worker_token = create_token(session, team, "worker", name="hpo up workers")
    engine.dispose()

    port = _free_port(port)
    url = f"http://127.0.0.1:{port}"
    # Plain http on loopback: the dashboard login cookie cannot be `Secure` here.
    env = {**os.environ, "HPO_DATABASE_URL": db_url, "HPO_PORT": str(port), "HPO_HOST": "127.0.0.1", "HPO_COOKIE_SECURE": "false"}
    processes: list[subprocess.Popen[bytes]] = []
    # In the demo the progress bar owns the terminal; the processes log to files instead.
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def output(name: str) -> Any:
        return open(logs / f"{name}.log", "ab") if demo else None

    try:
        api = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            env={**env, "HPO_LOG_LEVEL": "warning"},
            stdout=output("api"),
            stderr=subprocess.STDOUT if demo else None,
        )
        processes.append(api)
        _wait_healthy(url, api)
        console.print(f"API: [cyan]{url}[/] (OpenAPI at {url}/docs)   admin token: [yellow]{token}[/]")
        console.print(f"optuna-dashboard: [cyan]{url}/dashboard[/] (log in with the admin token)")
        _write_client_config(url, token)
        # One CPU thread per worker: on a small machine, workers then don't fight over cores.
        worker_cmd = [sys.executable, "-m", "worker.cli", "--server", url, "--token", worker_token]
        if workers > 1:
            worker_cmd += ["--threads", str(max(1, (os.cpu_count() or 1) // workers))]
        for i in range(workers):
            processes.append(
                subprocess.Popen(
                    worker_cmd + ["--worker-id", f"local-{i}"],
                    env=env,
                    stdout=output(f"worker-{i}"),
                    stderr=subprocess.STDOUT if demo else None,
                )
            )
        console.print(f"{workers} local workers started" + (f" (logs in {logs}/)" if demo else ""))
        if not demo:
            console.print("running; Ctrl-C stops")
            signal.signal(signal.SIGTERM, _interrupt)
            try:
                while all(p.poll() is None for p in processes):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
            return
        _run_demo(url, token, trials, epochs)
    finally:
        _stop(processes[1:])
        _stop(processes[:1])
    console.print("Inspect it in optuna-dashboard (same database):")
    console.print(f"  {shlex.quote(dashboard_binary())} {shlex.quote(db_url)}", soft_wrap=True, highlight=False)
    if not settings.database_url:
        console.print("The embedded database keeps running for that; stop it with: hpo down")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def dashboard_binary() -> str:
    return os.path.join(os.path.dirname(sys.executable), "optuna-dashboard")


def _write_client_config(url: str, token: str) -> None:
    """So that `hpo studies`, `hpo status ...` and hpo_client find this server and token."""
    try:
        path = write_config(url, token)
    except OSError as exc:
        console.print(f"[yellow]could not write the client config ({exc}); pass --server and --token to hpo commands[/]")
        return
    console.print(f"client config: [cyan]{path}[/] (server and admin token for `hpo studies`, `hpo status`, ...)")


def _run_demo(url: str, token: str, n_trials: int, epochs: int) -> None:
    name = time.strftime("digits-demo-%Y%m%d-%H%M%S")
    with Client(url, token, timeout=30) as client:
        client.submit(demo_definition(name, n_trials, epochs))
        console.print(f"submitted study [bold]{name}[/] ({n_trials} trials, {epochs} epochs each, median pruning)")
        started = time.monotonic()
        study = _watch(client, name, n_trials)
    c = study.counts
    console.print(
        f"done in {time.monotonic() - started:.0f}s: {c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed"
    )
    best = study.best_trial
    if best:
        console.print(f"best trial #{best.number}: validation loss {best.value:.4f}")
        for k, v in best.params.items():
            console.print(f"  {k} = {v:.6g}" if isinstance(v, float) else f"  {k} = {v}")
    counts = study.diagnosis.counts
    console.print("loss curves: " + ", ".join(f"{n} {d}" for d, n in counts.items() if n))
    for hint in study.diagnosis.hints:
        console.print(f"  hint: {hint}")
    console.print(f"Optuna study name: [bold]{study.optuna_name}[/]")
