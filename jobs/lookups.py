"""``field__ilike``: a plain ``ILIKE`` (Django's icontains wraps the column in UPPER(),
which a trigram index on the bare column cannot serve)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models
from django.db.models import Lookup

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models.sql.compiler import SQLCompiler


def like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@models.CharField.register_lookup
@models.TextField.register_lookup
class ILike(Lookup):
    lookup_name = "ilike"

    def as_sql(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper
    ) -> tuple[str, tuple[str | int, ...]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} ILIKE {rhs}", (*lhs_params, *rhs_params)
