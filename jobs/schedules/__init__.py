"""Recurring schedules: what cron does, inside HQ (models in ``jobs/models.py``)."""
