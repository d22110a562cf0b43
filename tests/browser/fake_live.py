"""A stand-in for ``/ws/live/`` in a Playwright page (pytest-django's live server speaks
WSGI only): the page's ``live.js`` talks to a scripted server."""

from __future__ import annotations

import json
import re
from typing import Any


class FakeLive:
    """Stands in for ``/ws/live/``: records what the page sends, sends what a test says."""

    def __init__(self, page: Any, *, accept: bool = True) -> None:
        self.sockets: list = []
        self.received: list[dict] = []
        self.accept = accept
        page.route_web_socket(re.compile(r"/ws/live/$"), self._connect)

    def _connect(self, ws: Any) -> None:
        if not self.accept:  # like a server that is down: closes at once
            ws.close(code=1011, reason="unavailable")
            return
        self.sockets.append(ws)
        ws.on_message(lambda message: self.received.append(json.loads(message)))

    def send(self, message: dict) -> None:
        self.sockets[-1].send(json.dumps(message))
