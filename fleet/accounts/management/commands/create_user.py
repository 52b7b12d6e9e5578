"""Create a console/API user with a role: manage.py create_user NAME --role operator."""

from __future__ import annotations

import secrets
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from rest_framework.authtoken.models import Token

from fleet.accounts.actions import do_create_user
from fleet.core.roles import ROLE_GROUP_NAMES, Role


class Command(BaseCommand):
    help = "Create a user (or reset one) with the role viewer, operator or admin."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", choices=list(ROLE_GROUP_NAMES.values()), default="viewer")
        parser.add_argument("--password", help="default: a random one, printed once")
        parser.add_argument("--email", default="")
        parser.add_argument("--api-token", action="store_true", help="also print an API token")

    def handle(self, *args: Any, **opts: Any) -> None:
        role = {v: k for k, v in ROLE_GROUP_NAMES.items()}[opts["role"]]
        password = opts["password"] or secrets.token_urlsafe(12)
        user = do_create_user(
            opts["username"], password, Role(role), actor=None, email=opts["email"]
        )
        self.stdout.write(f"user={user.username} role={opts['role']} password={password}")
        if opts["api_token"]:
            token, _ = Token.objects.get_or_create(user=user)
            self.stdout.write(f"api_token={token.key}")
