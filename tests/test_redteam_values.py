"""The review's finding 7, reader side: values that reached Optuna's tables past our checks (the
dashboard's "tell" accepted NaN and -inf) must not break any reader of the study for good: the
API's study and trial views, every plot, the report, the Python client and the `hpo` CLI."""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpo_client import Client
from tests.conftest import BIN, LiveServer

PLUGIN = {"model": "plugin", "entry": "examples.plugin_quadratic:train"}


@pytest.fixture(scope="module")
def server(db_url: str) -> Iterator[LiveServer]:
    s = LiveServer(db_url, HPO_LEASE_SECONDS="120")
    yield s
    s.stop()


def test_nan_and_infinite_values_already_stored_break_no_reader(server: LiveServer, make_token: Any, team: str, db_url: str) -> None:
    definition = {
        "name": "poisoned",
        "workload": PLUGIN,
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}, "y": {"type": "float", "low": 0.0, "high": 1.0}},
        "sampler": {"kind": "random", "seed": 2},
        "budget": {"n_trials": 6, "max_concurrent": 6},
    }
    member = make_token(team, "member")
    with server.client(member) as m, server.client(make_token(team, "worker")) as w:
        m.post("/api/v1/studies", json=definition).raise_for_status()
        claimed = [w.post("/api/v1/trials/claim", json={"worker_id": "w"}).json() for _ in range(5)]
        for i, a in enumerate(claimed[:3]):
            w.post(f"/api/v1/trials/{a['trial_id']}/report", json={"lease_id": a["lease_id"], "step": 1, "value": 1.0 + i}).raise_for_status()
            w.post(f"/api/v1/trials/{a['trial_id']}/finish", json={"lease_id": a["lease_id"], "state": "complete", "value": 1.0 + i}).raise_for_status()
        # What the dashboard's tell stored: straight into Optuna's storage, no check of ours.
        storage = optuna.storages.RDBStorage(db_url)
        storage.set_trial_state_values(claimed[3]["trial_id"], TrialState.COMPLETE, [float("-inf")])
        storage.set_trial_state_values(claimed[4]["trial_id"], TrialState.COMPLETE, [float("nan")])

        one = m.get("/api/v1/studies/poisoned")
        assert one.status_code == 200, one.text
        best = one.json()["best_trial"]
        assert best is not None and math.isfinite(best["value"]) and best["value"] == 1.0, best
        listing = m.get("/api/v1/studies")
        assert listing.status_code == 200, listing.text
        trials = m.get("/api/v1/studies/poisoned/trials")
        assert trials.status_code == 200, trials.text
        for kind in ("history", "curves", "lr", "importance", "parallel"):
            r = m.get(f"/api/v1/studies/poisoned/plots/{kind}")
            assert r.status_code in (200, 409), (kind, r.text)
        history = m.get("/api/v1/studies/poisoned/plots/history")
        assert history.status_code == 200, "the history plot must draw the three finite trials"
        report = m.get("/api/v1/studies/poisoned/report")
        assert report.status_code == 200, report.text

    with Client(server.url, member) as client:
        study = client.study("poisoned")
        assert study.best_trial is not None and study.best_trial.value == 1.0
        assert len(client.trials("poisoned")) == 6 - 1  # five claimed
    env = {**os.environ, "HPO_SERVER_URL": server.url, "HPO_TOKEN": member}
    for command in (["studies"], ["best", "poisoned"], ["status", "poisoned"]):
        done = subprocess.run([str(BIN / "hpo"), *command], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
