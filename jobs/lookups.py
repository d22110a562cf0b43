"""``field__ilike``: a plain ``ILIKE`` (Django's icontains wraps the column in UPPER(),
which a trigram index on the bare column cannot serve)."""

from django.db import models
from django.db.models import Lookup


def like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@models.CharField.register_lookup
@models.TextField.register_lookup
class ILike(Lookup):
    lookup_name = "ilike"

    def as_sql(self, compiler, connection):  # type: ignore[no-untyped-def]
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} ILIKE {rhs}", [*lhs_params, *rhs_params]
