"""The dashboard in a real browser: headless Chromium (Debian's, through Playwright) against
``pgqueue.web.create_app`` served by uvicorn, with a real worker running the jobs.

One database, one server, one worker and one browser for the module. A screenshot of each page is
saved under ``PGQUEUE_SCREENSHOTS`` (a directory) or pytest's temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import expect, sync_playwright
from psycopg.rows import TupleRow

from pgqueue import App, Job, Worker
from pgqueue.schedules import ScheduleSpec, add_schedule
from pgqueue.settings import Settings
from tests.helpers import scratch_database, wait_until
from tests.plugins.system_binaries import system_binary

pytestmark = [pytest.mark.system_binary("chromium"), pytest.mark.slow]


expect.set_options(timeout=20_000)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
Conn = psycopg.Connection[TupleRow]


class Steps:
    """Lets the test move a running job's progress forward one step at a time.

    One per ``stack``, never one for the module: the stack's teardown sets ``stop`` for good, and
    one process can set the stack up twice (pytest-xdist's worksteal hands a process tests of this
    module, then of another, then of this one again). A module-wide ``Steps`` stopped by the first
    stack made the second stack's render-report return at its first 0.2 s wait without a permit:
    the job completed at 25 % while the test waited for 75 %.
    """

    def __init__(self) -> None:
        self.go = threading.Semaphore(0)
        self.stop = threading.Event()


def build_app(dsn: str, steps: Steps) -> App:
    app = App(dsn, settings=Settings(dsn=dsn, lease_seconds=10, poll_seconds=1, shutdown_grace_seconds=5))

    @app.task(name="send-reminder", queue="emails")
    def send_reminder(job: Job, patient: str) -> dict[str, Any]:
        return {"delivered": patient}

    @app.task(name="sync-record", queue="webhooks", max_attempts=1)
    def sync_record(job: Job, record: int) -> dict[str, Any]:
        if job.attempt == 1:  # the first attempt fails for good; a manual retry succeeds
            raise RuntimeError(f"partner API answered 503 for record {record}")
        return {"synced": record}

    @app.task(name="render-report", queue="reports")
    def render_report(job: Job, pages: int) -> dict[str, Any]:
        for page in range(1, pages + 1):
            while not steps.go.acquire(timeout=0.2):
                if steps.stop.is_set():
                    return {"pages": page}
            job.set_progress(100 * page / pages, note=f"page {page}/{pages}")
        return {"pages": pages}

    return app


@contextlib.contextmanager
def served(asgi_app: Any) -> Iterator[str]:
    """``asgi_app`` served by uvicorn on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(asgi_app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20, message="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def stack(pg_server_dsn: str, template_db: str) -> Iterator[dict[str, Any]]:
    from pgqueue.web import create_app

    with scratch_database(pg_server_dsn, template_db) as dsn:
        steps = Steps()
        app = build_app(dsn, steps)
        worker = Worker(app, concurrency=4, settings=app.settings)
        worker_thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
        worker_thread.start()
        try:
            with served(create_app(dsn, admin_token="", read_token="", poll_seconds=1)) as url:
                yield {"dsn": dsn, "app": app, "url": url, "steps": steps}
        finally:
            steps.stop.set()
            worker.stop()
            worker_thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser(stack: dict[str, Any]) -> Iterator[Any]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=system_binary("chromium"), args=CHROMIUM_ARGS,
                                              headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("PGQUEUE_SCREENSHOTS")
    folder = Path(configured) if configured else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def db(stack: dict[str, Any]) -> Iterator[Conn]:
    with psycopg.connect(stack["dsn"], autocommit=True) as conn:
        yield conn


def state_of(db: Conn, job_id: int) -> str | None:
    row = db.execute("SELECT state FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    return row[0] if row else None


def test_the_overview_shows_every_queue_with_counts_and_charts(stack: dict[str, Any], page: Any, db: Conn,
                                                               shots: Path) -> None:
    app = stack["app"]
    for i in range(12):
        app.enqueue(db, "send-reminder", {"patient": f"P{i}"}, tags=["facility:001"])
    app.enqueue(db, "render-report", {"pages": 4}, delay=3600)
    add_schedule(db, ScheduleSpec.build(name="nightly-cleanup", cron="0 3 * * *", task="send-reminder",
                                        args={"patient": "all"}, timezone="America/New_York", queue="emails"))
    wait_until(lambda: db.execute("SELECT count(*) >= 12 FROM pgqueue.jobs WHERE state = 'completed'").fetchone()
               == (True,), timeout=30)

    page.goto(stack["url"] + "/")
    page.wait_for_selector("text=emails")
    row = page.locator("tr", has_text="emails")
    expect(row.locator("svg.chart rect.bar:not(.empty)")).not_to_have_count(0)
    expect(page.locator(".tile", has_text="completed, last hour")).to_contain_text("12")
    page.screenshot(path=str(shots / "overview.png"), full_page=True)

    page.goto(stack["url"] + "/schedules")
    expect(page.locator("td", has_text="nightly-cleanup")).to_be_visible()
    page.screenshot(path=str(shots / "schedules.png"), full_page=True)
    page.goto(stack["url"] + "/workers")
    expect(page.locator(".badge", has_text="alive")).to_be_visible()
    page.screenshot(path=str(shots / "workers.png"), full_page=True)


def test_filtering_jobs_by_queue_and_state_lists_only_matching_jobs(stack: dict[str, Any], page: Any, db: Conn,
                                                                    shots: Path) -> None:
    app = stack["app"]
    app.enqueue(db, "send-reminder", {"patient": "filtered"})
    app.enqueue(db, "render-report", {"pages": 2}, delay=3600)

    page.goto(stack["url"] + "/jobs")
    page.fill("input[name=queue]", "reports")
    page.select_option("select[name=state]", "scheduled")
    page.click("button:has-text('Filter')")
    page.wait_for_url("**/jobs?*queue=reports*")
    rows = page.locator("table.jobs tbody tr")

    expect(rows.first).to_contain_text("render-report")
    assert rows.count() >= 1
    assert all("render-report" in text and "scheduled" in text for text in rows.all_inner_texts())
    page.screenshot(path=str(shots / "jobs.png"), full_page=True)


def test_a_failed_job_shows_its_traceback_and_a_retry_runs_it_to_completion(stack: dict[str, Any], page: Any,
                                                                           db: Conn, shots: Path) -> None:
    job_id = stack["app"].enqueue(db, "sync-record", {"record": 42})
    wait_until(lambda: state_of(db, job_id) == "failed", timeout=30)

    page.goto(stack["url"] + "/jobs?state=failed")
    with page.expect_navigation(url=f"**/jobs/{job_id}"):
        page.click(f"a[href$='/jobs/{job_id}']")
    expect(page.locator(".card.error")).to_contain_text("partner API answered 503 for record 42")
    expect(page.locator("pre.traceback")).to_contain_text("Traceback")
    page.screenshot(path=str(shots / "job-failed.png"), full_page=True)
    page.click("button:has-text('Retry')")

    expect(page.locator(".job-head .state")).to_have_text("completed", timeout=30_000)
    expect(page.locator("pre").nth(1)).to_contain_text('"synced": 42')
    expect(page.locator("table.grid")).to_contain_text("retried")
    assert state_of(db, job_id) == "completed"
    audited = db.execute("SELECT actor, detail FROM pgqueue.job_events WHERE job_id = %s AND event = 'retried'",
                         [job_id]).fetchone()
    assert audited is not None
    assert audited[1] == {"source": "web"}
    assert audited[0]  # the dashboard's OS user on loopback, or the token's role
    page.screenshot(path=str(shots / "job-retried.png"), full_page=True)


def test_pausing_and_resuming_a_queue_from_the_queues_page(stack: dict[str, Any], page: Any, db: Conn,
                                                          shots: Path) -> None:
    stack["app"].enqueue(db, "send-reminder", {"patient": "pause-me"})
    wait_until(lambda: db.execute("SELECT 1 FROM pgqueue.jobs WHERE queue = 'emails'").fetchone(), timeout=10)

    page.goto(stack["url"] + "/queues")
    row = page.locator("tr#queue-emails")
    row.locator("button:has-text('Pause')").click()
    expect(row.locator(".badge")).to_have_text("paused")
    assert db.execute("SELECT paused FROM pgqueue.queues WHERE name = 'emails'").fetchone() == (True,)
    page.screenshot(path=str(shots / "queues.png"), full_page=True)

    row.locator("button:has-text('Resume')").click()
    expect(row.locator(".badge")).to_have_text("running")
    assert db.execute("SELECT paused FROM pgqueue.queues WHERE name = 'emails'").fetchone() == (False,)


def test_a_running_jobs_progress_bar_moves_without_a_reload(stack: dict[str, Any], page: Any, db: Conn,
                                                           shots: Path) -> None:
    steps: Steps = stack["steps"]
    job_id = stack["app"].enqueue(db, "render-report", {"pages": 4})
    wait_until(lambda: state_of(db, job_id) == "running", timeout=20)
    steps.go.release()
    page.goto(stack["url"] + f"/jobs/{job_id}")
    bar = page.locator("[role=progressbar]")
    expect(bar).to_have_attribute("aria-valuenow", "25.0")
    page.evaluate("window.__marker = 'same page'")  # survives only if the page never reloads

    steps.go.release()
    steps.go.release()
    expect(bar).to_have_attribute("aria-valuenow", "75.0")
    page.screenshot(path=str(shots / "job-progress.png"), full_page=True)
    steps.go.release()

    expect(page.locator(".job-head .state")).to_have_text("completed")
    assert page.evaluate("window.__marker") == "same page"


def test_a_waiting_job_can_be_cancelled_from_its_page(stack: dict[str, Any], page: Any, db: Conn) -> None:
    app = stack["app"]
    later = app.enqueue(db, "send-reminder", {"patient": "later"}, delay=3600)
    job_id = app.enqueue(db, "send-reminder", {"patient": "after-later"}, depends_on=[later])
    assert state_of(db, job_id) == "waiting"

    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(stack["url"] + f"/jobs/{job_id}")
    page.locator(".job-head button:has-text('Cancel')").click()

    expect(page.locator(".job-head .state")).to_have_text("cancelled")
    assert state_of(db, job_id) == "cancelled"


@pytest.fixture(scope="module")
def mounted(stack: dict[str, Any]) -> Iterator[str]:
    """The dashboard mounted under /pgqueue in the user's own Starlette app, as the docs show."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from pgqueue.web import create_app

    outer = Starlette(routes=[Mount("/pgqueue", app=create_app(stack["dsn"], admin_token="", read_token="",
                                                               poll_seconds=1))])
    with served(outer) as url:
        yield f"{url}/pgqueue"


@pytest.mark.parametrize("label", ["Overview", "Jobs", "Failed", "Queues", "Schedules", "Workers"])
def test_under_a_prefix_the_nav_marks_the_page_shown_and_only_that_one(mounted: str, page: Any, label: str) -> None:
    page.goto(mounted + "/")
    page.click(f"header nav a:has-text('{label}')")
    page.wait_for_load_state()

    assert page.url.startswith(mounted)
    expect(page.locator("header nav a.active")).to_have_text([label])


def test_every_page_loads_without_a_console_error(stack: dict[str, Any], page: Any) -> None:
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))

    for path in ("/", "/jobs", "/jobs?state=failed", "/queues", "/schedules", "/workers"):
        page.goto(stack["url"] + path)
        page.wait_for_timeout(1500)  # the live part's refreshes too (poll_seconds=1)

    assert errors == []


def test_a_bulk_action_refused_for_every_job_says_why_as_an_error(stack: dict[str, Any], page: Any,
                                                                   db: Conn) -> None:
    job_id = stack["app"].enqueue(db, "send-reminder", {"patient": "done-already"})
    wait_until(lambda: state_of(db, job_id) == "completed", timeout=30)

    page.goto(stack["url"] + "/jobs?state=completed&queue=emails")
    page.check(f"input[name=ids][value='{job_id}']")
    page.click("#bulk .bulk button:has-text('Cancel')")

    toast = page.locator("#toast")
    expect(toast).to_contain_text("cancel: 0 done, 1 refused")
    expect(toast).to_contain_text(f"job {job_id} is completed")
    expect(toast).to_have_class("show bad")
    assert state_of(db, job_id) == "completed"


def test_retry_all_failed_says_which_failed_jobs_a_live_unique_key_left_behind(stack: dict[str, Any], page: Any,
                                                                               db: Conn) -> None:
    app = stack["app"]
    held = app.enqueue(db, "sync-record", {"record": 7}, queue="keyed", unique_key="record-7")
    wait_until(lambda: state_of(db, held) == "failed", timeout=30)
    app.enqueue(db, "sync-record", {"record": 7}, queue="keyed", unique_key="record-7", delay=3600)
    page.on("dialog", lambda dialog: dialog.accept())

    page.goto(stack["url"] + "/jobs?queue=keyed&state=failed")
    page.click("button:has-text('Retry all failed in keyed')")

    toast = page.locator("#toast")
    expect(toast).to_contain_text(f"retried 0 jobs, 1 left failed: a live job holds their unique key ({held})")
    expect(toast).to_have_class("show bad")
    assert state_of(db, held) == "failed"


def test_deleting_a_job_from_its_page_goes_to_the_jobs_list_without_a_console_error(
        stack: dict[str, Any], page: Any, db: Conn) -> None:
    job_id = stack["app"].enqueue(db, "send-reminder", {"patient": "delete-me"}, delay=3600)
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(stack["url"] + f"/jobs/{job_id}")

    with page.expect_navigation(url="**/jobs"):
        page.locator(".job-head button:has-text('Delete')").click()
    page.wait_for_timeout(1500)

    assert state_of(db, job_id) is None
    assert errors == []  # no refresh of the page of the job just deleted (a 404)


def test_an_action_answered_after_a_live_refresh_was_due_still_ends_as_it_should(
        stack: dict[str, Any], page: Any, db: Conn) -> None:
    """The page's live part refreshes every second and holds the action buttons. A refresh that
    replaced them while an action was in flight detached the button the answer is sent to, so the
    answer reached no listener: no redirect after a delete, no toast. Here the delete is held back
    for three refresh periods by a row lock, the way a slow database holds it."""
    job_id = stack["app"].enqueue(db, "send-reminder", {"patient": "slow-delete"}, delay=3600)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(stack["url"] + f"/jobs/{job_id}")
    with psycopg.connect(stack["dsn"]) as holder:
        holder.execute("SELECT 1 FROM pgqueue.jobs WHERE id = %s FOR UPDATE", [job_id])
        page.locator(".job-head button:has-text('Delete')").click()
        page.wait_for_timeout(3000)  # at poll_seconds=1, three refreshes were due meanwhile
        holder.rollback()  # the delete goes through now

    page.wait_for_url("**/jobs", timeout=20_000)
    assert state_of(db, job_id) is None


@pytest.fixture(scope="module")
def with_tokens(stack: dict[str, Any]) -> Iterator[str]:
    """A second dashboard on the same database, with an admin token configured."""
    from pgqueue.web import create_app

    with served(create_app(stack["dsn"], admin_token="admin-secret-token", read_token="", poll_seconds=1)) as url:
        yield url


def test_a_page_whose_login_ended_shows_the_login_form_instead_of_going_stale(with_tokens: str, page: Any) -> None:
    page.goto(with_tokens + "/queues")
    page.fill("input[name=token]", "admin-secret-token")
    page.click("button:has-text('Log in')")
    page.wait_for_url(with_tokens + "/")
    expect(page.locator(".role")).to_have_text("admin")

    page.context.clear_cookies()  # the login ended (logged out elsewhere, or the tokens changed)

    expect(page.locator("input[name=token]")).to_be_visible()


@pytest.fixture(scope="module")
def with_users(stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A dashboard on the same database whose only admin is alice, a named user of its users file."""
    from pgqueue.web import create_app

    users = tmp_path_factory.mktemp("users") / "dashboard-users"
    users.write_text("alice admin alice-secret-token-0001\n")
    users.chmod(0o600)
    with served(create_app(stack["dsn"], admin_token="", read_token="", users_file=users, poll_seconds=1)) as url:
        yield url


def test_a_named_user_logs_in_sees_their_name_and_their_cancel_is_audited_under_it(
        stack: dict[str, Any], with_users: str, page: Any, db: Conn) -> None:
    app = stack["app"]
    later = app.enqueue(db, "send-reminder", {"patient": "later"}, delay=3600)
    job_id = app.enqueue(db, "send-reminder", {"patient": "after-later"}, depends_on=[later])
    page.goto(with_users + f"/jobs/{job_id}")
    page.fill("input[name=token]", "alice-secret-token-0001")
    page.click("button:has-text('Log in')")
    page.wait_for_url(with_users + "/")
    expect(page.locator("header .user")).to_have_text("alice")
    expect(page.locator("header .role")).to_have_text("admin")

    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(with_users + f"/jobs/{job_id}")
    page.locator(".job-head button:has-text('Cancel')").click()

    expect(page.locator(".job-head .state")).to_have_text("cancelled")
    audited = db.execute("SELECT actor, detail FROM pgqueue.job_events WHERE job_id = %s AND event = 'cancelled'",
                         [job_id]).fetchall()
    assert audited == [("alice", {"source": "web"})]


def test_a_limit_typed_but_not_yet_set_survives_the_live_refresh(stack: dict[str, Any], page: Any, db: Conn) -> None:
    stack["app"].enqueue(db, "send-reminder", {"patient": "limits"})
    page.goto(stack["url"] + "/queues")
    rate = page.locator("tr#queue-emails input[name=rate]")
    rate.fill("7/s")
    page.locator("h1").click()  # the field loses focus, its value is not sent yet

    page.wait_for_timeout(2500)  # two refreshes at poll_seconds=1

    expect(rate).to_have_value("7/s")
