"""/dashboard in a real browser: Debian's chromium, headless, shows the page in real time while traffic flows;
the test reads the numbers the page shows from its DOM and saves a screenshot next to the test's files."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.browser import CHROMIUM, Browser
from tests.integration.helpers import (
    ReceivedRequest,
    RecordingUpstream,
    RunningGateway,
    free_port,
    gateway_config,
    json_response,
    run_gateway,
)
from tests.integration.observability_helpers import scrape, wait_until


@pytest.fixture(scope="module", autouse=True)
def _needs_chromium() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        # A real browser is part of this test, not optional: ./scripts/test installs it when run as root.
        pytest.fail("Debian's chromium is needed (apt-get install -y chromium)")


def _fail(request: ReceivedRequest, sock: socket.socket) -> bytes:
    return json_response(500, {"broken": True})


class _Rows(HTMLParser):
    """Every table row of the page: table id -> row name -> {data-field: text}; plus ids' texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, dict[str, str]]] = {}
        self.ids: dict[str, str] = {}
        self.body: dict[str, str | None] = {}
        self._table = ""
        self._row: dict[str, str] | None = None
        self._field: str | None = None
        self._id: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "body":
            self.body = attributes
        if tag == "table":
            self._table = attributes.get("id") or ""
        elif tag == "tr" and attributes.get("data-name"):
            self._row = self.tables.setdefault(self._table, {}).setdefault(attributes["data-name"] or "", {})
        elif tag == "td" and self._row is not None:
            self._field = attributes.get("data-field")
            if self._field:
                self._row[self._field] = ""
                self._row[self._field + ".class"] = attributes.get("class") or ""
        if attributes.get("id") and tag != "table":
            self._id = attributes["id"]
            self.ids[self._id or ""] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._field = None
        elif tag == "tr":
            self._row = None
        if self._id and tag in ("b", "span"):
            self._id = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._field:
            self._row[self._field] += data
        if self._id:
            self.ids[self._id] += data


@pytest.fixture
def gateway(tmp_path: Path, upstream: RecordingUpstream) -> Iterator[RunningGateway]:
    broken = RecordingUpstream(_fail)
    dead = f"http://127.0.0.1:{free_port()}"
    routes: list[dict[str, Any]] = [
        {"name": "orders", "match": {"paths": ["/orders"]}, "to": "orders"},
        {"name": "live", "match": {"paths": ["/live"]}, "to": "orders"},
        {"name": "broken", "match": {"paths": ["/broken"]}, "to": "broken"},
        {"name": "spare", "match": {"paths": ["/spare"]}, "to": "spare"},
        {"name": "limited", "match": {"paths": ["/limited"]}, "to": "orders",
         "plugins": {"rate_limit": {"limits": [{"name": "tiny", "rate": "1/m", "key": "ip"}]}}},
    ]
    config = gateway_config(free_port(), free_port(), {"orders": [upstream.url], "broken": [broken.url],
                                                       "spare": [dead]}, routes,
                            observability={"access_log": False})
    config["upstreams"]["spare"]["health_check"] = {"path": "/", "interval": "100ms", "unhealthy_after": 1}
    try:
        with run_gateway(tmp_path, config) as running:
            running.extra["dead"] = dead
            yield running
    finally:
        broken.close()


def test_the_dashboard_shows_the_traffic_it_was_sent(tmp_path: Path, gateway: RunningGateway) -> None:
    with httpx.Client(base_url=gateway.base_url) as client:
        for i in range(30):
            assert client.get(f"/orders/{i}").status_code == 200
        for _ in range(8):
            assert client.get("/broken").status_code == 500
        assert [client.get("/limited").status_code for _ in range(5)] == [200, 429, 429, 429, 429]
    assert wait_until(lambda: scrape(gateway).value("frontgate_target_healthy", upstream="spare") == 0 and
                      scrape(gateway).value("frontgate_target_healthy", upstream="orders") == 1)

    # Live traffic while the page polls, so requests/s has something to show.
    stop = threading.Event()
    sent = [0]

    def keep_sending() -> None:
        with httpx.Client(base_url=gateway.base_url) as client:
            while not stop.is_set():
                client.get("/live")
                sent[0] += 1
                stop.wait(0.005)

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    screenshot = tmp_path / "dashboard.png"
    browser = Browser(tmp_path / "chromium-profile")
    try:
        browser.open(f"http://127.0.0.1:{gateway.admin_port}/dashboard")
        # Three polls a second apart on the wall clock, as a user watching the page sees them.
        assert browser.wait_for("Number(document.body.dataset.polls || 0) >= 3", 30), "the page did not poll"
        dom = browser.html()
        browser.screenshot(screenshot)
    finally:
        browser.close()
        stop.set()
        sender.join(5)
    page = _Rows()
    page.feed(dom)

    routes = page.tables["routes"]
    assert routes["orders"]["requests"] == "30" and routes["orders"]["errors"] == "0"
    assert routes["broken"]["requests"] == "8" and routes["broken"]["errors"] == "8"
    assert routes["broken"]["error_rate"] == "100.0%"
    assert routes["orders"]["p50"].endswith(("ms", " s")) and routes["orders"]["p99"].endswith(("ms", " s"))
    assert routes["limited"]["requests"] == "5"
    live = routes["live"]
    assert float(live["rate"]) > 0, live
    assert 0 < int(live["requests"]) <= sent[0]
    upstreams = page.tables["upstreams"]
    assert upstreams["broken"]["errors"] == "8" and upstreams["broken"]["breaker"] == "closed"
    assert upstreams["orders"]["errors"] == "0"
    targets = page.tables["targets"]
    assert targets[gateway.extra["dead"]]["health"] == "unhealthy"
    assert all(row["health"] == "healthy" for name, row in targets.items() if name != gateway.extra["dead"])
    limits = page.tables["limits"]
    assert limits["tiny"]["limited"] == "4" and limits["tiny"]["admitted"] == "1"
    assert int(page.ids["total-requests"]) >= 30 + 8 + 5

    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000


def test_the_page_is_self_contained(gateway: RunningGateway) -> None:
    response = httpx.get(f"http://127.0.0.1:{gateway.admin_port}/dashboard")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    text = response.text
    assert "http://" not in text and "https://" not in text  # no CDN, nothing fetched from elsewhere
    assert "<link" not in text and " src=" not in text
