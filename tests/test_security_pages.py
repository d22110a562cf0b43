"""Every page keeps to the Content-Security-Policy on the server side too: the header is
on pages and API answers, and no template renders an inline script, style block or style
attribute (the browser test, tests/browser/test_security_ui.py, proves the rest)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from alerts.metric_values import WINDOWED
from alerts.models import Metric
from hq.csp import POLICY

if TYPE_CHECKING:
    from django.test import Client
    from rest_framework.test import APIClient

ROOT = Path(__file__).resolve().parent.parent
#: what the CSP refuses: style blocks and attributes, scripts without src= (JSON data
#: blocks, type="application/json", are not run and so are fine), on*= handlers
INLINE = re.compile(r"<style\b|\sstyle=|<script(?![^>]*\b(?:src=|type=\"application/json\"))"
                    r"[^>]*>|\son[a-z]+=", re.I)


@pytest.mark.django_db
def test_pages_send_the_policy_and_render_nothing_inline(
        alert_world: dict[str, Any], admin: Client, api_admin: APIClient) -> None:
    job, rule = alert_world["running"], alert_world["rules"]["deep"]
    paths = ["/", "/workers/", "/queues/resize_image/", "/jobs/", f"/jobs/{job.pk}/",
             "/alerts/", f"/alerts/{alert_world['critical'].pk}/", "/alerts/rules/new/",
             f"/alerts/rules/{rule.pk}/edit/", "/alerts/channels/", "/tokens/", "/users/",
             "/api/docs/", "/jobs/?state=bogus"]
    for path in paths:
        r = admin.get(path)
        assert r.status_code in (200, 400), path
        assert r["Content-Security-Policy"] == POLICY, path
        html = r.content.decode()
        assert not INLINE.search(html), (path, INLINE.search(html))
    assert "unsafe" not in POLICY and "script-src 'self'" in POLICY
    assert api_admin.get("/api/v1/jobs/")["Content-Security-Policy"] == POLICY
    assert admin.post("/tokens/", {"name": "x"})["Content-Security-Policy"] == POLICY


def test_the_rule_forms_css_knows_every_metric() -> None:
    css = (ROOT / "static" / "css" / "alerts.css").read_text()
    window = [line for line in css.splitlines() if ".field-window_seconds" in line
              and "option:checked" in line]
    assert {re.search(r'value="(\w+)"', line).group(1) for line in window} == set(WINDOWED)
    for metric in Metric.values:
        assert (f'option:checked[value="{metric}"]) .metric-hint[data-metric="{metric}"]'
                in css), metric
