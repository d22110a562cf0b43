"""The production web server (``python -m hq.serve``: granian WSGI workers for HTTP, gunicorn
+ uvicorn for the live websocket on a port of its own) under 64 concurrent keep-alive API
clients, against the real Postgres and Redis: every request answered, the web tier's
Postgres connections never past its budget (workers × pool), a connection left for the
others (the taps, Celery) all along, and the live websocket served beside it, found by the
pages through ``HQ_LIVE_URL``. No wall-clock asserts: only counts."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.db import connection

from hq.serve import budget_problem
from jobs.models import Boot, Job, Server
from tests.support.stack import free_port

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
WORKERS, POOL = 2, 3
WS_WORKERS, WS_POOL = 1, 2
BUDGET = WORKERS * POOL + WS_WORKERS * WS_POOL
CLIENTS, REQUESTS_EACH = 64, 8
APP_NAME = "gearman-hq-web"


def _db_url() -> str:
    d = connection.settings_dict
    auth = quote(str(d["USER"])) + (f":{quote(str(d['PASSWORD']))}" if d["PASSWORD"] else "")
    return f"postgres://{auth}@{d['HOST']}:{d['PORT']}/{quote(str(d['NAME']))}"


def _conninfo() -> str:
    d = connection.settings_dict
    return (f"host={d['HOST']} port={d['PORT']} user={d['USER']} dbname={d['NAME']}"
            + (f" password={d['PASSWORD']}" if d["PASSWORD"] else ""))


def web_connections() -> int:
    with psycopg.connect(_conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                           "current_database() AND application_name = %s",
                           (APP_NAME,)).fetchone()
    return int(row[0]) if row else 0


@dataclass
class Web:
    port: int
    ws_port: int
    token: str
    log: Path
    proc: subprocess.Popen[bytes] = field(repr=False)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"hq.serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"hq.serve did not listen on {port}:\n{log.read_text()[-3000:]}")


@pytest.fixture
def web(vera: object, tmp_path: Path) -> Iterator[Web]:
    from hq.services import issue_token

    server = Server.objects.create(name="load", address="127.0.0.1:4730")
    boot = Boot.objects.create(server=server, token="1", first_seen="2026-01-01T00:00:00Z")
    Job.objects.bulk_create(
        Job(server=server, boot=boot, handle=f"H:load:{i}", function=f"fn_{i % 4}",
            state="completed", payload_text=f"job {i}", payload_size=5 + len(str(i)),
            updated_at="2026-01-01T00:00:00Z", submitted_at="2026-01-01T00:00:00Z")
        for i in range(200))
    token = issue_token(vera)  # type: ignore[arg-type]
    port, ws_port, log = free_port(), free_port(), tmp_path / "hq-serve.log"
    env = {**os.environ, "DATABASE_URL": _db_url(), "PYTHONPATH": str(ROOT),
           "HQ_SECRET_KEY": "test-only-secret-key-for-hq-serve-0123456789",
           "HQ_WEB_WORKERS": str(WORKERS), "HQ_DB_POOL_MAX": str(POOL), "HQ_DB_POOL_MIN": "1",
           "HQ_WS_WORKERS": str(WS_WORKERS), "HQ_WS_DB_POOL_MAX": str(WS_POOL),
           "HQ_WEB_DB_CONNECTIONS": str(BUDGET), "HQ_LOG_LEVEL": "WARNING"}
    env.pop("HQ_LIVE_URL", None)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hq.serve", "--bind",
                                 f"127.0.0.1:{port}", "--ws-bind", f"127.0.0.1:{ws_port}"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_for_port(port, proc, log)
        _wait_for_port(ws_port, proc, log)
        yield Web(port, ws_port, token, log, proc)
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already: a test stopped it
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


PATHS = ["/api/v1/jobs/?handle=H:load:{n}", "/api/v1/jobs/?function=fn_{m}&limit=50",
         "/api/v1/queues/", "/api/v1/workers/", "/api/v1/jobs/?state=completed&limit=20",
         "/healthz"]


def _client(web: Web, n: int, failures: list[str], answered: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=120)
    headers = {"Authorization": f"Bearer {web.token}"}
    try:
        for i in range(REQUESTS_EACH):
            path = PATHS[(n + i) % len(PATHS)].format(n=(n * 7 + i) % 200, m=i % 4)
            try:
                conn.request("GET", path, headers=headers)
                r = conn.getresponse()
                body = r.read()
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"{path}: {exc!r}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=120)
                continue
            if r.status != 200 or r.getheader("Content-Type") != "application/json":
                failures.append(f"{path}: {r.status} {body[:200]!r}")
                continue
            data = json.loads(body)
            if path.startswith("/api/v1/jobs/") and set(data) != {"next", "previous",
                                                                  "results"}:
                failures.append(f"{path}: {sorted(data)}")
            answered.append(1)
    finally:
        conn.close()


def test_64_concurrent_clients_all_answered_within_the_connection_budget(web: Web) -> None:
    failures: list[str] = []
    answered: list[int] = []
    peak, stop = [0], threading.Event()
    others_wrote: list[bool] = []

    def sample() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], web_connections())
            if not others_wrote:  # a tap's writer still gets its connection mid-load
                with psycopg.connect(_conninfo(), application_name="gearman-hq-ingest") as c:
                    c.execute("INSERT INTO jobs_server (name, address, created_at) "
                              "VALUES ('written-under-load', '', now())")
                others_wrote.append(True)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    clients = [threading.Thread(target=_client, args=(web, n, failures, answered))
               for n in range(CLIENTS)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(600)
    stop.set()
    sampler.join(10)
    assert failures == [], f"{len(failures)} failed, e.g. {failures[:5]}\n" \
                           f"{web.log.read_text()[-2000:]}"
    assert len(answered) == CLIENTS * REQUESTS_EACH
    assert 0 < peak[0] <= BUDGET
    assert 0 < web_connections() <= BUDGET  # the pools keep theirs, no more
    assert others_wrote == [True]
    assert Server.objects.filter(name="written-under-load").exists()


def test_the_live_websocket_is_served_beside_it_and_pages_find_it(web: Web) -> None:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{web.ws_port}/ws/live/?token={web.token}",
                 open_timeout=30) as ws:
        ws.send(json.dumps({"subscribe": {"function": "fn_*"}}))
        assert json.loads(ws.recv(timeout=30)) == {"type": "subscribed", "function": "fn_*",
                                                   "handle": None}
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=60)
    conn.request("GET", "/login/")
    r = conn.getresponse()
    page = r.read().decode()
    assert r.status == 200
    # static/js/live.js opens the page's host on the websocket port; CSP lets it
    assert f'<meta name="hq-live-url" content=":{web.ws_port}">' in page
    csp = r.getheader("Content-Security-Policy") or ""
    assert f"connect-src 'self' ws://127.0.0.1:{web.ws_port} wss://127.0.0.1:{web.ws_port};" \
        in csp


def test_the_servers_stop_together(web: Web) -> None:
    """One service for make run, systemd and Docker: when one server dies the other is
    stopped and hq.serve exits non-zero, so the supervisor restarts the whole."""
    children = subprocess.run(["pgrep", "-P", str(web.proc.pid)], capture_output=True,
                              text=True).stdout.split()
    assert len(children) == 2
    os.kill(int(children[0]), signal.SIGKILL)
    assert web.proc.wait(60) != 0
    for port in (web.port, web.ws_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0


def test_the_server_refuses_to_start_past_the_web_tiers_budget() -> None:
    assert budget_problem(2, 8, 16) is None
    problem = budget_problem(3, 8, 16)
    assert problem is not None and "HQ_WEB_DB_CONNECTIONS=16" in problem
    assert budget_problem(0, 8, 16) is not None
    assert budget_problem(2, 6, 16, ws_workers=2, ws_pool_max=2) is None
    problem = budget_problem(2, 6, 16, ws_workers=3, ws_pool_max=2)
    assert problem is not None and "HQ_WS_DB_POOL_MAX=2" in problem
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HQ_SECRET_KEY": "x" * 40,
           "HQ_WEB_WORKERS": "4", "HQ_DB_POOL_MAX": "8", "HQ_WEB_DB_CONNECTIONS": "16"}
    run = subprocess.run([sys.executable, "-m", "hq.serve", "--bind", "127.0.0.1:9"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "HQ_WEB_DB_CONNECTIONS=16" in run.stderr


@pytest.mark.parametrize("length", [8_000, 20_000, 70_000])
def test_an_over_long_request_line_gets_an_answer(web: Web, length: int) -> None:
    """Under daphne a request line over 16 KiB got no answer at all (the connection was
    dropped); a script must always read a status line."""
    with socket.create_connection(("127.0.0.1", web.port), timeout=30) as s:
        s.sendall(b"GET /api/v1/jobs/?q=" + b"a" * length + b" HTTP/1.1\r\n"
                  b"Host: 127.0.0.1\r\nAuthorization: Bearer " + web.token.encode() + b"\r\n\r\n")
        head = s.recv(64)
    assert head.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 414 ", b"HTTP/1.1 431 ")), head


def test_forwarded_headers_are_believed_only_from_a_trusted_proxy() -> None:
    from hq.wsgi import ForwardedFrom, trusted_proxies

    seen: list[tuple[str, str]] = []

    def app(environ: dict[str, str], start_response: object) -> list[bytes]:
        seen.append((environ["REMOTE_ADDR"], environ["wsgi.url_scheme"]))
        return []

    def call(trusted: str, peer: str, chain: str, proto: str = "https") -> tuple[str, str]:
        ForwardedFrom(app, trusted_proxies(trusted))(
            {"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": chain,
             "HTTP_X_FORWARDED_PROTO": proto, "wsgi.url_scheme": "http"}, lambda *a: None)
        return seen.pop()

    assert call("127.0.0.1", "127.0.0.1", "203.0.113.9") == ("203.0.113.9", "https")
    # a script claiming an address itself, not through the proxy: ignored
    assert call("127.0.0.1", "198.51.100.7", "203.0.113.9") == ("198.51.100.7", "http")
    # a client's own X-Forwarded-For before the proxy's hop: the proxy's view wins
    assert call("127.0.0.1,10.0.0.2", "127.0.0.1", "1.2.3.4, 203.0.113.9, 10.0.0.2") == \
        ("203.0.113.9", "https")
    assert call("*", "10.9.9.9", "203.0.113.9", "gopher") == ("203.0.113.9", "http")
