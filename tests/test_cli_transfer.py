"""`hpo export` / `hpo import` and the client's export and import calls against a real `hpo serve`:
a study goes out as an Optuna SQLite file and comes back as a new study, or into another one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo_client import Client, InvalidRequestError
from tests.conftest import LiveServer
from tests.test_cli_studies import flags, hpo, isolated  # noqa: F401 - the fixtures, reused
from tests.test_sdk_client import run_trial, small


@pytest.fixture
def sdk(live_server: LiveServer, flags: tuple[str, ...]) -> Any:
    with Client(live_server.url, flags[-1]) as c:
        yield c


def test_export_then_import_as_a_new_study(sdk: Client, live_server: LiveServer, flags: tuple[str, ...], tmp_path: Path) -> None:
    sdk.submit(small("outbound"))
    with live_server.client(flags[-1]) as worker:
        run_trial(worker, "outbound", [0.9, 0.5])
        run_trial(worker, "outbound", [0.8, 0.7], state="pruned")
    target = tmp_path / "outbound.db"
    result = hpo("export", "outbound", "-o", str(target), *flags)
    assert result.exit_code == 0, result.output
    assert [t.params for t in optuna.load_study(study_name="outbound", storage=f"sqlite:///{target}").trials] == [
        t.params for t in sdk.trials("outbound")
    ]

    result = hpo("import", str(target), "--name", "inbound", *flags)
    assert result.exit_code == 0, result.output
    assert "study inbound" in result.stdout and "copied 2 trials, left out 0" in result.stdout
    assert [(t.state, t.params) for t in sdk.trials("inbound")] == [(t.state, t.params) for t in sdk.trials("outbound")]

    again = sdk.import_file(sdk.export("outbound"), into="inbound")
    assert (again.carried, again.left_out, again.count("COMPLETE")) == (2, 0, 2)


def test_import_refusals(sdk: Client, flags: tuple[str, ...], tmp_path: Path) -> None:
    sdk.submit(small("receiver"))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite")
    refused = hpo("import", str(junk), "--into", "receiver", *flags)
    assert refused.exit_code == 1 and "not an SQLite database" in refused.stderr and "HTTP 422" in refused.stderr
    assert hpo("import", str(junk), *flags).exit_code == 2  # neither --into nor --name
    assert hpo("import", str(junk), "--into", "a", "--name", "b", *flags).exit_code == 2
    assert hpo("import", "--database", "x", *flags).exit_code == 2  # --database needs --into
    with pytest.raises(InvalidRequestError, match="not an SQLite database"):
        sdk.import_file(b"junk", name="never")
    with pytest.raises(ValueError):
        sdk.import_file(b"junk")
    assert [s.name for s in sdk.studies()] == ["receiver"]


def test_import_from_the_database(sdk: Client, flags: tuple[str, ...], db_url: str) -> None:
    sdk.submit(small("from-db"))
    notebook = optuna.create_study(study_name="cli-notebook", storage=db_url)
    notebook.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-1, log=True), n_trials=2)
    result = hpo("import", "--database", "cli-notebook", "--into", "from-db", *flags)
    assert result.exit_code == 0, result.output
    assert "copied 2 trials" in result.stdout
