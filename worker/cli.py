"""`hpo worker` / `hpo-worker`: pull trials from the service and train them."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from service.spec.fusion import MAX_GROUP
from worker.device import pick_device
from worker.settings import WorkerSettings, default_worker_id

app = typer.Typer(add_completion=False, help="Pull trials from an hpo service and train them.")


@app.command()
def worker(
    server: Annotated[Optional[str], typer.Option(help="Service URL (env HPO_SERVER_URL)")] = None,
    token: Annotated[Optional[str], typer.Option(help="Team token (env HPO_TOKEN)")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:1, cpu ... (default: cuda if available)")] = None,
    worker_id: Annotated[Optional[str], typer.Option(help="Stable id shown on trials (default host-pid)")] = None,
    threads: Annotated[
        Optional[int], typer.Option(help="torch CPU threads (default: torch's choice; with --slots N, the CPUs / N per slot)")
    ] = None,
    slots: Annotated[
        Optional[int],
        typer.Option(min=1, help="Trials trained at once on the device, each in a process of its own (env HPO_SLOTS; default 1)"),
    ] = None,
    fuse: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            max=MAX_GROUP,
            help="Train up to K trials of one shape at once as one batched model (built-in mlp and cnn; "
            "README: Fused trials; env HPO_FUSE; default 1: one at a time)",
        ),
    ] = None,
    study: Annotated[Optional[list[str]], typer.Option("--study", help="Only claim from this study (repeatable)")] = None,
    data_root: Annotated[
        Optional[Path], typer.Option(help="Directory dataset files are read from; nothing is downloaded (env HPO_DATA_ROOT)")
    ] = None,
    allow_plugin: Annotated[
        Optional[list[str]],
        typer.Option(
            "--allow-plugin",
            help="Run plugin workloads whose entry (package.module:function, or an entry-point name) matches "
            "this fnmatch pattern, e.g. 'mypkg.*:train'; the module must also lie inside its top-level "
            "package's real directory (repeatable; replaces env HPO_ALLOW_PLUGINS, a JSON list)",
        ),
    ] = None,
    allow_command: Annotated[
        Optional[list[str]],
        typer.Option(
            "--allow-command",
            help="Run command workloads whose real path (an existing file) matches this pattern, e.g. 'scripts/*.py' "
            "(repeatable; relative to the working directory; replaces env HPO_ALLOW_COMMANDS)",
        ),
    ] = None,
    trial_timeout: Annotated[
        Optional[float],
        typer.Option(min=0.001, help="Seconds a plugin/command trial may run without its own timeout_seconds (env HPO_TRIAL_TIMEOUT)"),
    ] = None,
    trial_memory_mb: Annotated[
        Optional[int],
        typer.Option(min=16, help="Address-space cap (MiB) for plugin/command processes (env HPO_TRIAL_MEMORY_MB)"),
    ] = None,
    max_trials: Annotated[Optional[int], typer.Option(help="Exit after this many trials (per slot)")] = None,
    exit_when_idle: Annotated[
        Optional[float], typer.Option(help="Exit after this many seconds without work (each slot on its own)")
    ] = None,
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

    from worker.workloads.policy import Policy

    policy = Policy(
        allow_plugins=allow_plugin if allow_plugin is not None else settings.allow_plugins,
        allow_commands=allow_command if allow_command is not None else settings.allow_commands,
        trial_timeout=trial_timeout or settings.trial_timeout,
        trial_memory_mb=trial_memory_mb or settings.trial_memory_mb,
    )
    slots = slots or settings.slots
    fuse = fuse or settings.fuse
    if slots > 1:
        # A supervisor of `slots` slot processes (worker/slots.py); it never imports torch itself.
        from worker.slots import SlotConfig, default_threads, run_slots

        config = SlotConfig(
            server_url=server or settings.server_url,
            token=token,
            worker_id=worker_id or settings.worker_id or default_worker_id(),
            device=device or settings.device,
            threads=threads or settings.threads or default_threads(slots),
            studies=study or None,
            data_root=data_root or settings.data_root,
            policy=policy,
            ack_log=settings.ack_log,
            request_timeout=settings.request_timeout,
            verbose=verbose,
            max_trials=max_trials,
            exit_when_idle=exit_when_idle,
            fuse=fuse,
        )
        raise typer.Exit(run_slots(config, slots))

    import torch

    from worker.client import ServiceClient
    from worker.runner import Runner, TokenRefused

    if threads or settings.threads:
        torch.set_num_threads(threads or settings.threads or 1)
    client = ServiceClient(server or settings.server_url, token, timeout=settings.request_timeout)
    runner = Runner(
        client=client,
        worker_id=worker_id or settings.worker_id or default_worker_id(),
        device=pick_device(device or settings.device),
        studies=study or None,
        data_root=data_root or settings.data_root,
        policy=policy,
        ack_log=settings.ack_log,
        fuse=fuse,
    )
    runner.install_signal_handlers()
    log = logging.getLogger("hpo.worker")
    log.info("worker %s on %s%s", runner.worker_id, runner.device, f", up to {fuse} trials fused" if fuse > 1 else "")
    if policy.allow_plugins or policy.allow_commands:
        log.info("user workloads allowed: plugins %s, commands %s", policy.allow_plugins, policy.allow_commands)
    try:
        runner.run(max_trials=max_trials, exit_when_idle=exit_when_idle)
    except TokenRefused as exc:
        logging.getLogger("hpo.worker").error("the service refuses this token: %s", exc)
        raise typer.Exit(3) from exc
    finally:
        client.close()


def main(argv: list[str] | None = None) -> None:
    # MKL (torch's CPU BLAS) may pick kernels by memory alignment, so the same trial run twice can
    # differ in the last bits; strict conditional reproducibility keeps a resumed run's losses
    # exactly those of an uninterrupted one (README: Nothing lost). Set before torch is imported;
    # trial slots and user workloads inherit it.
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
    app(args=argv, prog_name="hpo worker")


if __name__ == "__main__":
    main()
