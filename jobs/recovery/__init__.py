"""Automatic recovery: retry policies, dead letters, job of death (``engine``)."""
