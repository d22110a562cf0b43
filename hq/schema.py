"""OpenAPI glue: how drf-spectacular describes HQ's bearer tokens (imported by hq.apps)."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "hq.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer",
                "description": "`Authorization: Bearer <token>` (manage.py hq_token, or "
                               "the Tokens page)"}
