"""A real browser on the workflows page: headless Chromium against a live server and a real worker.

The server is the Flask extension on a SQLite file and a private redis-server; a
stock ``rq worker`` runs the workflows. Screenshots are kept in ``artifacts/``.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from workflow_engine import WorkflowEngine, WorkflowStatus
from workflow_engine.contrib.flask import WorkflowEngineFlask

from support import ROOT, RedisServer, free_port, service_unavailable, start_worker, wait_for

S = WorkflowStatus
ARTIFACTS = ROOT / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1280,1400",
]


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium driven by selenium, with Debian's chromium and chromium-driver."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        service_unavailable(
            "chromium and chromedriver are not installed: apt-get install chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(driver_path)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def live(tmp_path: Path, redis_server: RedisServer, effects: Path) -> Iterator[tuple[str, WorkflowEngine]]:
    """The extension with its page, served on a free port, and a real worker; yields (base URL, engine)."""
    database_url = f"sqlite:///{tmp_path / 'workflows.db'}"
    engine = WorkflowEngine(database_url=database_url, redis_url=redis_server.url)
    engine.register_handler("site", "we_test_handlers:record_success")
    engine.register_handler("flaky", "we_test_handlers:flaky", max_retries=0)
    engine.configure_council("c1", members=["ana", "bo", "cy"], quorum=2)
    app = Flask(__name__)
    WorkflowEngineFlask(app, engine, ui=True)
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    worker = start_worker(
        tmp_path, redis_url=redis_server.url, database_url=database_url, effects=effects, burst=False
    )
    try:
        yield f"http://127.0.0.1:{port}", engine
    finally:
        worker.stop()
        server.shutdown()
        thread.join(10)
        server.server_close()
        engine.close()


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        data: dict[str, Any] = json.load(response)
        return data


def text_of(driver: Any, element_id: str) -> str:
    """The text of an element, or "" while the page is being replaced. Chrome may also answer a
    read during the page's own refresh with "unhandled inspector error": the next look succeeds."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.ID, element_id).text)
    except WebDriverException:  # NoSuchElement, StaleElementReference, the inspector's hiccup
        return ""


def shows(driver: Any, status: str) -> Callable[[], bool]:
    """The page (which refreshes itself while the workflow is queued or running) shows ``status``."""
    return lambda: text_of(driver, "status") == status


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


@pytest.mark.slow
@pytest.mark.services
def test_a_person_approves_a_workflow_and_requeues_a_failed_one_in_the_page(
    browser: Any, live: tuple[str, WorkflowEngine]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    base, engine = live
    wf = post_json(
        f"{base}/api/workflow_actions",
        {
            "workflow_type_id": "site",
            "created_by_agent": "ava",
            "inputs": {"business": "Acme Bakery"},
            "assigned_council_id": "c1",
            "requires_approval": True,
        },
    )
    assert wf["status"] == "awaiting_approval"

    # The list shows it with its badge; its link opens the detail view.
    browser.get(f"{base}/workflows")
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-workflow-id="{wf["id"]}"]')
    assert row.find_element(By.CSS_SELECTOR, ".badge").text == "awaiting_approval"
    row.find_element(By.TAG_NAME, "a").click()
    wait_for(shows(browser, "awaiting_approval"), timeout=10, what="the detail page")
    assert "Acme Bakery" in browser.find_element(By.ID, "inputs").text

    # Two council members vote in the page.
    for voter, comment in (("ana", "looks right"), ("bo", "")):
        Select(browser.find_element(By.ID, "voter")).select_by_value(voter)
        browser.find_element(By.ID, "comment").send_keys(comment)
        browser.find_element(By.ID, "approve").click()
        wait_for(
            lambda v=voter: f"{v} approves" in text_of(browser, "votes"), timeout=10, what=f"{voter}'s vote"
        )
    # The second vote reached the quorum: the worker runs it; the page refreshes until it is done.
    wait_for(shows(browser, "completed"), timeout=45, what="the approved workflow to complete")
    timeline = browser.find_element(By.ID, "timeline").text
    assert "vote: ana approves: looks right" in timeline and "approved by council c1" in timeline
    assert "acme" in browser.find_element(By.ID, "result").text.lower()
    screenshot(browser, "browser-approved-workflow.png")

    # A workflow that fails its only attempt is requeued from its page, and then succeeds.
    failed = post_json(
        f"{base}/api/workflow_actions", {"workflow_type_id": "flaky", "inputs": {"fail_times": 1}}
    )
    wait_for(
        lambda: engine.get_workflow(failed["id"]).status is S.FAILED,
        timeout=30,
        what="the first attempt to fail",
    )
    browser.get(f"{base}/workflows/{failed['id']}")
    assert "flaky failure on attempt 1" in browser.find_element(By.ID, "wf-error").text
    browser.find_element(By.ID, "requeue").click()
    wait_for(shows(browser, "completed"), timeout=45, what="the requeued workflow to complete")
    assert engine.get_workflow(failed["id"]).attempts == 2
    assert "requeued" in browser.find_element(By.ID, "timeline").text
    screenshot(browser, "browser-requeued-workflow.png")

    browser.get(f"{base}/workflows?status=completed")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tbody tr")) == 2
    screenshot(browser, "browser-workflows-list.png")
