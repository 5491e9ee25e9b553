"""The HTML report in a real browser: the file the API serves, saved to disk and opened from
there in headless Chromium (as a user opens a downloaded report), every plot decoded, and a
screenshot of the whole page taken."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import LiveServer
from tests.test_dashboard_browser import Browser, chromium  # noqa: F401 - chromium: the fixture, reused
from tests.test_plots import KINDS, finished  # noqa: F401 - finished: the fixture, reused


@pytest.fixture
def browser(chromium: str) -> Iterator[Browser]:  # noqa: F811 - the imported fixture
    b = Browser(chromium)
    yield b
    b.close()


def test_the_report_renders_in_chromium(
    live_server: LiveServer, finished: dict[str, Any], browser: Browser, tmp_path: Path  # noqa: F811
) -> None:
    with live_server.client(finished["admin"]) as client:
        r = client.get(f"/api/v1/studies/{finished['name']}/report")
    assert r.status_code == 200
    path = tmp_path / "report.html"
    path.write_text(r.text, encoding="utf-8")

    page = browser.page(path.as_uri())
    page.wait("document.readyState === 'complete' && document.images.length > 0 && [...document.images].every(i => i.complete)")
    # Every plot decoded to its full size: a broken data URI would leave naturalWidth at 0.
    sizes = page.js("[...document.images].map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[800, 500]] * len(KINDS), sizes
    text = page.js("document.body.innerText")
    best = finished["summary"]["best_trial"]
    assert f"Trial {best['number']}" in text and f"{best['value']:.6g}" in text
    assert f"name: {finished['name']}" in text and "dataset:" in text  # the definition
    assert "Parameter importances (fANOVA)" in text and "Diagnosis" in text
    title = page.js("document.title")
    assert title == f"hpo report: {finished['name']}"
    # The page's own policy blocks scripts: an injected one would not run even if escaping failed.
    assert page.js("document.querySelector('meta[http-equiv=\"Content-Security-Policy\"]').content").startswith("default-src 'none'")

    shot = browser.send("Page.captureScreenshot", page.session, format="png", captureBeyondViewport=True)["data"]
    image = Image.open(io.BytesIO(base64.b64decode(shot)))
    assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 2000  # the whole page, plots included
    assert np.asarray(image.convert("L"), dtype=float).var() > 100
    (tmp_path / "report.png").write_bytes(base64.b64decode(shot))
    print(json.dumps({"screenshot": str(tmp_path / "report.png"), "size": image.size}))
