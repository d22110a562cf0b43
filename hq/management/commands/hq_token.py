"""API tokens from the command line.

    manage.py hq_token --user NAME [--role viewer|operator|admin] [--name TEXT]
                       [--expires-days N]      new token, printed as the last line
    manage.py hq_token --list [--user NAME]    tokens (never their secrets)
    manage.py hq_token --revoke ID_OR_PREFIX   delete one
"""
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from hq.errors import HQError
from hq.formatting import utc
from hq.models import ApiToken, Role
from hq.selectors import find_token
from hq.services import ensure_user, issue_token


class Command(BaseCommand):
    help = ("Print a new API token for USER (created when missing) with the given role; "
            "or --list tokens; or --revoke one by id or prefix.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", help="user name")
        parser.add_argument("--role", default="viewer", help="viewer | operator | admin")
        parser.add_argument("--name", default="", help="what the token is for")
        parser.add_argument("--expires-days", type=int, default=None,
                            help="the token stops working after this many days")
        parser.add_argument("--list", action="store_true", help="list tokens (of --user)")
        parser.add_argument("--revoke", metavar="ID_OR_PREFIX", help="revoke one token")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["revoke"]:
            self._revoke(opts["revoke"])
        elif opts["list"]:
            self._list(opts["user"])
        else:
            self._issue(opts)

    def _issue(self, opts: dict[str, Any]) -> None:
        try:
            role = Role(opts["role"])
        except ValueError:
            raise CommandError(
                f"unknown role {opts['role']!r}: choose viewer, operator or admin"
            ) from None
        name = (opts["user"] or "").strip()
        if not name:
            raise CommandError("--user must not be empty")
        days = opts["expires_days"]
        if days is not None and days <= 0:
            raise CommandError("--expires-days must be at least 1")
        user = ensure_user(name, role)
        expires = timezone.now() + timedelta(days=days) if days else None
        try:
            raw = issue_token(user, name=opts["name"], expires_at=expires)
        except HQError as exc:
            raise CommandError(exc.message) from None
        self.stderr.write(f"user {user.username!r} has role {role.value}; new token:")
        self.stdout.write(raw)

    def _list(self, username: str | None) -> None:
        tokens = ApiToken.objects.select_related("user").order_by("id")
        if username:
            tokens = tokens.filter(user__username=username)
        self.stdout.write(f"{'ID':>5}  {'PREFIX':<12} {'USER':<16} {'NAME':<24} "
                          f"{'CREATED':<24} {'LAST USED':<24} EXPIRES")
        for t in tokens:
            self.stdout.write(
                f"{t.pk:>5}  {t.prefix:<12} {t.user.get_username()[:16]:<16} "
                f"{(t.name or '-')[:24]:<24} {utc(t.created_at):<24} "
                f"{utc(t.last_used_at) if t.last_used_at else 'never':<24} "
                f"{utc(t.expires_at) if t.expires_at else 'never'}"
                f"{' (expired)' if t.is_expired() else ''}")

    def _revoke(self, id_or_prefix: str) -> None:
        try:
            token = find_token(id_or_prefix)
        except HQError as exc:
            raise CommandError(exc.message) from None
        token.delete()
        self.stdout.write(f"revoked token {id_or_prefix.strip()} ({token.prefix}…, "
                          f"{token.name or 'no name'}) of {token.user.get_username()}")
