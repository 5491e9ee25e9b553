"""`hpo enqueue|extend|resume|clone`: a study after it was created, from the shell.

Through hpo_client.Client and service.cli.connection.connect, so the server, the token and the
service's errors are handled as by the other study commands."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from rich.markup import escape

from hpo_client.models import Study
from service.cli.connection import NameArgument, ServerOption, TokenOption, connect
from service.cli.output import _fail, _stdout

# PyYAML reads YAML 1.1, where a number with an exponent and no dot (1e-3) is a string; in a
# --set value it means the number, as it would in YAML 1.2 or JSON.
EXPONENT = re.compile(r"[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+")


def _load(path: Path) -> Any:
    """A YAML or JSON file's content (JSON by its suffix, so its messages are JSON's)."""
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror or exc}", code=2)
    except (ValueError, yaml.YAMLError) as exc:
        _fail(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}", code=2)


def _budget_line(study: Study) -> str:
    budget = study.definition.get("budget", {})
    others = "".join(f", {key} {budget[key]}" for key in ("max_concurrent", "max_retries") if key in budget)
    line = f"study [bold]{escape(study.name)}[/]: n_trials {study.n_trials}{others}; {study.finished} finished; {study.state}"
    if study.state == "stopped":
        line += f" (resume it with `hpo resume {escape(study.name)}`)"
    return line


# -- enqueue ----------------------------------------------------------------------------------


def enqueue(
    name: NameArgument,
    params: Annotated[
        Optional[list[str]],
        typer.Option("--params", "-p", help='One trial\'s params as a JSON object, e.g. \'{"lr": 0.01}\' (repeatable)'),
    ] = None,
    file: Annotated[
        Optional[Path],
        typer.Option("--file", "-f", help="A YAML or JSON list of params mappings, one trial each", exists=True, dir_okay=False),
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Queue trials with given params: claimed before any sampled trial, counted in n_trials.

    Params left out are sampled. The --params trials are queued first, in order, then the --file ones.

    Example: hpo enqueue digits-adam --params '{"lr": 0.01, "optimizer": "adam"}'
    """
    trials: list[dict[str, Any]] = []
    for i, text in enumerate(params or [], start=1):
        try:
            trial = json.loads(text)
        except ValueError as exc:
            _fail(f"--params #{i}: not valid JSON: {exc}", code=2)
        if not isinstance(trial, dict):
            _fail(f"--params #{i}: must be a JSON object of params, like '{{\"lr\": 0.01}}'", code=2)
        trials.append(trial)
    if file is not None:
        loaded = _load(file)
        listed = [loaded] if isinstance(loaded, dict) else loaded
        if not isinstance(listed, list) or not all(isinstance(t, dict) for t in listed):
            _fail(f"{file}: must be a list of params mappings (one trial each)", code=2)
        trials.extend(listed)
    if not trials:
        _fail("nothing to queue: give --params JSON (repeatable) or --file FILE", code=2)
    with connect(server, token) as client:
        numbers = client.enqueue(name, trials)
    plural = "s" if len(numbers) != 1 else ""
    listing = ", ".join(f"#{n}" for n in numbers)
    _stdout().print(f"queued {len(numbers)} trial{plural} in study [bold]{escape(name)}[/]: {listing}")


# -- extend, resume ---------------------------------------------------------------------------


def extend(
    name: NameArgument,
    trials: Annotated[Optional[int], typer.Option("--trials", "-n", min=1, help="Set n_trials to N")] = None,
    add: Annotated[Optional[int], typer.Option("--add", min=1, help="Raise n_trials by K from its current value")] = None,
    max_concurrent: Annotated[Optional[int], typer.Option("--max-concurrent", min=1, help="Trials running at once")] = None,
    max_retries: Annotated[Optional[int], typer.Option("--max-retries", min=0, help="Retries of a trial whose worker was lost")] = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Change a study's budget; raising n_trials makes a finished study run again.

    A stopped study stays stopped: see `hpo resume`.

    Example: hpo extend digits-adam --add 20 --max-concurrent 4
    """
    if trials is not None and add is not None:
        _fail("give --trials N or --add K, not both", code=2)
    if trials is None and add is None and max_concurrent is None and max_retries is None:
        _fail("nothing to change: give at least one of --trials, --add, --max-concurrent, --max-retries", code=2)
    with connect(server, token) as client:
        if add is not None:
            # Read, then written: two --add at the same moment may raise it once.
            trials = client.study(name).n_trials + add
        study = client.extend(name, n_trials=trials, max_concurrent=max_concurrent, max_retries=max_retries)
    _stdout().print(_budget_line(study))


def resume(
    name: NameArgument,
    trials: Annotated[Optional[int], typer.Option("--trials", "-n", min=1, help="Set n_trials to N too")] = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Resume a stopped study: its trials are handed out again until n_trials is reached.

    Example: hpo resume digits-adam --trials 40
    """
    with connect(server, token) as client:
        study = client.resume(name, n_trials=trials)
    _stdout().print(_budget_line(study))
    if study.state == "finished":
        _stdout().print(f"it has no trials left to run: raise n_trials (`hpo extend {escape(name)} --add K`)")


# -- clone ------------------------------------------------------------------------------------


def parse_scalar(text: str) -> Any:
    value = yaml.safe_load(text)
    return float(value) if isinstance(value, str) and EXPONENT.fullmatch(value) else value


def _parse_set(assignment: str) -> tuple[list[str], Any]:
    path, sep, text = assignment.partition("=")
    keys = path.strip().split(".")
    if not sep or not all(keys):
        _fail(f"--set {assignment!r}: expected key.path=value, e.g. budget.n_trials=30", code=2)
    try:
        return keys, parse_scalar(text)
    except yaml.YAMLError as exc:
        _fail(f"--set {assignment!r}: the value is not valid YAML: {exc}", code=2)


def _in_space_entry(keys: list[str]) -> bool:
    return len(keys) > 2 and keys[0] == "space"


def _apply_set(changes: dict[str, Any], keys: list[str], value: Any, source: dict[str, Any] | None) -> None:
    """Below a space entry (space.lr.high=...) the entry starts as the source's: the service
    replaces an entry whole, so one field alone would lose the rest of it."""
    if _in_space_entry(keys) and source is not None:
        space = changes.setdefault("space", {})
        entry = source.get("space", {}).get(keys[1])
        if isinstance(space, dict) and keys[1] not in space and isinstance(entry, dict):
            space[keys[1]] = json.loads(json.dumps(entry))  # a deep copy
    node = changes
    for i, key in enumerate(keys[:-1]):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            _fail(f"--set {'.'.join(keys)}: {'.'.join(keys[: i + 1])} is not a mapping in the changes", code=2)
    node[keys[-1]] = value


def clone(
    name: NameArgument,
    new: Annotated[str, typer.Argument(help="The new study's name", show_default=False)],
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", "-s", help="key.path=value, the value read as YAML (30, 1e-3, true, null removes the key); repeatable"),
    ] = None,
    changes_file: Annotated[
        Optional[Path],
        typer.Option("--changes", "-c", help="A YAML or JSON mapping of changes to the definition", exists=True, dir_okay=False),
    ] = None,
    carry: Annotated[bool, typer.Option("--carry", help="Copy the finished trials that fit the new space")] = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """A new study from this one's definition with changes; --carry brings its finished trials.

    --changes is merged first, then each --set; null removes a key. With --carry the finished trials that fit the new space are copied, so the sampler starts informed.

    In --changes a space entry is replaced whole; --set space.lr.high=0.1 changes that one field of the source's entry and keeps the rest.

    Example: hpo clone digits-adam digits-adam-2 --set budget.n_trials=30 --set space.lr.high=0.1 --carry
    """
    changes: dict[str, Any] = {}
    if changes_file is not None:
        loaded = _load(changes_file)
        if not isinstance(loaded, dict):
            _fail(f"{changes_file}: the changes must be a mapping, like the study definition", code=2)
        changes = loaded
    assignments = [_parse_set(a) for a in set_ or []]
    with connect(server, token) as client:
        needs_source = any(_in_space_entry(keys) for keys, _ in assignments)
        source = client.study(name).definition if needs_source else None
        for keys, value in assignments:
            _apply_set(changes, keys, value, source)
        study = client.clone(name, new, changes=changes, carry_trials=carry)
    out = _stdout()
    out.print(f"cloned study [bold]{escape(name)}[/] as [bold]{escape(study.name)}[/] ({study.n_trials} trials, {study.direction})")
    out.print(f"optuna name: {escape(study.optuna_name)}")
    out.print(f"carried {study.carried} trials, left out {study.left_out}" + ("" if carry else " (no --carry)"))
    for warning in study.warnings:
        out.print(f"[yellow]warning:[/] {escape(warning)}")


def register(app: typer.Typer) -> None:
    for command in (enqueue, extend, resume, clone):
        app.command(command.__name__)(command)
