"""Retry policies: create, change, reorder, delete (each audited). The API, the page and
the tests call these; :mod:`jobs.recovery.engine` applies them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.db.models import Max

from hq import audit
from hq.errors import InvalidInput, NotFound

from ..models import RetryOn, RetryPolicy

if TYPE_CHECKING:
    from ..services import User

FIELDS = ("function", "max_attempts", "backoff_base_s", "backoff_max_s", "jitter",
          "retry_on", "enabled", "order")
ENDS = tuple(r.value for r in RetryOn)
MAX_ATTEMPTS = 100
MAX_DELAY_S = 30 * 86400.0


def _bad(name: str, message: str) -> InvalidInput:
    return InvalidInput(f"{name}: {message}", fields={name: [message]})


def clean(data: dict[str, Any], *, partial: bool,
          current: RetryPolicy | None = None) -> dict[str, Any]:
    """The policy fields in ``data``, checked (a 400 naming the field otherwise)."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise _bad(unknown[0], f"Unknown field; fields: {', '.join(FIELDS)}.")
    out: dict[str, Any] = {}
    if "function" in data or not partial:
        function = str(data.get("function") or "").strip()
        if not function or len(function) > 255 or "\0" in function \
                or any(c.isspace() for c in function):
            raise _bad("function", "A function name or glob (e.g. resize_* or *), "
                       "no white space, at most 255 characters.")
        out["function"] = function
    for name, low, high in (("max_attempts", 1, MAX_ATTEMPTS),
                            ("backoff_base_s", 0, MAX_DELAY_S),
                            ("backoff_max_s", 0, MAX_DELAY_S)):
        if name in data:
            try:
                value = float(data[name])
            except (TypeError, ValueError):
                raise _bad(name, "A number.") from None
            if isinstance(data[name], bool) or not low <= value <= high or value != value:
                raise _bad(name, f"From {low:g} to {high:g}.")
            if name == "max_attempts":
                if value != int(value):
                    raise _bad(name, "A whole number of runs (1 = never retried).")
                out[name] = int(value)
            else:
                out[name] = value
    for name in ("jitter", "enabled"):
        if name in data:
            if not isinstance(data[name], bool):
                raise _bad(name, "true or false.")
            out[name] = data[name]
    if "order" in data:
        if isinstance(data["order"], bool) or not isinstance(data["order"], int) \
                or not -1_000_000 <= data["order"] <= 1_000_000:
            raise _bad("order", "A whole number (lower is tried first).")
        out["order"] = data["order"]
    if "retry_on" in data or not partial:
        ends = data.get("retry_on", ["failed", "exception", "lost"])
        if not isinstance(ends, list) or not ends or any(e not in ENDS for e in ends):
            raise _bad("retry_on", f"A non-empty list of: {', '.join(ENDS)}.")
        out["retry_on"] = [e for e in ENDS if e in ends]
    base = out.get("backoff_base_s", current.backoff_base_s if current else 10.0)
    cap = out.get("backoff_max_s", current.backoff_max_s if current else 3600.0)
    if cap < base:
        raise _bad("backoff_max_s", "At least backoff_base_s.")
    return out


def create(*, data: dict[str, Any], user: User, via: str) -> RetryPolicy:
    values = clean(data, partial=False)
    with transaction.atomic():
        if "order" not in values:  # after the others: the first match wins
            top = RetryPolicy.objects.aggregate(m=Max("order"))["m"]
            values["order"] = 0 if top is None else top + 10
        policy = RetryPolicy.objects.create(**values)
        audit.record(user=user, via=via, action="policy_create", target=f"policy {policy.pk}",
                     detail={"result": "ok", **_described(policy)})
    return policy


def get(policy_id: int | str) -> RetryPolicy:
    text = str(policy_id)
    policy = RetryPolicy.objects.filter(pk=int(text)).first() \
        if text.isdigit() and len(text) < 19 else None
    if policy is None:
        raise NotFound(f"No retry policy with id {text}.")
    return policy


def update(*, policy_id: int, data: dict[str, Any], user: User, via: str,
           partial: bool = True) -> RetryPolicy:
    with transaction.atomic():
        policy = RetryPolicy.objects.select_for_update().filter(pk=policy_id).first()
        if policy is None:
            raise NotFound(f"No retry policy with id {policy_id}.")
        values = clean(data, partial=partial, current=policy)
        for name, value in values.items():
            setattr(policy, name, value)
        policy.save()
        audit.record(user=user, via=via, action="policy_update", target=f"policy {policy.pk}",
                     detail={"result": "ok", **_described(policy)})
    return policy


def move(*, policy_id: int, up: bool, user: User, via: str) -> RetryPolicy:
    """Swap a policy with the one before (``up``) or after it in the order."""
    with transaction.atomic():
        ordered = list(RetryPolicy.objects.select_for_update().order_by("order", "id"))
        index = next((i for i, p in enumerate(ordered) if p.pk == policy_id), None)
        if index is None:
            raise NotFound(f"No retry policy with id {policy_id}.")
        other = index - 1 if up else index + 1
        if 0 <= other < len(ordered):
            ordered[index], ordered[other] = ordered[other], ordered[index]
        for position, policy in enumerate(ordered):
            if policy.order != position * 10:
                policy.order = position * 10
                policy.save(update_fields=["order", "updated_at"])
        moved = ordered[other if 0 <= other < len(ordered) else index]
        audit.record(user=user, via=via, action="policy_move", target=f"policy {policy_id}",
                     detail={"result": "ok", "up": up, "order": moved.order})
    return moved


def delete(*, policy_id: int, user: User, via: str) -> None:
    with transaction.atomic():
        policy = get(policy_id)
        detail = _described(policy)
        policy.delete()
        audit.record(user=user, via=via, action="policy_delete", target=f"policy {policy_id}",
                     detail={"result": "ok", **detail})


def _described(policy: RetryPolicy) -> dict[str, Any]:
    return {name: getattr(policy, name) for name in FIELDS}
