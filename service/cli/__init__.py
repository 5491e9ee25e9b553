"""The `hpo` command line: server-host commands, the study commands (through hpo_client), and
`hpo worker` handed to the worker package."""

from __future__ import annotations

import sys

import typer

from service.cli import lifecycle, server, studies, tokens, transfer, up

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Self-hosted hyperparameter optimization for PyTorch.\n\nExample: hpo up --demo",
)
app.command("migrate")(server.migrate)
app.command("serve")(server.serve)
app.command("down")(server.down)
app.add_typer(tokens.token_app, name="token")
app.command("up")(up.up)
studies.register(app)
lifecycle.register(app)
transfer.register(app)


@app.command(
    "worker",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def worker(ctx: typer.Context) -> None:
    """Pull trials and train them (see `hpo worker --help`).

    Example: hpo worker --server http://127.0.0.1:8000 --token hpo_...
    """
    # Imported here so that the API image, which has no torch, never loads the worker.
    from worker.cli import main as worker_main

    worker_main(list(ctx.args))


def main() -> None:
    app(prog_name="hpo")


if __name__ == "__main__":
    sys.exit(main())
