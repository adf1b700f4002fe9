"""The HTTP admin API (pgqueue.web.create_app) through httpx against the ASGI app and a real database.

One database and two apps per module (one with tokens, one without); tables are emptied before
each test.
"""

from __future__ import annotations

import base64
import re
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow
from structlog.testing import capture_logs

from pgqueue import App, admin
from pgqueue.errors import ConfigurationError
from pgqueue.web import create_app
from tests.helpers import empty_tables, scratch_database, wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

Conn = psycopg.Connection[TupleRow]
ADMIN = {"Authorization": "Bearer admin-secret-token"}
READ = {"Authorization": "Bearer read-secret-token"}
TOKEN = "a-long-enough-token"
LOOPBACK = ("127.0.0.1", 50000)


@pytest.fixture(scope="module")
def module_dsn(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    with scratch_database(pg_server_dsn, template_db) as database_dsn:
        yield database_dsn


@pytest.fixture(scope="module")
def client(module_dsn: str) -> Iterator[TestClient]:
    app = create_app(module_dsn, admin_token="admin-secret-token", read_token="read-secret-token")
    with TestClient(app, base_url="http://dashboard.example", client=("203.0.113.9", 40000),
                    raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def open_client(module_dsn: str) -> Iterator[TestClient]:
    app = create_app(module_dsn, admin_token="", read_token="")
    with TestClient(app, base_url="http://127.0.0.1:8080", client=LOOPBACK, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def db(module_dsn: str) -> Iterator[Conn]:
    empty_tables(module_dsn, "pgqueue.jobs", "pgqueue.job_events", "pgqueue.queues", "pgqueue.workers",
                 "pgqueue.circuit_breakers")
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        yield conn


def enqueue(conn: Conn, queue: str = "emails", state: str = "available", task: str = "send", **options: Any) -> int:
    job_id = App().enqueue(conn, task, {"to": "a@example.com"}, queue=queue, **options)
    if state != "available":
        conn.execute("""UPDATE pgqueue.jobs SET state = %(state)s, attempt = 1,
                        last_error = CASE WHEN %(state)s = 'failed'
                                          THEN '{"type": "Boom", "message": "bad"}'::jsonb END,
                        finished_at = CASE WHEN %(state)s IN ('completed', 'failed', 'cancelled') THEN now() END,
                        lease_token = CASE WHEN %(state)s = 'running' THEN gen_random_uuid() END
                        WHERE id = %(id)s""", {"state": state, "id": job_id})
    return job_id


def state_of(conn: Conn, job_id: int) -> str | None:
    row = conn.execute("SELECT state FROM pgqueue.jobs WHERE id = %s", [job_id]).fetchone()
    return row[0] if row else None


def actors(conn: Conn, event: str) -> list[str]:
    """Who did ``event``, each with where from (``actor@source``, the source from the row's detail)."""
    rows = conn.execute("SELECT actor, detail ->> 'source' FROM pgqueue.job_events WHERE event = %s ORDER BY id",
                        [event])
    return [f"{actor}@{source}" for actor, source in rows]


# --- probes, schema, metrics ---


def test_healthz_and_readyz_answer_without_auth(client: TestClient, db: Conn) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_readyz_is_503_when_the_schema_is_missing(empty_dsn: str) -> None:
    app = create_app(empty_dsn, admin_token=TOKEN)
    with TestClient(app, raise_server_exceptions=False) as c:
        response = c.get("/readyz")
    assert response.status_code == 503
    assert "pgqueue migrate" in response.json()["reason"]


def test_readyz_recovers_when_the_schema_check_could_not_connect_once(module_dsn: str, db: Conn,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from pgqueue import _migrate
    from pgqueue.errors import DatabaseUnavailable

    real_check, calls = _migrate.check, []

    def check_failing_once(dsn: str) -> list[str]:
        calls.append(dsn)
        if len(calls) == 1:
            raise DatabaseUnavailable("cannot connect: too many connections")
        return real_check(dsn)

    monkeypatch.setattr(_migrate, "check", check_failing_once)
    with TestClient(create_app(module_dsn, admin_token=TOKEN), raise_server_exceptions=False) as c:
        first, second = c.get("/readyz"), c.get("/readyz")

    assert second.status_code == 200, second.text  # not stuck at 503 for as long as the revision stays
    assert (first.status_code, first.json()["reason"]) == (503, "database unavailable")


def test_the_openapi_schema_lists_every_api_route(client: TestClient, db: Conn) -> None:
    schema = client.get("/api/openapi.json", headers=READ).json()

    assert schema["openapi"].startswith("3.")
    assert {"/api/queues", "/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/retry", "/api/jobs/{job_id}/cancel",
            "/api/queues/{name}/pause", "/api/queues/{name}/resume", "/api/queues/{name}/purge",
            "/api/queues/{name}/limits", "/api/schedules", "/api/workers", "/api/breakers",
            "/api/health"} <= set(schema["paths"])
    assert set(schema["paths"]["/api/jobs/{job_id}"]) >= {"get", "delete"}


def test_the_openapi_schema_describes_every_field_the_api_returns(client: TestClient, db: Conn) -> None:
    enqueue(db, "emails")
    schemas = client.get("/api/openapi.json", headers=READ).json()["components"]["schemas"]

    queue = client.get("/api/queues", headers=READ).json()["items"][0]
    job = client.get("/api/jobs", headers=READ).json()["items"][0]

    assert set(queue) <= set(schemas["Queue"]["properties"])
    assert set(job) <= set(schemas["Job"]["properties"])


def test_metrics_expose_depth_lag_workers_and_outcomes_counted_from_the_audit_trail(client: TestClient,
                                                                                   db: Conn) -> None:
    enqueue(db, "emails")
    enqueue(db, "emails", state="failed")
    first = client.get("/metrics", headers=READ)
    done = enqueue(db, "emails")
    db.execute("UPDATE pgqueue.jobs SET state = 'running', attempt = 1, started_at = now() - interval '2 seconds', "
               "lease_token = gen_random_uuid(), worker_id = 'w' WHERE id = %s", [done])
    token = db.execute("SELECT lease_token FROM pgqueue.jobs WHERE id = %s", [done]).fetchone()[0]  # type: ignore[index]
    from pgqueue._db.jobs import JobStore, Outcome

    JobStore(db).complete_jobs([Outcome(done, str(token), "completed", result="{}")])
    counted = 'pgqueue_jobs_total{outcome="completed",queue="emails",task="send"} 1.0'
    # Counted once every transaction older than the completion has ended (server-wide: xids are).

    def scrape_counting_it() -> str | None:
        text = client.get("/metrics", headers=READ).text
        return text if counted in text else None

    second = wait_until(scrape_counting_it, timeout=60, message="the completion to be counted") or ""

    assert first.status_code == 200
    assert 'pgqueue_queue_depth{queue="emails",state="available"} 1.0' in first.text
    assert 'pgqueue_queue_depth{queue="emails",state="failed"} 1.0' in first.text
    assert re.search(r'pgqueue_queue_lag_seconds\{queue="emails"\} \d', first.text)
    assert "pgqueue_workers 0.0" in first.text
    assert 'pgqueue_jobs_total{outcome="completed",queue="emails",task="send"} 1.0' in second
    assert 'pgqueue_job_duration_seconds_bucket{le="2.5",queue="emails",task="send"} 1.0' in second
    assert client.get("/metrics").status_code == 401


def test_a_drained_queue_stays_in_the_metrics_at_zero(client: TestClient, db: Conn) -> None:
    job_id = enqueue(db, "drained")
    before = client.get("/metrics", headers=READ).text
    db.execute("UPDATE pgqueue.jobs SET state = 'completed', attempt = 1, started_at = now(), finished_at = now() "
               "WHERE id = %s", [job_id])

    after = client.get("/metrics", headers=READ).text

    assert 'pgqueue_queue_depth{queue="drained",state="available"} 1.0' in before
    assert 'pgqueue_queue_depth{queue="drained",state="available"} 0.0' in after
    assert 'pgqueue_queue_lag_seconds{queue="drained"} 0.0' in after


# --- auth ---


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/queues"), ("GET", "/api/jobs"), ("GET", "/api/jobs/1"), ("GET", "/api/schedules"),
    ("GET", "/api/workers"), ("GET", "/api/health"), ("POST", "/api/jobs/1/retry"), ("DELETE", "/api/jobs/1"),
    ("PUT", "/api/queues/emails/limits"), ("GET", "/api/openapi.json"),
])
def test_every_api_route_is_401_without_a_valid_token(client: TestClient, db: Conn, method: str, path: str) -> None:
    missing = client.request(method, path)
    wrong = client.request(method, path, headers={"Authorization": "Bearer nope"})

    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert missing.json()["error"].startswith("authentication required")


def test_a_read_token_reads_but_is_403_when_it_acts_and_nothing_changes(client: TestClient, db: Conn) -> None:
    job_id = enqueue(db, state="failed")

    listed = client.get("/api/jobs", headers=READ)
    refused = [client.post(f"/api/jobs/{job_id}/retry", headers=READ),
               client.post("/api/queues/emails/pause", headers=READ),
               client.delete(f"/api/jobs/{job_id}", headers=READ),
               client.put("/api/queues/emails/limits", headers=READ, json={"concurrency": 2})]

    assert listed.status_code == 200
    assert [r.status_code for r in refused] == [403, 403, 403, 403]
    assert "may only read" in refused[0].json()["error"]
    assert state_of(db, job_id) == "failed"
    assert db.execute("SELECT count(*) FROM pgqueue.queues").fetchone() == (0,)


def test_without_tokens_only_loopback_is_served(open_client: TestClient, module_dsn: str, db: Conn) -> None:
    app = create_app(module_dsn, admin_token="", read_token="")
    with TestClient(app, base_url="http://127.0.0.1:8080", client=("203.0.113.9", 1),
                    raise_server_exceptions=False) as remote, \
         TestClient(app, base_url="http://evil.example", client=LOOPBACK, raise_server_exceptions=False) as rebound:
        assert remote.get("/api/queues").status_code == 403
        assert rebound.get("/api/queues").status_code == 403  # DNS rebinding: a foreign Host header
    assert open_client.get("/api/queues").status_code == 200


def test_a_blank_token_is_no_token_so_a_quoted_blank_cookie_opens_nothing(module_dsn: str, db: Conn) -> None:
    app = create_app(module_dsn, admin_token="   ", read_token="")
    with TestClient(app, base_url="http://dashboard.example", client=("203.0.113.9", 1),
                    raise_server_exceptions=False) as remote:
        blank = remote.get("/api/queues", headers={"Cookie": 'pgqueue_token="   "'})

    assert blank.status_code == 403  # no token configured: loopback only
    assert "only loopback is served" in blank.json()["error"]


def test_a_configured_token_read_from_a_file_with_its_newline_still_matches(module_dsn: str, db: Conn) -> None:
    app = create_app(module_dsn, admin_token="admin-secret-token\n", read_token="")
    with TestClient(app, base_url="http://dashboard.example", client=("203.0.113.9", 1),
                    raise_server_exceptions=False) as remote:
        response = remote.get("/api/queues", headers=ADMIN)

    assert response.status_code == 200


def test_a_browser_session_acts_only_with_the_pages_csrf_token(client: TestClient, module_dsn: str, db: Conn) -> None:
    job_id = enqueue(db, state="failed")
    app = client.app
    with TestClient(app, base_url="http://dashboard.example", raise_server_exceptions=False) as browser:
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        bad_login = browser.post("/login", content="token=wrong", headers=form)
        login = browser.post("/login", content="token=admin-secret-token",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        page = browser.get(f"/jobs/{job_id}")
        csrf = re.search(r"X-PGQueue-CSRF&#34;: &#34;([0-9a-f]+)|\"X-PGQueue-CSRF\": \"([0-9a-f]+)\"", page.text)
        forged = browser.post(f"/api/jobs/{job_id}/retry")
        assert csrf is not None
        token = csrf.group(1) or csrf.group(2)
        allowed = browser.post(f"/api/jobs/{job_id}/retry", headers={"X-PGQueue-CSRF": token})

    assert bad_login.status_code == 401
    assert login.status_code == 200
    assert "Overview" in login.text
    assert forged.status_code == 403
    assert "X-PGQueue-CSRF" in forged.json()["error"]
    assert allowed.status_code == 200
    assert state_of(db, job_id) == "available"
    assert actors(db, "retried") == ["admin-token@web"]


def login_cookie_of(app: Any, token: str) -> str:
    """The login cookie ``app`` sets for ``token``, read from its Set-Cookie header."""
    with TestClient(app, base_url="http://dashboard.example", raise_server_exceptions=False) as browser:
        login = browser.post("/login", content=f"token={token}", follow_redirects=False,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert login.status_code == 303, login.text
    found = re.match(r"pgqueue_token=([^;]*);", login.headers["set-cookie"])
    assert found is not None, login.headers["set-cookie"]
    return found.group(1)


def csrf_of(page: str) -> str:
    found = re.search(r"X-PGQueue-CSRF&#34;: &#34;([0-9a-f]+)|\"X-PGQueue-CSRF\": \"([0-9a-f]+)\"", page)
    assert found is not None
    return found.group(1) or found.group(2)


def test_the_login_cookie_holds_no_token_and_is_no_bearer_token(client: TestClient, db: Conn) -> None:
    job_id = enqueue(db, state="failed")
    cookie = login_cookie_of(client.app, "admin-secret-token")
    read_cookie = login_cookie_of(client.app, "read-secret-token")
    with TestClient(client.app, base_url="http://dashboard.example", cookies={"pgqueue_token": cookie},
                    raise_server_exceptions=False) as browser:
        page = browser.get(f"/jobs/{job_id}")
        api = browser.get("/api/queues")
        acted = browser.post(f"/api/jobs/{job_id}/retry", headers={"X-PGQueue-CSRF": csrf_of(page.text)})
    as_bearer = [client.get("/api/queues", headers={"Authorization": f"Bearer {value}"})
                 for value in (cookie, read_cookie)]

    for token in ("admin-secret-token", "read-secret-token"):
        assert token not in cookie + read_cookie
    assert cookie != read_cookie
    assert (page.status_code, api.status_code, acted.status_code) == (200, 200, 200), acted.text
    assert state_of(db, job_id) == "available"
    assert actors(db, "retried") == ["admin-token@web"]
    assert [answer.status_code for answer in as_bearer] == [401, 401]


def test_every_dashboard_process_with_the_same_tokens_accepts_a_login_and_its_csrf_token(
        client: TestClient, module_dsn: str, db: Conn) -> None:
    # Two processes behind a load balancer: the page from one, the action on the other.
    job_id = enqueue(db, state="failed")
    cookie = login_cookie_of(client.app, "admin-secret-token")
    other = create_app(module_dsn, admin_token="admin-secret-token", read_token="read-secret-token")
    with TestClient(client.app, base_url="http://dashboard.example", cookies={"pgqueue_token": cookie},
                    raise_server_exceptions=False) as first, \
         TestClient(other, base_url="http://dashboard.example", cookies={"pgqueue_token": cookie},
                    raise_server_exceptions=False) as second:
        csrf = csrf_of(first.get(f"/jobs/{job_id}").text)
        acted = second.post(f"/api/jobs/{job_id}/retry", headers={"X-PGQueue-CSRF": csrf})

    assert acted.status_code == 200, acted.text
    assert state_of(db, job_id) == "available"


def test_changing_a_token_ends_its_logins_and_a_raw_token_cookie_logs_in_no_more(
        client: TestClient, module_dsn: str, db: Conn) -> None:
    cookie = login_cookie_of(client.app, "admin-secret-token")
    changed = create_app(module_dsn, admin_token="a-new-admin-secret-token", read_token="read-secret-token")
    with TestClient(changed, base_url="http://dashboard.example", cookies={"pgqueue_token": cookie},
                    raise_server_exceptions=False) as browser:
        api, page = browser.get("/api/queues"), browser.get("/queues")
    # What the previous version set: the token itself. Its browser sees the login form again.
    with TestClient(client.app, base_url="http://dashboard.example",
                    cookies={"pgqueue_token": "admin-secret-token"}, raise_server_exceptions=False) as old:
        old_api, old_page = old.get("/api/queues"), old.get("/queues")

    assert (api.status_code, page.status_code) == (401, 401)
    assert (old_api.status_code, old_page.status_code) == (401, 401)
    assert 'name="token"' in page.text + old_page.text


@pytest.mark.parametrize(("admin_token", "read_token", "named"), [
    ("short-token", None, "admin_token"),
    (None, "fifteen-chars!!", "read_token"),
    ("  15-characters  ", None, "admin_token"),  # counted as compared: without the whitespace
])
def test_a_token_shorter_than_16_characters_is_refused_without_quoting_it(
        module_dsn: str, admin_token: str | None, read_token: str | None, named: str) -> None:
    from pgqueue.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as refused:
        create_app(module_dsn, admin_token=admin_token or "", read_token=read_token or "")

    message = str(refused.value)
    assert message.startswith(f"{named} is too short: a token needs at least 16 characters")
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in message
    assert (admin_token or read_token or "").strip() not in message


def test_weak_tokens_from_the_environment_are_refused_by_their_variable_name(
        module_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pgqueue.errors import ConfigurationError

    monkeypatch.setenv("PGQUEUE_ADMIN_TOKEN", "admin-secret-token")
    monkeypatch.setenv("PGQUEUE_READ_TOKEN", "read-token")
    with pytest.raises(ConfigurationError, match=r"^PGQUEUE_READ_TOKEN is too short"):
        create_app(module_dsn)
    monkeypatch.setenv("PGQUEUE_READ_TOKEN", " admin-secret-token\n")
    with pytest.raises(ConfigurationError, match=r"^PGQUEUE_ADMIN_TOKEN and PGQUEUE_READ_TOKEN must differ"):
        create_app(module_dsn)
    monkeypatch.setenv("PGQUEUE_READ_TOKEN", "read-secret-token")
    assert create_app(module_dsn) is not None


def test_without_tokens_a_loopback_script_acts_with_a_json_request_but_never_with_a_form(
        open_client: TestClient, db: Conn) -> None:
    from pgqueue.admin import default_actor

    job_id = enqueue(db, state="failed")
    form = open_client.post(f"/api/jobs/{job_id}/retry", content="state=failed",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    plain = open_client.post(f"/api/jobs/{job_id}/retry")
    assert (form.status_code, plain.status_code) == (403, 403)
    assert state_of(db, job_id) == "failed"

    scripted = open_client.post(f"/api/jobs/{job_id}/retry", json={})

    assert scripted.status_code == 200, scripted.text
    assert state_of(db, job_id) == "available"
    assert actors(db, "retried") == [f"{default_actor()}@web"]



# --- named users (PGQUEUE_DASHBOARD_USERS_FILE) ---

ALICE_TOKEN = "alice-secret-token-0001"
BOB_TOKEN = "bob-secret-token-000002"
USERS = f"""# the dashboard's operators
alice admin {ALICE_TOKEN}

bob read {BOB_TOKEN}
"""


def write_users(directory: Path, text: str, mode: int = 0o600) -> Path:
    path = directory / "dashboard-users"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def header_of(page: str) -> tuple[str | None, str]:
    """Who the page header says is logged in: (user name or None, role badge)."""
    user = re.search(r'<span class="user"[^>]*>([^<]*)</span>', page)
    role = re.search(r'<span class="role [^"]*"[^>]*>([^<]*)</span>', page)
    assert role is not None
    return (user.group(1) if user else None), role.group(1)


@pytest.fixture(scope="module")
def users_client(module_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A dashboard with the environment's two tokens and a users file: alice (admin) and bob (read)."""
    path = write_users(tmp_path_factory.mktemp("users"), USERS)
    app = create_app(module_dsn, admin_token="admin-secret-token", read_token="read-secret-token", users_file=path)
    with TestClient(app, base_url="http://dashboard.example", client=("203.0.113.9", 40000),
                    raise_server_exceptions=False) as test_client:
        yield test_client


def test_a_named_users_api_actions_are_audited_under_their_name_and_a_named_reader_may_only_read(
        users_client: TestClient, db: Conn) -> None:
    alices, bobs, shared = enqueue(db), enqueue(db), enqueue(db)

    by_alice = users_client.post(f"/api/jobs/{alices}/cancel", headers=bearer(ALICE_TOKEN))
    by_bob = [users_client.post(f"/api/jobs/{bobs}/cancel", headers=bearer(BOB_TOKEN)),
              users_client.post("/api/queues/emails/pause", headers=bearer(BOB_TOKEN))]
    read_by_bob = users_client.get(f"/api/jobs/{bobs}", headers=bearer(BOB_TOKEN))
    by_env_token = users_client.post(f"/api/jobs/{shared}/cancel", headers=ADMIN)

    assert (by_alice.status_code, by_env_token.status_code) == (200, 200), by_alice.text
    assert [r.status_code for r in by_bob] == [403, 403]
    assert "may only read" in by_bob[0].json()["error"]
    assert read_by_bob.status_code == 200
    assert [state_of(db, j) for j in (alices, bobs, shared)] == ["cancelled", "available", "cancelled"]
    # Each person by name; the environment's shared token keeps its old actor.
    assert actors(db, "cancelled") == ["alice@web", "admin-token@web"]
    assert actors(db, "queue_paused") == []


def test_a_named_users_login_acts_under_their_name_and_the_page_header_names_them(
        users_client: TestClient, db: Conn) -> None:
    job_id = enqueue(db)
    app = users_client.app
    alice_cookie, bob_cookie = login_cookie_of(app, ALICE_TOKEN), login_cookie_of(app, BOB_TOKEN)
    with TestClient(app, base_url="http://dashboard.example", cookies={"pgqueue_token": bob_cookie},
                    raise_server_exceptions=False) as bob:
        bob_page = bob.get(f"/jobs/{job_id}")
        refused = bob.post(f"/api/jobs/{job_id}/cancel", headers={"X-PGQueue-CSRF": csrf_of(bob_page.text)})
    with TestClient(app, base_url="http://dashboard.example", cookies={"pgqueue_token": alice_cookie},
                    raise_server_exceptions=False) as alice:
        alice_page = alice.get(f"/jobs/{job_id}")
        forged = alice.post(f"/api/jobs/{job_id}/cancel")
        acted = alice.post(f"/api/jobs/{job_id}/cancel", headers={"X-PGQueue-CSRF": csrf_of(alice_page.text)})
    shared_page = users_client.get("/queues", headers=ADMIN)

    assert ALICE_TOKEN not in alice_cookie
    assert BOB_TOKEN not in bob_cookie
    assert len({alice_cookie, bob_cookie, login_cookie_of(app, "admin-secret-token")}) == 3
    assert header_of(alice_page.text) == ("alice", "admin")
    assert header_of(bob_page.text) == ("bob", "read only")
    assert header_of(shared_page.text) == (None, "admin")
    assert (refused.status_code, forged.status_code, acted.status_code) == (403, 403, 200), acted.text
    assert state_of(db, job_id) == "cancelled"
    assert actors(db, "cancelled") == ["alice@web"]


def test_removing_a_user_from_the_file_ends_their_logins_and_every_process_with_the_file_accepts_them(
        users_client: TestClient, module_dsn: str, db: Conn, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cookie = login_cookie_of(users_client.app, ALICE_TOKEN)
    without_alice = create_app(module_dsn, admin_token="", read_token="",
                               users_file=write_users(tmp_path, f"bob read {BOB_TOKEN}\n"))
    # Another process, configured by the environment variable with the same users.
    (tmp_path / "other").mkdir()
    monkeypatch.setenv("PGQUEUE_DASHBOARD_USERS_FILE", str(write_users(tmp_path / "other", USERS)))
    same_users = create_app(module_dsn, admin_token="", read_token="")
    answers = {}
    for name, app in (("without", without_alice), ("same", same_users)):
        with TestClient(app, base_url="http://dashboard.example", cookies={"pgqueue_token": cookie},
                        client=("203.0.113.9", 1), raise_server_exceptions=False) as browser:
            answers[name] = (browser.get("/api/queues").status_code, browser.get("/queues").status_code,
                             browser.get("/api/queues", headers=bearer(ALICE_TOKEN)).status_code)

    assert answers == {"without": (401, 401, 401), "same": (200, 200, 200)}


def test_a_bearer_token_and_a_login_cookie_of_two_users_in_one_request_act_as_the_token_alone(
        users_client: TestClient, db: Conn) -> None:
    job_id = enqueue(db)
    app = users_client.app
    alice_cookie = login_cookie_of(app, ALICE_TOKEN)
    with TestClient(app, base_url="http://dashboard.example", cookies={"pgqueue_token": alice_cookie},
                    raise_server_exceptions=False) as alice:
        alice_csrf = csrf_of(alice.get("/queues").text)
        # Bob (read) sends his token from alice's browser, her cookie and her page's CSRF header along.
        by_bob = alice.post(f"/api/jobs/{job_id}/cancel", headers={**bearer(BOB_TOKEN), "X-PGQueue-CSRF": alice_csrf})
        # A token that is no one's is refused, whatever cookie comes with it.
        by_nobody = alice.post(f"/api/jobs/{job_id}/cancel",
                               headers={**bearer("not-a-configured-token"), "X-PGQueue-CSRF": alice_csrf})

    assert (by_bob.status_code, by_nobody.status_code) == (403, 401)
    assert state_of(db, job_id) == "available"
    assert actors(db, "cancelled") == []


def test_another_authorization_scheme_is_not_ours_so_a_login_behind_a_basic_auth_proxy_still_works(
        users_client: TestClient, open_client: TestClient, db: Conn) -> None:
    # nginx's auth_basic passes the browser's Authorization header on to the dashboard.
    basic = {"Authorization": "Basic " + base64.b64encode(b"ops:proxy-password").decode()}
    job_id = enqueue(db)
    cookie = login_cookie_of(users_client.app, ALICE_TOKEN)
    with TestClient(users_client.app, base_url="http://dashboard.example", cookies={"pgqueue_token": cookie},
                    raise_server_exceptions=False) as alice:
        page = alice.get("/queues", headers=basic)
        acted = alice.post(f"/api/jobs/{job_id}/cancel", headers={**basic, "X-PGQueue-CSRF": csrf_of(page.text)})
    alone = users_client.get("/api/queues", headers=basic)
    on_loopback = open_client.get("/api/queues", headers=basic)

    assert (page.status_code, acted.status_code, on_loopback.status_code) == (200, 200, 200), acted.text
    assert actors(db, "cancelled") == ["alice@web"]
    assert alone.status_code == 401  # nothing of ours: as a request without any credential
    assert alone.json()["error"].startswith("authentication required")


def test_no_repr_of_what_the_authenticator_holds_shows_a_token_or_what_opens_a_login(users_client: TestClient) -> None:
    # What a traceback with its frames' variables (Sentry, rich, structlog's dict tracebacks) prints.
    app: Any = users_client.app
    auth = app.state.dashboard.auth
    secrets = [ALICE_TOKEN, BOB_TOKEN, "admin-secret-token", "read-secret-token",
               *(login_cookie_of(users_client.app, token) for token in (ALICE_TOKEN, BOB_TOKEN, "admin-secret-token"))]

    shown = repr(auth.users) + repr(auth._credentials) + repr(auth)

    assert "alice" in shown
    assert [secret for secret in secrets if secret in shown] == []


def test_a_csrf_header_beyond_ascii_is_refused_as_a_wrong_one_not_a_server_error(
        users_client: TestClient, open_client: TestClient, db: Conn) -> None:
    job_id = enqueue(db)
    cookie = login_cookie_of(users_client.app, ALICE_TOKEN)
    # Bytes as a client may send them: the server hands them over as latin-1 text.
    odd = {"X-PGQueue-CSRF": "caf\xe9".encode("latin-1")}
    with TestClient(users_client.app, base_url="http://dashboard.example", cookies={"pgqueue_token": cookie},
                    raise_server_exceptions=False) as alice:
        by_login = alice.post(f"/api/jobs/{job_id}/cancel", headers=odd)
    on_loopback = open_client.post(f"/api/jobs/{job_id}/cancel", headers=odd)

    for answer in (by_login, on_loopback):
        assert answer.status_code == 403, answer.text
        assert "X-PGQueue-CSRF" in answer.json()["error"]
    assert state_of(db, job_id) == "available"


@pytest.mark.parametrize("token", ["tr\u00e8s-secret-token-0001", "secret-token-0001\u2603"])
def test_a_token_beyond_printable_ascii_is_refused_as_no_header_could_carry_it(
        module_dsn: str, tmp_path: Path, token: str) -> None:
    # On the login page it would match (a form is UTF-8), as a bearer token never: each client
    # encodes header bytes its own way. Refused at start, as a short token is.
    with pytest.raises(ConfigurationError) as from_env:
        create_app(module_dsn, admin_token=token, read_token="")
    path = write_users(tmp_path, f"alice admin {token}\n")
    with pytest.raises(ConfigurationError) as from_file:
        create_app(module_dsn, admin_token="", read_token="", users_file=path)

    assert str(from_env.value).startswith("admin_token has a character outside printable ASCII"), from_env.value
    assert str(from_file.value).startswith(f"users file {path}, line 1: the token has a character outside "
                                           "printable ASCII"), from_file.value
    assert token not in str(from_env.value) + str(from_file.value)


def test_a_users_file_other_users_may_read_is_served_with_a_warning(module_dsn: str, tmp_path: Path) -> None:
    with capture_logs() as private:
        create_app(module_dsn, admin_token="", read_token="", users_file=write_users(tmp_path, USERS, 0o600))
    with capture_logs() as readable:
        # What Kubernetes (0644) and Docker (0444) mount secrets as: refusing it would break them.
        create_app(module_dsn, admin_token="", read_token="", users_file=write_users(tmp_path, USERS, 0o644))

    assert [entry for entry in private if entry["event"].startswith("web.")] == []
    warned = [entry for entry in readable if entry["event"] == "web.users_file_readable"]
    assert [(entry["log_level"], entry["mode"]) for entry in warned] == [("warning", "0644")]
    assert ALICE_TOKEN not in str(warned)


# Each web action: (method, path, JSON body, the audit event it writes, the job's state before it).
# {job} is a job of queue "emails" in that state; None: the action is on the queue.
WEB_ACTIONS = {
    "retry": ("POST", "/api/jobs/{job}/retry", None, "retried", "failed"),
    "cancel": ("POST", "/api/jobs/{job}/cancel", None, "cancelled", "available"),
    "delete": ("DELETE", "/api/jobs/{job}", None, "deleted", "completed"),
    "bulk-retry": ("POST", "/api/jobs/bulk", {"action": "retry", "ids": ["{job}"]}, "retried", "failed"),
    "bulk-cancel": ("POST", "/api/jobs/bulk", {"action": "cancel", "ids": ["{job}"]}, "cancelled", "available"),
    "bulk-delete": ("POST", "/api/jobs/bulk", {"action": "delete", "ids": ["{job}"]}, "deleted", "failed"),
    "retry-failed": ("POST", "/api/jobs/retry-failed", {"queue": "emails"}, "retried", "failed"),
    "pause": ("POST", "/api/queues/emails/pause", None, "queue_paused", "available"),
    "resume": ("POST", "/api/queues/emails/resume", None, "queue_resumed", None),
    "purge": ("POST", "/api/queues/emails/purge", {"state": "failed"}, "purged", "failed"),
    "limits": ("PUT", "/api/queues/emails/limits", {"concurrency": 3, "create": True}, "queue_limits_set", None),
}


@pytest.mark.parametrize("via", ["bearer", "login"])
@pytest.mark.parametrize("action", sorted(WEB_ACTIONS))
def test_every_web_action_of_a_named_user_is_audited_under_their_name_from_the_web(
        users_client: TestClient, db: Conn, action: str, via: str) -> None:
    method, path, body, event, state = WEB_ACTIONS[action]
    job_id = enqueue(db, state=state) if state else None
    if action == "resume":
        admin.pause_queue(db, "emails", actor="someone-else", create=True)  # audited as queue_paused
    fill = with_job(body, job_id) if body is not None else None
    url = path.format(job=job_id)
    if via == "bearer":
        # A bob's login cookie besides alice's bearer token: the token is who acts, and is audited.
        bobs = login_cookie_of(users_client.app, BOB_TOKEN)
        answer = users_client.request(method, url, json=fill,
                                      headers={**bearer(ALICE_TOKEN), "Cookie": f"pgqueue_token={bobs}"})
    else:
        cookie = login_cookie_of(users_client.app, ALICE_TOKEN)
        with TestClient(users_client.app, base_url="http://dashboard.example", cookies={"pgqueue_token": cookie},
                        raise_server_exceptions=False) as alice:
            csrf = csrf_of(alice.get("/queues").text)
            # As the page's buttons send it: JSON with the page's CSRF header.
            answer = alice.request(method, url, json=fill, headers={"X-PGQueue-CSRF": csrf})

    assert answer.status_code == 200, answer.text
    rows = db.execute("SELECT actor, detail ->> 'source' FROM pgqueue.job_events WHERE event = %s", [event]).fetchall()
    assert rows, f"no {event} row"
    assert set(rows) == {("alice", "web")}, rows


def with_job(body: dict[str, Any], job_id: int | None) -> dict[str, Any]:
    """``body`` with its ``"{job}"`` placeholders replaced by ``job_id``."""
    return {key: [job_id if item == "{job}" else item for item in value] if isinstance(value, list) else value
            for key, value in body.items()}


@pytest.mark.parametrize(("text", "mode", "expected"), [
    (None, 0o600, ": cannot read it (No such file or directory)"),
    (USERS, 0o620, ": other users may write it (mode 0620), and so give themselves admin rights: chmod go-w it"),
    (USERS, 0o606, ": other users may write it (mode 0606)"),
    ("# nobody yet\n\n", 0o600, ": names no user: add a line '<name> <role> <token>' for each person"),
    (f"alice owner {ALICE_TOKEN}\n", 0o600, ", line 1: the role must be admin or read"),
    (f"# ops\nal/ice admin {ALICE_TOKEN}\n", 0o600, ", line 2: a name is 1 to 64 characters of A-Z a-z 0-9 . _ @ -"),
    (f"{'a' * 65} admin {ALICE_TOKEN}\n", 0o600, ", line 1: a name is 1 to 64 characters"),
    (f"Admin-Token admin {ALICE_TOKEN}\n", 0o600, ", line 1: the names admin-token, maintenance, read-token, "
                                                  "scheduler are taken"),
    ("alice admin 15-characters!!\n", 0o600, ", line 1: the token is too short: a token needs at least 16 "
                                             "characters; generate one with python -c"),
    # Its fields in the wrong order: the token in the name's place is not quoted either.
    (f"{ALICE_TOKEN} admin alice\n", 0o600, ", line 1: the token is too short"),
    (f"alice admin {ALICE_TOKEN}\nAlice read {BOB_TOKEN}\n", 0o600,
     ", line 2: the same name as line 1 (names are compared ignoring case)"),
    (f"alice admin {ALICE_TOKEN}\n\nbob read {ALICE_TOKEN}\n", 0o600, ", line 3: the token is the same as line 1's"),
    ("alice admin admin-secret-token\n", 0o600, ", line 1: the token is the same as admin_token"),
    (f"alice admin {ALICE_TOKEN} # on call\n", 0o600,
     ", line 1: expected '<name> <role> <token>' separated by spaces, found 6 fields"),
], ids=["missing", "group-writable", "world-writable", "no-user", "role", "name-charset", "name-length", "reserved",
        "short-token", "fields-swapped", "same-name", "same-token", "env-token", "inline-comment"])
def test_a_bad_users_file_is_refused_naming_the_file_and_line_but_never_a_token(
        module_dsn: str, tmp_path: Path, text: str | None, mode: int, expected: str) -> None:
    path = write_users(tmp_path, text, mode) if text is not None else tmp_path / "dashboard-users"

    with pytest.raises(ConfigurationError) as refused:
        create_app(module_dsn, admin_token="admin-secret-token", read_token="", users_file=path)

    message = str(refused.value)
    assert message.startswith(f"users file {path}{expected}"), message
    for token in (ALICE_TOKEN, BOB_TOKEN, "admin-secret-token", "15-characters!!"):
        assert token not in message


# --- jobs ---


def test_list_jobs_filters_and_pages_with_a_cursor(client: TestClient, db: Conn) -> None:
    ids = [enqueue(db, "emails", tags=["vip"] if i % 2 else None) for i in range(5)]
    failed = enqueue(db, "reports", state="failed", task="render")

    first = client.get("/api/jobs", params={"queue": "emails", "limit": 2}, headers=READ).json()
    second = client.get("/api/jobs", params={"queue": "emails", "limit": 2, "cursor": first["next_cursor"]},
                        headers=READ).json()
    by_state = client.get("/api/jobs", params={"state": "failed"}, headers=READ).json()
    by_tag = client.get("/api/jobs", params={"tag": "vip"}, headers=READ).json()
    by_task = client.get("/api/jobs", params={"task": "render", "since": "2000-01-01T00:00:00Z"}, headers=READ).json()

    assert [j["id"] for j in first["items"]] == ids[::-1][:2]
    assert [j["id"] for j in second["items"]] == ids[::-1][2:4]
    assert [j["id"] for j in by_state["items"]] == [failed]
    assert [j["id"] for j in by_tag["items"]] == [ids[3], ids[1]]
    assert [j["id"] for j in by_task["items"]] == [failed]
    assert by_state["items"][0]["last_error"] == {"type": "Boom", "message": "bad"}


@pytest.mark.parametrize(("params", "message"), [
    ({"state": "done"}, "state 'done' is not valid here"),
    ({"limit": "abc"}, "limit 'abc' must be between 1 and 1000"),
    ({"limit": "0"}, "limit 0 must be between 1 and 1000"),
    ({"cursor": "zzz"}, "is not one this API returned"),
    ({"since": "yesterday"}, "since 'yesterday' must be an ISO 8601 time"),
    ({"since": "2030-01-02T09:00:00 00:00"}, "write the offset's + as %2B"),  # an unescaped + in the URL
    ({"queue": "Bad Queue"}, "queue name 'Bad Queue' must match"),
    ({"colour": "red"}, "unknown filter 'colour'"),
])
def test_a_bad_filter_is_a_400_with_a_message(client: TestClient, db: Conn, params: dict[str, str],
                                              message: str) -> None:
    response = client.get("/api/jobs", params=params, headers=READ)

    assert response.status_code == 400
    assert message in response.json()["error"]


# '²'.isdigit() is True but int('²') raises, and int() refuses text of over 4,300 digits.
_SQUARED = "\u00b2"
_MANY_DIGITS = "1" * 5000
_SQUARED_CURSOR = base64.urlsafe_b64encode(f"j1:{_SQUARED}".encode()).decode().rstrip("=")


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("GET", f"/api/jobs/{_SQUARED}", None, 404),
    ("GET", f"/api/jobs/{_MANY_DIGITS}", None, 404),
    ("POST", f"/api/jobs/{_SQUARED}/retry", None, 404),
    ("GET", f"/api/jobs?limit={_SQUARED}", None, 400),
    ("GET", f"/api/jobs?limit={_MANY_DIGITS}", None, 400),
    ("GET", f"/api/jobs?cursor={_SQUARED_CURSOR}", None, 400),
    ("POST", "/api/jobs/bulk", {"action": "retry", "ids": [_SQUARED]}, 400),
    ("PUT", "/api/queues/sms/limits", {"concurrency": _SQUARED}, 400),
    ("PUT", "/api/queues/sms/limits", {"concurrency": _MANY_DIGITS}, 400),
    ("PUT", "/api/queues/sms/limits", {"rate": f"{_MANY_DIGITS}/s"}, 400),
    ("PUT", "/api/queues/sms/limits", {"rate": f"1/{'9' * 400}s"}, 400),  # a period float() reads as inf
    ("GET", f"/jobs/{_SQUARED}", None, 404),
    ("GET", f"/jobs?id={_MANY_DIGITS}", None, 400),
    ("GET", f"/jobs?limit={_SQUARED}", None, 400),
])
def test_numbers_python_cannot_read_as_an_int_are_a_4xx_not_a_500(client: TestClient, db: Conn, method: str,
                                                                   path: str, body: Any, status: int) -> None:
    kept = enqueue(db, "sms")

    response = client.request(method, path, headers=ADMIN, json=body)

    assert response.status_code == status, response.text
    assert state_of(db, kept) == "available"
    assert db.execute("SELECT count(*) FROM pgqueue.queues").fetchone() == (0,)


def test_get_job_returns_the_job_and_its_audit_trail_and_404s_a_bad_or_unknown_id(client: TestClient,
                                                                               db: Conn) -> None:
    job_id = enqueue(db)

    found = client.get(f"/api/jobs/{job_id}", headers=READ)
    unknown = client.get("/api/jobs/999999", headers=READ)
    malformed = client.get("/api/jobs/abc", headers=READ)

    assert found.status_code == 200
    assert found.json()["id"] == job_id
    assert [e["event"] for e in found.json()["events"]] == ["enqueued"]
    assert (unknown.status_code, unknown.json()["error"]) == (404, "job 999999 not found")
    assert malformed.status_code == 404


def test_an_encrypted_jobs_payloads_are_never_decrypted_for_display(client: TestClient, db: Conn,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from pgqueue._crypto import generate_key

    monkeypatch.setenv("PGQUEUE_ENCRYPTION_KEYS", generate_key())
    job_id = App().enqueue(db, "send", {"ssn": "123-45-6789"}, encrypt=True)

    job = client.get(f"/api/jobs/{job_id}", headers=READ).json()
    page = client.get(f"/jobs/{job_id}", headers=READ).text

    assert job["args"] is None
    assert job["args_encrypted"] is True
    assert "123-45-6789" not in page
    assert "&lt;encrypted&gt;" in page


def test_retry_cancel_and_delete_act_audit_with_the_web_actor_and_refuse_wrong_states(client: TestClient,
                                                                                      db: Conn) -> None:
    failed, live, running, done = (enqueue(db, state="failed"), enqueue(db), enqueue(db, state="running"),
                                   enqueue(db, state="completed"))

    retried = client.post(f"/api/jobs/{failed}/retry", headers=ADMIN)
    cancelled = client.post(f"/api/jobs/{live}/cancel", headers=ADMIN)
    deleted = client.delete(f"/api/jobs/{done}", headers=ADMIN)
    wrong_state = client.post(f"/api/jobs/{running}/retry", headers=ADMIN)
    not_deletable = client.delete(f"/api/jobs/{running}", headers=ADMIN)
    unknown = client.post("/api/jobs/999999/cancel", headers=ADMIN)

    assert retried.json() == {"id": failed, "previous_state": "failed", "state": "available"}
    assert cancelled.json() == {"id": live, "previous_state": "available", "state": "cancelled"}
    assert deleted.json() == {"id": done, "previous_state": "completed", "state": None}
    assert (wrong_state.status_code, not_deletable.status_code, unknown.status_code) == (409, 409, 404)
    assert "only failed or cancelled jobs can be retried" in wrong_state.json()["error"]
    assert [state_of(db, j) for j in (failed, live, running, done)] == ["available", "cancelled", "running", None]
    assert actors(db, "retried") == actors(db, "cancelled") == actors(db, "deleted") == ["admin-token@web"]


def test_cancelling_a_running_job_from_the_web_tells_its_worker_by_notify(client: TestClient, db: Conn,
                                                                          module_dsn: str) -> None:
    running, live = enqueue(db, state="running"), enqueue(db)
    token = db.execute("SELECT lease_token FROM pgqueue.jobs WHERE id = %s", [running]).fetchone()
    assert token is not None
    with psycopg.connect(module_dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgqueue_cancel")
        assert client.post(f"/api/jobs/{live}/cancel", headers=ADMIN).status_code == 200
        response = client.post(f"/api/jobs/{running}/cancel", headers=ADMIN)
        heard = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]

    assert response.json() == {"id": running, "previous_state": "running", "state": "cancelled"}
    # Only the running job's worker is told, under the lease it held (a later attempt is not hit).
    assert heard == [f"{running}:{token[0]}"]
    assert db.execute("SELECT lease_token FROM pgqueue.jobs WHERE id = %s", [running]).fetchone() == (None,)


def test_retry_failed_reports_the_failed_jobs_a_live_unique_key_leaves_behind(client: TestClient, db: Conn) -> None:
    held = enqueue(db, state="failed", unique_key="report-7")
    live = enqueue(db, unique_key="report-7")
    free = enqueue(db, state="failed")

    response = client.post("/api/jobs/retry-failed", headers=ADMIN, json={})

    assert response.status_code == 200
    assert response.json() == {"retried": [free], "count": 1, "skipped": [held], "skipped_count": 1}
    states: dict[int, str] = dict(db.execute("SELECT id, state FROM pgqueue.jobs").fetchall())
    assert states == {held: "failed", live: "available", free: "available"}
    schema = client.get("/api/openapi.json", headers=READ).json()
    answer = schema["paths"]["/api/jobs/retry-failed"]["post"]["responses"]["200"]
    assert {"retried", "count", "skipped", "skipped_count"} <= set(
        answer["content"]["application/json"]["schema"]["properties"])


def test_bulk_actions_report_each_job_and_retry_failed_retries_the_dead_letters(client: TestClient,
                                                                               db: Conn) -> None:
    a, b = enqueue(db, state="failed"), enqueue(db, state="failed")
    c = enqueue(db, "reports", state="failed")
    completed = enqueue(db, state="completed")

    bulk = client.post("/api/jobs/bulk", headers=ADMIN, json={"action": "retry", "ids": [a, completed]})
    rest = client.post("/api/jobs/retry-failed", headers=ADMIN, json={"queue": "emails"})
    not_json = client.post("/api/jobs/bulk", headers=ADMIN, content="action=retry",
                           params={}, )
    form = client.post("/api/jobs/bulk", headers={**ADMIN, "Content-Type": "application/x-www-form-urlencoded"},
                       content="action=retry&ids=1")
    bad_action = client.post("/api/jobs/bulk", headers=ADMIN, json={"action": "explode", "ids": [a]})

    assert bulk.json()["done"] == 1
    assert bulk.json()["refused"] == 1
    assert [r["ok"] for r in bulk.json()["results"]] == [True, False]
    assert rest.json() == {"retried": [b], "count": 1, "skipped": [], "skipped_count": 0}
    assert not_json.status_code == 415
    assert form.status_code == 415
    assert bad_action.status_code == 400
    assert [state_of(db, j) for j in (a, b, c, completed)] == ["available", "available", "failed", "completed"]


# --- queues ---


def test_pause_resume_purge_and_limits_of_a_queue(client: TestClient, db: Conn) -> None:
    enqueue(db, "sms")
    failed = enqueue(db, "sms", state="failed")

    paused = client.post("/api/queues/sms/pause", headers=ADMIN).json()
    resumed = client.post("/api/queues/sms/resume", headers=ADMIN).json()
    limits = client.put("/api/queues/sms/limits", headers=ADMIN, json={"concurrency": 5, "rate": "20/s"}).json()
    cleared = client.put("/api/queues/sms/limits", headers=ADMIN, json={"rate": None}).json()
    purged = client.post("/api/queues/sms/purge", headers=ADMIN, json={"state": "failed"}).json()
    listed = client.get("/api/queues", headers=READ).json()["items"]

    assert (paused["paused"], resumed["paused"]) == (True, False)
    assert (limits["concurrency"], limits["rate"], limits["rate_period_seconds"]) == (5, "20/s", 1)
    assert (cleared["concurrency"], cleared["rate"]) == (5, None)
    assert purged == {"queue": "sms", "state": "failed", "purged": 1}
    assert state_of(db, failed) is None
    assert [(q["name"], q["available"], q["concurrency"]) for q in listed] == [("sms", 1, 5)]
    assert actors(db, "queue_paused") == actors(db, "queue_limits_set")[:1] == ["admin-token@web"]
    assert actors(db, "queue_resumed") == actors(db, "purged") == ["admin-token@web"]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("POST", "/api/queues/nope/pause", None, 404, "queue 'nope' not found"),
    ("POST", "/api/queues/nope/purge", None, 404, "queue 'nope' not found"),
    ("PUT", "/api/queues/nope/limits", {"concurrency": 1}, 404, "queue 'nope' not found"),
    ("POST", "/api/queues/Bad%20Queue/pause", None, 400, "queue name 'Bad Queue' must match"),
    ("PUT", "/api/queues/sms/limits", {"rate": "10/fortnight"}, 400, "rate '10/fortnight' must look like"),
    ("PUT", "/api/queues/sms/limits", {"concurrency": -1}, 400, "concurrency -1 must be"),
    ("PUT", "/api/queues/sms/limits", {"burst": 3}, 400, "unknown limit 'burst'"),
    ("PUT", "/api/queues/nope/limits", {"concurrency": 1, "create": "yes"}, 400, "create 'yes' must be true or false"),
    ("PUT", "/api/queues/sms/limits", None, 400, "needs a JSON object body"),
    ("POST", "/api/queues/sms/purge", {"state": "running"}, 409, "running jobs cannot be purged"),
])
def test_queue_errors_are_clear_4xx_json_and_change_nothing(client: TestClient, db: Conn, method: str, path: str,
                                                            body: Any, status: int, message: str) -> None:
    kept = enqueue(db, "sms")
    before = db.execute("SELECT count(*) FROM pgqueue.job_events").fetchone()

    response = client.request(method, path, headers=ADMIN, json=body)

    assert response.status_code == status
    assert message in response.json()["error"]
    assert state_of(db, kept) == "available"
    assert db.execute("SELECT count(*) FROM pgqueue.queues").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM pgqueue.job_events").fetchone() == before


def test_limits_configure_a_queue_before_its_first_job_only_when_asked_to(client: TestClient, db: Conn) -> None:
    refused = client.put("/api/queues/fresh/limits", headers=ADMIN, json={"concurrency": 3})
    created = client.put("/api/queues/fresh/limits", headers=ADMIN, json={"concurrency": 3, "create": True})

    assert refused.status_code == 404
    assert '"create": true in the HTTP API' in refused.json()["error"]
    assert created.status_code == 200
    assert (created.json()["name"], created.json()["concurrency"]) == ("fresh", 3)
    assert db.execute("SELECT concurrency FROM pgqueue.queues WHERE name = 'fresh'").fetchone() == (3,)


# --- schedules, workers, health, errors ---


def test_schedules_workers_and_health(client: TestClient, db: Conn) -> None:
    from pgqueue.schedules import ScheduleSpec, add_schedule

    add_schedule(db, ScheduleSpec.build(name="nightly", cron="0 3 * * *", task="cleanup"))
    db.execute("INSERT INTO pgqueue.workers (id, hostname, pid, queues, concurrency, lease_expires_at) "
               "VALUES ('w1', 'host', 7, '{}', 4, now() + interval '1 minute')")

    schedules = client.get("/api/schedules", headers=READ).json()["items"]
    workers = client.get("/api/workers", headers=READ).json()["items"]
    health = client.get("/api/health", headers=READ)

    assert [(s["name"], s["state"]) for s in schedules] == [("nightly", "active")]
    assert schedules[0]["next_run_at"].endswith("+00:00")
    assert [(w["id"], w["alive"]) for w in workers] == [("w1", True)]
    assert health.status_code == 200
    assert health.json()["healthy"] is True
    assert "127.0.0.1" not in health.text
    assert "postgresql://" not in health.text


def test_breakers_are_listed_by_the_api_and_on_the_overview(client: TestClient, db: Conn) -> None:
    db.execute("INSERT INTO pgqueue.circuit_breakers (task, state, opened_at, failure_threshold, window_seconds,"
               " cooldown_seconds) VALUES ('send-sms', 'open', now(), 5, 60, 30)")

    items = client.get("/api/breakers", headers=READ).json()["items"]
    page = client.get("/", headers=READ)

    assert [(b["task"], b["state"], b["failure_threshold"]) for b in items] == [("send-sms", "open", 5)]
    assert items[0]["trial_at"] is not None
    assert page.status_code == 200
    metrics = client.get("/metrics", headers=READ).text
    assert 'pgqueue_circuit_breaker_state{state="open",task="send-sms"} 1.0' in metrics
    assert 'pgqueue_circuit_breaker_state{state="closed",task="send-sms"} 0.0' in metrics
    assert "Circuit breakers" in page.text
    assert "send-sms" in page.text


def test_a_bug_behind_a_page_is_an_error_page_for_people_and_json_for_the_api(
        module_dsn: str, db: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a bug with a secret in its message")

    monkeypatch.setattr(admin, "list_queues", broken)
    with TestClient(create_app(module_dsn, read_token=TOKEN), raise_server_exceptions=False) as c:
        page = c.get("/queues", headers={"Authorization": f"Bearer {TOKEN}"})
        api = c.get("/api/queues", headers={"Authorization": f"Bearer {TOKEN}"})

    assert page.status_code == api.status_code == 500
    assert "<html" in page.text
    assert "internal error" in page.text
    assert api.json() == {"error": "internal error", "status": 500}
    assert "secret" not in page.text + api.text


def test_an_unreachable_database_is_a_503_that_names_no_dsn() -> None:
    app = create_app("postgresql://root:s3cret@127.0.0.1:1/nowhere", admin_token=TOKEN)
    with TestClient(app, raise_server_exceptions=False) as c:
        asked = time.monotonic()
        response = c.get("/api/queues", headers={"Authorization": f"Bearer {TOKEN}"})
        api_seconds = time.monotonic() - asked
        asked = time.monotonic()
        ready = c.get("/readyz")
        ready_seconds = time.monotonic() - asked

    assert response.status_code == 503
    # Both answer once a direct connection attempt is refused, after 1 s, not after the API's
    # 10 s wait for the pool (which every request took before, holding a server thread).
    assert api_seconds < 5, api_seconds
    assert ready_seconds < 5, ready_seconds
    assert response.json() == {"error": "database unavailable", "status": 503}
    assert ready.status_code == 503
    assert "s3cret" not in response.text + ready.text
    assert "127.0.0.1" not in response.text + ready.text


def test_health_of_an_unreachable_database_names_neither_its_address_nor_its_user() -> None:
    app = create_app("postgresql://app_user:s3cret@127.0.0.1:1/nowhere", admin_token=TOKEN)
    with TestClient(app, raise_server_exceptions=False) as c:
        response = c.get("/api/health", headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 503
    assert response.json()["checks"][0] == {"name": "database", "status": "fail",
                                            "detail": "cannot connect to the configured database"}
    for secret in ("s3cret", "app_user", "127.0.0.1", "nowhere"):
        assert secret not in response.text


def test_a_busy_pool_keeps_a_request_waiting_while_the_database_answers(dsn: str) -> None:
    # Past the first second without a free connection the pool is probed with a direct connection:
    # a database that answers means the pool is only busy, and the request waits its full time.
    from pgqueue._db.pools import PROBE_AFTER_SECONDS, DashboardPool

    pool = DashboardPool(dsn, max_size=1)
    released = threading.Event()
    waited: dict[str, Any] = {}

    def hold_the_only_connection() -> None:
        with pool.connection() as conn:
            conn.execute("SELECT 1")
            released.wait(10)

    holder = threading.Thread(target=hold_the_only_connection)
    holder.start()
    try:
        wait_until(lambda: pool.open().get_stats().get("pool_available", 1) == 0 and holder.is_alive())
        threading.Timer(PROBE_AFTER_SECONDS + 1.0, released.set).start()
        started = time.monotonic()
        with pool.connection(timeout=10) as conn:
            waited["seconds"] = time.monotonic() - started
            waited["answer"] = conn.execute("SELECT 42").fetchone()
    finally:
        released.set()
        holder.join(10)
        pool.close()

    assert waited["answer"] == (42,)
    assert waited["seconds"] > PROBE_AFTER_SECONDS


def test_requests_waiting_on_a_busy_pool_together_share_one_probe(dsn: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Eight requests wait past the first second on a pool whose one connection is held: one direct
    # connection tells them all that the database answers (one each would open eight connections
    # to the database the pool is short of, on a dashboard that polls).
    from pgqueue._db.pools import PROBE_AFTER_SECONDS, DashboardPool

    pool = DashboardPool(dsn, max_size=1)
    probes: list[float] = []
    connect = DashboardPool._connect_directly

    def counted(self: DashboardPool) -> bool:
        probes.append(time.monotonic())
        return connect(self)

    monkeypatch.setattr(DashboardPool, "_connect_directly", counted)
    released = threading.Event()
    answers: list[Any] = []

    def hold_the_only_connection() -> None:
        with pool.connection() as conn:
            conn.execute("SELECT 1")
            released.wait(10)

    def request() -> None:
        with pool.connection(timeout=10) as conn:
            answers.append(conn.execute("SELECT 42").fetchone())

    holder = threading.Thread(target=hold_the_only_connection)
    holder.start()
    requests = [threading.Thread(target=request) for _ in range(8)]
    try:
        wait_until(lambda: pool.open().get_stats().get("pool_available", 1) == 0 and holder.is_alive())
        for thread in requests:
            thread.start()
        # All eight wait on the pool at once, so they reach their probe within PROBE_AFTER_SECONDS
        # of each other; the pool frees only after the first probe's verdict.
        wait_until(lambda: pool.open().get_stats().get("requests_waiting", 0) == 8, timeout=10)
        wait_until(lambda: len(probes) >= 1, timeout=10)
        time.sleep(PROBE_AFTER_SECONDS / 2)
    finally:
        released.set()
        holder.join(10)
        for thread in requests:
            thread.join(15)
        pool.close()

    assert answers == [(42,)] * 8
    assert len(probes) == 1


def test_an_unexpected_error_is_a_500_without_a_traceback(client: TestClient, db: Conn,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from pgqueue import admin

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals at /srv/app.py line 12")

    monkeypatch.setattr(admin, "list_workers", explode)
    response = client.get("/api/workers", headers=READ)

    assert response.status_code == 500
    assert response.json() == {"error": "internal error", "status": 500}


def test_pages_render_for_a_reader_and_a_401_shows_the_login_form(client: TestClient, db: Conn) -> None:
    job_id = enqueue(db, state="failed")
    for path in ("/", "/jobs", "/jobs?state=failed", f"/jobs/{job_id}", "/queues", "/schedules", "/workers"):
        response = client.get(path, headers=READ)
        assert response.status_code == 200, path
        assert "<html" in response.text
    fragment = client.get("/jobs?fragment=1", headers={**READ, "HX-Request": "true"})
    anonymous = client.get("/jobs")

    assert "<html" not in fragment.text
    assert str(job_id) in fragment.text
    assert anonymous.status_code == 401
    assert 'name="token"' in anonymous.text


def test_a_read_token_sees_no_button_it_may_not_press_and_the_admin_token_sees_them(client: TestClient,
                                                                                    db: Conn) -> None:
    failed = enqueue(db, "sms", state="failed")
    waiting = enqueue(db, "sms")
    actions = re.compile(r"hx-(post|put|delete)=")
    pages = ("/jobs?state=failed", f"/jobs/{failed}", f"/jobs/{waiting}", "/queues")

    for path in pages:
        assert not actions.search(client.get(path, headers=READ).text), path  # each would answer 403
        assert actions.search(client.get(path, headers=ADMIN).text), path
    queues = client.get("/queues", headers=READ).text
    assert "none · none" in queues  # the limits are shown as text instead of a form
    assert "once flow control ships" not in client.get("/queues", headers=ADMIN).text


def test_a_read_token_gets_no_row_checkboxes_that_would_only_stop_the_live_refresh(client: TestClient,
                                                                                   db: Conn) -> None:
    enqueue(db, "sms", state="failed")
    checkbox = 'name="ids"'

    # A tick would have nothing to do, and it pauses the live refresh (pgqueueLive).
    assert checkbox not in client.get("/jobs", headers=READ).text
    assert checkbox in client.get("/jobs", headers=ADMIN).text


def test_a_job_page_shows_the_workflow_the_job_belongs_to(client: TestClient, db: Conn) -> None:
    import pgqueue

    wf = App().enqueue_workflow(db, pgqueue.group([pgqueue.sig("export"), pgqueue.sig("export")],
                                                  then=pgqueue.sig("zip-exports")))
    plain = enqueue(db)
    page = client.get(f"/jobs/{wf.job_ids[-1]}", headers=ADMIN)
    assert page.status_code == 200
    assert f"Workflow <code>{wf.id}</code>: running" in page.text
    for job_id in wf.job_ids[:2]:
        assert f'/jobs/{job_id}">{job_id}</a>' in page.text
    assert "zip-exports" in page.text
    assert "Workflow" not in client.get(f"/jobs/{plain}", headers=ADMIN).text


def test_a_job_page_lists_the_first_50_jobs_of_a_large_workflow_and_its_own(client: TestClient, db: Conn) -> None:
    # The page refreshes every poll: a 5,000-job group was re-rendered whole each time (~700 KB/s a
    # tab), and loaded whole from the database too (now its first rows and counts from SQL).
    import pgqueue

    wf = App().enqueue_workflow(db, pgqueue.group([pgqueue.sig("export", {"n": n}) for n in range(5000)],
                                                  then=pgqueue.sig("zip-exports")))
    page = client.get(f"/jobs/{wf.job_ids[-1]}", headers=ADMIN).text

    assert "5001 jobs: available 5000 · waiting 1" in page
    listed = re.findall(r'<td class="num">(?:<a href="/jobs/(\d+)">|<strong>(\d+)</strong>)', page)
    assert [int(a or b) for a, b in listed] == [*wf.job_ids[:50], wf.job_ids[-1]]
    assert f"… and 4950 more: <code>pgqueue workflows show {wf.id}</code>" in page
    member = client.get(f"/jobs/{wf.job_ids[3]}", headers=ADMIN).text
    listed = re.findall(r'<td class="num">(?:<a href="/jobs/(\d+)">|<strong>(\d+)</strong>)', member)
    assert [int(a or b) for a, b in listed] == wf.job_ids[:50]
    assert "… and 4951 more" in member
