"""The console in a real headless Chromium, driven by Playwright (issue 11).

The browser is Debian's chromium package (/usr/bin/chromium); Playwright's own
browser download is never used. Each test loads the page of a running daemon
and compares what the page shows with what the JSON API says.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.console import TOKEN, api, console_config, open_queue, wait_dead
from tests.support.daemon import Daemon, DaemonFactory
from tests.support.waiting import wait_until

CHROMIUM = Path(os.environ.get("DRAINPOOL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container: the setuid sandbox is unavailable
    "--disable-gpu",
    "--disable-background-networking",  # no update checks, no safe browsing: loopback only
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGE_TIMEOUT_MS = 20_000


def _missing(reason: str) -> None:
    # On CI the browser is part of the set-up: its absence is a failure, not a skip.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright Python package is not installed")
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} not found (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


class Console:
    """One browser page on a daemon's console, with what happened in it."""

    def __init__(self, browser: Any, daemon: Daemon, *, loaded: bool = True) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.set_default_timeout(PAGE_TIMEOUT_MS)
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.messages: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._on_dialog)
        self.page.on("console", lambda message: self.messages.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(f"http://127.0.0.1:{daemon.port}/")
        if loaded:
            self.page.wait_for_selector("body[data-loaded='1']")

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def texts(self, selector: str) -> list[str]:
        return [text.strip() for text in self.page.locator(selector).all_text_contents()]

    def job_ids(self, rows: str) -> list[str]:
        return self.page.locator(rows).evaluate_all("rows => rows.map(r => r.dataset.jobId)")

    def wait_refreshes(self, count: int = 2) -> None:
        """Wait until the page has refreshed itself `count` more times."""
        for _ in range(count):
            self.page.evaluate("document.body.dataset.loaded = '0'")
            self.page.wait_for_selector("body[data-loaded='1']")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_console(browser: Any) -> Iterator[Any]:
    opened: list[Console] = []

    def opener(daemon: Daemon, *, loaded: bool = True) -> Console:
        console = Console(browser, daemon, loaded=loaded)
        opened.append(console)
        return console

    yield opener
    for console in opened:
        console.close()


def save_artifact(source: Path) -> None:
    """Copy a screenshot to $DRAINPOOL_ARTIFACTS, where CI keeps what tests leave."""
    target = os.environ.get("DRAINPOOL_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, Path(target) / source.name)


def job_payload(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        "log": str(tmp / "jobs.log"),
        "gate": str(tmp / "gate"),
        "fixed": str(tmp / "fixed"),
        **extra,
    }


def test_console_shows_the_daemon_and_retries_a_dead_job(
    factory: DaemonFactory, tmp_path: Path, open_console: Any
) -> None:
    daemon = factory.start(console_config(factory, workers=2))
    with open_queue(tmp_path) as queue:
        queue.enqueue("flaky", job_payload(tmp_path, error="OSError: disk full on /var/spool"))
        queue.enqueue("flaky", job_payload(tmp_path, error="upstream answered 503\nretry later"))
        dead = sorted(wait_dead(queue, 2), key=int)
        # 2 workers and a reserve of 1 (pool.prefetch): 3 leased, 2 ready.
        for _ in range(5):
            queue.enqueue("hold", job_payload(tmp_path))
        wait_until(
            lambda: queue.stats().ready == 2 and len(api(daemon, "/api/running")["running"]) == 2,
            what="2 running and 2 ready",
        )

    console = open_console(daemon)
    page = console.page
    running = api(daemon, "/api/running")["running"]
    stats = api(daemon, "/api/queue")
    assert sorted(console.job_ids("#running tr")) == sorted(r["job_id"] for r in running)
    for task in running:
        row = console.texts(f'#running tr[data-job-id="{task["job_id"]}"] td')
        assert row[1:3] == [task["task"], str(task["attempt"])]
    shown = dict(zip(console.texts("#queue .label"), console.texts("#queue .num"), strict=True))
    assert shown == {k: str(stats[k]) for k in ("ready", "delayed", "leased", "dead")}
    assert shown["ready"] == "2" and shown["leased"] == "3" and shown["dead"] == "2"
    assert console.texts("#oldest") != ["none ready"]
    assert console.texts("#running-count") == ["2"]
    assert sorted(console.job_ids("#dead tr")) == dead
    assert console.texts("#state") == ["running"]
    assert console.texts("#pools td")[:3] == ["default", "1", "2"]

    # The chart of outcomes per minute shows the two deaths (counted by the queue itself).
    dead_bars = "#outcome-chart svg.chart rect.bar[data-outcome='dead']"
    page.wait_for_selector(dead_bars)
    bars = page.locator(dead_bars).evaluate_all(
        "bars => bars.map(b => [Number(b.dataset.n), b.getBoundingClientRect().height])"
    )
    assert sum(n for n, _ in bars) == 2 and all(height > 0 for _, height in bars)
    assert console.texts("#chart-legend [data-outcome='dead'] b") == ["2"]
    assert page.locator("#outcome-chart svg.chart text.axis-label").count() >= 3

    # Enter the token, look at one dead job's details, and keep a picture of the page.
    page.fill("#token", TOKEN)
    page.click("#token-form button[type=submit]")
    page.click(f'#dead details[data-job-id="{dead[1]}"] summary')
    page.wait_for_selector(f'#dead details[data-job-id="{dead[1]}"][open] pre.traceback')
    screenshot = tmp_path / "console.png"
    # Written here rather than by Playwright, whose file write would start an executor thread.
    screenshot.write_bytes(page.screenshot(full_page=True))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    save_artifact(screenshot)

    # Retry the first dead job from the page; once its cause is fixed it runs and completes.
    page.click(f'#dead tr[data-job-id="{dead[0]}"] button.retry')
    page.wait_for_selector("#action-result.ok")
    assert console.texts("#action-result") == [f"Retried 1 dead job ({dead[0]})"]
    page.wait_for_function(
        'id => !document.querySelector(`#dead tr[data-job-id="${id}"]`)', arg=dead[0]
    )
    (tmp_path / "fixed").touch()
    (tmp_path / "gate").touch()
    page.wait_for_selector(f'#outcomes tr[data-job-id="{dead[0]}"][data-outcome="completed"]')
    assert f"done {dead[0]} 1" in (tmp_path / "jobs.log").read_text()
    assert [job["id"] for job in api(daemon, "/api/dead")["dead"]] == [dead[1]]
    assert "console dead_retry by 127.0.0.1" in daemon.log()

    # Its job page, from the recent outcomes list: the record as the API gives it.
    page.click(f'#outcomes tr[data-job-id="{dead[0]}"][data-outcome="completed"] a.job-link')
    page.wait_for_selector(f'#job-body[data-job-id="{dead[0]}"] #job-state')
    record = api(daemon, f"/api/jobs/{dead[0]}")
    assert console.texts("#job-state") == ["completed"] == [record["state"]]
    facts = dict(zip(console.texts("#job-facts dt"), console.texts("#job-facts dd"), strict=True))
    assert facts["Task"] == "flaky" and facts["Attempts"] == str(record["attempts"])
    assert facts["Daemon"].split(" pool")[0] == f"{record['worker']['host']} pid {daemon.pid}"
    steps = console.texts("#job-body .timeline-steps li b")
    assert steps == ["enqueued", "first started", "completed"]
    assert page.locator("#overview").is_hidden()
    job_shot = tmp_path / "console-job.png"
    job_shot.write_bytes(page.screenshot(full_page=True))
    save_artifact(job_shot)
    page.click("a.back")
    page.wait_for_selector("#overview:not([hidden])")

    # The other dead job, found by its id: its error and traceback.
    page.fill("#find-id", dead[1])
    page.press("#find-id", "Enter")
    page.wait_for_selector(f'#job-body[data-job-id="{dead[1]}"] pre.traceback')
    assert console.texts("#job-state") == ["dead"]
    assert "upstream answered 503" in console.texts("#job-body pre.error-text")[0]
    page.fill("#find-id", "987654")
    page.press("#find-id", "Enter")
    page.wait_for_selector("#job-body .job-missing")
    assert console.texts("#job-body .job-missing") == [
        "no job 987654 (never enqueued, or its record expired after retention_seconds)"
    ]
    page.click("a.back")
    page.wait_for_selector("#overview:not([hidden])")

    # A reload from the page with a broken file: rejected, and the page says why.
    console_config(factory, workers=0)
    page.click("#reload")
    page.wait_for_selector("#reload-result:text('rejected')")
    record = daemon.status()["reload"]
    assert (record["result"], record["source"]) == ("rejected", "console")
    assert console.texts("#reload-message") == [record["message"]]
    assert "pool.workers" in record["message"]
    after = tmp_path / "console-after.png"
    after.write_bytes(page.screenshot(full_page=True))
    save_artifact(after)
    assert not console.errors and not console.dialogs


XSS_ERROR = "<script>alert(1)</script>"
XSS_PAYLOAD = '<img src=x onerror="window.__xss = 1; alert(2)">'


def test_html_in_a_dead_job_is_shown_as_text_and_never_runs(
    factory: DaemonFactory, tmp_path: Path, open_console: Any
) -> None:
    daemon = factory.start(console_config(factory))
    with open_queue(tmp_path) as queue:
        queue.enqueue("flaky", job_payload(tmp_path, error=XSS_ERROR, note=XSS_PAYLOAD))
        [job_id] = wait_dead(queue, 1)

    console = open_console(daemon)
    page = console.page
    details = f'#dead details[data-job-id="{job_id}"]'
    page.click(f"{details} summary")
    page.wait_for_selector(f"{details}[open] pre.payload")
    console.wait_refreshes(2)  # time for an injected image to fail and fire its handler

    assert console.texts(f"{details} summary") == [f"ChosenError: {XSS_ERROR}"]
    assert XSS_PAYLOAD.replace('"', '\\"') in console.texts(f"{details} pre.payload")[0]
    assert page.locator("#dead img, #dead script, #dead [onerror]").count() == 0
    assert page.evaluate("window.__xss") is None
    assert console.dialogs == []
    assert not [m for m in console.messages if "Content Security Policy" in m]
    assert not console.errors

    # The watch is live: a script that does run in this page is seen.
    page.evaluate("() => alert('probe')")
    assert console.dialogs == ["probe"]


def test_off_loopback_the_page_asks_for_the_token_before_showing_anything(
    factory: DaemonFactory, tmp_path: Path, open_console: Any
) -> None:
    # Bound to every address: the console's data needs the token (actions stay off).
    daemon = factory.start(console_config(factory, actions=False, host="0.0.0.0"))
    with open_queue(tmp_path) as queue:
        queue.enqueue("flaky", job_payload(tmp_path, error="kept private"))
        [job_id] = wait_dead(queue, 1)

    console = open_console(daemon, loaded=False)
    page = console.page
    page.wait_for_selector("#banner:not([hidden])")
    assert "Not allowed to read" in console.texts("#banner")[0]
    assert page.locator("#token").is_visible()
    assert not page.locator("#reload").is_visible()  # actions are off
    assert console.job_ids("#dead tr") == []
    assert "kept private" not in page.content()

    page.fill("#token", TOKEN)
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("body[data-loaded='1']")
    page.wait_for_selector("#banner[hidden]", state="attached")
    assert console.job_ids("#dead tr") == [job_id]
    assert console.texts("#queue .num")[3] == "1"
    assert page.locator("#actions-off").is_visible()
