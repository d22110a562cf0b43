"""First-run setup for `make run`: an admin user with a fresh password and API token.

Prints KEY=value lines that `make run` appends to var/run.env.
"""
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from hq.models import Role
from hq.services import ensure_user, issue_token, reset_password


class Command(BaseCommand):
    help = "Create or refresh the admin login and print HQ_ADMIN_USER/PASSWORD and a token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", default="", help="default: a new random one")

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
        self.stdout.write(f"HQ_API_TOKEN={issue_token(user)}")
