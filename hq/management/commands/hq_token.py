"""Create (or update) a user with a role and print a new API token as the last line."""
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from hq.models import Role
from hq.services import ensure_user, issue_token


class Command(BaseCommand):
    help = "Print a new API token for USER (created when missing) with the given role."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="user name")
        parser.add_argument("--role", default="viewer", help="viewer | operator | admin")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            role = Role(opts["role"])
        except ValueError:
            raise CommandError(
                f"unknown role {opts['role']!r}: choose viewer, operator or admin"
            ) from None
        name = opts["user"].strip()
        if not name:
            raise CommandError("--user must not be empty")
        user = ensure_user(name, role)
        self.stderr.write(f"user {user.username!r} has role {role.value}; new token:")
        self.stdout.write(issue_token(user))
