"""The dashboard in a real browser: headless Chromium (Debian's `chromium`, installed here when
missing), driven over the Chrome DevTools protocol on a pipe (--remote-debugging-pipe: JSON
messages separated by NUL on fds 3 and 4), against a real `hpo serve`."""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import LiveServer, auth, digits_definition


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        try:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "install", "-y", "chromium"], env=env, check=True, capture_output=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"chromium is not installed and `apt-get install -y chromium` failed: {exc}")
        found = shutil.which("chromium")
        if found is None:
            pytest.skip("`apt-get install -y chromium` ran but no `chromium` is on PATH")
    return found


class Browser:
    """Just enough of the DevTools protocol: pages in their own browser contexts, evaluate JS."""

    def __init__(self, binary: str) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        self._profile = tempfile.mkdtemp(prefix="hpo-chromium-")
        args = ["--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-dev-shm-usage", f"--user-data-dir={self._profile}", "about:blank"]
        # A tiny Python exec puts the pipes on the fds Chromium expects (3: commands in, 4: replies out).
        place = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execv(sys.argv[3], sys.argv[3:])"
        self.process = subprocess.Popen(
            [sys.executable, "-c", place, str(to_chrome_r), str(from_chrome_w), binary, *args],
            pass_fds=(to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._ids = itertools.count(1)
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_chrome, 65536):
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        box = self._replies.get(message["id"])
                    if box is not None:
                        box.put(message)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        box: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._replies[call_id] = box
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        reply = box.get(timeout=60)
        assert "error" not in reply, (method, reply)
        return reply["result"]

    def page(self, url: str) -> Page:
        """A new tab in a fresh browser context (its own cookies)."""
        context = self.send("Target.createBrowserContext")["browserContextId"]
        target = self.send("Target.createTarget", url=url, browserContextId=context)["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        return Page(self, session)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:  # noqa: BLE001 - it may be gone already
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self._profile, ignore_errors=True)


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session

    def js(self, expression: str) -> Any:
        result = self.browser.send("Runtime.evaluate", self.session, expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.js(expression)
            except AssertionError:  # the page is navigating
                last = None
            if last:
                return last
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}; page: {self.js('document.body && document.body.innerText')!r}")

    def log_in(self, token: str) -> None:
        self.wait("location.pathname === '/dashboard/login' && document.readyState === 'complete'")
        self.js(f"document.getElementById('token').value = {json.dumps(token)}; document.getElementById('login').click(); true")
        self.wait("location.pathname === '/dashboard/' && document.readyState === 'complete'")


@pytest.fixture(scope="module")
def server(db_url: str) -> Iterator[LiveServer]:
    live = LiveServer(db_url, HPO_COOKIE_SECURE="false", HPO_HEARTBEAT_SECONDS="1", HPO_LEASE_SECONDS="30")
    yield live
    live.stop()


@pytest.fixture
def browser(chromium: str) -> Iterator[Browser]:
    b = Browser(chromium)
    yield b
    b.close()


def test_a_team_sees_its_studies_and_a_viewer_cannot_delete(server: LiveServer, browser: Browser, make_token: Any) -> None:
    a, b = f"a{uuid.uuid4().hex[:10]}", f"b{uuid.uuid4().hex[:10]}"
    a_member, a_viewer, b_admin = make_token(a, "member"), make_token(a, "viewer"), make_token(b)
    ours, theirs = f"ours-{uuid.uuid4().hex[:6]}", f"theirs-{uuid.uuid4().hex[:6]}"
    with server.client(a_member) as client:
        assert client.post("/api/v1/studies", json=digits_definition(ours)).status_code == 201
    with server.client(b_admin) as client:
        assert client.post("/api/v1/studies", json=digits_definition(theirs)).status_code == 201

    # Team A's member: the login form, then the study list shows ours and not theirs.
    page = browser.page(f"{server.url}/dashboard/")
    page.log_in(a_member)
    text = page.wait(f"document.body.innerText.includes({json.dumps(ours)}) && document.body.innerText")
    assert theirs not in text and b not in text
    # The cookie is not readable from scripts (HttpOnly).
    assert "hpo_dashboard" not in page.js("document.cookie")

    # Team A's viewer: the dashboard's own delete request is refused, and the study stays.
    page = browser.page(f"{server.url}/dashboard/")
    page.log_in(a_viewer)
    page.wait(f"document.body.innerText.includes({json.dumps(ours)})")
    study_id = page.js(
        f"fetch('/api/studies').then(r => r.json()).then(j => j.study_summaries.find(s => s.study_name === {json.dumps(a + '/' + ours)}).study_id)"
    )
    # The same request the dashboard's "Delete study" button sends (through the page's fetch).
    answer = page.js(
        f"fetch('/api/studies/{study_id}', {{method: 'DELETE', headers: {{'Content-Type': 'application/json'}},"
        " body: JSON.stringify({remove_associated_artifacts: true})}).then(async r => [r.status, await r.json()])"
    )
    assert answer[0] == 403 and answer[1]["error"] == "forbidden", answer
    with server.client(a_member) as client:
        assert client.get(f"/api/v1/studies/{ours}").status_code == 200
        assert client.delete(f"/api/v1/studies/{ours}", headers=auth(a_member)).status_code == 204
