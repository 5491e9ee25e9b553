"""The Dockerfile's two images built for real (podman, deploy/images/build.sh) and run as the
deployment runs them: the api image migrates the test PostgreSQL, creates a team's tokens and
serves the API; the worker image, given only the API's URL and a worker token, completes a trial.

tests/test_compose.py checks the deployment's files as text; this is the check that the images
they name build and work. It needs root podman, runc and mmdebstrap (the python:3.11-slim
stand-in is made from Debian packages, since no container registry need be reachable) and
skips without them; HPO_TEST_IMAGES=1 turns that skip into a failure (CI that installed them),
HPO_TEST_IMAGES=0 skips it anyway. A cold build takes about 4 minutes on a 2-core machine (the
worker's CPU torch from a local wheel), a warm one seconds (podman's layer cache). Containers
use the host's network, so they reach the test PostgreSQL at 127.0.0.1 and the test reaches
the API container the same way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import digits_definition, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "deploy" / "images" / "build.sh"
CONF = ROOT / "deploy" / "images" / "containers.conf"
API_IMAGE = os.environ.get("HPO_API_IMAGE", "localhost/hpo-service-api:latest")
WORKER_IMAGE = os.environ.get("HPO_WORKER_IMAGE", "localhost/hpo-service-worker:latest")
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONF))}
RUN = f"pytest {Path(__file__).relative_to(ROOT)}"
WANTED = os.environ.get("HPO_TEST_IMAGES", "")


def _why_not() -> str | None:
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (apt-get install -y podman runc mmdebstrap), then {RUN}"
    if os.geteuid() != 0:
        return f"needs root podman (mmdebstrap --mode=root, host-network builds): run {RUN} as root"
    return None


# The first test's setup includes a cold build: longer than pyproject's 600 s per test may be.
pytestmark = [pytest.mark.timeout(1800)]
if WANTED == "0":
    pytestmark.append(pytest.mark.skip(reason="HPO_TEST_IMAGES=0"))
elif (WHY_NOT := _why_not()) is not None:
    if WANTED == "1":
        pytest.fail(f"HPO_TEST_IMAGES=1, but this host cannot build the images: {WHY_NOT}", pytrace=False)
    pytestmark.append(pytest.mark.skip(reason=f"{WHY_NOT} (HPO_TEST_IMAGES=1 makes this a failure)"))


def podman(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], env=PODMAN_ENV, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def images() -> None:
    """Both targets, built by deploy/images/build.sh (seconds when podman's layer cache has them)."""
    proc = subprocess.run([str(BUILD)], env=PODMAN_ENV, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if proc.returncode == 4 and WANTED != "1":  # build.sh: podman is here but cannot start containers
        pytest.skip(f"podman cannot run containers on this host: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, f"build.sh exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


@pytest.fixture(scope="module")
def database(admin_url: str) -> Iterator[str]:
    """A fresh, unmigrated database: migrating it is the api image's job here."""
    name = f"hpo_images_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, query = admin_url.partition("?")
    url = base.rsplit("/", 1)[0] + "/" + name + ("?" + query if query else "")
    yield url.replace("postgresql://", "postgresql+psycopg://", 1)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_api_image(database: str, *command: str) -> str:
    return podman("run", "--rm", "--network", "host", "-e", f"HPO_DATABASE_URL={database}", API_IMAGE, *command).stdout.strip()


@pytest.fixture(scope="module")
def api_container(images: None, database: str) -> Iterator[str]:
    """`hpo serve` from the api image, after `hpo migrate` from it, as compose runs them."""
    run_api_image(database, "hpo", "migrate")
    port = free_port()
    name = f"hpo-test-api-{uuid.uuid4().hex[:8]}"
    podman(
        "run", "--detach", "--name", name, "--network", "host",
        "-e", f"HPO_DATABASE_URL={database}", "-e", "HPO_HOST=127.0.0.1", "-e", f"HPO_PORT={port}",
        "-e", "HPO_HEARTBEAT_SECONDS=1", API_IMAGE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url, name), 90, f"the api container did not answer /healthz\n{_logs(name)}")
        yield url
    finally:
        podman("rm", "--force", "--time", "5", name, check=False, timeout=60)


def _healthy(url: str, name: str) -> bool:
    state = podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
    assert state in {"created", "running"}, f"the api container is {state}\n{_logs(name)}"
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _logs(name: str) -> str:
    proc = podman("logs", "--tail", "60", name, check=False)
    return (proc.stdout + proc.stderr)[-4000:]


def test_the_api_image_is_unprivileged_and_has_no_torch(images: None) -> None:
    image = json.loads(podman("image", "inspect", API_IMAGE).stdout)[0]
    assert image["Config"]["User"] == "hpo"
    assert image["Config"]["Cmd"] == ["hpo", "serve"]
    # Only docker-format images keep HEALTHCHECK (build.sh: --format docker); compose relies on it.
    assert "/healthz" in " ".join((image.get("Healthcheck") or {}).get("Test", [])), "the image lost its HEALTHCHECK"
    probe = "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
    assert podman("run", "--rm", "--network", "none", API_IMAGE, "python", "-c", probe, check=False).returncode == 0


def test_the_worker_image_runs_hpo_worker_with_the_pinned_torch(images: None) -> None:
    config = json.loads(podman("image", "inspect", WORKER_IMAGE).stdout)[0]["Config"]
    assert config["User"] == "hpo" and config["Cmd"] == ["hpo", "worker"]
    pinned = next(line.split("==", 1)[1].strip() for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch=="))
    version = podman("run", "--rm", "--network", "none", WORKER_IMAGE, "python", "-c", "import torch; print(torch.__version__)").stdout
    assert version.strip().split("+")[0] == pinned


def test_a_worker_container_completes_a_trial_of_the_api_container(api_container: str, database: str) -> None:
    team = f"img{uuid.uuid4().hex[:8]}"
    # As docs/deploy.md's first start: the team's admin token, then a worker token, from the api image.
    admin = run_api_image(database, "hpo", "token", "create", "--team", team).splitlines()[-1]
    worker_token = run_api_image(database, "hpo", "token", "create", "--team", team, "--role", "worker", "--name", "image-test").splitlines()[-1]
    study = digits_definition("images", workload={"model": "mlp", "dataset": "digits", "epochs": 2}, budget={"n_trials": 1, "max_concurrent": 1})
    with httpx.Client(base_url=api_container, headers={"Authorization": f"Bearer {admin}"}, timeout=30) as api:
        api.post("/api/v1/studies", json=study).raise_for_status()
        worker = podman(
            "run", "--rm", "--network", "host",
            "-e", f"HPO_SERVER_URL={api_container}", "-e", f"HPO_TOKEN={worker_token}", "-e", "HPO_DEVICE=cpu",
            "-e", "HPO_THREADS=1", "-e", "HPO_WORKER_ID=image-test-worker",
            WORKER_IMAGE, "hpo", "worker", "--exit-when-idle", "3",
            timeout=600, check=False,
        )  # fmt: skip
        assert worker.returncode == 0, f"the worker container exited {worker.returncode}\n{worker.stderr[-4000:]}"
        trials = api.get("/api/v1/studies/images/trials").json()["trials"]
        assert api.get("/api/v1/studies/images").json()["state"] == "finished"
    assert [(t["state"], t["worker_id"]) for t in trials] == [("COMPLETE", "image-test-worker")], trials
    assert isinstance(trials[0]["value"], float)
