"""The audit trail against the attacks of the security review (findings 8 and 9), on a real
`hpo serve` whose log this module reads: a login flood no longer hides a member's deletion, the
trail pages back to its first event, sessions per token are capped, every dashboard write is
an event, and failed logins are logged, not written to the team's trail."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest

from hpo_client import Client
from service.db.dashboard_sessions import SESSIONS_PER_TOKEN
from tests.conftest import BIN, LiveServer, auth, digits_definition, free_port, prefix_of
from tests.dashboard_helpers import assert_error, audit_events, claim, dashboard_studies, login, rest_study, sql

# More logins than GET /api/v1/audit's largest page: the review's flood.
FLOOD = 1001


class LoggedServer(LiveServer):
    """LiveServer, with its stderr (where the service logs) in a file."""

    def __init__(self, db_url: str, log: Path) -> None:  # noqa: D107 - LiveServer's, plus the log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "HPO_DATABASE_URL": db_url, "HPO_PORT": str(self.port), "HPO_HOST": "127.0.0.1", "HPO_LOG_LEVEL": "warning"}
        self._log_file = log.open("wb")
        self.process = subprocess.Popen([str(BIN / "hpo"), "serve"], env=env, stderr=self._log_file, stdout=self._log_file)
        process = self.process
        with Client(self.url, None, timeout=1) as client:
            if client.wait_until_healthy(60, running=lambda: process.poll() is None):
                return
        raise RuntimeError(f"hpo serve did not become healthy: {log.read_text()}")

    def stop(self) -> None:
        super().stop()
        self._log_file.close()


@pytest.fixture(scope="module")
def server(db_url: str, tmp_path_factory: Any) -> Iterator[LoggedServer]:
    s = LoggedServer(db_url, tmp_path_factory.mktemp("audit") / "serve.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: LoggedServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture
def tokens(make_token: Any, team: str) -> dict[str, str]:
    return {role: make_token(team, role) for role in ("admin", "member", "viewer", "worker")}


def all_pages(client: httpx.Client, admin: str, limit: int) -> list[dict[str, Any]]:
    """Every event, following next_before_id from the newest page to the oldest."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        page = client.get("/api/v1/audit", params=params, headers=auth(admin))
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["events"]) <= limit
        events += body["events"]
        if body["next_before_id"] is None:
            return events
        params["before_id"] = body["next_before_id"]


# --------------------------------------------------------------------------- finding 8


def test_a_login_flood_does_not_hide_a_deletion(client: httpx.Client, tokens: dict[str, str], team: str, db_url: str) -> None:
    """Before: 1000 viewer logins pushed a member's study deletion out of GET /api/v1/audit (the
    newest 1000, no paging), and left 1000 live session rows."""
    name = f"c-ok-{uuid.uuid4().hex[:6]}"
    member = auth(tokens["member"])
    assert client.post("/api/v1/studies", json=digits_definition(name), headers=member).status_code == 201
    assert client.delete(f"/api/v1/studies/{name}", headers=member).status_code == 204

    cookies = [login(client, tokens["viewer"]) for _ in range(FLOOD)]

    newest = audit_events(client, tokens["admin"], limit=1000)
    assert any(e["action"] == "study.delete" and e["target"] == name for e in newest)
    logins = [e for e in newest if e["action"] == "dashboard.login" and e["target"] == prefix_of(tokens["viewer"])]
    assert len(logins) == 1 and logins[0]["detail"]["count"] == FLOOD, logins
    # Live sessions per token are capped: the newest work, the oldest were dropped.
    (live,) = sql(
        db_url,
        "SELECT count(*) FROM hpo_sessions s JOIN hpo_tokens t ON t.id = s.token_id WHERE t.prefix = %(p)s",
        p=prefix_of(tokens["viewer"]),
    )[0]
    assert live == SESSIONS_PER_TOKEN, live
    assert client.get("/dashboard/api/studies", headers=cookies[-1]).status_code == 200
    assert client.get("/dashboard/api/studies", headers=cookies[0]).status_code == 401


def test_concurrent_logins_still_make_one_event(server: LoggedServer, tokens: dict[str, str], db_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(_: int) -> dict[str, str]:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return login(c, tokens["member"])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(40)))
    with httpx.Client(base_url=server.url, timeout=60) as c:
        logins = [e for e in audit_events(c, tokens["admin"]) if e["action"] == "dashboard.login"]
    assert [e["detail"]["count"] for e in logins] == [40]
    (live,) = sql(db_url, "SELECT count(*) FROM hpo_sessions s JOIN hpo_tokens t ON t.id = s.token_id WHERE t.prefix = %(p)s", p=prefix_of(tokens["member"]))[0]
    assert live == SESSIONS_PER_TOKEN, live


def test_the_trail_pages_back_to_its_first_event(client: httpx.Client, tokens: dict[str, str], team: str) -> None:
    member = auth(tokens["member"])
    names = [f"p{i}-{uuid.uuid4().hex[:4]}" for i in range(5)]
    for name in names:
        assert client.post("/api/v1/studies", json=digits_definition(name), headers=member).status_code == 201
    for name in names:
        assert client.post(f"/api/v1/studies/{name}/stop", headers=member).status_code in (200, 204)
    one_page = audit_events(client, tokens["admin"])
    paged = all_pages(client, tokens["admin"], limit=3)
    assert [e["id"] for e in paged] == [e["id"] for e in one_page]
    ids = [e["id"] for e in paged]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    assert [e["target"] for e in paged if e["action"] == "study.create"] == names[::-1]
    # The oldest event of the team (its first token) is reachable.
    assert paged[-1]["action"] in ("study.create", "token.create")
    bad = client.get("/api/v1/audit", params={"before_id": 0}, headers=auth(tokens["admin"]))
    assert_error(bad, 422)
    # The SDK pages too.
    with Client(client.base_url.__str__(), tokens["admin"]) as sdk:
        first = sdk.audit(limit=2)
        older = sdk.audit(limit=2, before_id=first[-1].id)
        assert [e.id for e in first + older] == ids[:4]


# --------------------------------------------------------------------------- finding 9


def test_failed_logins_are_logged_and_not_audited(client: httpx.Client, server: LoggedServer, tokens: dict[str, str]) -> None:
    before = audit_events(client, tokens["admin"])
    made_up = "hpo_deadbeef_" + uuid.uuid4().hex
    assert client.post("/dashboard/login", data={"token": made_up}).status_code == 401
    assert client.post("/dashboard/login", data={"token": tokens["worker"]}).status_code == 403
    revoked = tokens["member"]
    assert client.delete(f"/api/v1/tokens/{prefix_of(revoked)}", headers=auth(tokens["admin"])).status_code == 204
    after_revoke = audit_events(client, tokens["admin"])
    assert client.post("/dashboard/login", data={"token": revoked}).status_code == 401
    assert audit_events(client, tokens["admin"]) == after_revoke and len(after_revoke) == len(before) + 1

    def logged() -> str:
        return server.log.read_text(errors="replace")

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and prefix_of(revoked) not in logged():
        time.sleep(0.2)
    lines = [line for line in logged().splitlines() if "dashboard login refused" in line]
    for prefix in ("hpo_deadbeef", prefix_of(tokens["worker"]), prefix_of(revoked)):
        assert any(prefix in line and "127.0.0.1" in line for line in lines), (prefix, lines)
    assert made_up not in logged() and tokens["worker"] not in logged()


def test_every_dashboard_write_is_audited(client: httpx.Client, tokens: dict[str, str], team: str, db_url: str) -> None:
    """Before: tell, user-attrs, notes, and the DELETE of a study with no REST record changed
    results with no event."""
    member = login(client, tokens["member"])
    actor = prefix_of(tokens["member"])
    name, study_id = rest_study(client, tokens["member"], team, member)
    trial = claim(client, tokens["worker"], name)["trial_id"]
    writes = [
        ("PUT", f"/dashboard/api/studies/{study_id}/note", {"version": 1, "body": "study note"}, "dashboard.study_note"),
        ("PUT", f"/dashboard/api/studies/{study_id}/{trial}/note", {"version": 1, "body": "trial note"}, "dashboard.trial_note"),
        ("POST", f"/dashboard/api/trials/{trial}/user-attrs", {"user_attrs": {"checked": True}}, "dashboard.user_attrs"),
        ("POST", f"/dashboard/api/trials/{trial}/tell", {"state": "complete", "values": [0.5]}, "dashboard.tell"),
    ]
    # A preferential study (optuna-dashboard's human-in-the-loop kind) and one made with plain
    # Optuna: neither has a REST record.
    from optuna_dashboard.preferential import create_study as create_preferential

    storage = optuna.storages.RDBStorage(db_url)
    pref = create_preferential(n_generate=2, storage=storage, study_name=f"{team}/pref", sampler=optuna.samplers.RandomSampler(seed=0))
    pref_trials = [pref.ask() for _ in range(2)]
    loose = optuna.create_study(storage=storage, study_name=f"{team}/loose")
    ids = dashboard_studies(client, member)
    pref_id, loose_id = ids[f"{team}/pref"], ids[f"{team}/loose"]
    a, b = (t._trial_id for t in pref_trials)
    writes += [
        ("POST", f"/dashboard/api/studies/{pref_id}/preference", {"mode": "ChooseWorst", "candidates": [0, 1], "clicked": 1}, "dashboard.preference"),
        ("PUT", f"/dashboard/api/studies/{pref_id}/preference_feedback_component", {"output_type": "note"}, "dashboard.feedback_component"),
        ("POST", f"/dashboard/api/studies/{pref_id}/{b}/skip", {}, "dashboard.skip"),
    ]
    for method, path, body, action in writes:
        before = {e["id"] for e in audit_events(client, tokens["admin"])}
        response = client.request(method, path, headers=member, json=body)
        assert response.status_code in (200, 201, 204), (method, path, response.text)
        new = [e for e in audit_events(client, tokens["admin"]) if e["id"] not in before]
        assert [e["action"] for e in new] == [action], (path, new)
        assert new[0]["actor"] == actor and new[0]["role"] == "member"
    history = [k for k in storage.get_study_system_attrs(pref._study._study_id) if k.startswith("preference:history")]
    history_id = history[0][len("preference:history") :]
    for method, action in (("DELETE", "dashboard.preference_remove"), ("POST", "dashboard.preference_restore")):
        before = {e["id"] for e in audit_events(client, tokens["admin"])}
        response = client.request(method, f"/dashboard/api/studies/{pref_id}/preference/{history_id}", headers=member)
        assert response.status_code == 204, response.text
        new = [e for e in audit_events(client, tokens["admin"]) if e["id"] not in before]
        assert [e["action"] for e in new] == [action]
    # The tell is in the event with its values, and the trial is what the event says.
    tell = next(e for e in audit_events(client, tokens["admin"]) if e["action"] == "dashboard.tell")
    assert tell["target"] == name and tell["detail"]["values"] == [0.5] and tell["detail"]["state"] == "complete"

    # The DELETE of a study with no REST record.
    response = client.delete(f"/dashboard/api/studies/{loose_id}", headers=member)
    assert response.status_code == 204, response.text
    deleted = audit_events(client, tokens["admin"])[0]
    assert (deleted["action"], deleted["target"], deleted["actor"]) == ("study.delete", "loose", actor)
    assert deleted["detail"]["via"] == "dashboard" and deleted["detail"]["rest_record"] is False
    assert f"{team}/loose" not in dashboard_studies(client, member)
    assert a  # the first preferential trial stays a candidate
