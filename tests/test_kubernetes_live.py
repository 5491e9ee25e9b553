"""The Kubernetes manifests against a real server: the probes answer, /metrics needs the token
as the manifests configure it, KEDA's trigger reads the real GET /api/v1/queue at its
valueLocation with a worker token, and the bootstrap Job's script makes one admin token, once,
against a stand-in for the Kubernetes API and the real database."""

from __future__ import annotations

import http.server
import json
import os
import re
import secrets as pysecrets
import shutil
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import BIN, LiveServer
from tests.kubernetes_manifests import api_container, env_of, evaluate_gjson, find, triggers
from tests.kubernetes_manifests import renders  # noqa: F401  (a module fixture both files use)


# --------------------------------------------------------------------------- a live server


@pytest.fixture(scope="module")
def metrics_token() -> str:
    return "m" + pysecrets.token_hex(16)


@pytest.fixture(scope="module")
def k8s_server(db_url: str, renders, metrics_token: str) -> Iterator[LiveServer]:
    """`hpo serve` with the plain settings the API container of the manifests sets (its address,
    port and paths excepted), and a metrics token in place of the Secret's."""
    env = {var: entry["value"] for var, entry in env_of(api_container(renders["production"])).items()
           if "value" in entry and var not in ("HPO_HOST", "HPO_PORT", "HPO_ARTIFACT_DIR", "HPO_DATA_DIR")}
    server = LiveServer(db_url, **{**env, "HPO_METRICS_TOKEN": metrics_token, "HPO_LOG_LEVEL": "warning"})
    yield server
    server.stop()


def test_the_probes_answer_on_a_real_server(renders, k8s_server: LiveServer):
    api = api_container(renders["production"])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in api:
            path = api[probe]["httpGet"]["path"]
            assert httpx.get(k8s_server.url + path, timeout=10).status_code == 200, f"{probe} {path}"


def test_metrics_need_the_token_as_the_manifests_configure_them(k8s_server: LiveServer, metrics_token: str):
    assert httpx.get(k8s_server.url + "/metrics", headers={"Authorization": f"Bearer {metrics_token}"}, timeout=10).status_code == 200
    # HPO_METRICS_NETWORKS from the manifests trusts no address, not even this host's.
    assert httpx.get(k8s_server.url + "/metrics", timeout=10).status_code in (401, 403)


def test_the_keda_trigger_reads_the_depth_from_the_real_queue(renders, k8s_server: LiveServer, make_token):
    team = f"k{uuid.uuid4().hex[:10]}"
    worker_token = make_token(team, "worker")
    with k8s_server.client(make_token(team, "member")) as member:
        member.post("/api/v1/studies", json={
            "name": "keda", "workload": {"model": "plugin", "entry": "examples.plugin_quadratic:train"},
            "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}, "budget": {"n_trials": 5, "max_concurrent": 3},
        }).raise_for_status()
    for name, o, trigger in triggers(renders):
        meta = trigger["metadata"]
        path = urlsplit(meta["url"]).path
        # As KEDA calls it: GET, bearer auth with the worker token.
        answer = httpx.get(k8s_server.url + path, headers={"Authorization": f"Bearer {worker_token}"}, timeout=10)
        assert answer.status_code == 200, answer.text
        try:
            value = evaluate_gjson(answer.json(), meta["valueLocation"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise AssertionError(f"{name}: valueLocation {meta['valueLocation']!r} finds nothing in {answer.json()}: {exc!r}") from None
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{name}: {meta['valueLocation']} is {value!r}"
        # A Deployment's pool is sized on the slots in use and wanted (demand: running + depth);
        # a ScaledJob starts jobs for what waits (depth; 'accurate' subtracts the running jobs).
        field = "demand" if o["kind"] == "ScaledObject" else "depth"
        assert meta["valueLocation"] == field, f"{name}: reads {meta['valueLocation']}, not {field}"
        assert value == 3 == answer.json()[field], f"{name}: {meta['valueLocation']} reads {value}"
        assert httpx.get(k8s_server.url + path, timeout=10).status_code == 401, "the queue must need the token"


# --------------------------------------------------------------------------- the bootstrap Job, run


class FakeKubernetes(http.server.ThreadingHTTPServer):
    """The two calls bootstrap.py makes, over TLS, checking its service-account token."""

    def __init__(self, bearer: str, namespace: str) -> None:
        self.bearer, self.namespace = bearer, namespace
        self.secrets: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        super().__init__(("127.0.0.1", 0), FakeKubernetesHandler)


class FakeKubernetesHandler(http.server.BaseHTTPRequestHandler):
    server: FakeKubernetes

    def log_message(self, *args: Any) -> None:
        pass

    def answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_call(self) -> None:
        self.server.calls.append((self.command, self.path))
        if self.headers.get("Authorization") != f"Bearer {self.server.bearer}":
            return self.answer(401, {"message": "Unauthorized"})
        prefix = f"/api/v1/namespaces/{self.server.namespace}/secrets"
        if self.command == "GET" and self.path.startswith(prefix + "/"):
            secret = self.server.secrets.get(self.path[len(prefix) + 1:])
            return self.answer(200, secret) if secret else self.answer(404, {"message": "not found"})
        if self.command == "POST" and self.path == prefix:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            name = body["metadata"]["name"]
            if name in self.server.secrets:
                return self.answer(409, {"message": "already exists"})
            self.server.secrets[name] = body
            return self.answer(201, body)
        return self.answer(403, {"message": "forbidden"})

    do_GET = do_POST = handle_call


@pytest.fixture
def fake_kubernetes(tmp_path: Path) -> Iterator[tuple[FakeKubernetes, Path]]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed for the fake Kubernetes API's certificate")
    account = tmp_path / "serviceaccount"
    account.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp_path / "key.pem"), "-out", str(account / "ca.crt")],
        check=True, capture_output=True, timeout=60,
    )
    (account / "token").write_text("sa-token-" + pysecrets.token_hex(8))
    (account / "namespace").write_text("hpo")
    server = FakeKubernetes((account / "token").read_text(), "hpo")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(account / "ca.crt", tmp_path / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, account
    server.shutdown()


def test_the_bootstrap_job_creates_one_admin_token_once(renders, fake_kubernetes, db_url: str, k8s_server: LiveServer, tmp_path: Path):
    """The Job's container command as rendered, its script from the rendered ConfigMap, against a
    fake Kubernetes API and the real database: a working admin token in the Secret, and a second
    run (a retried or re-applied Job) that changes nothing."""
    server, account = fake_kubernetes
    docs = renders["production"]
    pod = find(docs, "Job", "hpo-bootstrap")["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "bootstrap")
    volume = next(v for v in pod["volumes"] if v["name"] == container["volumeMounts"][0]["name"])
    script = tmp_path / "bootstrap.py"
    script.write_text(find(docs, "ConfigMap", volume["configMap"]["name"])["data"]["bootstrap.py"])
    team = f"b{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "KUBERNETES_SERVICE_HOST": "127.0.0.1",
           "KUBERNETES_SERVICE_PORT": str(server.server_address[1]), "BOOTSTRAP_SERVICEACCOUNT_DIR": str(account),
           "HPO_DATABASE_URL": db_url, "BOOTSTRAP_TEAM": team}
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], w) for w in container["command"]]
    assert argv[:2] == ["python", "/bootstrap/bootstrap.py"]
    argv = [sys.executable, str(script), *argv[2:]]

    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    secret = server.secrets[argv[2]]
    token = secret["stringData"]["token"]
    assert token not in first.stdout + first.stderr, "the token must not be logged"
    with k8s_server.client(token) as admin:
        listing = admin.get("/api/v1/tokens")
        assert listing.status_code == 200, listing.text
        assert [t["role"] for t in listing.json()["tokens"]] == ["admin"]

    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout
    assert server.secrets[argv[2]]["stringData"]["token"] == token
    assert [m for m, _ in server.calls] == ["GET", "POST", "GET"]
    with k8s_server.client(token) as admin:
        assert len(admin.get("/api/v1/tokens").json()["tokens"]) == 1, "a second run made another token"

