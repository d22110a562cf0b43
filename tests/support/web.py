"""HQ's web pages as a test reads and posts them."""

from __future__ import annotations

import re
from html import unescape

#: the header htmx sends with every request it makes (pass as ``**HX`` to the test client)
HX = {"HTTP_HX_REQUEST": "true"}


def field_errors(html: str, field: str) -> list[str]:
    """The error messages rendered inside the form field ``field``'s block."""
    block = re.search(rf'<div class="field field-{field}[^"]*">(.*?)</div>', html, re.S)
    assert block, f"no field {field} in the page"
    return [unescape(m) for m in re.findall(r'<span class="field-error"[^>]*>(.*?)</span>',
                                            block.group(1))]


def rule_form(**over: object) -> dict[str, object]:
    """What the alert rule form posts for a valid rule, with ``over`` changed (a value of
    None leaves that field out)."""
    data: dict[str, object] = {
        "name": "Images backed up", "metric": "queue_depth", "function": "img*", "server": "",
        "operator": ">", "threshold": "500", "for_seconds": "120", "window_seconds": "300",
        "severity": "critical", "enabled": "on"}
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}
