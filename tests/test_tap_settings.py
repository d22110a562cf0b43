"""A tap process loads only the apps it uses (issue 13: the tap's memory). ``hq-tap`` runs
with ``hq.tap.settings``: HQ's settings without the web's apps, so Daphne, Twisted,
Channels, the REST framework and Celery are never imported, while every module the tap runs
still imports and its models work (``tests/test_tap_cli.py`` records jobs through ``hq-tap``
end to end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: imported by the web server and Celery, never by a tap (each costs a tap memory: Celery +
#: kombu ~11 MB, the REST framework with requests, pygments, markdown ~10 MB)
WEB_MODULES = ("daphne", "twisted", "channels", "celery", "kombu", "rest_framework",
               "drf_spectacular", "requests")

PROBE = f"WEB_MODULES = {WEB_MODULES!r}\n" + """
import json, os, sys
import django
django.setup()
from django.apps import apps
from hq.management.commands import gearman_capture, gearman_proxy
from hq.tap import child, cli, runner, supervise, workers
import jobs.reconcile, monitoring.services, jobs.models
from django.core.management import load_command_class
for name in ("gearman_capture", "gearman_proxy"):  # what execute() does before handle()
    cmd = load_command_class("hq", name)
    if cmd.requires_system_checks:  # the URL checks import every view
        cmd.check(tags=None if cmd.requires_system_checks == "__all__"
                  else cmd.requires_system_checks)
print(json.dumps({"apps": [a.name for a in apps.get_app_configs()],
                  "loaded": sorted(m for m in WEB_MODULES if m in sys.modules)}))
"""


def probe(settings: str) -> dict[str, list[str]]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, check=True,
                          capture_output=True, text=True, timeout=120)
    result: dict[str, list[str]] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_the_tap_settings_leave_the_web_apps_out_and_keep_the_tap_working() -> None:
    tap = probe("hq.tap.settings")
    assert tap["loaded"] == []
    assert {"jobs", "monitoring", "alerts", "hq"} <= set(tap["apps"])
    assert "channels" not in tap["apps"]
    assert "daphne" not in tap["apps"]
    web = probe("hq.settings")
    assert web["loaded"] == sorted(WEB_MODULES)


def test_hq_tap_runs_with_the_tap_settings() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import os, sys\nfrom hq.tap import cli\n"
         "try:\n    cli.main(['capture', '--help'])\nexcept SystemExit:\n    pass\n"
         "print(os.environ['DJANGO_SETTINGS_MODULE'])"],
        env={k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        | {"PYTHONPATH": str(ROOT)}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "hq.tap.settings", done.stderr[-2000:]
