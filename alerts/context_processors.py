"""What every page's header shows about alerts: the count on the Alerts link and the strip
of firing alerts under the top bar (``templates/alerts/_header_strip.html``).

Add ``"alerts.context_processors.alerts_header"`` to the template context processors. The
value is lazy (:class:`alerts.presenters.FiringAlerts`): a page that does not show the
header runs no query; one that does runs a COUNT, and fetches up to five rows only when
something fires.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from .presenters import FiringAlerts


def alerts_header(request: HttpRequest) -> dict[str, Any]:
    return {"alerts_header": FiringAlerts(request)}
