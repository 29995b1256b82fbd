"""The dashboard (/ui, docs/decisions/0013) in headless Chromium against the real local stack: the run
list and its filters, a run's timeline and history updating live, actions (cancel, notify, resume),
the dead letters and the flow-control page; and no request leaving the machine.

Chromium is Debian's package (``make test`` installs it; ``STEPSTREAM_TEST_CHROMIUM`` names another),
driven by Playwright. With ``STEPSTREAM_UI_SCREENSHOTS`` set to a folder, the tests save screenshots
of the main pages there (docs/images/ holds the ones in the docs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Browser, Dialog, Page, Route, expect, sync_playwright

from tests.integration.test_failures import APPS
from tests.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.timeout(300)]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def chromium() -> str:
    found = os.environ.get("STEPSTREAM_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError(
            "Expected Chromium for the dashboard's browser tests, but found none: `make test` installs Debian's "
            "chromium package; or set STEPSTREAM_TEST_CHROMIUM to a Chromium binary"
        )
    return found


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(kafka_bootstrap, tmp_path_factory.mktemp("dashboard"), STEPSTREAM_DEFAULT_RETRY_BASE_MS="100")
    stack.create_topics()
    stack.start()  # the services and the example app
    stack.failures_port = stack.start_app("failures", APPS, "failures:app")  # type: ignore[attr-defined]
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, stack: Stack, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(
        base_url=f"http://127.0.0.1:{stack.api_port}", viewport={"width": 1280, "height": 900}
    )
    if "no_token" not in request.keywords:
        # As if the token had been entered once before (test_the_dashboard_asks_for_a_token enters it).
        context.add_init_script(f"localStorage.setItem('stepstream.token', {json.dumps(stack.token)})")
    outside: list[str] = []

    def loopback_only(route: Route) -> None:
        if urlparse(route.request.url).hostname in LOOPBACK:
            route.continue_()
        else:  # the dashboard ships every asset: anything else is a request that would leave the machine
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", loopback_only)
    page = context.new_page()
    answers: list[str] = []
    page.on("dialog", lambda dialog: answer(dialog, answers))
    page.answers = answers  # type: ignore[attr-defined]  # what the next prompts answer
    yield page
    context.close()
    assert outside == [], f"requests left the machine: {outside}"


def answer(dialog: Dialog, answers: list[str]) -> None:
    """Confirm every confirmation; answer a prompt with the next of ``answers``."""
    if dialog.type == "prompt":
        dialog.accept(answers.pop(0) if answers else "null")
    else:
        dialog.accept()


def screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("STEPSTREAM_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def trigger(stack: Stack, workflow: str, payload: Any, **options: Any) -> str:
    url = stack.workflow_url.rsplit("/", 1)[0] + f"/{workflow}"
    return stack.trigger(payload, workflow=workflow, url=url, **options)


@pytest.mark.no_token
def test_the_dashboard_asks_for_a_token_and_works_with_it(stack: Stack, page: Page) -> None:
    run_id = trigger(stack, "onboarding", {"name": "Ada", "sleep_seconds": 0.2})

    page.goto("/ui/#/runs")
    dialog = page.locator("dialog.token")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Expected a token (Authorization: Bearer <token>), but got none")
    screenshot(page, "token")
    page.fill("dialog.token input[name=token]", "ssk_not-a-token-of-this-api")
    page.click("dialog.token button[type=submit]")
    expect(page.locator("dialog.token")).to_contain_text("Expected a known token, but this one is not")

    page.fill("dialog.token input[name=token]", stack.token)
    page.click("dialog.token button[type=submit]")
    expect(page.locator(f'tr[data-run-id="{run_id}"]')).to_be_visible()
    expect(page.locator("dialog.token")).to_have_count(0)
    # the history stream, which EventSource opens without headers, is let in by the token's cookie
    page.goto(f"/ui/#/runs/{run_id}")
    expect(page.locator('.history details[data-type="RunStarted"]')).to_have_count(1, timeout=30_000)


def test_the_run_list_shows_a_new_run_and_its_filters_narrow_it(stack: Stack, page: Page) -> None:
    label = f"ui-{uuid.uuid4().hex[:6]}"
    mine = trigger(stack, "onboarding", {"name": "Ada", "sleep_seconds": 0.2}, label=label)
    other = trigger(stack, "onboarding", {"name": "Bob", "sleep_seconds": 0.2}, label=f"{label}-other")
    stack.wait_for_status(mine, "completed")

    page.goto("/")  # the api's root leads to the dashboard
    assert urlparse(page.url).path == "/ui/"
    expect(page.locator(f'tr[data-run-id="{mine}"]')).to_be_visible()
    expect(page.locator(f'tr[data-run-id="{other}"]')).to_be_visible()
    screenshot(page, "runs")

    # filtering by label narrows the list to the one run
    page.fill("input[name=label]", label)
    page.click("form.filters button[type=submit]")
    expect(page.locator("table.runs tbody tr")).to_have_count(1)
    expect(page.locator(f'tr[data-run-id="{mine}"]')).to_be_visible()
    # and by status: completed keeps it, failed leaves nothing
    page.select_option("select[name=status]", "completed")
    page.click("form.filters button[type=submit]")
    expect(page.locator(f'tr[data-run-id="{mine}"]')).to_be_visible()
    expect(page.locator(".counts a[data-status=completed]")).to_have_text("completed 1")
    page.select_option("select[name=status]", "failed")
    page.click("form.filters button[type=submit]")
    expect(page.get_by_text("No runs match.")).to_be_visible()


def test_a_run_waiting_out_its_delay_is_shown_as_scheduled(stack: Stack, page: Page) -> None:
    label = f"later-{uuid.uuid4().hex[:6]}"
    later = trigger(stack, "onboarding", {"name": "Cy"}, label=label, delay="1h")
    stack.wait_for_status(later, "scheduled", timeout=30)

    page.goto("/ui/#/runs")
    page.fill("input[name=label]", label)
    page.select_option("select[name=status]", "scheduled")
    page.click("form.filters button[type=submit]")
    expect(page.locator(f'tr[data-run-id="{later}"] .status.scheduled')).to_have_text("scheduled")
    expect(page.locator(".counts a[data-status=scheduled]")).to_have_text("scheduled 1")
    stack.api.post(f"/v1/runs/{later}/cancel", json={})


def test_a_run_s_timeline_and_history_follow_it_live_through_a_notify_to_its_end(stack: Stack, page: Page) -> None:
    order_id = uuid.uuid4().hex[:8]
    run_id = trigger(stack, "order", {"order_id": order_id, "items": ["book", "lamp"]})
    stack.wait_for_status(run_id, "waiting", timeout=60)

    page.goto(f"/ui/#/runs/{run_id}")
    rows = page.locator(".timeline .row")
    # a bar per step so far, in order: the parallel reservations, the call, the wait (still pending)
    expect(rows).to_have_count(4)
    assert [rows.nth(n).get_attribute("data-kind") for n in range(4)] == ["run", "run", "call", "wait_for_event"]
    expect(rows.nth(3)).to_have_attribute("data-status", "pending")
    expect(page.locator('.history details[data-type="WaitStarted"]')).to_have_count(1)
    screenshot(page, "run-waiting")

    # when notified from the dashboard, the page follows the run on to its end, with no reload
    page.answers.append('{"amount": 30}')  # type: ignore[attr-defined]
    page.click(f'button[data-action=notify][data-event-id="payment-{order_id}"]')
    expect(page.locator(".facts .status")).to_have_text("completed", timeout=30_000)
    expect(rows).to_have_count(6)
    kinds = [rows.nth(n).get_attribute("data-kind") for n in range(6)]
    assert kinds == ["run", "run", "call", "wait_for_event", "sleep", "run"]
    assert {rows.nth(n).get_attribute("data-status") for n in range(6)} == {"completed"}
    # each bar starts no earlier than the steps before it that it waited for
    lefts = [float(rows.nth(n).locator(".bar").evaluate("bar => parseFloat(bar.style.left)")) for n in range(6)]
    assert lefts[2] >= max(lefts[:2]), lefts  # the call after both reservations
    assert lefts[2] <= lefts[3] <= lefts[4] <= lefts[5], lefts  # then the wait, the sleep, the shipping
    expect(page.locator('.history details[data-type="RunCompleted"]')).to_have_count(1, timeout=30_000)
    # an event opens to its data
    page.click('.history details[data-type="EventReceived"] summary')
    expect(page.locator('.history details[data-type="EventReceived"] pre')).to_contain_text('"amount": 30')
    screenshot(page, "run")


def test_a_waiting_run_is_among_the_waiters_and_cancelled_from_the_dashboard_is_cancelled(
    stack: Stack, page: Page
) -> None:
    order_id = uuid.uuid4().hex[:8]
    run_id = trigger(stack, "order", {"order_id": order_id})
    stack.wait_for_status(run_id, "waiting", timeout=60)

    # the waiters page lists the run under its event id, and so does the event id's own list
    page.goto("/ui/#/waiters")
    expect(page.locator(f'table.waiters tr[data-run-id="{run_id}"]')).to_have_attribute(
        "data-event-id", f"payment-{order_id}"
    )
    page.fill("input[name=event_id]", f"payment-{order_id}")
    page.click("form.filters button[type=submit]")
    expect(page.locator("table.waiters tbody tr")).to_have_count(1)
    screenshot(page, "waiters")

    page.goto(f"/ui/#/runs/{run_id}")
    page.click("button[data-action=cancel]")

    expect(page.locator(".facts .status")).to_have_text("cancelled", timeout=30_000)
    expect(page.locator('.history details[data-type="RunCancelled"]')).to_have_count(1, timeout=30_000)
    expect(page.locator('.history details[data-type="RunCancelled"]')).to_contain_text("actor=token tests")
    assert stack.run(run_id)["status"] == "cancelled"  # type: ignore[index]


def test_a_dead_lettered_run_resumed_from_the_dashboard_completes(stack: Stack, page: Page) -> None:
    # an endpoint that fails the first delivery of each run, and a run with no retry: it fails at once
    url = f"http://127.0.0.1:{stack.failures_port}/http500/1/steady"  # type: ignore[attr-defined]
    response = stack.api.post("/v1/runs", json={"workflow": "steady", "url": url, "payload": {}, "retries": 0})
    run_id = response.json()["run_id"]
    stack.wait_for_status(run_id, "failed")

    page.goto("/ui/#/deadletter")
    expect(page.locator(f'tr[data-run-id="{run_id}"]')).to_be_visible()
    screenshot(page, "deadletter")
    page.click(f'tr[data-run-id="{run_id}"] a')
    page.click("button[data-action=resume]")

    expect(page.locator(".facts .status")).to_have_text("completed", timeout=30_000)
    recovered = page.locator('.history details[data-type="RunRecovered"]')
    expect(recovered).to_have_count(1, timeout=30_000)
    # the audit trail: who resumed it, and why
    expect(recovered).to_contain_text("actor=token tests")
    expect(recovered).to_contain_text("reason=from the dashboard")


def test_the_flow_control_page_shows_a_key_s_queued_work_while_its_limits_hold_it_back(
    stack: Stack, page: Page
) -> None:
    key = f"ui-key-{uuid.uuid4().hex[:6]}"
    # one start a minute under the key: the first run's first delivery goes, the rest wait in its queue
    # (the other runs' first deliveries, and the first run's next one once its first has answered)
    for _ in range(4):
        trigger(
            stack,
            "onboarding",
            {"name": "Cy", "sleep_seconds": 0.1},
            flow_control={"key": key, "rate": 1, "period": "1m"},
        )

    page.goto("/ui/#/flow")
    row = page.locator(f'table.flow tr[data-key="{key}"]')
    expect(row.locator("td[data-field=queued]")).to_have_text(re.compile(r"^[34]$"), timeout=30_000)
    expect(row).to_contain_text("1 per 1.0 min")
    screenshot(page, "flow")


def test_the_api_s_own_docs_page_works_offline_too(page: Page) -> None:
    page.goto("/docs")
    # Swagger UI, from the api's own files, drawing the api's operations (a CDN would be refused above)
    expect(page.get_by_text("/v1/runs/{run_id}/history/stream").first).to_be_visible(timeout=30_000)
