"""First-run setup for `make run` (and docker compose's hq-init): the admin user with a
fresh password, and one API token named "make-run".

Prints KEY=value lines (HQ_ADMIN_USER, HQ_ADMIN_PASSWORD, HQ_API_TOKEN) that `make run`
appends to var/run.env; notes for people go to stderr.

The token is minted only when the admin has no (unexpired) "make-run" token yet: HQ stores
only a token's hash, so an existing one cannot be printed again. With ``--token-file`` the
new token is also written there (mode 0600), and later runs read it back from that file
(checked against the stored hash) instead of minting another. When the token exists but its
file is gone, the command says so; ``--new-token`` revokes the old "make-run" token and
mints a new one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractUser
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from hq.formatting import utc
from hq.models import ApiToken, Role, hash_token
from hq.services import ensure_user, issue_token, reset_password

TOKEN_NAME = "make-run"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only (0600), whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class Command(BaseCommand):
    help = ("Create or refresh the admin login; print HQ_ADMIN_USER/PASSWORD and, when it has "
            "none yet, a new API token named make-run.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", default="", help="default: a new random one")
        parser.add_argument("--token-file", default="",
                            help="keep the make-run token here (0600) and reuse it from here")
        parser.add_argument("--new-token", action="store_true",
                            help="revoke the make-run token and mint a new one")

    def handle(self, *args: Any, **opts: Any) -> None:
        user = ensure_user(opts["username"], Role.ADMIN)
        if opts["password"]:
            user.set_password(opts["password"])
            user.save(update_fields=["password"])
            password = opts["password"]
        else:
            password = reset_password(user)
        self.stdout.write(f"HQ_ADMIN_USER={user.username}")
        self.stdout.write(f"HQ_ADMIN_PASSWORD={password}")
        token_file = Path(opts["token_file"]) if opts["token_file"] else None
        raw = self._token(user, token_file, renew=opts["new_token"])
        if raw:
            self.stdout.write(f"HQ_API_TOKEN={raw}")

    def _token(self, user: AbstractUser, token_file: Path | None, *, renew: bool) -> str:
        now = timezone.now()
        mine = ApiToken.objects.filter(user_id=user.pk, name=TOKEN_NAME)
        if renew:
            mine.delete()
        current = [t for t in mine.order_by("-id") if not t.is_expired(now)]
        if current:
            kept = self._read(token_file)
            if kept and any(t.digest == hash_token(kept) for t in current):
                self.stderr.write(f"API token: reusing the {TOKEN_NAME} token kept in "
                                  f"{token_file}")
                return kept
            latest = current[0]
            where = f" and written to {token_file}" if token_file else ""
            again = f" --token-file {token_file}" if token_file else ""
            self.stderr.write(
                f"API token: {user.username} already has a {TOKEN_NAME} token ({latest.prefix}…, "
                f"created {utc(latest.created_at)}). It was printed when it was made{where}; "
                "HQ keeps only its hash, so it cannot be shown again. For a new one run "
                f"manage.py hq_setup --new-token{again}"
                " (revokes the old one), or manage.py hq_token --user NAME for another token.")
            return ""
        raw = issue_token(user, name=TOKEN_NAME)
        if token_file is not None:
            write_private(token_file, raw + "\n")
            self.stderr.write(f"API token: new {TOKEN_NAME} token, kept in {token_file} (0600)")
        else:
            self.stderr.write(f"API token: new {TOKEN_NAME} token (shown once, below)")
        return raw

    @staticmethod
    def _read(token_file: Path | None) -> str:
        if token_file is None:
            return ""
        try:
            return token_file.read_text().strip()
        except OSError:
            return ""
