"""/dashboard/data: the numbers the dashboard page polls, cut from the same families /metrics renders (so,
with several workers, the sum over all of them). Counters are totals since start; the page turns the
difference between two polls into rates and windowed percentiles, using the server's clock (`now`)."""

from __future__ import annotations

import time
from typing import Any

from frontgate.observability.families import LATENCY_BOUNDS, FamilySet, group

_BREAKER_NAMES = {0.0: "closed", 1.0: "half_open", 2.0: "open"}


def dashboard_data(families: FamilySet) -> dict[str, Any]:
    requests = families.get("frontgate_requests")
    durations = families.get("frontgate_request_duration_seconds")
    attempts = families.get("frontgate_upstream_attempts")
    attempt_durations = families.get("frontgate_upstream_attempt_duration_seconds")

    route_totals = group(requests, "route")
    route_errors = group(requests, "route", {"status_class": "5xx"})
    route_histograms = group(durations, "route")
    routes = {
        name: {"requests": count, "errors": route_errors.get(name, 0.0), "histogram": route_histograms.get(name)}
        for name, count in sorted(route_totals.items())
    }

    upstream_ok = group(attempts, "upstream", {"outcome": "ok"})
    upstream_errors = group(attempts, "upstream", {"outcome": "error"})
    upstream_histograms = group(attempt_durations, "upstream")
    breaker = _by_label(families, "frontgate_upstream_breaker_state", "upstream")
    in_flight = _by_label(families, "frontgate_upstream_in_flight", "upstream")
    retries = _by_label(families, "frontgate_upstream_retries", "upstream")
    upstreams = {}
    for name in sorted(set(breaker) | set(upstream_ok) | set(upstream_errors)):
        errors = upstream_errors.get(name, 0.0)
        upstreams[name] = {
            "requests": upstream_ok.get(name, 0.0) + errors,
            "errors": errors,
            "histogram": upstream_histograms.get(name),
            "breaker": _BREAKER_NAMES.get(breaker.get(name, 0.0), "closed"),
            "in_flight": in_flight.get(name, 0.0),
            "retries": retries.get(name, 0.0),
        }

    targets = []
    healthy = families.get("frontgate_target_healthy")
    for labels, value in sorted(healthy.samples.items()) if healthy else ():
        targets.append({
            "upstream": labels[0],
            "target": labels[1],
            "healthy": value == 1.0,
            "ejected": _sample(families, "frontgate_target_ejected", labels) == 1.0,
            "breaker": _BREAKER_NAMES.get(_sample(families, "frontgate_target_breaker_state", labels), "closed"),
            "in_flight": _sample(families, "frontgate_target_in_flight", labels),
        })

    limits: dict[str, dict[str, float]] = {}
    decisions = families.get("frontgate_rate_limit_decisions")
    for (limit, outcome), count in sorted(decisions.samples.items()) if decisions else ():
        assert not isinstance(count, list)
        limits.setdefault(limit, {"admitted": 0.0, "limited": 0.0, "store_error": 0.0})[outcome] = count
    auth: dict[str, float] = {}
    failures = families.get("frontgate_auth_failures")
    for (plugin, reason), count in sorted(failures.samples.items()) if failures else ():
        assert not isinstance(count, list)
        auth[f"{plugin}:{reason}"] = count

    return {
        "now": time.monotonic(),
        "bounds": list(LATENCY_BOUNDS),
        "generation": _sample(families, "frontgate_config_generation", ()),
        "workers": _sample(families, "frontgate_workers", ()),
        "connections": _sample(families, "frontgate_connections", ()),
        "in_flight": _sample(families, "frontgate_requests_in_flight", ()),
        "routes": routes,
        "upstreams": upstreams,
        "targets": targets,
        "rate_limits": limits,
        "auth_failures": auth,
    }


def _sample(families: FamilySet, name: str, labels: tuple[str, ...]) -> float:
    family = families.get(name)
    value = family.samples.get(labels, 0.0) if family else 0.0
    assert not isinstance(value, list)
    return value


def _by_label(families: FamilySet, name: str, label: str) -> dict[str, float]:
    return group(families.get(name), label)
