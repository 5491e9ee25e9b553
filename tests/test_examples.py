"""Every study definition in examples/ is valid, lint-clean, and runs: each one is submitted to
a real server and worked by real `hpo worker` processes, so a broken example fails here.

New examples/*.yaml files are picked up automatically."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.spec import StudySpec
from service.spec.lint import lint
from service.spec.presets import PRESET_NAMES
from service.spec.study import FINDER_SUFFIX
from tests.conftest import BIN, LiveServer, auth, finish_with_workers

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name}: not a YAML mapping"
    return data


def preset_of(path: Path) -> str | None:
    """The preset an example is named after (digits_<preset>.yaml), if any."""
    stem = path.stem.removeprefix("digits_")
    return stem if path.stem.startswith("digits_") and stem in PRESET_NAMES else None


# -- fast: each file as written -----------------------------------------------------------


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_example_is_a_valid_lint_clean_definition(path: Path) -> None:
    spec = StudySpec.model_validate(load(path))
    assert lint(spec) == [], f"{path.name} trips the linter; fix the example"
    preset = preset_of(path)
    if preset is not None:
        assert spec.preset == preset and spec.name == f"digits-{preset}"
        assert spec.kind == "search" and spec.workload.dataset.kind == "digits"
        assert spec.sampler.kind == "tpe" and spec.sampler.seed is not None
        assert spec.pruner.kind == "median"


def test_every_preset_has_its_example() -> None:
    assert (EXAMPLES / "digits_adam.yaml").is_file()  # `hpo submit --help` and the SDK cite it
    assert {preset_of(p) for p in example_files()} - {None} == set(PRESET_NAMES)
    kinds = {StudySpec.model_validate(load(p)).kind for p in example_files()}
    assert kinds == {"search", "lr_sweep", "lr_finder"}
    assert any(load(p).get("auto_lr_range") for p in example_files())


def test_the_yaml_files_as_written_are_accepted_by_the_api(api: Any, make_token: Any, team: str) -> None:
    """Posted unchanged, as YAML bodies (what `hpo submit` and curl --data-binary send)."""
    token = make_token(team)
    for path in example_files():
        response = api.post(
            "/api/v1/studies", content=path.read_bytes(), headers={**auth(token), "Content-Type": "application/yaml"}
        )
        assert response.status_code == 201, (path.name, response.text)
        assert response.json()["warnings"] == [], path.name


def test_hpo_submit_takes_the_example_its_help_cites(live_server: LiveServer, make_token: Any, team: str) -> None:
    token = make_token(team)
    result = subprocess.run(
        [str(BIN / "hpo"), "submit", "examples/digits_adam.yaml", "--server", live_server.url, "--token", token],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "submitted study digits-adam (30 trials, minimize)" in result.stdout
    assert "warning" not in result.stdout


# -- slow: each example run once on real workers -------------------------------------------


def shrink(data: dict[str, Any]) -> dict[str, Any]:
    """To keep this affordable on two CPU cores, only the budget and the epochs are cut (2 trials,
    2 at a time, 2 epochs; a sweep over 1e-3..1e-1 at one point per decade). The LR range test
    runs as written (100 batches take seconds). Everything else is the file as written."""
    data = copy.deepcopy(data)
    kind = data.get("kind", "search")
    workload = data.get("workload") or {}
    if "epochs" in workload:
        workload["epochs"] = min(int(workload["epochs"]), 2)
    elif kind != "lr_finder" and workload.get("model") in (None, "mlp", "cnn"):
        workload["epochs"] = 2
    budget = data.setdefault("budget", {})
    if kind == "search":
        budget["n_trials"] = min(int(budget.get("n_trials", 2)), 2)
    if kind in ("search", "lr_sweep"):
        budget["max_concurrent"] = min(int(budget.get("max_concurrent", 2)), 2)
    if kind == "lr_sweep":
        data.setdefault("sweep", {}).update(low=1e-3, high=1e-1, points_per_decade=1)
    return data


def start_example_worker(server_url: str, token: str, worker_id: str) -> subprocess.Popen[bytes]:
    """`hpo worker` from the repository root (where the examples' relative command path and
    plugin module resolve), allowed to run the examples' own code and nothing else."""
    env = {
        **os.environ,
        "HPO_ALLOW_COMMANDS": json.dumps(["examples/*.py"]),
        "HPO_ALLOW_PLUGINS": json.dumps(["examples.*"]),
    }
    return subprocess.Popen(
        [str(BIN / "hpo"), "worker", "--server", server_url, "--token", token, "--threads", "1",
         "--worker-id", worker_id, "--exit-when-idle", "3"],
        cwd=ROOT,
        env=env,
    )  # fmt: skip


def test_every_example_runs_once_on_real_workers(live_server: LiveServer, make_token: Any, team: str) -> None:
    token = make_token(team)
    files = {p.name: load(p) for p in example_files()}
    with live_server.client(token) as c:
        presets = {p["name"]: p for p in c.get("/api/v1/presets").json()["presets"]}
        assert set(presets) == set(PRESET_NAMES)

        names: list[str] = []
        for file, data in files.items():
            created = c.post("/api/v1/studies", json=shrink(data))
            assert created.status_code == 201, (file, created.text)
            assert created.json()["warnings"] == [], file
            names.append(data["name"])
            if data.get("auto_lr_range"):
                assert created.json()["lr_range"]["status"] == "pending", file
                names.append(data["name"] + FINDER_SUFFIX)  # its range test, a study of its own

        # Two workers, once, over all of them: they claim across the team's studies.
        workers = [start_example_worker(live_server.url, token, f"examples-{i}") for i in range(2)]
        finish_with_workers(c, workers, names, 480)
        studies = {name: c.get(f"/api/v1/studies/{name}").json() for name in names}
        trials = {name: c.get(f"/api/v1/studies/{name}/trials").json()["trials"] for name in names}

    for name, study in studies.items():
        assert study["state"] == "finished", name
        assert study["counts"]["COMPLETE"] >= 1, (name, study["counts"], [(t["state"], t.get("reason"), t.get("error")) for t in trials[name]])

    for file, data in files.items():
        name = data["name"]
        study = studies[name]
        kind = data.get("kind", "search")
        assert study["kind"] == kind, file
        if kind == "lr_sweep":
            sweep = study["lr_sweep"]
            assert sweep["best_lr"] is not None, (file, sweep)
            assert 1e-3 <= sweep["best_lr"] <= 1e-1 and len(sweep["points"]) == 3, (file, sweep)
        elif kind == "lr_finder":
            found = study["lr_finder"]
            assert found["suggestion"] is not None, (file, found)
            assert found["suggestion"]["low"] < found["suggestion"]["high"], (file, found)
            assert len(found["lrs"]) == len(found["losses"]) >= 10, file
        if data.get("auto_lr_range"):
            lr_range = study["lr_range"]
            assert lr_range["status"] == "narrowed", (file, lr_range)
            low, high = lr_range["narrowed"]
            original = data["space"]["lr"]
            assert original["low"] <= low < high <= original["high"], (file, lr_range)
            assert all(low <= t["params"]["lr"] <= high for t in trials[name]), file
            assert studies[name + FINDER_SUFFIX]["lr_finder"]["suggestion"] is not None, file
        if data.get("preset"):
            # The stored definition carries the preset's expansion (as GET /api/v1/presets lists
            # it), except where the file states an entry itself.
            preset = presets[data["preset"]]
            stored = study["definition"]
            explicit = set(data.get("space") or {}) | set(data.get("workload") or {})
            expected = preset["finetune_space"] if data.get("finetune") else preset["space"]
            for param, entry in expected.items():
                if param in explicit:
                    continue
                for key, value in entry.items():
                    got = stored["space"][param].get(key)
                    assert got == value or (isinstance(value, float) and math.isclose(got, value)), (file, param, key, got, value)
            for param, value in preset["fixed"].items():
                if param not in explicit:
                    assert stored["workload"][param] == value, (file, param)
            for param, entry in (data.get("space") or {}).items():
                assert stored["space"][param]["type"] == entry["type"], (file, param)
            # Every searched parameter was sampled by the trials that completed.
            for t in trials[name]:
                if t["state"] == "COMPLETE":
                    assert set(t["params"]) == set(stored["space"]), (file, t["params"])
