"""Everything /metrics shows about one worker, gathered when asked: the request counters plus the state the
gateway keeps anyway (connections, upstream protection, health, limits, auth refusals, config reloads)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from frontgate.observability.families import FamilySet
from frontgate.upstream.resilience import BreakerState

if TYPE_CHECKING:
    from frontgate.server.gateway import Gateway

BREAKER_LEVELS = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 1.0, BreakerState.OPEN: 2.0}


def collect_worker(gateway: Gateway) -> FamilySet:
    out = FamilySet()
    gateway.observations.flush()  # exact numbers: count what is waiting for the next batch
    if gateway.metrics is not None:
        gateway.metrics.collect(out)
    _gateway_state(gateway, out)
    _upstreams(gateway, out)
    _limits_and_auth(out)
    if gateway.tracer is not None:
        spans = out.family("frontgate_trace_spans", "counter",
                           "Spans handed to the OTLP exporter, by outcome (dropped: the export queue was full).",
                           ("outcome",))
        for outcome, count in gateway.tracer.counts().items():
            spans.add((outcome,), float(count))
    out.family("frontgate_access_log_dropped_lines", "counter",
               "Access-log lines dropped because the log destination could not keep up.").add(
        (), float(gateway.access_log.dropped))
    return out


def _gateway_state(gateway: Gateway, out: FamilySet) -> None:
    out.family("frontgate_connections", "gauge", "Open client connections.").add((), float(len(gateway.connections)))
    out.family("frontgate_websocket_tunnels", "gauge", "Open WebSocket connections (past their 101).").add(
        (), float(sum(1 for tunnel in gateway.tunnels if not tunnel.ended)))
    active = sum(1 for conn in gateway.connections if conn.active is not None)
    out.family("frontgate_requests_in_flight", "gauge", "Requests being answered right now.").add((), float(active))
    out.family("frontgate_protocol_errors", "counter",
               "Requests refused before routing because they broke HTTP/1.1 rules.").add(
        (), float(gateway.protocol_errors))
    # Every worker loads the same file and gets the same SIGHUP: the highest count is the gateway's.
    out.family("frontgate_config_generation", "gauge", "Generation of the config being served (1 at start).",
               agg="max").add((), float(gateway.runtime.generation))
    reloads = out.family("frontgate_config_reloads", "counter",
                         "Reloads by outcome (failed: the file was rejected and the running config kept serving).",
                         ("outcome",), agg="max")
    reloads.add(("ok",), float(gateway.reloads_ok))
    reloads.add(("failed",), float(gateway.reloads_failed))


def _upstreams(gateway: Gateway, out: FamilySet) -> None:
    in_flight = out.family("frontgate_upstream_in_flight", "gauge", "Tries in flight to the upstream.", ("upstream",))
    retries = out.family("frontgate_upstream_retries", "counter", "Retries sent (inside the retry budget).",
                         ("upstream",))
    exhausted = out.family("frontgate_upstream_retry_budget_exhausted", "counter",
                           "Retries not sent because the retry budget was used up.", ("upstream",))
    breaker = out.family("frontgate_upstream_breaker_state", "gauge",
                         "The upstream's circuit breaker: 0 closed, 1 half-open, 2 open (the worst worker's).",
                         ("upstream",), agg="max")
    rejected = out.family("frontgate_upstream_breaker_rejections", "counter",
                          "Requests failed fast by the upstream's breaker (open, or max_in_flight reached).",
                          ("upstream",))
    labels = ("upstream", "target")
    healthy = out.family("frontgate_target_healthy", "gauge",
                         "1 when active health checks pass (in every worker), else 0.", labels, agg="min")
    ejected = out.family("frontgate_target_ejected", "gauge", "1 while outlier detection has ejected the target.",
                         labels, agg="max")
    target_breaker = out.family("frontgate_target_breaker_state", "gauge",
                                "The target's circuit breaker: 0 closed, 1 half-open, 2 open.", labels, agg="max")
    target_rejected = out.family("frontgate_target_breaker_rejections", "counter",
                                 "Requests failed fast by the target's breaker.", labels)
    target_in_flight = out.family("frontgate_target_in_flight", "gauge", "Tries in flight to the target.", labels)
    idle = out.family("frontgate_target_idle_connections", "gauge", "Idle pooled connections to the target.", labels)
    for name, cluster in gateway.runtime.clusters.items():
        state = cluster.state
        in_flight.add((name,), float(state.in_flight))
        retries.add((name,), float(state.budget.retries))
        exhausted.add((name,), float(state.budget.exhausted))
        breaker.add((name,), BREAKER_LEVELS[state.breaker.state])
        rejected.add((name,), float(state.breaker.rejections))
        for target in cluster.targets:
            key = (name, target.url)
            target_state = target.state
            healthy.add(key, 1.0 if target_state.healthy else 0.0)
            outlier = target_state.outlier
            ejected.add(key, 1.0 if outlier is not None and outlier.ejected() else 0.0)
            target_breaker.add(key, BREAKER_LEVELS[target_state.breaker.state])
            target_rejected.add(key, float(target_state.breaker.rejections))
            target_in_flight.add(key, float(target.pool.in_flight))
            idle.add(key, float(target.pool.idle_count))


def _limits_and_auth(out: FamilySet) -> None:
    from frontgate.auth.metrics import failure_counts
    from frontgate.plugins.rate_limit import decision_counts

    decisions = out.family("frontgate_rate_limit_decisions", "counter",
                           "Rate-limit decisions by limit name and outcome (admitted, limited, store_error).",
                           ("limit", "outcome"))
    for (limit, outcome), count in sorted(decision_counts().items()):
        decisions.add((limit, outcome), float(count))
    failures = out.family("frontgate_auth_failures", "counter",
                          "Refused credentials by auth plugin and reason (missing, expired, bad_signature, ...).",
                          ("plugin", "reason"))
    for (plugin, reason), count in sorted(failure_counts().items()):
        failures.add((plugin, reason), float(count))
