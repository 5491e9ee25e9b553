"""`hpo worker` / `hpo-worker`: pull trials from the service and train them."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer

from worker.settings import WorkerSettings, default_worker_id

app = typer.Typer(add_completion=False, help="Pull trials from an hpo service and train them.")


def pick_device(requested: str | None) -> str:
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


@app.command()
def worker(
    server: Annotated[Optional[str], typer.Option(help="Service URL (env HPO_SERVER_URL)")] = None,
    token: Annotated[Optional[str], typer.Option(help="Team token (env HPO_TOKEN)")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:1, cpu ... (default: cuda if available)")] = None,
    worker_id: Annotated[Optional[str], typer.Option(help="Stable id shown on trials (default host-pid)")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (default: torch's choice)")] = None,
    study: Annotated[Optional[list[str]], typer.Option("--study", help="Only claim from this study (repeatable)")] = None,
    max_trials: Annotated[Optional[int], typer.Option(help="Exit after this many trials")] = None,
    exit_when_idle: Annotated[Optional[float], typer.Option(help="Exit after this many seconds without work")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Claim trials, train them, report the validation loss every epoch, finish.

    Example: hpo worker --server http://api:8000 --token hpo_1234abcd_...
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per trial is the worker's log; httpx's per-request lines would drown it.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
    settings = WorkerSettings()
    token = token or settings.token
    if not token:
        raise typer.BadParameter("a team token is required (--token or HPO_TOKEN)", param_hint="--token")

    import torch

    from worker.client import ServiceClient
    from worker.runner import Runner

    if threads or settings.threads:
        torch.set_num_threads(threads or settings.threads or 1)
    client = ServiceClient(server or settings.server_url, token, timeout=settings.request_timeout)
    runner = Runner(
        client=client,
        worker_id=worker_id or settings.worker_id or default_worker_id(),
        device=pick_device(device or settings.device),
        studies=study or None,
    )
    runner.install_signal_handlers()
    logging.getLogger("hpo.worker").info("worker %s on %s", runner.worker_id, runner.device)
    try:
        runner.run(max_trials=max_trials, exit_when_idle=exit_when_idle)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> None:
    app(args=argv, prog_name="hpo worker")


if __name__ == "__main__":
    main()
