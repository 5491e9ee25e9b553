"""deploy/slurm/hpo-worker.sbatch run as Slurm would run one array task (its variables set here)
against a real server: it drains the queue and exits 0, and it refuses a token file that others
can read. Slurm itself is not on this machine; the script's #SBATCH lines are checked as text."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import BIN, LiveServer, digits_definition

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "slurm" / "hpo-worker.sbatch"


def run_task(server: LiveServer, token_file: Path, task: int, **env: str) -> subprocess.CompletedProcess[str]:
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_ARRAY_JOB_ID": "4242",
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_CPUS_PER_TASK": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    return subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HPO_SERVER_URL": server.url,
             "HPO_TOKEN_FILE": str(token_file), "HPO_WORKER_ARGS": "--device cpu", "HPO_IDLE_SECONDS": "2", **slurm, **env},
        cwd=SCRIPT.parent.parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )


def token_file(tmp_path: Path, token: str, mode: int) -> Path:
    path = tmp_path / "worker-token"
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def test_an_array_task_drains_the_queue_and_exits_zero(live_server: LiveServer, make_token: Any, team: str, tmp_path: Path) -> None:
    with live_server.client(make_token(team, "member")) as m:
        m.post("/api/v1/studies", json=digits_definition("slurm", budget={"n_trials": 2, "max_concurrent": 2})).raise_for_status()
        done = run_task(live_server, token_file(tmp_path, make_token(team, "worker"), 0o600), task=3)
        assert done.returncode == 0, done.stderr[-2000:]
        study = m.get("/api/v1/studies/slurm").json()
        trials = m.get("/api/v1/studies/slurm/trials").json()["trials"]
    assert study["state"] == "finished", study
    # The array task's id is the worker's: which task ran which trial shows in the API.
    assert {t["worker_id"] for t in trials} == {"slurm-4242-3"}
    with live_server.client(make_token(team, "worker")) as w:
        assert w.get("/api/v1/queue").json()["depth"] == 0


def test_a_token_file_others_can_read_is_refused(live_server: LiveServer, make_token: Any, team: str, tmp_path: Path) -> None:
    with live_server.client(make_token(team, "member")) as m:
        m.post("/api/v1/studies", json=digits_definition("slurm-open")).raise_for_status()
        done = run_task(live_server, token_file(tmp_path, make_token(team, "worker"), 0o644), task=0)
        assert done.returncode == 2 and "chmod 600" in done.stderr, done.stderr
        assert m.get("/api/v1/studies/slurm-open").json()["counts"]["RUNNING"] == 0
    missing = run_task(live_server, tmp_path / "nope", task=0)
    assert missing.returncode == 2 and "no token file" in missing.stderr


def test_the_sbatch_header_asks_for_what_the_readme_says() -> None:
    text = SCRIPT.read_text()
    header = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH ")]
    assert "--gres=gpu:1" in header and any(h.startswith("--array=") for h in header)
    # SIGTERM before the time limit, to the batch step (the worker, through exec).
    assert any(h.startswith("--signal=B:TERM@") for h in header)
    assert 'exec hpo worker --exit-when-idle "${HPO_IDLE_SECONDS:-60}"' in text
    assert SCRIPT.stat().st_mode & stat.S_IXUSR
