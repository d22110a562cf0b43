"""``hq-tap``, the console script that runs a tap beside a gearmand on its own host: started
from the installed script, outside the checkout, with only DATABASE_URL / REDIS_URL /
HQ_SPOOL_DIR set; it records jobs, and it refuses bad input with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.gearman_cli import gearman, start_worker, stop_worker
from tests.support.hq_tap import HQ_TAP, run_hq_tap, start_hq_tap, tap_env
from tests.support.stack import Gearmand, wait_jobs

pytestmark = pytest.mark.gearmand


def test_the_package_installs_the_script() -> None:
    assert HQ_TAP.is_file(), f"{HQ_TAP} missing: pip install -e . installs it"


def test_proxy_records_jobs_with_only_the_tap_environment(
        gearmand: Gearmand, tmp_path: Path, transactional_db: None) -> None:
    env = tap_env(tmp_path / "spool")
    tap = start_hq_tap("proxy", gearmand, tmp_path, "cli-proxy", env=env)
    worker = start_worker(tap.port, "rev", "rev")
    try:
        replies = [gearman(tap.port, "-f", "rev", stdin=f"job {i}\n") for i in range(3)]
        jobs = wait_jobs("cli-proxy", 3, state="completed")
    finally:
        stop_worker(worker)
        output = tap.stop()
    assert replies == [f"{i} boj\n" for i in range(3)]
    assert [j.payload for j in jobs] == [f"job {i}\n" for i in range(3)]
    assert tap.proc.returncode == 0, output
    assert "HQ_SECRET_KEY" not in output
    assert "Traceback" not in output


def test_help_explains_modes_and_environment(tmp_path: Path) -> None:
    top = run_hq_tap(["--help"], {"PATH": "/usr/bin:/bin"}, tmp_path)
    assert top.returncode == 0
    for words in ("capture", "proxy", "CAP_NET_RAW", "DATABASE_URL", "REDIS_URL",
                  "HQ_SPOOL_DIR", "hq-tap MODE --help"):
        assert words in top.stdout, words
    capture = run_hq_tap(["capture", "--help"], {"PATH": "/usr/bin:/bin"}, tmp_path)
    assert capture.returncode == 0, capture.stderr
    assert capture.stdout.startswith("usage: hq-tap capture ")
    for words in ("--interface", "--port", "--server", "--buffer-mib", "DATABASE_URL"):
        assert words in capture.stdout, words
    assert "--settings" not in capture.stdout  # Django's own options mean nothing here
    proxy = run_hq_tap(["proxy", "--help"], {"PATH": "/usr/bin:/bin"}, tmp_path)
    assert proxy.returncode == 0, proxy.stderr
    assert "--listen" in proxy.stdout and "--upstream" in proxy.stdout


@pytest.mark.parametrize(("args", "env_change", "message"), [
    ([], {}, "the following arguments are required: mode"),
    (["listen"], {}, "invalid choice: 'listen'"),
    (["capture", "--server", "gm1"], {"DATABASE_URL": ""}, "DATABASE_URL is not set"),
    (["proxy", "--server", "gm1"], {"DATABASE_URL": "mysql://db/hq"},
     "DATABASE_URL must be a postgres:// URL"),
    (["proxy"], {}, "--server NAME is required"),
    (["proxy", "--server", "gm1"], {"HQ_SPOOL_DIR": "{file}/spool"},
     "is not writable by uid"),
    (["proxy", "--server", "gm1", "--listen", "127.0.0.1:x"], {}, "bad address"),
    (["capture", "--server", "gm1", "--port", "many"], {}, "invalid int value: 'many'"),
    (["capture", "--server=gm1", "--inter", "no-such-if0"], {},
     "no interface 'no-such-if0' on this host"),
])
def test_bad_input_is_one_clear_line(args: list[str], env_change: dict[str, str],
                                     message: str, tmp_path: Path, db: None) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    env = tap_env(tmp_path / "spool")
    env.update({k: v.format(file=a_file) for k, v in env_change.items()})
    if not env["DATABASE_URL"]:
        del env["DATABASE_URL"]
    done = run_hq_tap(args, env, tmp_path)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
