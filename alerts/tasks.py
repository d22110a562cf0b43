"""Celery tasks for alerts: thin wrappers over services and delivery."""

from celery import shared_task

from . import delivery, services


@shared_task
def evaluate_alerts() -> dict[str, int]:
    result = services.evaluate()
    if result.fired or result.resolved:
        deliver_notifications.delay()
    return {"rules": result.rules, "fired": len(result.fired),
            "resolved": len(result.resolved)}


@shared_task
def deliver_notifications() -> tuple[int, int]:
    return delivery.deliver_due()
