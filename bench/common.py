"""Shared helpers for the bench scripts: processes, gearmand, admin protocol, statistics.

Every process is started in its own session (so in its own process group) and recorded in
a `ProcessSet`; `ProcessSet.stop_all()` in a `finally` kills whatever is left, children
included, also after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
PHP_DIR = BENCH_DIR / "php"
PROJECT_DIR = BENCH_DIR.parent


class BenchError(Exception):
    """A step of the bench failed; the message says which and why."""


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self, max_chars: int = 100_000) -> str:
        """What the process wrote so far (stdout and stderr share the log file)."""
        self.log_file.flush()
        text = self.log_path.read_text(errors="replace")
        return text[-max_chars:]


@dataclass
class ProcessSet:
    """Processes started by the bench; each one leads its own process group."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    _counter: int = 0

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stderr_to_log: bool = True,
    ) -> Proc:
        """Start argv with stdout (and stderr) going to a log file under workdir."""
        self._counter += 1
        log_path = self.workdir / f"{self._counter:04d}-{name}.log"
        log_file = log_path.open("w+b")
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file if stderr_to_log else subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            log_file.close()
            raise BenchError(f"cannot start {name}: {exc}") from exc
        proc = Proc(name=name, popen=popen, log_path=log_path, log_file=log_file)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
        """Signal the process group, wait up to timeout, then SIGKILL it. Returns the rc."""
        if proc.alive():
            _killpg(proc.pid, sig)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.popen.wait()
        # the leader may be gone while its children live on: sweep the group anyway
        _killpg(proc.pid, signal.SIGKILL)
        proc.log_file.close()
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.popen.returncode

    def stop_all(self, timeout: float = 5.0) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc, timeout)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system, reaped children included) of a process group's members."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # fields[0] is the state, [2] the pgrp
                total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / ticks


def wait_exit(proc: Proc, timeout: float) -> int:
    try:
        return proc.popen.wait(timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{proc.name} still running after {timeout:.0f} s") from exc


@contextlib.contextmanager
def process_set() -> Iterator[ProcessSet]:
    """A ProcessSet in a fresh temporary directory; everything is killed on the way out."""
    with tempfile.TemporaryDirectory(prefix="hq-bench-") as tmp:
        procs = ProcessSet(Path(tmp))
        try:
            yield procs
        finally:
            procs.stop_all()


def raise_on_termination_signals() -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so that `finally` blocks run."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise BenchError(f"{proc.name} exited ({proc.popen.returncode}): {proc.output(2000)}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.02)
    raise BenchError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


# --------------------------------------------------------------------------- gearmand


def start_gearmand(procs: ProcessSet, host: str, port: int, threads: int = 4) -> Proc:
    argv = [
        "gearmand",
        f"--listen={host}",
        f"--port={port}",
        f"--threads={threads}",
        f"--pid-file={procs.workdir / f'gearmand-{port}.pid'}",
        "--log-file=stderr",
        "--verbose=ERROR",
    ]
    proc = procs.spawn(f"gearmand-{port}", argv)
    wait_for_port(host, port, 10.0, proc)
    with AdminConn(host, port) as admin:
        admin.command("version")
    return proc


class AdminConn:
    """A persistent connection for gearmand's text admin protocol."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""

    def __enter__(self) -> AdminConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def command(self, cmd: str) -> list[str]:
        """Send one command; return the reply lines (without the final '.')."""
        self._sock.sendall(cmd.encode() + b"\n")
        if cmd in ("version", "getpid", "maxqueue") or cmd.startswith("cancel job"):
            return [self._read_line()]
        lines: list[str] = []
        while (line := self._read_line()) != ".":
            lines.append(line)
        return lines

    def status(self) -> dict[str, tuple[int, int, int]]:
        """function → (total, running, workers)."""
        result: dict[str, tuple[int, int, int]] = {}
        for line in self.command("status"):
            parts = line.split("\t")
            if len(parts) == 4:
                result[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
        return result

    def _read_line(self) -> str:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise BenchError("gearmand closed the admin connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace").rstrip("\r")


def wait_for_workers(
    admin: AdminConn, function: str, count: int, timeout: float, procs: Sequence[Proc] = ()
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise BenchError(f"{proc.name} exited: {proc.output(2000)}")
        if admin.status().get(function, (0, 0, 0))[2] >= count:
            return
        time.sleep(0.02)
    raise BenchError(f"{count} workers for {function} not registered after {timeout:.0f} s")


def wait_for_drain(admin: AdminConn, function: str, timeout: float, poll: float) -> int:
    """Poll `status` until the function has no queued or running job; return monotonic ns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if admin.status().get(function, (0, 0, 0))[0] == 0:
            return time.monotonic_ns()
        time.sleep(poll)
    raise BenchError(f"{function} not drained after {timeout:.0f} s")


# --------------------------------------------------------------------------- Postgres


def count_jobs(db_url: str, functions: Sequence[str]) -> dict[str, tuple[int, int]] | str:
    """function → (jobs recorded in jobs_job, of which completed); or why that is n/a."""
    try:
        import psycopg
        from psycopg import errors
    except ImportError:
        return "n/a (psycopg not installed)"
    query = (
        "SELECT function, count(*), count(*) FILTER (WHERE state = 'completed')"
        " FROM jobs_job WHERE function = ANY(%s) GROUP BY function"
    )
    try:
        with psycopg.connect(db_url, connect_timeout=5) as conn:
            rows = conn.execute(query, (list(functions),)).fetchall()
    except errors.UndefinedTable:
        return "n/a (no jobs_job table)"
    except psycopg.Error as exc:
        return f"n/a ({type(exc).__name__}: {str(exc).strip()[:200]})"
    return {name: (int(total), int(done)) for name, total, done in rows}


def prepare_database(db_url: str, *, migrate: bool) -> None:
    """Create the database if missing, then `manage.py migrate` it (best effort, printed)."""
    try:
        import psycopg
        from psycopg import conninfo, sql
    except ImportError:
        print("! psycopg not installed: cannot prepare the bench database")
        return
    dbname = str(conninfo.conninfo_to_dict(db_url).get("dbname", ""))
    admin_url = conninfo.make_conninfo(db_url, dbname="postgres")
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if exists.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
                print(f"created database {dbname}")
    except psycopg.Error as exc:
        print(f"! cannot prepare database {dbname}: {exc}")
        return
    if migrate and (PROJECT_DIR / "manage.py").exists():
        run_migrate(db_url)


def run_migrate(db_url: str) -> None:
    argv = [sys.executable, "manage.py", "migrate", "--noinput"]
    try:
        done = subprocess.run(
            argv,
            cwd=PROJECT_DIR,
            env={**os.environ, "DATABASE_URL": db_url},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except subprocess.TimeoutExpired:
        print("! migrate timed out")
        return
    if done.returncode != 0:
        tail = "\n    ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        print(f"! migrate failed (rc {done.returncode}), going on:\n    {tail}")


# --------------------------------------------------------------------------- private services
#
# A bench that stops Postgres or Redis must never touch the shared ones: these start
# throwaway instances on free ports under a temporary directory, the way scripts/services.sh
# starts the private ones of `make run` (Debian's binaries; Postgres as the postgres user
# when we are root, since initdb refuses root).

PG_BINDIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name)


def _pg_bindir() -> Path:
    for bindir in reversed(PG_BINDIRS):
        if (bindir / "initdb").exists():
            return bindir
    raise BenchError("no Postgres server binaries (/usr/lib/postgresql/*/bin/initdb)")


class PrivatePostgres:
    """A Postgres cluster of its own on 127.0.0.1:port (trust auth, no fsync), which the
    bench may stop and start at will. :meth:`destroy` stops it and deletes its files."""

    def __init__(self, port: int | None = None) -> None:
        self.bindir = _pg_bindir()
        self.port = port or free_port()
        self.home = Path(tempfile.mkdtemp(prefix="hq-bench-pg-"))
        self.data = self.home / "data"
        self.log = self.home / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            os.chown(self.home, *_uid_gid("postgres"))

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *argv: str, timeout: float = 120.0) -> None:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd="/"
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-1500:]
            raise BenchError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} failed: {tail}")

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        conf = (
            f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
            "unix_socket_directories = ''\nmax_connections = 100\nfsync = off\n"
            "synchronous_commit = off\nfull_page_writes = off\n"
        )
        with (self.data / "postgresql.conf").open("a") as fh:
            fh.write(conf)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.home, ignore_errors=True)


def _uid_gid(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def start_redis(procs: ProcessSet, port: int) -> Proc:
    """redis-server on 127.0.0.1:port in the foreground, nothing saved to disk."""
    argv = [
        "redis-server",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(procs.workdir),
    ]
    proc = procs.spawn(f"redis-{port}", argv)
    wait_for_port("127.0.0.1", port, 10.0, proc)
    return proc


def _mounted(path: Path) -> bool:
    target = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if line.split()[4] == target:
                return True
    return False


@contextlib.contextmanager
def tmpfs_mount(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. "2m") on the empty directory ``path`` (created) and
    unmount it on the way out, whatever happens. Only ever unmounts this mount."""
    path.mkdir(parents=True, exist_ok=True)
    if _mounted(path):
        raise BenchError(f"{path} is a mount point already: not ours to use")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"cannot mount a tmpfs on {path}: {done.stderr.strip()}")
    try:
        yield path
    finally:
        for argv in (["umount", str(path)], ["umount", "-l", str(path)]):
            if not _mounted(path):
                break
            subprocess.run(argv, capture_output=True, check=False)
            time.sleep(0.2)
        if _mounted(path):
            print(f"! could not unmount {path}: run `umount -l {path}`", flush=True)


def descendants(pid: int) -> list[int]:
    """Every live process below pid (children, grandchildren...), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_line(pid: int) -> list[str]:
    """A process's argv ([] when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank-with-interpolation percentile, q in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


# --------------------------------------------------------------------------- machine


def _command_output(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"n/a ({exc})"
    return (done.stdout or done.stderr).strip()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    php_ext = "echo phpversion('gearman'), ' (libgearman ', gearman_version(), ')';"
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "kernel": platform.release(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "gearmand": _command_output(["gearmand", "--version"]),
        "php": _command_output(["php", "-r", "echo PHP_VERSION;"]),
        "php_gearman": _command_output(["php", "-r", php_ext]),
        "python": platform.python_version(),
    }
