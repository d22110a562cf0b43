"""A Nagios/Icinga plugin view of one metric: status line with perfdata, exit 0/1/2/3."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.models import Server

from . import metric_values
from .models import Metric, Rule

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


@dataclass(frozen=True)
class CheckResult:
    code: int
    line: str


def check(function: str, metric: str, warning: float, critical: float, *,
          below: bool = False, window: int = 300, server: str | None = None) -> CheckResult:
    label = f"HQ {metric.upper()}"
    if metric not in Metric.values:
        return CheckResult(UNKNOWN, f"{label} UNKNOWN - unknown metric {metric!r}")
    if metric in metric_values.PER_SERVER:  # measured per server: no function to match
        function = metric_values.SERVER_FUNCTION
    rule = Rule(metric=metric, function=function, window_seconds=window,
                operator="<" if below else ">", threshold=0)
    key = metric_values.metric_key(metric, window)
    server_id = None
    if server:
        server_id = Server.objects.filter(name=server).values_list("id", flat=True).first()
        if server_id is None:
            return CheckResult(UNKNOWN, f"{label} UNKNOWN - no server named {server!r}")
    windowed = {window} if metric in metric_values.WINDOWED else set()
    complete = windowed if metric == Metric.TIME_TO_COMPLETE_P95 else set()
    found = [(sid, fn, m.get(key))
             for (sid, fn), m in metric_values.alert_metrics(
                 windowed, complete_windows=complete).items()
             if rule.matches(fn) and (server_id is None or sid == server_id)]
    values = [(_subject(metric, sid, fn), v) for sid, fn, v in found if v is not None]
    if not values:
        return CheckResult(UNKNOWN, f"{label} UNKNOWN - no data for {function!r}")
    fn, value = (min if below else max)(values, key=lambda item: item[1])

    def worse(limit: float) -> bool:
        return value < limit if below else value > limit

    code = CRITICAL if worse(critical) else WARNING if worse(warning) else OK
    perf = f"{metric}={num(value)};{num(warning)};{num(critical)}"
    return CheckResult(code, f"{label} {NAMES[code]} - {fn} {metric} is {num(value)} | {perf}")


def _subject(metric: str, server_id: int, function: str) -> str:
    """What the status line names: the queue's function, or for a per-server metric
    (``tap_health``, ``server_down``: function ``*``) the server."""
    if metric not in metric_values.PER_SERVER:
        return function
    name = Server.objects.filter(pk=server_id).values_list("name", flat=True).first()
    return f"server {name}" if name else function


def num(value: float) -> str:
    """Plain digits for perfdata (Nagios reads no exponent): 1234567, 0.25."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"
