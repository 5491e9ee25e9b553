"""hpo_client.Client against a real `hpo serve`: every method, and the typed errors carrying the
service's messages. Trials are driven over the worker protocol by the test itself (no torch)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from hpo_client import (
    AuthError,
    Client,
    ConfigError,
    ConflictError,
    HpoError,
    InvalidDefinitionError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
    ServerUnreachable,
    ServiceUnavailable,
    Study,
    Trial,
)
from hpo_client.config import DEFAULT_SERVER, ClientSettings, load_settings, read_config, write_config
from hpo_client.errors import error_from_response
from tests.conftest import LiveServer, digits_definition, free_port

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- driving trials over the worker protocol -------------------------------------------------


def claim(worker: httpx.Client, name: str, worker_id: str = "test-worker") -> dict[str, Any]:
    response = worker.post("/api/v1/trials/claim", json={"worker_id": worker_id, "studies": [name]})
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()


def report(worker: httpx.Client, assignment: dict[str, Any], losses: list[float]) -> None:
    for step, loss in enumerate(losses, start=1):
        body = {"lease_id": assignment["lease_id"], "step": step, "value": loss}
        worker.post(f"/api/v1/trials/{assignment['trial_id']}/report", json=body).raise_for_status()


def finish(worker: httpx.Client, assignment: dict[str, Any], state: str, value: float | None = None, **extra: Any) -> None:
    body = {"lease_id": assignment["lease_id"], "state": state, "value": value, **extra}
    worker.post(f"/api/v1/trials/{assignment['trial_id']}/finish", json=body).raise_for_status()


def run_trial(worker: httpx.Client, name: str, losses: list[float], state: str = "complete", **extra: Any) -> dict[str, Any]:
    """Claim a trial, report `losses` epoch by epoch, and finish it; the objective is the best loss."""
    assignment = claim(worker, name)
    report(worker, assignment, losses)
    finish(worker, assignment, state, min(losses) if state == "complete" else None, **extra)
    return assignment


def populate(live_server: LiveServer, worker_token: str, name: str) -> dict[str, Any]:
    """Two complete trials (best 0.25), one pruned, one still running at 0.7 after two epochs."""
    with live_server.client(worker_token) as worker:
        first = run_trial(worker, name, [0.9, 0.6, 0.5])
        second = run_trial(worker, name, [0.8, 0.4, 0.25])
        pruned = run_trial(worker, name, [1.2, 1.1], state="pruned", reason="pruned")
        running = claim(worker, name, worker_id="still-going")
        report(worker, running, [0.9, 0.7])
    return {"first": first, "second": second, "pruned": pruned, "running": running}


def small(name: str, **overrides: Any) -> dict[str, Any]:
    return digits_definition(name, **{"budget": {"n_trials": 4, "max_concurrent": 4}, **overrides})


@pytest.fixture
def client(live_server: LiveServer, make_token: Any, team: str) -> Any:
    with Client(live_server.url, make_token(team, "admin")) as c:
        yield c


# -- submit and read back --------------------------------------------------------------------


def test_submit_a_dict_a_yaml_file_and_a_json_file(client: Client, team: str, tmp_path: Path) -> None:
    created = client.submit(small("from-dict"))
    assert created.name == "from-dict" and created.optuna_name == f"{team}/from-dict"
    assert created.state == "running" and created.n_trials == 4 and created.warnings == []
    assert created.definition["name"] == "from-dict" and "lr" in created.definition["space"]

    linear = small("from-yaml")
    linear["space"]["lr"] = {"type": "float", "low": 1e-5, "high": 1.0, "log": False}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(linear))
    from_yaml = client.submit(path)
    assert from_yaml.name == "from-yaml"
    assert any(w.startswith("space.lr: searched on a linear scale") for w in from_yaml.warnings), from_yaml.warnings

    json_path = tmp_path / "study.json"
    json_path.write_text(json.dumps(small("from-json")))
    assert client.submit(str(json_path)).name == "from-json"
    # The same file under another name.
    assert client.submit(path, name="renamed").name == "renamed"

    listed = client.studies()
    assert all(isinstance(s, Study) for s in listed)
    assert sorted(s.name for s in listed) == ["from-dict", "from-json", "from-yaml", "renamed"]
    one = client.study("from-yaml")
    assert one.definition["space"]["lr"]["log"] is False
    assert one.counts == {"RUNNING": 0, "COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "WAITING": 0}
    assert one.best_trial is None and client.best("from-yaml") is None
    assert client.trials("from-yaml") == []


def test_trials_best_stop_and_delete(client: Client, live_server: LiveServer, make_token: Any, team: str) -> None:
    client.submit(small("driven"))
    driven = populate(live_server, make_token(team, "worker"), "driven")

    trials = client.trials("driven")
    assert all(isinstance(t, Trial) for t in trials)
    by_number = {t.number: t for t in trials}
    assert [by_number[n].state for n in range(4)] == ["COMPLETE", "COMPLETE", "PRUNED", "RUNNING"]
    second = by_number[driven["second"]["number"]]
    assert second.value == 0.25 and second.intermediate_values == {1: 0.8, 2: 0.4, 3: 0.25}
    assert second.params == driven["second"]["params"] and second.worker_id == "test-worker"
    running = by_number[driven["running"]["number"]]
    assert running.last_step == 2 and running.last_value == 0.7 and running.worker_id == "still-going"

    best = client.best("driven")
    assert best is not None
    assert (best.number, best.value, best.params) == (driven["second"]["number"], 0.25, driven["second"]["params"])
    study = client.study("driven")
    assert study.counts["COMPLETE"] == 2 and study.counts["PRUNED"] == 1 and study.counts["RUNNING"] == 1
    assert study.finished == 2 + 1 and study.running

    stopped = client.stop("driven")
    assert stopped.state == "stopped" and not stopped.running
    assert client.study("driven").state == "stopped"
    assert client.wait("driven", poll=0.05).state == "stopped"

    client.delete("driven")
    with pytest.raises(NotFoundError):
        client.study("driven")
    assert "driven" not in [s.name for s in client.studies()]


def test_wait_times_out_on_a_running_study(client: Client) -> None:
    client.submit(small("waiting"))
    with pytest.raises(TimeoutError, match="still running"):
        client.wait("waiting", poll=0.05, timeout=0.2)


def test_presets(client: Client) -> None:
    from service.spec.presets import PRESET_NAMES

    presets = client.presets()
    assert [p.name for p in presets] == list(PRESET_NAMES)
    assert all(p.space for p in presets)


def test_health(live_server: LiveServer) -> None:
    with Client(live_server.url, None) as anonymous:
        assert anonymous.health() is True
    with Client(f"http://127.0.0.1:{free_port()}", None, timeout=2) as nowhere:
        assert nowhere.health() is False


def test_plot_and_report(client: Client, live_server: LiveServer, make_token: Any, team: str) -> None:
    client.submit(small("pictures"))
    populate(live_server, make_token(team, "worker"), "pictures")
    png = client.plot("pictures", "history")
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000
    html = client.report("pictures")
    assert "<html" in html.lower() and "pictures" in html
    with pytest.raises(NotFoundError, match="no study named 'nope'"):
        client.plot("nope", "history")


# -- typed errors with the service's message ---------------------------------------------------


def test_unknown_study_is_not_found_with_the_service_message(client: Client) -> None:
    for call in (client.study, client.trials, client.best, client.stop, client.delete):
        with pytest.raises(NotFoundError) as info:
            call("nope")
        assert info.value.status == 404 and info.value.error == "not_found"
        assert info.value.detail == "no study named 'nope'"
        assert str(info.value) == "404 not_found: no study named 'nope'"


def test_duplicate_name_is_a_conflict(client: Client, team: str) -> None:
    client.submit(small("twice"))
    with pytest.raises(ConflictError) as info:
        client.submit(small("twice"))
    assert info.value.status == 409
    assert info.value.detail == f"a study named 'twice' already exists in team '{team}'"


def test_a_bad_definition_names_the_field(client: Client, tmp_path: Path) -> None:
    with pytest.raises(InvalidDefinitionError) as info:
        client.submit(small("bad", budget={"n_trials": 0}))
    assert info.value.status == 422 and info.value.error == "invalid_request"
    assert "budget.n_trials" in info.value.detail
    assert InvalidDefinitionError is InvalidRequestError

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(InvalidRequestError) as info:
        client.submit(broken)
    assert "not valid YAML" in info.value.detail
    assert client.studies() == []  # nothing was created


def test_bad_tokens(live_server: LiveServer, make_token: Any, team: str) -> None:
    with Client(live_server.url, "hpo_00000000_not-a-real-token") as bad:
        with pytest.raises(AuthError) as info:
            bad.studies()
    assert info.value.status == 401 and info.value.error == "unauthorized" and info.value.detail
    with Client(live_server.url, make_token(team, "viewer")) as viewer:
        assert viewer.studies() == []
        with pytest.raises(PermissionDeniedError) as denied:
            viewer.submit(small("viewer-may-not"))
    assert denied.value.status == 403 and isinstance(denied.value, AuthError)
    assert "viewer" in denied.value.detail


def test_a_closed_port_is_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, "hpo_x", timeout=5) as nowhere:
        with pytest.raises(ServerUnreachable) as info:
            nowhere.studies()
    assert info.value.status is None and url in str(info.value)
    assert isinstance(info.value, HpoError)


def test_error_mapping_without_the_service_json() -> None:
    request = httpx.Request("GET", "http://x/api/v1/studies")
    proxy = error_from_response(httpx.Response(502, text="<html>Bad Gateway</html>", request=request))
    assert type(proxy) is ServerError and proxy.status == 502 and proxy.error == "bad_gateway"
    assert proxy.detail == "<html>Bad Gateway</html>" and proxy.path == "/api/v1/studies"
    busy = error_from_response(
        httpx.Response(503, json={"error": "unavailable", "detail": "the database is unavailable; retry shortly"},
                       headers={"Retry-After": "5"}, request=request)
    )
    assert isinstance(busy, ServiceUnavailable) and isinstance(busy, ServerError) and busy.retry_after == 5.0
    assert str(busy) == "503 unavailable: the database is unavailable; retry shortly"


# -- models keep what they do not know ------------------------------------------------------------


def test_new_server_fields_pass_through() -> None:
    study = Study.model_validate(
        {
            "name": "s",
            "optuna_name": "t/s",
            "state": "running",
            "direction": "minimize",
            "n_trials": 3,
            "counts": {"COMPLETE": 1},
            "best_trial": {"number": 0, "value": 0.5, "params": {"lr": 0.01}, "rank": 1},
            "created_at": "2024-01-01T00:00:00Z",
            "definition": {},
            "diagnosis": {"counts": {}, "hints": []},
            "lr_sweep": {"points": [[0.01, 0.5]]},
            "lr_range": {"low": 1e-4, "high": 1e-1},
        }
    )
    assert study.lr_sweep == {"points": [[0.01, 0.5]]}  # type: ignore[attr-defined]
    assert set(study.model_extra or {}) == {"lr_sweep", "lr_range"}
    assert study.best_trial is not None and study.best_trial.model_extra == {"rank": 1}
    assert study.count("PRUNED") == 0 and study.finished == 1


# -- where the URL and the token come from -----------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in list(os.environ):
        if key.startswith("HPO_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path


def test_config_file_default_place_and_mode(clean_env: Path) -> None:
    assert ClientSettings().config_path == clean_env / "xdg" / "hpo" / "client.yaml"
    path = write_config("http://file:1", "hpo_file")
    assert path == clean_env / "xdg" / "hpo" / "client.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert yaml.safe_load(path.read_text()) == {"server": "http://file:1", "token": "hpo_file"}
    assert read_config(path) == {"server": "http://file:1", "token": "hpo_file"}
    settings = load_settings()
    assert (settings.server, settings.token) == ("http://file:1", "hpo_file")
    assert "hpo_file" not in repr(settings)


def test_flags_override_env_override_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config("http://file:1", "hpo_file", clean_env / "elsewhere.yaml")
    monkeypatch.setenv("HPO_CONFIG", str(config))
    assert (load_settings().server, load_settings().token) == ("http://file:1", "hpo_file")
    monkeypatch.setenv("HPO_SERVER_URL", "http://env-url:2")
    assert (load_settings().server, load_settings().token) == ("http://env-url:2", "hpo_file")
    monkeypatch.setenv("HPO_SERVER", "http://env:3")  # HPO_SERVER wins over HPO_SERVER_URL
    monkeypatch.setenv("HPO_TOKEN", "hpo_env")
    assert (load_settings().server, load_settings().token) == ("http://env:3", "hpo_env")
    flagged = load_settings(server="http://flag:4/", token="hpo_flag")
    assert (flagged.server, flagged.token) == ("http://flag:4", "hpo_flag")


def test_no_config_anywhere(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.server == DEFAULT_SERVER and settings.token is None


def test_a_broken_config_file_is_a_clear_error(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = clean_env / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    monkeypatch.setenv("HPO_CONFIG", str(bad))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings()
    # Not read at all when flags (or the environment) say everything.
    assert load_settings(server="http://s", token="t").token == "t"


def test_the_client_imports_nothing_of_the_service() -> None:
    code = (
        "import sys, hpo_client, hpo_client.config;"
        "top = ('service', 'worker', 'fastapi', 'sqlalchemy', 'optuna', 'torch');"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in top);"
        "print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
