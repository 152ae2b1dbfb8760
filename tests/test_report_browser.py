"""The report in a real browser: Debian's chromium driven through chromedriver (W3C WebDriver over
HTTP, a few requests with urllib: no client library), at 1000 and 1400 px wide.

Checks what a reader would notice: every picture renders with a size, nothing overflows
horizontally, and the selection list the browser shows is the list `select` writes.
Skipped, with the reason, where chromium or chromedriver is not installed (`.ci/run` installs them).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_report import dense, mixtral

from spectrum_stream.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """The few W3C WebDriver commands the test needs."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.session = ""

    def call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["value"]

    def start(self, profile: Path) -> None:
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        args += ["--disable-background-networking", "--disable-component-update"]
        args += ["--no-first-run", f"--user-data-dir={profile}", "--hide-scrollbars"]
        caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}
        self.session = self.call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})[
            "sessionId"
        ]

    def run(self, script: str):
        return self.call(
            "POST", f"/session/{self.session}/execute/sync", {"script": script, "args": []}
        )


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    port = _free_port()
    driver = subprocess.Popen(
        [DRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wd = WebDriver(port)
    try:
        for _ in range(100):  # until it answers
            try:
                wd.call("GET", "/status")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        wd.start(tmp_path_factory.mktemp("profile"))
        yield wd
    finally:
        if wd.session:
            try:
                wd.call("DELETE", f"/session/{wd.session}")
            except (urllib.error.URLError, ConnectionError):
                pass
        driver.terminate()
        driver.wait(timeout=30)


LOOK = """
const svgs = [...document.querySelectorAll('svg')].map(s => {
  const r = s.getBoundingClientRect(); return [r.width, r.height, r.right]; });
const imgs = [...document.images].map(i => i.complete && i.naturalWidth > 0);
return {
  scroll: document.documentElement.scrollWidth,
  inner: window.innerWidth,
  svgs: svgs,
  imgs: imgs,
  patterns: [...document.querySelectorAll('code.pattern')].map(c => c.textContent),
};
"""


@pytest.mark.parametrize("make", [dense, mixtral])
def test_page_in_chromium(browser, tmp_path, make):
    results = make(np.random.default_rng(4))
    path = tmp_path / f"snr_results_{make.__name__}.json"
    path.write_text(json.dumps(results))
    runner = CliRunner()
    r = runner.invoke(main, ["report", str(path), "-o", str(tmp_path / "r"), "--quiet"])
    assert r.exit_code == 0, r.output
    chosen = runner.invoke(main, ["select", str(path), "--format", "json"])
    want = json.loads(chosen.stdout)
    url = (tmp_path / "r" / "index.html").resolve().as_uri()
    for width in (1000, 1400):
        browser.call(
            "POST", f"/session/{browser.session}/window/rect", {"width": width, "height": 1200}
        )
        browser.call("POST", f"/session/{browser.session}/url", {"url": url})
        seen = browser.run(LOOK)
        assert seen["scroll"] <= seen["inner"], f"{width}px: the page scrolls sideways"
        assert seen["svgs"] and all(w > 50 and h > 20 for w, h, _ in seen["svgs"]), seen["svgs"]
        assert all(right <= seen["inner"] for _, _, right in seen["svgs"]), width
        assert all(seen["imgs"]), "a picture did not load"
        assert seen["patterns"] == want
