"""Retiring a server from the pages: a gearmand HQ no longer polls (decommissioned, its
tap gone for good) stops being listed as "not polled" on the overview, the queue table
and the workers page. Nothing is deleted: its jobs, rollups and alerts stay, and
``?retired=1`` lists it again. A tap that polls it again brings it back by itself
(``ServerState.is_retired``)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.utils import timezone

from hq import audit
from hq.errors import Conflict, NotFound

from .models import Server, ServerState
from .selectors import FRESH


@transaction.atomic
def set_retired(*, server_id: int, retired: bool,
                user: AbstractBaseUser | AnonymousUser | None, via: str = "ui") -> Server:
    """Retire a server that nothing polls (a polled one is refused: it is alive), or show
    a retired one again. Audited as ``server_retire`` / ``server_unretire``."""
    server = Server.objects.filter(pk=server_id).first()
    if server is None:
        raise NotFound(f"No server with id {server_id}.")
    state, _ = ServerState.objects.select_for_update().get_or_create(server=server)
    now = timezone.now()
    if retired:
        if state.polled_at is not None and now - state.polled_at < FRESH:
            raise Conflict(f"{server.name} is still polled: only a server nothing has "
                           f"polled for {int(FRESH.total_seconds() // 60)} min can be retired.")
        state.retired_at = now
    else:
        state.retired_at = None
    state.save(update_fields=["retired_at"])
    audit.record(user=user, via=via, action="server_retire" if retired else "server_unretire",
                 target=f"server {server.name}",
                 detail={"last_polled": state.polled_at.isoformat() if state.polled_at else None})
    return server
