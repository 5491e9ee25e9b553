"""`hpo export` and `hpo import`: a study as an Optuna SQLite file, out and back in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from hpo_client.models import StudyImported
from service.cli.connection import NameArgument, ServerOption, TokenOption, connect
from service.cli.output import _fail, _stdout, _write


def export(
    name: NameArgument,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write it (default: NAME.db)")] = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Download the study as an Optuna SQLite file, with every trial and its definition.

    Open it in Python: optuna.load_study(study_name="NAME", storage="sqlite:///NAME.db").

    Example: hpo export digits-adam -o digits-adam.db
    """
    with connect(server, token) as client:
        data = client.export(name)
    _write(output or Path(f"{name}.db"), data)


def import_(
    file: Annotated[
        Optional[Path], typer.Argument(help="An Optuna SQLite file (what `hpo export` writes)", exists=True, dir_okay=False)
    ] = None,
    into: Annotated[Optional[str], typer.Option("--into", help="Copy the trials into this existing study")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Make this new study from the file's definition")] = None,
    from_study: Annotated[Optional[str], typer.Option("--from-study", help="The study in the file (default: its only one)")] = None,
    database: Annotated[
        Optional[str], typer.Option("--database", help="Instead of a file: an Optuna study on the service's database (admin)")
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Copy a study's finished trials into one of the team's studies.

    From a file: into an existing study (--into), or as a new study made from the file's definition (--name; a file of `hpo export`). From the service's database: --database OPTUNA_STUDY --into NAME (an admin token).

    Trials whose params leave the study's space are left out; the ones copied inform the sampler and do not count in n_trials.

    Example: hpo import digits-adam.db --name digits-adam-copy
    """
    if database is not None:
        if file is not None or into is None or name is not None:
            _fail("--database copies into an existing study: give --into NAME, and no file or --name", code=2)
    elif file is None or (into is None) == (name is None):
        _fail("give a file and one of --into (an existing study) or --name (a new one)", code=2)
    with connect(server, token) as client:
        if database is not None:
            assert into is not None
            study = client.import_database_study(into, database)
        else:
            assert file is not None
            study = client.import_file(file, into=into, name=name, from_study=from_study)
    _report(study)


def _report(study: StudyImported) -> None:
    out = _stdout()
    out.print(f"study [bold]{escape(study.name)}[/] ({escape(study.optuna_name)}): copied {study.carried} trials, left out {study.left_out}")
    if study.best_trial is not None:
        out.print(f"best: {study.best_trial.value:.6g} (trial #{study.best_trial.number})")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("import")(import_)
